/*
 * Growable buffer: capacity doubles, so appends are amortised O(1). Space for
 * the NUL terminator is always reserved beyond `len`.
 */
#include "core/buf.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

int brix_buf_reserve(brix_buf_t *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need < b->len)
        return -ENOMEM;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    char *d = brix_realloc(b->data, cap);
    if (!d)
        return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int brix_buf_append(brix_buf_t *b, const void *p, size_t n)
{
    if (brix_buf_reserve(b, n))
        return -ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int brix_buf_append_str(brix_buf_t *b, const char *s)
{
    return brix_buf_append(b, s, strlen(s));
}

int brix_buf_append_char(brix_buf_t *b, char c)
{
    return brix_buf_append(b, &c, 1);
}

int brix_buf_vprintf(brix_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof small)
        return brix_buf_append(b, small, (size_t)n);
    if (brix_buf_reserve(b, (size_t)n))
        return -ENOMEM;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int brix_buf_printf(brix_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = brix_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int brix_buf_append_u64(brix_buf_t *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return brix_buf_append(b, tmp + i, sizeof tmp - i);
}

int brix_buf_append_json_str(brix_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Worst case every byte becomes \u00XX. */
    if (n > (SIZE_MAX - 2) / 6 || brix_buf_reserve(b, n * 6 + 2))
        return -ENOMEM;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            *o++ = '\\';
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            *o++ = '\\';
            break;
        case '\n':
            *o++ = '\\';
            *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\';
            *o++ = 'r';
            break;
        case '\t':
            *o++ = '\\';
            *o++ = 't';
            break;
        default: {
            /* Besides what JSON requires, DEL and the C1 controls (U+0080..
             * U+009F, UTF-8 C2 80..C2 9F) are escaped too: brix reads its own
             * JSON (state file, API bodies) through libyaml, which refuses
             * them raw ("control characters are not allowed") and folds a
             * raw U+0085 (NEL) as a line break. */
            bool c1 = c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
                      (unsigned char)s[i + 1] <= 0x9f;
            if (c1)
                c = (unsigned char)s[++i];
            if (c < 0x20 || c == 0x7f || c1) {
                memcpy(o, "\\u00", 4);
                o[4] = hex[c >> 4];
                o[5] = hex[c & 15];
                o += 6;
            } else {
                *o++ = (char)c;
            }
            break;
        }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return 0;
}

void brix_buf_consume(brix_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void brix_buf_reset(brix_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void brix_buf_free(brix_buf_t *b)
{
    brix_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *brix_buf_detach(brix_buf_t *b, size_t *len)
{
    char *d = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}
