/*
 * gateway/watch + hold: the controller's watch lines as the gateway reads
 * them (snapshots with their malformed entries left out, heartbeats, lines
 * it does not know), the registry they build (adapters, deployments, base
 * models), how a request for a model is classified against a snapshot
 * (route, hold for an adapter or a deployment, fail), and the wake demand
 * table's timing (one wake per new wait, repeats only while requests wait,
 * none while one is in flight, the held-request cap, adapters and models
 * kept apart).
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

/* "deployments": parsed (bad entries left out), sorted by name; their
 * models are base models too; the deployment a model's requests wake. */
static const char SNAP_DEP[] =
    "{\"type\":\"snapshot\",\"version\":9,\"replicas\":["
    "{\"name\":\"qwen-0\",\"model\":\"qwen\",\"url\":\"http://127.0.0.1:41001\","
    "\"phase\":\"Draining\",\"ready\":false}],"
    "\"deployments\":["
    "{\"name\":\"qwen-b\",\"model\":\"qwen\",\"replicas\":0,\"ready\":0,\"scaleToZero\":true},"
    "{\"name\":\"qwen-a\",\"model\":\"qwen\",\"replicas\":0,\"ready\":0},"
    "{\"name\":\"llama\",\"model\":\"llama\",\"replicas\":2,\"ready\":1,\"scaleToZero\":false},"
    "{\"name\":\"mistral\",\"model\":\"mistral\"},"
    "{\"name\":\"llama\",\"model\":\"dup\",\"replicas\":0,\"ready\":0},"
    "{\"name\":\"no-model\",\"replicas\":0,\"ready\":0},"
    "{\"name\":\"neg\",\"model\":\"x\",\"replicas\":-1,\"ready\":0},"
    "{\"name\":\"frac\",\"model\":\"x\",\"replicas\":1.5,\"ready\":0},"
    "{\"name\":\"stz\",\"model\":\"x\",\"replicas\":1,\"ready\":0,\"scaleToZero\":\"yes\"},"
    "{\"model\":\"x\",\"replicas\":1,\"ready\":0},"
    "3]}";

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
    for (long n = 0; n < 800; n++) {
        brix_ctl_snapshot_t s;
        uint64_t ver;
        char err[160];
        const char *line = n < 400 ? SNAP : SNAP_DEP;
        brix_alloc_fail_after(n % 400);
        brix_ctl_line_t k = brix_ctl_parse_line(line, strlen(line), &s, &ver, err, sizeof err);
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

static void test_deployments(void **state)
{
    (void)state;
    brix_ctl_snapshot_t s;
    uint64_t ver = 0;
    assert_int_equal(parse(SNAP_DEP, &s, &ver), BRIX_CTL_LINE_SNAPSHOT);
    /* dup name, no model, negative, fractional, non-bool scaleToZero,
     * nameless, not an object */
    assert_int_equal(s.skipped, 7);
    assert_string_equal(s.replicas[0].phase, "Draining");
    assert_false(s.replicas[0].ready);
    const brix_registry_t *r = s.registry;
    assert_int_equal(r->ndeployments, 4);
    assert_string_equal(r->deployments[0].name, "llama");
    assert_int_equal(r->deployments[0].replicas, 2);
    assert_int_equal(r->deployments[0].ready, 1);
    assert_false(r->deployments[0].scale_to_zero);
    assert_string_equal(r->deployments[1].name, "mistral");
    assert_int_equal(r->deployments[1].replicas, 0); /* absent counts are 0 */
    assert_int_equal(r->deployments[1].ready, 0);
    assert_false(r->deployments[1].scale_to_zero);
    assert_string_equal(r->deployments[2].name, "qwen-a");
    assert_string_equal(r->deployments[3].name, "qwen-b");
    assert_true(r->deployments[3].scale_to_zero);
    /* base models: the replicas' and the deployments', once each */
    assert_int_equal(r->nbase_models, 3);
    assert_true(brix_registry_has_base(r, "mistral"));
    assert_true(brix_registry_has_base(r, "qwen"));
    assert_false(brix_registry_has_base(r, "dup"));
    /* not attached by the watch here: nothing to count into */
    assert_null(brix_registry_load(r, "qwen"));
    /* which deployment a model's requests wake: the one that may scale to
     * zero among those at zero; one already scaled up first */
    assert_string_equal(brix_registry_deployment_for(r, "qwen")->name, "qwen-b");
    assert_string_equal(brix_registry_deployment_for(r, "llama")->name, "llama");
    assert_string_equal(brix_registry_deployment_for(r, "mistral")->name, "mistral");
    assert_null(brix_registry_deployment_for(r, "qwen-b")); /* a deployment, not a model */
    assert_null(brix_registry_deployment_for(NULL, "qwen"));
    brix_registry_t *rw = s.registry;
    rw->deployments[2].replicas = 1; /* qwen-a starting: it, not the idle qwen-b */
    assert_string_equal(brix_registry_deployment_for(r, "qwen")->name, "qwen-a");
    brix_ctl_snapshot_free(&s);
    /* a snapshot without "deployments" (an older controller) has none; a
     * non-array one is refused */
    assert_int_equal(parse("{\"type\":\"snapshot\",\"version\":2,\"replicas\":[]}", &s, &ver),
                     BRIX_CTL_LINE_SNAPSHOT);
    assert_int_equal(s.registry->ndeployments, 0);
    brix_ctl_snapshot_free(&s);
    assert_int_equal(parse("{\"type\":\"snapshot\",\"replicas\":[],\"deployments\":{}}", &s, &ver),
                     BRIX_CTL_LINE_BAD);
}

/* A base model with a deployment and no ready pod is held (and says which
 * deployment to wake); once a pod is ready it routes; without a deployment
 * (an older controller) it is not held. */
static void test_classify_deployments(void **state)
{
    (void)state;
    brix_ctl_snapshot_t cs;
    uint64_t ver;
    assert_int_equal(parse(SNAP_DEP, &cs, &ver), BRIX_CTL_LINE_SNAPSHOT);
    brix_pod_view_t pods[1] = { { 0 } };
    uint32_t idx0[] = { 0 };
    brix_model_entry_t models[] = {
        { .name = "llama", .pods = idx0, .npods = 1 },
    };
    brix_fleet_snap_t s = {
        .pods = pods, .npods = 1, .models = models, .nmodels = 1, .registry = cs.registry
    };
    const brix_model_entry_t *me;
    const brix_reg_adapter_t *ra;
    const brix_reg_deployment_t *dep;
    pods[0].healthy = true;
    assert_int_equal(brix_hold_classify(&s, "llama", &me, &ra, &dep), BRIX_HOLD_NONE);
    assert_ptr_equal(me, &models[0]);
    assert_null(dep);
    /* scaled to zero: no model entry at all */
    assert_int_equal(brix_hold_classify(&s, "qwen", &me, &ra, &dep), BRIX_HOLD_WAIT);
    assert_null(me);
    assert_null(ra);
    assert_string_equal(dep->name, "qwen-b");
    /* its only pod fails health checks (replicas starting): held too */
    pods[0].healthy = false;
    assert_int_equal(brix_hold_classify(&s, "llama", &me, &ra, &dep), BRIX_HOLD_WAIT);
    assert_string_equal(dep->name, "llama");
    assert_int_equal(brix_hold_classify(&s, "nope", &me, &ra, &dep), BRIX_HOLD_NONE);
    assert_null(dep);
    s.registry = NULL;
    assert_int_equal(brix_hold_classify(&s, "qwen", &me, &ra, &dep), BRIX_HOLD_NONE);
    brix_ctl_snapshot_free(&cs);
}

#define SEC 1000000000ull

/* An adapter and a model of the same name are two demand entries: their
 * waits, wakes and releases never mix. */
static void test_demand_kinds(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    brix_gw_demand_t d;
    assert_int_equal(brix_gw_demand_init(&d, &loop), 0);
    brix_gw_wake_t out[8];
    uint64_t t = 100 * SEC;
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "x", 10), 0);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_MODEL, "x", 10), 0);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_MODEL, "x", 10), 0);
    assert_int_equal(atomic_load(&d.held_total), 3);
    assert_int_equal(atomic_load(&d.held_kind[BRIX_HOLD_ADAPTER]), 1);
    assert_int_equal(atomic_load(&d.held_kind[BRIX_HOLD_MODEL]), 2);
    assert_int_equal(brix_gw_demand_due(&d, t, 5 * SEC, out, 8), 2);
    assert_int_equal(out[0].kind + out[1].kind, BRIX_HOLD_ADAPTER + BRIX_HOLD_MODEL);
    assert_string_equal(out[0].name, "x");
    assert_string_equal(out[1].name, "x");
    brix_free(out[0].name);
    brix_free(out[1].name);
    /* the model's wake answered; the adapter's still in flight */
    brix_gw_demand_sent(&d, BRIX_HOLD_MODEL, "x");
    assert_int_equal(brix_gw_demand_due(&d, t + 5 * SEC, 5 * SEC, out, 8), 1);
    assert_int_equal(out[0].kind, BRIX_HOLD_MODEL);
    brix_free(out[0].name);
    brix_gw_demand_sent(&d, BRIX_HOLD_MODEL, "x");
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "x");
    /* releasing the model's waits leaves the adapter's */
    brix_gw_demand_release(&d, BRIX_HOLD_MODEL, "x");
    brix_gw_demand_release(&d, BRIX_HOLD_MODEL, "x");
    brix_gw_demand_release(&d, BRIX_HOLD_MODEL, "x"); /* one too many: ignored */
    assert_int_equal(atomic_load(&d.held_kind[BRIX_HOLD_MODEL]), 0);
    assert_int_equal(atomic_load(&d.held_kind[BRIX_HOLD_ADAPTER]), 1);
    assert_int_equal(brix_gw_demand_due(&d, t + 10 * SEC, 5 * SEC, out, 8), 1);
    assert_int_equal(out[0].kind, BRIX_HOLD_ADAPTER);
    brix_free(out[0].name);
    brix_gw_demand_sent(&d, BRIX_HOLD_ADAPTER, "x");
    /* the cap counts both kinds */
    for (int i = 0; i < 9; i++)
        assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_MODEL, "y", 10), 0);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_MODEL, "y", 10), -EBUSY);
    assert_int_equal(brix_gw_demand_hold(&d, BRIX_HOLD_ADAPTER, "z", 10), -EBUSY);
    for (int i = 0; i < 9; i++)
        brix_gw_demand_release(&d, BRIX_HOLD_MODEL, "y");
    brix_gw_demand_release(&d, BRIX_HOLD_ADAPTER, "x");
    assert_int_equal(atomic_load(&d.held_total), 0);
    brix_gw_demand_close(&d);
    uv_run(&loop, UV_RUN_DEFAULT);
    brix_gw_demand_free(&d);
    uv_loop_close(&loop);
}

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
        cmocka_unit_test_setup_teardown(test_deployments, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_classify_deployments, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_demand_kinds, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
