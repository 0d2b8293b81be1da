/*
 * One engine's KV-event subscription; see kv_watch.h. Runs on the control
 * loop: ZMQ's ZMQ_FD is edge-triggered, so every wake-up drains the socket
 * while ZMQ_EVENTS reports input.
 */
#include "gateway/kv_watch.h"
#include "gateway/kv_watch_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "gateway/prompt.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#define HELD_MAX          4096 /* live batches held during a replay */
#define MAP_MAX           (1u << 23)
#define REPLAY_TIMEOUT_MS 5000

typedef struct held {
    uint64_t seq;
    char *data;
    size_t len;
} held_t;

struct brix_kvw {
    uv_loop_t *loop;
    brix_prefix_index_t *ix;
    brix_pod_t *pod;
    char *endpoint, *replay, *base_model;
    uint32_t bs;
    void *sub, *dealer;
    uv_poll_t psub, pdealer;
    void *msub, *mdealer; /* monitors of sub and dealer (ZMQ_EVENT_DISCONNECTED) */
    uv_poll_t pmsub, pmdealer;
    int handles;
    bool closing;
    bool have_seq, live;
    uint64_t next_seq;  /* the sequence number the index expects next */
    bool have_live;     /* last_live is set */
    uint64_t last_live; /* the last sequence number seen on the SUB socket */
    /* replay: one request at a time is outstanding on the DEALER (the engine
     * answers in order); a newer one waits until it ends */
    bool replaying; /* a request is outstanding (its end marker not seen) */
    bool discard;   /* ...and what it delivers is ignored (superseded) */
    bool pending;   /* a replay to ask for when the outstanding one ends */
    uint64_t pending_from;
    uint64_t replayed;    /* batches the current replay delivered */
    bool gap_replay;      /* the current replay repairs a gap (not a full one) */
    uv_timer_t tmo;       /* replay timeout */
    uv_timer_t kick;      /* drains the sockets after a send (ZMQ_FD is edge-triggered) */
    held_t *held, *spare; /* live batches held while a replay runs; spare: a second buffer */
    size_t nheld;
    void (*on_change)(void *);
    void *ud;
    /* engine block hash -> gateway block hash, open addressing (key 0 = empty;
     * a real key of 0 is remapped to 1, which only costs a rare false match) */
    uint64_t *mk, *mv;
    uint32_t mcap, mused;
    brix_kvw_stats_t st;
    bool bs_warned;
};

/* ------------------------------------------------------------ the map -- */

static uint32_t mslot(const brix_kvw_t *w, uint64_t k)
{
    return (uint32_t)((k * 0x9e3779b97f4a7c15ull) >> 32) & (w->mcap - 1);
}

static void map_clear(brix_kvw_t *w)
{
    if (w->mk)
        memset(w->mk, 0, w->mcap * sizeof *w->mk);
    w->mused = 0;
}

static bool map_grow(brix_kvw_t *w)
{
    uint32_t ncap = w->mcap ? w->mcap * 2 : 4096;
    if (ncap > MAP_MAX)
        return false;
    uint64_t *nk = brix_calloc(ncap, sizeof *nk), *nv = brix_malloc(ncap * sizeof *nv);
    if (!nk || !nv) {
        brix_free(nk);
        brix_free(nv);
        return false;
    }
    uint64_t *ok = w->mk, *ov = w->mv;
    uint32_t ocap = w->mcap;
    w->mk = nk;
    w->mv = nv;
    w->mcap = ncap;
    w->mused = 0;
    for (uint32_t i = 0; i < ocap; i++) {
        if (!ok[i])
            continue;
        uint32_t s = mslot(w, ok[i]);
        while (w->mk[s])
            s = (s + 1) & (w->mcap - 1);
        w->mk[s] = ok[i];
        w->mv[s] = ov[i];
        w->mused++;
    }
    brix_free(ok);
    brix_free(ov);
    return true;
}

static void map_put(brix_kvw_t *w, uint64_t k, uint64_t v)
{
    k = k ? k : 1;
    if ((w->mused + 1) * 2 > w->mcap && !map_grow(w)) {
        if (!w->mcap)
            return; /* out of memory before the first table */
        /* full: start over; the pod's entries are rebuilt from new events */
        map_clear(w);
        brix_prefix_index_forget_pod(w->ix, BRIX_PREFIX_CACHED, w->pod->id);
    }
    uint32_t s = mslot(w, k);
    while (w->mk[s] && w->mk[s] != k)
        s = (s + 1) & (w->mcap - 1);
    if (!w->mk[s])
        w->mused++;
    w->mk[s] = k;
    w->mv[s] = v;
}

