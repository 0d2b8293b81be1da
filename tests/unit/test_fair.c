/*
 * Unit tests for gateway/fair.h: pass-through below capacity, per-tenant
 * queues at capacity, Virtual Token Counter order (a light tenant overtakes
 * a flooding one; the counter lift gives no credit for idle time; output
 * tokens weigh twice), strict priority classes, bounded queues, deadlines,
 * cancellation of waiting and in-transit requests, the shared overflow
 * tenant, and eviction of idle tenants from a full table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/time.h"
#include "gateway/fair.h"

#include "leak_check.h"

/* deliver() log: the items handed over, in order */
static brix_fair_item_t *g_out[64];
static size_t g_nout;

static void deliver(void *ud, int worker, brix_fair_item_t *it)
{
    (void)ud;
    assert_int_equal(worker, 7);
    assert_true(g_nout < 64);
    g_out[g_nout++] = it;
}

static brix_fair_t *fair_r(int64_t capacity, int64_t qsize, int64_t tenants, double reserve)
{
    brix_fair_cfg_t c = { .queue_size = qsize,
                          .timeout_ms = 1000,
                          .w_in = 1,
                          .w_out = 2,
                          .max_tenants = tenants,
                          .reserve = reserve };
    brix_fair_t *f = brix_fair_new(&c, deliver, NULL);
    assert_non_null(f);
    brix_fair_set_capacity(f, capacity);
    g_nout = 0;
    return f;
}

static brix_fair_t *fair(int64_t capacity, int64_t qsize, int64_t tenants)
{
    return fair_r(capacity, qsize, tenants, 0);
}

static brix_fair_item_t *enter(brix_fair_t *f, const char *tenant, int64_t prio, int64_t in,
                               brix_fair_rc_t want)
{
    brix_fair_item_t *it = NULL;
    static int tag;
    assert_int_equal(brix_fair_enter(f, tenant, prio, in, 7, &tag, &it), want);
    if (want == BRIX_FAIR_FULL)
        assert_null(it);
    else
        assert_non_null(it);
    return it;
}

/* Takes the next delivered item (as a worker would) and checks its tenant. */
static brix_fair_item_t *take(brix_fair_t *f, size_t *pos, const brix_fair_item_t *want)
{
    (void)f;
    assert_true(*pos < g_nout);
    brix_fair_item_t *it = g_out[(*pos)++];
    assert_ptr_equal(it, want);
    return it;
}

static void test_pass_through_then_queue(void **state)
{
    (void)state;
    brix_fair_t *f = fair(2, 10, 100);
    brix_fair_item_t *a = enter(f, "a", 0, 10, BRIX_FAIR_GO);
    brix_fair_item_t *b = enter(f, "b", 0, 10, BRIX_FAIR_GO);
    brix_fair_item_t *c = enter(f, "a", 0, 10, BRIX_FAIR_WAIT);
    brix_fair_stats_t st;
    brix_fair_stats(f, &st);
    assert_int_equal(st.inflight, 2);
    assert_int_equal(st.queued, 1);
    assert_int_equal(g_nout, 0);
    brix_fair_leave(f, a, 5);
    assert_int_equal(g_nout, 1);
    size_t pos = 0;
    take(f, &pos, c);
    assert_int_equal(c->state, BRIX_FAIR_ADMITTED);
    brix_fair_leave(f, c, 0);
    brix_fair_leave(f, b, 0);
    brix_fair_stats(f, &st);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.admitted_direct, 2);
    assert_int_equal(st.admitted_queued, 1);
    /* capacity < 0: no limit */
    brix_fair_set_capacity(f, -1);
    brix_fair_item_t *x[5];
    for (int i = 0; i < 5; i++)
        x[i] = enter(f, "a", 0, 1, BRIX_FAIR_GO);
    for (int i = 0; i < 5; i++)
        brix_fair_leave(f, x[i], 0);
    brix_fair_free(f);
}

