/*
 * weighted — brix's default: filters, then a weighted sum of scorers, then
 * the lowest total (ties at random). Every scorer is a cost in prompt-token
 * equivalents — the work the pod must do before this request's first token,
 * or a penalty sized in the same unit — so the weights stay comparable and
 * need no per-fleet normalisation:
 *
 *   prefix  uncached prompt tokens on this pod (prompt − leading blocks the
 *           pod holds: its KV events when live, else the gateway's routing
 *           history); blocks the shared KV store holds beyond them
 *           count as kv_store_cost of a miss each (loaded, not computed)
 *   queue   prompt tokens the gateway sent there that have not produced a
 *           first byte yet (prefill work queued ahead of us)
 *   decode  running sequences × decode_tokens (the decode batch every step
 *           must also carry) — from the engine when fresh, else the
 *           gateway's in-flight count
 *   kv      (usage − kv_high) / (1 − kv_high) × kv_tokens when KV usage is
 *           above kv_high (preemption and eviction ahead)
 *   lora    lora_tokens when the adapter is not running on the pod, ×2 when
 *           it has no free adapter slot
 *
 * A popular prefix cannot make a hot spot: as its pod's queue grows, the
 * queue cost outweighs the prefix saving and traffic spills to the next pod,
 * which then builds the prefix too. Decision cost: O(prompt + candidates).
 */
#include "gateway/router.h"

#include <stdio.h>

static void score_weighted(brix_route_ctx_t *ctx)
{
    const brix_route_params_t *P = ctx->params;
    const brix_prompt_t *pr = brix_route_prompt(ctx);
    const uint32_t *m = pr->nhashes ? brix_route_match(ctx) : NULL;
    double prompt = (double)pr->ntokens;
    bool adapter = ctx->model->parent != NULL;
    for (size_t i = 0; i < ctx->ncand; i++) {
        const brix_pod_view_t *v = brix_route_view(ctx, i);
        const brix_engine_stats_t *s = &v->stats;
        double cached = brix_route_hit_blocks(ctx, m, i) * (double)P->block_size;
        double uncached = prompt > cached ? prompt - cached : 0;
        double queue = (double)atomic_load_explicit(&v->pod->pending_prefill, memory_order_relaxed);
        double running = v->metrics_fresh ? s->running
                                          : (double)atomic_load_explicit(&v->pod->inflight,
                                                                         memory_order_relaxed);
        double kv = 0;
        if (v->metrics_fresh && s->kv_usage > P->kv_high && P->kv_high < 1)
            kv = (s->kv_usage - P->kv_high) / (1 - P->kv_high) * P->kv_tokens;
        double lora = 0;
        if (adapter &&
            !(v->metrics_fresh && brix_engine_stats_has_lora(s->running_loras, ctx->model->name))) {
            bool full = v->metrics_fresh && s->max_lora >= 0 &&
                        brix_engine_stats_count(s->running_loras) >= s->max_lora;
            lora = P->lora_tokens * (full ? 2 : 1);
        }
        ctx->score[i] = P->w_prefix * uncached + P->w_queue * (queue < 0 ? 0 : queue) +
                        P->w_decode * running * P->decode_tokens + P->w_kv * kv + P->w_lora * lora;
    }
    ctx->reason = "least estimated work before the first token";
}

const brix_strategy_t brix_strategy_weighted = {
    .name = "weighted",
    .score = score_weighted,
    .about = "default: least estimated work before the first token (uncached prompt + queued "
             "prefill + decode batch + KV and adapter penalties)",
};