static bool map_get(const brix_kvw_t *w, uint64_t k, uint64_t *v)
{
    if (!w->mcap)
        return false;
    k = k ? k : 1;
    for (uint32_t s = mslot(w, k); w->mk[s]; s = (s + 1) & (w->mcap - 1)) {
        if (w->mk[s] == k) {
            *v = w->mv[s];
            return true;
        }
    }
    return false;
}

static void map_del(brix_kvw_t *w, uint64_t k)
{
    if (!w->mcap)
        return;
    k = k ? k : 1;
    uint32_t i = mslot(w, k);
    while (w->mk[i] && w->mk[i] != k)
        i = (i + 1) & (w->mcap - 1);
    if (!w->mk[i])
        return;
    /* backward-shift deletion */
    uint32_t j = i;
    w->mused--;
    for (;;) {
        w->mk[i] = 0;
        for (;;) {
            j = (j + 1) & (w->mcap - 1);
            if (!w->mk[j])
                return;
            uint32_t home = mslot(w, w->mk[j]);
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        w->mk[i] = w->mk[j];
        w->mv[i] = w->mv[j];
        i = j;
    }
}

/* ---------------------------------------------------------- state -- */

static void set_live(brix_kvw_t *w, bool live)
{
    if (w->live == live)
        return;
    w->live = live;
    if (w->on_change)
        w->on_change(w->ud);
}

static void reset_pod(brix_kvw_t *w)
{
    map_clear(w);
    brix_prefix_index_forget_pod(w->ix, BRIX_PREFIX_CACHED, w->pod->id);
}

/* --------------------------------------------------------- decoding -- */

static bool obj_uint(const msgpack_object *o, uint64_t *v)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *v = o->via.u64;
        return true;
    }
    return false;
}

/* A block hash: vLLM sends an integer (negative in older versions, which
 * hashed with Python's hash()) or bytes (sha256-based hashing); bytes are
 * folded to 64 bits, which is all the map needs. */
static bool obj_hash(const msgpack_object *o, uint64_t *v)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *v = o->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *v = (uint64_t)o->via.i64;
        return true;
    case MSGPACK_OBJECT_BIN: {
        uint64_t h = 0xcbf29ce484222325ull;
        for (uint32_t i = 0; i < o->via.bin.size; i++) {
            h ^= (unsigned char)o->via.bin.ptr[i];
            h *= 0x100000001b3ull;
        }
        *v = h;
        return true;
    }
    default:
        return false;
    }
}

static void on_stored(brix_kvw_t *w, const msgpack_object_array *ev)
{
    /* ["BlockStored", hashes[], parent|nil, token_ids[], block_size, lora_id|nil, medium, lora_name?] */
    if (ev->size < 5 || ev->ptr[1].type != MSGPACK_OBJECT_ARRAY ||
        ev->ptr[3].type != MSGPACK_OBJECT_ARRAY)
        return;
    const msgpack_object_array *hs = &ev->ptr[1].via.array, *toks = &ev->ptr[3].via.array;
    uint64_t bs;
    if (!obj_uint(&ev->ptr[4], &bs))
        return;
    if (bs != w->bs) {
        if (!w->bs_warned)
            BRIX_WARN("kv events from %s: block size %llu differs from --prefix-block-size %u; "
                      "its events are ignored",
                      w->pod->name, (unsigned long long)bs, w->bs);
        w->bs_warned = true;
        return;
    }
    if (toks->size != hs->size * bs)
        return;
    uint64_t parent_gw;
    if (ev->ptr[2].type == MSGPACK_OBJECT_NIL) {
        const char *root = w->base_model;
        char name[256];
        if (ev->size >= 8 && ev->ptr[7].type == MSGPACK_OBJECT_STR) {
            uint32_t n = ev->ptr[7].via.str.size < sizeof name - 1 ? ev->ptr[7].via.str.size
                                                                   : sizeof name - 1;
            memcpy(name, ev->ptr[7].via.str.ptr, n);
            name[n] = '\0';
            root = name;
        } else if (ev->size >= 6 && ev->ptr[5].type != MSGPACK_OBJECT_NIL) {
            w->st.unknown_parents++; /* an adapter block without its name: cannot root it */
            return;
        }
        if (!root) {
            w->st.unknown_parents++;
            return;
        }
        parent_gw = brix_prompt_root(root);
    } else {
        uint64_t pe;
        if (!obj_hash(&ev->ptr[2], &pe) || !map_get(w, pe, &parent_gw)) {
            w->st.unknown_parents++;
            return;
        }
    }
    uint32_t blk[256];
    uint64_t gws[64];
    size_t ng = 0;
    for (uint32_t i = 0; i < hs->size; i++) {
        uint64_t eh;
        if (!obj_hash(&hs->ptr[i], &eh))
            return;
        for (uint32_t t = 0; t < bs; t++) {
            uint64_t id;
            if (!obj_uint(&toks->ptr[i * bs + t], &id))
                return;
            blk[t] = (uint32_t)id;
        }
        parent_gw = brix_prompt_block_hash(parent_gw, blk, (uint32_t)bs);
        map_put(w, eh, parent_gw);
        gws[ng++] = parent_gw;
        if (ng == 64) {
            brix_prefix_index_add(w->ix, BRIX_PREFIX_CACHED, gws, ng, w->pod->id);
            ng = 0;
        }
        w->st.stored_blocks++;
    }
    if (ng)
        brix_prefix_index_add(w->ix, BRIX_PREFIX_CACHED, gws, ng, w->pod->id);
}