static void test_light_overtakes_heavy(void **state)
{
    (void)state;
    brix_fair_t *f = fair(1, 100, 100);
    brix_fair_item_t *h0 = enter(f, "heavy", 0, 100, BRIX_FAIR_GO);
    brix_fair_item_t *h[5];
    for (int i = 0; i < 5; i++)
        h[i] = enter(f, "heavy", 0, 100, BRIX_FAIR_WAIT);
    /* the newcomer is lifted to the waiting heavy tenant's counter, then
     * served as soon as heavy's running request is charged its output */
    brix_fair_item_t *l = enter(f, "light", 0, 100, BRIX_FAIR_WAIT);
    assert_true(brix_fair_counter(f, "light") >= brix_fair_counter(f, "heavy") - 1e-9);
    brix_fair_leave(f, h0, 50); /* heavy += 2 x 50 */
    size_t pos = 0;
    take(f, &pos, l);
    brix_fair_leave(f, l, 50);
    take(f, &pos, h[0]);
    /* light is idle now: heavy gets everything */
    brix_fair_leave(f, h[0], 50);
    take(f, &pos, h[1]);
    brix_fair_leave(f, h[1], 50);
    take(f, &pos, h[2]);
    /* light comes back: no credit for having been idle — it is lifted to
     * the least counter waiting, not left far behind */
    double before = brix_fair_counter(f, "light");
    brix_fair_item_t *l2 = enter(f, "light", 0, 100, BRIX_FAIR_WAIT);
    assert_true(brix_fair_counter(f, "light") > before);
    brix_fair_leave(f, h[2], 50);
    take(f, &pos, l2); /* light (lifted to 700) is below heavy (800) */
    brix_fair_leave(f, l2, 0);
    take(f, &pos, h[3]);
    brix_fair_leave(f, h[3], 0);
    take(f, &pos, h[4]);
    brix_fair_leave(f, h[4], 0);
    assert_int_equal(pos, g_nout);
    brix_fair_free(f);
}

static void test_reserve_for_light_tenants(void **state)
{
    (void)state;
    brix_fair_t *f = fair_r(8, 100, 100, 0.25); /* over-share tenants stop at 6 of 8 */
    brix_fair_item_t *h[12];
    for (int i = 0; i < 8; i++) /* alone, the heavy tenant may use everything */
        h[i] = enter(f, "heavy", 0, 10, BRIX_FAIR_GO);
    for (int i = 8; i < 12; i++)
        h[i] = enter(f, "heavy", 0, 10, BRIX_FAIR_WAIT);
    brix_fair_item_t *l1 = enter(f, "light", 0, 10, BRIX_FAIR_WAIT); /* no room at all */
    /* two heavy requests end: light (under its share of 4) gets the first slot,
     * heavy (over its share) not the second: 7 of 8 > 6 */
    brix_fair_leave(f, h[0], 10);
    size_t pos = 0;
    take(f, &pos, l1);
    brix_fair_leave(f, h[1], 10);
    assert_int_equal(g_nout, 1);
    /* a new light request goes straight in, past heavy's queue */
    brix_fair_item_t *l2 = enter(f, "light", 0, 10, BRIX_FAIR_GO);
    brix_fair_stats_t st;
    brix_fair_stats(f, &st);
    assert_int_equal(st.inflight, 8);
    assert_int_equal(st.queued, 4);
    /* while light is active, heavy stays out of the reserve: 7 in flight */
    brix_fair_leave(f, l1, 1);
    assert_int_equal(g_nout, 1);
    /* light gone: heavy alone may fill everything again */
    brix_fair_leave(f, l2, 1);
    assert_int_equal(g_nout, 3);
    take(f, &pos, h[8]);
    take(f, &pos, h[9]);
    for (int i = 2; i < 8; i++)
        brix_fair_leave(f, h[i], 1);
    take(f, &pos, h[10]);
    take(f, &pos, h[11]);
    for (int i = 8; i < 12; i++)
        brix_fair_leave(f, h[i], 1);
    brix_fair_stats(f, &st);
    assert_int_equal(st.inflight, 0);
    brix_fair_free(f);
}

