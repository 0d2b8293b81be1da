/*
 * kv_sub — subscribes to a vLLM-style KV-event publisher and prints what it
 * receives, for the integration tests.
 *
 *   kv_sub ENDPOINT [--topic T] [--count N] [--timeout-ms MS] [--bind]
 *   kv_sub [ENDPOINT] --replay ENDPOINT --from SEQ [--timeout-ms MS]
 *
 * One JSON line per message on stdout (flushed per line):
 *   {"topic":"..","seq":N,"ts":F,"dp_rank":N|null,"events":[...]}
 * where each event is the msgpack array decoded generically, e.g.
 *   ["BlockStored",[hashes],parent|null,[token_ids],block_size,lora_id|null,"GPU"]
 * (uint64 hashes printed exactly). A payload that is not [ts, events, rank?]
 * gives {"topic":..,"seq":..,"error":"..","payload":<decoded>} instead.
 *
 * Subscribe mode (SUB connects, or binds with --bind for a publisher whose
 * endpoint connects): exits 0 after --count messages (default 1), 1 on
 * timeout (default 10000 ms, counted from start). --count 0 collects until
 * the timeout and exits 0. "kv_sub: ready" goes to stderr once the first
 * ZMTP handshake with the publisher completes; the subscription reaches the
 * publisher just after that, so tests should still expect to lose a batch
 * published at that very moment.
 *
 * Replay mode: a DEALER (REQ accepts only one reply) sends ["", SEQ as 8
 * bytes big-endian] and prints each replayed batch the same way, with
 * "topic":null (replies carry no topic); exits 0 at the end marker, 1 on
 * timeout.
 */
#include "core/buf.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define MAX_FRAMES 8

typedef struct frames {
    zmq_msg_t f[MAX_FRAMES];
    int n;   /* frames kept */
    int all; /* frames received, including ones beyond MAX_FRAMES */
} frames_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void frames_close(frames_t *fr)
{
    for (int i = 0; i < fr->n; i++)
        zmq_msg_close(&fr->f[i]);
    fr->n = fr->all = 0;
}

/* Receives one whole multipart message (the socket is known readable). */
static int frames_recv(void *sock, frames_t *fr)
{
    fr->n = fr->all = 0;
    for (;;) {
        zmq_msg_t tmp;
        zmq_msg_t *m = fr->n < MAX_FRAMES ? &fr->f[fr->n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            zmq_msg_close(m);
            return -1;
        }
        int more = zmq_msg_more(m);
        fr->all++;
        if (m == &tmp)
            zmq_msg_close(&tmp);
        else
            fr->n++;
        if (!more)
            return 0;
    }
}

static void put_double(brix_buf_t *b, double d)
{
    if (!isfinite(d)) {
        brix_buf_append_str(b, "null");
        return;
    }
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.17g", d);
    brix_buf_append_str(b, tmp);
    /* keep it a JSON float so readers see ts as one */
    if (!strpbrk(tmp, ".eE"))
        brix_buf_append_str(b, ".0");
}

