/*
 * Unit tests for gateway/kv_watch.h: the precise index's feed, driven over
 * in-process ZMQ sockets that play the engine (a PUB for live batches, a
 * ROUTER answering replay requests the way vLLM does). Each batch stores one
 * block chained on the previous one, so "the index matches the first k
 * blocks" says exactly which batches were applied, in order. Covered: the
 * start-up replay (empty and not), in-order batches, a gap repaired by a
 * replay while later batches are held, a second gap found among the held
 * batches (a new replay, the rest held again), duplicates from the replay
 * arriving live, a replay that does not have what was missed, an engine
 * restart seen on the live stream, a reset while a replay is outstanding,
 * block hashes sent as negative integers or bytes, and no leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>
#include <uv.h>
#include <zmq.h>

#include "core/alloc.h"
#include "gateway/fleet.h"
#include "gateway/kv_watch.h"
#include "gateway/prefix_index.h"
#include "gateway/prompt.h"

#define BS     16
#define BLOCKS 64

typedef enum { HASH_UINT, HASH_NEG, HASH_BIN } hash_kind_t;

typedef struct env {
    uv_loop_t loop;
    void *zctx, *pub, *router;
    char pub_ep[64], rep_ep[64];
    brix_prefix_index_t *ix;
    brix_pod_t *pod;
    brix_kvw_t *w;
    uint64_t gw[BLOCKS]; /* the gateway's chain for blocks 0.. */
    uint32_t epoch;      /* engine "process": changes the engine hashes and tokens */
    hash_kind_t hk;
    /* the replay request last received */
    zmq_msg_t ident;
    bool have_req;
    uint64_t req_from;
    int64_t max_msg; /* 0: the default */
} env_t;

#include "leak_check.h"

static void tokens_of(const env_t *e, int blk, uint32_t *t)
{
    for (int i = 0; i < BS; i++)
        t[i] = e->epoch * 100000u + (uint32_t)blk * BS + (uint32_t)i + 1;
}

static void chain(env_t *e)
{
    uint64_t h = brix_prompt_root("m");
    for (int b = 0; b < BLOCKS; b++) {
        uint32_t t[BS];
        tokens_of(e, b, t);
        h = brix_prompt_block_hash(h, t, BS);
        e->gw[b] = h;
    }
}

static void pack_hash(const env_t *e, msgpack_packer *pk, int blk)
{
    uint64_t v = 1000 + e->epoch * 1000 + (uint64_t)blk;
    if (e->hk == HASH_NEG) {
        msgpack_pack_int64(pk, -(int64_t)v);
    } else if (e->hk == HASH_BIN) {
        unsigned char b[32] = { 0 };
        memcpy(b, &v, sizeof v);
        msgpack_pack_bin(pk, sizeof b);
        msgpack_pack_bin_body(pk, b, sizeof b);
    } else {
        msgpack_pack_uint64(pk, v);
    }
}

/* The payload of the batch that stores block `blk` (parent: block blk-1). */
static void batch(const env_t *e, int blk, msgpack_sbuffer *sb)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_double(&pk, 1.0);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 7);
    msgpack_pack_str(&pk, 11);
    msgpack_pack_str_body(&pk, "BlockStored", 11);
    msgpack_pack_array(&pk, 1);
    pack_hash(e, &pk, blk);
    if (blk == 0)
        msgpack_pack_nil(&pk);
    else
        pack_hash(e, &pk, blk - 1);
    msgpack_pack_array(&pk, BS);
    uint32_t t[BS];
    tokens_of(e, blk, t);
    for (int i = 0; i < BS; i++)
        msgpack_pack_uint32(&pk, t[i]);
    msgpack_pack_uint32(&pk, BS);
    msgpack_pack_nil(&pk);
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, "GPU", 3);
    msgpack_pack_nil(&pk);
}

static void seq8(uint64_t seq, unsigned char *b)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(seq >> (56 - 8 * i));
}

