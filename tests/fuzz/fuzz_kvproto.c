/*
 * libFuzzer target for kvcache/kvproto, the server's brixkv request parser
 * (build and run with tests/fuzz/run). The first byte chooses a chunk size;
 * the rest is the request stream. Properties: never reads or writes outside
 * the input and the destinations it was given (ASan); the stream fed in
 * chunks, byte by byte, and through the direct-read path (PUT values read
 * straight into their destinations, as the server does) gives the same
 * callbacks, the same PUT bytes and the same error as in one piece; an
 * error is reported once and ends the parse; a PUT's values add up to its
 * body; destinations given value by value (on_put_value, the server's lazy
 * reservation) give the same, each value asked for once, in order.
 */
#include "kvcache/kvproto.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct rec {
    brix_buf_t log;
    uint8_t *vals[8]; /* destinations of a PUT's first values */
    uint32_t lens[8];
    uint32_t n;
    int errors;
    bool lazy;      /* destinations through on_put_value, as the server does */
    uint32_t asked; /* on_put_value calls in this PUT */
    uint32_t count; /* values in this PUT */
} rec_t;

static void hash_into(brix_buf_t *b, const uint8_t *p, uint64_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    brix_buf_printf(b, " %llx", (unsigned long long)h);
}

static int on_frame(void *ud, const brixkv_hdr_t *h, const uint8_t *body)
{
    rec_t *r = ud;
    if (r->errors)
        abort(); /* nothing after an error */
    brix_buf_printf(&r->log, "F %u %u %u %llu", h->op, h->id, h->count,
                    (unsigned long long)h->body_len);
    hash_into(&r->log, body, h->body_len);
    brix_buf_append_char(&r->log, '\n');
    return 0;
}

static int on_put(void *ud, const brixkv_hdr_t *h, const brixkv_put_desc_t *d, uint8_t **dest)
{
    rec_t *r = ud;
    if (r->errors)
        abort();
    uint64_t sum = 0;
    brix_buf_printf(&r->log, "P %u %u", h->id, h->count);
    for (uint32_t i = 0; i < h->count; i++) {
        sum += d[i].len;
        brix_buf_printf(&r->log, " %u", d[i].len);
    }
    if (sum + (uint64_t)h->count * sizeof *d != h->body_len)
        abort();
    brix_buf_append_char(&r->log, '\n');
    r->n = h->count < 8 ? h->count : 8;
    for (uint32_t i = 0; i < r->n; i++) {
        r->lens[i] = d[i].len;
        /* every other value is dropped (NULL), like a key that is EXISTS */
        r->vals[i] = i % 2 == 0 ? calloc(1, d[i].len ? d[i].len : 1) : NULL;
        if (!r->lazy)
            dest[i] = r->vals[i];
    }
    r->asked = 0;
    r->count = h->count;
    return 0;
}

/* Values are asked for once each, in order, before any of their bytes. */
static int on_put_value(void *ud, const brixkv_hdr_t *h, uint32_t i, const brixkv_put_desc_t *d,
                        uint8_t **dest)
{
    rec_t *r = ud;
    (void)h;
    (void)d;
    if (r->errors || i != r->asked++ || *dest)
        abort();
    if (i < r->n)
        *dest = r->vals[i];
    return 0;
}

static int on_put_done(void *ud, const brixkv_hdr_t *h)
{
    rec_t *r = ud;
    if (r->lazy && r->asked != r->count)
        abort(); /* every value was asked for */
    brix_buf_printf(&r->log, "D %u", h->id);
    for (uint32_t i = 0; i < r->n; i++) {
        if (r->vals[i])
            hash_into(&r->log, r->vals[i], r->lens[i]);
        free(r->vals[i]);
        r->vals[i] = NULL;
    }
    r->n = 0;
    brix_buf_append_char(&r->log, '\n');
    return 0;
}

static void on_error(void *ud, const brixkv_hdr_t *h, uint16_t st, const char *msg)
{
    rec_t *r = ud;
    if (r->errors++)
        abort();
    brix_buf_printf(&r->log, "E %u %u %s\n", h->op, st, msg);
}

static const brix_kvp_limits_t lim = { .max_batch = 16, .max_frame = 1 << 16, .max_string = 512 };

/* mode 0: chunks of step through feed; 1: direct reads of at most step;
 * lazy: destinations given value by value (on_put_value) */
static void run(const uint8_t *s, size_t len, size_t step, int mode, bool lazy, brix_buf_t *out)
{
    rec_t r;
    memset(&r, 0, sizeof r);
    r.lazy = lazy;
    brix_kvp_t p;
    brix_kvp_cb_t cb = { on_frame, on_put, on_put_done, on_error, lazy ? on_put_value : NULL };
    brix_kvp_init(&p, &lim, &cb, &r);
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0;) {
        uint8_t *dst;
        size_t n;
        if (mode == 1 && brix_kvp_direct(&p, &dst, &n)) {
            if (n > step)
                n = step;
            if (n > len - off)
                n = len - off;
            memcpy(dst, s + off, n);
            rc = brix_kvp_direct_done(&p, n);
        } else {
            n = len - off < step ? len - off : step;
            rc = brix_kvp_feed(&p, s + off, n);
        }
        off += n;
    }
    if ((rc != 0) != (r.errors != 0) && p.state == BRIX_KVP_ERROR && !r.errors)
        abort();
    brix_buf_printf(&r.log, "end %d in_put=%d\n", rc, brix_kvp_in_put(&p));
    for (uint32_t i = 0; i < r.n; i++)
        free(r.vals[i]);
    brix_kvp_free(&p);
    brix_buf_append(out, r.log.data, r.log.len);
    brix_buf_free(&r.log);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    brix_buf_t whole = BRIX_BUF_INIT, other = BRIX_BUF_INIT;
    run(data, size, size ? size : 1, 0, false, &whole);
    const size_t steps[] = { step, 1 };
    for (int i = 0; i < 2; i++) {
        for (int mode = 0; mode < 4; mode++) {
            brix_buf_reset(&other);
            run(data, size, steps[i], mode % 2, mode >= 2, &other);
            if (other.len != whole.len || memcmp(other.data, whole.data, whole.len))
                abort();
        }
    }
    brix_buf_free(&whole);
    brix_buf_free(&other);
    return 0;
}
