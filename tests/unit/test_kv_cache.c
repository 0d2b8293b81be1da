/*
 * Unit tests for the simulated KV block pool and prefix cache
 * (engine_sim/kv_cache.h): allocation counts, LRU eviction order, prefix-table
 * registration and lookup, eviction events, usage, the chain hash, and a
 * randomized comparison against a naive array model.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "core/alloc.h"
#include "engine_sim/kv_cache.h"

#include "leak_check.h"

/* --------------------------------------------------------------- sink -- */

#define SINK_MAX 4096

typedef struct sink_rec {
    uint64_t removed[SINK_MAX];
    size_t nremoved;
    size_t nstored_calls;
    uint64_t stored[SINK_MAX];
    size_t nstored;
    bool last_has_parent;
    uint64_t last_parent;
    size_t last_ntokens;
    uint32_t last_tokens[64];
    int64_t last_lora;
} sink_rec_t;

static void sink_stored(void *ud, const uint64_t *hashes, size_t n, bool has_parent,
                        uint64_t parent, const uint32_t *tokens, size_t ntokens, int64_t lora_id)
{
    sink_rec_t *s = ud;
    s->nstored_calls++;
    for (size_t i = 0; i < n && s->nstored < SINK_MAX; i++)
        s->stored[s->nstored++] = hashes[i];
    s->last_has_parent = has_parent;
    s->last_parent = parent;
    s->last_ntokens = ntokens;
    for (size_t i = 0; i < ntokens && i < 64; i++)
        s->last_tokens[i] = tokens[i];
    s->last_lora = lora_id;
}

static void sink_removed(void *ud, uint64_t hash)
{
    sink_rec_t *s = ud;
    if (s->nremoved < SINK_MAX)
        s->removed[s->nremoved++] = hash;
}

static void attach_sink(brix_kv_pool_t *p, sink_rec_t *s)
{
    memset(s, 0, sizeof *s);
    p->sink.stored = sink_stored;
    p->sink.removed = sink_removed;
    p->sink.ud = s;
}

/* Walks the free queue from its head; checks the back links as it goes. */
static size_t free_queue(const brix_kv_pool_t *p, uint32_t *out, size_t max)
{
    size_t n = 0;
    uint32_t prev = BRIX_KV_NONE;
    for (uint32_t b = p->free_head; b != BRIX_KV_NONE; b = p->blocks[b].next) {
        assert_true(n < max);
        assert_int_equal(p->blocks[b].prev, prev);
        assert_true(p->blocks[b].in_free);
        assert_int_equal(p->blocks[b].ref, 0);
        out[n++] = b;
        prev = b;
    }
    assert_int_equal(p->free_tail, prev);
    assert_int_equal(n, p->nfree);
    return n;
}

/* Block 0 is vLLM's null block: reserved, never allocated, not in usage. The
 * tests size pools by usable blocks and add it. */
static void pool_init(brix_kv_pool_t *p, uint32_t usable, uint32_t bs, bool caching)
{
    assert_int_equal(brix_kv_pool_init(p, usable + 1, bs, caching), 0);
    assert_int_equal(p->nblocks, usable + 1);
    assert_int_equal(p->nfree, usable);
    assert_false(p->blocks[0].in_free);
    assert_true(p->blocks[0].ref > 0);
}

static void assert_usage(const brix_kv_pool_t *p, double want)
{
    double u = brix_kv_pool_usage(p);
    if (fabs(u - want) > 1e-12)
        fail_msg("usage %.17g, want %.17g", u, want);
}

/* ------------------------------------------------------------- basics -- */

static void test_init_errors(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    assert_int_equal(brix_kv_pool_init(&p, 0, 16, true), -EINVAL);
    assert_int_equal(brix_kv_pool_init(&p, 1, 16, true), -EINVAL); /* only the null block */
    assert_int_equal(brix_kv_pool_init(&p, 16, 0, true), -EINVAL);
    brix_alloc_fail_after(0);
    assert_int_equal(brix_kv_pool_init(&p, 16, 16, true), -ENOMEM);
    brix_alloc_fail_after(1);
    assert_int_equal(brix_kv_pool_init(&p, 16, 16, true), -ENOMEM);
    brix_alloc_fail_after(-1);
}