/* Live batch number `seq` storing block `blk`. */
static void publish(env_t *e, uint64_t seq, int blk)
{
    msgpack_sbuffer sb;
    batch(e, blk, &sb);
    unsigned char b[8];
    seq8(seq, b);
    assert_true(zmq_send(e->pub, "kv", 2, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(e->pub, b, 8, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(e->pub, sb.data, sb.size, 0) >= 0);
    msgpack_sbuffer_destroy(&sb);
}

static void pump(env_t *e, int rounds)
{
    for (int i = 0; i < rounds; i++) {
        uv_run(&e->loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
}

/* Runs the loop until the watcher asked for a replay; returns its `from`. */
static uint64_t wait_request(env_t *e)
{
    for (int i = 0; i < 2000 && !e->have_req; i++) {
        uv_run(&e->loop, UV_RUN_NOWAIT);
        zmq_msg_t f[3];
        int n = 0, more = 1;
        while (more && n < 3) {
            zmq_msg_init(&f[n]);
            if (zmq_msg_recv(&f[n], e->router, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&f[n]);
                break;
            }
            more = zmq_msg_more(&f[n]);
            n++;
        }
        if (n == 3) {
            assert_int_equal(zmq_msg_size(&f[1]), 0);
            assert_int_equal(zmq_msg_size(&f[2]), 8);
            const unsigned char *p = zmq_msg_data(&f[2]);
            uint64_t v = 0;
            for (int k = 0; k < 8; k++)
                v = (v << 8) | p[k];
            zmq_msg_init(&e->ident);
            zmq_msg_copy(&e->ident, &f[0]);
            e->have_req = true;
            e->req_from = v;
        } else {
            assert_true(n == 0);
        }
        for (int k = 0; k < n; k++)
            zmq_msg_close(&f[k]);
        if (!e->have_req)
            uv_sleep(1);
    }
    assert_true(e->have_req);
    return e->req_from;
}

/* Answers the outstanding replay with batches (seq, blk) and the end marker. */
static void answer(env_t *e, const uint64_t *seqs, const int *blks, int n)
{
    assert_true(e->have_req);
    for (int i = 0; i <= n; i++) {
        zmq_msg_t id;
        zmq_msg_init(&id);
        zmq_msg_copy(&id, &e->ident);
        assert_true(zmq_msg_send(&id, e->router, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_send(e->router, "", 0, ZMQ_SNDMORE) >= 0);
        unsigned char b[8];
        if (i < n) {
            msgpack_sbuffer sb;
            batch(e, blks[i], &sb);
            seq8(seqs[i], b);
            assert_true(zmq_send(e->router, b, 8, ZMQ_SNDMORE) >= 0);
            assert_true(zmq_send(e->router, sb.data, sb.size, 0) >= 0);
            msgpack_sbuffer_destroy(&sb);
        } else {
            seq8(UINT64_MAX, b);
            assert_true(zmq_send(e->router, b, 8, ZMQ_SNDMORE) >= 0);
            assert_true(zmq_send(e->router, "", 0, 0) >= 0);
        }
    }
    zmq_msg_close(&e->ident);
    e->have_req = false;
}

/* How many leading blocks of the chain the index holds for the pod. */
static uint32_t matched(env_t *e)
{
    uint32_t id = e->pod->id, m = 0;
    brix_podset_t ps = { { 0 } };
    brix_podset_add(&ps, id);
    brix_prefix_index_match(e->ix, e->gw, BLOCKS, &id, 1, &ps, &m);
    return m;
}

static uint32_t wait_matched(env_t *e, uint32_t want)
{
    uint32_t m = 0;
    for (int i = 0; i < 2000 && (m = matched(e)) != want; i++)
        pump(e, 1);
    return m;
}

/* tcp: the engine's PUB is on loopback TCP (inproc messages skip the wire
 * decoder, and with it ZMQ_MAXMSGSIZE). */
static env_t *env_new_ex(hash_kind_t hk, bool replay, bool tcp, int64_t max_msg)
{
    static int n;
    env_t *e = calloc(1, sizeof *e);
    assert_non_null(e);
    e->hk = hk;
    e->max_msg = max_msg;
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->zctx = zmq_ctx_new();
    snprintf(e->pub_ep, sizeof e->pub_ep, "inproc://kvw-pub-%d", n);
    snprintf(e->rep_ep, sizeof e->rep_ep, "inproc://kvw-rep-%d", n++);
    e->pub = zmq_socket(e->zctx, ZMQ_PUB);
    e->router = zmq_socket(e->zctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(e->pub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(e->router, ZMQ_LINGER, &zero, sizeof zero);
    if (tcp) {
        assert_int_equal(zmq_bind(e->pub, "tcp://127.0.0.1:*"), 0);
        size_t sz = sizeof e->pub_ep;
        assert_int_equal(zmq_getsockopt(e->pub, ZMQ_LAST_ENDPOINT, e->pub_ep, &sz), 0);
    } else {
        assert_int_equal(zmq_bind(e->pub, e->pub_ep), 0);
    }
    assert_int_equal(zmq_bind(e->router, e->rep_ep), 0);
    e->ix = brix_prefix_index_new(100000);
    e->pod = brix_pod_new(3, "p", "http://127.0.0.1:1", "127.0.0.1", 1);
    assert_non_null(e->ix);
    assert_non_null(e->pod);
    chain(e);
    e->w = brix_kvw_new(&e->loop, e->zctx, e->ix, e->pod, e->pub_ep, replay ? e->rep_ep : NULL, BS,
                        e->max_msg, NULL, NULL);
    assert_non_null(e->w);
    brix_kvw_set_base_model(e->w, "m");
    /* the subscription reaches the publisher (a socket processes such
     * commands when asked for its events) */
    for (int i = 0; i < 20; i++) {
        int ev;
        size_t sz = sizeof ev;
        zmq_getsockopt(e->pub, ZMQ_EVENTS, &ev, &sz);
        pump(e, 1);
    }
    return e;
}

static env_t *env_new(hash_kind_t hk, bool replay)
{
    return env_new_ex(hk, replay, false, 0);
}

static void env_free(env_t *e)
{
    if (e->have_req)
        zmq_msg_close(&e->ident);
    brix_kvw_close(e->w);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    brix_pod_unref(e->pod);
    brix_prefix_index_free(e->ix);
    zmq_close(e->pub);
    zmq_close(e->router);
    zmq_ctx_term(e->zctx);
    free(e);
    assert_int_equal(brix_alloc_live(), g_live_at_start);
}

static void start_empty(env_t *e)
{
    assert_int_equal(wait_request(e), 0);
    assert_false(brix_kvw_live(e->w));
    answer(e, NULL, NULL, 0);
    for (int i = 0; i < 2000 && !brix_kvw_live(e->w); i++)
        pump(e, 1);
    assert_true(brix_kvw_live(e->w)); /* nothing published yet: an empty cache */
}

static void test_in_order_and_startup_replay(void **state)
{
    (void)state;
    env_t *e = env_new(HASH_UINT, true);
    /* the engine cached blocks 0..2 before the gateway came */
    assert_int_equal(wait_request(e), 0);
    answer(e, (uint64_t[]){ 0, 1, 2 }, (int[]){ 0, 1, 2 }, 3);
    assert_int_equal(wait_matched(e, 3), 3);
    assert_true(brix_kvw_live(e->w));
    for (int b = 3; b < 6; b++)
        publish(e, (uint64_t)b, b);
    assert_int_equal(wait_matched(e, 6), 6);
    assert_int_equal(brix_kvw_stats(e->w)->gaps, 0);
    env_free(e);
}

static void test_gap_replayed_with_second_gap_in_held(void **state)
{
    (void)state;
    env_t *e = env_new(HASH_UINT, true);
    start_empty(e);
    publish(e, 0, 0);
    assert_int_equal(wait_matched(e, 1), 1);
    /* 1 is lost: 2 starts a replay from 1; 3, 4 and (4, 5 lost) 7, 8 are held */
    publish(e, 2, 2);
    assert_int_equal(wait_request(e), 1);
    publish(e, 3, 3);
    publish(e, 4, 4);
    publish(e, 7, 7);
    publish(e, 8, 8);
    pump(e, 20);
    assert_false(brix_kvw_live(e->w));
    assert_int_equal(matched(e), 1);
    /* the engine's answer: 1 and 2 (2 arrives again, held: a duplicate) */
    answer(e, (uint64_t[]){ 1, 2 }, (int[]){ 1, 2 }, 2);
    /* held 3, 4 apply; 7 finds 5..6 missing: a second replay, 8 held again */
    assert_int_equal(wait_request(e), 5);
    assert_int_equal(wait_matched(e, 5), 5);
    assert_false(brix_kvw_live(e->w));
    answer(e, (uint64_t[]){ 5, 6 }, (int[]){ 5, 6 }, 2);
    assert_int_equal(wait_matched(e, 9), 9);
    assert_true(brix_kvw_live(e->w));
    assert_int_equal(brix_kvw_stats(e->w)->gaps, 2);
    /* in sequence again */
    publish(e, 9, 9);
    assert_int_equal(wait_matched(e, 10), 10);
    env_free(e);
}

static void test_replay_without_the_missing_batches(void **state)
{
    (void)state;
    env_t *e = env_new(HASH_UINT, true);
    start_empty(e);
    publish(e, 0, 0);
    publish(e, 1, 1);
    assert_int_equal(wait_matched(e, 2), 2);
    publish(e, 5, 5);
    assert_int_equal(wait_request(e), 2);
    answer(e, NULL, NULL, 0); /* its buffer moved on (or it restarted) */
    assert_int_equal(wait_matched(e, 0), 0);
    pump(e, 10);
    assert_int_equal(matched(e), 0); /* 0..1 dropped; 5's parent is unknown */
    assert_true(brix_kvw_live(e->w));
    env_free(e);
}

static void test_restart_on_the_live_stream(void **state)
{
    (void)state;
    env_t *e = env_new(HASH_UINT, true);
    start_empty(e);
    for (int b = 0; b < 4; b++)
        publish(e, (uint64_t)b, b);
    assert_int_equal(wait_matched(e, 4), 4);
    /* a new engine process numbers from 0 again, with other blocks */
    e->epoch = 1;
    uint64_t old0 = e->gw[0];
    chain(e);
    assert_true(e->gw[0] != old0);
    publish(e, 0, 0);
    assert_int_equal(wait_matched(e, 1), 1);
    assert_int_equal(brix_kvw_stats(e->w)->resets, 1);
    /* the old chain is gone */
    uint64_t g = e->gw[0];
    e->gw[0] = old0;
    assert_int_equal(matched(e), 0);
    e->gw[0] = g;
    for (int b = 1; b < 4; b++)
        publish(e, (uint64_t)b, b);
    assert_int_equal(wait_matched(e, 4), 4);
    /* a restart noticed after its first batch was missed: replayed from 0,
     * and the live batch the replay also delivered is not applied twice */
    e->epoch = 2;
    chain(e);
    publish(e, 1, 1);
    assert_int_equal(wait_request(e), 0);
    answer(e, (uint64_t[]){ 0, 1 }, (int[]){ 0, 1 }, 2);
    assert_int_equal(wait_matched(e, 2), 2);
    assert_true(brix_kvw_live(e->w));
    assert_int_equal(brix_kvw_stats(e->w)->resets, 2);
    publish(e, 2, 2);
    assert_int_equal(wait_matched(e, 3), 3);
    assert_int_equal(brix_kvw_stats(e->w)->gaps, 0);
    env_free(e);
}

static void test_reset_during_replay(void **state)
{
    (void)state;
    env_t *e = env_new(HASH_UINT, true);
    start_empty(e);
    publish(e, 0, 0);
    publish(e, 2, 2);
    assert_int_equal(wait_request(e), 1);
    /* the pod failed its health checks: everything is forgotten, a full
     * replay is asked for once the outstanding one ends */
    brix_kvw_reset(e->w);
    pump(e, 10);
    assert_false(brix_kvw_live(e->w));
    answer(e, (uint64_t[]){ 1 }, (int[]){ 1 }, 1); /* superseded: ignored */
    assert_int_equal(wait_request(e), 0);
    assert_int_equal(matched(e), 0);
    answer(e, (uint64_t[]){ 0, 1, 2 }, (int[]){ 0, 1, 2 }, 3);
    assert_int_equal(wait_matched(e, 3), 3);
    assert_true(brix_kvw_live(e->w));
    env_free(e);
}

/* tcp env: gives the watcher's connection time to be made (a PUB drops
 * what it sends before). */
static void wait_connected(env_t *e)
{
    pump(e, 300);
}

/* Batch `seq` storing block `blk`, padded past 4 KiB with a BlockRemoved of
 * hashes the pod never had (harmless when applied). */
static void publish_big(env_t *e, uint64_t seq, int blk)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_double(&pk, 1.0);
    msgpack_pack_array(&pk, 2);
    msgpack_sbuffer one;
    batch(e, blk, &one); /* [ts, [event], ...]: take its event */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, one.data, one.size, NULL), MSGPACK_UNPACK_SUCCESS);
    msgpack_pack_object(&pk, u.data.via.array.ptr[1].via.array.ptr[0]);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&one);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_str(&pk, 12);
    msgpack_pack_str_body(&pk, "BlockRemoved", 12);
    msgpack_pack_array(&pk, 600);
    for (int i = 0; i < 600; i++)
        msgpack_pack_uint64(&pk, 0xdead000000000000ull + (uint64_t)i);
    msgpack_pack_nil(&pk);
    assert_true(sb.size > 4096);
    unsigned char b[8];
    seq8(seq, b);
    assert_true(zmq_send(e->pub, "kv", 2, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(e->pub, b, 8, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(e->pub, sb.data, sb.size, 0) >= 0);
    msgpack_sbuffer_destroy(&sb);
}

/* ZMQ_MAXMSGSIZE: a batch over the limit is never taken in; libzmq drops
 * the connection and (a protocol error) would not connect again by itself:
 * the watcher does, and takes batches again. Under the default limit the
 * same batch is applied. */
static void test_max_msg_size(void **state)
{
    (void)state;
    for (int limited = 1; limited >= 0; limited--) {
        env_t *e = env_new_ex(HASH_UINT, false, true, limited ? 4096 : 0);
        wait_connected(e);
        publish(e, 0, 0);
        assert_int_equal(wait_matched(e, 1), 1);
        publish_big(e, 1, 1);
        if (!limited) {
            assert_int_equal(wait_matched(e, 2), 2);
            assert_int_equal(brix_kvw_stats(e->w)->batches, 2);
            env_free(e);
            continue;
        }
        pump(e, 50);
        assert_int_equal(matched(e), 1);
        assert_int_equal(brix_kvw_stats(e->w)->batches, 1);
        /* dropped, connected again: batches of a normal size are taken */
        uint64_t seq = 2;
        for (int i = 0; i < 100 && brix_kvw_stats(e->w)->batches < 2; i++) {
            publish(e, seq, (int)seq);
            seq++;
            pump(e, 20);
        }
        assert_int_equal(brix_kvw_stats(e->w)->batches, 2);
        assert_true(brix_kvw_stats(e->w)->reconnects >= 1);
        env_free(e);
    }
}

static void test_hash_encodings(void **state)
{
    (void)state;
    hash_kind_t kinds[] = { HASH_NEG, HASH_BIN };
    for (int k = 0; k < 2; k++) {
        env_t *e = env_new(kinds[k], false); /* no replay socket: live at the first batch */
        assert_false(brix_kvw_live(e->w));
        for (int b = 0; b < 3; b++)
            publish(e, (uint64_t)b, b);
        assert_int_equal(wait_matched(e, 3), 3);
        assert_true(brix_kvw_live(e->w));
        assert_int_equal(brix_kvw_stats(e->w)->unknown_parents, 0);
        env_free(e);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_in_order_and_startup_replay, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_gap_replayed_with_second_gap_in_held, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_replay_without_the_missing_batches, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_restart_on_the_live_stream, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_reset_during_replay, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_hash_encodings, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_max_msg_size, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
