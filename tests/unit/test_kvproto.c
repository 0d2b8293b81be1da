/*
 * kvcache/kvproto and the server over real sockets.
 *
 * Parser: a stream of every op gives the same callbacks (and the same PUT
 * bytes in their destinations) fed all at once, byte at a time, in every
 * two-piece split, and through the direct-read path; each kind of malformed
 * frame gets exactly one on_error and nothing after it.
 *
 * Server (a loop thread, clients with blocking sockets on 127.0.0.1 and a
 * UNIX socket): HELLO refusals (random seed, wrong --hash-seed, missing
 * token, requests before HELLO), PUT/GET/MATCH round trips with pipelining,
 * the arena passed over the UNIX socket (SHM GET offsets read from the
 * mapping), a PUT cut short giving its slots back, a closed connection
 * dropping its leases, and a malformed frame answered then closed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "kvcache/kvproto.h"
#include "kvcache/server.h"
#include "leak_check.h"

/* ------------------------------------------------------ frame builder -- */

static void put_hdr(brix_buf_t *b, uint8_t op, uint8_t flags, uint32_t id, uint32_t count,
                    uint64_t body_len)
{
    brixkv_hdr_t h = { BRIXKV_MAGIC, op, flags, 0, id, count, body_len };
    assert_int_equal(brix_buf_append(b, &h, sizeof h), 0);
}

static void key_of(uint8_t k[16], uint64_t id)
{
    memset(k, 0, 16);
    memcpy(k, &id, sizeof id);
}

static const char *g_hello_model; /* NULL: "llama" */

static void hello(brix_buf_t *b, uint32_t id, uint64_t seed, int det, uint16_t flags,
                  const char *token)
{
    const char *model = g_hello_model ? g_hello_model : "llama", *dtype = "bf16",
               *layout = "paged-16", *client = "test";
    brixkv_hello_t h = { 0 };
    h.version = BRIXKV_VERSION;
    h.flags = flags;
    h.tp_size = 1;
    h.hash_seed = seed;
    h.seed_deterministic = (uint8_t)det;
    h.token_len = (uint8_t)(token ? strlen(token) : 0);
    h.model_len = (uint16_t)strlen(model);
    h.dtype_len = (uint16_t)strlen(dtype);
    h.layout_len = (uint16_t)strlen(layout);
    h.client_len = (uint16_t)strlen(client);
    uint64_t len = sizeof h + h.model_len + h.dtype_len + h.layout_len + h.client_len + h.token_len;
    put_hdr(b, BRIXKV_OP_HELLO, 0, id, 0, len);
    brix_buf_append(b, &h, sizeof h);
    brix_buf_append_str(b, model);
    brix_buf_append_str(b, dtype);
    brix_buf_append_str(b, layout);
    brix_buf_append_str(b, client);
    if (token)
        brix_buf_append_str(b, token);
}

static void keys_frame(brix_buf_t *b, uint8_t op, uint8_t flags, uint32_t id, const uint64_t *ids,
                       uint32_t n)
{
    put_hdr(b, op, flags, id, n, (uint64_t)n * 16);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t k[16];
        key_of(k, ids[i]);
        brix_buf_append(b, k, 16);
    }
}

static uint8_t val_byte(uint64_t id, size_t i)
{
    return (uint8_t)(id * 31 + i * 7);
}

static void put_frame(brix_buf_t *b, uint32_t id, const uint64_t *ids, const uint32_t *lens,
                      uint32_t n)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += lens[i];
    put_hdr(b, BRIXKV_OP_PUT, 0, id, n, n * sizeof(brixkv_put_desc_t) + sum);
    for (uint32_t i = 0; i < n; i++) {
        brixkv_put_desc_t d = { .len = lens[i] };
        key_of(d.key, ids[i]);
        brix_buf_append(b, &d, sizeof d);
    }
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < lens[i]; j++)
            brix_buf_append_char(b, (char)val_byte(ids[i], j));
}

/* ---------------------------------------------------------- recorder -- */

typedef struct rec {
    brix_buf_t log;
    uint8_t dest[4][8192]; /* PUT destinations (value 1 of each PUT is dropped) */
    int stop_at;           /* frame number whose callback returns -1 (0: never) */
    int frames;
    int errors;
} rec_t;

static int rec_frame(void *ud, const brixkv_hdr_t *h, const uint8_t *body)
{
    rec_t *r = ud;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < h->body_len; i++)
        sum = sum * 131 + body[i];
    brix_buf_printf(&r->log, "F op=%u id=%u n=%u len=%llu sum=%llx\n", h->op, h->id, h->count,
                    (unsigned long long)h->body_len, (unsigned long long)sum);
    return ++r->frames == r->stop_at ? -1 : 0;
}

static int rec_put(void *ud, const brixkv_hdr_t *h, const brixkv_put_desc_t *d, uint8_t **dest)
{
    rec_t *r = ud;
    brix_buf_printf(&r->log, "P id=%u n=%u", h->id, h->count);
    for (uint32_t i = 0; i < h->count; i++) {
        brix_buf_printf(&r->log, " %u", d[i].len);
        memset(r->dest[i], 0, sizeof r->dest[i]);
        dest[i] = i == 1 || i >= 4 ? NULL : r->dest[i];
    }
    brix_buf_append_str(&r->log, "\n");
    return 0;
}

static int rec_put_done(void *ud, const brixkv_hdr_t *h)
{
    rec_t *r = ud;
    uint64_t sum = 0;
    for (int i = 0; i < 4; i++)
        for (size_t j = 0; j < sizeof r->dest[i]; j++)
            sum = sum * 131 + r->dest[i][j];
    brix_buf_printf(&r->log, "D id=%u sum=%llx\n", h->id, (unsigned long long)sum);
    return ++r->frames == r->stop_at ? -1 : 0;
}

