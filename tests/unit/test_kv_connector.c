/*
 * Unit tests for engine-sim's KV connector (engine_sim/kv_connector.h) and
 * the scheduler's connector hooks (scheduler.h, brix_sched_kv_t):
 * --kv-transfer-config parsing (defaults, every refusal names its field),
 * the synthetic block contents (any changed byte is detected), and the
 * scheduler side driven by a fake connector: a waiting sequence is looked up
 * after its local hit, waits without blocking others, is admitted with the
 * loaded blocks counted as computed (and then cached locally), saves only the
 * blocks it computed, cancels on abort, retries on -EAGAIN.
 * The connector thread against a real store is tests/integration/30.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/gpu_profile.h"
#include "core/time.h"
#include "engine_sim/kv_cache.h"
#include "engine_sim/kv_connector.h"
#include "engine_sim/lora.h"
#include "engine_sim/scheduler.h"

#include "leak_check.h"

/* ------------------------------------------------------------ config -- */

#define GOOD_EXTRA "\"kv_connector_extra_config\":{\"servers\":\"127.0.0.1:7000\"}"

static void parse_ok(const char *json, brix_kvc_cfg_t *cfg)
{
    char err[512] = "";
    int rc = brix_kvc_cfg_parse(json, cfg, err, sizeof err);
    if (rc)
        fail_msg("refused %s: %s", json, err);
}

/* Refused, with an error message containing `want`. */
static void parse_bad(const char *json, const char *want)
{
    brix_kvc_cfg_t cfg;
    char err[512] = "";
    assert_int_equal(brix_kvc_cfg_parse(json, &cfg, err, sizeof err), -1);
    if (!strstr(err, want))
        fail_msg("error for %s was '%s', want it to name '%s'", json, err, want);
    assert_non_null(strstr(err, "kv-transfer-config"));
    assert_null(cfg.servers); /* owns nothing */
}

static void test_cfg_parse(void **state)
{
    (void)state;
    brix_kvc_cfg_t c;
    parse_ok("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\"," GOOD_EXTRA "}", &c);
    assert_int_equal(c.role, BRIX_KVC_BOTH);
    assert_string_equal(c.servers, "127.0.0.1:7000");
    assert_int_equal(c.timeout_ms, 500);
    assert_int_equal(c.block_bytes, 0);
    assert_true(c.transfer_gbps == 100.0);
    assert_int_equal(c.max_inflight, 64);
    assert_false(c.no_shm);
    brix_kvc_cfg_free(&c);

    parse_ok("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_consumer\","
             "\"engine_id\":\"x\",\"kv_rank\":null,\"kv_load_failure_policy\":\"recompute\","
             "\"kv_connector_extra_config\":{\"servers\":\"a:1,b:2\",\"timeout_ms\":50,"
             "\"block_bytes\":65536,\"transfer_gbps\":0,\"max_inflight\":3,\"no_shm\":true}}",
             &c);
    assert_int_equal(c.role, BRIX_KVC_CONSUMER);
    assert_string_equal(c.servers, "a:1,b:2");
    assert_int_equal(c.timeout_ms, 50);
    assert_int_equal(c.block_bytes, 65536);
    assert_true(c.transfer_gbps == 0);
    assert_int_equal(c.max_inflight, 3);
    assert_true(c.no_shm);
    brix_kvc_cfg_free(&c);
    parse_ok("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_producer\"," GOOD_EXTRA "}", &c);
    assert_int_equal(c.role, BRIX_KVC_PRODUCER);
    brix_kvc_cfg_free(&c);

    parse_bad("{\"kv_connector\":\"LMCacheConnectorV1\",\"kv_role\":\"kv_both\"," GOOD_EXTRA "}",
              "LMCacheConnectorV1");
    parse_bad("{\"kv_role\":\"kv_both\"," GOOD_EXTRA "}", "kv_connector");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"both\"," GOOD_EXTRA "}",
              "unknown kv_role \"both\"");
    parse_bad("{\"kv_connector\":\"BrixConnector\"," GOOD_EXTRA "}", "kv_role");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\",\"kv_rol\":1," GOOD_EXTRA
              "}",
              "unknown key 'kv_rol'");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\"}",
              "kv_connector_extra_config");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{}}",
              "servers");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{\"servers\":\"a:1\",\"timeout\":5}}",
              "unknown key 'timeout' in kv_connector_extra_config");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{\"servers\":\"a:1\",\"timeout_ms\":0}}",
              "timeout_ms");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{\"servers\":\"a:1\",\"block_bytes\":\"2MiB\"}}",
              "block_bytes");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{\"servers\":\"a:1\",\"max_inflight\":100000}}",
              "max_inflight");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{\"servers\":\"\"}}",
              "servers");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":{\"servers\":\"a:1\",\"servers\":\"b:1\"}}",
              "duplicate key 'servers'");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_connector_extra_config\":\"a:1\"}",
              "kv_connector_extra_config");
    parse_bad("{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
              "\"kv_load_failure_policy\":\"fail\"," GOOD_EXTRA "}",
              "kv_load_failure_policy");
    parse_bad("{\"kv_connector\":\"BrixConnector\"", "invalid JSON");
    parse_bad("[]", "JSON object");
}

