/*
 * artifact — fetches LoRA adapter artifacts into a local cache directory (the
 * job AIBrix's runtime sidecar does next to each pod; here, for local mode).
 *
 * Schemes: file:// (a file, or a directory such as one holding
 * adapter_config.json) and http(s):// (libcurl; a URL ending in .tar.gz or
 * .tgz is unpacked into a directory). huggingface://, s3://, gcs:// and any
 * other scheme fail with BRIX_ART_UNSUPPORTED and a clear message.
 *
 * file:// reads only under the request's allowed roots (the operator's
 * --artifact-root directories, or the applied file's directory, and the state
 * dir): a path outside them is refused before anything is opened, and one that
 * leads outside through a symlink is refused after realpath, so a checksum
 * message never tells anything about a file the operator did not allow.
 * Archives are gunzipped by a `gzip -dc` child and their tar stream inspected
 * header by header (tarscan.h) before `tar -x` sees it: a member over the unpacked-size or
 * file-count limit, an absolute or `..` name, a link, or a device is refused
 * before it is written.
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
    BRIX_ART_NOT_ALLOWED, /* file:// outside the allowed roots ("ArtifactNotAllowed") */
    BRIX_ART_UNSAFE,      /* archive member absolute, with '..', a link or a device */
} brix_art_status_t;

typedef struct brix_art_req {
    const char *url;       /* copied by brix_art_fetch */
    const char *sha256;    /* lowercase hex of the file's SHA-256, or NULL (no check) */
    const char *cache_dir; /* e.g. STATE_DIR/artifacts; created if missing */
    uint64_t max_bytes;    /* size limit of the download (0 = 10 GiB) */
    uint64_t timeout_ms;   /* whole-transfer timeout for http(s) (0 = 10 min) */
    const char *label;     /* for log lines (the adapter name), may be NULL */
    /* file:// may read only under these absolute directories (copied); none:
     * every file:// URL is refused */
    const char *const *roots;
    size_t nroots;
    uint64_t max_unpacked; /* sum of an archive's member sizes (0 = 20 GiB) */
    uint64_t max_files;    /* members of an archive, directories included (0 = 10,000) */
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

/* The cache entry name (no directory) a fetch of url+sha256 uses, e.g.
 * "0123456789abcdef-adapter"; 0 or -ENOMEM / -ENOSPC (n too small). */
int brix_art_cache_name(const char *url, const char *sha256, char *out, size_t n);

/*
 * Cache cleanup. Entries are ranked by mtime, which a fetch sets when it
 * creates an entry and again on every cache hit (least recently used first).
 * Entries named in keep (an entry name, or a path with "/<name>" in it: what
 * adapters reference and what replicas loaded) are never removed, nor one
 * used since the cleanup started; the others go, oldest first, until the cache
 * is at most max_bytes. Temp files of other processes (a crash left them: the
 * state dir lock allows one controller) are removed too. An entry is renamed
 * away under the cache lock before it is deleted, so a fetch never returns a
 * half-deleted path.
 */
typedef struct brix_art_gc_req {
    const char *cache_dir;
    uint64_t max_bytes;
    const char *const *keep;
    size_t nkeep;
} brix_art_gc_req_t;

typedef struct brix_art_gc_result {
    int err;                /* 0 or -errno reading the cache dir (ENOENT is 0) */
    uint64_t bytes;         /* size of the cache after cleanup (file sizes) */
    uint64_t evicted;       /* entries removed */
    uint64_t evicted_bytes; /* their size */
    uint64_t temps_removed; /* crash leftovers removed */
} brix_art_gc_result_t;

typedef void (*brix_art_gc_fn)(const brix_art_gc_result_t *res, void *ud);

/* Runs on libuv's thread pool; done runs on loop's thread. 0 or -errno. */
int brix_art_gc(uv_loop_t *loop, const brix_art_gc_req_t *req, brix_art_gc_fn done, void *ud);
/* The same, blocking (tests). */
void brix_art_gc_run(const brix_art_gc_req_t *req, brix_art_gc_result_t *res);

#endif
