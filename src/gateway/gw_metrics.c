/*
 * The gateway's own Prometheus metrics (brix_gateway_*). Families are shared
 * by every thread; values are atomics. Label cardinality is bounded by the
 * fleet: models and pods the gateway knows, status codes, strategy names.
 */
#include "core/alloc.h"
#include "gateway/gateway.h"

#include <string.h>

static const double latency_buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                          2.5,   5,    10,    20,   40,  80,   160, 320 };
static const double decision_buckets[] = { 1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6,
                                           1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3 };

#define NB(a) (sizeof(a) / sizeof *(a))

brix_metric_t *brix_gw_metric1(brix_metric_family_t *f, const char *a)
{
    const char *v[] = { a };
    return brix_metric_child(f, v);
}

brix_metric_t *brix_gw_metric2(brix_metric_family_t *f, const char *a, const char *b)
{
    const char *v[] = { a, b };
    return brix_metric_child(f, v);
}

brix_metric_t *brix_gw_metric3(brix_metric_family_t *f, const char *a, const char *b, const char *c)
{
    const char *v[] = { a, b, c };
    return brix_metric_child(f, v);
}

/* Prefix-index figures are read when /metrics is scraped. */
static void on_collect(brix_metrics_t *reg, void *ud)
{
    brix_gw_t *gw = ud;
    if (!gw->index)
        return;
    brix_metric_set(gw->m.index_entries, (double)brix_prefix_index_entries(gw->index));
    brix_metric_set(gw->m.index_bytes, (double)brix_prefix_index_bytes(gw->index));
    brix_metric_set(gw->m.index_evictions, (double)brix_prefix_index_evictions(gw->index));
}

