/*
 * Unit tests for the gateway's shared prefix index (gateway/prefix_index.h):
 * add and leading-run match per pod, the routed and cached sets selected by
 * the precise pod set, BlockRemoved and forget_pod, LRU eviction within
 * max_entries, pod ids beyond BRIX_PREFIX_MAX_PODS, concurrent use from four
 * threads (run under ASan/TSan-free builds for crashes and races that corrupt
 * the tables), and leaks.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "gateway/prefix_index.h"

#include "leak_check.h"

/* Well-spread 64-bit hashes (splitmix64), as the gateway's xxh64 chain gives. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void chain(uint64_t seed, uint64_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = mix(seed * 1000003ull + i);
}

/* match for one pod with one precise set (NULL = routed everywhere) */
static uint32_t match1(brix_prefix_index_t *ix, const uint64_t *h, size_t n, uint32_t pod,
                       const brix_podset_t *precise)
{
    uint32_t m = 99;
    brix_prefix_index_match(ix, h, n, &pod, 1, precise, &m);
    return m;
}

static void test_add_and_match_leading_run(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(4096);
    assert_non_null(ix);
    uint64_t h[8];
    chain(1, h, 8);
    assert_int_equal(brix_prefix_index_entries(ix), 0);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 5, 3);
    assert_int_equal(brix_prefix_index_entries(ix), 5);
    uint32_t pods[3] = { 3, 5, 200 }, m[3];
    brix_prefix_index_match(ix, h, 8, pods, 3, NULL, m);
    assert_int_equal(m[0], 5);
    assert_int_equal(m[1], 0);
    assert_int_equal(m[2], 0);
    /* per pod: pod 5 holds blocks 0, 1 and 3 — its run stops at the gap */
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 2, 5);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h + 3, 1, 5);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 8, 200);
    brix_prefix_index_match(ix, h, 8, pods, 3, NULL, m);
    assert_int_equal(m[0], 5);
    assert_int_equal(m[1], 2);
    assert_int_equal(m[2], 8);
    assert_int_equal(brix_prefix_index_entries(ix), 8); /* one entry per block */
    /* a prompt whose first block differs matches nothing */
    uint64_t other[8];
    memcpy(other, h, sizeof h);
    other[0] = mix(777);
    brix_prefix_index_match(ix, other, 8, pods, 3, NULL, m);
    assert_int_equal(m[0] + m[1] + m[2], 0);
    /* a shorter prompt: at most its length */
    brix_prefix_index_match(ix, h, 3, pods, 3, NULL, m);
    assert_int_equal(m[0], 3);
    assert_int_equal(m[2], 3);
    /* nothing asked */
    brix_prefix_index_match(ix, h, 0, pods, 3, NULL, m);
    assert_int_equal(m[0] + m[1] + m[2], 0);
    /* adding twice does not duplicate */
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 5, 3);
    assert_int_equal(brix_prefix_index_entries(ix), 8);
    /* the same pod position in a bigger candidate list */
    uint32_t many[70], mm[70];
    for (uint32_t i = 0; i < 70; i++)
        many[i] = i + 10;
    many[69] = 3;
    many[64] = 5;
    brix_prefix_index_match(ix, h, 8, many, 70, NULL, mm);
    assert_int_equal(mm[69], 5);
    assert_int_equal(mm[64], 2);
    assert_int_equal(mm[0], 0);
    brix_prefix_index_free(ix);
}

static void test_routed_vs_cached(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(4096);
    uint64_t h[6];
    chain(2, h, 6);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, h, 4, 1);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 2, 1);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 6, 2);
    brix_podset_t precise;
    memset(&precise, 0, sizeof precise);
    brix_podset_add(&precise, 1);
    /* pod 1 precise: its cached set; pod 2 not: its routed set */
    uint32_t pods[2] = { 1, 2 }, m[2];
    brix_prefix_index_match(ix, h, 6, pods, 2, &precise, m);
    assert_int_equal(m[0], 4);
    assert_int_equal(m[1], 6);
    /* without precise pods: routed only */
    brix_prefix_index_match(ix, h, 6, pods, 2, NULL, m);
    assert_int_equal(m[0], 2);
    assert_int_equal(m[1], 6);
    /* pod 2 precise but nothing cached there */
    brix_podset_add(&precise, 2);
    brix_prefix_index_match(ix, h, 6, pods, 2, &precise, m);
    assert_int_equal(m[0], 4);
    assert_int_equal(m[1], 0);
    assert_true(brix_podset_has(&precise, 2));
    assert_false(brix_podset_has(&precise, 3));
    brix_prefix_index_free(ix);
}

