/*
 * lines — a resumable splitter of a byte stream into lines ("\n" or "\r\n"),
 * for line-delimited protocols such as NDJSON watches.
 *
 * Chunks may split a line anywhere: feeding byte at a time gives the same
 * lines as feeding everything at once. A complete line that arrived in one
 * chunk is handed out in place (no copy); only a line split across chunks is
 * assembled in the splitter's buffer. Lines longer than max_line are skipped
 * whole and counted, never delivered truncated. The splitter owns its buffer;
 * brix_lines_free releases it.
 */
#ifndef BRIX_CORE_LINES_H
#define BRIX_CORE_LINES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* One line without its terminator (not NUL-terminated). Return 0 to go on,
 * non-zero to stop feeding (brix_lines_feed returns that value; the bytes
 * after the line stay unread). */
typedef int (*brix_line_fn)(const char *line, size_t len, void *ud);

typedef struct brix_lines {
    brix_buf_t part;   /* the start of a line split across chunks */
    size_t max_line;   /* bytes of a line without its terminator */
    bool skipping;     /* inside an over-long line: drop until its end */
    uint64_t lines;    /* lines delivered */
    uint64_t too_long; /* lines skipped for length */
} brix_lines_t;

/* max_line 0 selects 1 MiB. */
void brix_lines_init(brix_lines_t *l, size_t max_line);
/* Feeds a chunk; delivers every line it completes. Returns 0, -ENOMEM (the
 * partial line is dropped), or the callback's non-zero value. */
int brix_lines_feed(brix_lines_t *l, const char *data, size_t len, brix_line_fn fn, void *ud);
/* Forgets a partial line (a new stream starts). */
void brix_lines_reset(brix_lines_t *l);
void brix_lines_free(brix_lines_t *l);

#endif
