/*
 * test_brixkv — libbrixkv without a real store: the member parser, rendezvous
 * placement (distribution and minimal movement), argument checks, status
 * strings, and the client's wire handling against a scripted fake node (a
 * thread speaking proto.h from canned rules): pipelined batches, payloads
 * into caller buffers, short buffers, the same-host mapping with its
 * generation check and lease releases, timeouts and out-of-sync replies.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kvcache/brixkv.h"
#include "kvcache/brixkv_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- members and placement ---------------------------------------------- */

static void test_parse_members(void **state)
{
    (void)state;
    brixkv__member_t *m;
    size_t n;
    char err[256];
    assert_int_equal(
        brixkv__parse_members(" 10.0.0.1:7000 , kv-2.svc:80,[::1]:9", &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    assert_string_equal(m[0].addr, "10.0.0.1:7000");
    assert_string_equal(m[0].host, "10.0.0.1");
    assert_string_equal(m[0].port, "7000");
    assert_string_equal(m[1].host, "kv-2.svc");
    assert_string_equal(m[2].addr, "[::1]:9");
    assert_string_equal(m[2].host, "::1");
    assert_string_equal(m[2].port, "9");
    free(m);
    const char *bad[] = { "",         "a",      ":80",     "a:",      "a:0",    "a:65536",
                          "a:8x",     "::1:80", "[::1]80", "[::1]:",  "[a]:80", "a:1,a:1",
                          "a:1,,b:2", "a:1,",   "a b:1",   "a:123456" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        assert_int_equal(brixkv__parse_members(bad[i], &m, &n, err, sizeof(err)), -EINVAL);
        assert_true(strlen(err) > 0);
        assert_null(m);
    }
    /* too many members */
    size_t cap = (BRIXKV__MAX_MEMBERS + 1) * 16;
    char *many = malloc(cap);
    size_t o = 0;
    for (int i = 0; i <= BRIXKV__MAX_MEMBERS; i++)
        o += (size_t)snprintf(many + o, cap - o, "%sh%d:1", i ? "," : "", i);
    assert_int_equal(brixkv__parse_members(many, &m, &n, err, sizeof(err)), -EINVAL);
    free(many);
}

static brixkv_key_t key_of(uint64_t i)
{
    brixkv_key_t k = brixkv_key_u64(i * 0x9e3779b97f4a7c15ull + 1);
    return k;
}

static void test_rendezvous_distribution(void **state)
{
    (void)state;
    const char *addrs[] = { "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.4:7000" };
    uint64_t seeds[4];
    for (int i = 0; i < 4; i++)
        seeds[i] = brixkv__member_seed(addrs[i]);
    size_t cnt[4] = { 0 };
    const size_t nk = 40000;
    for (size_t i = 0; i < nk; i++) {
        brixkv_key_t k = key_of(i);
        cnt[brixkv__rendezvous(seeds, 4, &k)]++;
    }
    /* 10000 expected each; binomial sd ~87: +-600 is ~7 sd */
    for (int i = 0; i < 4; i++)
        assert_true(cnt[i] > 9400 && cnt[i] < 10600);
    /* the choice does not depend on the order of the list */
    uint64_t rev[4] = { seeds[3], seeds[2], seeds[1], seeds[0] };
    for (size_t i = 0; i < 2000; i++) {
        brixkv_key_t k = key_of(i);
        assert_int_equal(brixkv__rendezvous(seeds, 4, &k), 3 - brixkv__rendezvous(rev, 4, &k));
    }
}

static void test_rendezvous_minimal_movement(void **state)
{
    (void)state;
    uint64_t all[5], less[4];
    char a[32];
    for (int i = 0; i < 5; i++) {
        snprintf(a, sizeof(a), "kv-%d:7000", i);
        all[i] = brixkv__member_seed(a);
    }
    /* member 2 leaves */
    less[0] = all[0], less[1] = all[1], less[2] = all[3], less[3] = all[4];
    const size_t map[4] = { 0, 1, 3, 4 };
    size_t moved = 0, owned2 = 0, got[5] = { 0 };
    for (size_t i = 0; i < 20000; i++) {
        brixkv_key_t k = key_of(i);
        size_t before = brixkv__rendezvous(all, 5, &k);
        size_t after = map[brixkv__rendezvous(less, 4, &k)];
        if (before == 2) {
            owned2++;
            got[after]++;
        } else if (before != after) {
            moved++;
        }
    }
    assert_int_equal(moved, 0); /* only the leaving member's keys move */
    assert_true(owned2 > 3000);
    for (int i = 0; i < 5; i++) /* ... and they spread over all the others */
        if (i != 2)
            assert_true(got[i] > owned2 / 8);
    /* a member joining only takes keys: nobody else's keys move */
    for (size_t i = 0; i < 20000; i++) {
        brixkv_key_t k = key_of(i);
        size_t before = map[brixkv__rendezvous(less, 4, &k)];
        size_t after = brixkv__rendezvous(all, 5, &k);
        assert_true(after == before || after == 2);
    }
}

static void test_status_strings(void **state)
{
    (void)state;
    brixkv_status_t all[] = { BRIXKV_ST_OK,           BRIXKV_ST_NOT_FOUND, BRIXKV_ST_EXISTS,
                              BRIXKV_ST_NO_SPACE,     BRIXKV_ST_TOO_LARGE, BRIXKV_ST_BAD_REQUEST,
                              BRIXKV_ST_NAMESPACE,    BRIXKV_ST_BUSY,      BRIXKV_ST_INTERNAL,
                              BRIXKV_ST_DENIED,       BRIXKV_ST_TIMEOUT,   BRIXKV_ST_UNAVAILABLE,
                              BRIXKV_ST_SHORT_BUFFER, BRIXKV_ST_STALE };
    size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n; i++) {
        assert_string_not_equal(brixkv_status_str(all[i]), "unknown");
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(brixkv_status_str(all[i]), brixkv_status_str(all[j]));
    }
    assert_string_equal(brixkv_status_str((brixkv_status_t)55), "unknown");
}

static brixkv_ns_t test_ns(void)
{
    return (brixkv_ns_t){ .model = "llama",
                          .dtype = "bfloat16",
                          .layout = "paged-16",
                          .tp_size = 1,
                          .hash_seed = 42,
                          .seed_deterministic = true,
                          .client = "test" };
}

static void test_open_validation(void **state)
{
    (void)state;
    char err[256];
    brixkv_ns_t ns = test_ns();
    brixkv_opts_t o = { .servers = "127.0.0.1:1,[::1]:2" };
    assert_null(brixkv_open(NULL, &ns, err, sizeof(err)));
    assert_null(brixkv_open(&o, NULL, err, sizeof(err)));
    brixkv_ns_t b = ns;
    b.model = NULL;
    assert_null(brixkv_open(&o, &b, err, sizeof(err)));
    assert_non_null(strstr(err, "model"));
    b = ns;
    b.tp_size = 2, b.tp_rank = 2;
    assert_null(brixkv_open(&o, &b, err, sizeof(err)));
    b = ns;
    b.tp_size = 0;
    assert_null(brixkv_open(&o, &b, err, sizeof(err)));
    brixkv_opts_t bo = { .servers = "127.0.0.1" };
    assert_null(brixkv_open(&bo, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "PORT"));
    bo.servers = NULL;
    assert_null(brixkv_open(&bo, &ns, err, sizeof(err)));
    bo = (brixkv_opts_t){ .servers = "127.0.0.1:1", .timeout_ms = -1 };
    assert_null(brixkv_open(&bo, &ns, err, sizeof(err)));

    brixkv_t *c = brixkv_open(&o, &ns, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(brixkv_nmembers(c), 2);
    assert_string_equal(brixkv_member_addr(c, 1), "[::1]:2");
    assert_null(brixkv_member_addr(c, 2));
    assert_false(brixkv_member_up(c, 0)); /* lazy: nothing connected yet */
    uint64_t seeds[2] = { brixkv__member_seed("127.0.0.1:1"), brixkv__member_seed("[::1]:2") };
    for (int i = 0; i < 100; i++) {
        brixkv_key_t k = key_of((uint64_t)i);
        assert_int_equal(brixkv_owner(c, &k), brixkv__rendezvous(seeds, 2, &k));
    }
    /* a bad list is refused and the old one stays */
    assert_int_equal(brixkv_set_servers(c, "127.0.0.1:1,,", err, sizeof(err)), -EINVAL);
    assert_int_equal(brixkv_nmembers(c), 2);
    assert_int_equal(brixkv_set_servers(c, "[::1]:2,127.0.0.1:3,127.0.0.1:1", err, sizeof(err)), 0);
    assert_int_equal(brixkv_nmembers(c), 3);
    assert_string_equal(brixkv_member_addr(c, 0), "[::1]:2");
    /* bad call arguments: statuses say so, nothing crashes */
    brixkv_status_t st[2] = { BRIXKV_ST_OK, BRIXKV_ST_OK };
    brixkv_key_t keys[2] = { key_of(1), key_of(2) };
    size_t lens[2];
    assert_int_equal(brixkv_mget(c, keys, 2, NULL, NULL, lens, st), 0);
    assert_int_equal(st[0], BRIXKV_ST_BAD_REQUEST);
    assert_int_equal(brixkv_match_prefix(c, NULL, 2), 0);
    assert_int_equal(brixkv_match_prefix(c, keys, 0), 0);
    assert_int_equal(brixkv_mput(NULL, keys, 2, NULL, NULL, st), 0);
    brixkv_stats_t s;
    assert_int_equal(brixkv_stats(c, 7, &s), BRIXKV_ST_BAD_REQUEST);
    brixkv_close(c);
    brixkv_close(NULL);
}

/* ---- a scripted fake node ------------------------------------------------ */

enum fake_mode {
    FAKE_OK,
    FAKE_SILENT,
    FAKE_BADID,
    FAKE_STALE,
    FAKE_REFUSE,
    FAKE_ERRFRAME,
    FAKE_MUTE_HELLO, /* reads the HELLO, never answers */
};

/* Orders events across fakes (HELLO read, connection closed by the client). */
static atomic_int g_seq;

#define SLOT     (4u << 20)
#define NSLOTS   15
#define ARENA    ((size_t)SLOT * (NSLOTS + 1))
#define BIG_LEN  (3u << 20)
#define MAX_CONN 8

typedef struct fake {
    int lfd, ulfd;
    int port;
    char upath[108];
    int memfd;
    uint8_t *arena;
    uint64_t node_id, unix_node_id;
    uint32_t max_batch;
    uint32_t next_slot, next_gen;
    const char *token; /* set: HELLO must carry it */
    atomic_int hello_seq, close_seq;
    atomic_int mode;
    atomic_int releases, conns, requests, stop;
    int cfd[MAX_CONN];
    bool cunix[MAX_CONN];
    pthread_t th;
    int arena_kind;                /* FAKE_ARENA_* */
    atomic_int unix_hellos;        /* HELLOs read on the UNIX socket */
    uint32_t max_frame_kib;        /* said in the HELLO reply (0: not said) */
    atomic_uint_fast64_t max_body; /* largest request body seen */
} fake_t;

/* How the fake's memfd looks to a client (set before fake_start). */
enum {
    FAKE_ARENA_SEALED,   /* what a node does: sealed, the size it says */
    FAKE_ARENA_UNSEALED, /* a node on an old kernel, or not ours */
    FAKE_ARENA_SHORT,    /* says more bytes than the file has */
};
static int g_fake_arena = FAKE_ARENA_SEALED;
static bool g_fake_untrusted; /* the UNIX socket listens as uid 65534 */
static bool g_fake_relative;  /* the UNIX path it names is relative (to our cwd) */
static uint32_t g_fake_max_frame_kib;

/* The fake's contents: a key is stored unless b[9] is set; its value is
 * val_len(k) bytes of val_byte(k, j). */
static size_t val_len(const brixkv_key_t *k)
{
    return k->b[10] ? BIG_LEN : 1000u + k->b[0] * 37u;
}

static uint8_t val_byte(const brixkv_key_t *k, size_t j)
{
    return (uint8_t)(k->b[0] * 31u + k->b[1] * 7u + j * 13u + (j >> 8));
}

static bool stored(const brixkv_key_t *k)
{
    return k->b[9] == 0;
}

/* cmocka's asserts jump back into the test's thread: the fake aborts instead */
#define FAKE_CHECK(x)                                                                              \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "fake node: check failed: %s\n", #x);                                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int rd(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Set: every write of the fake goes out a byte at a time for its first 300
 * bytes (headers, entries, payload starts), so the client's reads end at
 * every possible place in a reply and it has to resume there. */
static atomic_int g_dribble;

static int wr(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (int i = 0; n && i < 300 && atomic_load(&g_dribble); i++) {
        if (send(fd, b, 1, MSG_NOSIGNAL) != 1)
            return -1;
        b++;
        n--;
        usleep(50);
    }
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int reply(int fd, const brixkv_hdr_t *rq, uint16_t st, uint32_t count, const void *body,
                 size_t len, uint64_t extra)
{
    brixkv_hdr_t h = { .magic = BRIXKV_MAGIC,
                       .op = rq->op,
                       .status = st,
                       .id = rq->id,
                       .count = count,
                       .body_len = len + extra };
    if (wr(fd, &h, sizeof(h)) || (len && wr(fd, body, len)))
        return -1;
    return 0;
}

/* Serves one frame on connection ci. Returns -1 to close it. */
static int fake_frame(fake_t *f, int ci)
{
    int fd = f->cfd[ci];
    brixkv_hdr_t h;
    if (rd(fd, &h, sizeof(h)) || h.magic != BRIXKV_MAGIC || h.body_len > (64u << 20))
        return -1;
    uint8_t *body = malloc(h.body_len + 1);
    if (rd(fd, body, h.body_len)) {
        free(body);
        return -1;
    }
    int mode = atomic_load(&f->mode);
    int rc = 0;
    if (h.body_len > atomic_load(&f->max_body))
        atomic_store(&f->max_body, h.body_len);
    if (h.op == BRIXKV_OP_HELLO && f->cunix[ci])
        atomic_fetch_add(&f->unix_hellos, 1);
    if (h.op != BRIXKV_OP_HELLO && h.op != BRIXKV_OP_RELEASE)
        atomic_fetch_add(&f->requests, 1);
    if (h.op != BRIXKV_OP_HELLO && h.op != BRIXKV_OP_RELEASE && mode == FAKE_SILENT)
        goto out; /* read, never answered */
    if (mode == FAKE_BADID)
        h.id++;
    if (mode == FAKE_MUTE_HELLO && h.op == BRIXKV_OP_HELLO) {
        atomic_store(&f->hello_seq, atomic_fetch_add(&g_seq, 1) + 1);
        goto out;
    }
    if (mode == FAKE_ERRFRAME && h.op != BRIXKV_OP_HELLO) {
        /* what a node does with a frame it cannot take: status, message, close */
        const char *msg = "count 3 above --max-batch";
        reply(fd, &h, BRIXKV_ST_BAD_REQUEST, 0, msg, strlen(msg), 0);
        rc = -1;
        goto out;
    }
    switch (h.op) {
    case BRIXKV_OP_HELLO: {
        brixkv_hello_t hb;
        memcpy(&hb, body, sizeof(hb));
        size_t sl = (size_t)hb.model_len + hb.dtype_len + hb.layout_len + hb.client_len;
        FAKE_CHECK(h.body_len == sizeof(hb) + sl + hb.token_len);
        if (f->token && (hb.token_len != strlen(f->token) ||
                         memcmp(body + sizeof(hb) + sl, f->token, hb.token_len))) {
            const char *msg = "this node needs a token";
            reply(fd, &h, BRIXKV_ST_DENIED, 0, msg, strlen(msg), 0);
            rc = -1;
            break;
        }
        if (mode == FAKE_REFUSE || !hb.seed_deterministic) {
            const char *msg = "hash seed is not deterministic";
            rc = reply(fd, &h, BRIXKV_ST_NAMESPACE, 0, msg, strlen(msg), 0);
            rc = -1;
            break;
        }
        uint8_t out[sizeof(brixkv_hello_reply_t) + 108];
        brixkv_hello_reply_t r = { .ns_id = 1,
                                   .node_id = f->node_id,
                                   .max_value = 8u << 20,
                                   .max_batch = f->max_batch,
                                   .lease_ms = 5000,
                                   .max_frame_kib = f->max_frame_kib };
        size_t ul = 0;
        if (f->cunix[ci]) {
            r.node_id = f->unix_node_id;
            if (hb.flags & BRIXKV_HELLO_SHM) {
                r.flags = BRIXKV_HELLO_SHM;
                r.arena_bytes = f->arena_kind == FAKE_ARENA_SHORT ? 2 * ARENA : ARENA;
            }
        } else if (f->ulfd >= 0) {
            ul = strlen(f->upath);
        }
        r.unix_len = (uint16_t)ul;
        memcpy(out, &r, sizeof(r));
        memcpy(out + sizeof(r), f->upath, ul);
        brixkv_hdr_t rh = {
            .magic = BRIXKV_MAGIC, .op = h.op, .id = h.id, .body_len = sizeof(r) + ul
        };
        if (r.flags & BRIXKV_HELLO_SHM) { /* the memfd rides on the first byte */
            union {
                struct cmsghdr c;
                char b[CMSG_SPACE(sizeof(int))];
            } cb;
            memset(&cb, 0, sizeof(cb));
            struct iovec iv = { &rh, 1 };
            struct msghdr mh = {
                .msg_iov = &iv, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof(cb.b)
            };
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &f->memfd, sizeof(int));
            if (sendmsg(fd, &mh, MSG_NOSIGNAL) != 1 || wr(fd, (uint8_t *)&rh + 1, sizeof(rh) - 1) ||
                wr(fd, out, sizeof(r) + ul))
                rc = -1;
        } else if (wr(fd, &rh, sizeof(rh)) || wr(fd, out, sizeof(r) + ul)) {
            rc = -1;
        }
        break;
    }
    case BRIXKV_OP_MATCH: {
        uint32_t r = 0;
        while (r < h.count && stored((brixkv_key_t *)(body + r * 16u)))
            r++;
        rc = reply(fd, &h, 0, r, NULL, 0, 0);
        break;
    }
    case BRIXKV_OP_GET: {
        FAKE_CHECK(h.count <= f->max_batch);
        brixkv_entry_t *e = calloc(h.count, sizeof(*e));
        uint64_t pay = 0;
        for (uint32_t i = 0; i < h.count; i++) {
            const brixkv_key_t *k = (brixkv_key_t *)(body + i * 16u);
            e[i].status = stored(k) ? BRIXKV_ST_OK : BRIXKV_ST_NOT_FOUND;
            if (!stored(k))
                continue;
            e[i].len = (uint32_t)val_len(k);
            pay += e[i].len;
            if (h.flags & BRIXKV_F_SHM) {
                /* slots rotate over calls: a pipelined next request must
                 * not overwrite a value the client has not copied yet */
                uint32_t s = f->next_slot++ % NSLOTS;
                uint8_t *v = f->arena + (size_t)SLOT * (s + 1);
                for (size_t j = 0; j < e[i].len; j++)
                    v[j] = val_byte(k, j);
                e[i].offset = (uint64_t)SLOT * (s + 1);
                e[i].lease = 1000 + i;
                e[i].gen_off = 4 * s;
                uint32_t g = ++f->next_gen;
                memcpy(f->arena + 4 * s, &g, 4);
                e[i].gen = (mode == FAKE_STALE && i % 2) ? g + 1 : g;
            }
        }
        if (h.flags & BRIXKV_F_SHM) {
            rc = reply(fd, &h, 0, h.count, e, h.count * sizeof(*e), 0);
        } else {
            rc = reply(fd, &h, 0, h.count, e, h.count * sizeof(*e), pay);
            for (uint32_t i = 0; i < h.count && !rc; i++) {
                const brixkv_key_t *k = (brixkv_key_t *)(body + i * 16u);
                if (e[i].status != BRIXKV_ST_OK)
                    continue;
                uint8_t *v = malloc(e[i].len);
                for (size_t j = 0; j < e[i].len; j++)
                    v[j] = val_byte(k, j);
                rc = wr(fd, v, e[i].len);
                free(v);
            }
        }
        free(e);
        break;
    }
    case BRIXKV_OP_PUT: {
        brixkv_entry_t *e = calloc(h.count, sizeof(*e));
        const uint8_t *p = body + (size_t)h.count * sizeof(brixkv_put_desc_t);
        for (uint32_t i = 0; i < h.count; i++) {
            brixkv_put_desc_t d;
            memcpy(&d, body + i * sizeof(d), sizeof(d));
            brixkv_key_t k;
            memcpy(k.b, d.key, 16);
            bool same = d.len == val_len(&k);
            for (size_t j = 0; same && j < d.len; j++)
                same = p[j] == val_byte(&k, j);
            e[i].status = !same        ? BRIXKV_ST_BAD_REQUEST
                          : stored(&k) ? BRIXKV_ST_EXISTS
                                       : BRIXKV_ST_OK;
            p += d.len;
        }
        FAKE_CHECK(p == body + h.body_len);
        rc = reply(fd, &h, 0, h.count, e, h.count * sizeof(*e), 0);
        free(e);
        break;
    }
    case BRIXKV_OP_DELETE:
    case BRIXKV_OP_PIN: {
        brixkv_entry_t *e = calloc(h.count, sizeof(*e));
        if (h.op == BRIXKV_OP_PIN) {
            brixkv_pin_t pin;
            memcpy(&pin, body, sizeof(pin));
            for (uint32_t i = 0; i < h.count; i++)
                e[i].status = pin.ttl_s == 77 ? BRIXKV_ST_OK : BRIXKV_ST_BUSY;
        }
        rc = reply(fd, &h, 0, h.count, e, h.count * sizeof(*e), 0);
        free(e);
        break;
    }
    case BRIXKV_OP_RELEASE:
        FAKE_CHECK(h.flags & BRIXKV_F_NOREPLY);
        for (uint32_t i = 0; i < h.count; i++) {
            uint64_t l;
            memcpy(&l, body + 8 * i, 8);
            FAKE_CHECK(l >= 1000 && l < 1000 + 64);
        }
        atomic_fetch_add(&f->releases, (int)h.count);
        break;
    case BRIXKV_OP_STATS: {
        brixkv_stats_wire_t w = { .capacity_bytes = 123456, .objects = 7 };
        rc = reply(fd, &h, 0, 0, &w, sizeof(w), 0);
        break;
    }
    default:
        rc = -1;
    }
out:
    free(body);
    return rc;
}

static void *fake_run(void *arg)
{
    fake_t *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd pf[MAX_CONN + 2];
        int np = 0;
        pf[np++] = (struct pollfd){ .fd = f->lfd, .events = POLLIN };
        pf[np++] = (struct pollfd){ .fd = f->ulfd, .events = POLLIN };
        for (int i = 0; i < MAX_CONN; i++)
            pf[np++] = (struct pollfd){ .fd = f->cfd[i], .events = POLLIN };
        if (poll(pf, (nfds_t)np, 20) <= 0)
            continue;
        for (int l = 0; l < 2; l++)
            if (pf[l].revents & POLLIN) {
                int c = accept(pf[l].fd, NULL, NULL);
                for (int i = 0; i < MAX_CONN && c >= 0; i++)
                    if (f->cfd[i] < 0) {
                        f->cfd[i] = c;
                        f->cunix[i] = l == 1;
                        c = -1;
                        atomic_fetch_add(&f->conns, 1);
                    }
                if (c >= 0)
                    close(c);
            }
        for (int i = 0; i < MAX_CONN; i++)
            if (pf[2 + i].revents && f->cfd[i] >= 0 && fake_frame(f, i)) {
                if (!atomic_load(&f->close_seq))
                    atomic_store(&f->close_seq, atomic_fetch_add(&g_seq, 1) + 1);
                close(f->cfd[i]);
                f->cfd[i] = -1;
            }
    }
    return NULL;
}

static fake_t *fake_start(bool with_unix, uint64_t unix_node_id, uint32_t max_batch)
{
    fake_t *f = calloc(1, sizeof(*f));
    f->node_id = 0xabcdef;
    f->unix_node_id = unix_node_id;
    f->max_batch = max_batch;
    f->arena_kind = g_fake_arena;
    f->max_frame_kib = g_fake_max_frame_kib;
    f->ulfd = -1;
    f->memfd = -1;
    for (int i = 0; i < MAX_CONN; i++)
        f->cfd[i] = -1;
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 16), 0);
    socklen_t sl = sizeof(sa);
    getsockname(f->lfd, (struct sockaddr *)&sa, &sl);
    f->port = ntohs(sa.sin_port);
    if (with_unix) {
        snprintf(f->upath, sizeof(f->upath), "%s/test_brixkv.%d.%d.sock",
                 g_fake_relative ? "." : "/tmp", (int)getpid(), f->port);
        unlink(f->upath);
        f->ulfd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un su = { .sun_family = AF_UNIX };
        strcpy(su.sun_path, f->upath);
        assert_int_equal(bind(f->ulfd, (struct sockaddr *)&su, sizeof(su)), 0);
        /* a socket's peer credentials are its listen(2) caller's */
        if (g_fake_untrusted)
            assert_int_equal(seteuid(65534), 0);
        assert_int_equal(listen(f->ulfd, 16), 0);
        if (g_fake_untrusted)
            assert_int_equal(seteuid(0), 0);
        f->memfd = memfd_create("test_brixkv", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_int_equal(ftruncate(f->memfd, (off_t)ARENA), 0);
        f->arena = mmap(NULL, ARENA, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
        assert_true(f->arena != MAP_FAILED);
        if (f->arena_kind != FAKE_ARENA_UNSEALED)
            assert_int_equal(fcntl(f->memfd, F_ADD_SEALS,
                                   F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL),
                             0);
    }
    pthread_create(&f->th, NULL, fake_run, f);
    return f;
}

static void fake_stop(fake_t *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->th, NULL);
    for (int i = 0; i < MAX_CONN; i++)
        if (f->cfd[i] >= 0)
            close(f->cfd[i]);
    close(f->lfd);
    if (f->ulfd >= 0) {
        close(f->ulfd);
        unlink(f->upath);
        munmap(f->arena, ARENA);
        close(f->memfd);
    }
    free(f);
}

