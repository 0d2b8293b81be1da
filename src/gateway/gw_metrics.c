/*
 * The gateway's own Prometheus metrics (brix_gateway_*). Families are shared
 * by every thread; values are atomics. Label cardinality is bounded by the
 * fleet: models and pods the gateway knows (other names requests carry are
 * counted as model="unknown"), status codes, strategy names ("mix" for a
 * weighted mix); every family is capped besides (--metrics-max-children).
 */
#include "core/alloc.h"
#include "gateway/gateway.h"

#include <string.h>

static const double latency_buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                          2.5,   5,    10,    20,   40,  80,   160, 320 };
static const double decision_buckets[] = { 1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6,
                                           1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3 };

static const double check_buckets[] = { 1e-5,   2e-5,   3e-5, 4e-5, 5e-5,   6e-5, 7e-5, 8e-5, 1e-4,
                                        1.5e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1,  1 };

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
    if (gw->tn) {
        brix_tn_stats_t st;
        brix_tn_stats(gw->tn, &st);
        brix_metric_set(gw->m.store_errors, (double)st.store_errors);
        brix_metric_set(gw->m.store_timeouts, (double)st.store_timeouts);
        brix_metric_set(gw->m.fail_open, (double)st.fail_open);
        brix_metric_set(gw->m.fail_closed, (double)st.fail_closed);
        brix_metric_set(gw->m.store_up, !brix_tn_uses_redis(gw->tn) || st.conns_up > 0);
        brix_metric_set(gw->m.implicit_users, (double)st.implicit_users);
        brix_metric_set(gw->m.implicit_evicted, (double)st.implicit_evicted);
        brix_metric_set(gw->m.implicit_refused, (double)st.implicit_refused);
    }
    if (gw->fair) {
        brix_fair_stats_t fs;
        brix_gw_fairs_stats(gw->fair, &fs);
        brix_metric_set(gw->m.fair_capacity, (double)fs.capacity);
        brix_metric_set(gw->m.fair_inflight, (double)fs.inflight);
        brix_metric_set(gw->m.fair_queued, (double)fs.queued);
        brix_metric_set(gw->m.fair_expired, (double)fs.expired);
        brix_metric_set(gw->m.fair_rejected, (double)fs.rejected_full);
        brix_metric_set(gw->m.fair_evicted, (double)fs.evicted);
    }
    brix_metric_set(gw->m.adapter_held,
                    (double)atomic_load(&gw->demand.held_kind[BRIX_HOLD_ADAPTER]));
    if (gw->http_shared) {
        brix_http_guard_stats_t hs;
        brix_http_shared_stats(gw->http_shared, &hs);
        brix_metric_set(gw->m.http_conns, (double)hs.conns_open);
        brix_metric_set(gw->m.http_buffered, (double)hs.buffered_bytes);
        brix_metric_set(gw->m.http_timeouts[0], (double)hs.header_timeouts);
        brix_metric_set(gw->m.http_timeouts[1], (double)hs.body_timeouts);
        brix_metric_set(gw->m.http_timeouts[2], (double)hs.idle_timeouts);
        brix_metric_set(gw->m.http_timeouts[3], (double)hs.write_timeouts);
        brix_metric_set(gw->m.http_refused_ip, (double)hs.refused_per_ip);
        brix_metric_set(gw->m.http_refused_full, (double)hs.refused_full);
        brix_metric_set(gw->m.http_evicted, (double)hs.evicted);
        brix_metric_set(gw->m.http_budget_pauses, (double)hs.budget_pauses);
    }
    if (!gw->index)
        return;
    brix_metric_set(gw->m.index_entries, (double)brix_prefix_index_entries(gw->index));
    brix_metric_set(gw->m.index_bytes, (double)brix_prefix_index_bytes(gw->index));
    brix_metric_set(gw->m.index_evictions, (double)brix_prefix_index_evictions(gw->index));
}

