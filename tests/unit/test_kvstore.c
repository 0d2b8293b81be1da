/*
 * kvcache/store: size classes (a 2 MiB value fills its slot exactly, memory
 * per payload byte <= 1.05), the index (namespaces never collide, put-if-
 * absent), the slot allocator (slabs move between classes), eviction order
 * (LRU in prefix and request order, S3-FIFO keeping re-read objects),
 * watermarks, and leases and pins that block eviction until they end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvcache/store.h"
#include "leak_check.h"

#define MiB (1024ull * 1024)

static brix_kvs_cfg_t cfg_default(uint64_t capacity, uint64_t max_value)
{
    brix_kvs_cfg_t c = {
        .capacity = capacity,
        .max_value = max_value,
        .high_watermark = 1.0,
        .low_watermark = 1.0,
        .policy = BRIX_KVS_LRU,
        .order = BRIX_KVS_ORDER_PREFIX,
        .lease_ms = 5000,
        .max_leases_per_owner = 1000,
        .max_pin_ms = 3600000,
        .max_pinned_fraction = 0.5,
        .no_hugepages = true,
    };
    return c;
}

static brix_kvs_t *open_store(const brix_kvs_cfg_t *c)
{
    brix_kvs_t *s = NULL;
    char err[256];
    int rc = brix_kvs_open(c, &s, err, sizeof err);
    if (rc)
        fail_msg("open: %s", err);
    return s;
}

static void mkkey(uint8_t k[16], uint64_t id)
{
    memset(k, 0, 16);
    memcpy(k, &id, sizeof id);
}

/* Puts a batch of keys ids[0..n) with values of len bytes, filled with the
 * key's low byte; statuses into st. */
static void put_batch(brix_kvs_t *s, uint32_t ns, const uint64_t *ids, size_t n, uint64_t len,
                      uint64_t now, uint16_t *st)
{
    brix_kvs_resv_t r[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++) {
        uint8_t k[16];
        mkkey(k, ids[i]);
        st[i] = brix_kvs_reserve(s, ns, k, len, now, &r[i]);
        if (st[i] == BRIXKV_ST_OK)
            memset(r[i].ptr, (int)(ids[i] & 0xff), len);
    }
    brix_kvs_commit(s, ns, r, st, n, now);
}

static uint16_t put1(brix_kvs_t *s, uint32_t ns, uint64_t id, uint64_t len)
{
    uint16_t st;
    put_batch(s, ns, &id, 1, len, 0, &st);
    return st;
}

static bool has(brix_kvs_t *s, uint32_t ns, uint64_t id)
{
    uint8_t k[16];
    mkkey(k, id);
    return brix_kvs_find(s, ns, k) != NULL;
}

static void test_classes(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(64 * MiB, 0);
    brix_kvs_t *s = open_store(&c);
    /* 64 MiB of capacity: the automatic largest class is an eighth of it */
    assert_int_equal(brix_kvs_max_value(s), 8 * MiB);
    assert_int_equal(brix_kvs_class_size(s, 0), 4096);
    assert_int_equal(brix_kvs_class_size(s, (size_t)brix_kvs_class_of(s, 1)), 4096);
    assert_int_equal(brix_kvs_class_size(s, (size_t)brix_kvs_class_of(s, 4097)), 5120);
    assert_int_equal(brix_kvs_class_size(s, (size_t)brix_kvs_class_of(s, 2 * MiB)), 2 * MiB);
    assert_int_equal(brix_kvs_class_size(s, (size_t)brix_kvs_class_of(s, 2 * MiB + 1)),
                     2 * MiB + 512 * 1024);
    assert_int_equal(brix_kvs_class_of(s, 8 * MiB + 1), -1);
    /* classes ascend, 4 per power of two */
    for (size_t i = 1; i < brix_kvs_nclasses(s); i++)
        assert_true(brix_kvs_class_size(s, i) > brix_kvs_class_size(s, i - 1));
    assert_int_equal(brix_kvs_nclasses(s), 4 * 11 + 1);
    assert_int_equal(put1(s, 1, 1, 8 * MiB + 1), BRIXKV_ST_TOO_LARGE);
    assert_int_equal(put1(s, 1, 1, 0), BRIXKV_ST_BAD_REQUEST);
    brix_kvs_close(s);

    /* an explicit max value: its power of two is the largest class */
    c = cfg_default(64 * MiB, 3 * MiB);
    s = open_store(&c);
    assert_int_equal(brix_kvs_max_value(s), 3 * MiB);
    assert_int_equal(brix_kvs_slab_bytes(s), 4 * MiB);
    assert_int_equal(put1(s, 1, 1, 3 * MiB + 1), BRIXKV_ST_TOO_LARGE);
    assert_int_equal(put1(s, 1, 1, 3 * MiB), BRIXKV_ST_OK);
    brix_kvs_close(s);

    char err[256];
    c = cfg_default(4 * MiB, 4 * MiB);
    s = NULL;
    assert_int_equal(brix_kvs_open(&c, &s, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "too small"));
}

