/*
 * Prefix-aware routing, AIBrix's prefix-cache semantics:
 *  - the load of a pod is the gateway's own in-flight count on it;
 *  - if loads differ by more than prefix_imbalance, only load counts
 *    (least-request);
 *  - otherwise candidates are ordered by matched prompt blocks (descending),
 *    then load (ascending), and the first whose load is at most
 *    mean + k·std (population, over the candidates) wins — so a hot prefix
 *    cannot pile everything onto one pod; if none qualifies, least-request.
 * prefix-cache matches against the blocks the gateway routed to each pod
 * (approximate); prefix-cache-precise against what each pod's KV events
 * report as stored and not evicted, falling back to the approximate index
 * for pods without a live event stream.
 * With a shared KV store (brix kvcache), blocks the store holds beyond a
 * pod's own count as (1 - kv_store_cost) of a local hit each.
 * As a score (in mixes), 1 − matched fraction.
 */
#include "gateway/router.h"

#include <math.h>

static const uint32_t *matches(brix_route_ctx_t *ctx, bool precise)
{
    return precise ? brix_route_match(ctx) : brix_route_match_approx(ctx);
}

static void score_prefix(brix_route_ctx_t *ctx, bool precise)
{
    const uint32_t *m = matches(ctx, precise);
    const brix_prompt_t *p = brix_route_prompt(ctx);
    for (size_t i = 0; i < ctx->ncand; i++)
        ctx->score[i] =
            p->nhashes ? 1.0 - brix_route_hit_blocks(ctx, m, i) / (double)p->nhashes : 1.0;
    ctx->reason = "longest prompt-prefix match";
}

static size_t pick_prefix(brix_route_ctx_t *ctx, bool precise)
{
    size_t n = ctx->ncand;
    double lo = INFINITY, hi = -INFINITY, sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) {
        double l = (double)atomic_load_explicit(&brix_route_view(ctx, i)->pod->inflight,
                                                memory_order_relaxed);
        lo = l < lo ? l : lo;
        hi = l > hi ? l : hi;
        sum += l;
        sq += l * l;
    }
    if (hi - lo > ctx->params->prefix_imbalance) {
        ctx->reason = "loads too uneven: least-request";
        return brix_route_least_loaded(ctx);
    }
    const uint32_t *m = matches(ctx, precise);
    double *h = m ? brix_arena_alloc(ctx->arena, n * sizeof *h + 1) : NULL;
    for (size_t i = 0; h && i < n; i++)
        h[i] = brix_route_hit_blocks(ctx, m, i);
    double mean = sum / (double)n;
    double var = sq / (double)n - mean * mean;
    double bound = mean + ctx->params->prefix_std_k * sqrt(var > 0 ? var : 0);
    size_t best = SIZE_MAX, ties = 0;
    double best_load = 0;
    for (size_t i = 0; h && i < n; i++) {
        double l = (double)atomic_load_explicit(&brix_route_view(ctx, i)->pod->inflight,
                                                memory_order_relaxed);
        if (l > bound)
            continue;
        if (best == SIZE_MAX || h[i] > h[best] || (h[i] == h[best] && l < best_load)) {
            best = i;
            best_load = l;
            ties = 1;
        } else if (h[i] == h[best] && l == best_load && brix_rng_next(ctx->rng) % ++ties == 0) {
            best = i; /* uniform among equal candidates (AIBrix shuffles pods) */
        }
    }
    if (best == SIZE_MAX) {
        ctx->reason = "no candidate under the load bound: least-request";
        return brix_route_least_loaded(ctx);
    }
    ctx->reason = m[best]   ? "longest prefix match within the load bound"
                  : h[best] ? "prefix in the shared KV store: least loaded within the bound"
                            : "no prefix match: least loaded within the bound";
    return best;
}

/* prefix-cache: the gateway's own routing history only */
static void score_approx(brix_route_ctx_t *ctx)
{
    score_prefix(ctx, false);
}

static size_t pick_approx(brix_route_ctx_t *ctx)
{
    return pick_prefix(ctx, false);
}

/* prefix-cache-precise: KV events where live */
static void score_precise(brix_route_ctx_t *ctx)
{
    score_prefix(ctx, true);
}

static size_t pick_precise(brix_route_ctx_t *ctx)
{
    return pick_prefix(ctx, true);
}

const brix_strategy_t brix_strategy_prefix_cache = {
    .name = "prefix-cache",
    .score = score_approx,
    .pick = pick_approx,
    .about = "longest prefix the gateway routed there, within a load bound (AIBrix)",
};
const brix_strategy_t brix_strategy_prefix_cache_precise = {
    .name = "prefix-cache-precise",
    .score = score_precise,
    .pick = pick_precise,
    .about = "longest prefix the pod's KV events report cached, within a load bound",
};
