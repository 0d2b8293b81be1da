/*
 * lora-affinity: for a LoRA adapter, prefer pods where the adapter is
 * running now (vllm:lora_requests_info), then pods with a free adapter slot
 * (fewer running adapters than max_lora), then the rest — the ordering GIE's
 * LoRA scorer uses (1.0 / 0.8 / 0.6) — with load breaking ties. Base-model
 * requests are least-request.
 */
#include "gateway/router.h"

#include <string.h>

static void score_lora(brix_route_ctx_t *ctx)
{
    bool adapter = ctx->model->parent != NULL;
    for (size_t i = 0; i < ctx->ncand; i++) {
        const brix_pod_view_t *v = brix_route_view(ctx, i);
        double tier = 0;
        if (adapter) {
            const brix_engine_stats_t *s = &v->stats;
            if (!v->metrics_fresh)
                tier = 1.5; /* unknown: between a free slot and no slot */
            else if (brix_engine_stats_has_lora(s->running_loras, ctx->model->name))
                tier = 0;
            else if (s->max_lora < 0 || brix_engine_stats_count(s->running_loras) < s->max_lora)
                tier = 1;
            else
                tier = 2;
        }
        /* load in [0, 1) keeps the tier order */
        double l = brix_route_load(ctx, i);
        ctx->score[i] = tier + l / (l + 100.0);
    }
    ctx->reason = adapter ? "adapter active there, else a free adapter slot, then load"
                          : "base model: least loaded";
}

const brix_strategy_t brix_strategy_lora_affinity = {
    .name = "lora-affinity",
    .score = score_lora,
    .about = "adapter already active, then a free adapter slot, then load",
};
