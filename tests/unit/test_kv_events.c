/*
 * Tests for engine_sim/kv_events: --kv-events-config parsing (defaults,
 * unknown keys, types, ENOMEM), and the publisher end to end against real
 * ZMQ sockets in the test: exact msgpack structure and values of a batch,
 * sequence numbers, empty flushes, the ROUTER replay protocol, bind vs
 * connect, and dropped batches. Every test checks that brix_alloc_live()
 * returns to where it started and that the uv loop closes cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/log.h"
#include "engine_sim/kv_events.h"

#include <arpa/inet.h>
#include <errno.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* ---- helpers ---- */

static int64_t g_live0;

static int setup(void **state)
{
    g_live0 = brix_alloc_live();
    return 0;
}

static int teardown(void **state)
{
    brix_alloc_fail_after(-1);
    assert_int_equal(brix_alloc_live(), g_live0);
    return 0;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ipc_endpoint(char *out, size_t n, const char *what)
{
    static int counter;
    snprintf(out, n, "ipc:///tmp/brix-kvtest-%d-%s-%d", (int)getpid(), what, counter++);
}

/* A free loopback port: ask the kernel for port 0, then release it. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static uint64_t be64(const void *p)
{
    const unsigned char *b = p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

static void put_be64(unsigned char out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(v >> (56 - 8 * i));
}

typedef struct msg {
    int nframes;
    size_t len[4];
    char *data[4]; /* malloc'd copies of the first 4 frames */
} msg_t;

static void msg_free(msg_t *m)
{
    for (int i = 0; i < 4 && i < m->nframes; i++)
        free(m->data[i]);
    memset(m, 0, sizeof *m);
}

/* Receives one multipart message within timeout_ms, running the uv loop
 * meanwhile (the replay ROUTER is serviced there). Returns 0 on timeout. */
static int recv_msg(uv_loop_t *loop, void *sock, msg_t *m, int timeout_ms)
{
    memset(m, 0, sizeof *m);
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        if (loop)
            uv_run(loop, UV_RUN_NOWAIT);
        zmq_pollitem_t it = { sock, 0, ZMQ_POLLIN, 0 };
        int rc = zmq_poll(&it, 1, loop ? 5 : 50);
        if (rc > 0)
            break;
        if (mono_ms() >= deadline)
            return 0;
    }
    int more = 1;
    while (more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        assert_true(zmq_msg_recv(&f, sock, 0) >= 0);
        if (m->nframes < 4) {
            m->len[m->nframes] = zmq_msg_size(&f);
            m->data[m->nframes] = malloc(zmq_msg_size(&f) + 1);
            memcpy(m->data[m->nframes], zmq_msg_data(&f), zmq_msg_size(&f));
        }
        m->nframes++;
        more = zmq_msg_more(&f);
        zmq_msg_close(&f);
    }
    return 1;
}

typedef struct fixture {
    uv_loop_t loop;
    brix_kv_events_t *ev;
    void *zctx;
    void *sub;
    uint64_t flushes; /* batches the test has flushed so far */
    char ep[128];
    char replay_ep[128];
} fixture_t;

static void quiet(void)
{
    /* the publisher logs its endpoints at INFO; keep test output clean */
    brix_log_set_level(BRIX_LOG_ERROR);
}

static brix_kv_events_t *make_pub(uv_loop_t *loop, const char *json)
{
    brix_kv_events_cfg_t cfg;
    char err[256] = "";
    if (brix_kv_events_cfg_parse(json, &cfg, err, sizeof err)) {
        fail_msg("cfg: %s", err);
    }
    brix_kv_events_t *ev = brix_kv_events_new(loop, &cfg, err, sizeof err);
    if (!ev)
        fail_msg("new: %s", err);
    brix_kv_events_cfg_free(&cfg);
    return ev;
}

/* Publishes AllBlocksCleared until the SUB sees one (the slow-joiner
 * problem: a subscription needs a moment to reach the PUB), then drains. */
static void sync_sub(fixture_t *f)
{
    int64_t deadline = mono_ms() + 5000;
    msg_t m;
    for (;;) {
        brix_kv_events_all_cleared(f->ev);
        assert_int_equal(brix_kv_events_flush(f->ev), 0);
        f->flushes++;
        if (recv_msg(&f->loop, f->sub, &m, 20)) {
            msg_free(&m);
            break;
        }
        assert_true(mono_ms() < deadline);
    }
    while (recv_msg(&f->loop, f->sub, &m, 100))
        msg_free(&m);
}