static brixkv_t *open_on(const char *servers, bool no_shm, int timeout_ms)
{
    brixkv_ns_t ns = test_ns();
    brixkv_opts_t o = {
        .servers = servers, .no_shm = no_shm, .timeout_ms = timeout_ms, .retry_ms = 100
    };
    char err[256];
    brixkv_t *c = brixkv_open(&o, &ns, err, sizeof(err));
    assert_non_null(c);
    return c;
}

/* keys: i%5==3 missing, i%7==6 big (3 MiB), b[0] = i varies the length */
static brixkv_key_t fkey(size_t i)
{
    brixkv_key_t k = key_of(i);
    k.b[0] = (uint8_t)i;
    k.b[9] = i % 5 == 3;
    k.b[10] = i % 7 == 6;
    return k;
}

/* GETs n keys with buffers of cap bytes (0: exactly big enough) and checks
 * every outcome and byte. Returns the number of OK keys. */
static size_t check_get(brixkv_t *c, size_t n, size_t cap, int stale_mode)
{
    brixkv_key_t *keys = calloc(n, sizeof(*keys));
    void **bufs = calloc(n, sizeof(*bufs));
    size_t *caps = calloc(n, sizeof(*caps)), *lens = calloc(n, sizeof(*lens));
    brixkv_status_t *st = calloc(n, sizeof(*st));
    for (size_t i = 0; i < n; i++) {
        keys[i] = fkey(i);
        caps[i] = cap ? cap : val_len(&keys[i]);
        bufs[i] = malloc(caps[i]);
    }
    size_t ok = brixkv_mget(c, keys, n, bufs, caps, lens, st), cnt = 0;
    for (size_t i = 0; i < n; i++) {
        const brixkv_key_t *k = &keys[i];
        if (!stored(k)) {
            assert_int_equal(st[i], BRIXKV_ST_NOT_FOUND);
        } else if (val_len(k) > caps[i]) {
            assert_int_equal(st[i], BRIXKV_ST_SHORT_BUFFER);
            assert_int_equal(lens[i], val_len(k)); /* the size a retry needs */
        } else if (stale_mode && i % 2) {
            assert_int_equal(st[i], BRIXKV_ST_STALE);
        } else {
            assert_int_equal(st[i], BRIXKV_ST_OK);
            assert_int_equal(lens[i], val_len(k));
            const uint8_t *b = bufs[i];
            for (size_t j = 0; j < lens[i]; j++)
                if (b[j] != val_byte(k, j))
                    fail_msg("key %zu byte %zu wrong (%u want %u, len %zu cap %zu)", i, j, b[j],
                             val_byte(k, j), lens[i], caps[i]);
            cnt++;
        }
        free(bufs[i]);
    }
    assert_int_equal(ok, cnt);
    free(keys);
    free(bufs);
    free(caps);
    free(lens);
    free(st);
    return ok;
}

