/*
 * Load-balancing basics (AIBrix names and semantics):
 *  random        — uniform among candidates;
 *  round-robin   — candidates in turn, per worker;
 *  least-request — fewest requests in flight: the gateway's own count on the
 *                  pod plus the engine's scraped running + waiting when fresh;
 *  power-of-two  — two candidates at random, the less loaded of them.
 */
#include "gateway/router.h"

static size_t pick_random(brix_route_ctx_t *ctx)
{
    ctx->reason = "uniform random";
    return (size_t)(brix_rng_next(ctx->rng) % ctx->ncand);
}

static size_t pick_round_robin(brix_route_ctx_t *ctx)
{
    ctx->reason = "next in turn";
    return (size_t)((*ctx->rr)++ % ctx->ncand);
}

static void score_least_request(brix_route_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->ncand; i++)
        ctx->score[i] = brix_route_load(ctx, i);
    ctx->reason = "fewest requests in flight";
}

static size_t pick_power_of_two(brix_route_ctx_t *ctx)
{
    /* two different candidates, as AIBrix picks them */
    size_t a = (size_t)(brix_rng_next(ctx->rng) % ctx->ncand);
    size_t b = a;
    if (ctx->ncand > 1)
        b = (a + 1 + (size_t)(brix_rng_next(ctx->rng) % (ctx->ncand - 1))) % ctx->ncand;
    ctx->reason = "less loaded of two random candidates";
    return brix_route_load(ctx, b) < brix_route_load(ctx, a) ? b : a;
}

const brix_strategy_t brix_strategy_random = {
    .name = "random",
    .pick = pick_random,
    .about = "uniform among ready pods",
};
const brix_strategy_t brix_strategy_round_robin = {
    .name = "round-robin",
    .pick = pick_round_robin,
    .about = "ready pods in turn",
};
const brix_strategy_t brix_strategy_least_request = {
    .name = "least-request",
    .score = score_least_request,
    .about = "fewest requests in flight (gateway's count + engine running + waiting)",
};
const brix_strategy_t brix_strategy_power_of_two = {
    .name = "power-of-two",
    .score = score_least_request,
    .pick = pick_power_of_two,
    .about = "less loaded of two random pods",
};