static void fixture_open(fixture_t *f, const char *extra_json)
{
    memset(f, 0, sizeof *f);
    quiet();
    assert_int_equal(uv_loop_init(&f->loop), 0);
    ipc_endpoint(f->ep, sizeof f->ep, "pub");
    ipc_endpoint(f->replay_ep, sizeof f->replay_ep, "replay");
    char json[512];
    snprintf(json, sizeof json,
             "{\"enable_kv_cache_events\":true,\"endpoint\":\"%s\",\"replay_endpoint\":\"%s\","
             "\"topic\":\"kv-test\"%s}",
             f->ep, f->replay_ep, extra_json ? extra_json : "");
    f->ev = make_pub(&f->loop, json);
    f->zctx = zmq_ctx_new();
    f->sub = zmq_socket(f->zctx, ZMQ_SUB);
    int zero = 0;
    zmq_setsockopt(f->sub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->sub, ZMQ_SUBSCRIBE, "kv-test", 7);
    assert_int_equal(zmq_connect(f->sub, f->ep), 0);
    sync_sub(f);
}

static void close_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT); /* runs the close callbacks */
    assert_int_equal(uv_loop_close(loop), 0);
}

static void fixture_close(fixture_t *f)
{
    zmq_close(f->sub);
    zmq_ctx_term(f->zctx);
    assert_int_equal(access(f->ep + 6, F_OK), 0);
    brix_kv_events_close(f->ev);
    close_loop(&f->loop);
    /* the ipc socket files are removed (libzmq itself leaves them) */
    assert_int_not_equal(access(f->ep + 6, F_OK), 0);
    assert_int_not_equal(access(f->replay_ep + 6, F_OK), 0);
}

/* ---- config ---- */

static brix_kv_events_cfg_t parse_ok(const char *json)
{
    brix_kv_events_cfg_t cfg;
    char err[256] = "";
    int rc = brix_kv_events_cfg_parse(json, &cfg, err, sizeof err);
    if (rc)
        fail_msg("parse %s: %s", json, err);
    return cfg;
}

static void parse_fails(const char *json, const char *needle)
{
    brix_kv_events_cfg_t cfg;
    char err[256] = "";
    assert_int_equal(brix_kv_events_cfg_parse(json, &cfg, err, sizeof err), -1);
    if (!strstr(err, needle))
        fail_msg("parse %s: error \"%s\" does not mention \"%s\"", json, err, needle);
    /* a failed parse owns nothing */
    assert_null(cfg.publisher);
    assert_null(cfg.endpoint);
    assert_null(cfg.replay_endpoint);
    assert_null(cfg.topic);
}

static void test_cfg_defaults(void **state)
{
    brix_kv_events_cfg_t c = parse_ok("{\"enable_kv_cache_events\": true}");
    assert_true(c.enabled);
    assert_string_equal(c.publisher, "zmq");
    assert_string_equal(c.endpoint, "tcp://*:5557");
    assert_null(c.replay_endpoint);
    assert_string_equal(c.topic, "");
    assert_int_equal(c.buffer_steps, 10000);
    assert_int_equal(c.hwm, 100000);
    brix_kv_events_cfg_free(&c);
    assert_null(c.publisher);

    /* disabled: the publisher defaults to "null" */
    c = parse_ok("{}");
    assert_false(c.enabled);
    assert_string_equal(c.publisher, "null");
    assert_string_equal(c.endpoint, "tcp://*:5557");
    brix_kv_events_cfg_free(&c);

    /* JSON null is "use the default" */
    c = parse_ok("{\"enable_kv_cache_events\":true,\"publisher\":null,\"replay_endpoint\":null,"
                 "\"endpoint\":null,\"topic\":null,\"hwm\":null}");
    assert_string_equal(c.publisher, "zmq");
    assert_string_equal(c.endpoint, "tcp://*:5557");
    assert_null(c.replay_endpoint);
    assert_string_equal(c.topic, "");
    assert_int_equal(c.hwm, 100000);
    brix_kv_events_cfg_free(&c);
}