static void test_fake_tcp(void **state)
{
    (void)state;
    fake_t *f = fake_start(false, 0, 4); /* max_batch 4: 30 keys = 8 pipelined requests */
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    brixkv_t *c = open_on(srv, false, 5000);
    assert_true(check_get(c, 30, 0, 0) > 10);
    assert_true(brixkv_member_up(c, 0));
    assert_false(brixkv_member_shm(c, 0));
    /* buffers of 2000 bytes: big values are discarded, the stream stays in sync */
    check_get(c, 30, 2000, 0);
    check_get(c, 30, 0, 0);
    /* match: the leading run of stored keys (fkey(3) is the first missing) */
    brixkv_key_t keys[30];
    for (size_t i = 0; i < 30; i++)
        keys[i] = fkey(i);
    assert_int_equal(brixkv_match_prefix(c, keys, 30), 3);
    assert_int_equal(brixkv_match_prefix(c, keys, 3), 3);
    /* put: payloads are the fake's own bytes, so it checks them */
    const void *vals[30];
    size_t lens[30];
    brixkv_status_t st[30];
    for (size_t i = 0; i < 30; i++) {
        lens[i] = val_len(&keys[i]);
        uint8_t *v = malloc(lens[i]);
        for (size_t j = 0; j < lens[i]; j++)
            v[j] = val_byte(&keys[i], j);
        vals[i] = v;
    }
    assert_int_equal(brixkv_mput(c, keys, 30, vals, lens, st), 30);
    for (size_t i = 0; i < 30; i++)
        assert_int_equal(st[i], stored(&keys[i]) ? BRIXKV_ST_EXISTS : BRIXKV_ST_OK);
    lens[1] = 9u << 20; /* above the node's max_value: never sent */
    void *big = calloc(1, lens[1]);
    free((void *)vals[1]);
    vals[1] = big;
    assert_int_equal(brixkv_mput(c, keys, 2, vals, lens, st), 1);
    assert_int_equal(st[1], BRIXKV_ST_TOO_LARGE);
    free(big);
    for (size_t i = 0; i < 30; i++)
        if (i != 1)
            free((void *)vals[i]);
    assert_int_equal(brixkv_pin(c, keys, 10, 77, st), 10);
    assert_int_equal(brixkv_pin(c, keys, 10, 5, st), 0);
    assert_int_equal(st[9], BRIXKV_ST_BUSY);
    assert_int_equal(brixkv_delete(c, keys, 10, st), 10);
    brixkv_stats_t s;
    assert_int_equal(brixkv_stats(c, 0, &s), 0);
    assert_int_equal(s.capacity_bytes, 123456);
    assert_int_equal(s.objects, 7);
    assert_int_equal(atomic_load(&f->conns), 1); /* one connection did all of it */
    brixkv_client_stats_t cs;
    brixkv_client_stats(c, &cs);
    assert_true(cs.bytes_in > (3u << 20));
    assert_int_equal(cs.shm_bytes_in, 0);
    brixkv_close(c);
    fake_stop(f);
}