/* Any msgpack object as JSON. */
static void put_obj(brix_buf_t *b, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        brix_buf_append_str(b, "null");
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        brix_buf_append_str(b, o->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        brix_buf_printf(b, "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        brix_buf_printf(b, "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        put_double(b, o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        brix_buf_append_json_str(b, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        brix_buf_append_json_str(b, o->via.bin.ptr, o->via.bin.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        brix_buf_append_char(b, '[');
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                brix_buf_append_char(b, ',');
            put_obj(b, &o->via.array.ptr[i]);
        }
        brix_buf_append_char(b, ']');
        break;
    case MSGPACK_OBJECT_MAP:
        brix_buf_append_char(b, '{');
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (i)
                brix_buf_append_char(b, ',');
            if (kv->key.type == MSGPACK_OBJECT_STR) {
                put_obj(b, &kv->key);
            } else {
                brix_buf_t k = BRIX_BUF_INIT;
                put_obj(&k, &kv->key);
                brix_buf_append_json_str(b, k.data ? k.data : "", k.len);
                brix_buf_free(&k);
            }
            brix_buf_append_char(b, ':');
            put_obj(b, &kv->val);
        }
        brix_buf_append_char(b, '}');
        break;
    default: /* EXT */
        brix_buf_append_str(b, "null");
        break;
    }
}

static void emit(brix_buf_t *b)
{
    brix_buf_append_char(b, '\n');
    fwrite(b->data, 1, b->len, stdout);
    fflush(stdout);
}

/* Prints one batch. topic may be NULL (replies carry none). */
static void print_batch(zmq_msg_t *topic, zmq_msg_t *seq, zmq_msg_t *payload)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_append_str(&b, "{\"topic\":");
    if (topic)
        brix_buf_append_json_str(&b, zmq_msg_data(topic), zmq_msg_size(topic));
    else
        brix_buf_append_str(&b, "null");
    brix_buf_append_str(&b, ",\"seq\":");
    if (zmq_msg_size(seq) == 8) {
        const unsigned char *p = zmq_msg_data(seq);
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            v = v << 8 | p[i];
        brix_buf_printf(&b, "%" PRIu64, v);
    } else {
        brix_buf_append_str(&b, "null");
    }

    const char *data = zmq_msg_data(payload);
    size_t len = zmq_msg_size(payload);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    const char *error = NULL;
    if (msgpack_unpack_next(&up, data, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        error = "payload is not msgpack";
    } else if (off != len) {
        error = "trailing bytes after payload";
    } else {
        const msgpack_object *o = &up.data;
        if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 2 || o->via.array.size > 3)
            error = "payload is not [ts, events, dp_rank]";
        else if (o->via.array.ptr[0].type != MSGPACK_OBJECT_FLOAT64 &&
                 o->via.array.ptr[0].type != MSGPACK_OBJECT_FLOAT32)
            error = "ts is not a float";
        else if (o->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY)
            error = "events is not an array";
    }
    if (error) {
        brix_buf_append_str(&b, ",\"error\":");
        brix_buf_append_json_str(&b, error, strlen(error));
        if (up.data.type != MSGPACK_OBJECT_NIL || off) {
            brix_buf_append_str(&b, ",\"payload\":");
            put_obj(&b, &up.data);
        }
    } else {
        const msgpack_object *a = up.data.via.array.ptr;
        brix_buf_append_str(&b, ",\"ts\":");
        put_double(&b, a[0].via.f64);
        brix_buf_append_str(&b, ",\"dp_rank\":");
        if (up.data.via.array.size == 3)
            put_obj(&b, &a[2]);
        else
            brix_buf_append_str(&b, "null");
        brix_buf_append_str(&b, ",\"events\":");
        put_obj(&b, &a[1]);
    }
    brix_buf_append_char(&b, '}');
    emit(&b);
    brix_buf_free(&b);
    msgpack_unpacked_destroy(&up);
}

static void print_error(const char *what, int nframes)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_printf(&b, "{\"error\":\"%s\",\"frames\":%d}", what, nframes);
    emit(&b);
    brix_buf_free(&b);
}

static void usage(void)
{
    fprintf(stderr, "usage: kv_sub ENDPOINT [--topic T] [--count N] [--timeout-ms MS] [--bind]\n"
                    "       kv_sub [ENDPOINT] --replay ENDPOINT --from SEQ [--timeout-ms MS]\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return -1;
    *out = v;
    return 0;
}

/* Waits for readable sockets until the deadline; 0 = timed out. */
static int wait_any(zmq_pollitem_t *items, int n, int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left <= 0)
        return 0;
    int rc = zmq_poll(items, n, (long)left);
    if (rc < 0 && zmq_errno() == EINTR)
        return -2;
    return rc;
}

