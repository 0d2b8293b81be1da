/*
 * Unit tests for the continuous-batching scheduler (engine_sim/scheduler.h),
 * driven directly with plan/commit on the built-in a100 profile and small
 * block pools: step shapes, batch limits, chunked prefill, prefix-cache hits,
 * preemption (and that recompute yields the same tokens), stop conditions,
 * aborts, LoRA slot limits, step timing, prefill-only sequences, leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/gpu_profile.h"
#include "core/tokenizer.h"
#include "engine_sim/kv_cache.h"
#include "engine_sim/lora.h"
#include "engine_sim/scheduler.h"

#include "leak_check.h"

/* ------------------------------------------------------------ fixture -- */

#define MAX_TOK   512
#define MAX_STEPS 4096

/* Per-sequence record, hung on seq->ud. */
typedef struct rec {
    uint32_t toks[MAX_TOK];
    size_t ntoks;
    size_t stop_at; /* on_token returns true when ntoks reaches this (0 = never) */
    int finished;   /* on_finish calls */
    brix_finish_t why;
    brix_seq_t *abort_target; /* on_token aborts it when ntoks reaches abort_at */
    size_t abort_at;
    bool free_on_finish; /* on_finish frees the (heap) sequence, as owners may */
    bool freed;
} rec_t;

typedef struct fx {
    brix_gpu_profiles_t ps;
    const brix_gpu_profile_t *pr;
    brix_kv_pool_t pool;
    brix_lora_reg_t loras;
    brix_sched_t s;
    uint64_t step_tokens[MAX_STEPS];
    size_t nsteps;
    double clock;
} fx_t;

static bool cb_token(brix_seq_t *q, uint32_t tok, void *ud)
{
    fx_t *f = ud;
    rec_t *r = q->ud;
    assert_non_null(r);
    assert_false(r->freed);
    assert_true(r->ntoks < MAX_TOK);
    assert_int_equal(q->state, BRIX_SEQ_RUNNING);
    r->toks[r->ntoks++] = tok;
    if (r->abort_target && r->ntoks == r->abort_at)
        brix_sched_abort(&f->s, r->abort_target);
    return r->stop_at && r->ntoks >= r->stop_at;
}

static void cb_finish(brix_seq_t *q, void *ud)
{
    (void)ud;
    rec_t *r = q->ud;
    assert_non_null(r);
    assert_false(r->freed);
    assert_int_equal(q->state, BRIX_SEQ_FINISHED);
    assert_int_equal(q->nblocks, 0);
    r->finished++;
    r->why = q->finish;
    if (r->free_on_finish) {
        /* Poison, then free: a later touch by the scheduler is an ASan report. */
        brix_seq_free(q);
        memset(q, 0xa5, sizeof *q);
        brix_free(q);
        r->freed = true;
    }
}

static void cb_step(uint64_t tokens, void *ud)
{
    fx_t *f = ud;
    assert_true(f->nsteps < MAX_STEPS);
    f->step_tokens[f->nsteps++] = tokens;
}

typedef struct fx_opts {
    uint32_t nblocks, block_size;
    bool caching;
    size_t max_num_seqs, max_num_batched_tokens;
    bool chunked;
    uint32_t max_loras, max_cpu_loras;
} fx_opts_t;

static void fx_init(fx_t *f, const fx_opts_t *o)
{
    memset(f, 0, sizeof *f);
    char err[256];
    assert_int_equal(brix_gpu_profiles_builtin(&f->ps, err, sizeof err), 0);
    f->pr = brix_gpu_profiles_find(&f->ps, "a100");
    assert_non_null(f->pr);
    assert_int_equal(brix_kv_pool_init(&f->pool, o->nblocks, o->block_size, o->caching), 0);
    brix_lora_reg_init(&f->loras, o->max_loras ? o->max_loras : 1,
                       o->max_cpu_loras ? o->max_cpu_loras : 4);
    brix_sched_cfg_t cfg = {
        .max_num_seqs = o->max_num_seqs,
        .max_num_batched_tokens = o->max_num_batched_tokens,
        .max_model_len = 1 << 20,
        .chunked_prefill = o->chunked,
        .profile = f->pr,
    };
    brix_sched_cb_t cb = { cb_token, cb_finish, cb_step, f };
    assert_int_equal(brix_sched_init(&f->s, &cfg, &f->pool, &f->loras, &cb), 0);
}

static void fx_free(fx_t *f)
{
    brix_sched_free(&f->s);
    brix_kv_pool_free(&f->pool);
    brix_lora_reg_free(&f->loras);
    brix_gpu_profiles_free(&f->ps);
}

