/*
 * tarscan — judges a tar stream block by block, before an extractor sees it.
 *
 * The artifact fetcher feeds every 512-byte block of a decompressed .tar.gz
 * through brix_tarscan_block and forwards to `tar -x` only the blocks it
 * accepts, so a size or count limit holds before any byte of the member that
 * breaks it is written, and a gzip bomb costs only the blocks up to its first
 * oversized header. Pure and allocation-light (long names and pax records are
 * buffered, at most 64 KiB each): a fuzz target can drive it directly.
 */
#ifndef BRIX_CONTROLLER_TARSCAN_H
#define BRIX_CONTROLLER_TARSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef enum brix_tarscan_verdict {
    BRIX_TARSCAN_OK = 0,
    BRIX_TARSCAN_BAD,       /* not a tar stream (checksum, size field, pax syntax) */
    BRIX_TARSCAN_TOO_LARGE, /* over max_bytes or max_files (or too many headers) */
    BRIX_TARSCAN_UNSAFE,    /* absolute or '..' name, link out, hard link, device, FIFO */
    BRIX_TARSCAN_NOMEM,
} brix_tarscan_verdict_t;

typedef struct brix_tarscan {
    uint64_t max_bytes, max_files;  /* limits: sum of member sizes; members (dirs included) */
    uint64_t files, bytes, headers; /* so far */
    bool done;                      /* two zero blocks: the end of the archive */
    brix_tarscan_verdict_t verdict; /* the first refusal; the stream stops there */
    char why[320];                  /* e.g. "archive member 'x' is a hard link; refusing …" */
    /* private */
    uint64_t left;  /* data bytes of the current member still to come */
    char meta_type; /* 'L', 'K', 'x' or 'g' while its data is collected, else 0 */
    brix_buf_t meta;
    char *name, *link; /* set by L/K/x for the next member */
    int has_size;      /* a pax size= for the next member */
    uint64_t size;
    int zeros; /* consecutive zero blocks */
} brix_tarscan_t;

void brix_tarscan_init(brix_tarscan_t *t, uint64_t max_bytes, uint64_t max_files);
/* One 512-byte block: 0 to forward it, -1 when refused (verdict and why say why). */
int brix_tarscan_block(brix_tarscan_t *t, const unsigned char *b);
/* The stream stopped inside a member or a header's data: truncated. */
bool brix_tarscan_pending(const brix_tarscan_t *t);
void brix_tarscan_free(brix_tarscan_t *t);

/* A path that would land outside the extraction directory: absolute, or with
 * a '..' component. Also what a symlink target must not be. */
bool brix_tarscan_unsafe_name(const char *s, size_t n);

#endif
