/*
 * gateway/watch + hold: the controller's watch lines as the gateway reads
 * them (snapshots with their malformed entries left out, heartbeats, lines
 * it does not know), the adapter registry they build, how a request for a
 * model is classified against a snapshot (route, hold, fail), and the wake
 * demand table's timing (one wake per new wait, repeats only while requests
 * wait, none while one is in flight, the held-request cap).
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
#include <uv.h>

#include "core/alloc.h"
#include "gateway/hold.h"
#include "gateway/watch.h"
#include "leak_check.h"

static brix_ctl_line_t parse(const char *s, brix_ctl_snapshot_t *snap, uint64_t *ver)
{
    char err[160] = "";
    brix_ctl_line_t k = brix_ctl_parse_line(s, strlen(s), snap, ver, err, sizeof err);
    if (k == BRIX_CTL_LINE_BAD)
        assert_true(err[0] != '\0');
    return k;
}

static const char SNAP[] =
    "{\"type\":\"snapshot\",\"version\":42,\"replicas\":["
    "{\"name\":\"qwen-7b-0\",\"deployment\":\"qwen-7b\",\"model\":\"qwen-7b\","
    "\"url\":\"http://127.0.0.1:41001\",\"phase\":\"Running\",\"ready\":true,"
    "\"labels\":{\"model.aibrix.ai/name\":\"qwen-7b\"},\"adapters\":[\"sql\",\"chat\",\"sql\"]},"
    "{\"name\":\"qwen-7b-1\",\"model\":\"qwen-7b\",\"url\":\"http://127.0.0.1:41002\","
    "\"phase\":\"Starting\",\"ready\":false},"
    "{\"name\":\"llama-0\",\"model\":\"llama\",\"url\":\"http://127.0.0.1:41003\",\"ready\":true,"
    "\"adapters\":[]},"
    "{\"name\":\"no-url\",\"ready\":true},"
    "{\"name\":\"qwen-7b-0\",\"url\":\"http://127.0.0.1:9\",\"ready\":true},"
    "{\"name\":\"bad-ready\",\"url\":\"http://127.0.0.1:9\",\"ready\":\"yes\"},"
    "7],"
    "\"adapters\":["
    "{\"name\":\"sql\",\"baseModel\":\"qwen-7b\",\"phase\":\"Running\",\"instances\":[\"qwen-7b-"
    "0\"]},"
    "{\"name\":\"chat\",\"baseModel\":\"qwen-7b\",\"phase\":\"Scaled\",\"instances\":[]},"
    "{\"name\":\"broken\",\"phase\":\"Failed\",\"reason\":\"artifact 404\"},"
    "{\"name\":\"odd\",\"phase\":\"Hibernating\"},"
    "{\"baseModel\":\"x\"}]}";

static void test_snapshot(void **state)
{
    (void)state;
    brix_ctl_snapshot_t s;
    uint64_t ver = 0;
    assert_int_equal(parse(SNAP, &s, &ver), BRIX_CTL_LINE_SNAPSHOT);
    assert_int_equal(ver, 42);
    assert_int_equal(s.version, 42);
    /* no-url, the duplicate name, the non-bool ready, 7, the nameless adapter */
    assert_int_equal(s.skipped, 5);
    assert_int_equal(s.nreplicas, 3);
    assert_string_equal(s.replicas[0].name, "qwen-7b-0");
    assert_true(s.replicas[0].ready);
    assert_string_equal(s.replicas[0].adapters_key, "chat\nsql"); /* sorted, once */
    assert_false(s.replicas[1].ready);
    assert_string_equal(s.replicas[1].phase, "Starting");
    assert_string_equal(s.replicas[1].adapters_key, "");
    assert_string_equal(s.replicas[2].url, "http://127.0.0.1:41003");
    const brix_registry_t *r = s.registry;
    assert_int_equal(r->version, 42);
    assert_int_equal(r->nadapters, 4);
    assert_string_equal(r->adapters[0].name, "broken"); /* sorted by name */
    assert_string_equal(r->adapters[3].name, "sql");
    const brix_reg_adapter_t *a = brix_registry_adapter(r, "broken");
    assert_non_null(a);
    assert_int_equal(a->phase, BRIX_REG_FAILED);
    assert_string_equal(a->message, "artifact 404");
    assert_null(a->base_model);
    a = brix_registry_adapter(r, "sql");
    assert_int_equal(a->phase, BRIX_REG_RUNNING);
    assert_int_equal(a->ninstances, 1);
    assert_string_equal(a->base_model, "qwen-7b");
    assert_int_equal(brix_registry_adapter(r, "chat")->phase, BRIX_REG_SCALED);
    assert_int_equal(brix_registry_adapter(r, "odd")->phase, BRIX_REG_UNKNOWN);
    assert_null(brix_registry_adapter(r, "nope"));
    assert_int_equal(r->nbase_models, 2);
    assert_true(brix_registry_has_base(r, "llama"));
    assert_true(brix_registry_has_base(r, "qwen-7b"));
    assert_false(brix_registry_has_base(r, "sql"));
    assert_false(brix_registry_has_base(NULL, "sql"));
    brix_ctl_snapshot_free(&s);
}