static void on_removed(brix_kvw_t *w, const msgpack_object_array *ev)
{
    if (ev->size < 2 || ev->ptr[1].type != MSGPACK_OBJECT_ARRAY)
        return;
    const msgpack_object_array *hs = &ev->ptr[1].via.array;
    for (uint32_t i = 0; i < hs->size; i++) {
        uint64_t eh, gw;
        if (!obj_hash(&hs->ptr[i], &eh) || !map_get(w, eh, &gw))
            continue;
        brix_prefix_index_remove(w->ix, gw, w->pod->id);
        map_del(w, eh);
        w->st.removed_blocks++;
    }
}

/* msgpack tags 0xc4..0xdf: bytes of the length field that follows the tag,
 * or of a fixed-size value; what the length counts (see counts_fit). */
enum { MP_FIXED, MP_BYTES, MP_EXT, MP_ARRAY, MP_MAP };
static const struct {
    uint8_t lenb, fixed, kind;
} mp_tags[] = {
    { 1, 0, MP_BYTES }, { 2, 0, MP_BYTES },  { 4, 0, MP_BYTES }, /* bin 8/16/32 */
    { 1, 0, MP_EXT },   { 2, 0, MP_EXT },    { 4, 0, MP_EXT },   /* ext 8/16/32 */
    { 0, 4, MP_FIXED }, { 0, 8, MP_FIXED },                      /* float 32/64 */
    { 0, 1, MP_FIXED }, { 0, 2, MP_FIXED },  { 0, 4, MP_FIXED }, /* uint 8/16/32 */
    { 0, 8, MP_FIXED }, { 0, 1, MP_FIXED },  { 0, 2, MP_FIXED }, /* uint 64, int 8/16 */
    { 0, 4, MP_FIXED }, { 0, 8, MP_FIXED },                      /* int 32/64 */
    { 0, 2, MP_FIXED }, { 0, 3, MP_FIXED },  { 0, 5, MP_FIXED }, /* fixext 1/2/4 */
    { 0, 9, MP_FIXED }, { 0, 17, MP_FIXED },                     /* fixext 8/16 */
    { 1, 0, MP_BYTES }, { 2, 0, MP_BYTES },  { 4, 0, MP_BYTES }, /* str 8/16/32 */
    { 2, 0, MP_ARRAY }, { 4, 0, MP_ARRAY },                      /* array 16/32 */
    { 2, 0, MP_MAP },   { 4, 0, MP_MAP },                        /* map 16/32 */
};

/*
 * msgpack-c allocates a container's elements from its declared count before
 * reading them, so a batch of a few bytes declaring 2^32 array items makes it
 * ask for ~100 GB. Every element takes at least one byte, so a first object
 * whose counts (or string lengths) exceed what remains of the batch is
 * malformed: this walk refuses it before anything is unpacked.
 */