/* Client-connection guards (slow peers, per-IP cap, byte budget): fixed
 * label sets, read from the shared atomics at scrape time. */
static void http_guard_metrics(brix_gw_metrics_t *m)
{
    const brix_metric_type_t C = BRIX_METRIC_COUNTER, G = BRIX_METRIC_GAUGE;
    static const char *const L_KIND[] = { "kind", NULL };
    static const char *const L_REASON[] = { "reason", NULL };
    brix_metric_family_t *f;
    f = brix_metrics_family(m->reg, G, "brix_gateway_http_connections", "Client connections open.",
                            NULL, NULL, 0);
    m->http_conns = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, G, "brix_gateway_http_buffered_bytes",
                            "Bytes held for client connections: unparsed input, request bodies "
                            "(declared lengths once admitted) and unsent output "
                            "(--max-buffered-bytes).",
                            NULL, NULL, 0);
    m->http_buffered = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_http_timeouts_total",
                            "Client connections closed by a timeout: header (--header-timeout, "
                            "408), body (--body-timeout, 408), idle (--idle-timeout), write "
                            "(--write-timeout: the client read nothing; its request is aborted).",
                            L_KIND, NULL, 0);
    static const char *const kinds[] = { "header", "body", "idle", "write" };
    for (int i = 0; i < 4; i++)
        m->http_timeouts[i] = f ? brix_gw_metric1(f, kinds[i]) : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_http_connections_refused_total",
                            "Connections closed at accept: per_ip (--max-conns-per-ip) or full "
                            "(--max-connections with nothing idle to close; 503).",
                            L_REASON, NULL, 0);
    m->http_refused_ip = f ? brix_gw_metric1(f, "per_ip") : NULL;
    m->http_refused_full = f ? brix_gw_metric1(f, "full") : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_http_connections_evicted_total",
                            "Idle (or still head-sending) connections closed to admit a new one "
                            "at --max-connections.",
                            NULL, NULL, 0);
    m->http_evicted = f ? brix_metric_child(f, NULL) : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_http_budget_pauses_total",
                            "Times a connection stopped being read because the process held "
                            "more than --max-buffered-bytes (or its declared body did not fit).",
                            NULL, NULL, 0);
    m->http_budget_pauses = f ? brix_metric_child(f, NULL) : NULL;
}