static void test_other_lines(void **state)
{
    (void)state;
    brix_ctl_snapshot_t s;
    uint64_t ver = 0;
    assert_int_equal(parse("{\"type\":\"heartbeat\",\"version\":7}", &s, &ver),
                     BRIX_CTL_LINE_HEARTBEAT);
    assert_int_equal(ver, 7);
    assert_null(s.registry);
    /* a version beyond uint64_t counts as none (found by fuzz_watch_line:
     * the cast was undefined behaviour, which clang's UBSan reports and gcc's
     * -fsanitize=undefined does not check; corpus/fuzz_watch_line/edge-cases
     * keeps that input in the fuzz/fuzz_watch_line test) */
    assert_int_equal(parse("{\"type\":\"heartbeat\",\"version\":1e19}", &s, &ver),
                     BRIX_CTL_LINE_HEARTBEAT);
    assert_true(ver == 10000000000000000000ull);
    assert_int_equal(parse("{\"type\":\"heartbeat\",\"version\":1e30}", &s, &ver),
                     BRIX_CTL_LINE_HEARTBEAT);
    assert_int_equal(ver, 0);
    assert_int_equal(parse("{\"type\":\"heartbeat\",\"version\":18446744073709551616}", &s, &ver),
                     BRIX_CTL_LINE_HEARTBEAT);
    assert_int_equal(ver, 0);
    assert_int_equal(parse("", &s, &ver), BRIX_CTL_LINE_OTHER);
    assert_int_equal(parse("   ", &s, &ver), BRIX_CTL_LINE_OTHER);
    assert_int_equal(parse("{\"type\":\"event\",\"object\":{}}", &s, &ver), BRIX_CTL_LINE_OTHER);
    assert_int_equal(parse("not json", &s, &ver), BRIX_CTL_LINE_BAD);
    assert_int_equal(parse("[1,2]", &s, &ver), BRIX_CTL_LINE_BAD);
    assert_int_equal(parse("{\"version\":1}", &s, &ver), BRIX_CTL_LINE_BAD);
    assert_int_equal(parse("{\"type\":\"snapshot\",\"version\":1}", &s, &ver), BRIX_CTL_LINE_BAD);
    assert_int_equal(parse("{\"type\":\"snapshot\",\"replicas\":[],\"adapters\":3}", &s, &ver),
                     BRIX_CTL_LINE_BAD);
    /* adapters may be left out: no registered adapters */
    assert_int_equal(parse("{\"type\":\"snapshot\",\"version\":2,\"replicas\":[]}", &s, &ver),
                     BRIX_CTL_LINE_SNAPSHOT);
    assert_int_equal(s.registry->nadapters, 0);
    brix_ctl_snapshot_free(&s);
}

static void test_enomem(void **state)
{
    (void)state;
    /* every allocation failing in turn: a clean BAD (or success), never a leak */
    for (long n = 0; n < 400; n++) {
        brix_ctl_snapshot_t s;
        uint64_t ver;
        char err[160];
        brix_alloc_fail_after(n);
        brix_ctl_line_t k = brix_ctl_parse_line(SNAP, sizeof SNAP - 1, &s, &ver, err, sizeof err);
        brix_alloc_fail_after(-1);
        if (k == BRIX_CTL_LINE_SNAPSHOT)
            brix_ctl_snapshot_free(&s);
        else
            assert_int_equal(k, BRIX_CTL_LINE_BAD);
    }
}