static void rec_error(void *ud, const brixkv_hdr_t *h, uint16_t st, const char *msg)
{
    rec_t *r = ud;
    r->errors++;
    brix_buf_printf(&r->log, "E op=%u st=%u %s\n", h->op, st, msg);
}

static const brix_kvp_limits_t test_lim = { .max_batch = 8,
                                            .max_frame = 100000,
                                            .max_string = 1024 };

static void parser_new(brix_kvp_t *p, rec_t *r)
{
    brix_kvp_cb_t cb = { rec_frame, rec_put, rec_put_done, rec_error, NULL };
    brix_kvp_init(p, &test_lim, &cb, r);
}

static void sample_stream(brix_buf_t *b)
{
    hello(b, 1, 7, 1, 0, "tok");
    uint64_t k3[] = { 1, 2, 3 };
    keys_frame(b, BRIXKV_OP_MATCH, 0, 2, k3, 3);
    uint64_t ids[] = { 10, 11, 12 };
    uint32_t lens[] = { 5000, 300, 1 };
    put_frame(b, 3, ids, lens, 3);
    keys_frame(b, BRIXKV_OP_GET, BRIXKV_F_SHM, 4, k3, 2);
    put_hdr(b, BRIXKV_OP_PIN, 0, 5, 1, 8 + 16);
    brixkv_pin_t pin = { 30, 0 };
    brix_buf_append(b, &pin, sizeof pin);
    brix_buf_append(b, "0123456789abcdef", 16);
    put_hdr(b, BRIXKV_OP_RELEASE, BRIXKV_F_NOREPLY, 6, 2, 16);
    brix_buf_append(b, "leaseid1leaseid2", 16);
    put_hdr(b, BRIXKV_OP_STATS, 0, 7, 0, 0);
    uint32_t zero[] = { 0 };
    put_frame(b, 8, ids, zero, 1); /* an empty value */
    put_frame(b, 9, ids, lens, 0); /* an empty PUT */
    keys_frame(b, BRIXKV_OP_DELETE, 0, 10, ids, 0);
    put_hdr(b, BRIXKV_OP_PING, 0, 11, 0, 0);
}

static void run_split(const brix_buf_t *in, size_t cut, size_t step, brix_buf_t *out)
{
    rec_t *r = calloc(1, sizeof *r);
    brix_kvp_t p;
    parser_new(&p, r);
    size_t off = 0;
    if (cut) {
        assert_int_equal(brix_kvp_feed(&p, (const uint8_t *)in->data, cut), 0);
        off = cut;
    }
    while (off < in->len) {
        size_t n = step && step < in->len - off ? step : in->len - off;
        assert_int_equal(brix_kvp_feed(&p, (const uint8_t *)in->data + off, n), 0);
        off += n;
    }
    assert_int_equal(p.state, BRIX_KVP_HDR);
    brix_buf_append(out, r->log.data, r->log.len);
    brix_buf_free(&r->log);
    brix_kvp_free(&p);
    free(r);
}

static void test_any_split(void **state)
{
    (void)state;
    brix_buf_t in = BRIX_BUF_INIT, whole = BRIX_BUF_INIT;
    sample_stream(&in);
    run_split(&in, 0, 0, &whole);
    /* every frame was seen, the PUT's kept values arrived intact */
    assert_non_null(strstr(whole.data, "F op=1 id=1"));
    assert_non_null(strstr(whole.data, "P id=3 n=3 5000 300 1"));
    assert_non_null(strstr(whole.data, "F op=9 id=11"));
    assert_null(strstr(whole.data, "E "));
    brix_buf_t got = BRIX_BUF_INIT;
    run_split(&in, 0, 1, &got); /* byte at a time */
    assert_string_equal(got.data, whole.data);
    for (size_t cut = 1; cut < in.len; cut += 3) {
        brix_buf_reset(&got);
        run_split(&in, cut, 0, &got);
        assert_string_equal(got.data, whole.data);
    }
    brix_buf_reset(&got);
    run_split(&in, 0, 4093, &got);
    assert_string_equal(got.data, whole.data);
    brix_buf_free(&got);
    brix_buf_free(&whole);
    brix_buf_free(&in);
}

/* Reading a value's bytes straight into its destination, as the server
 * does, gives what feeding them gives. */
static void test_direct(void **state)
{
    (void)state;
    brix_buf_t in = BRIX_BUF_INIT, whole = BRIX_BUF_INIT;
    sample_stream(&in);
    run_split(&in, 0, 0, &whole);
    rec_t *r = calloc(1, sizeof *r);
    brix_kvp_t p;
    parser_new(&p, r);
    size_t off = 0, direct = 0;
    while (off < in.len) {
        uint8_t *dst;
        size_t len;
        if (brix_kvp_direct(&p, &dst, &len)) {
            size_t n = len > 1000 ? 1000 : len; /* a short read */
            if (n > in.len - off)
                n = in.len - off;
            memcpy(dst, in.data + off, n);
            assert_int_equal(brix_kvp_direct_done(&p, n), 0);
            off += n;
            direct += n;
        } else {
            size_t n = in.len - off < 50 ? in.len - off : 50;
            assert_int_equal(brix_kvp_feed(&p, (const uint8_t *)in.data + off, n), 0);
            off += n;
        }
    }
    assert_true(direct > 4000);
    assert_string_equal(r->log.data, whole.data);
    brix_buf_free(&r->log);
    brix_kvp_free(&p);
    free(r);
    brix_buf_free(&whole);
    brix_buf_free(&in);
}