/* Out of memory at every allocation: refused or accepted, never a leak. */
static void test_cfg_parse_enomem(void **state)
{
    (void)state;
    const char *json =
        "{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\"," GOOD_EXTRA "}";
    for (long i = 0; i < 64; i++) {
        brix_kvc_cfg_t c;
        char err[256];
        brix_alloc_fail_after(i);
        int rc = brix_kvc_cfg_parse(json, &c, err, sizeof err);
        brix_alloc_fail_after(-1);
        if (rc == 0) {
            assert_string_equal(c.servers, "127.0.0.1:7000");
            brix_kvc_cfg_free(&c);
            if (i > 8)
                break;
        }
    }
}

/* ---------------------------------------------------- block contents -- */

static void test_fill_verify(void **state)
{
    (void)state;
    static const size_t lens[] = { 1, 7, 8, 9, 4095, 4096, 4097, 65536 + 3 };
    brixkv_key_t k = brixkv_key_u64(0x1234567890abcdefull),
                 k2 = brixkv_key_u64(0x1234567890abcdeeull);
    uint8_t *buf = brix_malloc(65536 + 3);
    assert_non_null(buf);
    for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
        size_t n = lens[t];
        brix_kvc_fill(buf, n, &k, 42);
        assert_true(brix_kvc_verify(buf, n, &k, 42));
        /* another key, another namespace: not this block */
        assert_false(brix_kvc_verify(buf, n, &k2, 42));
        assert_false(brix_kvc_verify(buf, n, &k, 43));
        /* one flipped bit anywhere is found: first, last, a chunk boundary */
        size_t pos[] = { 0, n - 1, n / 2, n > 4096 ? 4096 : 0 };
        for (size_t p = 0; p < 4; p++) {
            buf[pos[p]] ^= 0x10;
            assert_false(brix_kvc_verify(buf, n, &k, 42));
            buf[pos[p]] ^= 0x10;
        }
        assert_true(brix_kvc_verify(buf, n, &k, 42));
    }
    /* deterministic: the same key fills the same bytes; not all zero */
    uint8_t a[64], b[64], z[64] = { 0 };
    brix_kvc_fill(a, sizeof a, &k, 7);
    brix_kvc_fill(b, sizeof b, &k, 7);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, z, sizeof a);
    brix_free(buf);
}

/* ----------------------------------------------- scheduler with hooks -- */

#define BS 16

typedef struct fake {
    int lookups, cancels, admitted_calls, saves;
    size_t from, to; /* last lookup */
    size_t ext;      /* last admitted */
    size_t sv_from[16], sv_to[16];
    int rc;           /* what lookup returns */
    brix_seq_t *only; /* if set, the only sequence rc applies to (others: 0) */
    brix_seq_t *last;
} fake_t;

