/*
 * artifact — fetches LoRA adapter artifacts into a local cache directory (the
 * job AIBrix's runtime sidecar does next to each pod; here, for local mode).
 *
 * Schemes: file:// (a file, or a directory such as one holding
 * adapter_config.json) and http(s):// (libcurl; a URL ending in .tar.gz or
 * .tgz is unpacked into a directory). huggingface://, s3://, gcs:// and any
 * other scheme fail with BRIX_ART_UNSUPPORTED and a clear message.
 *
 * A fetch runs on libuv's thread pool (uv_queue_work) so the controller loop
 * never blocks on disk or network; the callback runs on the loop thread.
 * Downloads go to a temp file next to the destination and are renamed into
 * place only after the size limit and the optional SHA-256 check pass, so a
 * crash or failure never leaves a half-written artifact that looks complete.
 * The cache key is the URL (+ checksum); a second fetch of a cached artifact
 * completes at once without I/O on the network.
 */
#ifndef BRIX_CONTROLLER_ARTIFACT_H
#define BRIX_CONTROLLER_ARTIFACT_H

#include <stdint.h>
#include <uv.h>

typedef enum brix_art_status {
    BRIX_ART_OK = 0,
    BRIX_ART_UNSUPPORTED, /* scheme not supported yet (huggingface://, s3://, …) */
    BRIX_ART_BAD_URL,     /* malformed URL */
    BRIX_ART_NOT_FOUND,   /* file:// path missing, HTTP 404 */
    BRIX_ART_TOO_LARGE,   /* over max_bytes */
    BRIX_ART_CHECKSUM,    /* SHA-256 mismatch */
    BRIX_ART_IO,          /* network / HTTP error / disk / unpack failure */
} brix_art_status_t;

typedef struct brix_art_req {
    const char *url;       /* copied by brix_art_fetch */
    const char *sha256;    /* lowercase hex of the file's SHA-256, or NULL (no check) */
    const char *cache_dir; /* e.g. STATE_DIR/artifacts; created if missing */
    uint64_t max_bytes;    /* size limit of the download (0 = 10 GiB) */
    uint64_t timeout_ms;   /* whole-transfer timeout for http(s) (0 = 10 min) */
    const char *label;     /* for log lines (the adapter name), may be NULL */
} brix_art_req_t;

typedef struct brix_art_result {
    brix_art_status_t status;
    const char *path;    /* BRIX_ART_OK: absolute local path to give the engine */
    const char *message; /* human-readable reason on failure (for a status condition) */
    uint64_t bytes;      /* bytes fetched (0 when served from the cache) */
    int cached;          /* 1 when the cache already held it */
} brix_art_result_t;

/* The result's strings live until the callback returns. */
typedef void (*brix_art_done_fn)(const brix_art_result_t *res, void *ud);

/* Starts a fetch; 0 or -errno. The callback runs exactly once on loop's
 * thread. Progress is logged at INFO every few seconds for long downloads. */
int brix_art_fetch(uv_loop_t *loop, const brix_art_req_t *req, brix_art_done_fn done, void *ud);

/* Short name of a status, e.g. "ChecksumMismatch", for condition reasons. */
const char *brix_art_status_name(brix_art_status_t s);

#endif
