/*
 * KV-cache event publisher; see kv_events.h for the wire format.
 *
 * The hot path (block_stored/removed, many calls per step) only appends the
 * msgpack encoding of one event to a buffer that is reused across steps; the
 * batch header [ts, array(n)] can only be written once n is known, so flush
 * writes the header into a second reused buffer and appends the events after
 * it. Nothing blocks: the PUB socket is written with ZMQ_DONTWAIT (a refused
 * batch is counted as dropped but keeps its sequence number, as in vLLM), and
 * the ROUTER replay socket is read from a uv_poll on its ZMQ_FD. Allocations
 * go through brix_buf/brix_malloc so tests can count them and inject ENOMEM.
 */
#include "engine_sim/kv_events.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"

#include <errno.h>
#include <limits.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define DEFAULT_ENDPOINT     "tcp://*:5557"
#define DEFAULT_BUFFER_STEPS 10000
#define DEFAULT_HWM          100000
#define MEDIUM               "GPU"

/* ------------------------------------------------------------ config -- */

typedef enum cfg_type {
    CFG_BOOL,
    CFG_STR,
    CFG_INT,
    CFG_IGNORED_INT, /* accepted for vLLM compatibility, not used */
} cfg_type_t;

/* The whole of KVEventsConfig as one table (cf. redis' config.c). For
 * strings, min is the minimum length. JSON null means "use the default". */
static const struct cfg_key {
    const char *name;
    cfg_type_t type;
    size_t off;
    int64_t min, max;
} cfg_keys[] = {
    { "enable_kv_cache_events", CFG_BOOL, offsetof(brix_kv_events_cfg_t, enabled), 0, 0 },
    { "publisher", CFG_STR, offsetof(brix_kv_events_cfg_t, publisher), 1, 0 },
    { "endpoint", CFG_STR, offsetof(brix_kv_events_cfg_t, endpoint), 1, 0 },
    { "replay_endpoint", CFG_STR, offsetof(brix_kv_events_cfg_t, replay_endpoint), 1, 0 },
    { "topic", CFG_STR, offsetof(brix_kv_events_cfg_t, topic), 0, 0 },
    { "buffer_steps", CFG_INT, offsetof(brix_kv_events_cfg_t, buffer_steps), 0, 1 << 24 },
    { "hwm", CFG_INT, offsetof(brix_kv_events_cfg_t, hwm), 0, INT_MAX },
    { "max_queue_size", CFG_IGNORED_INT, 0, 1, INT64_MAX },
};

static const struct cfg_key *cfg_key_find(const char *name)
{
    for (size_t i = 0; i < sizeof cfg_keys / sizeof cfg_keys[0]; i++)
        if (strcmp(cfg_keys[i].name, name) == 0)
            return &cfg_keys[i];
    return NULL;
}

static int cfg_set(brix_kv_events_cfg_t *cfg, const cJSON *root, const struct cfg_key *k,
                   brix_json_err_t *je)
{
    char *base = (char *)cfg;
    bool present = false;
    switch (k->type) {
    case CFG_BOOL:
        return brix_json_get_bool(root, k->name, &present, (bool *)(base + k->off), je);
    case CFG_INT:
        return brix_json_get_int(root, k->name, k->min, k->max, &present,
                                 (int64_t *)(base + k->off), je);
    case CFG_IGNORED_INT: {
        int64_t ignored;
        return brix_json_get_int(root, k->name, k->min, k->max, &present, &ignored, je);
    }
    case CFG_STR: {
        const char *s = NULL;
        if (brix_json_get_string(root, k->name, &present, &s, je))
            return -1;
        char **field = (char **)(base + k->off);
        brix_free(*field);
        *field = NULL;
        if (!present)
            return 0; /* JSON null: keep the default */
        if ((int64_t)strlen(s) < k->min) {
            brix_json_errf(je, k->name, "'%s' must not be empty", k->name);
            return -1;
        }
        if (!(*field = brix_strdup(s))) {
            brix_json_errf(je, k->name, "out of memory");
            return -1;
        }
        return 0;
    }
    }
    return -1;
}