static int f_lookup(brix_seq_t *q, size_t from, size_t to, void *ud)
{
    fake_t *f = ud;
    f->lookups++;
    f->from = from;
    f->to = to;
    f->last = q;
    if (f->only && q != f->only)
        return 0;
    return from < to ? f->rc : 0;
}

static void f_cancel(brix_seq_t *q, void *ud)
{
    (void)q;
    ((fake_t *)ud)->cancels++;
}

static void f_admitted(brix_seq_t *q, size_t ext, void *ud)
{
    (void)q;
    fake_t *f = ud;
    f->admitted_calls++;
    f->ext = ext;
}

static void f_save(brix_seq_t *q, size_t from, size_t to, void *ud)
{
    (void)q;
    fake_t *f = ud;
    assert_true(f->saves < 16);
    f->sv_from[f->saves] = from;
    f->sv_to[f->saves] = to;
    f->saves++;
}

typedef struct fx {
    brix_gpu_profiles_t ps;
    brix_kv_pool_t pool;
    brix_lora_reg_t loras;
    brix_sched_t s;
    fake_t fk;
    brix_sched_kv_t hooks;
    double clock;
    int finished;
} fx_t;

static bool cb_token(brix_seq_t *q, uint32_t tok, void *ud)
{
    (void)q;
    (void)tok;
    (void)ud;
    return false;
}

static void cb_finish(brix_seq_t *q, void *ud)
{
    (void)q;
    ((fx_t *)ud)->finished++;
}

static void fx_init(fx_t *f)
{
    memset(f, 0, sizeof *f);
    char err[256];
    assert_int_equal(brix_gpu_profiles_builtin(&f->ps, err, sizeof err), 0);
    assert_int_equal(brix_kv_pool_init(&f->pool, 256, BS, true), 0);
    brix_lora_reg_init(&f->loras, 1, 1);
    brix_sched_cfg_t cfg = {
        .max_num_seqs = 8,
        .max_num_batched_tokens = 4096,
        .max_model_len = 4096,
        .chunked_prefill = true,
        .profile = brix_gpu_profiles_find(&f->ps, "a100"),
    };
    brix_sched_cb_t cb = { cb_token, cb_finish, NULL, f };
    assert_int_equal(brix_sched_init(&f->s, &cfg, &f->pool, &f->loras, &cb), 0);
    f->fk.rc = 1;
    f->hooks = (brix_sched_kv_t){ f_lookup, f_cancel, f_admitted, f_save, &f->fk };
    f->s.kv = &f->hooks;
}

static void fx_free(fx_t *f)
{
    brix_sched_free(&f->s);
    brix_kv_pool_free(&f->pool);
    brix_lora_reg_free(&f->loras);
    brix_gpu_profiles_free(&f->ps);
}

static bool fx_step(fx_t *f)
{
    double secs;
    if (!brix_sched_plan(&f->s, &secs))
        return false;
    f->clock += secs;
    brix_sched_commit(&f->s, f->clock);
    return true;
}

static void seq_new(brix_seq_t *q, size_t n, uint32_t salt, size_t max_tokens)
{
    uint32_t p[1024];
    assert_true(n <= 1024);
    for (size_t i = 0; i < n; i++)
        p[i] = 1000 + salt * 7919 + (uint32_t)i;
    assert_int_equal(brix_seq_init(q, p, n, max_tokens), 0);
    q->rng = salt;
}

/* A waiting sequence is looked up for the blocks after its local hit; it
 * waits without holding back the next one; once its load is ready it is
 * admitted with those blocks computed, which then become locally cached;
 * only the blocks it computed are saved. */