static void test_index_and_put_if_absent(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(64 * MiB, 0);
    brix_kvs_t *s = open_store(&c);
    assert_int_equal(put1(s, 1, 42, 10000), BRIXKV_ST_OK);
    /* the same key in another namespace is another object */
    assert_true(has(s, 1, 42));
    assert_false(has(s, 2, 42));
    assert_int_equal(put1(s, 2, 42, 5000), BRIXKV_ST_OK);
    uint8_t k[16];
    mkkey(k, 42);
    brix_kvs_obj_t *a = brix_kvs_find(s, 1, k), *b = brix_kvs_find(s, 2, k);
    assert_true(a != b);
    assert_int_equal(brix_kvs_obj_len(a), 10000);
    assert_int_equal(brix_kvs_obj_len(b), 5000);
    /* immutable: a second put is EXISTS and keeps the first value */
    brix_kvs_resv_t r;
    assert_int_equal(brix_kvs_reserve(s, 1, k, 777, 0, &r), BRIXKV_ST_EXISTS);
    assert_null(r.ptr);
    assert_int_equal(brix_kvs_obj_len(brix_kvs_find(s, 1, k)), 10000);
    const uint8_t *d = brix_kvs_obj_data(s, a);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(d[i], 42);
    /* two reservations of one key (two connections): the later commit is
     * EXISTS and its slot is given back */
    brix_kvs_resv_t r1, r2;
    uint8_t k7[16];
    mkkey(k7, 7);
    assert_int_equal(brix_kvs_reserve(s, 1, k7, 4096, 0, &r1), BRIXKV_ST_OK);
    assert_int_equal(brix_kvs_reserve(s, 1, k7, 4096, 0, &r2), BRIXKV_ST_OK);
    uint16_t st1 = BRIXKV_ST_OK, st2 = BRIXKV_ST_OK;
    brix_kvs_commit(s, 1, &r1, &st1, 1, 0);
    brix_kvs_commit(s, 1, &r2, &st2, 1, 0);
    assert_int_equal(st1, BRIXKV_ST_OK);
    assert_int_equal(st2, BRIXKV_ST_EXISTS);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.objects, 3);
    assert_int_equal(st.reserved_bytes, 0);
    assert_int_equal(st.put_exists, 1); /* an EXISTS from reserve counts at commit only */
    /* delete, and many objects through index growth */
    assert_int_equal(brix_kvs_delete(s, 1, k, 0), BRIXKV_ST_OK);
    assert_int_equal(brix_kvs_delete(s, 1, k, 0), BRIXKV_ST_NOT_FOUND);
    assert_false(has(s, 1, 42));
    assert_true(has(s, 2, 42));
    for (uint64_t i = 1000; i < 4000; i++)
        assert_int_equal(put1(s, 3, i, 4096), BRIXKV_ST_OK);
    for (uint64_t i = 1000; i < 4000; i++)
        assert_true(has(s, 3, i));
    brix_kvs_close(s);
}