/* Checks the invariants of a planned step. */
static void check_plan(fx_t *f)
{
    brix_sched_t *s = &f->s;
    size_t tokens = 0;
    assert_true(s->nrunning <= s->cfg.max_num_seqs);
    assert_true(s->nstep <= s->cfg.max_num_seqs);
    for (size_t i = 0; i < s->nstep; i++) {
        brix_seq_t *q = s->step[i];
        assert_non_null(q);
        assert_int_equal(q->state, BRIX_SEQ_RUNNING);
        assert_true(q->step_tokens >= 1);
        /* It holds blocks for everything it will have computed. */
        assert_true(q->nblocks * s->pool->block_size >= q->num_computed + q->step_tokens);
        tokens += q->step_tokens;
    }
    assert_true(tokens <= s->cfg.max_num_batched_tokens);
    assert_int_equal(tokens, s->plan_prefill_tokens + s->plan_decode_seqs);
}

/* Plans and commits one step; returns false when there was nothing to run. */
static bool fx_step(fx_t *f, double *secs_out)
{
    double secs = -1;
    bool planned = brix_sched_plan(&f->s, &secs);
    if (secs_out)
        *secs_out = secs;
    if (!planned) {
        assert_true(secs == 0);
        return false;
    }
    check_plan(f);
    assert_true(secs > 0);
    f->clock += secs;
    brix_sched_commit(&f->s, f->clock);
    assert_true(f->s.now == f->clock);
    assert_true(f->step_tokens[f->nsteps - 1] <= f->s.cfg.max_num_batched_tokens);
    return true;
}

static size_t fx_run(fx_t *f)
{
    size_t n = 0;
    while (brix_sched_busy(&f->s)) {
        assert_true(fx_step(f, NULL));
        assert_true(++n < MAX_STEPS);
    }
    return n;
}

static void make_prompt(uint32_t *p, size_t n, uint32_t salt)
{
    for (size_t i = 0; i < n; i++)
        p[i] = 1000 + salt * 7919 + (uint32_t)i;
}

static void seq_new(brix_seq_t *q, rec_t *r, size_t n, uint32_t salt, size_t max_tokens)
{
    uint32_t p[MAX_TOK];
    assert_true(n <= MAX_TOK);
    make_prompt(p, n, salt);
    assert_int_equal(brix_seq_init(q, p, n, max_tokens), 0);
    memset(r, 0, sizeof *r);
    q->ud = r;
    q->rng = 0x1234 + salt;
}

static void assert_pool_idle(const fx_t *f)
{
    assert_int_equal(f->pool.nfree, f->pool.nblocks - 1); /* all but the null block */
    assert_true(brix_kv_pool_usage(&f->pool) == 0.0);
    assert_false(brix_sched_busy(&f->s));
    assert_int_equal(f->s.nrunning, 0);
    assert_int_equal(f->s.nwaiting, 0);
    assert_null(f->s.run_head);
    assert_null(f->s.wait_head);
    assert_int_equal(f->loras.nbusy, 0);
    for (size_t i = 0; i < f->loras.n; i++) {
        assert_int_equal(f->loras.v[i]->running, 0);
        assert_int_equal(f->loras.v[i]->waiting, 0);
    }
}

static const fx_opts_t big = {
    .nblocks = 1024,
    .block_size = 16,
    .caching = true,
    .max_num_seqs = 16,
    .max_num_batched_tokens = 2048,
    .chunked = true,
};

/* -------------------------------------------------------------- tests -- */