static void expect_error(brix_buf_t *in, const char *what)
{
    for (int step = 0; step < 2; step++) {
        rec_t *r = calloc(1, sizeof *r);
        brix_kvp_t p;
        parser_new(&p, r);
        int rc = 0;
        for (size_t off = 0; off < in->len && rc == 0;) {
            size_t n = step ? 1 : in->len;
            rc = brix_kvp_feed(&p, (const uint8_t *)in->data + off, n);
            off += n;
        }
        assert_int_equal(rc, -1);
        assert_int_equal(r->errors, 1);
        if (!strstr(r->log.data, what))
            fail_msg("want '%s' in: %s", what, r->log.data);
        /* nothing more is parsed */
        brix_buf_t more = BRIX_BUF_INIT;
        put_hdr(&more, BRIXKV_OP_PING, 0, 99, 0, 0);
        assert_int_equal(brix_kvp_feed(&p, (const uint8_t *)more.data, more.len), -1);
        assert_null(strstr(r->log.data, "id=99"));
        brix_buf_free(&more);
        brix_buf_free(&r->log);
        brix_kvp_free(&p);
        free(r);
    }
    brix_buf_reset(in);
}

static void test_malformed(void **state)
{
    (void)state;
    brix_buf_t b = BRIX_BUF_INIT;
    put_hdr(&b, BRIXKV_OP_PING, 0, 1, 0, 0);
    ((brixkv_hdr_t *)b.data)->magic = 0x12345678;
    expect_error(&b, "bad magic");
    put_hdr(&b, 77, 0, 1, 0, 0);
    expect_error(&b, "unknown op 77");
    uint64_t ids[9] = { 0 };
    keys_frame(&b, BRIXKV_OP_GET, 0, 1, ids, 9);
    expect_error(&b, "over the limit (--max-batch 8)");
    put_hdr(&b, BRIXKV_OP_GET, 0, 1, 2, 31);
    expect_error(&b, "does not match");
    put_hdr(&b, BRIXKV_OP_PUT, 0, 1, 1, 200000);
    expect_error(&b, "--max-frame");
    put_hdr(&b, BRIXKV_OP_PUT, 0, 1, 2, 24);
    expect_error(&b, "shorter than its descriptors");
    uint32_t lens[] = { 10 };
    put_frame(&b, 1, ids, lens, 1);
    ((brixkv_hdr_t *)b.data)->body_len -= 1;
    b.len -= 1;
    expect_error(&b, "does not match its descriptors");
    hello(&b, 1, 1, 1, 0, NULL);
    ((brixkv_hello_t *)(b.data + sizeof(brixkv_hdr_t)))->model_len += 1;
    expect_error(&b, "string lengths");
    put_hdr(&b, BRIXKV_OP_HELLO, 0, 1, 0, 10);
    expect_error(&b, "HELLO");
    put_hdr(&b, BRIXKV_OP_STATS, 0, 1, 1, 16);
    expect_error(&b, "take no keys");
    brix_buf_free(&b);

    /* a callback that refuses stops the parser too */
    rec_t *r = calloc(1, sizeof *r);
    r->stop_at = 2;
    brix_kvp_t p;
    parser_new(&p, r);
    sample_stream(&b);
    assert_int_equal(brix_kvp_feed(&p, (const uint8_t *)b.data, b.len), -1);
    assert_int_equal(r->frames, 2);
    assert_int_equal(p.state, BRIX_KVP_ERROR);
    brix_buf_free(&r->log);
    brix_kvp_free(&p);
    free(r);
    brix_buf_free(&b);
}

/* ------------------------------------------------------------ server -- */

typedef struct srv_env {
    uv_loop_t loop;
    uv_async_t stop;
    brix_kvsrv_t *srv;
    pthread_t th;
    char unix_path[108];
    char token[64];
} srv_env_t;

static void on_stop(uv_async_t *a)
{
    srv_env_t *e = a->data;
    uv_close((uv_handle_t *)a, NULL);
    brix_kvsrv_stop(e->srv);
}