static void test_sched_load_and_save(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f);
    /* warm the local cache with the first 2 blocks of the prompt (salt 1):
     * a 32-token prefix computes 1 full block cacheable (the last token
     * is computed, but 32 tokens = 2 full blocks are registered) */
    brix_seq_t w;
    seq_new(&w, 2 * BS, 1, 1);
    f.fk.rc = 0; /* w: nothing to load */
    assert_int_equal(brix_sched_add(&f.s, &w, 0), 0);
    while (brix_sched_busy(&f.s))
        assert_true(fx_step(&f));
    assert_int_equal(f.fk.lookups, 1);
    assert_int_equal(f.fk.from, 0);
    assert_int_equal(f.fk.to, 1); /* (32 - 1) / 16: the last token is always computed */
    assert_int_equal(f.fk.saves, 1);
    assert_int_equal(f.fk.sv_from[0], 0);
    assert_int_equal(f.fk.sv_to[0], 2); /* both full prompt blocks were computed */

    /* q: 10 blocks + 5 tokens sharing w's 2 blocks; o: another prompt */
    const size_t P = 10 * BS + 5;
    brix_seq_t q, o;
    seq_new(&q, P, 1, 3);
    seq_new(&o, 40, 2, 2);
    f.fk.rc = 1;
    f.fk.only = &q;
    f.fk.saves = 0;
    assert_int_equal(brix_sched_add(&f.s, &q, f.clock), 0);
    assert_int_equal(brix_sched_add(&f.s, &o, f.clock), 0);
    assert_true(fx_step(&f)); /* q starts its load; o runs */
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_WAITING);
    assert_int_equal(q.state, BRIX_SEQ_WAITING);
    assert_int_equal(o.state, BRIX_SEQ_RUNNING);
    assert_int_equal(f.fk.lookups, 3);
    while (o.state != BRIX_SEQ_FINISHED)
        assert_true(fx_step(&f));
    assert_false(fx_step(&f)); /* only q, still waiting: nothing to plan */
    assert_true(brix_sched_busy(&f.s));
    assert_int_equal(f.fk.lookups, 3); /* asked once */

    /* q's lookup was [2, 10): the store holds 5 of them */
    size_t saves_before = (size_t)f.fk.saves;
    brix_sched_kv_ready(&f.s, &q, 2, 5);
    double secs;
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(f.s.plan_prefill_tokens, P - 7 * BS);
    assert_int_equal(q.num_computed, 7 * BS);
    assert_int_equal(q.cached_tokens, 7 * BS); /* local + external, as vLLM reports */
    assert_int_equal(f.fk.admitted_calls, 1);
    assert_int_equal(f.fk.ext, 5);
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_DONE);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    /* saved: the computed blocks only, 7..10 */
    assert_int_equal(f.fk.saves, (int)saves_before + 1);
    assert_int_equal(f.fk.sv_from[saves_before], 7);
    assert_int_equal(f.fk.sv_to[saves_before], 10);
    /* the loaded blocks are now in the local cache, like computed ones */
    assert_int_equal(brix_kv_pool_count_cached(&f.pool, q.hashes, 10), 10);
    /* local prefix-cache hits count only local blocks */
    assert_int_equal(f.s.st.prefix_hits, 2 * BS);
    while (brix_sched_busy(&f.s))
        assert_true(fx_step(&f));
    assert_int_equal(f.finished, 3);
    assert_int_equal(f.fk.saves, (int)saves_before + 1); /* generated tokens are not saved */
    brix_seq_free(&w);
    brix_seq_free(&q);
    brix_seq_free(&o);
    fx_free(&f);
}

/* A load that found nothing (or failed at its first block) leaves the whole
 * prompt to compute; aborting a waiting sequence cancels its load; -EAGAIN
 * asks again at the next step. */
