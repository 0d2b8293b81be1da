/*
 * core/lines: NDJSON-style line splitting must not depend on how the stream
 * is cut — every split of a sample stream (all at once, byte at a time, and
 * each two-piece split) gives the same lines; CRLF is stripped; over-long
 * lines are skipped whole; a callback can stop the feed; ENOMEM is clean.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/lines.h"
#include "leak_check.h"

typedef struct collect {
    brix_buf_t out; /* lines joined with '|' */
    int n;
    int stop_after; /* 0 = never */
} collect_t;

static int on_line(const char *s, size_t n, void *ud)
{
    collect_t *c = ud;
    brix_buf_append(&c->out, s, n);
    brix_buf_append_char(&c->out, '|');
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? 7 : 0;
}

static const char sample[] = "{\"type\":\"snapshot\",\"version\":1}\n"
                             "\r\n"
                             "{\"type\":\"heartbeat\"}\r\n"
                             "a somewhat longer line that goes over the limit of forty bytes\n"
                             "short\n"
                             "tail without end";
static const char want[] = "{\"type\":\"snapshot\",\"version\":1}||{\"type\":\"heartbeat\"}|short|";

static void feed_split(const size_t *cuts, size_t ncuts, collect_t *c, brix_lines_t *l)
{
    size_t at = 0, n = sizeof sample - 1;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        assert_int_equal(brix_lines_feed(l, sample + at, to - at, on_line, c), 0);
        at = to;
    }
}

static void check_one(const size_t *cuts, size_t ncuts)
{
    brix_lines_t l;
    brix_lines_init(&l, 40);
    collect_t c = { BRIX_BUF_INIT, 0, 0 };
    feed_split(cuts, ncuts, &c, &l);
    if (!c.out.data || strcmp(c.out.data, want))
        fail_msg("split %zu cuts (first %zu): got '%s'", ncuts, ncuts ? cuts[0] : 0,
                 c.out.data ? c.out.data : "");
    assert_int_equal(l.lines, 4);
    assert_int_equal(l.too_long, 1);
    /* the unterminated tail is kept, and completed by the next chunk */
    assert_int_equal(brix_lines_feed(&l, "!\n", 2, on_line, &c), 0);
    assert_non_null(strstr(c.out.data, "|tail without end!|"));
    brix_buf_free(&c.out);
    brix_lines_free(&l);
}

static void test_any_split(void **state)
{
    (void)state;
    size_t n = sizeof sample - 1;
    check_one(NULL, 0);
    size_t bytes[sizeof sample];
    for (size_t i = 0; i < n - 1; i++)
        bytes[i] = i + 1;
    check_one(bytes, n - 1);
    for (size_t i = 1; i < n; i++)
        check_one(&i, 1);
}

static void test_exact_limit(void **state)
{
    (void)state;
    brix_lines_t l;
    brix_lines_init(&l, 4);
    collect_t c = { BRIX_BUF_INIT, 0, 0 };
    /* 4 bytes fit, with or without CR; 5 do not, split or not */
    const char *s = "abcd\nabcd\r\nabcde\nxy\n";
    for (size_t i = 0; s[i]; i++)
        assert_int_equal(brix_lines_feed(&l, s + i, 1, on_line, &c), 0);
    assert_string_equal(c.out.data, "abcd|abcd|xy|");
    assert_int_equal(l.too_long, 1);
    brix_buf_reset(&c.out);
    assert_int_equal(brix_lines_feed(&l, s, strlen(s), on_line, &c), 0);
    assert_string_equal(c.out.data, "abcd|abcd|xy|");
    assert_int_equal(l.too_long, 2);
    brix_buf_free(&c.out);
    brix_lines_free(&l);
}

static void test_stop_and_reset(void **state)
{
    (void)state;
    brix_lines_t l;
    brix_lines_init(&l, 0);
    collect_t c = { BRIX_BUF_INIT, 0, 1 };
    assert_int_equal(brix_lines_feed(&l, "one\ntwo\nthr", 11, on_line, &c), 7);
    assert_string_equal(c.out.data, "one|");
    /* a new stream: a partial line of the old one is forgotten */
    assert_int_equal(brix_lines_feed(&l, "par", 3, on_line, &c), 0);
    brix_lines_reset(&l);
    c.stop_after = 0;
    assert_int_equal(brix_lines_feed(&l, "new\n", 4, on_line, &c), 0);
    assert_string_equal(c.out.data, "one|new|");
    brix_buf_free(&c.out);
    brix_lines_free(&l);
}

static void test_enomem(void **state)
{
    (void)state;
    brix_lines_t l;
    brix_lines_init(&l, 0);
    collect_t c = { BRIX_BUF_INIT, 0, 0 };
    brix_alloc_fail_after(0);
    assert_int_equal(brix_lines_feed(&l, "partial", 7, on_line, &c), -ENOMEM);
    brix_alloc_fail_after(-1);
    assert_int_equal(brix_lines_feed(&l, "ok\n", 3, on_line, &c), 0);
    assert_string_equal(c.out.data, "ok|");
    brix_buf_free(&c.out);
    brix_lines_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_any_split, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_exact_limit, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_stop_and_reset, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_enomem, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