static void *loop_main(void *arg)
{
    srv_env_t *e = arg;
    uv_run(&e->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Set by a test before srv_start: changes the node's configuration. */
static void (*g_cfg_hook)(brix_kvsrv_cfg_t *c);
static char g_start_err[256];
static int g_start_rc;
static bool g_start_may_fail;

static srv_env_t *srv_start(const char *hash_seed, const char *token, uint64_t capacity)
{
    srv_env_t *e = calloc(1, sizeof *e);
    uv_loop_init(&e->loop);
    snprintf(e->unix_path, sizeof e->unix_path, "/tmp/brix-kvtest-%d.sock", (int)getpid());
    brix_kvsrv_cfg_t c = {
        .listen = "127.0.0.1:0",
        .unix_path = e->unix_path,
        .http_port = -1,
        .capacity = capacity,
        .high_watermark = 0.95,
        .low_watermark = 0.9,
        .eviction = "lru",
        .eviction_order = "prefix",
        .lease_ms = 60000,
        .max_leases = 1000,
        .max_pin_ms = 60000,
        .max_pinned_fraction = 0.5,
        .max_batch = 64,
        .max_frame = 64 << 20,
        .max_connections = 16,
        .max_pending = 64 << 20,
        .frame_timeout_ms = 500,
        .max_namespaces = 4,
        .hash_seed = (char *)hash_seed,
        .no_hugepages = true,
    };
    if (g_cfg_hook)
        g_cfg_hook(&c);
    char err[256];
    int rc = brix_kvsrv_start(&e->loop, &c, token, &e->srv, err, sizeof err);
    if (rc && g_start_may_fail) {
        g_start_rc = rc;
        snprintf(g_start_err, sizeof g_start_err, "%s", err);
        uv_loop_close(&e->loop);
        free(e);
        return NULL;
    }
    if (rc)
        fail_msg("start: %s", err);
    uv_async_init(&e->loop, &e->stop, on_stop);
    e->stop.data = e;
    pthread_create(&e->th, NULL, loop_main, e);
    return e;
}

static void srv_stop(srv_env_t *e)
{
    uv_async_send(&e->stop);
    pthread_join(e->th, NULL);
    brix_kvsrv_free(e->srv);
    uv_loop_close(&e->loop);
    free(e);
}

static int tcp_connect(srv_env_t *e)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(brix_kvsrv_port(e->srv)) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int unix_connect(srv_env_t *e)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s", e->unix_path);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const brix_buf_t *b)
{
    for (size_t off = 0; off < b->len;) {
        ssize_t n = send(fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        assert_true(n > 0);
        off += (size_t)n;
    }
}

static bool recv_all(int fd, void *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t r = recv(fd, (char *)p + off, n - off, 0);
        if (r <= 0)
            return false;
        off += (size_t)r;
    }
    return true;
}

/* Reads one reply: header, then body into *body (malloc'd, caller frees). */
static brixkv_hdr_t reply(int fd, uint8_t **body)
{
    brixkv_hdr_t h;
    assert_true(recv_all(fd, &h, sizeof h));
    assert_int_equal(h.magic, BRIXKV_MAGIC);
    *body = malloc(h.body_len + 1);
    assert_true(recv_all(fd, *body, h.body_len));
    (*body)[h.body_len] = 0;
    return h;
}

static bool closed(int fd)
{
    char c;
    return recv(fd, &c, 1, 0) == 0;
}

static brixkv_entry_t entry(const uint8_t *body, uint32_t i)
{
    brixkv_entry_t e;
    memcpy(&e, body + i * sizeof e, sizeof e);
    return e;
}

static void test_server_hello(void **state)
{
    (void)state;
    srv_env_t *e = srv_start("7", "s3cret-token", 32 << 20);
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    struct {
        uint64_t seed;
        int det;
        const char *token;
        uint16_t st;
        const char *msg;
    } cases[] = {
        { 7, 0, "s3cret-token", BRIXKV_ST_NAMESPACE, "not deterministic" },
        { 8, 1, "s3cret-token", BRIXKV_ST_NAMESPACE, "--hash-seed 7" },
        { 7, 1, NULL, BRIXKV_ST_DENIED, "needs a token" },
        { 7, 1, "s3cret-tokeN", BRIXKV_ST_DENIED, "wrong token" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int fd = tcp_connect(e);
        brix_buf_reset(&b);
        hello(&b, 5, cases[i].seed, cases[i].det, 0, cases[i].token);
        send_all(fd, &b);
        brixkv_hdr_t h = reply(fd, &body);
        assert_int_equal(h.status, cases[i].st);
        assert_int_equal(h.id, 5);
        if (!strstr((char *)body, cases[i].msg))
            fail_msg("case %zu: %s", i, body);
        free(body);
        assert_true(closed(fd));
        close(fd);
    }
    /* a control byte in a name (log injection, NUL-truncated namespaces) */
    int fdc = tcp_connect(e);
    brix_buf_reset(&b);
    hello(&b, 5, 7, 1, 0, "s3cret-token");
    b.data[sizeof(brixkv_hdr_t) + sizeof(brixkv_hello_t) + 2] = '\n';
    send_all(fdc, &b);
    brixkv_hdr_t hc = reply(fdc, &body);
    assert_int_equal(hc.status, BRIXKV_ST_BAD_REQUEST);
    assert_non_null(strstr((char *)body, "control bytes"));
    free(body);
    assert_true(closed(fdc));
    close(fdc);
    /* a request before HELLO */
    int fd = tcp_connect(e);
    brix_buf_reset(&b);
    put_hdr(&b, BRIXKV_OP_PING, 0, 3, 0, 0);
    send_all(fd, &b);
    brixkv_hdr_t h = reply(fd, &body);
    assert_int_equal(h.status, BRIXKV_ST_NAMESPACE);
    free(body);
    assert_true(closed(fd));
    close(fd);
    /* the right one, then a ping; SHM asked over TCP is simply not given */
    fd = tcp_connect(e);
    brix_buf_reset(&b);
    hello(&b, 1, 7, 1, BRIXKV_HELLO_SHM, "s3cret-token");
    put_hdr(&b, BRIXKV_OP_PING, 0, 2, 0, 0);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.status, BRIXKV_ST_OK);
    brixkv_hello_reply_t hr;
    memcpy(&hr, body, sizeof hr);
    assert_int_equal(hr.flags, 0);
    assert_int_equal(hr.ns_id, 1);
    assert_int_equal(hr.max_batch, 64);
    assert_int_equal(hr.unix_len, strlen(e->unix_path));
    assert_memory_equal(body + sizeof hr, e->unix_path, hr.unix_len);
    free(body);
    h = reply(fd, &body);
    assert_int_equal(h.id, 2);
    free(body);
    close(fd);
    brix_buf_free(&b);
    srv_stop(e);
}

static void test_server_data(void **state)
{
    (void)state;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    int fd = tcp_connect(e);
    /* HELLO + PUT + MATCH + GET + STATS pipelined in one send */
    hello(&b, 1, 42, 1, 0, NULL);
    uint64_t ids[] = { 100, 101, 102 };
    uint32_t lens[] = { 2 << 20, 4096, 70000 };
    put_frame(&b, 2, ids, lens, 3);
    uint64_t m[] = { 100, 101, 555, 102 };
    keys_frame(&b, BRIXKV_OP_MATCH, 0, 3, m, 4);
    keys_frame(&b, BRIXKV_OP_GET, 0, 4, m, 4);
    put_frame(&b, 5, ids, lens, 1); /* again: EXISTS */
    put_hdr(&b, BRIXKV_OP_STATS, 0, 6, 0, 0);
    send_all(fd, &b);
    brixkv_hdr_t h = reply(fd, &body);
    assert_int_equal(h.status, 0);
    free(body);
    h = reply(fd, &body);
    assert_int_equal(h.id, 2);
    assert_int_equal(h.count, 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(entry(body, i).status, BRIXKV_ST_OK);
    free(body);
    h = reply(fd, &body);
    assert_int_equal(h.op, BRIXKV_OP_MATCH);
    assert_int_equal(h.count, 2);
    free(body);
    h = reply(fd, &body);
    assert_int_equal(h.op, BRIXKV_OP_GET);
    assert_int_equal(h.count, 4);
    const uint8_t *pay = body + 4 * sizeof(brixkv_entry_t);
    uint32_t want_len[] = { 2 << 20, 4096, 0, 70000 };
    for (uint32_t i = 0; i < 4; i++) {
        brixkv_entry_t en = entry(body, i);
        if (i == 2) {
            assert_int_equal(en.status, BRIXKV_ST_NOT_FOUND);
            continue;
        }
        assert_int_equal(en.status, BRIXKV_ST_OK);
        assert_int_equal(en.len, want_len[i]);
        for (uint32_t j = 0; j < en.len; j += 997)
            assert_int_equal(pay[j], val_byte(m[i], j));
        pay += en.len;
    }
    assert_int_equal(pay - body, h.body_len);
    free(body);
    h = reply(fd, &body);
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_EXISTS);
    free(body);
    h = reply(fd, &body);
    brixkv_stats_wire_t st;
    memcpy(&st, body, sizeof st);
    assert_int_equal(st.objects, 3);
    assert_int_equal(st.puts, 3);
    assert_int_equal(st.put_exists, 1);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.misses, 1);
    free(body);

    /* a PUT cut short: its slots come back (reserved bytes return to 0) */
    int fd2 = tcp_connect(e);
    brix_buf_reset(&b);
    hello(&b, 1, 42, 1, 0, NULL);
    uint64_t big[] = { 900, 901 };
    uint32_t blens[] = { 1 << 20, 1 << 20 };
    put_frame(&b, 2, big, blens, 2);
    b.len -= (1 << 20) + 1000; /* the second value never arrives */
    send_all(fd2, &b);
    h = reply(fd2, &body);
    free(body);
    usleep(100000);
    close(fd2);
    usleep(100000);
    brix_buf_reset(&b);
    uint64_t q[] = { 900 };
    keys_frame(&b, BRIXKV_OP_MATCH, 0, 7, q, 1);
    put_hdr(&b, BRIXKV_OP_STATS, 0, 8, 0, 0);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.count, 0); /* never stored */
    free(body);
    h = reply(fd, &body);
    memcpy(&st, body, sizeof st);
    assert_int_equal(st.objects, 3);
    assert_int_equal(st.used_bytes, (2 << 20) + 4096 + 80 * 1024);
    free(body);

    /* a request stalled midway is closed after --frame-timeout; an idle
     * connection between requests is not */
    int fd3 = tcp_connect(e);
    brix_buf_reset(&b);
    hello(&b, 1, 42, 1, 0, NULL);
    put_frame(&b, 2, big, blens, 2);
    b.len -= 1000;
    send_all(fd3, &b);
    h = reply(fd3, &body);
    free(body);
    assert_true(closed(fd3)); /* within the 10 s receive timeout */
    close(fd3);
    usleep(700000); /* fd sat idle meanwhile */
    brix_buf_reset(&b);
    put_hdr(&b, BRIXKV_OP_PING, 0, 77, 0, 0);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.id, 77);
    free(body);

    /* a client that stops reading its GET replies: closed after
     * --frame-timeout, and its references go with it (DELETE was BUSY) */
    int fd4 = tcp_connect(e);
    int small = 4096;
    setsockopt(fd4, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    brix_buf_reset(&b);
    hello(&b, 1, 42, 1, 0, NULL);
    uint64_t k100[] = { 100 };
    for (int i = 0; i < 40; i++)
        keys_frame(&b, BRIXKV_OP_GET, 0, (uint32_t)(10 + i), k100, 1);
    send_all(fd4, &b);
    /* the HELLO reply's head: the GETs (in the same segment) were handled
     * and most of their 80 MiB of replies wait on the socket */
    brixkv_hdr_t h4;
    assert_true(recv_all(fd4, &h4, sizeof h4));
    brix_buf_reset(&b);
    keys_frame(&b, BRIXKV_OP_DELETE, 0, 78, k100, 1);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_BUSY);
    free(body);
    int ok = 0;
    for (int i = 0; i < 50 && !ok; i++) {
        usleep(100000);
        send_all(fd, &b);
        h = reply(fd, &body);
        ok = entry(body, 0).status == BRIXKV_ST_OK;
        free(body);
    }
    assert_true(ok);
    close(fd4);

    /* a malformed frame: an error reply, then the connection closes */
    brix_buf_reset(&b);
    put_hdr(&b, BRIXKV_OP_GET, 0, 9, 1, 15);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.status, BRIXKV_ST_BAD_REQUEST);
    assert_int_equal(h.count, 0);
    assert_non_null(strstr((char *)body, "does not match"));
    free(body);
    assert_true(closed(fd));
    close(fd);
    brix_buf_free(&b);
    srv_stop(e);
}