static void test_sched_miss_abort_retry(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f);
    brix_seq_t q, a;
    seq_new(&q, 5 * BS + 1, 3, 1);
    seq_new(&a, 5 * BS + 1, 4, 1);
    assert_int_equal(brix_sched_add(&f.s, &q, 0), 0);
    assert_false(fx_step(&f));
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_WAITING);
    brix_sched_kv_ready(&f.s, &q, 0, 0);
    double secs;
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(f.s.plan_prefill_tokens, 5 * BS + 1);
    assert_int_equal(f.fk.ext, 0);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    assert_int_equal(f.fk.sv_from[0], 0);
    assert_int_equal(f.fk.sv_to[0], 5);
    while (brix_sched_busy(&f.s))
        assert_true(fx_step(&f));

    /* abort while waiting */
    assert_int_equal(brix_sched_add(&f.s, &a, f.clock), 0);
    assert_false(fx_step(&f));
    assert_int_equal(a.kv_state, BRIX_SEQ_KV_WAITING);
    brix_sched_abort(&f.s, &a);
    assert_int_equal(f.fk.cancels, 1);
    assert_false(brix_sched_busy(&f.s));
    brix_seq_free(&a);

    /* saturated connector: asked again next time */
    brix_seq_t r;
    seq_new(&r, 3 * BS + 1, 5, 1);
    f.fk.rc = -EAGAIN;
    int before = f.fk.lookups;
    assert_int_equal(brix_sched_add(&f.s, &r, f.clock), 0);
    assert_false(fx_step(&f));
    assert_false(fx_step(&f));
    assert_int_equal(f.fk.lookups, before + 2);
    assert_int_equal(r.kv_state, BRIX_SEQ_KV_NONE);
    f.fk.rc = 0; /* nothing to load: runs at once */
    assert_true(fx_step(&f));
    assert_int_equal(r.generated, 1); /* admitted and ran its prefill */
    while (brix_sched_busy(&f.s))
        assert_true(fx_step(&f));
    brix_seq_free(&q);
    brix_seq_free(&r);
    fx_free(&f);
}

/* A loaded run that no longer joins the local hit (the local blocks before it
 * were evicted meanwhile) is not used: the sequence recomputes from its hit. */
static void test_sched_loaded_run_detached(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f);
    brix_seq_t q;
    seq_new(&q, 6 * BS + 3, 6, 1);
    assert_int_equal(brix_sched_add(&f.s, &q, 0), 0);
    assert_false(fx_step(&f));
    /* pretend the lookup had a local hit of 2 blocks: the load covers [2, 6) */
    brix_sched_kv_ready(&f.s, &q, 2, 4);
    double secs;
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(f.s.plan_prefill_tokens, 6 * BS + 3); /* local hit is 0 now */
    assert_int_equal(f.fk.ext, 0);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    while (brix_sched_busy(&f.s))
        assert_true(fx_step(&f));
    brix_seq_free(&q);
    fx_free(&f);
}

/* ------------------------------------------- the connector, store down -- */

typedef struct live {
    fx_t f;
    uv_loop_t loop;
    uv_timer_t guard;
    brix_kvc_t *c;
    int kicks;
} live_t;

static void on_kick(void *ud)
{
    live_t *l = ud;
    l->kicks++;
    uv_stop(&l->loop);
}

static void on_guard(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void live_init(live_t *l, const char *servers, int64_t timeout_ms, int64_t max_inflight)
{
    memset(l, 0, sizeof *l);
    fx_init(&l->f);
    assert_int_equal(uv_loop_init(&l->loop), 0);
    uv_timer_init(&l->loop, &l->guard);
    brix_kvc_cfg_t cfg = {
        .role = BRIX_KVC_BOTH,
        .servers = (char *)servers,
        .timeout_ms = timeout_ms,
        .block_bytes = 4096,
        .transfer_gbps = 100,
        .max_inflight = max_inflight,
        .no_shm = true,
    };
    brix_kvc_env_t env = { &l->loop, "m", BS, 1.0, &l->f.s, on_kick, l };
    char err[256] = "";
    l->c = brix_kvc_new(&cfg, &env, err, sizeof err);
    if (!l->c)
        fail_msg("brix_kvc_new: %s", err);
    l->f.s.kv = brix_kvc_sched_hooks(l->c);
}

/* Runs the loop until a kick, or 10 s (a stuck load fails the test). */
static void live_wait_kick(live_t *l)
{
    int k = l->kicks;
    uv_timer_start(&l->guard, on_guard, 10000, 0);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&l->guard);
    assert_int_equal(l->kicks, k + 1);
}