/* A snapshot with one pod serving base "b" and adapter "a". */
static void test_classify(void **state)
{
    (void)state;
    brix_ctl_snapshot_t cs;
    uint64_t ver;
    assert_int_equal(parse(SNAP, &cs, &ver), BRIX_CTL_LINE_SNAPSHOT);
    brix_pod_view_t pods[1] = { { 0 } };
    uint32_t idx0[] = { 0 };
    brix_model_entry_t models[] = {
        { .name = "qwen-7b", .pods = idx0, .npods = 1 },
        { .name = "sql", .parent = "qwen-7b", .pods = idx0, .npods = 1 },
        { .name = "zzz", .pods = idx0, .npods = 1 },
    };
    brix_fleet_snap_t s = {
        .pods = pods, .npods = 1, .models = models, .nmodels = 3, .registry = cs.registry
    };
    const brix_model_entry_t *me;
    const brix_reg_adapter_t *ra;
    const brix_reg_deployment_t *dep;
    pods[0].healthy = true;
    assert_int_equal(brix_hold_classify(&s, "sql", &me, &ra, &dep), BRIX_HOLD_READY);
    assert_ptr_equal(me, &models[1]);
    assert_non_null(ra);
    assert_int_equal(brix_hold_classify(&s, "qwen-7b", &me, &ra, &dep), BRIX_HOLD_NONE);
    assert_ptr_equal(me, &models[0]);
    assert_int_equal(brix_hold_classify(&s, "chat", &me, &ra, &dep), BRIX_HOLD_WAIT);
    assert_null(me);
    assert_int_equal(brix_hold_classify(&s, "odd", &me, &ra, &dep), BRIX_HOLD_WAIT);
    assert_int_equal(brix_hold_classify(&s, "broken", &me, &ra, &dep), BRIX_HOLD_FAILED);
    assert_int_equal(brix_hold_classify(&s, "unknown", &me, &ra, &dep), BRIX_HOLD_NONE);
    assert_null(me);
    assert_null(ra);
    /* the pod serving it fails its health checks: hold instead of 503 */
    pods[0].healthy = false;
    assert_int_equal(brix_hold_classify(&s, "sql", &me, &ra, &dep), BRIX_HOLD_WAIT);
    /* no controller: nothing is ever held */
    s.registry = NULL;
    assert_int_equal(brix_hold_classify(&s, "chat", &me, &ra, &dep), BRIX_HOLD_NONE);
    brix_ctl_snapshot_free(&cs);
}

#define SEC 1000000000ull

static void test_demand(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    brix_gw_demand_t d;
    assert_int_equal(brix_gw_demand_init(&d, &loop), 0);
    brix_gw_wake_t out[8];
    uint64_t t = 100 * SEC;
    /* a new wait is due at once; more waits for it add nothing */
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "a", 3), 0);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "a", 3), 0);
    assert_int_equal(atomic_load(&d.held_total), 2);
    assert_int_equal(brix_gw_demand_due(&d, t, 5 * SEC, out, 8), 1);
    assert_string_equal(out[0].name, "a");
    brix_free(out[0].name);
    /* in flight: never twice, even after the interval */
    assert_int_equal(brix_gw_demand_due(&d, t + 6 * SEC, 5 * SEC, out, 8), 0);
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "a");
    /* answered: again only once the interval passed, while requests wait */
    assert_int_equal(brix_gw_demand_due(&d, t + 4 * SEC, 5 * SEC, out, 8), 0);
    assert_int_equal(brix_gw_demand_due(&d, t + 5 * SEC, 5 * SEC, out, 8), 1);
    brix_free(out[0].name);
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "a");
    /* the cap counts every adapter's waits */
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "b", 3), 0);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "c", 3), -EBUSY);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "c", -1), 0);
    brix_gw_demand_release(&d, BRIX_HOLD_ADAPTER, "c");
    brix_gw_demand_release(&d, BRIX_HOLD_ADAPTER, "a");
    brix_gw_demand_release(&d, BRIX_HOLD_ADAPTER, "a");
    brix_gw_demand_release(&d, BRIX_HOLD_ADAPTER, "a"); /* one too many: ignored */
    assert_int_equal(atomic_load(&d.held_total), 1);
    /* b is new; a waits no more and is not repeated */
    assert_int_equal(brix_gw_demand_due(&d, t + 20 * SEC, 5 * SEC, out, 8), 1);
    assert_string_equal(out[0].name, "b");
    brix_free(out[0].name);
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "b");
    brix_gw_demand_release(&d, BRIX_HOLD_ADAPTER, "b");
    /* a poke (no hold): one wake, but not more than once a second */
    assert_int_equal(brix_gw_demand_poke(&d, BRIX_HOLD_ADAPTER, "a"), 0);
    assert_int_equal(brix_gw_demand_due(&d, t + 20 * SEC, 5 * SEC, out, 8), 1);
    brix_free(out[0].name);
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "a");
    assert_int_equal(brix_gw_demand_poke(&d, BRIX_HOLD_ADAPTER, "a"), 0);
    assert_int_equal(brix_gw_demand_due(&d, t + 20 * SEC + SEC / 2, 5 * SEC, out, 8), 0);
    assert_int_equal(brix_gw_demand_due(&d, t + 21 * SEC, 5 * SEC, out, 8), 1);
    brix_free(out[0].name);
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "a");
    /* entries nothing waited for in a minute are forgotten */
    assert_int_equal(brix_gw_demand_due(&d, t + 200 * SEC, 5 * SEC, out, 8), 0);
    assert_int_equal(d.n, 0);
    brix_gw_demand_close(&d);
    uv_run(&loop, UV_RUN_DEFAULT);
    brix_gw_demand_free(&d);
    uv_loop_close(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_other_lines, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_enomem, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_classify, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_demand, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