static void test_fake_dribble(void **state)
{
    (void)state;
    fake_t *f = fake_start(true, 0xabcdef, 4);
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    atomic_store(&g_dribble, 1);
    brixkv_t *c = open_on(srv, true, 20000);
    assert_true(check_get(c, 12, 0, 0) > 0);
    check_get(c, 12, 1500, 0);
    brixkv_key_t keys[12];
    for (size_t i = 0; i < 12; i++)
        keys[i] = fkey(i);
    assert_int_equal(brixkv_match_prefix(c, keys, 12), 3);
    brixkv_stats_t s;
    assert_int_equal(brixkv_stats(c, 0, &s), 0);
    assert_int_equal(s.capacity_bytes, 123456);
    brixkv_t *m = open_on(srv, false, 20000); /* HELLO with the memfd, dribbled too */
    assert_true(check_get(m, 12, 0, 0) > 0);
    assert_true(brixkv_member_shm(m, 0));
    atomic_store(&g_dribble, 0);
    brixkv_close(m);
    brixkv_close(c);
    fake_stop(f);
}

static void test_fake_shm(void **state)
{
    (void)state;
    fake_t *f = fake_start(true, 0xabcdef, 16);
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    brixkv_t *c = open_on(srv, false, 5000);
    size_t ok = check_get(c, 15, 0, 0);
    assert_true(brixkv_member_shm(c, 0));
    brixkv_client_stats_t cs;
    brixkv_client_stats(c, &cs);
    assert_true(cs.shm_bytes_in > (3u << 20));
    check_get(c, 15, 2000, 0); /* short buffers take (and release) leases too */
    /* the releases were written without waiting: a PING-less round trip
     * (stats) proves they reached the node before it */
    brixkv_stats_t s;
    assert_int_equal(brixkv_stats(c, 0, &s), 0);
    int want = (int)ok + 12; /* 12 of the 15 keys are stored */
    assert_int_equal(atomic_load(&f->releases), want);
    /* a slot reused during the copy is STALE, never wrong bytes */
    atomic_store(&f->mode, FAKE_STALE);
    check_get(c, 15, 0, 1);
    brixkv_client_stats(c, &cs);
    assert_true(cs.stale > 0);
    atomic_store(&f->mode, FAKE_OK);
    /* the same bytes without the mapping */
    brixkv_t *t = open_on(srv, true, 5000);
    assert_int_equal(check_get(t, 15, 0, 0), ok);
    assert_false(brixkv_member_shm(t, 0));
    brixkv_close(t);
    brixkv_close(c);
    fake_stop(f);
}