int brix_kv_events_cfg_parse(const char *json, brix_kv_events_cfg_t *cfg, char *err, size_t errlen)
{
    brix_json_err_t je = { "", "" };
    memset(cfg, 0, sizeof *cfg);
    cfg->buffer_steps = DEFAULT_BUFFER_STEPS;
    cfg->hwm = DEFAULT_HWM;

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json ? json : "", &end, 1);
    if (!root) {
        size_t off = end && json && end >= json ? (size_t)(end - json) : 0;
        snprintf(err, errlen, "kv-events-config: invalid JSON at byte offset %zu", off);
        return -1;
    }
    if (!cJSON_IsObject(root)) {
        brix_json_errf(&je, NULL, "must be a JSON object");
        goto fail;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        const struct cfg_key *k = cfg_key_find(it->string);
        if (!k) {
            brix_json_errf(&je, it->string, "unknown key '%s'", it->string);
            goto fail;
        }
        /* the getters read the first of equal keys; say so rather than guess */
        for (const cJSON *prev = root->child; prev != it; prev = prev->next) {
            if (strcmp(prev->string, it->string) == 0) {
                brix_json_errf(&je, it->string, "duplicate key '%s'", it->string);
                goto fail;
            }
        }
        if (cfg_set(cfg, root, k, &je))
            goto fail;
    }

    /* Newer vLLM picks the publisher from enable_kv_cache_events. */
    if (!cfg->publisher && !(cfg->publisher = brix_strdup(cfg->enabled ? "zmq" : "null")))
        goto nomem;
    if (strcmp(cfg->publisher, "zmq") != 0 && strcmp(cfg->publisher, "null") != 0) {
        brix_json_errf(&je, "publisher", "'publisher' must be \"zmq\" or \"null\", got \"%s\"",
                       cfg->publisher);
        goto fail;
    }
    if (!cfg->endpoint && !(cfg->endpoint = brix_strdup(DEFAULT_ENDPOINT)))
        goto nomem;
    if (!cfg->topic && !(cfg->topic = brix_strdup("")))
        goto nomem;
    cJSON_Delete(root);
    return 0;

nomem:
    brix_json_errf(&je, NULL, "out of memory");
fail:
    snprintf(err, errlen, "kv-events-config: %s", je.msg);
    cJSON_Delete(root);
    brix_kv_events_cfg_free(cfg);
    return -1;
}

void brix_kv_events_cfg_free(brix_kv_events_cfg_t *cfg)
{
    brix_free(cfg->publisher);
    brix_free(cfg->endpoint);
    brix_free(cfg->replay_endpoint);
    brix_free(cfg->topic);
    cfg->publisher = cfg->endpoint = cfg->replay_endpoint = cfg->topic = NULL;
}

/* --------------------------------------------------------- publisher -- */

typedef struct ring_slot {
    uint64_t seq;
    char *data; /* msgpack payload, brix_malloc'd */
    size_t len;
} ring_slot_t;

struct brix_kv_events {
    uv_loop_t *loop;
    bool discard; /* "null" publisher: count, never encode or send */
    void *zctx;
    void *pub;
    void *replay;           /* ROUTER, NULL without replay_endpoint */
    uv_poll_t *replay_poll; /* on replay's ZMQ_FD; freed in its close callback */
    char *topic;
    size_t topic_len;
    char *ipc_paths[2]; /* socket files we bound, unlinked at close */

    brix_buf_t events; /* msgpack of the queued events, back to back */
    size_t nevents;
    bool poisoned;      /* an event of this batch was lost to ENOMEM */
    brix_buf_t payload; /* the batch being published; reused */