static void test_single_request_steps(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    brix_seq_t q;
    rec_t r;
    const size_t P = 37, M = 6;
    seq_new(&q, &r, P, 1, M);
    assert_int_equal(brix_sched_add(&f.s, &q, 0.0), 0);
    assert_int_equal(q.state, BRIX_SEQ_WAITING);
    assert_int_equal(q.nhashes, P / 16);

    /* Step 1: the whole prompt as prefill; first token. */
    double secs;
    assert_true(fx_step(&f, &secs));
    assert_int_equal(f.step_tokens[0], P);
    assert_true(secs == brix_gpu_step_seconds(f.pr, P, 0, 0));
    assert_int_equal(r.ntoks, 1);
    assert_int_equal(q.generated, 1);
    assert_int_equal(q.num_computed, P);
    assert_int_equal(q.ntokens, P + 1);
    assert_true(q.t_first_token == secs);
    /* Then one token per decode step, with the context growing by one. */
    for (size_t i = 1; i < M; i++) {
        assert_true(brix_sched_plan(&f.s, &secs));
        assert_int_equal(f.s.plan_prefill_tokens, 0);
        assert_int_equal(f.s.plan_decode_seqs, 1);
        assert_true(secs == brix_gpu_step_seconds(f.pr, 0, P + i, 1));
        f.clock += secs;
        brix_sched_commit(&f.s, f.clock);
        assert_int_equal(f.step_tokens[i], 1);
        assert_int_equal(r.ntoks, i + 1);
    }
    assert_int_equal(r.ntoks, M);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.why, BRIX_FINISH_LENGTH);
    assert_int_equal(q.finish, BRIX_FINISH_LENGTH);
    assert_int_equal(q.generated, M);
    assert_int_equal(f.nsteps, M);
    assert_int_equal(f.s.st.steps, M);
    assert_int_equal(f.s.st.generation_tokens, M);
    assert_int_equal(f.s.st.prompt_tokens, P);
    /* Output tokens are from the output vocabulary, and are what the sequence holds. */
    for (size_t i = 0; i < M; i++) {
        assert_int_not_equal(r.toks[i], BRIX_TOK_EOS);
        assert_int_equal(q.tokens[P + i], r.toks[i]);
    }
    assert_false(fx_step(&f, NULL));
    assert_pool_idle(&f);
    brix_seq_free(&q);
    fx_free(&f);
}

static void test_max_num_seqs(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_num_seqs = 3;
    fx_t f;
    fx_init(&f, &o);
    enum { N = 8 };
    brix_seq_t q[N];
    rec_t r[N];
    for (int i = 0; i < N; i++) {
        seq_new(&q[i], &r[i], 20 + (size_t)i, (uint32_t)i, 4 + (size_t)i);
        assert_int_equal(brix_sched_add(&f.s, &q[i], 0.0), 0);
    }
    size_t max_running = 0;
    while (brix_sched_busy(&f.s)) {
        double secs;
        assert_true(brix_sched_plan(&f.s, &secs));
        check_plan(&f);
        if (f.s.nrunning > max_running)
            max_running = f.s.nrunning;
        f.clock += secs;
        brix_sched_commit(&f.s, f.clock);
    }
    assert_int_equal(max_running, 3);
    /* Admission is FIFO: sequences got their first token in order. */
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].finished, 1);
        assert_int_equal(r[i].ntoks, 4 + (size_t)i);
        if (i)
            assert_true(q[i].t_first_sched >= q[i - 1].t_first_sched);
    }
    assert_pool_idle(&f);
    for (int i = 0; i < N; i++)
        brix_seq_free(&q[i]);
    fx_free(&f);
}

static void test_token_budget_chunked_prefill(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_num_batched_tokens = 16;
    fx_t f;
    fx_init(&f, &o);
    const size_t plen[3] = { 40, 10, 25 };
    const size_t mt[3] = { 5, 3, 4 };
    brix_seq_t q[3];
    rec_t r[3];
    for (int i = 0; i < 3; i++) {
        seq_new(&q[i], &r[i], plen[i], (uint32_t)(10 + i), mt[i]);
        assert_int_equal(brix_sched_add(&f.s, &q[i], 0.0), 0);
    }
    /* Step 1: 16 tokens of the first prompt only. */
    assert_true(fx_step(&f, NULL));
    assert_int_equal(f.step_tokens[0], 16);
    assert_int_equal(q[0].num_computed, 16);
    assert_int_equal(q[1].state, BRIX_SEQ_WAITING);
    assert_int_equal(r[0].ntoks, 0);
    fx_run(&f);
    uint64_t total = 0;
    for (size_t i = 0; i < f.nsteps; i++) {
        assert_true(f.step_tokens[i] <= 16);
        assert_true(f.step_tokens[i] > 0);
        total += f.step_tokens[i];
    }
    /* Every prompt token and every decode (all but the first output token of
     * each sequence come from a one-token step) is scheduled exactly once. */
    assert_int_equal(total, 40 + 10 + 25 + (5 - 1) + (3 - 1) + (4 - 1));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].ntoks, mt[i]);
        assert_int_equal(r[i].why, BRIX_FINISH_LENGTH);
    }
    assert_pool_idle(&f);
    for (int i = 0; i < 3; i++)
        brix_seq_free(&q[i]);
    fx_free(&f);
}