static void test_alloc_release_counts(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    pool_init(&p, 8, 4, true);
    assert_int_equal(p.nfree, 8);
    assert_usage(&p, 0.0);

    uint32_t a[8], b[8];
    assert_true(brix_kv_pool_alloc(&p, 3, a));
    /* A fresh pool hands out blocks from the head of the queue: 1, 2, 3. */
    assert_int_equal(a[0], 1);
    assert_int_equal(a[1], 2);
    assert_int_equal(a[2], 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p.blocks[a[i]].ref, 1);
        assert_false(p.blocks[a[i]].in_free);
    }
    assert_int_equal(p.nfree, 5);
    assert_usage(&p, 3.0 / 8.0);

    /* Too many: nothing is taken. */
    assert_false(brix_kv_pool_alloc(&p, 6, b));
    assert_int_equal(p.nfree, 5);
    assert_true(brix_kv_pool_alloc(&p, 5, b));
    assert_int_equal(p.nfree, 0);
    assert_usage(&p, 1.0);
    assert_false(brix_kv_pool_alloc(&p, 1, b + 5));
    /* Zero blocks always succeed. */
    assert_true(brix_kv_pool_alloc(&p, 0, b + 5));

    brix_kv_pool_release(&p, a, 3);
    assert_int_equal(p.nfree, 3);
    assert_usage(&p, 5.0 / 8.0);
    brix_kv_pool_release(&p, b, 5);
    assert_int_equal(p.nfree, 8);
    assert_usage(&p, 0.0);
    uint32_t q[8];
    assert_int_equal(free_queue(&p, q, 8), 8);
    assert_int_equal(p.evictions, 0);
    brix_kv_pool_free(&p);
}

/* The null block is never handed out, never freed, and not part of usage. */
static void test_null_block(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    sink_rec_t sink;
    pool_init(&p, 6, 4, true);
    attach_sink(&p, &sink);
    uint32_t a[6];
    assert_true(brix_kv_pool_alloc(&p, 6, a));
    for (int i = 0; i < 6; i++)
        assert_int_not_equal(a[i], 0);
    assert_false(brix_kv_pool_alloc(&p, 1, a));
    assert_usage(&p, 1.0);
    uint32_t ref0 = p.blocks[0].ref;
    brix_kv_pool_release(&p, a, 6);
    assert_usage(&p, 0.0);
    assert_int_equal(p.blocks[0].ref, ref0);
    uint32_t q[8];
    assert_int_equal(free_queue(&p, q, 8), 6);
    for (int i = 0; i < 6; i++)
        assert_int_not_equal(q[i], 0);
    brix_kv_pool_free(&p);
}

static void test_release_order_lru(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    pool_init(&p, 8, 4, true);
    uint32_t a[3], b[2];
    assert_true(brix_kv_pool_alloc(&p, 3, a)); /* 1 2 3 */
    assert_true(brix_kv_pool_alloc(&p, 2, b)); /* 4 5 */
    /* Free queue: 6 7 8. Releasing a appends 3 2 1 (last block first). */
    brix_kv_pool_release(&p, a, 3);
    uint32_t q[8];
    size_t n = free_queue(&p, q, 8);
    const uint32_t want1[] = { 6, 7, 8, 3, 2, 1 };
    assert_int_equal(n, 6);
    assert_memory_equal(q, want1, sizeof want1);
    brix_kv_pool_release(&p, b, 2);
    n = free_queue(&p, q, 8);
    const uint32_t want2[] = { 6, 7, 8, 3, 2, 1, 5, 4 };
    assert_int_equal(n, 8);
    assert_memory_equal(q, want2, sizeof want2);

    /* Allocation takes from the head in that order. */
    uint32_t c[8];
    assert_true(brix_kv_pool_alloc(&p, 5, c));
    const uint32_t want3[] = { 6, 7, 8, 3, 2 };
    assert_memory_equal(c, want3, sizeof want3);
    brix_kv_pool_release(&p, c, 5);
    brix_kv_pool_free(&p);
}