static void test_fake_shm_other_node(void **state)
{
    (void)state;
    /* the UNIX socket answers with another node_id: not this member's arena */
    fake_t *f = fake_start(true, 0x999, 16);
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    brixkv_t *c = open_on(srv, false, 5000);
    check_get(c, 15, 0, 0);
    assert_true(brixkv_member_up(c, 0));
    assert_false(brixkv_member_shm(c, 0));
    brixkv_client_stats_t cs;
    brixkv_client_stats(c, &cs);
    assert_int_equal(cs.shm_bytes_in, 0);
    brixkv_close(c);
    fake_stop(f);
}

/* The same-host path trusts only what is safe to map and to tell the token:
 * a memfd that is not sealed (a client, or the node itself, could shrink it
 * under our mapping: SIGBUS) or smaller than the arena the node names is
 * not mapped; a UNIX socket served by another uid never gets our HELLO. */
static void test_fake_shm_refused(void **state)
{
    (void)state;
    for (int kind = FAKE_ARENA_UNSEALED; kind <= FAKE_ARENA_SHORT; kind++) {
        g_fake_arena = kind;
        fake_t *f = fake_start(true, 0xabcdef, 16);
        g_fake_arena = FAKE_ARENA_SEALED;
        char srv[64];
        snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
        brixkv_t *c = open_on(srv, false, 5000);
        check_get(c, 15, 0, 0); /* still served, over a socket */
        assert_true(brixkv_member_up(c, 0));
        assert_false(brixkv_member_shm(c, 0));
        brixkv_close(c);
        fake_stop(f);
    }
    for (int rel = 0; rel < 2; rel++) {
        /* rel: a relative path is our cwd's, not the node's (the socket
         * there is ours); else the socket is another uid's */
        if (!rel && geteuid() != 0) {
            fprintf(stderr, "test_fake_shm_refused: not root, no other-uid socket tried\n");
            continue;
        }
        char cwd[4096];
        assert_non_null(getcwd(cwd, sizeof(cwd)));
        assert_int_equal(chdir("/tmp"), 0);
        g_fake_untrusted = !rel;
        g_fake_relative = rel;
        fake_t *f = fake_start(true, 0xabcdef, 16);
        g_fake_untrusted = g_fake_relative = false;
        char srv[64];
        snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
        brixkv_t *c = open_on(srv, false, 5000);
        check_get(c, 15, 0, 0);
        assert_false(brixkv_member_shm(c, 0));
        assert_int_equal(atomic_load(&f->unix_hellos), 0); /* the token never went there */
        brixkv_close(c);
        fake_stop(f);
        assert_int_equal(chdir(cwd), 0);
    }
}