static void test_put_exists_counted_once(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(64 * MiB, 0);
    brix_kvs_t *s = open_store(&c);
    assert_int_equal(put1(s, 1, 1, 4096), BRIXKV_ST_OK);
    assert_int_equal(put1(s, 1, 1, 4096), BRIXKV_ST_EXISTS);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.puts, 1);
    assert_int_equal(st.put_exists, 1);
    brix_kvs_close(s);
}

/* 2 MiB values: slot = value, so accounted bytes per payload byte is 1. */
static void test_accounting(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(64 * MiB, 0);
    brix_kvs_t *s = open_store(&c);
    size_t n = 64 / 2;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.objects, n);
    assert_int_equal(st.payload_bytes, n * 2 * MiB);
    assert_true((double)st.used_bytes / (double)st.payload_bytes <= 1.05);
    assert_int_equal(st.used_bytes, st.capacity_bytes); /* full, nothing lost to rounding */
    /* the arena beyond the slabs is the generation words, rounded to 2 MiB */
    assert_true(brix_kvs_arena_bytes(s) - st.capacity_bytes <= 2 * MiB);
    assert_int_equal(st.evictions, 0);
    brix_kvs_close(s);
}

/* Full arena of one class; another class takes a whole slab (evicting the
 * least recently used slab), and an emptied slab returns to the pool. */
static void test_slab_reassign(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(32 * MiB, 4 * MiB); /* 8 slabs of 4 MiB */
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 16; i++) /* 2 MiB values, 2 per slab */
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.slabs_free, 0);
    /* touch all but 0 and 1 (the first slab) */
    for (uint64_t i = 2; i < 16; i++) {
        uint8_t k[16];
        brix_kvs_obj_t *o;
        mkkey(k, i);
        brix_kvs_get(s, 1, (const uint8_t(*)[16])k, 1, &o);
        brix_kvs_unref(s, o);
    }
    assert_int_equal(put1(s, 1, 100, 4096), BRIXKV_ST_OK);
    assert_false(has(s, 1, 0));
    assert_false(has(s, 1, 1));
    for (uint64_t i = 2; i < 16; i++)
        assert_true(has(s, 1, i));
    assert_true(has(s, 1, 100));
    /* more small values share that slab */
    for (uint64_t i = 101; i < 200; i++)
        assert_int_equal(put1(s, 1, i, 4096), BRIXKV_ST_OK);
    assert_true(has(s, 1, 2));
    /* deleting every small object gives the slab back */
    for (uint64_t i = 100; i < 200; i++) {
        uint8_t k[16];
        mkkey(k, i);
        assert_int_equal(brix_kvs_delete(s, 1, k, 0), BRIXKV_ST_OK);
    }
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.slabs_free, 1);
    brix_kvs_close(s);
}

/* A class that outgrows its slabs takes a colder class's whole slab rather
 * than evicting its own newer objects. */
static void test_slab_balance(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(32 * MiB, 4 * MiB); /* 8 slabs of 4 MiB */
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 16; i++) /* 2 MiB values fill every slab */
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    for (uint64_t i = 1000; i < 1000 + 2048; i++) /* two slabs' worth of 4 KiB */
        assert_int_equal(put1(s, 1, i, 4096), BRIXKV_ST_OK);
    for (uint64_t i = 1000; i < 1000 + 2048; i++)
        assert_true(has(s, 1, i));
    for (uint64_t i = 0; i < 4; i++) /* the two coldest big slabs went */
        assert_false(has(s, 1, i));
    for (uint64_t i = 4; i < 16; i++)
        assert_true(has(s, 1, i));
    brix_kvs_close(s);
}