    ring_slot_t *ring; /* the last ring_cap batches, oldest at ring_head */
    size_t ring_cap, ring_head, ring_len;

    uint64_t next_seq;
    uint64_t published;
    uint64_t dropped;
};

static int buf_write(void *data, const char *p, size_t n)
{
    return brix_buf_append(data, p, n) ? -1 : 0;
}

static int pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, s, n);
}

static int pack_hashes(msgpack_packer *pk, const uint64_t *hashes, size_t n)
{
    int rc = msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++)
        rc |= msgpack_pack_uint64(pk, hashes[i]);
    return rc;
}

static void put_be64(unsigned char out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(v >> (56 - 8 * i));
}

/* Ends the encoding of one event that started at `mark`: on failure the
 * partial bytes are cut off and the batch is marked so flush drops it (a
 * visible sequence gap beats a batch silently missing an event). */
static void event_done(brix_kv_events_t *ev, size_t mark, int rc)
{
    if (rc == 0) {
        ev->nevents++;
        return;
    }
    ev->events.len = mark;
    if (ev->events.data)
        ev->events.data[mark] = '\0';
    if (!ev->poisoned)
        BRIX_WARN("kv events: out of memory, batch %llu will be dropped",
                  (unsigned long long)ev->next_seq);
    ev->poisoned = true;
}

void brix_kv_events_block_stored(brix_kv_events_t *ev, const uint64_t *hashes, size_t nhashes,
                                 bool has_parent, uint64_t parent, const uint32_t *token_ids,
                                 size_t ntokens, int block_size, int64_t lora_id,
                                 const char *lora_name)
{
    if (!ev)
        return;
    if (ev->discard) {
        ev->nevents++;
        return;
    }
    size_t mark = ev->events.len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->events, buf_write);
    /* one reservation so the packer's many small writes never reallocate */
    bool named = lora_id >= 0 && lora_name;
    int rc = brix_buf_reserve(&ev->events,
                              48 + nhashes * 9 + ntokens * 5 + (named ? strlen(lora_name) + 5 : 0));
    if (rc == 0) {
        /* vLLM v0.11 has 7 fields; later versions add lora_name (#27577),
         * which brix sends only for adapter blocks so base-model batches stay
         * byte-compatible with v0.11 consumers */
        rc |= msgpack_pack_array(&pk, named ? 8 : 7);
        rc |= pack_cstr(&pk, "BlockStored");
        rc |= pack_hashes(&pk, hashes, nhashes);
        rc |= has_parent ? msgpack_pack_uint64(&pk, parent) : msgpack_pack_nil(&pk);
        rc |= msgpack_pack_array(&pk, ntokens);
        for (size_t i = 0; i < ntokens; i++)
            rc |= msgpack_pack_uint32(&pk, token_ids[i]);
        rc |= msgpack_pack_int(&pk, block_size);
        rc |= lora_id >= 0 ? msgpack_pack_int64(&pk, lora_id) : msgpack_pack_nil(&pk);
        rc |= pack_cstr(&pk, MEDIUM);
        if (named)
            rc |= pack_cstr(&pk, lora_name);
    }
    event_done(ev, mark, rc);
}

void brix_kv_events_block_removed(brix_kv_events_t *ev, const uint64_t *hashes, size_t nhashes)
{
    if (!ev)
        return;
    if (ev->discard) {
        ev->nevents++;
        return;
    }
    size_t mark = ev->events.len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->events, buf_write);
    int rc = brix_buf_reserve(&ev->events, 32 + nhashes * 9);
    if (rc == 0) {
        rc |= msgpack_pack_array(&pk, 3);
        rc |= pack_cstr(&pk, "BlockRemoved");
        rc |= pack_hashes(&pk, hashes, nhashes);
        rc |= pack_cstr(&pk, MEDIUM);
    }
    event_done(ev, mark, rc);
}