/* A node with a small --max-frame says so in its HELLO reply: the client
 * splits a PUT to fit (descriptors included), never a frame the node
 * would refuse by closing the connection. */
static void test_fake_put_max_frame(void **state)
{
    (void)state;
    g_fake_max_frame_kib = 5 * 1024; /* 5 MiB: one 3 MiB value + descriptors per request */
    fake_t *f = fake_start(false, 0, 64);
    g_fake_max_frame_kib = 0;
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    brixkv_t *c = open_on(srv, false, 5000);
    enum { N = 4 };
    brixkv_key_t k[N];
    const void *v[N];
    size_t l[N];
    brixkv_status_t st[N];
    for (size_t i = 0; i < N; i++) {
        k[i] = fkey(6 + 7 * i); /* big: 3 MiB */
        l[i] = val_len(&k[i]);
        uint8_t *b = malloc(l[i]);
        for (size_t j = 0; j < l[i]; j++)
            b[j] = val_byte(&k[i], j);
        v[i] = b;
    }
    size_t ok = brixkv_mput(c, k, N, v, l, st);
    assert_int_equal(ok, N);
    assert_true(brixkv_member_up(c, 0));
    assert_true(atomic_load(&f->max_body) <= 5u << 20);
    /* a value that cannot fit any frame of that node is refused here */
    size_t big = (5u << 20);
    void *bb = calloc(1, big);
    brixkv_key_t kb = key_of(999);
    size_t bl = big;
    brixkv_status_t bs;
    const void *bv = bb;
    assert_int_equal(brixkv_mput(c, &kb, 1, &bv, &bl, &bs), 0);
    assert_int_equal(bs, BRIXKV_ST_TOO_LARGE);
    assert_true(brixkv_member_up(c, 0));
    free(bb);
    for (size_t i = 0; i < N; i++)
        free((void *)v[i]);
    brixkv_close(c);
    fake_stop(f);
}

