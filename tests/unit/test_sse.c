/*
 * core/sse: event framing for the gateway's SSE relay. Every line ending
 * the WHATWG grammar allows (LF, CRLF, CR, mixed) ends events where a
 * browser would dispatch them; byte-at-a-time input gives the same events,
 * in the same bytes, as all-at-once input (on fixed and random streams);
 * the events plus the held tail are the input, byte for byte; an event
 * over the cap is an error however it arrives, one of exactly the cap is
 * not; a 1 MiB event fed one byte at a time finishes (a relay that rescans
 * its buffer per chunk would take ~10^11 steps here, past the ctest
 * timeout); a callback's stop is returned at once; no leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/sse.h"

#include "leak_check.h"

typedef struct got {
    brix_buf_t all; /* events, each followed by a 0x01 separator */
    size_t n;
    int stop_at; /* return 1 on this event (1-based), 0 = never */
} got_t;

static int on_ev(void *ud, const char *ev, size_t n)
{
    got_t *g = ud;
    assert_true(n > 0);
    brix_buf_append(&g->all, ev, n);
    brix_buf_append_char(&g->all, '\x01');
    g->n++;
    return g->stop_at && (int)g->n == g->stop_at ? 1 : 0;
}

/* Feeds s in pieces of `step` bytes (0: all at once); returns the rc of the
 * first failing feed (0 if none) and leaves the held tail in *tail. */
static int frame(const char *s, size_t len, size_t step, size_t max, got_t *g, brix_buf_t *tail)
{
    brix_sse_t fr;
    brix_sse_init(&fr, max);
    int rc = 0;
    if (!step)
        step = len ? len : 1;
    for (size_t i = 0; i < len && !rc; i += step)
        rc = brix_sse_feed(&fr, s + i, len - i < step ? len - i : step, on_ev, g);
    const char *p;
    size_t n = brix_sse_pending(&fr, &p);
    if (tail)
        brix_buf_append(tail, p, n);
    brix_sse_free(&fr);
    return rc;
}

static void expect_events(const char *s, const char *want /* events joined by '|' */,
                          const char *want_tail)
{
    for (size_t step = 0; step <= 3; step++) {
        got_t g = { BRIX_BUF_INIT, 0, 0 };
        brix_buf_t tail = BRIX_BUF_INIT;
        assert_int_equal(frame(s, strlen(s), step, 0, &g, &tail), 0);
        brix_buf_t w = BRIX_BUF_INIT;
        for (const char *p = want; *p; p++)
            brix_buf_append_char(&w, *p == '|' ? '\x01' : *p);
        if (g.all.len != w.len || memcmp(g.all.data, w.data, w.len))
            fail_msg("step %zu: events of %.40s differ", step, s);
        assert_int_equal(tail.len, strlen(want_tail));
        assert_memory_equal(tail.data ? tail.data : "", want_tail, tail.len);
        brix_buf_free(&w);
        brix_buf_free(&tail);
        brix_buf_free(&g.all);
    }
}

static void test_line_endings(void **state)
{
    (void)state;
    expect_events("data: a\n\ndata: b\n\n", "data: a\n\n|data: b\n\n|", "");
    expect_events("data: a\r\n\r\ndata: b\r\n\r\n", "data: a\r\n\r|\ndata: b\r\n\r|", "\n");
    expect_events("data: a\r\rdata: b\r\r", "data: a\r\r|data: b\r\r|", "");
    /* mixed: CRLF then LF, LF then CRLF, CR then LF-blank */
    expect_events("data: a\r\n\nx\n\r\ny\r\n\n", "data: a\r\n\n|x\n\r|\ny\r\n\n|", "");
    /* multi-line events and comments stay whole */
    expect_events("event: e\ndata: 1\ndata: 2\n\n: ping\n\n",
                  "event: e\ndata: 1\ndata: 2\n\n|: ping\n\n|", "");
    /* an LF completing a CRLF is not a blank line of its own */
    expect_events("a\r\n\r\nb\n", "a\r\n\r|", "\nb\n");
    /* a partial event is held */
    expect_events("data: a\n\ndata: par", "data: a\n\n|", "data: par");
    /* blank lines alone are (empty) events */
    expect_events("\n\n", "\n|\n|", "");
}

