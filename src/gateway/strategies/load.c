/*
 * AIBrix's metric-driven load strategies, from the engines' scraped
 * /metrics (gateway/engine_stats.h). Where AIBrix reads a metric vLLM does
 * not export, the nearest one vLLM does is used and said so:
 *  throughput        — least token throughput: 2 × prompt tokens/s + generation tokens/s;
 *  least-kv-cache    — lowest KV-cache usage (AIBrix adds CPU-offloaded KV; vLLM has none);
 *  least-gpu-cache   — lowest GPU KV-cache usage;
 *  least-busy-time   — lowest share of recent time with work on the engine (AIBrix reads
 *                      GPU busy time; vLLM exports no such metric);
 *  least-utilization — smallest running batch (AIBrix reads engine utilization);
 *  least-latency     — lowest estimated queue + prefill + decode time for this request:
 *                      mean queue time + prefill time per token × its prompt tokens +
 *                      time per output token × 100 (AIBrix's output guess).
 * A pod whose metrics are stale scores as the worst, so fresh information wins;
 * the gateway's in-flight count breaks ties.
 */
#include "gateway/router.h"

#include <math.h>

typedef double (*metric_fn)(brix_route_ctx_t *ctx, const brix_pod_view_t *v);

static void score_by(brix_route_ctx_t *ctx, metric_fn f, const char *reason)
{
    double worst = 0;
    for (size_t i = 0; i < ctx->ncand; i++) {
        const brix_pod_view_t *v = brix_route_view(ctx, i);
        double inflight = (double)atomic_load_explicit(&v->pod->inflight, memory_order_relaxed);
        if (!v->metrics_fresh) {
            ctx->score[i] = NAN; /* filled below */
            continue;
        }
        ctx->score[i] = f(ctx, v) + 1e-6 * inflight;
        worst = ctx->score[i] > worst ? ctx->score[i] : worst;
    }
    for (size_t i = 0; i < ctx->ncand; i++)
        if (isnan(ctx->score[i]))
            ctx->score[i] =
                worst * 2 + 1 + 1e-6 * (double)atomic_load(&brix_route_view(ctx, i)->pod->inflight);
    ctx->reason = reason;
}

static double m_throughput(brix_route_ctx_t *ctx, const brix_pod_view_t *v)
{
    return 2 * v->stats.prompt_tps + v->stats.gen_tps;
}
static double m_kv(brix_route_ctx_t *ctx, const brix_pod_view_t *v)
{
    return v->stats.kv_usage;
}
static double m_busy(brix_route_ctx_t *ctx, const brix_pod_view_t *v)
{
    return v->stats.busy;
}
static double m_util(brix_route_ctx_t *ctx, const brix_pod_view_t *v)
{
    return v->stats.running;
}
static double m_latency(brix_route_ctx_t *ctx, const brix_pod_view_t *v)
{
    const brix_prompt_t *p = brix_route_prompt(ctx);
    double in = p->ntokens ? (double)p->ntokens
                           : (v->stats.mean_prompt_tokens > 0 ? v->stats.mean_prompt_tokens : 10);
    return v->stats.queue_s + v->stats.prefill_s_per_tok * in + v->stats.tpot_s * 100;
}

static void s_throughput(brix_route_ctx_t *c)
{
    score_by(c, m_throughput, "least token throughput");
}
static void s_kv(brix_route_ctx_t *c)
{
    score_by(c, m_kv, "lowest KV-cache usage");
}
static void s_busy(brix_route_ctx_t *c)
{
    score_by(c, m_busy, "least busy recently");
}
static void s_util(brix_route_ctx_t *c)
{
    score_by(c, m_util, "smallest running batch");
}
static void s_latency(brix_route_ctx_t *c)
{
    score_by(c, m_latency, "lowest estimated queue + prefill + decode time");
}

const brix_strategy_t brix_strategy_throughput = {
    .name = "throughput",
    .score = s_throughput,
    .about = "least 2*prompt + generation tokens/s",
};
const brix_strategy_t brix_strategy_least_kv_cache = {
    .name = "least-kv-cache",
    .score = s_kv,
    .about = "lowest KV-cache usage",
};
const brix_strategy_t brix_strategy_least_gpu_cache = {
    .name = "least-gpu-cache",
    .score = s_kv,
    .about = "lowest GPU KV-cache usage",
};
const brix_strategy_t brix_strategy_least_busy_time = {
    .name = "least-busy-time",
    .score = s_busy,
    .about = "least share of recent busy scrapes",
};
const brix_strategy_t brix_strategy_least_utilization = {
    .name = "least-utilization",
    .score = s_util,
    .about = "smallest running batch",
};
const brix_strategy_t brix_strategy_least_latency = {
    .name = "least-latency",
    .score = s_latency,
    .about = "lowest estimated request latency",
};