void brix_kv_events_all_cleared(brix_kv_events_t *ev)
{
    if (!ev)
        return;
    if (ev->discard) {
        ev->nevents++;
        return;
    }
    size_t mark = ev->events.len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->events, buf_write);
    int rc = msgpack_pack_array(&pk, 1);
    rc |= pack_cstr(&pk, "AllBlocksCleared");
    event_done(ev, mark, rc);
}

/* payload = [ts, [events...], data_parallel_rank] */
static int encode_batch(brix_kv_events_t *ev, size_t nevents)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double ts = (double)now.tv_sec + (double)now.tv_nsec / 1e9;

    brix_buf_reset(&ev->payload);
    if (brix_buf_reserve(&ev->payload, ev->events.len + 32))
        return -ENOMEM;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->payload, buf_write);
    int rc = msgpack_pack_array(&pk, 3);
    rc |= msgpack_pack_double(&pk, ts);
    rc |= msgpack_pack_array(&pk, nevents);
    rc |= buf_write(&ev->payload, ev->events.data, ev->events.len);
    rc |= msgpack_pack_int(&pk, 0);
    return rc ? -ENOMEM : 0;
}

static int send_batch(brix_kv_events_t *ev, uint64_t seq)
{
    unsigned char be[8];
    put_be64(be, seq);
    /* Only the first frame can be refused: once it is queued ZMQ takes the
     * rest of the multipart message atomically. */
    if (zmq_send(ev->pub, ev->topic, ev->topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->pub, be, sizeof be, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->pub, ev->payload.data, ev->payload.len, ZMQ_DONTWAIT) < 0)
        return -zmq_errno();
    return 0;
}

/* Keeps a copy of the batch for replays. The copy is exact-size so that a
 * full ring costs the payload bytes, not the growth slack of ev->payload. */
static void ring_store(brix_kv_events_t *ev, uint64_t seq)
{
    if (!ev->ring_cap)
        return;
    char *copy = brix_malloc(ev->payload.len ? ev->payload.len : 1);
    if (!copy) {
        BRIX_WARN("kv events: out of memory, batch %llu cannot be replayed",
                  (unsigned long long)seq);
        return;
    }
    memcpy(copy, ev->payload.data, ev->payload.len);
    ring_slot_t *slot;
    if (ev->ring_len == ev->ring_cap) {
        slot = &ev->ring[ev->ring_head];
        brix_free(slot->data);
        ev->ring_head = (ev->ring_head + 1) % ev->ring_cap;
    } else {
        slot = &ev->ring[(ev->ring_head + ev->ring_len) % ev->ring_cap];
        ev->ring_len++;
    }
    slot->seq = seq;
    slot->data = copy;
    slot->len = ev->payload.len;
}

static void count_drop(brix_kv_events_t *ev, uint64_t seq, int rc)
{
    ev->dropped++;
    /* 1, 2, 4, 8...: visible without flooding the log under sustained loss */
    if ((ev->dropped & (ev->dropped - 1)) == 0)
        BRIX_WARN("kv events: batch %llu dropped (%s); %llu dropped so far",
                  (unsigned long long)seq, rc == -ENOMEM ? "out of memory" : zmq_strerror(-rc),
                  (unsigned long long)ev->dropped);
}

int brix_kv_events_flush(brix_kv_events_t *ev)
{
    if (!ev || (ev->nevents == 0 && !ev->poisoned))
        return 0;
    uint64_t seq = ev->next_seq++;
    size_t n = ev->nevents;
    ev->nevents = 0;
    if (ev->discard) {
        ev->published++;
        return 0;
    }
    int rc = ev->poisoned ? -ENOMEM : encode_batch(ev, n);
    ev->poisoned = false;
    brix_buf_reset(&ev->events);
    if (rc) {
        count_drop(ev, seq, rc);
        return rc;
    }
    rc = send_batch(ev, seq);
    if (rc)
        count_drop(ev, seq, rc);
    else
        ev->published++;
    /* kept even when PUB refused it: a replay can still recover it */
    ring_store(ev, seq);
    return rc;
}