static bool counts_fit(const unsigned char *p, size_t len)
{
    uint64_t pending = 1; /* objects still to read */
    size_t i = 0;
    while (pending) {
        if (pending > len - i) /* each pending object needs a byte */
            return false;
        unsigned c = p[i++];
        pending--;
        unsigned lenb = 0, kind = MP_FIXED;
        uint64_t n = 0; /* a container's items, or the bytes to skip */
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            continue; /* fixints, nil, booleans: the tag is all */
        } else if (c <= 0x8f) {
            kind = MP_MAP, n = c & 0x0f;
        } else if (c <= 0x9f) {
            kind = MP_ARRAY, n = c & 0x0f;
        } else if (c <= 0xbf) {
            n = c & 0x1f; /* fixstr */
        } else if (c == 0xc1) {
            return false; /* never used */
        } else {
            lenb = mp_tags[c - 0xc4].lenb;
            kind = mp_tags[c - 0xc4].kind;
            n = mp_tags[c - 0xc4].fixed;
        }
        if (lenb > len - i)
            return false;
        for (unsigned k = 0; k < lenb; k++)
            n = n << 8 | p[i++];
        if (kind == MP_ARRAY || kind == MP_MAP) {
            n *= kind == MP_MAP ? 2 : 1;
            if (pending > len - i || n > len - i - pending)
                return false;
            pending += n;
            continue;
        }
        n += kind == MP_EXT; /* an ext's type byte */
        if (n > len - i)
            return false;
        i += (size_t)n;
    }
    return true;
}

static void apply(brix_kvw_t *w, const char *data, size_t len)
{
    if (!counts_fit((const unsigned char *)data, len))
        return;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, data, len, &off) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size >= 2 &&
        u.data.via.array.ptr[1].type == MSGPACK_OBJECT_ARRAY) {
        w->st.batches++;
        const msgpack_object_array *evs = &u.data.via.array.ptr[1].via.array;
        for (uint32_t i = 0; i < evs->size; i++) {
            if (evs->ptr[i].type != MSGPACK_OBJECT_ARRAY || !evs->ptr[i].via.array.size)
                continue;
            const msgpack_object_array *ev = &evs->ptr[i].via.array;
            if (ev->ptr[0].type != MSGPACK_OBJECT_STR)
                continue;
            const msgpack_object_str *tag = &ev->ptr[0].via.str;
            w->st.events++;
            if (tag->size == 11 && !memcmp(tag->ptr, "BlockStored", 11))
                on_stored(w, ev);
            else if (tag->size == 12 && !memcmp(tag->ptr, "BlockRemoved", 12))
                on_removed(w, ev);
            else if (tag->size == 16 && !memcmp(tag->ptr, "AllBlocksCleared", 16))
                reset_pod(w);
        }
    }
    msgpack_unpacked_destroy(&u);
}

/* ---------------------------------------------------------- sockets -- */

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void on_kick(uv_timer_t *t);
static void on_tmo(uv_timer_t *t);

static bool send_replay(brix_kvw_t *w, uint64_t from)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(from >> (56 - 8 * i));
    /* a DEALER talks to vLLM's ROUTER like a REQ: empty delimiter, then the request */
    if (zmq_send(w->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(w->dealer, b, 8, ZMQ_DONTWAIT) < 0) {
        BRIX_WARN("kv events from %s: replay request failed: %s", w->pod->name,
                  zmq_strerror(zmq_errno()));
        return false;
    }
    w->replaying = true;
    w->discard = false;
    w->replayed = 0;
    w->gap_replay = from > 0;
    w->st.replays++;
    uv_timer_start(&w->tmo, on_tmo, REPLAY_TIMEOUT_MS, 0);
    uv_timer_start(&w->kick, on_kick, 0, 0); /* a send can swallow the fd's edge */
    return true;
}

/* Asks the engine for its batches from `from` on, now or when the
 * outstanding replay ends. False: no replay is coming. */
static bool request_replay(brix_kvw_t *w, uint64_t from)
{
    set_live(w, false);
    if (w->replaying) {
        w->discard = true;
        w->pending = true;
        w->pending_from = from;
        return true;
    }
    return send_replay(w, from);
}

/* Live batches wait while a replay we will use is coming. */
static bool holding(const brix_kvw_t *w)
{
    return (w->replaying && !w->discard) || w->pending;
}