static void test_no_capacity_holds_requests(void **state)
{
    (void)state;
    brix_fair_t *f = fair(1, 100, 100);
    brix_fair_item_t *a = enter(f, "a", 0, 1, BRIX_FAIR_GO);
    brix_fair_item_t *b = enter(f, "b", 0, 1, BRIX_FAIR_WAIT);
    /* every pod went away: nothing more is let in, nothing is flushed */
    brix_fair_set_capacity(f, 0);
    brix_fair_leave(f, a, 0);
    assert_int_equal(g_nout, 0);
    brix_fair_item_t *c = enter(f, "c", 0, 1, BRIX_FAIR_WAIT);
    /* pods are back: the waiting requests go in */
    brix_fair_set_capacity(f, 4);
    assert_int_equal(g_nout, 2);
    size_t pos = 0;
    brix_fair_leave(f, take(f, &pos, g_out[0] == b ? b : c), 0);
    brix_fair_leave(f, g_out[1], 0);
    brix_fair_free(f);
}

static void test_tie_goes_to_fewer_in_flight(void **state)
{
    (void)state;
    brix_fair_t *f = fair(2, 100, 100);
    brix_fair_item_t *h0 = enter(f, "heavy", 0, 10, BRIX_FAIR_GO);
    brix_fair_item_t *h1 = enter(f, "heavy", 0, 10, BRIX_FAIR_GO);
    brix_fair_item_t *h2 = enter(f, "heavy", 0, 10, BRIX_FAIR_WAIT);
    brix_fair_item_t *l = enter(f, "light", 0, 10, BRIX_FAIR_WAIT);
    /* lifted to exactly heavy's counter: equal; light has nothing in flight */
    assert_true(brix_fair_counter(f, "light") == brix_fair_counter(f, "heavy"));
    brix_fair_leave(f, h0, 0);
    size_t pos = 0;
    take(f, &pos, l);
    brix_fair_leave(f, l, 0);
    take(f, &pos, h2);
    brix_fair_leave(f, h1, 0);
    brix_fair_leave(f, h2, 0);
    brix_fair_free(f);
}

static void test_output_weighs_twice(void **state)
{
    (void)state;
    brix_fair_t *f = fair(1, 100, 100);
    brix_fair_item_t *a = enter(f, "a", 0, 10, BRIX_FAIR_GO);
    double c0 = brix_fair_counter(f, "a");
    brix_fair_leave(f, a, 30);
    assert_true(brix_fair_counter(f, "a") - c0 > 59.99 && brix_fair_counter(f, "a") - c0 < 60.01);
    brix_fair_free(f);
}

static void test_priority_classes(void **state)
{
    (void)state;
    brix_fair_t *f = fair(1, 100, 100);
    brix_fair_item_t *run = enter(f, "low", 0, 1, BRIX_FAIR_GO);
    brix_fair_item_t *lo = enter(f, "low2", 0, 1, BRIX_FAIR_WAIT);
    brix_fair_item_t *hi = enter(f, "vip", 5, 1000, BRIX_FAIR_WAIT);
    brix_fair_leave(f, run, 0);
    size_t pos = 0;
    take(f, &pos, hi); /* higher class first, whatever its counter */
    brix_fair_leave(f, hi, 0);
    take(f, &pos, lo);
    brix_fair_leave(f, lo, 0);
    brix_fair_free(f);
}