static void test_remove(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(4096);
    uint64_t h[6];
    chain(3, h, 6);
    brix_podset_t precise;
    memset(&precise, 0, sizeof precise);
    brix_podset_add(&precise, 1);
    brix_podset_add(&precise, 2);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, h, 6, 1);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, h, 6, 2);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 3, 1);
    assert_int_equal(brix_prefix_index_entries(ix), 6);
    /* BlockRemoved of block 2 on pod 1: its run ends at 2; pod 2 unaffected */
    brix_prefix_index_remove(ix, h[2], 1);
    assert_int_equal(match1(ix, h, 6, 1, &precise), 2);
    assert_int_equal(match1(ix, h, 6, 2, &precise), 6);
    /* the routed bit of block 2 stays */
    assert_int_equal(match1(ix, h, 6, 1, NULL), 3);
    assert_int_equal(brix_prefix_index_entries(ix), 6);
    /* block 5: cached on pods 1 and 2 only; removing both drops the entry */
    brix_prefix_index_remove(ix, h[5], 1);
    assert_int_equal(brix_prefix_index_entries(ix), 6);
    brix_prefix_index_remove(ix, h[5], 2);
    assert_int_equal(brix_prefix_index_entries(ix), 5);
    assert_int_equal(match1(ix, h, 6, 2, &precise), 5);
    /* unknown hash, pod that does not hold it, repeated remove: no change */
    brix_prefix_index_remove(ix, mix(12345), 1);
    brix_prefix_index_remove(ix, h[0], 7);
    brix_prefix_index_remove(ix, h[5], 2);
    assert_int_equal(brix_prefix_index_entries(ix), 5);
    assert_int_equal(match1(ix, h, 6, 2, &precise), 5);
    /* re-stored after removal: matched again */
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, h + 2, 1, 1);
    assert_int_equal(match1(ix, h, 6, 1, &precise), 5);
    /* remove with the table crowded: the backward-shift delete keeps every
     * other entry findable */
    uint64_t many[600];
    chain(99, many, 600);
    for (size_t i = 0; i < 600; i++)
        brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, many + i, 1, 4);
    for (size_t i = 0; i < 600; i += 2)
        brix_prefix_index_remove(ix, many[i], 4);
    brix_podset_add(&precise, 4);
    for (size_t i = 0; i < 600; i++)
        assert_int_equal(match1(ix, many + i, 1, 4, &precise), i % 2 ? 1 : 0);
    brix_prefix_index_free(ix);
}

static void test_forget_pod(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(4096);
    uint64_t a[5], b[5];
    chain(4, a, 5);
    chain(5, b, 5);
    brix_podset_t precise;
    memset(&precise, 0, sizeof precise);
    brix_podset_add(&precise, 9);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, a, 5, 9);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, a, 3, 9);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, b, 5, 9);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, b, 2, 70);
    assert_int_equal(brix_prefix_index_entries(ix), 10);
    /* engine restart: its cached blocks go, its routed history stays */
    brix_prefix_index_forget_pod(ix, BRIX_PREFIX_CACHED, 9);
    assert_int_equal(match1(ix, a, 5, 9, &precise), 0);
    assert_int_equal(match1(ix, b, 5, 9, &precise), 0);
    assert_int_equal(match1(ix, a, 5, 9, NULL), 3);
    brix_podset_add(&precise, 70);
    assert_int_equal(match1(ix, b, 5, 70, &precise), 2);
    /* entries left: a[0..2] (routed 9), b[0..1] (cached 70) */
    assert_int_equal(brix_prefix_index_entries(ix), 5);
    brix_prefix_index_forget_pod(ix, BRIX_PREFIX_ROUTED, 9);
    assert_int_equal(brix_prefix_index_entries(ix), 2);
    brix_prefix_index_forget_pod(ix, BRIX_PREFIX_CACHED, 70);
    assert_int_equal(brix_prefix_index_entries(ix), 0);
    /* still usable afterwards */
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, a, 5, 9);
    assert_int_equal(match1(ix, a, 5, 9, &precise), 5);
    brix_prefix_index_free(ix);
}

