/*
 * The basic load-balancing strategies (AIBrix names and semantics):
 *  random        — uniform among candidates;
 *  round-robin   — candidates in turn, per worker;
 *  least-request — fewest requests in flight: the gateway's own count on the
 *                  pod plus the engine's scraped running + waiting when the
 *                  scrape is fresh (ties at random).
 */
#include "gateway/router.h"

static size_t pick_random(brix_route_ctx_t *ctx)
{
    return (size_t)(brix_rng_next(ctx->rng) % ctx->ncand);
}

static size_t pick_round_robin(brix_route_ctx_t *ctx)
{
    return (size_t)((*ctx->rr)++ % ctx->ncand);
}

static void score_least_request(brix_route_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->ncand; i++) {
        const brix_pod_view_t *v = &ctx->snap->pods[ctx->cand[i]];
        double s = (double)atomic_load_explicit(&v->pod->inflight, memory_order_relaxed);
        if (v->metrics_fresh)
            s += v->running + v->waiting;
        ctx->score[i] = s;
    }
}

const brix_strategy_t brix_strategy_random = { "random", NULL, pick_random };
const brix_strategy_t brix_strategy_round_robin = { "round-robin", NULL, pick_round_robin };
const brix_strategy_t brix_strategy_least_request = { "least-request", score_least_request, NULL };
