/*
 * buf — the one growable byte buffer used by every module (cf. redis' sds).
 *
 * A brix_buf_t owns `data` (allocated with brix_malloc); `data` is always
 * NUL-terminated when non-NULL so it can be handed to C string functions, and
 * the terminator is not counted in `len`. Functions return 0 or -ENOMEM; on
 * failure the buffer is unchanged.
 */
#ifndef BRIX_CORE_BUF_H
#define BRIX_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct brix_buf {
    char *data;
    size_t len;
    size_t cap;
} brix_buf_t;

#define BRIX_BUF_INIT                                                                              \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

int brix_buf_reserve(brix_buf_t *b, size_t extra);
int brix_buf_append(brix_buf_t *b, const void *p, size_t n);
int brix_buf_append_str(brix_buf_t *b, const char *s);
int brix_buf_append_char(brix_buf_t *b, char c);
int brix_buf_printf(brix_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int brix_buf_vprintf(brix_buf_t *b, const char *fmt, va_list ap);
/* Appends a JSON string literal (quotes included), escaping as RFC 8259 requires. */
int brix_buf_append_json_str(brix_buf_t *b, const char *s, size_t n);
int brix_buf_append_u64(brix_buf_t *b, uint64_t v);
/* Drops the first n bytes. */
void brix_buf_consume(brix_buf_t *b, size_t n);
void brix_buf_reset(brix_buf_t *b);
void brix_buf_free(brix_buf_t *b);
/* Moves ownership of the contents to the caller; the buffer becomes empty. */
char *brix_buf_detach(brix_buf_t *b, size_t *len);

#endif