static void test_lru_bounded(void **state)
{
    (void)state;
    const size_t cap = 2048;
    brix_prefix_index_t *ix = brix_prefix_index_new(cap);
    assert_int_equal(brix_prefix_index_evictions(ix), 0);
    uint64_t h[64];
    size_t added = 0;
    for (uint64_t s = 0; s < 400; s++) {
        chain(1000 + s, h, 64);
        brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 64, (uint32_t)(s % 8));
        added += 64;
        assert_true(brix_prefix_index_entries(ix) <= cap);
    }
    size_t n = brix_prefix_index_entries(ix);
    assert_true(n <= cap);
    assert_true(n > cap / 2); /* the shards fill up, not just one */
    assert_int_equal(brix_prefix_index_evictions(ix), added - n);
    /* the newest prompt is still there in full */
    assert_int_equal(match1(ix, h, 64, 399 % 8, NULL), 64);
    /* memory is bounded by the same configuration */
    brix_prefix_index_t *big = brix_prefix_index_new(cap * 8);
    assert_true(brix_prefix_index_bytes(big) > brix_prefix_index_bytes(ix));
    assert_true(brix_prefix_index_bytes(ix) >= cap * 16); /* at least hash + sets */
    brix_prefix_index_free(big);
    brix_prefix_index_free(ix);
}

/* All keys of one shard (top 6 bits) so its LRU order is observable. */
static void test_lru_order(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(1024); /* 16 per shard */
    uint64_t k[40];
    for (int i = 0; i < 40; i++)
        k[i] = (5ull << 58) | (mix((uint64_t)i) >> 6);
    for (int i = 0; i < 16; i++)
        brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, &k[i], 1, 1);
    assert_int_equal(brix_prefix_index_entries(ix), 16);
    assert_int_equal(brix_prefix_index_evictions(ix), 0);
    /* touch k0 (a lookup counts as use), then add one more: k1 goes */
    assert_int_equal(match1(ix, &k[0], 1, 1, NULL), 1);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, &k[16], 1, 1);
    assert_int_equal(brix_prefix_index_entries(ix), 16);
    assert_int_equal(brix_prefix_index_evictions(ix), 1);
    assert_int_equal(match1(ix, &k[1], 1, 1, NULL), 0);
    assert_int_equal(match1(ix, &k[0], 1, 1, NULL), 1);
    assert_int_equal(match1(ix, &k[16], 1, 1, NULL), 1);
    /* an add of an existing key refreshes it too: k2 stays, k3 goes */
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, &k[2], 1, 4);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, &k[17], 1, 1);
    assert_int_equal(match1(ix, &k[3], 1, 1, NULL), 0);
    assert_int_equal(match1(ix, &k[2], 1, 1, NULL), 1);
    /* keep going: still 16 */
    for (int i = 18; i < 40; i++)
        brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, &k[i], 1, 1);
    assert_int_equal(brix_prefix_index_entries(ix), 16);
    assert_int_equal(brix_prefix_index_evictions(ix), 24);
    for (int i = 24; i < 40; i++)
        assert_int_equal(match1(ix, &k[i], 1, 1, NULL), 1);
    /* removing frees a slot: the next add evicts nothing */
    brix_prefix_index_forget_pod(ix, BRIX_PREFIX_ROUTED, 1);
    assert_int_equal(brix_prefix_index_entries(ix), 0);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, &k[0], 1, 1);
    assert_int_equal(brix_prefix_index_evictions(ix), 24);
    brix_prefix_index_free(ix);
}