/* The generation word of a slot changes when its object goes. */
static void test_generation(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(64 * MiB, 0);
    brix_kvs_t *s = open_store(&c);
    assert_int_equal(put1(s, 1, 5, 4096), BRIXKV_ST_OK);
    uint8_t k[16];
    mkkey(k, 5);
    brix_kvs_obj_t *o = brix_kvs_find(s, 1, k);
    uint32_t off = brix_kvs_obj_gen_off(s, o), gen = brix_kvs_obj_gen(s, o);
    uint32_t word;
    memcpy(&word, brix_kvs_base(s) + off, sizeof word);
    assert_int_equal(word, gen);
    assert_true(off < brix_kvs_obj_offset(s, o));
    assert_int_equal(brix_kvs_delete(s, 1, k, 0), BRIXKV_ST_OK);
    memcpy(&word, brix_kvs_base(s) + off, sizeof word);
    assert_int_not_equal(word, gen);
    /* reused by another key: changed again */
    assert_int_equal(put1(s, 1, 6, 4096), BRIXKV_ST_OK);
    mkkey(k, 6);
    o = brix_kvs_find(s, 1, k);
    assert_int_equal(brix_kvs_obj_gen_off(s, o), off);
    assert_true(brix_kvs_obj_gen(s, o) != gen && brix_kvs_obj_gen(s, o) != word);
    brix_kvs_close(s);
}

/* A chain put as one batch (root first). Prefix order: the leaves go first
 * and the root last. Request order: the root goes first. */
static void run_chain(brix_kvs_order_t order, uint64_t *first_evicted)
{
    brix_kvs_cfg_t c = cfg_default(16 * MiB, 2 * MiB); /* 8 slots of 2 MiB */
    c.order = order;
    brix_kvs_t *s = open_store(&c);
    uint64_t chain[8] = { 10, 11, 12, 13, 14, 15, 16, 17 };
    uint16_t st[8];
    put_batch(s, 1, chain, 8, 2 * MiB, 0, st);
    for (int i = 0; i < 8; i++)
        assert_int_equal(st[i], BRIXKV_ST_OK);
    /* one more evicts exactly one */
    assert_int_equal(put1(s, 1, 99, 2 * MiB), BRIXKV_ST_OK);
    int gone = 0;
    for (int i = 0; i < 8; i++) {
        if (!has(s, 1, chain[i])) {
            *first_evicted = chain[i];
            gone++;
        }
    }
    assert_int_equal(gone, 1);
    brix_kvs_close(s);
}

static void test_eviction_order(void **state)
{
    (void)state;
    uint64_t first = 0;
    run_chain(BRIX_KVS_ORDER_PREFIX, &first);
    assert_int_equal(first, 17); /* the leaf */
    run_chain(BRIX_KVS_ORDER_REQUEST, &first);
    assert_int_equal(first, 10); /* the root */

    /* GET touches in the same order: after a GET of the whole chain in
     * prefix order the leaf is again the oldest */
    brix_kvs_cfg_t c = cfg_default(16 * MiB, 2 * MiB);
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 8; i++) /* put one by one: 0 oldest */
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    uint8_t keys[4][16];
    for (int i = 0; i < 4; i++)
        mkkey(keys[i], (uint64_t)i);
    brix_kvs_obj_t *objs[4];
    assert_int_equal(brix_kvs_get(s, 1, (const uint8_t(*)[16])keys, 4, objs), 4);
    for (int i = 0; i < 4; i++)
        brix_kvs_unref(s, objs[i]);
    /* now 4,5,6,7 are the oldest; then 3,2,1,0 (0 the most recent) */
    for (uint64_t i = 100; i < 105; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    for (uint64_t i = 4; i < 8; i++)
        assert_false(has(s, 1, i));
    assert_false(has(s, 1, 3));
    assert_true(has(s, 1, 0) && has(s, 1, 1) && has(s, 1, 2));
    /* a PUT of a stored key refreshes it (LMCache #460): 1 outlives 2 */
    assert_int_equal(put1(s, 1, 1, 2 * MiB), BRIXKV_ST_EXISTS);
    assert_int_equal(put1(s, 1, 200, 2 * MiB), BRIXKV_ST_OK);
    assert_int_equal(put1(s, 1, 201, 2 * MiB), BRIXKV_ST_OK);
    assert_false(has(s, 1, 2));
    assert_true(has(s, 1, 1));
    /* MATCH counts the stored prefix and stops at the first gap */
    uint8_t q[3][16];
    mkkey(q[0], 1);
    mkkey(q[1], 2);
    mkkey(q[2], 200);
    assert_int_equal(brix_kvs_match(s, 1, (const uint8_t(*)[16])q, 3), 1);
    brix_kvs_close(s);
}