static void test_server_shm(void **state)
{
    (void)state;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    int fd = unix_connect(e);
    hello(&b, 1, 42, 1, BRIXKV_HELLO_SHM, NULL);
    uint64_t ids[] = { 7, 8 };
    uint32_t lens[] = { 300000, 5 };
    put_frame(&b, 2, ids, lens, 2);
    send_all(fd, &b);
    /* the reply's first byte carries the memfd */
    uint8_t rbuf[sizeof(brixkv_hdr_t) + sizeof(brixkv_hello_reply_t) + 108];
    struct iovec iov = { rbuf, sizeof(brixkv_hdr_t) };
    union {
        struct cmsghdr h;
        char c[CMSG_SPACE(sizeof(int))];
    } cm;
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.c, .msg_controllen = sizeof cm.c
    };
    assert_int_equal(recvmsg(fd, &mh, 0), sizeof(brixkv_hdr_t));
    struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
    assert_non_null(ch);
    assert_int_equal(ch->cmsg_type, SCM_RIGHTS);
    int mfd;
    memcpy(&mfd, CMSG_DATA(ch), sizeof mfd);
    brixkv_hdr_t h;
    memcpy(&h, rbuf, sizeof h);
    brixkv_hello_reply_t hr;
    assert_true(recv_all(fd, &hr, sizeof hr));
    assert_int_equal(hr.flags, BRIXKV_HELLO_SHM);
    char path[108] = "";
    assert_true(recv_all(fd, path, hr.unix_len));
    uint8_t *map = mmap(NULL, hr.arena_bytes, PROT_READ, MAP_SHARED, mfd, 0);
    assert_true(map != MAP_FAILED);
    /* read-only for us: no shrinking it under the node (SIGBUS), no
     * writable mapping, no write (rewriting other namespaces' values) */
    assert_int_equal(ftruncate(mfd, 0), -1);
    assert_int_equal(errno, EPERM);
    assert_true(mmap(NULL, hr.arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0) ==
                MAP_FAILED);
    assert_int_equal(pwrite(mfd, "EVIL", 4, 0), -1);
    h = reply(fd, &body); /* PUT */
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_OK);
    free(body);
    brix_buf_reset(&b);
    uint64_t g[] = { 7, 9, 8 };
    keys_frame(&b, BRIXKV_OP_GET, BRIXKV_F_SHM, 3, g, 3);
    put_hdr(&b, BRIXKV_OP_STATS, 0, 4, 0, 0);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.body_len, 3 * sizeof(brixkv_entry_t)); /* no payload */
    brixkv_entry_t e0 = entry(body, 0), e1 = entry(body, 1), e2 = entry(body, 2);
    free(body);
    assert_int_equal(e0.status, BRIXKV_ST_OK);
    assert_int_equal(e1.status, BRIXKV_ST_NOT_FOUND);
    assert_int_equal(e2.status, BRIXKV_ST_OK);
    assert_int_equal(e0.len, 300000);
    for (uint32_t j = 0; j < e0.len; j += 101)
        assert_int_equal(map[e0.offset + j], val_byte(7, j));
    uint32_t gen;
    memcpy(&gen, map + e0.gen_off, sizeof gen);
    assert_int_equal(gen, e0.gen);
    assert_true(e0.lease && e2.lease && e0.lease != e2.lease);
    h = reply(fd, &body);
    brixkv_stats_wire_t st;
    memcpy(&st, body, sizeof st);
    assert_int_equal(st.leases_active, 2);
    free(body);
    /* a leased object is BUSY for DELETE; release one lease (NOREPLY), then
     * close: the other lease ends with the connection */
    brix_buf_reset(&b);
    put_hdr(&b, BRIXKV_OP_RELEASE, BRIXKV_F_NOREPLY, 5, 1, 8);
    brix_buf_append(&b, &e2.lease, 8);
    keys_frame(&b, BRIXKV_OP_DELETE, 0, 6, g, 1);
    put_hdr(&b, BRIXKV_OP_STATS, 0, 7, 0, 0);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.id, 6); /* no reply to the RELEASE */
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_BUSY);
    free(body);
    h = reply(fd, &body);
    memcpy(&st, body, sizeof st);
    assert_int_equal(st.leases_active, 1);
    free(body);
    close(fd);
    munmap(map, hr.arena_bytes);
    close(mfd);
    usleep(100000);
    fd = tcp_connect(e);
    brix_buf_reset(&b);
    hello(&b, 1, 42, 1, 0, NULL);
    keys_frame(&b, BRIXKV_OP_DELETE, 0, 2, g, 1);
    put_hdr(&b, BRIXKV_OP_STATS, 0, 3, 0, 0);
    send_all(fd, &b);
    h = reply(fd, &body);
    free(body);
    h = reply(fd, &body);
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_OK);
    free(body);
    h = reply(fd, &body);
    memcpy(&st, body, sizeof st);
    assert_int_equal(st.leases_active, 0);
    /* GET with F_SHM on a TCP connection is refused */
    free(body);
    brix_buf_reset(&b);
    keys_frame(&b, BRIXKV_OP_GET, BRIXKV_F_SHM, 4, g, 1);
    send_all(fd, &b);
    h = reply(fd, &body);
    assert_int_equal(h.status, BRIXKV_ST_BAD_REQUEST);
    free(body);
    close(fd);
    brix_buf_free(&b);
    srv_stop(e);
}