static void drop_held(brix_kvw_t *w)
{
    for (size_t i = 0; i < w->nheld; i++)
        brix_free(w->held[i].data);
    w->nheld = 0;
}

/* Takes ownership of data; false (and data freed) when the buffer is full. */
static bool hold(brix_kvw_t *w, uint64_t seq, char *data, size_t len)
{
    if (w->nheld == HELD_MAX) {
        brix_free(data);
        return false;
    }
    w->held[w->nheld++] = (held_t){ seq, data, len };
    return true;
}

/* The replay takes too long or cannot be had: exactness is given up, the
 * pod's entries are rebuilt from the batches that follow. */
static void abandon_replay(brix_kvw_t *w)
{
    drop_held(w);
    reset_pod(w);
    w->have_seq = false;
    w->pending = false;
    if (w->replaying)
        w->discard = true;
}

static void process(brix_kvw_t *w, uint64_t seq, const char *data, size_t len);

/* Holds a copy of a live batch, or gives up on the replay when too many
 * are held (then the batch is processed as it comes). */
static bool hold_copy(brix_kvw_t *w, uint64_t seq, const char *data, size_t len)
{
    char *c = brix_malloc(len ? len : 1);
    if (c)
        memcpy(c, data, len);
    if (c && hold(w, seq, c, len))
        return true;
    BRIX_WARN("kv events from %s: replay too slow (%d batches held); dropping its cached "
              "entries",
              w->pod->name, HELD_MAX);
    abandon_replay(w);
    return false;
}

/* One batch in the live order: in sequence, a duplicate of what a replay
 * delivered, or after a gap. */
static void process(brix_kvw_t *w, uint64_t seq, const char *data, size_t len)
{
    if (holding(w) && hold_copy(w, seq, data, len))
        return;
    if (w->have_seq && seq < w->next_seq)
        return; /* a replay delivered it already */
    if (w->have_seq && seq > w->next_seq) {
        w->st.gaps++;
        BRIX_WARN("kv events from %s: sequence gap (%llu..%llu missing)%s", w->pod->name,
                  (unsigned long long)w->next_seq, (unsigned long long)seq - 1,
                  w->dealer ? ": replaying" : ": dropping its cached entries");
        if (w->dealer && request_replay(w, w->next_seq) && hold_copy(w, seq, data, len))
            return;
        reset_pod(w);
    }
    w->have_seq = true;
    w->next_seq = seq + 1;
    apply(w, data, len);
    if (!holding(w))
        set_live(w, true);
}

/* A batch from the SUB socket. The publisher numbers its batches from 0 and
 * one connection sees them in order, so a number that does not grow means a
 * new publisher: the engine restarted. */
static void on_live(brix_kvw_t *w, uint64_t seq, const char *data, size_t len)
{
    if (w->have_live && seq <= w->last_live) {
        w->st.resets++;
        BRIX_INFO("kv events from %s: sequence restarted at %llu (engine restart)", w->pod->name,
                  (unsigned long long)seq);
        reset_pod(w);
        drop_held(w);
        w->have_seq = false;
        w->pending = false;
        if (w->replaying)
            w->discard = true;
        /* what the new engine published before this batch reached us */
        if (seq > 0 && w->dealer)
            request_replay(w, 0);
    }
    w->have_live = true;
    w->last_live = seq;
    process(w, seq, data, len);
}

/* The outstanding replay ended (end marker), or `failed` (timed out). */
static void replay_done(brix_kvw_t *w, bool failed)
{
    uv_timer_stop(&w->tmo);
    w->replaying = false;
    if (w->discard) {
        w->discard = false;
        if (w->pending) {
            w->pending = false;
            if (send_replay(w, w->pending_from))
                return;
            abandon_replay(w);
        }
    } else if (failed) {
        BRIX_WARN("kv events from %s: the replay did not finish within %d ms; dropping its "
                  "cached entries",
                  w->pod->name, REPLAY_TIMEOUT_MS);
        reset_pod(w);
        w->have_seq = false;
    } else if (w->gap_replay && !w->replayed) {
        /* the engine has none of what we missed: it restarted (its new
         * sequence overtook ours) or its buffer moved on */
        w->st.resets++;
        reset_pod(w);
        w->have_seq = false;
    } else if (!w->gap_replay && !w->replayed && !w->have_seq) {
        /* nothing buffered at all: the engine has published nothing yet, so
         * its cache is empty; its first batch will be sequence 0 (an earlier
         * one we missed shows as a gap and is replayed) */
        w->have_seq = true;
        w->next_seq = 0;
    }
    /* the held batches, in order; one of them may start another replay,
     * which holds the rest again (in the other buffer) */
    held_t *items = w->held;
    size_t n = w->nheld;
    w->held = w->spare;
    w->spare = items;
    w->nheld = 0;
    for (size_t i = 0; i < n; i++) {
        if (holding(w)) {
            if (!hold(w, items[i].seq, items[i].data, items[i].len))
                abandon_replay(w);
            continue;
        }
        process(w, items[i].seq, items[i].data, items[i].len);
        brix_free(items[i].data);
    }
    if (!holding(w))
        set_live(w, w->have_seq);
}

