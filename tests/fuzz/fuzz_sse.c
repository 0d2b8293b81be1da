/*
 * libFuzzer target for core/sse, the SSE relay's event framer (build and
 * run with tests/fuzz/run). The first two bytes choose a chunk size and a
 * cap; the rest is the stream. Properties: never reads outside the input
 * (ASan); the input split in chunks gives the same events, the same held
 * tail and the same cap error as the input in one piece and as byte by
 * byte; events plus tail are the input; no event is longer than the cap.
 */
#include "core/sse.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct out {
    brix_buf_t b; /* events, each after its length */
    size_t max;
} out_t;

static int on_ev(void *ud, const char *ev, size_t n)
{
    out_t *o = ud;
    if (!n || n > o->max)
        abort();
    brix_buf_append(&o->b, &n, sizeof n);
    brix_buf_append(&o->b, ev, n);
    return 0;
}

static int run(const char *s, size_t len, size_t step, size_t max, out_t *o, brix_buf_t *tail)
{
    brix_sse_t fr;
    brix_sse_init(&fr, max);
    o->max = max;
    int rc = 0;
    for (size_t i = 0; i < len && !rc; i += step)
        rc = brix_sse_feed(&fr, s + i, len - i < step ? len - i : step, on_ev, o);
    const char *p;
    size_t n = brix_sse_pending(&fr, &p);
    brix_buf_append(tail, p, n);
    brix_sse_free(&fr);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = (size_t)data[0] % 17 + 1, max = (size_t)data[1] * 4 + 1;
    const char *s = (const char *)data + 2;
    size_t len = size - 2;
    out_t a = { BRIX_BUF_INIT, 0 }, b = { BRIX_BUF_INIT, 0 }, c = { BRIX_BUF_INIT, 0 };
    brix_buf_t ta = BRIX_BUF_INIT, tb = BRIX_BUF_INIT, tc = BRIX_BUF_INIT;
    int ra = run(s, len, len ? len : 1, max, &a, &ta);
    int rb = run(s, len, step, max, &b, &tb);
    int rc = run(s, len, 1, max, &c, &tc);
    if (ra != rb || ra != rc || (ra && ra != -E2BIG))
        abort();
    if (a.b.len != b.b.len || a.b.len != c.b.len ||
        (a.b.len && (memcmp(a.b.data, b.b.data, a.b.len) || memcmp(a.b.data, c.b.data, a.b.len))))
        abort();
    if (!ra) {
        if (ta.len != tb.len || ta.len != tc.len ||
            (ta.len && (memcmp(ta.data, tb.data, ta.len) || memcmp(ta.data, tc.data, ta.len))))
            abort();
        /* events + tail == input */
        size_t at = 0, i = 0;
        while (i < a.b.len) {
            size_t n;
            memcpy(&n, a.b.data + i, sizeof n);
            i += sizeof n;
            if (at + n > len || memcmp(a.b.data + i, s + at, n))
                abort();
            at += n;
            i += n;
        }
        if (at + ta.len != len || (ta.len && memcmp(ta.data, s + at, ta.len)))
            abort();
    }
    brix_buf_free(&a.b);
    brix_buf_free(&b.b);
    brix_buf_free(&c.b);
    brix_buf_free(&ta);
    brix_buf_free(&tb);
    brix_buf_free(&tc);
    return 0;
}