/* A shared block returns to the free queue only when its last holder drops it. */
static void test_shared_block_refcount(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    pool_init(&p, 4, 2, true);
    uint32_t a[2], h[2];
    assert_true(brix_kv_pool_alloc(&p, 2, a));
    uint64_t hs[2] = { 111, 222 };
    assert_true(brix_kv_pool_cache_block(&p, a[0], hs[0]));
    assert_true(brix_kv_pool_cache_block(&p, a[1], hs[1]));
    /* A second sequence takes the same blocks while they are in use. */
    assert_int_equal(brix_kv_pool_acquire_cached(&p, hs, 2, h), 2);
    assert_int_equal(h[0], a[0]);
    assert_int_equal(h[1], a[1]);
    assert_int_equal(p.blocks[a[0]].ref, 2);
    assert_int_equal(p.nfree, 2);
    brix_kv_pool_release(&p, a, 2);
    assert_int_equal(p.nfree, 2);
    assert_usage(&p, 0.5);
    brix_kv_pool_release(&p, h, 2);
    assert_int_equal(p.nfree, 4);
    /* Still cached while free. */
    assert_int_equal(brix_kv_pool_count_cached(&p, hs, 2), 2);
    brix_kv_pool_free(&p);
}

/* ----------------------------------------------------- prefix caching -- */

static void test_cache_and_acquire_longest_leading_run(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    sink_rec_t sink;
    pool_init(&p, 16, 4, true);
    attach_sink(&p, &sink);
    uint32_t a[4];
    assert_true(brix_kv_pool_alloc(&p, 4, a));
    uint64_t hs[4] = { 0x1001, 0x1002, 0x1003, 0x1004 };
    /* Register blocks 0, 1 and 3 of the run, not 2. */
    assert_true(brix_kv_pool_cache_block(&p, a[0], hs[0]));
    assert_true(brix_kv_pool_cache_block(&p, a[1], hs[1]));
    assert_true(brix_kv_pool_cache_block(&p, a[3], hs[3]));
    assert_int_equal(p.ncached, 3);
    assert_true(p.blocks[a[0]].cached);
    assert_int_equal(p.blocks[a[0]].hash, hs[0]);
    assert_false(p.blocks[a[2]].cached);
    /* cache_block does not report events itself. */
    assert_int_equal(sink.nstored_calls, 0);
    brix_kv_pool_release(&p, a, 4);

    assert_int_equal(brix_kv_pool_count_cached(&p, hs, 4), 2);
    assert_int_equal(p.nfree, 16);
    /* A later block being cached does not help once the run is broken. */
    uint64_t skip[3] = { hs[0], hs[2], hs[3] };
    assert_int_equal(brix_kv_pool_count_cached(&p, skip, 3), 1);
    uint64_t miss[2] = { 0xdead, hs[0] };
    assert_int_equal(brix_kv_pool_count_cached(&p, miss, 2), 0);

    uint32_t got[4];
    assert_int_equal(brix_kv_pool_acquire_cached(&p, hs, 4, got), 2);
    assert_int_equal(got[0], a[0]);
    assert_int_equal(got[1], a[1]);
    assert_int_equal(p.blocks[a[0]].ref, 1);
    assert_false(p.blocks[a[0]].in_free);
    /* The cached but unmatched block 3 stays free. */
    assert_true(p.blocks[a[3]].in_free);
    assert_int_equal(p.nfree, 14);
    brix_kv_pool_release(&p, got, 2);
    assert_int_equal(p.nfree, 16);
    assert_int_equal(sink.nremoved, 0);
    brix_kv_pool_free(&p);
}

static void test_duplicate_hash_not_registered(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    pool_init(&p, 8, 4, true);
    uint32_t a[3];
    assert_true(brix_kv_pool_alloc(&p, 3, a));
    assert_true(brix_kv_pool_cache_block(&p, a[0], 42));
    /* Another block with the same hash: the first one is kept. */
    assert_false(brix_kv_pool_cache_block(&p, a[1], 42));
    assert_false(p.blocks[a[1]].cached);
    /* The same block twice, even under another hash. */
    assert_false(brix_kv_pool_cache_block(&p, a[0], 43));
    assert_int_equal(p.blocks[a[0]].hash, 42);
    assert_int_equal(p.ncached, 1);
    uint32_t got[1];
    uint64_t h = 42;
    assert_int_equal(brix_kv_pool_acquire_cached(&p, &h, 1, got), 1);
    assert_int_equal(got[0], a[0]);
    brix_kv_pool_release(&p, got, 1);
    brix_kv_pool_release(&p, a, 3);
    brix_kv_pool_free(&p);
}