static void on_replayed(brix_kvw_t *w, uint64_t seq, const char *data, size_t len)
{
    if (!w->replaying)
        return; /* the rest of a replay that timed out */
    if (seq == UINT64_MAX) {
        replay_done(w, false);
        return;
    }
    if (w->discard)
        return;
    w->replayed++;
    if (seq < w->next_seq && w->have_seq)
        return; /* already applied */
    if (w->have_seq && seq > w->next_seq) {
        /* the engine no longer buffers what we missed */
        w->st.gaps++;
        reset_pod(w);
    }
    w->have_seq = true;
    w->next_seq = seq + 1;
    apply(w, data, len);
}

/* The fuzzer's entry (kv_watch_internal.h): what drain() does with a frame. */
void brix__kvw_batch(brix_kvw_t *w, bool replay, uint64_t seq, const char *data, size_t len)
{
    if (replay)
        on_replayed(w, seq, data, len);
    else
        on_live(w, seq, data, len);
}

/* Reads one multipart message (ZMQ delivers all its frames at once): the
 * first max frames are kept, the rest discarded. Returns the count kept, or
 * -1 when no message was waiting. */
static int recv_frames(void *sock, zmq_msg_t *f, int max)
{
    int n = 0;
    bool more = true;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (n < max) {
            zmq_msg_init(&f[n]);
            zmq_msg_move(&f[n], &m);
            n++;
        }
        zmq_msg_close(&m);
    }
    return n ? n : -1;
}

static void drain(brix_kvw_t *w, void *sock, bool replay)
{
    for (;;) {
        int ev = 0;
        size_t sz = sizeof ev;
        if (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &sz) || !(ev & ZMQ_POLLIN))
            return;
        zmq_msg_t f[4];
        int n = recv_frames(sock, f, 4);
        if (n < 0)
            return;
        /* live: [topic, seq, payload]; replay (DEALER): ["", seq, payload] */
        if (n == 3 && zmq_msg_size(&f[1]) == 8) {
            uint64_t seq = be64(zmq_msg_data(&f[1]));
            if (replay)
                on_replayed(w, seq, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]));
            else
                on_live(w, seq, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]));
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        if (w->closing)
            return;
    }
}

static void on_sub_poll(uv_poll_t *p, int status, int events)
{
    brix_kvw_t *w = p->data;
    drain(w, w->sub, false);
}

static void on_dealer_poll(uv_poll_t *p, int status, int events)
{
    brix_kvw_t *w = p->data;
    drain(w, w->dealer, true);
}

static void drain_monitor(brix_kvw_t *w, void *mon, void *sock, const char *endpoint);

static void on_kick(uv_timer_t *t)
{
    brix_kvw_t *w = t->data;
    if (w->msub)
        drain_monitor(w, w->msub, w->sub, w->endpoint);
    if (w->mdealer && !w->closing)
        drain_monitor(w, w->mdealer, w->dealer, w->replay);
    if (w->dealer)
        drain(w, w->dealer, true);
    if (!w->closing)
        drain(w, w->sub, false);
}

static void on_tmo(uv_timer_t *t)
{
    brix_kvw_t *w = t->data;
    if (w->replaying && !w->closing)
        replay_done(w, true);
}

/* A connection dropped. libzmq reconnects by itself after most failures,
 * but not after a protocol error, which is what a message over
 * ZMQ_MAXMSGSIZE is: the endpoint is connected afresh so one oversized
 * message cannot silence the pod for good (what was lost shows up as a
 * sequence gap, repaired as any other). */