/* Without chunked prefill a prompt is admitted whole or not at all. */
static void test_no_chunked_prefill(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_num_batched_tokens = 16;
    o.chunked = false;
    fx_t f;
    fx_init(&f, &o);
    brix_seq_t q[2];
    rec_t r[2];
    seq_new(&q[0], &r[0], 10, 1, 2);
    seq_new(&q[1], &r[1], 10, 2, 2);
    assert_int_equal(brix_sched_add(&f.s, &q[0], 0.0), 0);
    assert_int_equal(brix_sched_add(&f.s, &q[1], 0.0), 0);
    assert_true(fx_step(&f, NULL));
    assert_int_equal(f.step_tokens[0], 10);
    assert_int_equal(q[1].state, BRIX_SEQ_WAITING);
    assert_int_equal(q[1].num_computed, 0);
    fx_run(&f);
    for (size_t i = 0; i < f.nsteps; i++)
        assert_true(f.step_tokens[i] <= 16);
    assert_int_equal(r[1].ntoks, 2);
    assert_pool_idle(&f);
    brix_seq_free(&q[0]);
    brix_seq_free(&q[1]);
    fx_free(&f);
}

static void test_prefix_cache_hits(void **state)
{
    (void)state;
    const size_t lens[] = { 16, 17, 31, 32, 33, 50, 5 };
    for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
        const size_t n = lens[k], bs = 16;
        fx_t f;
        fx_init(&f, &big);
        brix_seq_t a, b;
        rec_t ra, rb;
        seq_new(&a, &ra, n, 3, 2);
        seq_new(&b, &rb, n, 3, 2);
        assert_int_equal(brix_sched_add(&f.s, &a, 0.0), 0);
        double sa, sb;
        assert_true(fx_step(&f, &sa));
        assert_int_equal(f.s.st.prefix_hits, 0);
        assert_int_equal(f.s.st.prefix_queries, n);
        assert_int_equal(a.cached_tokens, 0);
        fx_run(&f);

        assert_int_equal(brix_sched_add(&f.s, &b, f.clock), 0);
        assert_true(brix_sched_plan(&f.s, &sb));
        const size_t want = (n - 1) / bs * bs;
        if (f.s.st.prefix_hits != want)
            fail_msg("prompt of %zu tokens: %llu tokens hit, want %zu", n,
                     (unsigned long long)f.s.st.prefix_hits, want);
        assert_int_equal(b.cached_tokens, want);
        assert_int_equal(f.s.st.prefix_queries, 2 * n);
        assert_int_equal(f.s.plan_prefill_tokens, n - want);
        assert_true(sb == brix_gpu_step_seconds(f.pr, n - want, 0, 0));
        if (want)
            assert_true(sb < sa || sa == f.pr->prefill_min);
        f.clock += sb;
        brix_sched_commit(&f.s, f.clock);
        fx_run(&f);
        /* Same prompt, same seed: same output. */
        assert_int_equal(rb.ntoks, 2);
        assert_memory_equal(ra.toks, rb.toks, 2 * sizeof *ra.toks);
        assert_pool_idle(&f);
        brix_seq_free(&a);
        brix_seq_free(&b);
        fx_free(&f);
    }
}

/* A hit is possible while the first sequence is still running (shared blocks). */
static void test_prefix_cache_hit_while_running(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    brix_seq_t a, b;
    rec_t ra, rb;
    seq_new(&a, &ra, 40, 4, 10);
    seq_new(&b, &rb, 40, 4, 3);
    assert_int_equal(brix_sched_add(&f.s, &a, 0.0), 0);
    assert_true(fx_step(&f, NULL));
    assert_int_equal(brix_sched_add(&f.s, &b, f.clock), 0);
    double secs;
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(b.cached_tokens, 32);
    /* a decodes, b prefills its last 8 tokens. */
    assert_int_equal(f.s.plan_prefill_tokens, 8);
    assert_int_equal(f.s.plan_decode_seqs, 1);
    assert_true(secs == brix_gpu_step_seconds(f.pr, 8, 41, 1));
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    assert_int_equal(f.pool.blocks[a.blocks[0]].ref, 2);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    fx_run(&f);
    assert_pool_idle(&f);
    brix_seq_free(&a);
    brix_seq_free(&b);
    fx_free(&f);
}

/* Solo reference run of one sequence in a big pool: its output tokens. */
static void solo_tokens(size_t plen, uint32_t salt, size_t max_tokens, rec_t *out)
{
    fx_t f;
    fx_init(&f, &big);
    brix_seq_t q;
    seq_new(&q, out, plen, salt, max_tokens);
    assert_int_equal(brix_sched_add(&f.s, &q, 0.0), 0);
    fx_run(&f);
    assert_int_equal(out->ntoks, max_tokens);
    assert_int_equal(f.s.st.preemptions, 0);
    brix_seq_free(&q);
    fx_free(&f);
}