static void live_free(live_t *l)
{
    l->f.s.kv = NULL;
    brix_kvc_close(l->c);
    uv_close((uv_handle_t *)&l->guard, NULL);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&l->loop), 0);
    fx_free(&l->f);
}

/* A store that refuses connections: the load ends at once as a counted
 * failure, the sequence computes everything; its saves fail, counted. */
static void test_connector_store_down(void **state)
{
    (void)state;
    live_t l;
    live_init(&l, "127.0.0.1:1", 1000, 4);
    brix_seq_t q;
    seq_new(&q, 8 * BS + 2, 7, 1);
    assert_int_equal(brix_sched_add(&l.f.s, &q, 0), 0);
    assert_false(fx_step(&l.f)); /* waiting for the lookup */
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_WAITING);
    live_wait_kick(&l);
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_READY);
    assert_int_equal(q.kv_blocks, 0);
    const brix_kvc_stats_t *st = brix_kvc_stats(l.c);
    assert_int_equal(st->loads, 1);
    assert_int_equal(st->load_failures[BRIX_KVC_FAIL_UNAVAILABLE], 1);
    assert_int_equal(st->queries_tokens, 8 * BS + 2);
    double secs;
    assert_true(brix_sched_plan(&l.f.s, &secs));
    assert_int_equal(l.f.s.plan_prefill_tokens, 8 * BS + 2);
    l.f.clock += secs;
    brix_sched_commit(&l.f.s, l.f.clock);
    assert_int_equal(st->hits_tokens, 0);
    /* the 8 computed blocks went to the thread; their put fails */
    uv_timer_start(&l.guard, on_guard, 10000, 0);
    while (st->save_failures < 8 && uv_run(&l.loop, UV_RUN_ONCE))
        ;
    uv_timer_stop(&l.guard);
    assert_int_equal(st->save_failures, 8);
    assert_int_equal(st->blocks_saved, 0);
    brix_seq_free(&q);
    live_free(&l);
}

/* A store that accepts connections and never answers: the load is given up
 * after timeout_ms (by the client or by the loop), counted as a timeout. */
static void test_connector_store_silent(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0); /* the kernel completes handshakes; nobody reads */
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", ntohs(a.sin_port));

    live_t l;
    live_init(&l, servers, 150, 4);
    brix_seq_t q;
    seq_new(&q, 4 * BS + 2, 8, 1);
    assert_int_equal(brix_sched_add(&l.f.s, &q, 0), 0);
    assert_false(fx_step(&l.f));
    uint64_t t0 = brix_now_ns();
    live_wait_kick(&l);
    /* bounded: not before the timeout, and not long after it (10 s guard) */
    assert_true(brix_now_ns() - t0 >= 100u * 1000000u);
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_READY);
    assert_int_equal(q.kv_blocks, 0);
    const brix_kvc_stats_t *st = brix_kvc_stats(l.c);
    assert_int_equal(
        st->load_failures[BRIX_KVC_FAIL_TIMEOUT] + st->load_failures[BRIX_KVC_FAIL_UNAVAILABLE], 1);
    assert_true(st->wait_seconds >= 0.1);
    while (brix_sched_busy(&l.f.s))
        assert_true(fx_step(&l.f));
    brix_seq_free(&q);
    live_free(&l);
    close(fd);
}

/* A saturated connector (max_inflight loads running) does not hold the next
 * request: it is computed at once and counted as "busy" (an overloaded
 * engine once skipped such requests step after step until the gateway gave
 * up on them). */