uint64_t brix_kv_events_published(const brix_kv_events_t *ev)
{
    return ev ? ev->published : 0;
}

uint64_t brix_kv_events_dropped(const brix_kv_events_t *ev)
{
    return ev ? ev->dropped : 0;
}

/* ------------------------------------------------------------ replay -- */

/* Sends one multipart reply to `id`; -errno when the ROUTER refuses it
 * (ZMQ_ROUTER_MANDATORY: EHOSTUNREACH when the client left, EAGAIN at HWM). */
static int replay_send(brix_kv_events_t *ev, zmq_msg_t *id, const unsigned char be[8],
                       const void *data, size_t len)
{
    if (zmq_send(ev->replay, zmq_msg_data(id), zmq_msg_size(id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->replay, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->replay, be, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->replay, data, len, ZMQ_DONTWAIT) < 0)
        return -zmq_errno();
    return 0;
}

static void replay_answer(brix_kv_events_t *ev, zmq_msg_t *id, uint64_t start)
{
    unsigned char be[8];
    size_t sent = 0;
    for (size_t i = 0; i < ev->ring_len; i++) {
        const ring_slot_t *s = &ev->ring[(ev->ring_head + i) % ev->ring_cap];
        if (s->seq < start)
            continue;
        put_be64(be, s->seq);
        int rc = replay_send(ev, id, be, s->data, s->len);
        if (rc) {
            BRIX_WARN("kv events: replay from seq %llu cut short after %zu batches: %s",
                      (unsigned long long)start, sent, zmq_strerror(-rc));
            return;
        }
        sent++;
    }
    memset(be, 0xff, sizeof be);
    int rc = replay_send(ev, id, be, "", 0);
    if (rc)
        BRIX_WARN("kv events: replay end marker not sent: %s", zmq_strerror(-rc));
    else
        BRIX_DEBUG("kv events: replayed %zu batches from seq %llu", sent,
                   (unsigned long long)start);
}

/* Reads one whole request ([identity, "", start_seq]) and answers it. */
static void replay_handle_one(brix_kv_events_t *ev)
{
    zmq_msg_t part[3];
    int nparts = 0;
    for (int i = 0; i < 3; i++)
        zmq_msg_init(&part[i]);
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, ev->replay, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break; /* cannot happen mid-message: ZMQ delivers them whole */
        }
        int more = zmq_msg_more(&m);
        if (nparts < 3)
            zmq_msg_move(&part[nparts], &m);
        zmq_msg_close(&m);
        nparts++;
        if (!more)
            break;
    }
    size_t seqlen = nparts == 3 ? zmq_msg_size(&part[2]) : 0;
    if (nparts != 3 || zmq_msg_size(&part[1]) != 0 || seqlen == 0 || seqlen > 8) {
        BRIX_WARN("kv events: ignoring malformed replay request (%d frames)", nparts);
    } else {
        /* vLLM reads the start as int.from_bytes(big): accept 1..8 bytes */
        const unsigned char *p = zmq_msg_data(&part[2]);
        uint64_t start = 0;
        for (size_t i = 0; i < seqlen; i++)
            start = start << 8 | p[i];
        replay_answer(ev, &part[0], start);
    }
    for (int i = 0; i < 3; i++)
        zmq_msg_close(&part[i]);
}

static void on_replay_readable(uv_poll_t *h, int status, int events)
{
    brix_kv_events_t *ev = h->data;
    if (status < 0) {
        BRIX_WARN("kv events: replay socket poll failed: %s", uv_strerror(status));
        return;
    }
    /* ZMQ_FD is edge-triggered: drain until ZMQ_EVENTS stops saying POLLIN,
     * or requests that arrived together would wait for the next one. */
    for (;;) {
        int zev = 0;
        size_t sz = sizeof zev;
        if (zmq_getsockopt(ev->replay, ZMQ_EVENTS, &zev, &sz) != 0 || !(zev & ZMQ_POLLIN))
            break;
        replay_handle_one(ev);
    }
}