/* ---------------------------------------------------- abuse limits -- */

static void cfg_trickle(brix_kvsrv_cfg_t *c)
{
    c->frame_timeout_ms = 500;
    c->min_rate = 1u << 30; /* a 28 MiB frame: about 530 ms */
}

static void put_hello(int fd)
{
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    hello(&b, 1, 42, 1, 0, NULL);
    send_all(fd, &b);
    brixkv_hdr_t h = reply(fd, &body);
    assert_int_equal(h.status, BRIXKV_ST_OK);
    free(body);
    brix_buf_free(&b);
}

/* A PUT takes a slot per value only as that value's bytes arrive: a client
 * that announces 28 MiB of values and sends one byte evicts nothing (before,
 * every slot was reserved, and the cache evicted, at the descriptors). And
 * trickling a byte at a time, each within --frame-timeout, does not keep the
 * frame open past its deadline at --min-rate. */
static void test_server_put_trickle(void **state)
{
    (void)state;
    g_cfg_hook = cfg_trickle;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20); /* 8 slabs of 4 MiB */
    g_cfg_hook = NULL;
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    int a = tcp_connect(e);
    put_hello(a);
    /* four values of the attacker's own class (4 MiB): its reservations
     * would take the 4 free slabs, then evict these */
    uint64_t ids[4] = { 1, 2, 3, 4 };
    uint32_t lens[4];
    for (int i = 0; i < 4; i++)
        lens[i] = 4u << 20;
    put_frame(&b, 2, ids, lens, 4);
    send_all(a, &b);
    brixkv_hdr_t h = reply(a, &body);
    if (h.status || h.count != 4)
        fail_msg("PUT: status %u count %u: %s", h.status, h.count, (char *)body);
    for (int i = 0; i < 4; i++)
        assert_int_equal(entry(body, (uint32_t)i).status, BRIXKV_ST_OK);
    free(body);

    int t = tcp_connect(e);
    put_hello(t);
    enum { NV = 7 };
    brix_buf_reset(&b);
    put_hdr(&b, BRIXKV_OP_PUT, 0, 2, NV, NV * (sizeof(brixkv_put_desc_t) + (4u << 20)));
    for (uint32_t i = 0; i < NV; i++) {
        brixkv_put_desc_t d = { .len = 4u << 20 };
        key_of(d.key, 100 + i);
        brix_buf_append(&b, &d, sizeof d);
    }
    brix_buf_append_char(&b, 'x');
    send_all(t, &b);
    usleep(200 * 1000); /* the node has read it */
    brix_buf_reset(&b);
    keys_frame(&b, BRIXKV_OP_MATCH, 0, 3, ids, 4);
    send_all(a, &b);
    h = reply(a, &body);
    assert_int_equal(h.count, 4); /* all four still stored */
    free(body);
    /* a byte every 100 ms: never a 500 ms stall, yet closed by the deadline */
    bool shut = false;
    int i = 0;
    for (; i < 100 && !shut; i++) {
        usleep(100 * 1000);
        if (send(t, "x", 1, MSG_NOSIGNAL) != 1) {
            shut = true;
            break;
        }
        struct pollfd pf = { .fd = t, .events = POLLIN };
        if (poll(&pf, 1, 0) == 1) {
            uint8_t junk[256];
            shut = recv(t, junk, sizeof junk, MSG_DONTWAIT) <= 0;
        }
    }
    if (!shut)
        fail_msg("a PUT trickled for %d00 ms is still open", i);
    close(t);
    close(a);
    brix_buf_free(&b);
    srv_stop(e);
}