static void test_connector_saturated(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0); /* never answers: the first load stays in flight */
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", ntohs(a.sin_port));

    live_t l;
    live_init(&l, servers, 150, 1);
    brix_seq_t q, r;
    seq_new(&q, 4 * BS + 2, 8, 1);
    seq_new(&r, 4 * BS + 2, 9, 1);
    assert_int_equal(brix_sched_add(&l.f.s, &q, 0), 0);
    assert_false(fx_step(&l.f));
    assert_int_equal(q.kv_state, BRIX_SEQ_KV_WAITING);
    assert_int_equal(brix_sched_add(&l.f.s, &r, l.f.clock), 0);
    assert_true(fx_step(&l.f)); /* r runs its prefill now */
    assert_int_equal(r.kv_state, BRIX_SEQ_KV_DONE);
    assert_int_equal(r.generated, 1);
    const brix_kvc_stats_t *st = brix_kvc_stats(l.c);
    assert_int_equal(st->load_failures[BRIX_KVC_FAIL_BUSY], 1);
    assert_int_equal(st->queries_tokens, 2 * (4 * BS + 2));
    live_wait_kick(&l); /* q's load gives up after its timeout */
    while (brix_sched_busy(&l.f.s))
        assert_true(fx_step(&l.f));
    brix_seq_free(&q);
    brix_seq_free(&r);
    live_free(&l);
    close(fd);
}

/* Saves beyond max_inflight queued batches are dropped and counted (the
 * queue only shrinks on the loop, which does not run in between here). */
static void test_connector_save_drop(void **state)
{
    (void)state;
    live_t l;
    live_init(&l, "127.0.0.1:1", 1000, 1);
    brix_seq_t q;
    seq_new(&q, 3 * BS + 1, 20, 1);
    assert_int_equal(brix_sched_add(&l.f.s, &q, 0), 0); /* hashes its blocks */
    const brix_sched_kv_t *k = l.f.s.kv;
    for (int i = 0; i < 5; i++)
        k->save(&q, 0, 3, k->ud);
    const brix_kvc_stats_t *st = brix_kvc_stats(l.c);
    assert_int_equal(st->save_dropped, 4 * 3);
    /* the one queued batch ends (the store is down: failed, counted) */
    uv_timer_start(&l.guard, on_guard, 10000, 0);
    while (st->save_failures < 3 && uv_run(&l.loop, UV_RUN_ONCE))
        ;
    uv_timer_stop(&l.guard);
    assert_int_equal(st->save_failures, 3);
    k->save(&q, 0, 3, k->ud); /* room again */
    assert_int_equal(st->save_dropped, 4 * 3);
    brix_sched_abort(&l.f.s, &q);
    brix_seq_free(&q);
    live_free(&l);
}

/* Out of memory at each allocation of brix_kvc_new: refused with an error, or
 * working; closing frees everything either way. */
static void test_connector_new_enomem(void **state)
{
    (void)state;
    int made = 0;
    for (long i = 0; i < 32; i++) {
        uv_loop_t loop;
        assert_int_equal(uv_loop_init(&loop), 0);
        brix_sched_t s;
        memset(&s, 0, sizeof s);
        brix_kvc_cfg_t cfg = {
            .servers = (char *)"127.0.0.1:1",
            .timeout_ms = 100,
            .max_inflight = 1,
            .transfer_gbps = 1,
        };
        brix_kvc_env_t env = { &loop, "m", BS, 1.0, &s, NULL, NULL };
        char err[256] = "";
        brix_alloc_fail_after(i);
        brix_kvc_t *c = brix_kvc_new(&cfg, &env, err, sizeof err);
        brix_alloc_fail_after(-1);
        if (c) {
            made++;
            assert_int_equal(brix_kvc_block_bytes(c), (uint64_t)BRIX_KVC_BYTES_PER_TOKEN * BS);
            brix_kvc_close(c);
        } else {
            assert_true(err[0] != 0);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&loop), 0);
    }
    assert_true(made > 0);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cfg_parse, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cfg_parse_enomem, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_fill_verify, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_sched_load_and_save, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_sched_miss_abort_retry, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_sched_loaded_run_detached, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_connector_store_down, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_connector_store_silent, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_connector_saturated, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_connector_save_drop, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_connector_new_enomem, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