static void test_prefix_caching_disabled(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    pool_init(&p, 8, 4, false);
    uint32_t a[2], got[2];
    assert_true(brix_kv_pool_alloc(&p, 2, a));
    assert_false(brix_kv_pool_cache_block(&p, a[0], 7));
    assert_int_equal(p.ncached, 0);
    uint64_t h = 7;
    assert_int_equal(brix_kv_pool_count_cached(&p, &h, 1), 0);
    assert_int_equal(brix_kv_pool_acquire_cached(&p, &h, 1, got), 0);
    brix_kv_pool_release(&p, a, 2);
    brix_kv_pool_free(&p);
}

/* Freed blocks of a sequence go to the tail last-block-first, so its tail
 * block is evicted first and a later lookup still hits the leading run. */
static void test_eviction_order_and_events(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    sink_rec_t sink;
    pool_init(&p, 4, 4, true);
    attach_sink(&p, &sink);
    uint32_t a[4];
    uint64_t hs[4] = { 0xa0, 0xa1, 0xa2, 0xa3 };
    assert_true(brix_kv_pool_alloc(&p, 4, a));
    for (int i = 0; i < 4; i++)
        assert_true(brix_kv_pool_cache_block(&p, a[i], hs[i]));
    brix_kv_pool_release(&p, a, 4);
    assert_int_equal(p.ncached, 4);

    /* Evict one block: the sequence's last. */
    uint32_t x[4];
    assert_true(brix_kv_pool_alloc(&p, 1, x));
    assert_int_equal(x[0], a[3]);
    assert_false(p.blocks[x[0]].cached);
    assert_int_equal(sink.nremoved, 1);
    assert_int_equal(sink.removed[0], hs[3]);
    assert_int_equal(p.evictions, 1);
    assert_int_equal(p.ncached, 3);
    assert_int_equal(brix_kv_pool_count_cached(&p, hs, 4), 3);

    /* Two more: blocks 2 then 1. */
    assert_true(brix_kv_pool_alloc(&p, 2, x + 1));
    assert_int_equal(x[1], a[2]);
    assert_int_equal(x[2], a[1]);
    assert_int_equal(sink.nremoved, 3);
    assert_int_equal(sink.removed[1], hs[2]);
    assert_int_equal(sink.removed[2], hs[1]);
    assert_int_equal(brix_kv_pool_count_cached(&p, hs, 4), 1);
    uint32_t got[4];
    assert_int_equal(brix_kv_pool_acquire_cached(&p, hs + 1, 1, got), 0);
    assert_int_equal(brix_kv_pool_acquire_cached(&p, hs, 4, got), 1);
    assert_int_equal(got[0], a[0]);
    assert_int_equal(p.nfree, 0);
    assert_int_equal(p.evictions, 3);

    /* Releasing an evicted block does not bring its hash back. */
    brix_kv_pool_release(&p, x, 3);
    assert_int_equal(brix_kv_pool_count_cached(&p, hs + 1, 1), 0);
    /* Re-registering an evicted hash on a new block works. */
    assert_true(brix_kv_pool_alloc(&p, 1, x));
    assert_true(brix_kv_pool_cache_block(&p, x[0], hs[1]));
    assert_int_equal(brix_kv_pool_count_cached(&p, hs, 4), 2);
    brix_kv_pool_release(&p, x, 1);
    brix_kv_pool_release(&p, got, 1);
    assert_int_equal(p.nfree, 4);
    /* Uncached blocks are evicted silently. */
    size_t before = sink.nremoved;
    uint64_t ev_before = p.evictions;
    assert_true(brix_kv_pool_alloc(&p, 4, x));
    assert_int_equal(sink.nremoved - before, 2); /* hs[1] again and hs[0] */
    assert_int_equal(p.evictions - ev_before, 2);
    assert_int_equal(p.ncached, 0);
    brix_kv_pool_release(&p, x, 4);
    brix_kv_pool_free(&p);
}