static void cfg_hello_timeout(brix_kvsrv_cfg_t *c)
{
    c->hello_timeout_ms = 300;
}

static void cfg_idle_timeout(brix_kvsrv_cfg_t *c)
{
    c->hello_timeout_ms = 300;
    c->idle_timeout_ms = 400;
}

/* A connection that never says HELLO (it has no token) gives its place
 * back after --hello-timeout, over TCP and UNIX; one that did is kept, until
 * --idle-timeout when that is set. */
static void test_server_hello_timeout(void **state)
{
    (void)state;
    g_cfg_hook = cfg_hello_timeout;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    g_cfg_hook = NULL;
    int silent = tcp_connect(e), usilent = unix_connect(e), ok = tcp_connect(e);
    put_hello(ok);
    assert_true(closed(silent)); /* EOF: before the 10 s receive timeout */
    assert_true(closed(usilent));
    usleep(400 * 1000);
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    put_hdr(&b, BRIXKV_OP_PING, 0, 9, 0, 0);
    send_all(ok, &b);
    brixkv_hdr_t h = reply(ok, &body);
    assert_int_equal(h.id, 9);
    free(body);
    close(silent);
    close(usilent);
    close(ok);
    srv_stop(e);

    g_cfg_hook = cfg_idle_timeout;
    e = srv_start(NULL, NULL, 32 << 20);
    g_cfg_hook = NULL;
    int idle = tcp_connect(e);
    put_hello(idle);
    assert_true(closed(idle));
    close(idle);
    brix_buf_free(&b);
    srv_stop(e);
}

static void cfg_small_frame(brix_kvsrv_cfg_t *c)
{
    c->max_frame = 1u << 20; /* below one 4 MiB value */
}

static void cfg_unix_file(brix_kvsrv_cfg_t *c)
{
    static char path[108];
    snprintf(path, sizeof path, "/tmp/brix-kvtest-%d.file", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs("keep me\n", f);
    fclose(f);
    c->unix_path = path;
}

/* Start refuses a --max-frame a valid PUT of the largest value would
 * overflow, and a --unix naming something that is not a socket (it was
 * unlinked); the HELLO reply tells clients the node's max frame. */
static void test_server_limits(void **state)
{
    (void)state;
    g_start_may_fail = true;
    g_cfg_hook = cfg_small_frame;
    assert_null(srv_start(NULL, NULL, 32 << 20));
    assert_int_equal(g_start_rc, -EINVAL);
    assert_non_null(strstr(g_start_err, "--max-frame"));
    g_cfg_hook = cfg_unix_file;
    assert_null(srv_start(NULL, NULL, 32 << 20));
    assert_non_null(strstr(g_start_err, "not a socket"));
    char path[108];
    snprintf(path, sizeof path, "/tmp/brix-kvtest-%d.file", (int)getpid());
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    unlink(path);
    g_cfg_hook = NULL;
    g_start_may_fail = false;

    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    int fd = tcp_connect(e);
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    hello(&b, 1, 42, 1, 0, NULL);
    send_all(fd, &b);
    brixkv_hdr_t h = reply(fd, &body);
    assert_int_equal(h.status, BRIXKV_ST_OK);
    brixkv_hello_reply_t hr;
    memcpy(&hr, body, sizeof hr);
    assert_int_equal(hr.max_frame_kib, (64u << 20) / 1024);
    free(body);
    close(fd);
    brix_buf_free(&b);
    srv_stop(e);
}

/* HELLO of model `model` on a fresh TCP connection: the reply status. A
 * refusal is retried for up to 2 s (the node sees an earlier close late). */
static uint16_t hello_model(srv_env_t *e, const char *model, int *fdp)
{
    for (int tries = 0;; tries++) {
        int fd = tcp_connect(e);
        brix_buf_t b = BRIX_BUF_INIT;
        uint8_t *body;
        g_hello_model = model;
        hello(&b, 1, 42, 1, 0, NULL);
        g_hello_model = NULL;
        send_all(fd, &b);
        brix_buf_free(&b);
        brixkv_hdr_t h = reply(fd, &body);
        free(body);
        if (h.status == BRIXKV_ST_OK || tries == 20) {
            *fdp = fd;
            return h.status;
        }
        close(fd);
        usleep(100 * 1000);
    }
}

/* The namespace table (--max-namespaces 4 here) does not fill up for good
 * with names HELLO'd once: an entry no connection holds and nothing is
 * stored under is reused; one with stored objects keeps its id (its keys
 * are still found). */
static void test_server_namespace_reuse(void **state)
{
    (void)state;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    int keep;
    assert_int_equal(hello_model(e, "keeper", &keep), BRIXKV_ST_OK);
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    uint64_t ids[] = { 77 };
    uint32_t lens[] = { 5000 };
    put_frame(&b, 2, ids, lens, 1);
    send_all(keep, &b);
    brixkv_hdr_t h = reply(keep, &body);
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_OK);
    free(body);
    close(keep);
    char model[32];
    for (int i = 0; i < 12; i++) { /* three times the table */
        snprintf(model, sizeof model, "passer-by-%d", i);
        int fd;
        assert_int_equal(hello_model(e, model, &fd), BRIXKV_ST_OK);
        close(fd);
    }
    /* four held at once still fill it */
    int held[4];
    assert_int_equal(hello_model(e, "keeper", &held[0]), BRIXKV_ST_OK);
    for (int i = 1; i < 4; i++) {
        snprintf(model, sizeof model, "holder-%d", i);
        assert_int_equal(hello_model(e, model, &held[i]), BRIXKV_ST_OK);
    }
    int fd;
    assert_int_equal(hello_model(e, "one-too-many", &fd), BRIXKV_ST_NAMESPACE);
    close(fd);
    brix_buf_reset(&b);
    keys_frame(&b, BRIXKV_OP_MATCH, 0, 3, ids, 1);
    send_all(held[0], &b);
    h = reply(held[0], &body);
    assert_int_equal(h.count, 1); /* keeper's object, under its old id */
    free(body);
    for (int i = 0; i < 4; i++)
        close(held[i]);
    brix_buf_free(&b);
    srv_stop(e);
}