int brix_gw_metrics_init(brix_gw_t *gw)
{
    brix_gw_metrics_t *m = &gw->m;
    if (!(m->reg = brix_metrics_new()))
        return -1;
    static const char *const L_MODEL_STATUS_STRATEGY[] = { "model", "status", "strategy", NULL };
    static const char *const L_MODEL[] = { "model", NULL };
    static const char *const L_POD[] = { "pod", NULL };
    static const char *const L_POD_KIND[] = { "pod", "kind", NULL };
    static const char *const L_POD_RESULT[] = { "pod", "result", NULL };
    const brix_metric_type_t C = BRIX_METRIC_COUNTER, G = BRIX_METRIC_GAUGE,
                             H = BRIX_METRIC_HISTOGRAM;
    m->requests = brix_metrics_family(m->reg, C, "brix_gateway_requests_total",
                                      "Requests answered, by model, HTTP status and routing "
                                      "strategy (499: the client closed the connection).",
                                      L_MODEL_STATUS_STRATEGY, NULL, 0);
    m->duration = brix_metrics_family(m->reg, H, "brix_gateway_request_duration_seconds",
                                      "End-to-end time of proxied requests, as the gateway saw it.",
                                      L_MODEL, latency_buckets, NB(latency_buckets));
    m->ttft = brix_metrics_family(m->reg, H, "brix_gateway_time_to_first_token_seconds",
                                  "Time from the request to the first streamed event relayed.",
                                  L_MODEL, latency_buckets, NB(latency_buckets));
    m->upstream_errors = brix_metrics_family(m->reg, C, "brix_gateway_upstream_errors_total",
                                             "Failed upstream attempts by pod and kind (connect, "
                                             "connect_timeout, first_byte_timeout, idle_timeout, "
                                             "closed, protocol, status_5xx).",
                                             L_POD_KIND, NULL, 0);
    m->retries = brix_metrics_family(m->reg, C, "brix_gateway_retries_total",
                                     "Requests sent again to another pod after a failure that "
                                     "reached no client byte.",
                                     L_MODEL, NULL, 0);
    m->ejections = brix_metrics_family(m->reg, C, "brix_gateway_pod_ejections_total",
                                       "Times the circuit breaker ejected a pod.", L_POD, NULL, 0);
    m->pod_inflight =
        brix_metrics_family(m->reg, G, "brix_gateway_pod_inflight_requests",
                            "Requests the gateway has in flight on each pod.", L_POD, NULL, 0);
    m->pod_healthy = brix_metrics_family(m->reg, G, "brix_gateway_pod_healthy",
                                         "1 when the pod passes health checks and serves known "
                                         "models.",
                                         L_POD, NULL, 0);
    m->pod_running = brix_metrics_family(m->reg, G, "brix_gateway_pod_engine_running_requests",
                                         "The engine's vllm:num_requests_running at the last "
                                         "scrape.",
                                         L_POD, NULL, 0);
    m->pod_waiting = brix_metrics_family(m->reg, G, "brix_gateway_pod_engine_waiting_requests",
                                         "The engine's vllm:num_requests_waiting at the last "
                                         "scrape.",
                                         L_POD, NULL, 0);
    m->pod_kv = brix_metrics_family(m->reg, G, "brix_gateway_pod_engine_kv_cache_usage_ratio",
                                    "The engine's KV-cache usage (0-1) at the last scrape.", L_POD,
                                    NULL, 0);
    m->scrapes =
        brix_metrics_family(m->reg, C, "brix_gateway_scrapes_total",
                            "Scrapes of engine /metrics by pod and result.", L_POD_RESULT, NULL, 0);
    brix_metric_family_t *f;
    f = brix_metrics_family(m->reg, H, "brix_gateway_routing_decision_seconds",
                            "Time spent choosing a pod for one attempt.", NULL, decision_buckets,
                            NB(decision_buckets));
    m->decision = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, G, "brix_gateway_fleet_snapshot_version",
                            "Version of the newest fleet snapshot published to workers.", NULL,
                            NULL, 0);
    m->fleet_version = f ? brix_metric_child(f, NULL) : NULL;
    static const char *const L_RESULT[] = { "result", NULL };
    f = brix_metrics_family(m->reg, C, "brix_gateway_config_reloads_total",
                            "Configuration reloads (SIGHUP) by result.", L_RESULT, NULL, 0);
    m->reloads_ok = f ? brix_gw_metric1(f, "ok") : NULL;
    m->reloads_failed = f ? brix_gw_metric1(f, "error") : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_client_aborts_total",
                            "Requests whose client disconnected before the answer was complete.",
                            NULL, NULL, 0);
    m->client_aborts = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_broken_streams_total",
                            "Responses whose upstream failed after the client had received bytes.",
                            NULL, NULL, 0);
    m->streams_broken = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, G, "brix_gateway_prefix_index_entries",
                            "Prompt blocks in the shared prefix index.", NULL, NULL, 0);
    m->index_entries = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, G, "brix_gateway_prefix_index_bytes",
                            "Memory reserved by the prefix index (its fixed cap, "
                            "--prefix-index-entries).",
                            NULL, NULL, 0);
    m->index_bytes = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_prefix_index_evictions_total",
                            "Blocks dropped from the prefix index to stay within its cap.", NULL,
                            NULL, 0);
    m->index_evictions = f ? brix_metric_child(f, NULL) : NULL;
    m->kv_batches = brix_metrics_family(m->reg, C, "brix_gateway_kv_events_batches_total",
                                        "KV-event batches applied, by pod.", L_POD, NULL, 0);
    m->kv_gaps = brix_metrics_family(m->reg, C, "brix_gateway_kv_events_gaps_total",
                                     "Sequence gaps in a pod's KV events.", L_POD, NULL, 0);
    m->kv_resets =
        brix_metrics_family(m->reg, C, "brix_gateway_kv_events_resets_total",
                            "Times a pod's cached blocks were forgotten (engine restart, "
                            "unhealthy, gap without replay).",
                            L_POD, NULL, 0);
    m->kv_replays =
        brix_metrics_family(m->reg, C, "brix_gateway_kv_events_replays_total",
                            "Replays requested from a pod's replay socket.", L_POD, NULL, 0);
    m->kv_unknown = brix_metrics_family(m->reg, C, "brix_gateway_kv_events_unknown_parent_total",
                                        "Stored blocks skipped because their parent was unknown.",
                                        L_POD, NULL, 0);
    m->kv_live = brix_metrics_family(m->reg, G, "brix_gateway_kv_events_live",
                                     "1 when the pod's KV events are subscribed and in sequence.",
                                     L_POD, NULL, 0);
    brix_metrics_on_collect(m->reg, on_collect, gw);
    if (!m->requests || !m->duration || !m->ttft || !m->upstream_errors || !m->retries ||
        !m->ejections || !m->pod_inflight || !m->pod_healthy || !m->pod_running ||
        !m->pod_waiting || !m->pod_kv || !m->scrapes || !m->decision || !m->fleet_version ||
        !m->reloads_ok || !m->client_aborts || !m->streams_broken || !m->index_entries ||
        !m->index_bytes || !m->index_evictions || !m->kv_batches || !m->kv_gaps || !m->kv_resets ||
        !m->kv_replays || !m->kv_unknown || !m->kv_live)
        return -1;
    return 0;
}

void brix_gw_metrics_free(brix_gw_t *gw)
{
    if (gw->m.reg)
        brix_metrics_free(gw->m.reg);
    gw->m.reg = NULL;
}