static void test_cfg_all_keys(void **state)
{
    brix_kv_events_cfg_t c = parse_ok(
        "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:6000\","
        "\"replay_endpoint\":\"tcp://*:6001\",\"buffer_steps\":5,\"hwm\":0,"
        "\"max_queue_size\":7,\"topic\":\"kv\"}");
    assert_true(c.enabled);
    assert_string_equal(c.publisher, "zmq");
    assert_string_equal(c.endpoint, "tcp://*:6000");
    assert_string_equal(c.replay_endpoint, "tcp://*:6001");
    assert_string_equal(c.topic, "kv");
    assert_int_equal(c.buffer_steps, 5);
    assert_int_equal(c.hwm, 0);
    brix_kv_events_cfg_free(&c);
    brix_kv_events_cfg_free(&c); /* idempotent */

    /* explicit disable, whatever else is set */
    c = parse_ok("{\"enable_kv_cache_events\":false,\"publisher\":\"zmq\",\"topic\":\"\"}");
    assert_false(c.enabled);
    assert_string_equal(c.publisher, "zmq");
    assert_string_equal(c.topic, "");
    brix_kv_events_cfg_free(&c);
}

static void test_cfg_errors(void **state)
{
    static const struct {
        const char *json, *needle;
    } cases[] = {
        { "{\"enable_kv_cache_events\":true,\"bogus_key\":1}", "bogus_key" },
        { "{\"Endpoint\":\"tcp://*:1\"}", "Endpoint" },
        { "{\"topic\":\"a\",\"hwm\":1,\"topic\":\"b\"}", "duplicate key 'topic'" },
        { "{\"enable_kv_cache_events\":\"yes\"}", "enable_kv_cache_events" },
        { "{\"enable_kv_cache_events\":1}", "enable_kv_cache_events" },
        { "{\"endpoint\":5557}", "endpoint" },
        { "{\"endpoint\":\"\"}", "endpoint" },
        { "{\"replay_endpoint\":false}", "replay_endpoint" },
        { "{\"topic\":[]}", "topic" },
        { "{\"publisher\":\"kafka\"}", "publisher" },
        { "{\"buffer_steps\":1.5}", "buffer_steps" },
        { "{\"buffer_steps\":-1}", "buffer_steps" },
        { "{\"hwm\":\"100\"}", "hwm" },
        { "{\"hwm\":1e12}", "hwm" },
        { "{\"max_queue_size\":\"x\"}", "max_queue_size" },
        { "[1,2]", "object" },
        { "{\"enable_kv_cache_events\": tru}", "offset" },
        { "", "offset" },
        { "{} {}", "offset" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        parse_fails(cases[i].json, cases[i].needle);
}

static void test_cfg_enomem(void **state)
{
    const char *json = "{\"enable_kv_cache_events\":true,\"endpoint\":\"ipc:///x\","
                       "\"replay_endpoint\":\"ipc:///y\",\"topic\":\"t\"}";
    for (long n = 0;; n++) {
        brix_kv_events_cfg_t c;
        char err[256] = "";
        brix_alloc_fail_after(n);
        int rc = brix_kv_events_cfg_parse(json, &c, err, sizeof err);
        brix_alloc_fail_after(-1);
        if (rc == 0) {
            brix_kv_events_cfg_free(&c);
            break;
        }
        assert_non_null(strstr(err, "kv-events-config"));
        assert_int_equal(brix_alloc_live(), g_live0);
        assert_true(n < 100);
    }
}

/* ---- publisher ---- */

static void test_null_publisher(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    brix_kv_events_t *ev = make_pub(&loop, "{\"enable_kv_cache_events\":true,"
                                           "\"publisher\":\"null\",\"endpoint\":\"bad\"}");
    uint64_t h = 1;
    uint32_t t = 2;
    assert_int_equal(brix_kv_events_flush(ev), 0);
    assert_int_equal(brix_kv_events_published(ev), 0);
    brix_kv_events_block_stored(ev, &h, 1, false, 0, &t, 1, 1, -1, NULL);
    brix_kv_events_block_removed(ev, &h, 1);
    brix_kv_events_all_cleared(ev);
    assert_int_equal(brix_kv_events_flush(ev), 0);
    assert_int_equal(brix_kv_events_published(ev), 1);
    assert_int_equal(brix_kv_events_flush(ev), 0);
    assert_int_equal(brix_kv_events_published(ev), 1);
    assert_int_equal(brix_kv_events_dropped(ev), 0);
    brix_kv_events_close(ev);
    close_loop(&loop);
}

static void assert_str(const msgpack_object *o, const char *s)
{
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(s));
    assert_memory_equal(o->via.str.ptr, s, strlen(s));
}

static void assert_uint(const msgpack_object *o, uint64_t v)
{
    assert_int_equal(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    if (o->via.u64 != v)
        fail_msg("expected %llu, got %llu", (unsigned long long)v, (unsigned long long)o->via.u64);
}

static void assert_uints(const msgpack_object *o, const uint64_t *v, size_t n)
{
    assert_int_equal(o->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(o->via.array.size, n);
    for (size_t i = 0; i < n; i++)
        assert_uint(&o->via.array.ptr[i], v[i]);
}

static void test_publish_batch(void **state)
{
    fixture_t f;
    fixture_open(&f, NULL);
    uint64_t pub0 = brix_kv_events_published(f.ev);
    assert_int_equal(pub0, f.flushes);

    const uint64_t h1[] = { UINT64_MAX, 0x8000000000000001ull, 1, 0 };
    const uint32_t t1[] = { 0, 1, 65535, UINT32_MAX };
    const uint64_t h2[] = { 42 };
    const uint32_t t2[] = { 5, 6 };
    const uint64_t hr[] = { UINT64_MAX - 1, 3 };
    brix_kv_events_block_stored(f.ev, h1, 4, true, 0xdeadbeefcafebabeull, t1, 4, 16, 7, NULL);
    brix_kv_events_block_stored(f.ev, h2, 1, false, 99, t2, 2, 2, -1, NULL);
    brix_kv_events_block_removed(f.ev, hr, 2);
    brix_kv_events_all_cleared(f.ev);
    double before = (double)time(NULL);
    assert_int_equal(brix_kv_events_flush(f.ev), 0);
    assert_int_equal(brix_kv_events_published(f.ev), pub0 + 1);

    msg_t m;
    assert_true(recv_msg(&f.loop, f.sub, &m, 2000));
    assert_int_equal(m.nframes, 3);
    assert_int_equal(m.len[0], 7);
    assert_memory_equal(m.data[0], "kv-test", 7);
    assert_int_equal(m.len[1], 8);
    assert_int_equal(be64(m.data[1]), f.flushes); /* seqs 0..flushes-1 went to sync */

    /* fixarray(3), then ts as float64 (0xcb) exactly as msgspec writes it */
    assert_true(m.len[2] > 10);
    assert_int_equal((unsigned char)m.data[2][0], 0x93);
    assert_int_equal((unsigned char)m.data[2][1], 0xcb);

    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, m.data[2], m.len[2], &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, m.len[2]);
    const msgpack_object *p = &up.data;
    assert_int_equal(p->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(p->via.array.size, 3);
    const msgpack_object *ts = &p->via.array.ptr[0];
    assert_int_equal(ts->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(ts->via.f64 >= before - 1 && ts->via.f64 <= before + 10);
    assert_uint(&p->via.array.ptr[2], 0); /* data_parallel_rank */

    const msgpack_object *evs = &p->via.array.ptr[1];
    assert_int_equal(evs->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(evs->via.array.size, 4);
    const msgpack_object *e = evs->via.array.ptr;

    assert_int_equal(e[0].type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(e[0].via.array.size, 7);
    const msgpack_object *a = e[0].via.array.ptr;
    assert_str(&a[0], "BlockStored");
    assert_uints(&a[1], h1, 4);
    assert_uint(&a[2], 0xdeadbeefcafebabeull);
    const uint64_t t1u[] = { 0, 1, 65535, UINT32_MAX };
    assert_uints(&a[3], t1u, 4);
    assert_uint(&a[4], 16);
    assert_uint(&a[5], 7);
    assert_str(&a[6], "GPU");

    assert_int_equal(e[1].via.array.size, 7);
    a = e[1].via.array.ptr;
    assert_str(&a[0], "BlockStored");
    assert_uints(&a[1], h2, 1);
    assert_int_equal(a[2].type, MSGPACK_OBJECT_NIL);
    const uint64_t t2u[] = { 5, 6 };
    assert_uints(&a[3], t2u, 2);
    assert_uint(&a[4], 2);
    assert_int_equal(a[5].type, MSGPACK_OBJECT_NIL);
    assert_str(&a[6], "GPU");

    assert_int_equal(e[2].type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(e[2].via.array.size, 3);
    a = e[2].via.array.ptr;
    assert_str(&a[0], "BlockRemoved");
    assert_uints(&a[1], hr, 2);
    assert_str(&a[2], "GPU");

    assert_int_equal(e[3].type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(e[3].via.array.size, 1);
    assert_str(&e[3].via.array.ptr[0], "AllBlocksCleared");

    msgpack_unpacked_destroy(&up);
    msg_free(&m);
    f.flushes++;

    /* the next batch starts empty and takes the next sequence number */
    brix_kv_events_block_removed(f.ev, h2, 1);
    assert_int_equal(brix_kv_events_flush(f.ev), 0);
    assert_true(recv_msg(&f.loop, f.sub, &m, 2000));
    assert_int_equal(be64(m.data[1]), f.flushes);
    msgpack_unpacked_init(&up);
    off = 0;
    assert_int_equal(msgpack_unpack_next(&up, m.data[2], m.len[2], &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(up.data.via.array.ptr[1].via.array.size, 1);
    msgpack_unpacked_destroy(&up);
    msg_free(&m);
    f.flushes++;
    assert_int_equal(brix_kv_events_dropped(f.ev), 0);
    fixture_close(&f);
}

static void test_empty_flush(void **state)
{
    fixture_t f;
    fixture_open(&f, NULL);
    uint64_t pub0 = brix_kv_events_published(f.ev);
    for (int i = 0; i < 5; i++)
        assert_int_equal(brix_kv_events_flush(f.ev), 0);
    assert_int_equal(brix_kv_events_published(f.ev), pub0);
    msg_t m;
    assert_false(recv_msg(&f.loop, f.sub, &m, 200));

    /* and empty flushes consumed no sequence numbers */
    brix_kv_events_all_cleared(f.ev);
    assert_int_equal(brix_kv_events_flush(f.ev), 0);
    assert_true(recv_msg(&f.loop, f.sub, &m, 2000));
    assert_int_equal(be64(m.data[1]), f.flushes);
    msg_free(&m);
    fixture_close(&f);
}

/* A DEALER that sends ["", start] and collects the replies up to the marker. */
static size_t replay(fixture_t *f, void *client, uint64_t start, uint64_t *seqs, size_t max)
{
    unsigned char be[8];
    put_be64(be, start);
    assert_int_equal(zmq_send(client, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(client, be, 8, 0), 8);
    size_t n = 0;
    for (;;) {
        msg_t m;
        assert_true(recv_msg(&f->loop, client, &m, 3000));
        assert_int_equal(m.nframes, 3);
        assert_int_equal(m.len[0], 0);
        assert_int_equal(m.len[1], 8);
        uint64_t seq = be64(m.data[1]);
        if (seq == UINT64_MAX) {
            assert_int_equal(m.len[2], 0); /* end marker: 0xFF x 8, empty payload */
            msg_free(&m);
            return n;
        }
        /* each replayed payload is a whole batch */
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&up, m.data[2], m.len[2], &off),
                         MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, m.len[2]);
        assert_int_equal(up.data.type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(up.data.via.array.size, 3);
        msgpack_unpacked_destroy(&up);
        assert_true(n < max);
        seqs[n++] = seq;
        msg_free(&m);
    }
}

static void *dealer(fixture_t *f)
{
    void *d = zmq_socket(f->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(d, f->replay_ep), 0);
    return d;
}

static void test_replay(void **state)
{
    fixture_t f;
    fixture_open(&f, NULL);
    uint64_t h = 7;
    for (int i = 0; i < 5; i++) {
        brix_kv_events_block_removed(f.ev, &h, 1);
        assert_int_equal(brix_kv_events_flush(f.ev), 0);
        f.flushes++;
    }
    uint64_t n_total = f.flushes;
    void *d = dealer(&f);
    uint64_t seqs[4096];

    /* from 1: everything but the first batch, in order */
    size_t n = replay(&f, d, 1, seqs, 4096);
    assert_int_equal(n, n_total - 1);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);

    /* from 0: sequence numbers start at 0 */
    n = replay(&f, d, 0, seqs, 4096);
    assert_int_equal(n, n_total);
    assert_int_equal(seqs[0], 0);

    /* past the end: only the marker */
    n = replay(&f, d, n_total + 100, seqs, 4096);
    assert_int_equal(n, 0);

    /* a malformed request (no start frame) is ignored, then all is well */
    zmq_send(d, "", 0, 0);
    msg_t m;
    assert_false(recv_msg(&f.loop, d, &m, 200));
    n = replay(&f, d, n_total - 2, seqs, 4096);
    assert_int_equal(n, 2);
    assert_int_equal(seqs[0], n_total - 2);
    assert_int_equal(seqs[1], n_total - 1);

    /* two requests at once: ZMQ_FD is edge-triggered, both must be served */
    unsigned char be[8];
    put_be64(be, n_total - 1);
    for (int i = 0; i < 2; i++) {
        zmq_send(d, "", 0, ZMQ_SNDMORE);
        zmq_send(d, be, 8, 0);
    }
    int markers = 0;
    while (markers < 2) {
        assert_true(recv_msg(&f.loop, d, &m, 3000));
        if (be64(m.data[1]) == UINT64_MAX)
            markers++;
        else
            assert_int_equal(be64(m.data[1]), n_total - 1);
        msg_free(&m);
    }
    zmq_close(d);

    /* a REQ client gets the first reply (then ZMQ's REQ state machine
     * refuses the rest, which is why kv_sub uses a DEALER) */
    void *req = zmq_socket(f.zctx, ZMQ_REQ);
    int zero = 0;
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(req, f.replay_ep), 0);
    put_be64(be, 1);
    assert_int_equal(zmq_send(req, be, 8, 0), 8);
    assert_true(recv_msg(&f.loop, req, &m, 3000));
    assert_int_equal(m.nframes, 2);
    assert_int_equal(be64(m.data[0]), 1);
    msg_free(&m);
    zmq_close(req);
    fixture_close(&f);
}

/* A peer sending more than a replay request can be (a hostile or broken
 * client) is cut off by ZMQ_MAXMSGSIZE instead of being buffered; the
 * publisher keeps serving everyone else. */
static void test_replay_oversized_request(void **state)
{
    fixture_t f;
    fixture_open(&f, NULL);
    uint64_t h = 9;
    brix_kv_events_block_removed(f.ev, &h, 1);
    assert_int_equal(brix_kv_events_flush(f.ev), 0);
    f.flushes++;
    void *bad = dealer(&f);
    size_t big = 1 << 20;
    char *junk = calloc(1, big);
    assert_non_null(junk);
    zmq_send(bad, "", 0, ZMQ_SNDMORE);
    zmq_send(bad, junk, big, 0);
    free(junk);
    msg_t m;
    assert_false(recv_msg(&f.loop, bad, &m, 300));
    zmq_close(bad);
    void *d = dealer(&f);
    uint64_t seqs[16];
    assert_int_equal(replay(&f, d, 0, seqs, 16), f.flushes);
    zmq_close(d);
    fixture_close(&f);
}

static void test_replay_ring_wraps(void **state)
{
    fixture_t f;
    fixture_open(&f, ",\"buffer_steps\":3");
    uint64_t h = 7;
    for (int i = 0; i < 7; i++) {
        brix_kv_events_block_removed(f.ev, &h, 1);
        assert_int_equal(brix_kv_events_flush(f.ev), 0);
        f.flushes++;
    }
    void *d = dealer(&f);
    uint64_t seqs[16];
    size_t n = replay(&f, d, 0, seqs, 16);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(seqs[i], f.flushes - 3 + i);
    zmq_close(d);
    fixture_close(&f);
}

static void test_enomem_drops_batch(void **state)
{
    fixture_t f;
    fixture_open(&f, NULL);
    uint64_t h[64] = { 0 };
    uint32_t t[64] = { 0 };
    /* the events buffer has room for small events by now: make it grow */
    brix_alloc_fail_after(0);
    brix_kv_events_block_stored(f.ev, h, 64, false, 0, t, 64, 64, -1, NULL);
    brix_alloc_fail_after(-1);
    brix_kv_events_all_cleared(f.ev);
    assert_int_equal(brix_kv_events_flush(f.ev), -ENOMEM);
    assert_int_equal(brix_kv_events_dropped(f.ev), 1);
    f.flushes++;
    msg_t m;
    assert_false(recv_msg(&f.loop, f.sub, &m, 100));

    /* the dropped batch used its sequence number: subscribers see the gap */
    brix_kv_events_all_cleared(f.ev);
    assert_int_equal(brix_kv_events_flush(f.ev), 0);
    assert_true(recv_msg(&f.loop, f.sub, &m, 2000));
    assert_int_equal(be64(m.data[1]), f.flushes);
    msg_free(&m);
    fixture_close(&f);
}

static void open_sub(fixture_t *f, const char *ep, bool bind)
{
    int zero = 0;
    f->sub = zmq_socket(f->zctx, ZMQ_SUB);
    zmq_setsockopt(f->sub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->sub, ZMQ_SUBSCRIBE, "", 0);
    assert_int_equal(bind ? zmq_bind(f->sub, ep) : zmq_connect(f->sub, ep), 0);
}

static void test_tcp_bind_and_connect(void **state)
{
    quiet();
    fixture_t f = { .flushes = 0 };
    char json[256], ep[64];
    f.zctx = zmq_ctx_new();

    /* "*" in the endpoint: the PUB binds, the SUB connects */
    assert_int_equal(uv_loop_init(&f.loop), 0);
    int port = free_port();
    snprintf(json, sizeof json, "{\"enable_kv_cache_events\":true,\"endpoint\":\"tcp://*:%d\"}",
             port);
    f.ev = make_pub(&f.loop, json);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    open_sub(&f, ep, false);
    sync_sub(&f);
    assert_int_equal(brix_kv_events_published(f.ev), f.flushes);
    brix_kv_events_close(f.ev);
    zmq_close(f.sub);
    close_loop(&f.loop);

    /* a plain host: the PUB connects, so the SUB binds */
    assert_int_equal(uv_loop_init(&f.loop), 0);
    port = free_port();
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    open_sub(&f, ep, true);
    snprintf(json, sizeof json, "{\"enable_kv_cache_events\":true,\"endpoint\":\"%s\"}", ep);
    f.ev = make_pub(&f.loop, json);
    f.flushes = 0;
    sync_sub(&f);
    brix_kv_events_close(f.ev);
    zmq_close(f.sub);
    zmq_ctx_term(f.zctx);
    close_loop(&f.loop);
}

static void new_fails(uv_loop_t *loop, const char *json)
{
    char err[256] = "";
    brix_kv_events_cfg_t cfg;
    assert_int_equal(brix_kv_events_cfg_parse(json, &cfg, err, sizeof err), 0);
    assert_null(brix_kv_events_new(loop, &cfg, err, sizeof err));
    if (!strstr(err, "kv events"))
        fail_msg("%s: unexpected error \"%s\"", json, err);
    brix_kv_events_cfg_free(&cfg);
}

static void test_new_errors(void **state)
{
    quiet();
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char ep[128], json[512], err[256];
    new_fails(&loop, "{\"enable_kv_cache_events\":true,\"endpoint\":\"tcp://*:notaport\"}");
    new_fails(&loop, "{\"enable_kv_cache_events\":true,\"endpoint\":\"nonsense://x\"}");
    /* the replay endpoint is taken by the PUB itself */
    int port = free_port();
    snprintf(json, sizeof json,
             "{\"enable_kv_cache_events\":true,\"endpoint\":\"tcp://*:%d\","
             "\"replay_endpoint\":\"tcp://*:%d\"}",
             port, port);
    new_fails(&loop, json);

    /* ENOMEM at every allocation of new(): fails cleanly or succeeds */
    char rep[128];
    ipc_endpoint(ep, sizeof ep, "nomem");
    ipc_endpoint(rep, sizeof rep, "nomem-replay");
    snprintf(json, sizeof json,
             "{\"enable_kv_cache_events\":true,\"endpoint\":\"%s\",\"replay_endpoint\":\"%s\"}", ep,
             rep);
    brix_kv_events_cfg_t cfg;
    assert_int_equal(brix_kv_events_cfg_parse(json, &cfg, err, sizeof err), 0);
    int64_t live = brix_alloc_live();
    for (long n = 0;; n++) {
        brix_alloc_fail_after(n);
        brix_kv_events_t *ev = brix_kv_events_new(&loop, &cfg, err, sizeof err);
        brix_alloc_fail_after(-1);
        uv_run(&loop, UV_RUN_NOWAIT);
        if (ev) {
            brix_kv_events_close(ev);
            break;
        }
        assert_int_equal(brix_alloc_live(), live);
        assert_true(n < 50);
    }
    brix_kv_events_cfg_free(&cfg);
    close_loop(&loop);
    /* left behind when the ENOMEM hit the copy of its path */
    unlink(ep + 6);
    unlink(rep + 6);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cfg_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cfg_all_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cfg_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cfg_enomem, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_publisher, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_ring_wraps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_oversized_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enomem_drops_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_bind_and_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