static void test_s3fifo(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(16 * MiB, 2 * MiB);
    c.policy = BRIX_KVS_S3FIFO;
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    /* 0 and 1 are read again; the rest are one-hit wonders */
    for (uint64_t i = 0; i < 2; i++) {
        uint8_t k[16];
        brix_kvs_obj_t *o;
        mkkey(k, i);
        brix_kvs_get(s, 1, (const uint8_t(*)[16])k, 1, &o);
        brix_kvs_unref(s, o);
    }
    for (uint64_t i = 100; i < 106; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    assert_true(has(s, 1, 0));
    assert_true(has(s, 1, 1));
    for (uint64_t i = 2; i < 8; i++)
        assert_false(has(s, 1, i));
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.evictions, 6);
    brix_kvs_close(s);
}

static void test_watermarks(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(32 * MiB, 2 * MiB); /* 16 slots */
    c.high_watermark = 0.5;
    c.low_watermark = 0.25;
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.used_bytes, 16 * MiB); /* at the high mark, not over */
    assert_int_equal(st.evictions, 0);
    /* the ninth passes it: down to the low mark (4 slots + the new one
     * counted before it is placed) */
    assert_int_equal(put1(s, 1, 8, 2 * MiB), BRIXKV_ST_OK);
    brix_kvs_get_stats(s, &st);
    assert_true(st.used_bytes <= 8 * MiB);
    assert_true(has(s, 1, 8));
    assert_false(has(s, 1, 0)); /* the oldest went */
    assert_true(has(s, 1, 7));
    brix_kvs_close(s);
}

static void test_leases(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(16 * MiB, 2 * MiB); /* 8 slots */
    c.lease_ms = 1000;
    c.max_leases_per_owner = 3;
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    brix_kvs_owner_t ow, other;
    brix_kvs_owner_init(&ow);
    brix_kvs_owner_init(&other);
    uint8_t k[16];
    mkkey(k, 0);
    brix_kvs_obj_t *o0 = brix_kvs_find(s, 1, k);
    uint64_t id0, id;
    assert_int_equal(brix_kvs_lease(s, &ow, o0, 100, &id0), 0);
    /* the oldest object is leased: the next put evicts 1 instead */
    assert_int_equal(put1(s, 1, 50, 2 * MiB), BRIXKV_ST_OK);
    assert_true(has(s, 1, 0));
    assert_false(has(s, 1, 1));
    assert_int_equal(brix_kvs_delete(s, 1, k, 100), BRIXKV_ST_BUSY);
    /* a lease of another owner cannot be released by this one */
    assert_false(brix_kvs_release(s, &other, id0));
    /* the limit per owner */
    mkkey(k, 2);
    assert_int_equal(brix_kvs_lease(s, &ow, brix_kvs_find(s, 1, k), 100, &id), 0);
    assert_int_equal(brix_kvs_lease(s, &ow, brix_kvs_find(s, 1, k), 100, &id), 0);
    assert_int_equal(brix_kvs_lease(s, &ow, brix_kvs_find(s, 1, k), 100, &id), -ENOSPC);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.leases_active, 3);
    /* released explicitly */
    assert_true(brix_kvs_release(s, &ow, id));
    assert_false(brix_kvs_release(s, &ow, id));
    /* expiry: a client that died without releasing does not block forever */
    brix_kvs_tick(s, 1099);
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.leases_active, 2);
    brix_kvs_tick(s, 1100);
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.leases_active, 0);
    assert_int_equal(st.leases_expired, 2);
    mkkey(k, 0);
    assert_int_equal(brix_kvs_delete(s, 1, k, 1200), BRIXKV_ST_OK);
    /* a closed connection drops its leases */
    mkkey(k, 3);
    assert_int_equal(brix_kvs_lease(s, &ow, brix_kvs_find(s, 1, k), 2000, &id), 0);
    assert_int_equal(brix_kvs_delete(s, 1, k, 2000), BRIXKV_ST_BUSY);
    brix_kvs_owner_drop(s, &ow);
    assert_int_equal(ow.nleases, 0);
    assert_int_equal(brix_kvs_delete(s, 1, k, 2000), BRIXKV_ST_OK);
    /* every object leased: a put finds no room */
    brix_kvs_close(s);

    c = cfg_default(8 * MiB, 2 * MiB); /* 4 slots */
    s = open_store(&c);
    brix_kvs_owner_init(&ow);
    for (uint64_t i = 0; i < 4; i++) {
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
        mkkey(k, i);
        assert_int_equal(brix_kvs_lease(s, &ow, brix_kvs_find(s, 1, k), 0, &id), 0);
    }
    assert_int_equal(put1(s, 1, 9, 2 * MiB), BRIXKV_ST_NO_SPACE);
    brix_kvs_tick(s, 6000);
    assert_int_equal(put1(s, 1, 9, 2 * MiB), BRIXKV_ST_OK);
    brix_kvs_close(s);
}