static void test_random_streams_chunking(void **state)
{
    (void)state;
    static const char alphabet[] = "ab:\r\n\n\r";
    srand(7);
    char s[512];
    for (int iter = 0; iter < 400; iter++) {
        size_t len = (size_t)(rand() % (int)sizeof s);
        for (size_t i = 0; i < len; i++)
            s[i] = alphabet[rand() % (int)(sizeof alphabet - 1)];
        got_t ref = { BRIX_BUF_INIT, 0, 0 };
        brix_buf_t rtail = BRIX_BUF_INIT;
        assert_int_equal(frame(s, len, 0, 0, &ref, &rtail), 0);
        /* the events and the tail are the input */
        brix_buf_t joined = BRIX_BUF_INIT;
        for (size_t i = 0; i < ref.all.len; i++)
            if (ref.all.data[i] != '\x01')
                brix_buf_append_char(&joined, ref.all.data[i]);
        brix_buf_append(&joined, rtail.data, rtail.len);
        assert_int_equal(joined.len, len);
        assert_memory_equal(joined.data ? joined.data : "", s, len);
        for (size_t step = 1; step <= 7; step += 3) {
            got_t g = { BRIX_BUF_INIT, 0, 0 };
            brix_buf_t tail = BRIX_BUF_INIT;
            assert_int_equal(frame(s, len, step, 0, &g, &tail), 0);
            assert_int_equal(g.n, ref.n);
            assert_int_equal(g.all.len, ref.all.len);
            assert_memory_equal(g.all.data ? g.all.data : "", ref.all.data ? ref.all.data : "",
                                g.all.len);
            assert_int_equal(tail.len, rtail.len);
            brix_buf_free(&g.all);
            brix_buf_free(&tail);
        }
        brix_buf_free(&joined);
        brix_buf_free(&ref.all);
        brix_buf_free(&rtail);
    }
}

static void test_cap(void **state)
{
    (void)state;
    const size_t max = 64;
    char ev[200];
    /* an event of exactly max bytes (terminator included) passes */
    memset(ev, 'x', sizeof ev);
    memcpy(ev, "data: ", 6);
    ev[max - 2] = '\n';
    ev[max - 1] = '\n';
    for (size_t step = 0; step <= 5; step += 5) {
        got_t g = { BRIX_BUF_INIT, 0, 0 };
        assert_int_equal(frame(ev, max, step, max, &g, NULL), 0);
        assert_int_equal(g.n, 1);
        brix_buf_free(&g.all);
    }
    /* one byte more fails, in one chunk or byte by byte, after the events
     * before it were delivered */
    char big[300];
    memcpy(big, "data: a\n\n", 9);
    memset(big + 9, 'y', 100);
    memcpy(big + 9 + max - 1, "\n\n", 2);
    for (size_t step = 0; step <= 1; step++) {
        got_t g = { BRIX_BUF_INIT, 0, 0 };
        assert_int_equal(frame(big, 9 + max + 1, step, max, &g, NULL), -E2BIG);
        assert_int_equal(g.n, 1);
        brix_buf_free(&g.all);
    }
    /* a partial event past the cap fails before its end arrives */
    got_t g = { BRIX_BUF_INIT, 0, 0 };
    memset(big, 'z', sizeof big);
    assert_int_equal(frame(big, sizeof big, 10, max, &g, NULL), -E2BIG);
    assert_int_equal(g.n, 0);
    brix_buf_free(&g.all);
}

static void test_big_event_byte_at_a_time(void **state)
{
    (void)state;
    size_t n = BRIX_SSE_DEFAULT_MAX;
    char *s = malloc(n);
    assert_non_null(s);
    memset(s, 'x', n);
    memcpy(s, "data: ", 6);
    s[n - 2] = '\n';
    s[n - 1] = '\n';
    got_t g = { BRIX_BUF_INIT, 0, 0 };
    assert_int_equal(frame(s, n, 1, 0, &g, NULL), 0);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.all.len, n + 1);
    brix_buf_free(&g.all);
    free(s);
}

static void test_stop(void **state)
{
    (void)state;
    const char *s = "a\n\nb\n\nc\n\n";
    got_t g = { BRIX_BUF_INIT, 0, 2 };
    brix_sse_t fr;
    brix_sse_init(&fr, 0);
    assert_int_equal(brix_sse_feed(&fr, s, strlen(s), on_ev, &g), 1);
    assert_int_equal(g.n, 2);
    brix_sse_free(&fr);
    brix_buf_free(&g.all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_line_endings, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_random_streams_chunking, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cap, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_big_event_byte_at_a_time, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_stop, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