static void drain_monitor(brix_kvw_t *w, void *mon, void *sock, const char *endpoint)
{
    bool dropped = false;
    for (;;) {
        int ev = 0;
        size_t sz = sizeof ev;
        if (zmq_getsockopt(mon, ZMQ_EVENTS, &ev, &sz) || !(ev & ZMQ_POLLIN))
            break;
        zmq_msg_t f[2];
        int n = recv_frames(mon, f, 2);
        if (n < 0)
            break;
        if (n >= 1 && zmq_msg_size(&f[0]) >= 2) {
            uint16_t e;
            memcpy(&e, zmq_msg_data(&f[0]), sizeof e);
            dropped |= e == ZMQ_EVENT_DISCONNECTED;
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
    if (!dropped || w->closing)
        return;
    w->st.reconnects++;
    BRIX_INFO("kv events from %s: connection to %s dropped (engine gone, or a message over "
              "--kv-events-max-msg); connecting again",
              w->pod->name, endpoint);
    zmq_disconnect(sock, endpoint); /* fails when libzmq gave the endpoint up: fine */
    if (zmq_connect(sock, endpoint))
        BRIX_WARN("kv events from %s: cannot connect to %s again: %s", w->pod->name, endpoint,
                  zmq_strerror(zmq_errno()));
}

static void on_msub_poll(uv_poll_t *p, int status, int events)
{
    brix_kvw_t *w = p->data;
    drain_monitor(w, w->msub, w->sub, w->endpoint);
}

static void on_mdealer_poll(uv_poll_t *p, int status, int events)
{
    brix_kvw_t *w = p->data;
    drain_monitor(w, w->mdealer, w->dealer, w->replay);
}

static int watch(brix_kvw_t *w, void *sock, uv_poll_t *p, uv_poll_cb cb);

/* Watches sock's disconnections through a PAIR socket on its monitor. */
static int monitor(brix_kvw_t *w, void *zctx, void *sock, const char *tag, void **mon, uv_poll_t *p,
                   uv_poll_cb cb)
{
    char addr[96];
    snprintf(addr, sizeof addr, "inproc://brix-kvw-%p-%s", (void *)w, tag);
    int zero = 0;
    if (zmq_socket_monitor(sock, addr, ZMQ_EVENT_DISCONNECTED) ||
        !(*mon = zmq_socket(zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(*mon, ZMQ_LINGER, &zero, sizeof zero) || zmq_connect(*mon, addr))
        return -1;
    return watch(w, *mon, p, cb);
}

static int watch(brix_kvw_t *w, void *sock, uv_poll_t *p, uv_poll_cb cb)
{
    int fd;
    size_t sz = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &sz))
        return -1;
    if (uv_poll_init(w->loop, p, fd))
        return -1;
    p->data = w;
    w->handles++;
    uv_poll_start(p, UV_READABLE, cb);
    return 0;
}

brix_kvw_t *brix_kvw_new(uv_loop_t *loop, void *zctx, brix_prefix_index_t *ix, brix_pod_t *pod,
                         const char *endpoint, const char *replay, uint32_t block_size,
                         int64_t max_msg, void (*on_change)(void *ud), void *ud)
{
    brix_kvw_t *w = brix_calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->loop = loop;
    w->ix = ix;
    w->pod = pod;
    brix_pod_ref(pod);
    w->bs = block_size;
    w->on_change = on_change;
    w->ud = ud;
    w->endpoint = brix_strdup(endpoint);
    w->replay = replay ? brix_strdup(replay) : NULL;
    uv_timer_init(loop, &w->tmo);
    uv_timer_init(loop, &w->kick);
    w->tmo.data = w->kick.data = w;
    w->handles += 2;
    w->held = brix_calloc(HELD_MAX, sizeof *w->held);
    w->spare = brix_calloc(HELD_MAX, sizeof *w->spare);
    if (!w->endpoint || (replay && !w->replay) || !w->held || !w->spare)
        goto fail;
    w->sub = zmq_socket(zctx, ZMQ_SUB);
    int zero = 0;
    /* libzmq's default accepts messages of any size, each buffered whole
     * before we see it: a bound keeps one peer from pinning the memory (a
     * larger message drops that connection; the gap is seen and repaired) */
    int64_t maxmsg = max_msg > 0 ? max_msg : BRIX_KVW_MAX_MSG;
    if (!w->sub || zmq_setsockopt(w->sub, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(w->sub, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        zmq_setsockopt(w->sub, ZMQ_SUBSCRIBE, "", 0) ||
        monitor(w, zctx, w->sub, "sub", &w->msub, &w->pmsub, on_msub_poll) ||
        zmq_connect(w->sub, endpoint)) {
        BRIX_ERROR("kv events for %s: cannot subscribe to %s: %s", pod->name, endpoint,
                   zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (watch(w, w->sub, &w->psub, on_sub_poll))
        goto fail;
    if (replay) {
        w->dealer = zmq_socket(zctx, ZMQ_DEALER);
        if (!w->dealer || zmq_setsockopt(w->dealer, ZMQ_LINGER, &zero, sizeof zero) ||
            zmq_setsockopt(w->dealer, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
            monitor(w, zctx, w->dealer, "dealer", &w->mdealer, &w->pmdealer, on_mdealer_poll) ||
            zmq_connect(w->dealer, replay) || watch(w, w->dealer, &w->pdealer, on_dealer_poll)) {
            BRIX_ERROR("kv events for %s: cannot connect to the replay socket %s", pod->name,
                       replay);
            goto fail;
        }
        /* what the engine cached before we subscribed */
        if (!request_replay(w, 0))
            goto fail;
    }
    /* ZMQ_FD only signals edges: look at the sockets once now */
    uv_timer_start(&w->kick, on_kick, 0, 0);
    BRIX_INFO("kv events for %s: subscribed to %s%s%s", pod->name, endpoint,
              replay ? ", replay " : "", replay ? replay : "");
    return w;
fail:
    brix_kvw_close(w);
    return NULL;
}

void brix_kvw_reset(brix_kvw_t *w)
{
    w->st.resets++;
    reset_pod(w);
    drop_held(w);
    w->have_seq = false;
    w->have_live = false; /* the next publisher may number from 0 again */
    w->pending = false;
    if (w->replaying)
        w->discard = true;
    set_live(w, false);
    if (w->dealer && !request_replay(w, 0))
        abandon_replay(w);
}

void brix_kvw_set_base_model(brix_kvw_t *w, const char *name)
{
    if (w->base_model && name && !strcmp(w->base_model, name))
        return;
    brix_free(w->base_model);
    w->base_model = name ? brix_strdup(name) : NULL;
}

bool brix_kvw_live(const brix_kvw_t *w)
{
    return w->live && !holding(w);
}

const brix_kvw_stats_t *brix_kvw_stats(const brix_kvw_t *w)
{
    return &w->st;
}

static void kvw_free(brix_kvw_t *w)
{
    if (w->msub)
        zmq_close(w->msub);
    if (w->mdealer)
        zmq_close(w->mdealer);
    if (w->sub)
        zmq_close(w->sub);
    if (w->dealer)
        zmq_close(w->dealer);
    drop_held(w);
    brix_free(w->held);
    brix_free(w->spare);
    brix_free(w->endpoint);
    brix_free(w->replay);
    brix_free(w->base_model);
    brix_free(w->mk);
    brix_free(w->mv);
    brix_pod_unref(w->pod);
    brix_free(w);
}

static void on_poll_closed(uv_handle_t *h)
{
    brix_kvw_t *w = h->data;
    if (--w->handles == 0)
        kvw_free(w);
}

void brix_kvw_close(brix_kvw_t *w)
{
    w->closing = true;
    w->on_change = NULL;
    if (w->ix && w->pod)
        brix_prefix_index_forget_pod(w->ix, BRIX_PREFIX_CACHED, w->pod->id);
    int open = w->handles;
    if (!open) {
        kvw_free(w);
        return;
    }
    uv_close((uv_handle_t *)&w->tmo, on_poll_closed);
    uv_close((uv_handle_t *)&w->kick, on_poll_closed);
    if (w->psub.data == w)
        uv_close((uv_handle_t *)&w->psub, on_poll_closed);
    if (w->pdealer.data == w)
        uv_close((uv_handle_t *)&w->pdealer, on_poll_closed);
    if (w->pmsub.data == w)
        uv_close((uv_handle_t *)&w->pmsub, on_poll_closed);
    if (w->pmdealer.data == w)
        uv_close((uv_handle_t *)&w->pmdealer, on_poll_closed);
}