static void test_pins(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(16 * MiB, 2 * MiB); /* 8 slots */
    c.max_pin_ms = 60000;
    c.max_pinned_fraction = 0.25; /* 2 slots */
    brix_kvs_t *s = open_store(&c);
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    uint8_t k[16];
    mkkey(k, 0);
    assert_int_equal(brix_kvs_pin(s, 1, k, 120000, 0), BRIXKV_ST_BAD_REQUEST);
    assert_int_equal(brix_kvs_pin(s, 1, k, 10000, 0), BRIXKV_ST_OK);
    mkkey(k, 1);
    assert_int_equal(brix_kvs_pin(s, 1, k, 10000, 0), BRIXKV_ST_OK);
    mkkey(k, 2);
    assert_int_equal(brix_kvs_pin(s, 1, k, 10000, 0), BRIXKV_ST_NO_SPACE); /* over the budget */
    mkkey(k, 99);
    assert_int_equal(brix_kvs_pin(s, 1, k, 10000, 0), BRIXKV_ST_NOT_FOUND);
    for (uint64_t i = 100; i < 106; i++) /* replaces 2..7 */
        assert_int_equal(put1(s, 1, i, 2 * MiB), BRIXKV_ST_OK);
    assert_true(has(s, 1, 0) && has(s, 1, 1));
    assert_false(has(s, 1, 2));
    mkkey(k, 0);
    assert_int_equal(brix_kvs_delete(s, 1, k, 5000), BRIXKV_ST_BUSY);
    /* unpin 1 by ttl 0; 0's pin expires at 10 s */
    mkkey(k, 1);
    assert_int_equal(brix_kvs_pin(s, 1, k, 0, 5000), BRIXKV_ST_OK);
    brix_kvs_tick(s, 10000);
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.pins_active, 0);
    assert_int_equal(st.pinned_bytes, 0);
    /* both back in the queue as recent: the 100.. ones go first */
    assert_int_equal(put1(s, 1, 200, 2 * MiB), BRIXKV_ST_OK);
    assert_true(has(s, 1, 0) && has(s, 1, 1));
    assert_false(has(s, 1, 100));
    /* every object pinned and the rest leased: NO_SPACE, not a wrong eviction */
    brix_kvs_close(s);
}

