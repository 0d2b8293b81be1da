/*
 * The router's generic part: candidate filtering, breaker probes and the
 * default pick. Strategies live in strategies/.
 */
#include "gateway/router.h"

#include <string.h>

static const brix_strategy_t *const strategies[] = {
    &brix_strategy_random,
    &brix_strategy_round_robin,
    &brix_strategy_least_request,
};

const brix_strategy_t *brix_strategy_find(const char *name)
{
    for (size_t i = 0; i < sizeof strategies / sizeof *strategies; i++)
        if (!strcmp(strategies[i]->name, name))
            return strategies[i];
    return NULL;
}

const char *brix_strategy_names(void)
{
    return "random, round-robin, least-request";
}

uint64_t brix_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool excluded(const brix_route_ctx_t *ctx, uint32_t idx)
{
    for (size_t i = 0; i < ctx->nexclude; i++)
        if (ctx->exclude[i] == idx)
            return true;
    return false;
}

static size_t default_pick(brix_route_ctx_t *ctx)
{
    size_t best = 0, ties = 0;
    for (size_t i = 0; i < ctx->ncand; i++) {
        if (i == 0 || ctx->score[i] < ctx->score[best]) {
            best = i;
            ties = 1;
        } else if (ctx->score[i] == ctx->score[best]) {
            /* reservoir sampling over equal scores: uniform among ties */
            ties++;
            if (brix_rng_next(ctx->rng) % ties == 0)
                best = i;
        }
    }
    return best;
}

brix_route_rc_t brix_route(brix_route_ctx_t *ctx, const brix_strategy_t *s, uint32_t *pod_index,
                           bool *probe)
{
    *probe = false;
    ctx->ncand = 0;
    for (size_t i = 0; i < ctx->model->npods; i++) {
        uint32_t idx = ctx->model->pods[i];
        const brix_pod_view_t *v = &ctx->snap->pods[idx];
        if (!v->healthy || excluded(ctx, idx))
            continue;
        brix_pod_t *p = v->pod;
        brix_breaker_state_t st = brix_breaker_state(p, ctx->now_ns);
        if (st == BRIX_BREAKER_OPEN ||
            (st == BRIX_BREAKER_HALF_OPEN && atomic_load(&p->probe_in_flight)))
            continue;
        ctx->cand[ctx->ncand] = idx;
        ctx->score[ctx->ncand] = 0;
        ctx->ncand++;
    }
    if (ctx->ncand && s->score)
        s->score(ctx);
    while (ctx->ncand) {
        size_t k = s->pick ? s->pick(ctx) : default_pick(ctx);
        uint32_t idx = ctx->cand[k];
        if (brix_breaker_allow(ctx->snap->pods[idx].pod, ctx->now_ns, probe)) {
            *pod_index = idx;
            return BRIX_ROUTE_OK;
        }
        /* Lost a half-open pod's single probe to another worker: drop it
         * and pick again among the rest. */
        ctx->ncand--;
        ctx->cand[k] = ctx->cand[ctx->ncand];
        ctx->score[k] = ctx->score[ctx->ncand];
    }
    return BRIX_ROUTE_NO_POD;
}