static void run_preemption(bool caching)
{
    /* 3 running sequences of 8-token prompts growing to 8 + 12 tokens in a
     * pool of 10 usable blocks of 4 tokens (plus the null block): they cannot
     * all fit (3 * 5 blocks). */
    fx_opts_t o = {
        .nblocks = 11,
        .block_size = 4,
        .caching = caching,
        .max_num_seqs = 3,
        .max_num_batched_tokens = 64,
        .chunked = true,
    };
    fx_t f;
    fx_init(&f, &o);
    enum { N = 4 };
    const size_t plen[N] = { 8, 8, 8, 6 }, mt[N] = { 12, 12, 12, 3 };
    brix_seq_t q[N];
    rec_t r[N];
    for (int i = 0; i < N; i++) {
        seq_new(&q[i], &r[i], plen[i], (uint32_t)(20 + i), mt[i]);
        assert_int_equal(brix_sched_add(&f.s, &q[i], 0.0), 0);
    }
    bool seen = false;
    size_t steps = 0;
    while (brix_sched_busy(&f.s)) {
        uint64_t pre = f.s.st.preemptions;
        bool was_running[N];
        for (int i = 0; i < N; i++)
            was_running[i] = q[i].state == BRIX_SEQ_RUNNING;
        double secs;
        assert_true(brix_sched_plan(&f.s, &secs));
        check_plan(&f);
        if (f.s.st.preemptions > pre && !seen) {
            seen = true;
            /* The first victim: the most recently admitted of the three,
             * the third, which is now at the front of the waiting queue,
             * ahead of the fourth that never ran. */
            assert_true(was_running[0] && was_running[1] && was_running[2]);
            assert_int_equal(f.s.st.preemptions - pre, 1);
            assert_int_equal(q[2].preemptions, 1);
            assert_int_equal(q[0].preemptions, 0);
            assert_int_equal(q[1].preemptions, 0);
            assert_int_equal(q[2].state, BRIX_SEQ_WAITING);
            assert_int_equal(q[2].nblocks, 0);
            assert_int_equal(q[2].num_computed, 0);
            assert_ptr_equal(f.s.wait_head, &q[2]);
            assert_ptr_equal(q[2].next, &q[3]);
            /* Nothing is admitted in a step that preempted. */
            assert_int_equal(q[3].state, BRIX_SEQ_WAITING);
        }
        f.clock += secs;
        brix_sched_commit(&f.s, f.clock);
        assert_true(++steps < MAX_STEPS);
    }
    assert_true(seen);
    assert_true(f.s.st.preemptions > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].finished, 1);
        assert_int_equal(r[i].why, BRIX_FINISH_LENGTH);
        rec_t solo;
        solo_tokens(plen[i], (uint32_t)(20 + i), mt[i], &solo);
        if (r[i].ntoks != solo.ntoks ||
            memcmp(r[i].toks, solo.toks, solo.ntoks * sizeof *solo.toks))
            fail_msg("sequence %d (%u preemptions): output differs from an unpreempted run", i,
                     q[i].preemptions);
    }
    assert_pool_idle(&f);
    for (int i = 0; i < N; i++)
        brix_seq_free(&q[i]);
    fx_free(&f);
}

static void test_preemption(void **state)
{
    (void)state;
    run_preemption(false);
    run_preemption(true);
}

static void test_eos_at(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    brix_seq_t q, q2;
    rec_t r, r2;
    seq_new(&q, &r, 12, 5, 100);
    q.eos_at = 4;
    seq_new(&q2, &r2, 12, 6, 3);
    q2.eos_at = 10; /* beyond max_tokens: LENGTH wins */
    assert_int_equal(brix_sched_add(&f.s, &q, 0.0), 0);
    assert_int_equal(brix_sched_add(&f.s, &q2, 0.0), 0);
    fx_run(&f);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.why, BRIX_FINISH_STOP);
    assert_int_equal(q.generated, 4);
    assert_int_equal(r.ntoks, 4);
    assert_int_equal(r.toks[3], BRIX_TOK_EOS);
    for (size_t i = 0; i < 3; i++)
        assert_int_not_equal(r.toks[i], BRIX_TOK_EOS);
    assert_int_equal(r2.why, BRIX_FINISH_LENGTH);
    assert_int_equal(q2.generated, 3);
    assert_pool_idle(&f);
    brix_seq_free(&q);
    brix_seq_free(&q2);
    fx_free(&f);
}

/* max_model_len caps prompt + output: LENGTH once the sequence reaches it. */
static void test_max_model_len(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    f.s.cfg.max_model_len = 15;
    brix_seq_t q;
    rec_t r;
    seq_new(&q, &r, 12, 8, 100);
    assert_int_equal(brix_sched_add(&f.s, &q, 0.0), 0);
    fx_run(&f);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.why, BRIX_FINISH_LENGTH);
    assert_int_equal(q.generated, 3);
    assert_int_equal(q.ntokens, 15);
    assert_pool_idle(&f);
    brix_seq_free(&q);
    fx_free(&f);
}