/* The memfd handed to same-host clients is sealed: whoever holds it (even
 * reopened read-write through /proc) cannot resize it (the server would take
 * SIGBUS), map it writable, write it or punch holes (rewriting another
 * namespace's values); the server's own mapping still writes. */
static void test_arena_sealed(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(8 * MiB, 64 * 1024);
    brix_kvs_t *s = open_store(&c);
    int fd = brix_kvs_fd(s);
    assert_true(fd >= 0);
    int seals = fcntl(fd, F_GET_SEALS);
    assert_true(seals & F_SEAL_SHRINK);
    assert_true(seals & F_SEAL_GROW);
    assert_true(seals & F_SEAL_FUTURE_WRITE);
    assert_true(seals & F_SEAL_SEAL);
    uint64_t n = brix_kvs_arena_bytes(s);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int fds[2] = { fd, open(path, O_RDWR | O_CLOEXEC) };
    assert_true(fds[1] >= 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ftruncate(fds[i], 0), -1);
        assert_int_equal(errno, EPERM);
        assert_int_equal(ftruncate(fds[i], (off_t)n * 2), -1);
        void *w = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
        assert_true(w == MAP_FAILED);
        assert_int_equal(errno, EPERM);
        assert_int_equal(pwrite(fds[i], "EVIL", 4, (off_t)n / 2), -1);
        assert_int_equal(fallocate(fds[i], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)n),
                         -1);
        assert_int_equal(fcntl(fds[i], F_ADD_SEALS, 0), -1); /* F_SEAL_SEAL */
    }
    close(fds[1]);
    /* a read-only mapping is what clients get; the server still stores */
    void *r = mmap(NULL, (size_t)n, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(r != MAP_FAILED);
    uint64_t id = 7;
    uint16_t st[1];
    put_batch(s, 1, &id, 1, 4096, 1, st);
    assert_int_equal(st[0], BRIXKV_ST_OK);
    uint8_t k[16];
    mkkey(k, 7);
    brix_kvs_obj_t *o = brix_kvs_find(s, 1, k);
    assert_non_null(o);
    assert_memory_equal((uint8_t *)r + brix_kvs_obj_offset(s, o), brix_kvs_obj_data(s, o), 4096);
    munmap(r, (size_t)n);
    brix_kvs_close(s);
}

/* PUTs in flight hold at most max_reserved bytes of slots: past it a
 * reservation is NO_SPACE at once, and nothing stored is evicted for it
 * (a client announcing values it never sends cannot push the cache out). */
static void test_reserve_cap(void **state)
{
    (void)state;
    brix_kvs_cfg_t c = cfg_default(8 * MiB, 1 * MiB); /* 8 slabs of 1 MiB */
    c.max_reserved = 2 * MiB;
    brix_kvs_t *s = open_store(&c);
    for (uint64_t id = 1; id <= 6; id++)
        assert_int_equal(put1(s, 1, id, MiB), BRIXKV_ST_OK);
    brix_kvs_resv_t r[3];
    uint8_t k[16];
    for (int i = 0; i < 3; i++) {
        mkkey(k, 100 + (uint64_t)i);
        uint16_t st = brix_kvs_reserve(s, 1, k, MiB, 10, &r[i]);
        assert_int_equal(st, i < 2 ? BRIXKV_ST_OK : BRIXKV_ST_NO_SPACE);
    }
    for (uint64_t id = 1; id <= 6; id++)
        assert_true(has(s, 1, id)); /* the two free slabs went, nothing else */
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s, &st);
    assert_int_equal(st.evictions, 0);
    brix_kvs_unreserve(s, &r[0]);
    brix_kvs_unreserve(s, &r[1]);
    brix_kvs_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_classes, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_index_and_put_if_absent, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_put_exists_counted_once, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_accounting, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_slab_reassign, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_slab_balance, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_generation, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_eviction_order, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_s3fifo, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_watermarks, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_leases, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_pins, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_arena_sealed, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_reserve_cap, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