static void test_pod_ids_out_of_range(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(4096);
    uint64_t h[4];
    chain(6, h, 4);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 4, BRIX_PREFIX_MAX_PODS);
    brix_prefix_index_add(ix, BRIX_PREFIX_CACHED, h, 4, BRIX_PREFIX_MAX_PODS + 77);
    assert_int_equal(brix_prefix_index_entries(ix), 0);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 4, BRIX_PREFIX_MAX_PODS - 1);
    assert_int_equal(brix_prefix_index_entries(ix), 4);
    uint32_t pods[3] = { BRIX_PREFIX_MAX_PODS, BRIX_PREFIX_MAX_PODS - 1, 0 }, m[3];
    brix_prefix_index_match(ix, h, 4, pods, 3, NULL, m);
    assert_int_equal(m[0], 0);
    assert_int_equal(m[1], 4);
    assert_int_equal(m[2], 0);
    brix_prefix_index_remove(ix, h[0], BRIX_PREFIX_MAX_PODS + 1);
    brix_prefix_index_forget_pod(ix, BRIX_PREFIX_ROUTED, 100000);
    assert_int_equal(brix_prefix_index_entries(ix), 4);
    brix_podset_t s;
    memset(&s, 0, sizeof s);
    brix_podset_add(&s, BRIX_PREFIX_MAX_PODS);
    brix_podset_add(&s, 1u << 30);
    for (int w = 0; w < BRIX_PREFIX_WORDS; w++)
        assert_true(s.w[w] == 0);
    assert_false(brix_podset_has(&s, BRIX_PREFIX_MAX_PODS));
    brix_podset_add(&s, BRIX_PREFIX_MAX_PODS - 1);
    assert_true(brix_podset_has(&s, BRIX_PREFIX_MAX_PODS - 1));
    brix_prefix_index_free(ix);
}

/* ------------------------------------------------------------ threads -- */

typedef struct worker {
    brix_prefix_index_t *ix;
    uint32_t pod;
    int iters;
    uint64_t matched;
} worker_t;

static void *worker(void *arg)
{
    worker_t *w = arg;
    uint64_t h[32];
    uint32_t pods[4] = { 0, 1, 2, 3 }, m[4];
    brix_podset_t precise;
    memset(&precise, 0, sizeof precise);
    brix_podset_add(&precise, 1);
    brix_podset_add(&precise, 3);
    uint64_t rnd = w->pod + 1;
    for (int i = 0; i < w->iters; i++) {
        rnd = mix(rnd);
        chain(rnd % 64, h, 32); /* 64 shared prompts: contention on the same entries */
        switch (rnd >> 60) {
        case 0:
            brix_prefix_index_remove(w->ix, h[rnd % 32], w->pod);
            break;
        case 1:
            if (i % 500 == 0)
                brix_prefix_index_forget_pod(w->ix, BRIX_PREFIX_CACHED, w->pod);
            break;
        case 2:
        case 3:
        case 4:
        case 5:
            brix_prefix_index_add(w->ix, (rnd >> 59) & 1 ? BRIX_PREFIX_CACHED : BRIX_PREFIX_ROUTED,
                                  h, 32, w->pod);
            break;
        default:
            brix_prefix_index_match(w->ix, h, 32, pods, 4, &precise, m);
            for (int p = 0; p < 4; p++)
                if (m[p] > 32)
                    return (void *)1;
                else
                    w->matched += m[p];
            break;
        }
        if (i % 1000 == 0 && brix_prefix_index_entries(w->ix) > 1024)
            return (void *)2;
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    brix_prefix_index_t *ix = brix_prefix_index_new(1024); /* small: evictions under load */
    pthread_t t[4];
    worker_t w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_t){ .ix = ix, .pod = (uint32_t)i, .iters = 20000 };
        assert_int_equal(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    uint64_t total = 0;
    for (int i = 0; i < 4; i++) {
        void *rv;
        pthread_join(t[i], &rv);
        assert_null(rv);
        total += w[i].matched;
    }
    assert_true(total > 0);
    assert_true(brix_prefix_index_entries(ix) <= 1024);
    assert_true(brix_prefix_index_evictions(ix) > 0);
    /* the tables are still consistent: every pod can be forgotten, leaving nothing */
    for (uint32_t p = 0; p < 4; p++) {
        brix_prefix_index_forget_pod(ix, BRIX_PREFIX_ROUTED, p);
        brix_prefix_index_forget_pod(ix, BRIX_PREFIX_CACHED, p);
    }
    assert_int_equal(brix_prefix_index_entries(ix), 0);
    /* and refilled */
    uint64_t h[32];
    chain(1, h, 32);
    brix_prefix_index_add(ix, BRIX_PREFIX_ROUTED, h, 32, 2);
    assert_int_equal(match1(ix, h, 32, 2, NULL), 32);
    brix_prefix_index_free(ix);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_add_and_match_leading_run, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_routed_vs_cached, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_remove, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_forget_pod, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_lru_bounded, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_lru_order, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_pod_ids_out_of_range, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_threads, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