static void test_full_expired_cancelled(void **state)
{
    (void)state;
    brix_fair_t *f = fair(1, 2, 100);
    brix_fair_item_t *run = enter(f, "a", 0, 1, BRIX_FAIR_GO);
    brix_fair_item_t *q1 = enter(f, "a", 0, 1, BRIX_FAIR_WAIT);
    brix_fair_item_t *q2 = enter(f, "a", 0, 1, BRIX_FAIR_WAIT);
    enter(f, "a", 0, 1, BRIX_FAIR_FULL);
    brix_fair_item_t *b = enter(f, "b", 0, 1, BRIX_FAIR_WAIT); /* b's own queue */
    /* the client of q1 leaves while it waits: removed */
    brix_fair_cancel(f, q1);
    brix_fair_stats_t st;
    brix_fair_stats(f, &st);
    assert_int_equal(st.queued, 2);
    assert_int_equal(st.rejected_full, 1);
    /* deadlines: nothing expires early, everything waiting expires late */
    brix_fair_sweep(f, brix_now_ns());
    assert_int_equal(g_nout, 0);
    brix_fair_sweep(f, brix_now_ns() + 2000000000ull);
    assert_int_equal(g_nout, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_true(g_out[i] == q2 || g_out[i] == b);
        assert_int_equal(g_out[i]->state, BRIX_FAIR_EXPIRED);
        brix_fair_leave(f, g_out[i], 0); /* the worker answers 503 */
    }
    brix_fair_stats(f, &st);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.inflight, 1);
    /* an item admitted while its client left: the worker releases the slot */
    brix_fair_item_t *c = enter(f, "c", 0, 1, BRIX_FAIR_WAIT);
    brix_fair_leave(f, run, 0); /* c admitted, on its way */
    assert_int_equal(g_nout, 3);
    brix_fair_cancel(f, c); /* client gone before the worker took it */
    assert_null(c->px);
    brix_fair_leave(f, g_out[2], 0); /* what the worker does on arrival */
    brix_fair_stats(f, &st);
    assert_int_equal(st.inflight, 0);
    brix_fair_free(f);
}

static void test_overflow_tenant(void **state)
{
    (void)state;
    brix_fair_t *f = fair(1, 100, 2);
    brix_fair_item_t *run = enter(f, "t1", 0, 1, BRIX_FAIR_GO);
    brix_fair_item_t *w[4];
    const char *names[] = { "t2", "t3", "t4", "t5" };
    for (int i = 0; i < 4; i++)
        w[i] = enter(f, names[i], 0, 1, BRIX_FAIR_WAIT);
    /* t3.. share the overflow slot (FIFO among them) */
    assert_true(brix_fair_counter(f, "t3") < 0);
    brix_fair_leave(f, run, 0);
    size_t pos = 0;
    for (int i = 0; i < 4; i++) {
        brix_fair_item_t *it = g_out[pos++];
        brix_fair_leave(f, it, 0);
    }
    (void)w;
    assert_int_equal(pos, 4);
    brix_fair_free(f);
    /* names longer than what is kept still find their tenant (no slot each) */
    f = fair(-1, 100, 2);
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    for (int i = 0; i < 5; i++)
        brix_fair_leave(f, enter(f, longname, 0, 10, BRIX_FAIR_GO), 0);
    assert_true(brix_fair_counter(f, longname) >= 50);
    brix_fair_leave(f, enter(f, "second", 0, 1, BRIX_FAIR_GO), 0);
    assert_true(brix_fair_counter(f, "second") >= 0); /* a slot was still free */
    brix_fair_free(f);
}

/* The tenant table evicts idle tenants: more than max_tenants users over
 * time each get their own tenant (they shared "(other)" for good once the
 * table had filled), but only tenants idle for idle_ms whose counter a
 * newcomer's start would not lower, so nobody sheds its counter. */