/* ------------------------------------------------------------ set up -- */

static void on_poll_closed(uv_handle_t *h)
{
    brix_free(h);
}

/* vLLM's rule: wildcard hosts and local transports bind, the rest connect. */
static bool endpoint_binds(const char *ep)
{
    return strchr(ep, '*') || strstr(ep, "::") || strncmp(ep, "ipc://", 6) == 0 ||
           strncmp(ep, "inproc://", 9) == 0;
}

/* What peers may send us is small: subscriptions (a topic) to the PUB socket
 * and 8-byte sequence numbers to the replay socket. Anything larger is a
 * misbehaving or hostile peer, which libzmq then disconnects instead of
 * buffering whatever size it declares. */
#define KV_EVENTS_MAX_INBOUND 4096

static int sock_opts(void *s, int hwm, const char *ep)
{
    int zero = 0, one = 1;
    int64_t max_in = KV_EVENTS_MAX_INBOUND;
    if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max_in, sizeof max_in))
        return -1;
    if ((strchr(ep, '[') || strstr(ep, "::")) && zmq_setsockopt(s, ZMQ_IPV6, &one, sizeof one))
        return -1;
    return 0;
}

/* Logs the endpoint actually bound (a "*" port becomes a number) and
 * remembers an ipc socket file: libzmq leaves it behind on close. */
static void bound(brix_kv_events_t *ev, void *s, const char *what, const char *ep)
{
    char last[256] = "";
    size_t sz = sizeof last;
    if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, last, &sz) != 0 || !last[0])
        snprintf(last, sizeof last, "%s", ep);
    BRIX_INFO("kv events: %s on %s", what, last);
    const char *path = last + 6;
    if (strncmp(last, "ipc://", 6) != 0 || *path == '@') /* '@': abstract, no file */
        return;
    for (size_t i = 0; i < 2; i++) {
        if (!ev->ipc_paths[i]) {
            ev->ipc_paths[i] = brix_strdup(path); /* on ENOMEM the file stays */
            return;
        }
    }
}