static void test_report_stored(void **state)
{
    (void)state;
    brix_kv_pool_t p;
    sink_rec_t sink;
    pool_init(&p, 4, 2, true);
    attach_sink(&p, &sink);
    uint64_t hs[2] = { 5, 6 };
    uint32_t toks[4] = { 10, 11, 12, 13 };
    brix_kv_pool_report_stored(&p, hs, 2, true, 99, toks, 4, 7);
    assert_int_equal(sink.nstored_calls, 1);
    assert_int_equal(sink.nstored, 2);
    assert_int_equal(sink.stored[0], 5);
    assert_int_equal(sink.stored[1], 6);
    assert_true(sink.last_has_parent);
    assert_int_equal(sink.last_parent, 99);
    assert_int_equal(sink.last_ntokens, 4);
    assert_memory_equal(sink.last_tokens, toks, sizeof toks);
    assert_int_equal(sink.last_lora, 7);
    /* An empty run is not reported. */
    brix_kv_pool_report_stored(&p, hs, 0, false, 0, toks, 0, -1);
    assert_int_equal(sink.nstored_calls, 1);
    /* No sink: nothing happens. */
    p.sink.stored = NULL;
    brix_kv_pool_report_stored(&p, hs, 2, false, 0, toks, 4, -1);
    assert_int_equal(sink.nstored_calls, 1);
    brix_kv_pool_free(&p);
}

static void test_block_hash_chaining(void **state)
{
    (void)state;
    uint32_t t1[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    uint32_t t2[8] = { 1, 2, 3, 4, 5, 6, 7, 9 };
    uint64_t h = brix_kv_block_hash(BRIX_KV_ROOT_HASH, t1, 8, -1);
    /* Deterministic. */
    assert_int_equal(h, brix_kv_block_hash(BRIX_KV_ROOT_HASH, t1, 8, -1));
    /* Depends on the parent, every token, and the LoRA id. */
    assert_int_not_equal(h, brix_kv_block_hash(BRIX_KV_ROOT_HASH + 1, t1, 8, -1));
    assert_int_not_equal(h, brix_kv_block_hash(0, t1, 8, -1));
    assert_int_not_equal(h, brix_kv_block_hash(BRIX_KV_ROOT_HASH, t2, 8, -1));
    uint64_t l0 = brix_kv_block_hash(BRIX_KV_ROOT_HASH, t1, 8, 0);
    uint64_t l1 = brix_kv_block_hash(BRIX_KV_ROOT_HASH, t1, 8, 1);
    uint64_t l2 = brix_kv_block_hash(BRIX_KV_ROOT_HASH, t1, 8, 2);
    assert_int_not_equal(h, l0);
    assert_int_not_equal(h, l1);
    assert_int_not_equal(l0, l1);
    assert_int_not_equal(l1, l2);
    for (int i = 0; i < 8; i++) {
        uint32_t t[8];
        memcpy(t, t1, sizeof t);
        t[i] ^= 0x10000u; /* a high-byte change too */
        assert_int_not_equal(h, brix_kv_block_hash(BRIX_KV_ROOT_HASH, t, 8, -1));
    }
    /* Only block_size tokens are read. */
    assert_int_equal(brix_kv_block_hash(7, t1, 7, -1), brix_kv_block_hash(7, t2, 7, -1));
    assert_int_not_equal(brix_kv_block_hash(7, t1, 7, -1), brix_kv_block_hash(7, t1, 8, -1));

    /* A chain: the same block content under different parents differs, so
     * equal blocks at different depths are different cache entries. */
    uint64_t c0 = brix_kv_block_hash(BRIX_KV_ROOT_HASH, t1, 8, -1);
    uint64_t c1 = brix_kv_block_hash(c0, t1, 8, -1);
    uint64_t c2 = brix_kv_block_hash(c1, t1, 8, -1);
    assert_int_not_equal(c0, c1);
    assert_int_not_equal(c1, c2);
    uint64_t d1 = brix_kv_block_hash(brix_kv_block_hash(BRIX_KV_ROOT_HASH, t2, 8, -1), t1, 8, -1);
    assert_int_not_equal(c1, d1);
}

/* ------------------------------------------------------- stress model -- */

#define M_BLOCKS 33 /* including the null block 0 */
#define M_OWNERS 10
#define M_CHAINS 12
#define M_DEPTH  8

typedef struct model {
    uint32_t ref[M_BLOCKS];
    bool cached[M_BLOCKS];
    uint64_t hash[M_BLOCKS];
    uint32_t fq[M_BLOCKS];
    size_t nfq;
    uint64_t evictions;
    uint64_t evicted[SINK_MAX];
    size_t nevicted;
} model_t;

typedef struct owner {
    uint32_t b[16];
    size_t n;
} owner_t;

static int model_find(const model_t *m, uint64_t h)
{
    for (int b = 0; b < M_BLOCKS; b++)
        if (m->cached[b] && m->hash[b] == h)
            return b;
    return -1;
}

static void model_fq_remove(model_t *m, uint32_t b)
{
    for (size_t i = 0; i < m->nfq; i++) {
        if (m->fq[i] == b) {
            memmove(&m->fq[i], &m->fq[i + 1], (m->nfq - i - 1) * sizeof *m->fq);
            m->nfq--;
            return;
        }
    }
    fail_msg("model: block %u not free", b);
}

static bool model_alloc(model_t *m, size_t n, uint32_t *out)
{
    if (n > m->nfq)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint32_t b = m->fq[0];
        model_fq_remove(m, b);
        if (m->cached[b]) {
            m->cached[b] = false;
            m->evictions++;
            m->evicted[m->nevicted++ % SINK_MAX] = m->hash[b];
        }
        m->ref[b] = 1;
        out[i] = b;
    }
    return true;
}