static void test_fake_failures(void **state)
{
    (void)state;
    fake_t *f = fake_start(false, 0, 64);
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    brixkv_t *c = open_on(srv, false, 300);
    brixkv_key_t keys[4] = { fkey(0), fkey(1), fkey(2), fkey(4) };
    uint8_t b[4][4096];
    void *bufs[4] = { b[0], b[1], b[2], b[3] };
    size_t caps[4] = { 4096, 4096, 4096, 4096 }, lens[4];
    brixkv_status_t st[4];
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 4);
    /* a node that does not answer: TIMEOUT for its keys, connection dropped */
    atomic_store(&f->mode, FAKE_SILENT);
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(st[i], BRIXKV_ST_TIMEOUT);
    assert_false(brixkv_member_up(c, 0));
    assert_int_equal(brixkv_match_prefix(c, keys, 4), 0);
    /* it answers again: a fresh connection, in sync */
    atomic_store(&f->mode, FAKE_OK);
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 4);
    assert_int_equal(atomic_load(&f->conns), 3);
    /* a reply for another request id: out of sync, refused, never used */
    atomic_store(&f->mode, FAKE_BADID);
    memset(b, 0, sizeof(b));
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(st[i], BRIXKV_ST_INTERNAL);
    assert_int_equal(b[0][0], 0);
    /* ... and the node is left alone for retry_ms: no reconnect per call */
    atomic_store(&f->mode, FAKE_OK);
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 0);
    assert_int_equal(st[0], BRIXKV_ST_UNAVAILABLE);
    assert_int_equal(atomic_load(&f->conns), 3);
    /* an error frame: its status for the keys, its words in last_error */
    atomic_store(&f->mode, FAKE_ERRFRAME);
    usleep(150 * 1000); /* past retry_ms */
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 0);
    assert_int_equal(st[0], BRIXKV_ST_BAD_REQUEST);
    assert_non_null(strstr(brixkv_last_error(c), "bad request: count 3 above --max-batch"));
    /* a refused HELLO: NAMESPACE for the keys and the node's words */
    atomic_store(&f->mode, FAKE_REFUSE);
    usleep(150 * 1000); /* past retry_ms */
    assert_int_equal(brixkv_mget(c, keys, 4, bufs, caps, lens, st), 0);
    assert_int_equal(st[0], BRIXKV_ST_NAMESPACE);
    assert_non_null(strstr(brixkv_last_error(c), "not deterministic"));
    brixkv_close(c);
    fake_stop(f);
}

static void test_two_nodes(void **state)
{
    (void)state;
    fake_t *f1 = fake_start(false, 0, 8), *f2 = fake_start(false, 0, 8);
    char srv[128];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d,127.0.0.1:%d", f1->port, f2->port);
    brixkv_t *c = open_on(srv, false, 2000);
    enum { N = 64 };
    brixkv_key_t keys[N];
    size_t on[2] = { 0 };
    for (size_t i = 0; i < N; i++) {
        keys[i] = fkey(i);
        keys[i].b[9] = 0; /* all stored */
        keys[i].b[10] = 0;
        on[brixkv_owner(c, &keys[i])]++;
    }
    assert_true(on[0] > 5 && on[1] > 5);
    assert_int_equal(brixkv_match_prefix(c, keys, N), N);
    /* the global prefix ends at the first missing key over both nodes */
    for (size_t miss = 0; miss < N; miss += 7) {
        keys[miss].b[9] = 1;
        keys[N - 1].b[9] = 1; /* a later miss elsewhere changes nothing */
        assert_int_equal(brixkv_match_prefix(c, keys, N), miss);
        keys[miss].b[9] = 0;
        keys[N - 1].b[9] = 0;
    }
    /* one node gone: its keys UNAVAILABLE, the other's still served */
    fake_stop(f2);
    uint8_t b[N][4096];
    void *bufs[N];
    size_t caps[N], lens[N];
    brixkv_status_t st[N];
    for (size_t i = 0; i < N; i++)
        bufs[i] = b[i], caps[i] = sizeof(b[i]);
    size_t ok = brixkv_mget(c, keys, N, bufs, caps, lens, st);
    assert_int_equal(ok, on[0]);
    for (size_t i = 0; i < N; i++) {
        if (brixkv_owner(c, &keys[i]) == 0) {
            assert_int_equal(st[i], BRIXKV_ST_OK);
            for (size_t j = 0; j < lens[i]; j++)
                assert_int_equal(b[i][j], val_byte(&keys[i], j));
        } else {
            assert_int_equal(st[i], BRIXKV_ST_UNAVAILABLE);
        }
    }
    size_t first1 = N;
    for (size_t i = 0; i < N && first1 == N; i++)
        if (brixkv_owner(c, &keys[i]) == 1)
            first1 = i;
    assert_int_equal(brixkv_match_prefix(c, keys, N), first1);
    brixkv_close(c);
    fake_stop(f1);
}

static void test_token(void **state)
{
    (void)state;
    fake_t *f = fake_start(false, 0, 16);
    f->token = "s3cret-token";
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", f->port);
    brixkv_ns_t ns = test_ns();
    brixkv_opts_t o = { .servers = srv, .retry_ms = 50 };
    char err[256];
    brixkv_key_t keys[2] = { fkey(0), fkey(1) };
    brixkv_status_t st[2];
    brixkv_t *c = brixkv_open(&o, &ns, err, sizeof(err));
    assert_int_equal(brixkv_delete(c, keys, 2, st), 0);
    assert_int_equal(st[0], BRIXKV_ST_DENIED);
    assert_non_null(strstr(brixkv_last_error(c), "needs a token"));
    brixkv_close(c);
    ns.token = "wrong";
    c = brixkv_open(&o, &ns, err, sizeof(err));
    assert_int_equal(brixkv_delete(c, keys, 2, st), 0);
    assert_int_equal(st[1], BRIXKV_ST_DENIED);
    brixkv_close(c);
    ns.token = "s3cret-token";
    c = brixkv_open(&o, &ns, err, sizeof(err));
    assert_int_equal(brixkv_delete(c, keys, 2, st), 2);
    brixkv_close(c);
    char longtok[300];
    memset(longtok, 'x', sizeof(longtok) - 1);
    longtok[299] = 0;
    ns.token = longtok;
    assert_null(brixkv_open(&o, &ns, err, sizeof(err)));
    fake_stop(f);
}