brix_kv_events_t *brix_kv_events_new(uv_loop_t *loop, const brix_kv_events_cfg_t *cfg, char *err,
                                     size_t errlen)
{
    const char *topic = cfg->topic ? cfg->topic : "";
    brix_kv_events_t *ev = brix_calloc(1, sizeof *ev);
    if (!ev || !(ev->topic = brix_strdup(topic))) {
        snprintf(err, errlen, "kv events: out of memory");
        goto fail;
    }
    ev->loop = loop;
    ev->topic_len = strlen(topic);
    if (!cfg->publisher || strcmp(cfg->publisher, "null") == 0) {
        ev->discard = true;
        return ev;
    }
    if (strcmp(cfg->publisher, "zmq") != 0) {
        snprintf(err, errlen, "kv events: unknown publisher \"%s\"", cfg->publisher);
        goto fail;
    }
    const char *ep = cfg->endpoint ? cfg->endpoint : DEFAULT_ENDPOINT;
    int hwm = cfg->hwm < 0 ? 0 : cfg->hwm > INT_MAX ? INT_MAX : (int)cfg->hwm;

    if (!(ev->zctx = zmq_ctx_new()) || !(ev->pub = zmq_socket(ev->zctx, ZMQ_PUB)) ||
        sock_opts(ev->pub, hwm, ep)) {
        snprintf(err, errlen, "kv events: cannot create ZMQ socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    bool bind = endpoint_binds(ep);
    if ((bind ? zmq_bind(ev->pub, ep) : zmq_connect(ev->pub, ep)) != 0) {
        snprintf(err, errlen, "kv events: cannot %s %s: %s", bind ? "bind" : "connect to", ep,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (bind)
        bound(ev, ev->pub, "publishing", ep);
    else
        BRIX_INFO("kv events: publishing to %s", ep);

    if (cfg->replay_endpoint) {
        const char *rep = cfg->replay_endpoint;
        int one = 1;
        /* A replay sends up to buffer_steps + 1 messages in one go. */
        int64_t rhwm = cfg->buffer_steps + 1 > hwm ? cfg->buffer_steps + 1 : hwm;
        if (hwm == 0 || rhwm > INT_MAX)
            rhwm = 0;
        if (!(ev->replay = zmq_socket(ev->zctx, ZMQ_ROUTER)) ||
            sock_opts(ev->replay, (int)rhwm, rep) ||
            zmq_setsockopt(ev->replay, ZMQ_ROUTER_MANDATORY, &one, sizeof one)) {
            snprintf(err, errlen, "kv events: cannot create ZMQ socket: %s",
                     zmq_strerror(zmq_errno()));
            goto fail;
        }
        if (zmq_bind(ev->replay, rep) != 0) {
            snprintf(err, errlen, "kv events: cannot bind %s: %s", rep, zmq_strerror(zmq_errno()));
            goto fail;
        }
        bound(ev, ev->replay, "replaying", rep);
        if (cfg->buffer_steps > 0) {
            ev->ring_cap = (size_t)cfg->buffer_steps;
            if (!(ev->ring = brix_calloc(ev->ring_cap, sizeof *ev->ring))) {
                snprintf(err, errlen, "kv events: out of memory");
                goto fail;
            }
        }
        int fd = -1;
        size_t sz = sizeof fd;
        if (zmq_getsockopt(ev->replay, ZMQ_FD, &fd, &sz) != 0) {
            snprintf(err, errlen, "kv events: ZMQ_FD: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        if (!(ev->replay_poll = brix_malloc(sizeof *ev->replay_poll))) {
            snprintf(err, errlen, "kv events: out of memory");
            goto fail;
        }
        int rc = uv_poll_init(loop, ev->replay_poll, fd);
        if (rc) {
            /* not initialised, so not on the loop: plain free */
            brix_free(ev->replay_poll);
            ev->replay_poll = NULL;
            snprintf(err, errlen, "kv events: uv_poll_init: %s", uv_strerror(rc));
            goto fail;
        }
        ev->replay_poll->data = ev;
        if ((rc = uv_poll_start(ev->replay_poll, UV_READABLE, on_replay_readable))) {
            snprintf(err, errlen, "kv events: uv_poll_start: %s", uv_strerror(rc));
            goto fail;
        }
    }
    return ev;

fail:
    brix_kv_events_close(ev);
    return NULL;
}

void brix_kv_events_close(brix_kv_events_t *ev)
{
    if (!ev)
        return;
    /* uv_close takes the fd out of epoll now, so the sockets (which own it)
     * can go right after; the handle memory waits for the callback. */
    if (ev->replay_poll)
        uv_close((uv_handle_t *)ev->replay_poll, on_poll_closed);
    if (ev->pub)
        zmq_close(ev->pub);
    if (ev->replay)
        zmq_close(ev->replay);
    if (ev->zctx) {
        while (zmq_ctx_term(ev->zctx) != 0 && zmq_errno() == EINTR) {
        }
    }
    for (size_t i = 0; i < 2; i++) {
        if (ev->ipc_paths[i]) {
            unlink(ev->ipc_paths[i]);
            brix_free(ev->ipc_paths[i]);
        }
    }
    if (ev->ring) {
        for (size_t i = 0; i < ev->ring_len; i++)
            brix_free(ev->ring[(ev->ring_head + i) % ev->ring_cap].data);
        brix_free(ev->ring);
    }
    brix_buf_free(&ev->events);
    brix_buf_free(&ev->payload);
    brix_free(ev->topic);
    brix_free(ev);
}
