/*
 * session-affinity, AIBrix's semantics: a request carrying `x-session-id`
 * (base64 of the "ip:port" the session was served by) goes back there if
 * that pod is a candidate; otherwise the session key — `x-aibrix-session-key`,
 * else the `user` header — picks a pod by rendezvous hashing (highest
 * FNV-1a-64 of key ‖ 0x00 ‖ "ip:port"), so adding or removing a pod moves
 * only the sessions it gains or loses. Load is bounded: a pod holding more
 * than session_load_factor × the mean (+1) of the gateway's in-flight
 * requests is skipped in favour of the next highest hash. Without any key,
 * random. The response carries the chosen
 * pod's x-session-id.
 */
#include "gateway/router.h"

#include <string.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_encode(const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned char)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)in[i + 2];
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_val(char c)
{
    const char *p = c ? strchr(b64, c) : NULL;
    return p ? (int)(p - b64) : -1;
}

static size_t b64_decode(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    for (; *in && *in != '='; in++) {
        int d = b64_val(*in);
        if (d < 0)
            return 0;
        v = (v << 6) | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= cap)
                return 0;
            out[o++] = (char)((v >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return o;
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static double inflight(brix_route_ctx_t *ctx, size_t i)
{
    return (double)atomic_load_explicit(&brix_route_view(ctx, i)->pod->inflight,
                                        memory_order_relaxed);
}

static void set_session_out(brix_route_ctx_t *ctx, size_t k)
{
    const char *hp = brix_route_view(ctx, k)->pod->hostport;
    char *out = ctx->arena ? brix_arena_alloc(ctx->arena, strlen(hp) * 2 + 8) : NULL;
    if (out) {
        b64_encode(hp, strlen(hp), out);
        ctx->session_out = out;
    }
}

static size_t pick_session(brix_route_ctx_t *ctx)
{
    const char *sid = ctx->req ? brix_http_req_header(ctx->req, "x-session-id") : NULL;
    if (sid && *sid) {
        char hp[96];
        if (b64_decode(sid, hp, sizeof hp)) {
            for (size_t i = 0; i < ctx->ncand; i++) {
                if (!strcmp(brix_route_view(ctx, i)->pod->hostport, hp)) {
                    ctx->reason = "x-session-id names this pod";
                    set_session_out(ctx, i);
                    return i;
                }
            }
        }
    }
    const char *key = ctx->req ? brix_http_req_header(ctx->req, "x-aibrix-session-key") : NULL;
    if (!key || !*key)
        key = ctx->req ? brix_http_req_header(ctx->req, "user") : NULL;
    size_t k;
    if (!key || !*key) {
        ctx->reason = "no session key: random";
        k = (size_t)(brix_rng_next(ctx->rng) % ctx->ncand);
    } else {
        size_t kl = strlen(key);
        if (kl > 256)
            kl = 256; /* AIBrix bounds the key at 256 bytes */
        /* consistent hashing with bounded loads (Mirrokni, Thorup and
         * Zadimoghaddam, 2018), in the requests this gateway has on each pod
         * (scraped engine counts lag, and would move sessions for nothing),
         * with one request of slack so that low load never moves a session */
        double total = 0;
        for (size_t i = 0; i < ctx->ncand; i++)
            total += inflight(ctx, i);
        double bound = ctx->params->session_load_factor * total / (double)ctx->ncand + 1;
        size_t best = SIZE_MAX, any = 0;
        uint64_t best_h = 0, any_h = 0;
        for (size_t i = 0; i < ctx->ncand; i++) {
            const char *hp = brix_route_view(ctx, i)->pod->hostport;
            uint64_t h = fnv1a(0xcbf29ce484222325ull, key, kl);
            h = fnv1a(h, "", 1); /* the 0x00 separator */
            h = fnv1a(h, hp, strlen(hp));
            if (i == 0 || h > any_h) {
                any = i;
                any_h = h;
            }
            if (inflight(ctx, i) <= bound && (best == SIZE_MAX || h > best_h)) {
                best = i;
                best_h = h;
            }
        }
        k = best != SIZE_MAX ? best : any;
        ctx->reason = k == any ? "rendezvous hash of the session key"
                               : "rendezvous hash, next pod (the first is over its load bound)";
    }
    set_session_out(ctx, k);
    return k;
}

const brix_strategy_t brix_strategy_session_affinity = {
    .name = "session-affinity",
    .pick = pick_session,
    .pick_single = true,
    .about = "same pod for a session (x-session-id, x-aibrix-session-key or user), bounded load",
};