static void test_idle_tenants_evicted(void **state)
{
    (void)state;
    brix_fair_cfg_t c = {
        .queue_size = 10, .timeout_ms = 1000, .w_in = 1, .w_out = 2, .max_tenants = 4, .idle_ms = 0
    };
    brix_fair_t *f = brix_fair_new(&c, deliver, NULL);
    assert_non_null(f);
    g_nout = 0;
    /* 100 users, at most 3 of them active at once, through a table of 4 */
    brix_fair_item_t *run[3] = { NULL, NULL, NULL };
    for (int i = 0; i < 100; i++) {
        char name[16];
        snprintf(name, sizeof name, "user%d", i);
        if (run[i % 3])
            brix_fair_leave(f, run[i % 3], 1);
        run[i % 3] = enter(f, name, 0, 1, BRIX_FAIR_GO);
        assert_int_not_equal(run[i % 3]->tenant, 0); /* not the shared overflow */
        assert_true(brix_fair_counter(f, name) >= 0);
        /* the others still in flight kept their tenants */
        for (int k = 1; k < 3 && i - k >= 0; k++) {
            snprintf(name, sizeof name, "user%d", i - k);
            assert_true(brix_fair_counter(f, name) >= 0);
        }
    }
    brix_fair_stats_t st;
    brix_fair_stats(f, &st);
    assert_int_equal(st.evicted, 100 - 4);
    /* 4 in flight (table full, nobody idle): a newcomer shares "(other)" */
    brix_fair_item_t *x = enter(f, "busy", 0, 1, BRIX_FAIR_GO);
    brix_fair_item_t *y = enter(f, "late", 0, 1, BRIX_FAIR_GO);
    assert_int_not_equal(x->tenant, 0);
    assert_int_equal(y->tenant, 0);
    assert_true(brix_fair_counter(f, "late") < 0);
    for (int k = 0; k < 3; k++)
        brix_fair_leave(f, run[k], 0);
    brix_fair_leave(f, x, 0);
    brix_fair_leave(f, y, 0);
    brix_fair_free(f);

    /* a heavy user's counter (output charged after it was last served) is
     * above a newcomer's start: a light one, idle for less time, goes first */
    c.max_tenants = 2;
    f = brix_fair_new(&c, deliver, NULL);
    brix_fair_leave(f, enter(f, "heavy", 0, 1000, BRIX_FAIR_GO), 5000);
    assert_true(brix_fair_counter(f, "heavy") == 11000);
    brix_fair_leave(f, enter(f, "light", 0, 1, BRIX_FAIR_GO), 0);
    brix_fair_leave(f, enter(f, "new", 0, 1, BRIX_FAIR_GO), 5000);
    assert_true(brix_fair_counter(f, "light") < 0);           /* made room */
    assert_true(brix_fair_counter(f, "heavy") == 11000);      /* kept, with its counter */
    assert_true(brix_fair_counter(f, "new") == 1002 + 10000); /* started where light was */
    /* both are over a newcomer's start: the longest idle makes room */
    x = enter(f, "next", 0, 1, BRIX_FAIR_GO);
    assert_int_not_equal(x->tenant, 0);
    assert_true(brix_fair_counter(f, "heavy") < 0);
    assert_true(brix_fair_counter(f, "new") > 0);
    assert_true(brix_fair_counter(f, "next") == 1003);
    brix_fair_leave(f, x, 0);
    brix_fair_free(f);

    /* not idle long enough: newcomers share "(other)" */
    c.idle_ms = 3600000;
    f = brix_fair_new(&c, deliver, NULL);
    brix_fair_leave(f, enter(f, "a", 0, 1, BRIX_FAIR_GO), 0);
    brix_fair_leave(f, enter(f, "b", 0, 1, BRIX_FAIR_GO), 0);
    x = enter(f, "c", 0, 1, BRIX_FAIR_GO);
    assert_int_equal(x->tenant, 0);
    brix_fair_leave(f, x, 0);
    assert_true(brix_fair_counter(f, "a") >= 0 && brix_fair_counter(f, "b") >= 0);
    brix_fair_stats(f, &st);
    assert_int_equal(st.evicted, 0);
    brix_fair_free(f);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pass_through_then_queue, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_light_overtakes_heavy, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_reserve_for_light_tenants, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_no_capacity_holds_requests, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_tie_goes_to_fewer_in_flight, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_output_weighs_twice, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_priority_classes, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_full_expired_cancelled, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_tenant, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_idle_tenants_evicted, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