static bool model_cache(model_t *m, uint32_t b, uint64_t h)
{
    if (m->cached[b] || model_find(m, h) >= 0)
        return false;
    m->cached[b] = true;
    m->hash[b] = h;
    return true;
}

static size_t model_count(const model_t *m, const uint64_t *hs, size_t n)
{
    size_t i = 0;
    while (i < n && model_find(m, hs[i]) >= 0)
        i++;
    return i;
}

static size_t model_acquire(model_t *m, const uint64_t *hs, size_t n, uint32_t *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        int b = model_find(m, hs[i]);
        if (b < 0)
            break;
        if (m->ref[b] == 0)
            model_fq_remove(m, (uint32_t)b);
        m->ref[b]++;
        out[i] = (uint32_t)b;
    }
    return i;
}

static void model_release(model_t *m, const uint32_t *bs, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        uint32_t b = bs[i];
        if (m->ref[b] && --m->ref[b] == 0)
            m->fq[m->nfq++] = b;
    }
}

static void model_check(const model_t *m, const brix_kv_pool_t *p, const sink_rec_t *sink,
                        size_t op)
{
    uint32_t q[M_BLOCKS];
    size_t n = free_queue(p, q, M_BLOCKS);
    if (n != m->nfq || memcmp(q, m->fq, n * sizeof *q))
        fail_msg("op %zu: free queue differs from the model (%zu vs %zu blocks)", op, n, m->nfq);
    size_t ncached = 0;
    for (uint32_t b = 0; b < M_BLOCKS; b++) {
        if (p->blocks[b].ref != m->ref[b] || p->blocks[b].cached != m->cached[b])
            fail_msg("op %zu: block %u ref %u cached %d, model ref %u cached %d", op, b,
                     p->blocks[b].ref, p->blocks[b].cached, m->ref[b], m->cached[b]);
        if (m->cached[b]) {
            ncached++;
            assert_int_equal(p->blocks[b].hash, m->hash[b]);
            /* The table finds exactly this block. */
            assert_int_equal(brix_kv_pool_count_cached(p, &m->hash[b], 1), 1);
        }
    }
    assert_int_equal(p->ncached, ncached);
    assert_int_equal(p->evictions, m->evictions);
    assert_int_equal(sink->nremoved, m->nevicted);
    if (m->nevicted)
        assert_int_equal(sink->removed[(m->nevicted - 1) % SINK_MAX],
                         m->evicted[(m->nevicted - 1) % SINK_MAX]);
    assert_usage(p, 1.0 - (double)m->nfq / (M_BLOCKS - 1));
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void run_stress(uint64_t seed0, size_t nops, bool colliding)
{
    uint64_t seed = seed0;
    brix_kv_pool_t p;
    static sink_rec_t sink;
    static model_t m;
    static owner_t own[M_OWNERS];
    size_t nown = 0, hits = 0, rejected = 0;
    memset(&m, 0, sizeof m);
    assert_int_equal(brix_kv_pool_init(&p, M_BLOCKS, 16, true), 0);
    attach_sink(&p, &sink);
    m.ref[0] = p.blocks[0].ref; /* the null block stays held */
    for (uint32_t b = 1; b < M_BLOCKS; b++)
        m.fq[m.nfq++] = b;

    /* Hash chains: sequences share prefixes when they use the same chain. With
     * `colliding`, chains are built from so few distinct tokens that several
     * chains are identical, so duplicate registrations are frequent. */
    uint64_t chain[M_CHAINS][M_DEPTH];
    for (int c = 0; c < M_CHAINS; c++) {
        uint64_t parent = BRIX_KV_ROOT_HASH;
        for (int d = 0; d < M_DEPTH; d++) {
            uint32_t toks[16];
            for (int t = 0; t < 16; t++)
                toks[t] =
                    colliding ? (uint32_t)((c * 7 + t) % 3) : (uint32_t)(rng_next(&seed) % 1000);
            parent = brix_kv_block_hash(parent, toks, 16, c % 3 == 0 ? -1 : c % 3);
            chain[c][d] = parent;
        }
    }

    for (size_t op = 0; op < nops; op++) {
        unsigned r = (unsigned)(rng_next(&seed) % 100);
        if (r < 30 && nown < M_OWNERS) {
            size_t n = 1 + (size_t)(rng_next(&seed) % 6);
            owner_t *o = &own[nown];
            bool ok = brix_kv_pool_alloc(&p, n, o->b);
            uint32_t mb[16];
            bool mok = model_alloc(&m, n, mb);
            assert_int_equal(ok, mok);
            if (ok) {
                assert_memory_equal(o->b, mb, n * sizeof *mb);
                for (size_t i = 0; i < n; i++)
                    assert_int_not_equal(o->b[i], 0);
                o->n = n;
                nown++;
            }
        } else if (r < 55 && nown) {
            /* Register some blocks of an owner as chain positions. */
            owner_t *o = &own[rng_next(&seed) % nown];
            size_t c = rng_next(&seed) % M_CHAINS;
            for (size_t i = 0; i < o->n && i < M_DEPTH; i++) {
                if (rng_next(&seed) % 4 == 0)
                    continue;
                bool ok = brix_kv_pool_cache_block(&p, o->b[i], chain[c][i]);
                bool mok = model_cache(&m, o->b[i], chain[c][i]);
                if (ok != mok)
                    fail_msg("op %zu: cache_block(%u) = %d, model %d", op, o->b[i], ok, mok);
                rejected += !ok;
            }
        } else if (r < 80 && nown) {
            size_t k = rng_next(&seed) % nown;
            brix_kv_pool_release(&p, own[k].b, own[k].n);
            model_release(&m, own[k].b, own[k].n);
            own[k] = own[--nown];
        } else if (nown < M_OWNERS) {
            size_t c = rng_next(&seed) % M_CHAINS;
            size_t n = 1 + (size_t)(rng_next(&seed) % M_DEPTH);
            size_t want = model_count(&m, chain[c], n);
            assert_int_equal(brix_kv_pool_count_cached(&p, chain[c], n), want);
            owner_t *o = &own[nown];
            uint32_t mb[16];
            size_t got = brix_kv_pool_acquire_cached(&p, chain[c], n, o->b);
            size_t mgot = model_acquire(&m, chain[c], n, mb);
            if (got != mgot)
                fail_msg("op %zu: acquire hit %zu blocks, model %zu", op, got, mgot);
            assert_memory_equal(o->b, mb, got * sizeof *mb);
            hits += got;
            if (got) {
                o->n = got;
                nown++;
            }
        }
        model_check(&m, &p, &sink, op);
    }
    while (nown) {
        nown--;
        brix_kv_pool_release(&p, own[nown].b, own[nown].n);
        model_release(&m, own[nown].b, own[nown].n);
    }
    model_check(&m, &p, &sink, nops);
    /* The run covered the interesting paths. */
    if (getenv("KV_STRESS_VERBOSE"))
        printf("seed %llu: %llu evictions, %zu hits, %zu rejected registrations\n",
               (unsigned long long)seed0, (unsigned long long)m.evictions, hits, rejected);
    if (m.evictions < 100 || hits < 500 || rejected < 100)
        fail_msg("seed %llu: only %llu evictions, %zu hits, %zu rejected registrations",
                 (unsigned long long)seed0, (unsigned long long)m.evictions, hits, rejected);
    assert_int_equal(p.nfree, M_BLOCKS - 1);
    assert_usage(&p, 0.0);
    brix_kv_pool_free(&p);
}

static void test_stress_vs_model(void **state)
{
    (void)state;
    run_stress(1, 10000, false);
    run_stress(2, 10000, false);
    run_stress(3, 10000, true);
}

/* A copy of kv_cache.c's slot mixer (white box), to build colliding hashes. */
static uint32_t home_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/*
 * The table's backward-shift deletion, exercised directly: many hashes whose
 * home slots are the last two and the first slot of the table (so probe runs
 * wrap around), evicted in an order that leaves holes in the middle of the
 * runs; every survivor must still be found and every victim must miss.
 */
static void test_table_collisions(void **state)
{
    (void)state;
    enum { NB = 64 };
    brix_kv_pool_t p;
    sink_rec_t sink;
    pool_init(&p, NB, 1, true);
    attach_sink(&p, &sink);
    uint32_t mask = p.table_mask;
    assert_true(mask + 1 >= 2 * NB);
    uint64_t hs[NB];
    int nh = 0;
    for (uint64_t h = 1; nh < NB; h++) {
        uint32_t home = home_mix(h) & mask;
        if (home == mask || home == mask - 1 || home == 0)
            hs[nh++] = h;
    }
    uint32_t b[NB];
    assert_true(brix_kv_pool_alloc(&p, NB, b));
    for (int i = 0; i < NB; i++)
        assert_true(brix_kv_pool_cache_block(&p, b[i], hs[i]));
    assert_int_equal(p.ncached, NB);
    for (int i = 0; i < NB; i++)
        assert_int_equal(brix_kv_pool_count_cached(&p, &hs[i], 1), 1);
    /* Release in an interleaved order so evictions hit every other entry. */
    for (int i = 0; i < NB; i += 2)
        brix_kv_pool_release(&p, &b[i], 1);
    for (int i = 1; i < NB; i += 2)
        brix_kv_pool_release(&p, &b[i], 1);
    uint32_t x[NB];
    for (int k = 0; k < NB; k++) {
        assert_true(brix_kv_pool_alloc(&p, 1, &x[k]));
        int gone = k < NB / 2 ? 2 * k : 2 * (k - NB / 2) + 1;
        assert_int_equal(sink.removed[k], hs[gone]);
        for (int i = 0; i < NB; i++) {
            bool evicted = (i % 2 == 0) ? (i / 2 <= k) : (k >= NB / 2 && (i - 1) / 2 <= k - NB / 2);
            if (brix_kv_pool_count_cached(&p, &hs[i], 1) != (evicted ? 0u : 1u))
                fail_msg("after %d evictions: hash %d (home %u) %s", k + 1, i,
                         home_mix(hs[i]) & mask, evicted ? "still found" : "lost");
        }
        assert_int_equal(p.ncached, (uint32_t)(NB - k - 1));
    }
    brix_kv_pool_release(&p, x, NB);
    brix_kv_pool_free(&p);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_errors, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_release_counts, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_null_block, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_release_order_lru, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_shared_block_refcount, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cache_and_acquire_longest_leading_run, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_hash_not_registered, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_prefix_caching_disabled, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_eviction_order_and_events, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_report_stored, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_block_hash_chaining, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_stress_vs_model, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_table_collisions, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