/* A GET that runs out of memory while batching a key asked many times
 * drops exactly the references it took: afterwards the object is not
 * referenced, so DELETE succeeds (a leaked reference would make it BUSY
 * and unevictable forever). */
static void test_server_get_oom_refs(void **state)
{
    (void)state;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    brix_buf_t b = BRIX_BUF_INIT, get = BRIX_BUF_INIT;
    uint8_t *body;
    int fd = tcp_connect(e);
    put_hello(fd);
    uint64_t ids[] = { 5 };
    uint32_t lens[] = { 1000 };
    put_frame(&b, 2, ids, lens, 1);
    send_all(fd, &b);
    brixkv_hdr_t h = reply(fd, &body);
    assert_int_equal(entry(body, 0).status, BRIXKV_ST_OK);
    free(body);
    uint64_t same[40];
    for (int i = 0; i < 40; i++)
        same[i] = 5;
    keys_frame(&get, BRIXKV_OP_GET, 0, 3, same, 40); /* past the 16 refs first allocated */
    int failed = 0;
    for (int n = 0; n < 40; n++) {
        brix_alloc_fail_after(n);
        send_all(fd, &get);
        /* a reply, an error reply, or (a write it could not queue) just EOF */
        bool ok = recv_all(fd, &h, sizeof h);
        brix_alloc_fail_after(-1);
        if (ok) {
            assert_int_equal(h.magic, BRIXKV_MAGIC);
            body = malloc(h.body_len + 1);
            ok = recv_all(fd, body, h.body_len) && h.status == BRIXKV_ST_OK;
            free(body);
        }
        if (!ok) { /* out of memory: the node closed it */
            failed++;
            close(fd);
            fd = tcp_connect(e);
            put_hello(fd);
        }
    }
    assert_true(failed > 0);
    uint16_t st = 0;
    for (int tries = 0; tries < 20; tries++) { /* in-flight writes finish first */
        brix_buf_reset(&b);
        keys_frame(&b, BRIXKV_OP_DELETE, 0, 4, ids, 1);
        send_all(fd, &b);
        h = reply(fd, &body);
        st = entry(body, 0).status;
        free(body);
        if (st != BRIXKV_ST_BUSY)
            break;
        usleep(100 * 1000);
    }
    assert_int_equal(st, BRIXKV_ST_OK);
    close(fd);
    brix_buf_free(&b);
    brix_buf_free(&get);
    srv_stop(e);
}

static void cfg_unauth_cap(brix_kvsrv_cfg_t *c)
{
    c->max_unauth_per_ip = 2;
}

/* One address holds at most --max-unauth-per-ip connections that have not
 * said HELLO; one that did is not counted, and a place frees up when a
 * silent one goes. */
static void test_server_unauth_per_ip(void **state)
{
    (void)state;
    g_cfg_hook = cfg_unauth_cap;
    srv_env_t *e = srv_start(NULL, NULL, 32 << 20);
    g_cfg_hook = NULL;
    int ok = tcp_connect(e);
    put_hello(ok);
    int s1 = tcp_connect(e), s2 = tcp_connect(e);
    usleep(200 * 1000); /* accepted */
    int s3 = tcp_connect(e);
    assert_true(closed(s3)); /* the third silent one */
    close(s3);
    close(s1);
    usleep(300 * 1000); /* the node saw it go */
    int s4 = tcp_connect(e);
    put_hello(s4); /* a place again: and it says HELLO */
    brix_buf_t b = BRIX_BUF_INIT;
    uint8_t *body;
    put_hdr(&b, BRIXKV_OP_PING, 0, 9, 0, 0);
    send_all(ok, &b);
    brixkv_hdr_t h = reply(ok, &body);
    assert_int_equal(h.id, 9);
    free(body);
    brix_buf_free(&b);
    close(s2);
    close(s4);
    close(ok);
    srv_stop(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_any_split, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_direct, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_malformed, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_hello, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_data, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_shm, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_put_trickle, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_hello_timeout, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_limits, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_namespace_reuse, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_get_oom_refs, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_server_unauth_per_ip, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
