/*
 * vtc-basic — AIBrix's Virtual-Token-Counter routing strategy
 * (shared/reference/aibrix.md), for users who select it by name:
 *
 *   the request's user is the `user` header (none -> random);
 *   input tokens ~ ceil(prompt characters / 4), output ~ ceil(1.5 x input);
 *   each user's tokens are summed over a sliding 5-minute window;
 *   norm   = (least + most tokens among active users) / 2, kept in [1000, 8000];
 *   target = min(user tokens / norm, candidates - 1);
 *   score(pod i) = |i - target| + min(in-flight(i) / 100, 1) + U(0, 0.1), lowest wins;
 *   then the user is charged input + 2 x output.
 *
 * Light users land on the first pods and heavy ones are pushed towards the
 * last, so a heavy user's traffic concentrates where it hurts others least.
 * This spreads users by consumption; it does not queue. brix's fairness
 * queue (--fairness vtc) is the OSDI'24 scheduler proper and works in front
 * of any strategy. In a weighted mix vtc-basic only scores (no charge).
 *
 * State: one table per process (a mutex), at most VTC_USERS users (the least
 * recently active one is replaced), 30 buckets of 10 s per user.
 */
#include <math.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "core/time.h"
#include "gateway/router.h"

#define VTC_USERS     1024
#define VTC_BUCKETS   30
#define VTC_BUCKET_NS (10ull * 1000000000ull)

typedef struct vtc_user {
    char name[64];
    uint64_t last_bucket; /* absolute bucket number of the newest write */
    double b[VTC_BUCKETS];
} vtc_user_t;

static struct {
    uv_once_t once;
    uv_mutex_t mu;
    vtc_user_t u[VTC_USERS];
    size_t n;
} vtc = { .once = UV_ONCE_INIT };

static void vtc_init(void)
{
    uv_mutex_init(&vtc.mu);
}

/* Drops buckets older than the window. */
static void roll(vtc_user_t *u, uint64_t now_b)
{
    if (now_b <= u->last_bucket)
        return;
    uint64_t gap = now_b - u->last_bucket;
    if (gap >= VTC_BUCKETS) {
        memset(u->b, 0, sizeof u->b);
    } else {
        for (uint64_t k = 1; k <= gap; k++)
            u->b[(u->last_bucket + k) % VTC_BUCKETS] = 0;
    }
    u->last_bucket = now_b;
}

static double total(const vtc_user_t *u)
{
    double t = 0;
    for (int i = 0; i < VTC_BUCKETS; i++)
        t += u->b[i];
    return t;
}

static vtc_user_t *find(const char *name, uint64_t now_b, bool create)
{
    vtc_user_t *oldest = NULL;
    for (size_t i = 0; i < vtc.n; i++) {
        if (!strcmp(vtc.u[i].name, name))
            return &vtc.u[i];
        if (!oldest || vtc.u[i].last_bucket < oldest->last_bucket)
            oldest = &vtc.u[i];
    }
    if (!create)
        return NULL;
    vtc_user_t *u = vtc.n < VTC_USERS ? &vtc.u[vtc.n++] : oldest;
    memset(u, 0, sizeof *u);
    snprintf(u->name, sizeof u->name, "%s", name);
    u->last_bucket = now_b;
    return u;
}

/* The user header, cut to what the table keeps (so long names still match). */
static const char *user_of(const brix_route_ctx_t *ctx, char buf[64])
{
    const char *u = ctx->req ? brix_http_req_header(ctx->req, "user") : NULL;
    if (!u || !*u)
        return NULL;
    snprintf(buf, 64, "%s", u);
    return buf;
}

static void score_vtc(brix_route_ctx_t *ctx)
{
    char ubuf[64];
    const char *user = user_of(ctx, ubuf);
    if (!user) {
        for (size_t i = 0; i < ctx->ncand; i++)
            ctx->score[i] = (double)(brix_rng_next(ctx->rng) % 1000);
        ctx->reason = "no user header: random";
        return;
    }
    uv_once(&vtc.once, vtc_init);
    uint64_t now_b = ctx->now_ns / VTC_BUCKET_NS;
    uv_mutex_lock(&vtc.mu);
    double lo = INFINITY, hi = 0, mine = 0;
    for (size_t i = 0; i < vtc.n; i++) {
        roll(&vtc.u[i], now_b);
        double t = total(&vtc.u[i]);
        if (t <= 0)
            continue;
        lo = t < lo ? t : lo;
        hi = t > hi ? t : hi;
        if (!strcmp(vtc.u[i].name, user))
            mine = t;
    }
    uv_mutex_unlock(&vtc.mu);
    double norm = isinf(lo) ? 1000 : (lo + hi) / 2;
    norm = norm < 1000 ? 1000 : norm > 8000 ? 8000 : norm;
    double target = mine / norm;
    if (target > (double)(ctx->ncand - 1))
        target = (double)(ctx->ncand - 1);
    for (size_t i = 0; i < ctx->ncand; i++) {
        double inflight = (double)atomic_load(&brix_route_view(ctx, i)->pod->inflight);
        double busy = inflight / 100 < 1 ? inflight / 100 : 1;
        double jitter = (double)(brix_rng_next(ctx->rng) % 1000) / 10000.0;
        ctx->score[i] = fabs((double)i - target) + busy + jitter;
    }
    ctx->reason = "user's recent tokens place it among the pods (AIBrix vtc-basic)";
}

static size_t pick_vtc(brix_route_ctx_t *ctx)
{
    size_t k = 0;
    for (size_t i = 1; i < ctx->ncand; i++)
        if (ctx->score[i] < ctx->score[k])
            k = i;
    char ubuf[64];
    const char *user = user_of(ctx, ubuf);
    if (user) {
        double in = (double)brix_prompt_estimate(ctx->fields), out = ceil(1.5 * in);
        uint64_t now_b = ctx->now_ns / VTC_BUCKET_NS;
        uv_mutex_lock(&vtc.mu);
        vtc_user_t *u = find(user, now_b, true);
        roll(u, now_b);
        u->b[now_b % VTC_BUCKETS] += in + 2 * out;
        uv_mutex_unlock(&vtc.mu);
    }
    return k;
}

const brix_strategy_t brix_strategy_vtc_basic = {
    .name = "vtc-basic",
    .score = score_vtc,
    .pick = pick_vtc,
    .pick_single = true, /* the user is charged even with one pod */
    .about = "AIBrix's vtc-basic: a user's recent tokens place it among the pods",
};