static void test_on_token_stop(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    brix_seq_t q;
    rec_t r;
    seq_new(&q, &r, 12, 7, 100);
    r.stop_at = 3;
    assert_int_equal(brix_sched_add(&f.s, &q, 0.0), 0);
    fx_run(&f);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.why, BRIX_FINISH_STOP);
    assert_int_equal(q.generated, 3);
    assert_int_equal(r.ntoks, 3);
    assert_pool_idle(&f);
    brix_seq_free(&q);
    fx_free(&f);
}

static void test_abort(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_num_seqs = 2;
    fx_t f;
    fx_init(&f, &o);
    enum { N = 5 };
    brix_seq_t q[N];
    rec_t r[N];
    for (int i = 0; i < N; i++) {
        seq_new(&q[i], &r[i], 40, (uint32_t)(30 + i), 6);
        assert_int_equal(brix_sched_add(&f.s, &q[i], 0.0), 0);
    }
    assert_true(fx_step(&f, NULL)); /* q0, q1 running; q2..q4 waiting */
    assert_int_equal(q[0].state, BRIX_SEQ_RUNNING);
    assert_int_equal(q[2].state, BRIX_SEQ_WAITING);

    /* Abort a waiting one. */
    brix_sched_abort(&f.s, &q[3]);
    assert_int_equal(q[3].state, BRIX_SEQ_FINISHED);
    assert_int_equal(q[3].finish, BRIX_FINISH_ABORT);
    assert_int_equal(f.s.nwaiting, 2);
    assert_ptr_equal(q[2].next, &q[4]);

    /* Abort a running one between steps: its blocks go back. */
    uint32_t free_before = f.pool.nfree;
    size_t held = q[0].nblocks;
    assert_true(held > 0);
    brix_sched_abort(&f.s, &q[0]);
    assert_int_equal(q[0].state, BRIX_SEQ_FINISHED);
    assert_int_equal(q[0].finish, BRIX_FINISH_ABORT);
    assert_int_equal(q[0].nblocks, 0);
    assert_int_equal(f.pool.nfree, free_before + held);
    assert_int_equal(f.s.nrunning, 1);

    /* Abort a planned one (just admitted in this plan) before commit. */
    double secs;
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(q[2].state, BRIX_SEQ_RUNNING);
    assert_int_equal(f.s.nstep, 2);
    size_t ntok1 = r[1].ntoks;
    brix_sched_abort(&f.s, &q[2]);
    assert_int_equal(q[2].nblocks, 0);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    assert_int_equal(f.step_tokens[f.nsteps - 1], 1); /* only q1's decode */
    assert_int_equal(r[1].ntoks, ntok1 + 1);
    assert_int_equal(r[2].ntoks, 0);
    assert_int_equal(q[2].num_computed, 0);

    /* Abort a planned running one (a decode). */
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(q[1].state, BRIX_SEQ_RUNNING);
    ntok1 = r[1].ntoks;
    brix_sched_abort(&f.s, &q[1]);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    assert_int_equal(r[1].ntoks, ntok1);

    fx_run(&f);
    /* No callbacks for aborted sequences. */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].finished, 0);
        assert_int_equal(q[i].finish, BRIX_FINISH_ABORT);
    }
    assert_int_equal(r[4].finished, 1);
    assert_int_equal(r[4].ntoks, 6);
    assert_pool_idle(&f);
    for (int i = 0; i < N; i++)
        brix_seq_free(&q[i]);
    fx_free(&f);
}