static void test_set_servers_keeps_connections(void **state)
{
    (void)state;
    fake_t *f1 = fake_start(false, 0, 8), *f2 = fake_start(false, 0, 8);
    char s1[64], both[128];
    snprintf(s1, sizeof(s1), "127.0.0.1:%d", f1->port);
    snprintf(both, sizeof(both), "127.0.0.1:%d , 127.0.0.1:%d", f2->port, f1->port);
    brixkv_t *c = open_on(s1, false, 2000);
    brixkv_key_t keys[40];
    for (size_t i = 0; i < 40; i++) {
        keys[i] = fkey(i);
        keys[i].b[9] = 0;
    }
    assert_int_equal(brixkv_match_prefix(c, keys, 40), 40);
    char err[256];
    assert_int_equal(brixkv_set_servers(c, both, err, sizeof(err)), 0);
    assert_int_equal(brixkv_nmembers(c), 2);
    assert_true(brixkv_member_up(c, 1)); /* f1 kept its connection... */
    assert_false(brixkv_member_up(c, 0));
    assert_int_equal(brixkv_match_prefix(c, keys, 40), 40);
    assert_int_equal(atomic_load(&f1->conns), 1); /* ...and used it */
    assert_int_equal(atomic_load(&f2->conns), 1);
    /* f1 leaves the list: its connection closes, everything goes to f2 */
    snprintf(both, sizeof(both), "127.0.0.1:%d", f2->port);
    int before = atomic_load(&f1->requests);
    assert_int_equal(brixkv_set_servers(c, both, err, sizeof(err)), 0);
    assert_int_equal(brixkv_match_prefix(c, keys, 40), 40);
    assert_int_equal(atomic_load(&f1->requests), before);
    brixkv_close(c);
    fake_stop(f1);
    fake_stop(f2);
}

static void test_parallel_connect(void **state)
{
    (void)state;
    /* two nodes that take the connection and never answer the HELLO */
    fake_t *f1 = fake_start(false, 0, 8), *f2 = fake_start(false, 0, 8);
    atomic_store(&f1->mode, FAKE_MUTE_HELLO);
    atomic_store(&f2->mode, FAKE_MUTE_HELLO);
    char srv[128];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d,127.0.0.1:%d", f1->port, f2->port);
    brixkv_ns_t ns = test_ns();
    brixkv_opts_t o = { .servers = srv, .connect_timeout_ms = 300, .timeout_ms = 5000 };
    char err[256];
    brixkv_t *c = brixkv_open(&o, &ns, err, sizeof(err));
    brixkv_key_t keys[32];
    for (size_t i = 0; i < 32; i++)
        keys[i] = fkey(i);
    assert_int_equal(brixkv_match_prefix(c, keys, 32), 0);
    assert_false(brixkv_member_up(c, 0));
    assert_false(brixkv_member_up(c, 1));
    brixkv_status_t st[32];
    assert_int_equal(brixkv_delete(c, keys, 32, st), 0); /* backing off: no new attempt */
    assert_int_equal(st[0], BRIXKV_ST_UNAVAILABLE);
    for (int i = 0; i < 200 && !(atomic_load(&f1->close_seq) && atomic_load(&f2->close_seq)); i++)
        usleep(10 * 1000);
    /* both HELLOs were out before the client gave up on either: the waits
     * overlapped (one after the other, the first close would come first) */
    int h1 = atomic_load(&f1->hello_seq), h2 = atomic_load(&f2->hello_seq);
    int c1 = atomic_load(&f1->close_seq), c2 = atomic_load(&f2->close_seq);
    assert_true(h1 && h2 && c1 && c2);
    assert_true((h1 > h2 ? h1 : h2) < (c1 < c2 ? c1 : c2));
    assert_int_equal(atomic_load(&f1->conns), 1);
    brixkv_close(c);
    fake_stop(f1);
    fake_stop(f2);
}

static void test_down_node(void **state)
{
    (void)state;
    /* a port nobody listens on */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(s, (struct sockaddr *)&sa, sizeof(sa));
    socklen_t sl = sizeof(sa);
    getsockname(s, (struct sockaddr *)&sa, &sl);
    char srv[64];
    snprintf(srv, sizeof(srv), "127.0.0.1:%d", ntohs(sa.sin_port));
    close(s);
    brixkv_t *c = open_on(srv, false, 1000);
    brixkv_key_t keys[3] = { fkey(0), fkey(1), fkey(2) };
    brixkv_status_t st[3];
    const void *vals[3] = { "a", "b", "c" };
    size_t lens[3] = { 1, 1, 1 };
    assert_int_equal(brixkv_mput(c, keys, 3, vals, lens, st), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(st[i], BRIXKV_ST_UNAVAILABLE);
    assert_int_equal(brixkv_match_prefix(c, keys, 3), 0);
    assert_non_null(strstr(brixkv_last_error(c), "connect"));
    brixkv_stats_t bs;
    assert_int_equal(brixkv_stats(c, 0, &bs), BRIXKV_ST_UNAVAILABLE);
    brixkv_client_stats_t cs;
    brixkv_client_stats(c, &cs);
    assert_int_equal(cs.unavailable, 3 + 3);
    brixkv_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_members),
        cmocka_unit_test(test_rendezvous_distribution),
        cmocka_unit_test(test_rendezvous_minimal_movement),
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_open_validation),
        cmocka_unit_test(test_fake_tcp),
        cmocka_unit_test(test_fake_dribble),
        cmocka_unit_test(test_fake_shm),
        cmocka_unit_test(test_fake_shm_other_node),
        cmocka_unit_test(test_fake_shm_refused),
        cmocka_unit_test(test_fake_put_max_frame),
        cmocka_unit_test(test_fake_failures),
        cmocka_unit_test(test_two_nodes),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_set_servers_keeps_connections),
        cmocka_unit_test(test_parallel_connect),
        cmocka_unit_test(test_down_node),
    };
    if (getenv("TEST_FILTER")) /* run some while working on them */
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