int brix_gw_metrics_init(brix_gw_t *gw)
{
    brix_gw_metrics_t *m = &gw->m;
    if (!(m->reg = brix_metrics_new()))
        return -1;
    brix_metrics_set_max_children(m->reg, (size_t)gw->cfg.metrics_max_children);
    if (brix_metrics_add_process(m->reg, &m->process))
        return -1;
    http_guard_metrics(m);
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
    m->scrapes = brix_metrics_family(m->reg, C, "brix_gateway_scrapes_total",
                                     "Scrapes of engine /metrics by pod and result (ok, error, "
                                     "invalid_values: a load gauge NaN, infinite or negative).",
                                     L_POD_RESULT, NULL, 0);
    m->values_refused =
        brix_metrics_family(m->reg, C, "brix_gateway_engine_metric_values_refused_total",
                            "vLLM values in engine /metrics that were NaN, infinite or negative, "
                            "by pod: not used (a refused load gauge fails its scrape).",
                            L_POD, NULL, 0);
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
    static const char *const L_USER_RESULT[] = { "user", "result", NULL };
    static const char *const L_USER_KIND[] = { "user", "kind", NULL };
    m->tenant_requests =
        brix_metrics_family(m->reg, C, "brix_gateway_tenant_requests_total",
                            "Tenancy decisions by user (\"other\" beyond --tenant-metrics-max) "
                            "and result (ok, rpm_limited, tpm_limited, unauthorized, forbidden, "
                            "store_down, unchecked, queue_full, queue_timeout).",
                            L_USER_RESULT, NULL, 0);
    m->tenant_tokens = brix_metrics_family(m->reg, C, "brix_gateway_tenant_tokens_total",
                                           "Tokens charged to users, by kind (prompt, completion).",
                                           L_USER_KIND, NULL, 0);
    f = brix_metrics_family(m->reg, H, "brix_gateway_ratelimit_check_seconds",
                            "Time to decide a request's user and limits (one Redis round trip "
                            "with --redis-url).",
                            NULL, check_buckets, NB(check_buckets));
    m->ratelimit_check = f ? brix_metric_child(f, NULL) : NULL;
#define SIMPLE(field, type, name, help)                                                            \
    f = brix_metrics_family(m->reg, type, name, help, NULL, NULL, 0);                              \
    m->field = f ? brix_metric_child(f, NULL) : NULL;
    SIMPLE(store_up, G, "brix_gateway_tenant_store_up",
           "1 when the tenant store (Redis, or memory) is reachable from a worker.")
    SIMPLE(store_errors, C, "brix_gateway_tenant_store_errors_total",
           "Tenant-store operations that failed (connection lost, errors).")
    SIMPLE(store_timeouts, C, "brix_gateway_tenant_store_timeouts_total",
           "Tenant-store operations not answered within --redis-timeout.")
    SIMPLE(fail_open, C, "brix_gateway_ratelimit_fail_open_total",
           "Requests admitted unchecked because the store was down (--redis-failure open).")
    SIMPLE(fail_closed, C, "brix_gateway_ratelimit_fail_closed_total",
           "Requests refused because the store was down (--redis-failure closed).")
    SIMPLE(fair_capacity, G, "brix_gateway_fair_capacity",
           "Requests the fairness queue lets into the fleet at once.")
    SIMPLE(fair_inflight, G, "brix_gateway_fair_inflight", "Requests let into the fleet now.")
    SIMPLE(fair_queued, G, "brix_gateway_fair_queued", "Requests waiting for capacity.")
    SIMPLE(fair_expired, C, "brix_gateway_fair_expired_total",
           "Requests that waited past --queue-timeout (answered 503).")
    SIMPLE(fair_rejected, C, "brix_gateway_fair_rejected_total",
           "Requests refused because their user's queue was full (answered 429).")
    SIMPLE(implicit_users, G, "brix_gateway_tenant_implicit_users",
           "Users created by --default-rpm held now (memory store; at most --max-implicit-users).")
    SIMPLE(implicit_evicted, C, "brix_gateway_tenant_implicit_evicted_total",
           "Idle users created by --default-rpm dropped to make room for new ones.")
    SIMPLE(implicit_refused, C, "brix_gateway_tenant_implicit_refused_total",
           "New users refused (429) because --max-implicit-users were all in use.")
    SIMPLE(fair_evicted, C, "brix_gateway_fair_tenants_evicted_total",
           "Idle users dropped from the fairness table to make room for new ones.")
    f = brix_metrics_family(m->reg, H, "brix_gateway_fair_wait_seconds",
                            "Time requests waited in the fairness queue.", NULL, latency_buckets,
                            NB(latency_buckets));
    m->fair_wait = f ? brix_metric_child(f, NULL) : NULL;
    SIMPLE(ctl_connected, G, "brix_gateway_controller_connected",
           "1 while the controller watch (--controller) is open and has delivered a line.")
    SIMPLE(ctl_reconnects, C, "brix_gateway_controller_reconnects_total",
           "Times the controller watch was opened again after it ended, failed or went silent.")
    SIMPLE(ctl_version, G, "brix_gateway_controller_snapshot_version",
           "Version of the newest controller snapshot applied.")
    f = brix_metrics_family(m->reg, C, "brix_gateway_controller_watch_events_total",
                            "Lines read from the controller watch, by type (snapshot, heartbeat, "
                            "invalid).",
                            (const char *const[]){ "type", NULL }, NULL, 0);
    m->ctl_events_snapshot = f ? brix_gw_metric1(f, "snapshot") : NULL;
    m->ctl_events_heartbeat = f ? brix_gw_metric1(f, "heartbeat") : NULL;
    m->ctl_events_bad = f ? brix_gw_metric1(f, "invalid") : NULL;
    f = brix_metrics_family(m->reg, C, "brix_gateway_controller_activity_reports_total",
                            "Activity reports (requests routed per model) sent to the controller, "
                            "by result.",
                            L_RESULT, NULL, 0);
    m->ctl_activity_ok = f ? brix_gw_metric1(f, "ok") : NULL;
    m->ctl_activity_failed = f ? brix_gw_metric1(f, "error") : NULL;
    m->adapter_wakes = brix_metrics_family(m->reg, C, "brix_gateway_adapter_wakes_total",
                                           "Wake requests sent to the controller for a registered "
                                           "adapter that requests were waiting for.",
                                           L_MODEL, NULL, 0);
    SIMPLE(adapter_held, G, "brix_gateway_adapter_held_requests",
           "Requests held until their adapter is loaded on a ready pod.")
    m->adapter_wait = brix_metrics_family(m->reg, H, "brix_gateway_adapter_wait_seconds",
                                          "Time requests were held for their adapter, by how "
                                          "the wait ended (routed, timeout, failed, gone, "
                                          "client_closed, shutdown).",
                                          L_RESULT, latency_buckets, NB(latency_buckets));
    m->deployment_wakes =
        brix_metrics_family(m->reg, C, "brix_gateway_deployment_wakes_total",
                            "Wake requests sent to the controller for a deployment whose model "
                            "requests were waiting for (no ready replica: scaled to zero or "
                            "starting).",
                            (const char *const[]){ "deployment", NULL }, NULL, 0);
    m->model_held = brix_metrics_family(m->reg, G, "brix_gateway_model_held_requests",
                                        "Requests held until their model (a deployment's served "
                                        "model, scaled to zero or starting) has a ready replica.",
                                        L_MODEL, NULL, 0);
    m->model_wait = brix_metrics_family(m->reg, H, "brix_gateway_model_wait_seconds",
                                        "Time requests were held for their model's first ready "
                                        "replica, by how the wait ended (routed, timeout, gone, "
                                        "client_closed, shutdown).",
                                        L_RESULT, latency_buckets, NB(latency_buckets));
    brix_metrics_on_collect(m->reg, on_collect, gw);
    if (!m->requests || !m->duration || !m->ttft || !m->upstream_errors || !m->retries ||
        !m->ejections || !m->pod_inflight || !m->pod_healthy || !m->pod_running ||
        !m->pod_waiting || !m->pod_kv || !m->scrapes || !m->values_refused || !m->decision ||
        !m->fleet_version || !m->reloads_ok || !m->client_aborts || !m->streams_broken ||
        !m->index_entries || !m->index_bytes || !m->index_evictions || !m->kv_batches ||
        !m->kv_gaps || !m->kv_resets || !m->kv_replays || !m->kv_unknown || !m->kv_live ||
        !m->tenant_requests || !m->tenant_tokens || !m->ratelimit_check || !m->store_up ||
        !m->store_errors || !m->store_timeouts || !m->fail_open || !m->fail_closed ||
        !m->fair_capacity || !m->fair_inflight || !m->fair_queued || !m->fair_expired ||
        !m->fair_wait || !m->fair_rejected || !m->ctl_connected || !m->ctl_reconnects ||
        !m->ctl_version || !m->ctl_events_snapshot || !m->ctl_activity_ok || !m->adapter_wakes ||
        !m->adapter_held || !m->adapter_wait || !m->deployment_wakes || !m->model_held ||
        !m->model_wait)
        return -1;
#undef SIMPLE
    return 0;
}

void brix_gw_metrics_free(brix_gw_t *gw)
{
    if (gw->m.reg)
        brix_metrics_free(gw->m.reg);
    gw->m.reg = NULL;
}