static void test_lora_slots(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_loras = 1;
    o.max_cpu_loras = 2;
    fx_t f;
    fx_init(&f, &o);
    brix_lora_t *l1 = brix_lora_add(&f.loras, "l1", "/a");
    brix_lora_t *l2 = brix_lora_add(&f.loras, "l2", "/b");
    assert_non_null(l1);
    assert_non_null(l2);
    const double load = f.pr->lora_load_seconds, swap = f.pr->lora_swap_seconds;
    assert_true(load > 0 && swap > 0);

    brix_seq_t x, y, z;
    rec_t rx, ry, rz;
    seq_new(&x, &rx, 20, 40, 3);
    seq_new(&y, &ry, 20, 41, 3);
    seq_new(&z, &rz, 20, 42, 3);
    x.lora = l1;
    y.lora = l2;
    assert_int_equal(brix_sched_add(&f.s, &x, 0.0), 0);
    assert_int_equal(brix_sched_add(&f.s, &y, 0.0), 0);
    assert_int_equal(brix_sched_add(&f.s, &z, 0.0), 0);
    assert_int_equal(l1->waiting, 1);

    /* Step 1: x (l1) and the base-model z run; y is skipped, not blocking z. */
    double secs;
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_int_equal(x.state, BRIX_SEQ_RUNNING);
    assert_int_equal(y.state, BRIX_SEQ_WAITING);
    assert_int_equal(z.state, BRIX_SEQ_RUNNING);
    assert_int_equal(f.s.plan_prefill_tokens, 40);
    /* l1 is read from disk and copied to the GPU in this step. */
    assert_true(secs == brix_gpu_step_seconds(f.pr, 40, 0, 0) + load + swap);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);

    while (brix_sched_busy(&f.s)) {
        assert_true(brix_sched_plan(&f.s, &secs));
        assert_false(x.state == BRIX_SEQ_RUNNING && y.state == BRIX_SEQ_RUNNING);
        assert_true(f.loras.nbusy <= 1);
        if (y.state == BRIX_SEQ_RUNNING && ry.ntoks == 0 && y.num_computed == 0) {
            /* y's first step: l2 loaded and swapped in, evicting idle l1's slot. */
            assert_true(secs == brix_gpu_step_seconds(f.pr, f.s.plan_prefill_tokens,
                                                      f.s.plan_decode_ctx, f.s.plan_decode_seqs) +
                                    load + swap);
            assert_int_equal(rx.finished, 1);
        } else {
            assert_true(secs == brix_gpu_step_seconds(f.pr, f.s.plan_prefill_tokens,
                                                      f.s.plan_decode_ctx, f.s.plan_decode_seqs));
        }
        f.clock += secs;
        brix_sched_commit(&f.s, f.clock);
    }
    assert_int_equal(ry.ntoks, 3);
    assert_true(l2->in_gpu);
    assert_false(l1->in_gpu);
    assert_true(l1->in_cpu);

    /* l1 again: host-resident, so only the swap is paid. */
    brix_seq_t w;
    rec_t rw;
    seq_new(&w, &rw, 20, 40, 2);
    w.lora = l1;
    assert_int_equal(brix_sched_add(&f.s, &w, f.clock), 0);
    assert_true(brix_sched_plan(&f.s, &secs));
    /* Same prompt as x but the adapter is part of the hash chain: x's blocks
     * (l1) are reusable. */
    assert_int_equal(w.cached_tokens, 16);
    assert_true(secs == brix_gpu_step_seconds(f.pr, 4, 0, 0) + swap);
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    fx_run(&f);
    assert_pool_idle(&f);
    brix_seq_free(&x);
    brix_seq_free(&y);
    brix_seq_free(&z);
    brix_seq_free(&w);
    fx_free(&f);
}

/* The adapter id is part of the block hash: the same prompt under another
 * adapter (or none) does not hit. */
static void test_lora_prefix_isolation(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_loras = 2;
    fx_t f;
    fx_init(&f, &o);
    brix_lora_t *l1 = brix_lora_add(&f.loras, "l1", "/a");
    brix_seq_t a, b, c;
    rec_t ra, rb, rc;
    seq_new(&a, &ra, 40, 50, 1);
    seq_new(&b, &rb, 40, 50, 1);
    seq_new(&c, &rc, 40, 50, 1);
    a.lora = l1;
    assert_int_equal(brix_sched_add(&f.s, &a, 0.0), 0);
    fx_run(&f);
    assert_int_equal(brix_sched_add(&f.s, &b, f.clock), 0);
    fx_run(&f);
    assert_int_equal(b.cached_tokens, 0);
    c.lora = l1;
    assert_int_equal(brix_sched_add(&f.s, &c, f.clock), 0);
    fx_run(&f);
    assert_int_equal(c.cached_tokens, 32);
    assert_pool_idle(&f);
    brix_seq_free(&a);
    brix_seq_free(&b);
    brix_seq_free(&c);
    fx_free(&f);
}

static void test_prefill_only(void **state)
{
    (void)state;
    fx_opts_t o = big;
    o.max_num_batched_tokens = 8;
    fx_t f;
    fx_init(&f, &o);
    brix_seq_t q;
    rec_t r;
    seq_new(&q, &r, 20, 60, 1);
    q.prefill_only = true;
    assert_int_equal(brix_sched_add(&f.s, &q, 0.0), 0);
    size_t steps = fx_run(&f);
    assert_int_equal(steps, 3); /* 8 + 8 + 4 */
    assert_int_equal(f.step_tokens[0], 8);
    assert_int_equal(f.step_tokens[2], 4);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.why, BRIX_FINISH_STOP);
    assert_int_equal(r.ntoks, 0);
    assert_int_equal(q.generated, 0);
    assert_int_equal(q.num_computed, 20);
    assert_int_equal(f.s.st.prompt_tokens, 20);
    assert_int_equal(f.s.st.generation_tokens, 0);
    assert_pool_idle(&f);
    brix_seq_free(&q);
    fx_free(&f);
}