static int run_sub(void *ctx, const char *ep, const char *topic, uint64_t count, bool bind,
                   int64_t deadline)
{
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    int zero = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(mon, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, topic, strlen(topic));
    if (zmq_socket_monitor(sub, "inproc://kv_sub.monitor", ZMQ_EVENT_HANDSHAKE_SUCCEEDED) ||
        zmq_connect(mon, "inproc://kv_sub.monitor")) {
        fprintf(stderr, "kv_sub: monitor: %s\n", zmq_strerror(zmq_errno()));
        return 2;
    }
    if ((bind ? zmq_bind(sub, ep) : zmq_connect(sub, ep)) != 0) {
        fprintf(stderr, "kv_sub: cannot %s %s: %s\n", bind ? "bind" : "connect to", ep,
                zmq_strerror(zmq_errno()));
        return 2;
    }
    bool ready = false;
    uint64_t got = 0;
    int rc = 1;
    frames_t fr = { .n = 0 };
    for (;;) {
        if (count && got >= count) {
            rc = 0;
            break;
        }
        zmq_pollitem_t items[2] = { { sub, 0, ZMQ_POLLIN, 0 }, { mon, 0, ZMQ_POLLIN, 0 } };
        int n = wait_any(items, 2, deadline);
        if (n == -2)
            continue;
        if (n <= 0) {
            if (count)
                fprintf(stderr, "kv_sub: timeout after %" PRIu64 " of %" PRIu64 " messages\n", got,
                        count);
            rc = count ? 1 : 0;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN && frames_recv(mon, &fr) == 0) {
            if (!ready) {
                ready = true;
                fprintf(stderr, "kv_sub: ready\n");
            }
            frames_close(&fr);
        }
        if (items[0].revents & ZMQ_POLLIN && frames_recv(sub, &fr) == 0) {
            if (fr.all == 3)
                print_batch(&fr.f[0], &fr.f[1], &fr.f[2]);
            else
                print_error("expected 3 frames", fr.all);
            frames_close(&fr);
            got++;
        }
    }
    zmq_socket_monitor(sub, NULL, 0);
    zmq_close(mon);
    zmq_close(sub);
    return rc;
}

static int run_replay(void *ctx, const char *ep, uint64_t from, int64_t deadline)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(dealer, ep) != 0) {
        fprintf(stderr, "kv_sub: cannot connect to %s: %s\n", ep, zmq_strerror(zmq_errno()));
        zmq_close(dealer);
        return 2;
    }
    unsigned char be[8];
    for (int i = 0; i < 8; i++)
        be[i] = (unsigned char)(from >> (56 - 8 * i));
    zmq_send(dealer, "", 0, ZMQ_SNDMORE);
    zmq_send(dealer, be, sizeof be, 0);

    int rc = 1;
    frames_t fr = { .n = 0 };
    for (;;) {
        zmq_pollitem_t item = { dealer, 0, ZMQ_POLLIN, 0 };
        int n = wait_any(&item, 1, deadline);
        if (n == -2)
            continue;
        if (n <= 0) {
            fprintf(stderr, "kv_sub: timeout before the replay end marker\n");
            break;
        }
        if (frames_recv(dealer, &fr) != 0)
            continue;
        if (fr.all != 3 || zmq_msg_size(&fr.f[0]) != 0) {
            print_error("expected 3 frames: empty, seq, payload", fr.all);
            frames_close(&fr);
            continue;
        }
        static const unsigned char end[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
        bool is_end = zmq_msg_size(&fr.f[1]) == 8 && memcmp(zmq_msg_data(&fr.f[1]), end, 8) == 0 &&
                      zmq_msg_size(&fr.f[2]) == 0;
        if (!is_end)
            print_batch(NULL, &fr.f[1], &fr.f[2]);
        frames_close(&fr);
        if (is_end) {
            rc = 0;
            break;
        }
    }
    zmq_close(dealer);
    return rc;
}

int main(int argc, char **argv)
{
    const char *ep = NULL, *topic = "", *replay = NULL;
    uint64_t count = 1, timeout = 10000, from = 0;
    bool have_from = false, bind = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "--topic") == 0 && has_val) {
            topic = argv[++i];
        } else if (strcmp(a, "--count") == 0 && has_val) {
            if (parse_u64(argv[++i], &count))
                goto bad;
        } else if (strcmp(a, "--timeout-ms") == 0 && has_val) {
            if (parse_u64(argv[++i], &timeout) || timeout > INT32_MAX)
                goto bad;
        } else if (strcmp(a, "--replay") == 0 && has_val) {
            replay = argv[++i];
        } else if (strcmp(a, "--from") == 0 && has_val) {
            if (parse_u64(argv[++i], &from))
                goto bad;
            have_from = true;
        } else if (strcmp(a, "--bind") == 0) {
            bind = true;
        } else if (a[0] != '-' && !ep) {
            ep = a;
        } else {
            goto bad;
        }
    }
    if (replay ? !have_from : !ep)
        goto bad;

    void *ctx = zmq_ctx_new();
    int64_t deadline = now_ms() + (int64_t)timeout;
    int rc = replay ? run_replay(ctx, replay, from, deadline)
                    : run_sub(ctx, ep, topic, count, bind, deadline);
    zmq_ctx_term(ctx);
    return rc;

bad:
    usage();
    return 2;
}