/* Mixed steps: prefill tokens of new sequences plus decodes of running ones. */
static void test_step_timing_mixed(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    brix_seq_t a, b;
    rec_t ra, rb;
    seq_new(&a, &ra, 30, 70, 5);
    seq_new(&b, &rb, 50, 71, 5);
    assert_int_equal(brix_sched_add(&f.s, &a, 0.0), 0);
    double secs;
    assert_true(fx_step(&f, &secs));
    assert_true(secs == brix_gpu_step_seconds(f.pr, 30, 0, 0));
    assert_int_equal(brix_sched_add(&f.s, &b, f.clock), 0);
    assert_true(brix_sched_plan(&f.s, &secs));
    /* a decodes with 31 tokens of context; b prefills 50. */
    assert_true(secs == brix_gpu_step_seconds(f.pr, 50, 31, 1));
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    assert_true(brix_sched_plan(&f.s, &secs));
    assert_true(secs == brix_gpu_step_seconds(f.pr, 0, 32 + 51, 2));
    f.clock += secs;
    brix_sched_commit(&f.s, f.clock);
    fx_run(&f);
    assert_true(a.t_first_token < b.t_first_token);
    assert_true(a.t_finish <= b.t_finish);
    assert_pool_idle(&f);
    brix_seq_free(&a);
    brix_seq_free(&b);
    fx_free(&f);
}

/*
 * Callbacks that change the batch during a commit: on_token aborting another
 * sequence of the same step or itself, and on_finish freeing the sequence
 * (owners may free it once on_finish returns).
 */
static void test_callbacks_abort_and_free(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, &big);
    enum { N = 5 };
    brix_seq_t *q[N];
    rec_t r[N];
    for (int i = 0; i < N; i++) {
        q[i] = brix_malloc(sizeof *q[i]);
        assert_non_null(q[i]);
        seq_new(q[i], &r[i], 24, (uint32_t)(80 + i), 4);
        r[i].free_on_finish = true;
    }
    r[0].abort_target = q[1]; /* q0's first token aborts q1 (later in the same step) */
    r[0].abort_at = 1;
    r[2].abort_target = q[2]; /* q2 aborts itself at its second token */
    r[2].abort_at = 2;
    q[3]->prefill_only = true;
    r[4].stop_at = 1;
    for (int i = 0; i < N; i++)
        assert_int_equal(brix_sched_add(&f.s, q[i], 0.0), 0);

    assert_true(fx_step(&f, NULL));
    assert_int_equal(f.step_tokens[0], N * 24 - 24); /* q1's prefill is not counted */
    assert_int_equal(r[0].ntoks, 1);
    assert_int_equal(r[1].ntoks, 0);
    assert_int_equal(q[1]->state, BRIX_SEQ_FINISHED);
    assert_int_equal(q[1]->finish, BRIX_FINISH_ABORT);
    assert_int_equal(q[1]->nblocks, 0);
    assert_int_equal(r[1].finished, 0);
    assert_true(r[3].freed); /* prefill-only: finished and freed in the first step */
    assert_true(r[4].freed); /* stopped by its first token */
    assert_int_equal(r[4].why, BRIX_FINISH_STOP);
    fx_run(&f);
    assert_int_equal(r[2].ntoks, 2);
    assert_int_equal(r[2].finished, 0);
    assert_int_equal(q[2]->finish, BRIX_FINISH_ABORT);
    assert_true(r[0].freed);
    assert_int_equal(r[0].ntoks, 4);
    assert_int_equal(r[0].why, BRIX_FINISH_LENGTH);
    assert_pool_idle(&f);
    for (int i = 1; i <= 2; i++) {
        brix_seq_free(q[i]);
        brix_free(q[i]);
    }
    fx_free(&f);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_single_request_steps, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_max_num_seqs, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_token_budget_chunked_prefill, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_no_chunked_prefill, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_prefix_cache_hits, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_prefix_cache_hit_while_running, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_preemption, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_eos_at, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_max_model_len, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_on_token_stop, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_abort, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_lora_slots, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_lora_prefix_isolation, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_prefill_only, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_step_timing_mixed, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_callbacks_abort_and_free, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
