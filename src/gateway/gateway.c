/*
 * `brix gateway`: flags and config file, start-up, signals.
 *
 * SIGHUP re-reads the config file (defaults, then the file, then the command
 * line again, as at start-up) and applies what can change at run time: the
 * pod set, the routing strategy, retries, timeouts, breaker and health
 * settings. A file that does not parse leaves everything as it was.
 * SIGTERM/SIGINT drain: listeners close, idle connections close, in-flight
 * requests (streams included) finish until --drain-timeout, then exit 0.
 */
#include "gateway/gateway_main.h"

#include "core/secret.h"
#include "core/alloc.h"
#include "core/http_host.h"
#include "core/log.h"
#include "core/time.h"
#include "core/yaml.h"
#include "gateway/gateway.h"
#include "gateway/router.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include <openssl/crypto.h>

#define O(f) offsetof(brix_gw_cfg_t, f)
static const brix_opt_t gw_opts[] = {
    { "config", BRIX_OPT_STRING, O(config), NULL, 1, 0, "FILE",
      "YAML file of option: value pairs; SIGHUP re-reads it (flags on the command line win)" },
    { "host", BRIX_OPT_STRING, O(host), "127.0.0.1", 1, 0, "ADDR", "address to listen on" },
    { "port", BRIX_OPT_INT, O(port), "8080", 0, 65535, "PORT", "port to listen on (0 = any free)" },
    { "allowed-host", BRIX_OPT_STRLIST, O(allowed_hosts), NULL, 0, 0, "NAME",
      "a Host name served besides IP addresses and localhost (repeatable; NAME:PORT for one port "
      "only); other names get 403 host_not_allowed (DNS rebinding) on a loopback --host, and on "
      "any --host once a name is given" },
    { "workers", BRIX_OPT_INT, O(workers), "2", 1, 256, "N",
      "worker threads, each with its own event loop (SO_REUSEPORT)" },
    { "worker-urls", BRIX_OPT_STRLIST, O(worker_urls), NULL, 1, 0, "URL[,URL...]",
      "engine base URLs, e.g. http://127.0.0.1:8001 (comma-separated or repeated); static "
      "discovery, the alternative to --controller" },
    { "controller", BRIX_OPT_STRING, O(controller), NULL, 1, 0, "URL",
      "discover engines from `brix controller` at URL (GET URL/v1/watch): its ready replicas are "
      "the pods, its adapters the registry; excludes --worker-urls" },
    { "controller-token", BRIX_OPT_STRING, O(controller_token), NULL, 1, 0, "TOKEN",
      "bearer token for the controller's API (or BRIX_CONTROLLER_TOKEN; both are visible to "
      "other local users less easily than argv: prefer --controller-token-file)" },
    { "controller-token-file", BRIX_OPT_STRING, O(controller_token_file), NULL, 1, 0, "FILE",
      "read the controller's bearer token from FILE (e.g. the controller's STATE_DIR/token); "
      "read again on reload" },
    { "controller-report-interval", BRIX_OPT_DURATION, O(controller_report_interval), "1s", 50,
      60000, NULL,
      "activity and load reports (what the controller's autoscalers read) are sent every" },
    { "controller-idle-timeout", BRIX_OPT_DURATION, O(controller_idle_timeout), "15s", 100, 3600000,
      NULL,
      "controller watch silent this long (it heartbeats every 5 s): reconnect, serving the last "
      "known pods meanwhile" },
    { "adapter-wake-timeout", BRIX_OPT_DURATION, O(adapter_wake_timeout), "30s", 0, 3600000, NULL,
      "hold a request for a registered adapter loaded nowhere (scaled to zero) while the "
      "controller loads it, up to this long (503 adapter_loading after; 0 = answer 503 at once)" },
    { "scale-from-zero-timeout", BRIX_OPT_DURATION, O(scale_from_zero_timeout), "60s", 0, 3600000,
      NULL,
      "hold a request for a model whose deployment has no ready replica (scaled to zero, or "
      "starting) while the controller starts one, up to this long (503 model_scaling_from_zero "
      "with Retry-After after; 0 = answer 503 at once, still waking it)" },
    { "max-held-requests", BRIX_OPT_INT, O(max_held_requests), "1024", 0, 10000000, "N",
      "requests held at once for adapters and scaled-to-zero models together (503 beyond)" },
    { "routing-strategy", BRIX_OPT_STRING, O(routing_strategy), "weighted", 1, 0, "NAME[:W,...]",
      "default strategy, or a weighted mix like prefix-cache:2,least-latency:1 (per request: "
      "header routing-strategy); see the README for the list" },
    { "model-strategy", BRIX_OPT_STRLIST, O(model_strategy), NULL, 1, 0, "MODEL=STRATEGY",
      "per-model default strategy (or mix), e.g. llama-3-8b=prefix-cache:2,least-request" },
    { "kv-events", BRIX_OPT_STRLIST, O(kv_events), NULL, 1, 0, "URL=ENDPOINT[;REPLAY]",
      "subscribe to an engine's vLLM KV events (ZMQ) for prefix-cache-precise and weighted, e.g. "
      "http://127.0.0.1:8001=tcp://127.0.0.1:5557;tcp://127.0.0.1:5558" },
    { "kv-events-max-msg", BRIX_OPT_SIZE, O(kv_events_max_msg), "16m", 1024, 1073741824, NULL,
      "largest ZMQ message accepted on the KV-event sockets (ZMQ_MAXMSGSIZE); a larger one drops "
      "the connection, which is made again (what was lost shows as a sequence gap)" },
    { "prefix-block-size", BRIX_OPT_INT, O(route.block_size), "16", 1, 256, NULL,
      "tokens per prompt block for prefix-aware routing: the engines' --block-size" },
    { "prefix-max-blocks", BRIX_OPT_INT, O(route.max_blocks), "2048", 1, 1000000, NULL,
      "prompt blocks hashed per request at most" },
    { "prefix-index-entries", BRIX_OPT_INT, O(prefix_index_entries), "200000", 1024, 100000000,
      NULL, "blocks the shared prefix index holds (LRU beyond); memory in /metrics" },
    { "prefix-std-k", BRIX_OPT_DOUBLE, O(route.prefix_std_k), "2", 0, 100, "K",
      "prefix-cache: only pods with load <= mean + K*std compete" },
    { "prefix-imbalance", BRIX_OPT_DOUBLE, O(route.prefix_imbalance), "16", 0, 1e9, "N",
      "prefix-cache: loads differing by more than N requests -> least-request" },
    { "weight-prefix", BRIX_OPT_DOUBLE, O(route.w_prefix), "3", 0, 1e6, "W",
      "weighted: cost per uncached prompt token on the pod" },
    { "weight-queue", BRIX_OPT_DOUBLE, O(route.w_queue), "1", 0, 1e6, "W",
      "weighted: cost per prompt token queued there and not yet answered" },
    { "weight-decode", BRIX_OPT_DOUBLE, O(route.w_decode), "1", 0, 1e6, "W",
      "weighted: cost per running sequence, times --decode-tokens" },
    { "decode-tokens", BRIX_OPT_DOUBLE, O(route.decode_tokens), "32", 0, 1e9, "N",
      "weighted: prompt tokens one running sequence is worth" },
    { "weight-kv", BRIX_OPT_DOUBLE, O(route.w_kv), "1", 0, 1e6, "W",
      "weighted: cost of KV usage above --kv-high, times --kv-tokens" },
    { "kv-high", BRIX_OPT_DOUBLE, O(route.kv_high), "0.9", 0, 0.999, "F",
      "weighted: KV usage above which a pod is penalised" },
    { "kv-tokens", BRIX_OPT_DOUBLE, O(route.kv_tokens), "8192", 0, 1e9, "N",
      "weighted: penalty for a full KV cache, in prompt tokens" },
    { "weight-lora", BRIX_OPT_DOUBLE, O(route.w_lora), "1", 0, 1e6, "W",
      "weighted: cost of an adapter not active on the pod, times --lora-tokens" },
    { "lora-tokens", BRIX_OPT_DOUBLE, O(route.lora_tokens), "2048", 0, 1e9, "N",
      "weighted: adapter load cost in prompt tokens (doubled without a free slot)" },
    { "session-load-factor", BRIX_OPT_DOUBLE, O(route.session_load_factor), "1.25", 1, 100, "F",
      "session-affinity: skip pods holding more than F x the mean (+1) of the requests in flight" },
    { "kv-store", BRIX_OPT_BOOL, O(route.kv_store_all), "false", 1, 0, NULL,
      "every engine loads and saves prefix blocks in a shared brix kvcache (with --controller, "
      "deployments say so themselves)" },
    { "kv-store-cost", BRIX_OPT_DOUBLE, O(route.kv_store_cost), "0.25", 0, 1, "F",
      "prefix routing: a block in the shared KV store costs F of recomputing it (local hit 0)" },
    { "log-level", BRIX_OPT_STRING, O(log_level), "info", 1, 0, "LEVEL",
      "debug | info | warn | error" },
    { "access-log", BRIX_OPT_BOOL, O(access_log), "true", 1, 0, NULL,
      "one structured log line per request" },
    BRIX_HTTP_LIMIT_OPTIONS(brix_gw_cfg_t, http, "20000"),
    { "connect-timeout", BRIX_OPT_DURATION, O(connect_timeout), "3s", 1, 600000, NULL,
      "upstream connect timeout" },
    { "first-byte-timeout", BRIX_OPT_DURATION, O(first_byte_timeout), "300s", 1, 86400000, NULL,
      "upstream time to the response head (a long prefill counts) (504 after)" },
    { "upstream-idle-timeout", BRIX_OPT_DURATION, O(upstream_idle_timeout), "120s", 1, 86400000,
      NULL, "longest silence inside an upstream response" },
    { "upstream-keepalive", BRIX_OPT_DURATION, O(upstream_keepalive), "60s", 1, 3600000, NULL,
      "how long an idle pooled upstream connection is kept" },
    { "upstream-max-idle", BRIX_OPT_INT, O(upstream_max_idle), "256", 0, 100000, NULL,
      "idle pooled connections kept per pod and worker" },
    { "max-retries", BRIX_OPT_INT, O(max_retries), "2", 0, 7, NULL,
      "other pods tried when a pod fails before any byte reached the client" },
    { "retry-on-5xx", BRIX_OPT_BOOL, O(retry_on_5xx), "true", 1, 0, NULL,
      "also retry when a pod answers 5xx (before any byte reached the client)" },
    { "breaker-failures", BRIX_OPT_INT, O(breaker_failures), "5", 0, 1000, NULL,
      "consecutive failures that eject a pod (0 = never)" },
    { "ejection-time", BRIX_OPT_DURATION, O(ejection_time), "5s", 1, 3600000, NULL,
      "first ejection; doubles on each repeat, then one probe request decides" },
    { "max-ejection-time", BRIX_OPT_DURATION, O(max_ejection_time), "300s", 1, 86400000, NULL,
      "longest ejection" },
    { "health-interval", BRIX_OPT_DURATION, O(health_interval), "1s", 10, 3600000, NULL,
      "active health checks (GET /health) every" },
    { "health-timeout", BRIX_OPT_DURATION, O(health_timeout), "2s", 10, 600000, NULL,
      "health check and model list timeout" },
    { "unhealthy-threshold", BRIX_OPT_INT, O(unhealthy_threshold), "2", 1, 100, NULL,
      "failed checks in a row that mark a pod unhealthy" },
    { "healthy-threshold", BRIX_OPT_INT, O(healthy_threshold), "1", 1, 100, NULL,
      "passed checks in a row that mark it healthy again" },
    { "scrape-interval", BRIX_OPT_DURATION, O(scrape_interval), "100ms", 10, 3600000, NULL,
      "engine /metrics scraped every" },
    { "scrape-timeout", BRIX_OPT_DURATION, O(scrape_timeout), "1s", 10, 600000, NULL,
      "engine /metrics timeout" },
    { "metrics-stale-after", BRIX_OPT_DURATION, O(metrics_stale_after), "1s", 10, 3600000, NULL,
      "scraped metrics older than this are not used for routing" },
    { "models-refresh-interval", BRIX_OPT_DURATION, O(models_refresh_interval), "5s", 100, 3600000,
      NULL, "engine /v1/models re-read every" },
    { "drain-timeout", BRIX_OPT_DURATION, O(drain_timeout), "30s", 0, 3600000, NULL,
      "on SIGTERM, how long in-flight requests may finish" },
    { "retry-after", BRIX_OPT_INT, O(retry_after), "1", 0, 3600, "SECONDS",
      "Retry-After on 503 answers" },
    { "backpressure-bytes", BRIX_OPT_SIZE, O(backpressure_bytes), "1m", 4096, 1073741824, NULL,
      "pause an upstream when this much is queued for a slow client" },
    { "sse-max-event-bytes", BRIX_OPT_SIZE, O(sse_max_event_bytes), "1m", 1024, 1073741824, NULL,
      "longest SSE event relayed; an engine sending a longer one has its stream ended with an "
      "error event (counted as an upstream error, kind event_too_large)" },
    { "redis-url", BRIX_OPT_STRING, O(redis_url), NULL, 1, 0, "redis://[:PASS@]HOST[:PORT][/DB]",
      "keep users and rate-limit counters in Redis, shared by every gateway using it" },
    { "redis-password", BRIX_OPT_STRING, O(redis_password), NULL, 1, 0, "PASSWORD",
      "Redis AUTH password (or BRIX_REDIS_PASSWORD, or in the URL)" },
    { "redis-prefix", BRIX_OPT_STRING, O(redis_prefix), "brix:", 1, 0, "PREFIX",
      "prefix of every Redis key brix writes" },
    { "redis-timeout", BRIX_OPT_DURATION, O(redis_timeout), "200ms", 1, 60000, NULL,
      "a rate-limit check not answered in time counts as Redis being down" },
    { "redis-failure", BRIX_OPT_STRING, O(redis_failure), "open", 1, 0, "open|closed",
      "Redis down: admit requests unlimited (open) or answer 503 (closed)" },
    { "admin-key", BRIX_OPT_STRING, O(admin_key), NULL, 1, 0, "KEY",
      "enables the user-management API for `Authorization: Bearer KEY` (or BRIX_ADMIN_KEY)" },
    { "engine-api-key", BRIX_OPT_STRING, O(engine_api_key), NULL, 1, 0, "KEY",
      "the engines' --api-key (or BRIX_ENGINE_API_KEY): sent on every forwarded request, in "
      "place of any client Authorization (never forwarded then), and on the gateway's own "
      "engine calls (/v1/models)" },
    { "engine-api-key-file", BRIX_OPT_STRING, O(engine_api_key_file), NULL, 1, 0, "FILE",
      "read the engines' key from FILE (e.g. the controller's STATE_DIR/engine-key; `brix up` "
      "passes it); read again on reload" },
    { "require-key", BRIX_OPT_BOOL, O(require_key), "false", 1, 0, NULL,
      "every request needs a user's API key (Authorization: Bearer sk-brix-...)" },
    { "user", BRIX_OPT_STRLIST, O(users), NULL, 1, 0,
      "NAME[:rpm=N,tpm=N,models=A|B,priority=N,key=KEY|key-sha256=HEX]",
      "a user and its limits (0 = unlimited); repeat for more" },
    { "default-rpm", BRIX_OPT_INT, O(default_rpm), "-1", -1, 1000000000, "N",
      "limits for users named by the user header but not configured (-1: refuse them with 401)" },
    { "default-tpm", BRIX_OPT_INT, O(default_tpm), "0", 0, 1000000000000, "N",
      "TPM for unconfigured users when --default-rpm is set (0 = unlimited)" },
    { "max-implicit-users", BRIX_OPT_INT, O(max_implicit_users), "10000", 1, 10000000, "N",
      "users --default-rpm may create (memory store); beyond, an idle one is dropped or the "
      "newcomer gets 429" },
    { "tenant-metrics-max", BRIX_OPT_INT, O(tenant_metrics_max), "100", 0, 100000, "N",
      "users with their own /metrics labels; the rest are counted as user=\"other\"" },
    { "metrics-max-children", BRIX_OPT_INT, O(metrics_max_children), "10000", 1, 10000000, "N",
      "label sets per /metrics family; new ones beyond are counted under \"other\" "
      "(brix_metrics_dropped_children_total{family})" },
    { "fairness", BRIX_OPT_STRING, O(fairness), "none", 1, 0, "none|vtc",
      "vtc: at capacity, requests wait in per-user queues served by Virtual Token Counter" },
    { "max-inflight-per-pod", BRIX_OPT_INT, O(max_inflight_per_pod), "256", 1, 1000000, "N",
      "fairness: requests let into the fleet at once, per ready pod (vLLM's max-num-seqs)" },
    { "queue-size", BRIX_OPT_INT, O(queue_size), "1024", 0, 10000000, "N",
      "fairness: waiting requests per user (429 beyond)" },
    { "queue-timeout", BRIX_OPT_DURATION, O(queue_timeout), "30s", 1, 3600000, NULL,
      "fairness: longest wait for capacity (503 after)" },
    { "fair-reserve", BRIX_OPT_DOUBLE, O(fair_reserve), "0.1", 0, 0.9, "F",
      "fairness: share of the capacity a user over its fair share may not take (kept so "
      "others' requests start at once)" },
    { "fair-tenants", BRIX_OPT_INT, O(fair_tenants), "10000", 1, 10000000, "N",
      "fairness: users tracked separately; when full, an idle one (--fair-tenant-idle) makes "
      "room, else newcomers share one queue" },
    { "fair-tenant-idle", BRIX_OPT_DURATION, O(fair_tenant_idle), "10s", 0, 86400000, NULL,
      "fairness: how long a user must have had nothing queued or running before a new user "
      "may take its place in a full table" },
    BRIX_OPT_END,
};
#undef O

const brix_opt_t *brix_gw_options(void)
{
    return gw_opts;
}

static const char usage_line[] =
    "brix gateway (--worker-urls URL[,URL...] | --controller URL) [options]";
static const char about[] =
    "The OpenAI-compatible gateway: routes each request by its model to an engine replica\n"
    "(vLLM or brix engine-sim), with health checks, retries, a circuit breaker and metrics.";

brix_gw_rt_t *brix_gw_rt_from_cfg(const brix_gw_cfg_t *c, uint64_t version, char *err,
                                  size_t errlen)
{
    brix_gw_rt_t *rt = brix_calloc(1, sizeof *rt);
    if (!rt || !(rt->default_strategy = brix_strdup(c->routing_strategy))) {
        brix_free(rt);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&rt->refs, 1);
    char serr[256];
    if (brix_strategy_parse(c->routing_strategy, &rt->default_sel, serr, sizeof serr)) {
        snprintf(err, errlen, "routing-strategy: %s", serr);
        brix_gw_rt_unref(rt);
        return NULL;
    }
    if (c->model_strategy.n) {
        rt->model_sel = brix_calloc(c->model_strategy.n, sizeof *rt->model_sel);
        if (!rt->model_sel) {
            brix_gw_rt_unref(rt);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
    }
    for (size_t i = 0; i < c->model_strategy.n; i++) {
        const char *s = c->model_strategy.v[i];
        const char *eq = strchr(s, '=');
        if (!eq || eq == s || !eq[1]) {
            snprintf(err, errlen, "model-strategy: expected MODEL=STRATEGY, got '%s'", s);
            brix_gw_rt_unref(rt);
            return NULL;
        }
        struct brix_gw_model_sel *ms = &rt->model_sel[rt->nmodel_sel];
        if (!(ms->model = brix_strndup(s, (size_t)(eq - s)))) {
            brix_gw_rt_unref(rt);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        rt->nmodel_sel++;
        if (brix_strategy_parse(eq + 1, &ms->sel, serr, sizeof serr)) {
            snprintf(err, errlen, "model-strategy %s: %s", ms->model, serr);
            brix_gw_rt_unref(rt);
            return NULL;
        }
    }
    rt->route = c->route;
    rt->version = version;
    rt->access_log = c->access_log;
    rt->max_retries = (int)c->max_retries;
    rt->retry_on_5xx = c->retry_on_5xx;
    rt->breaker.consecutive_failures = (uint32_t)c->breaker_failures;
    rt->breaker.base_ejection_ms = c->ejection_time;
    rt->breaker.max_ejection_ms = c->max_ejection_time;
    brix_upstream_opts_default(&rt->upstream);
    rt->upstream.connect_timeout_ms = c->connect_timeout;
    rt->upstream.first_byte_timeout_ms = c->first_byte_timeout;
    rt->upstream.idle_timeout_ms = c->upstream_idle_timeout;
    rt->upstream.keepalive_ms = c->upstream_keepalive;
    rt->upstream.max_idle = (uint32_t)c->upstream_max_idle;
    rt->upstream.write_timeout_ms = c->http.write_timeout_ms; /* one --write-timeout both ways */
    rt->retry_after_s = (int)c->retry_after;
    rt->backpressure_bytes = c->backpressure_bytes;
    rt->sse_max_event_bytes = c->sse_max_event_bytes;
    rt->adapter_wake_timeout_ms = c->adapter_wake_timeout;
    rt->max_held_requests = c->max_held_requests;
    rt->scale_from_zero_ms = c->scale_from_zero_timeout;
    /* a client told to come back after one more hold's worth of waiting
     * (the replica was not ready within that long), never sooner than
     * --retry-after */
    uint64_t sfz_s = (c->scale_from_zero_timeout + 999) / 1000;
    rt->scale_from_zero_retry_s =
        sfz_s > (uint64_t)c->retry_after ? (int)sfz_s : (int)c->retry_after;
    if (c->engine_api_key && !(rt->engine_api_key = brix_strdup(c->engine_api_key))) {
        brix_gw_rt_unref(rt);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return rt;
}

const brix_strategy_sel_t *brix_gw_rt_strategy(const brix_gw_rt_t *rt, const char *model)
{
    for (size_t i = 0; i < rt->nmodel_sel; i++)
        if (!strcmp(rt->model_sel[i].model, model))
            return &rt->model_sel[i].sel;
    return &rt->default_sel;
}

/* Splits comma-separated entries of --worker-urls into separate items. */
static int split_urls(brix_strlist_t *l, char *err, size_t errlen)
{
    brix_strlist_t out = { 0, NULL };
    for (size_t i = 0; i < l->n; i++) {
        const char *s = l->v[i];
        while (*s) {
            const char *e = strchr(s, ',');
            size_t n = e ? (size_t)(e - s) : strlen(s);
            char tmp[512];
            if (n >= sizeof tmp) {
                snprintf(err, errlen, "--worker-urls: entry too long");
                brix_strlist_free(&out);
                return -1;
            }
            memcpy(tmp, s, n);
            tmp[n] = '\0';
            char *t = tmp;
            while (*t == ' ')
                t++;
            for (size_t k = strlen(t); k && t[k - 1] == ' '; k--)
                t[k - 1] = '\0';
            if (*t && brix_strlist_push(&out, t)) {
                brix_strlist_free(&out);
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            s += n + (e ? 1 : 0);
        }
    }
    brix_strlist_free(l);
    *l = out;
    return 0;
}

/* defaults, then the file, then argv again: flags win over the file */
static int load_cfg(brix_gw_cfg_t *c, int argc, char **argv, char *err, size_t errlen)
{
    if (brix_config_defaults(gw_opts, c, err, errlen))
        return -1;
    int rc = brix_config_parse_args(gw_opts, c, argc, argv, 1, err, errlen);
    if (rc)
        return rc;
    if (c->config) {
        char *path = brix_strdup(c->config);
        rc = path ? brix_config_load_file(gw_opts, c, path, err, errlen) : -1;
        brix_free(path);
        if (rc == 0)
            rc = brix_config_parse_args(gw_opts, c, argc, argv, 1, err, errlen);
        if (rc)
            return -1;
    }
    if (split_urls(&c->worker_urls, err, errlen))
        return -1;
    brix_gw_rt_t *probe_rt = brix_gw_rt_from_cfg(c, 0, err, errlen); /* validates strategies */
    if (!probe_rt)
        return -1;
    brix_gw_rt_unref(probe_rt);
    const char *ek = getenv("BRIX_ADMIN_KEY"), *ep = getenv("BRIX_REDIS_PASSWORD");
    if (!c->admin_key && ek && *ek && !(c->admin_key = brix_strdup(ek)))
        return -1;
    if (!c->redis_password && ep && *ep && !(c->redis_password = brix_strdup(ep)))
        return -1;
    const char *ee = getenv("BRIX_ENGINE_API_KEY");
    bool ee_used = !c->engine_api_key && ee && *ee;
    if (ee_used && !(c->engine_api_key = brix_strdup(ee)))
        return -1;
    if (c->controller_token_file) {
        if (c->controller_token) {
            snprintf(err, errlen,
                     "--controller-token and --controller-token-file exclude each other");
            return -1;
        }
        if (brix_secret_read_file(c->controller_token_file, &c->controller_token, err, errlen))
            return -1;
    }
    if (c->engine_api_key_file) {
        /* the flag or BRIX_ENGINE_API_KEY: the file is the one named explicitly */
        if (c->engine_api_key && !ee_used) {
            snprintf(err, errlen, "--engine-api-key and --engine-api-key-file exclude each other");
            return -1;
        }
        brix_free(c->engine_api_key);
        c->engine_api_key = NULL;
        if (brix_secret_read_file(c->engine_api_key_file, &c->engine_api_key, err, errlen))
            return -1;
    }
    const char *ct = getenv("BRIX_CONTROLLER_TOKEN");
    if (!c->controller_token && ct && *ct && !(c->controller_token = brix_strdup(ct)))
        return -1;
    if (c->controller) {
        /* one source of pods: a static list next to the controller's would
         * be diffed by two owners and could name one engine twice */
        if (c->worker_urls.n) {
            snprintf(err, errlen,
                     "--controller and --worker-urls exclude each other (the "
                     "controller lists the engines)");
            return -1;
        }
        if (strncmp(c->controller, "http://", 7) && strncmp(c->controller, "https://", 8)) {
            snprintf(err, errlen, "controller: expected an http:// or https:// URL, got '%s'",
                     c->controller);
            return -1;
        }
    }
    if (c->admin_key && strlen(c->admin_key) < 16) {
        snprintf(err, errlen, "admin-key: use at least 16 characters");
        return -1;
    }
    brix_tn_cfg_t tc;
    if (brix_gw_tenant_cfg(c, &tc, err, errlen))
        return -1;
    brix_tn_cfg_free(&tc);
    if (strcmp(c->fairness, "none") && strcmp(c->fairness, "vtc")) {
        snprintf(err, errlen, "fairness: expected none or vtc, got '%s'", c->fairness);
        return -1;
    }
    if (brix_log_level_parse(c->log_level) < 0) {
        snprintf(err, errlen, "log-level: unknown level '%s'", c->log_level);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ signals -- */

static bool str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b));
}

static bool list_differs(const brix_strlist_t *a, const brix_strlist_t *b)
{
    if (a->n != b->n)
        return true;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]))
            return true;
    return false;
}

/* Tenancy and fairness settings are read by the worker threads without a
 * lock and shape state built at start (the store, the queue): a reload keeps
 * the running values (the new file's are swapped into `old`, which the
 * caller frees) and says so if they differ. */
static void keep_start_only(brix_gw_cfg_t *nc, brix_gw_cfg_t *old)
{
#define KEEP_STR(f)                                                                                \
    do {                                                                                           \
        changed |= str_differs(nc->f, old->f);                                                     \
        char *t = nc->f;                                                                           \
        nc->f = old->f;                                                                            \
        old->f = t;                                                                                \
    } while (0)
#define KEEP_VAL(f)                                                                                \
    do {                                                                                           \
        changed |= nc->f != old->f;                                                                \
        nc->f = old->f;                                                                            \
    } while (0)
    bool changed = list_differs(&nc->users, &old->users);
    brix_strlist_t tl = nc->users;
    nc->users = old->users;
    old->users = tl;
    KEEP_STR(redis_url);
    KEEP_STR(redis_password);
    KEEP_STR(redis_prefix);
    KEEP_STR(redis_failure);
    KEEP_STR(admin_key);
    KEEP_STR(fairness);
    KEEP_VAL(redis_timeout);
    KEEP_VAL(require_key);
    KEEP_VAL(default_rpm);
    KEEP_VAL(default_tpm);
    KEEP_VAL(max_implicit_users);
    KEEP_VAL(tenant_metrics_max);
    KEEP_VAL(max_inflight_per_pod);
    KEEP_VAL(queue_size);
    KEEP_VAL(queue_timeout);
    KEEP_VAL(fair_tenants);
    KEEP_VAL(fair_tenant_idle);
    KEEP_VAL(fair_reserve);
#undef KEEP_STR
#undef KEEP_VAL
    if (changed)
        BRIX_WARN("reload: tenant, Redis, admin-key and fairness settings only change on "
                  "restart; keeping the running ones (users: change them with the admin API)");
}

static void on_sighup(uv_signal_t *s, int signum)
{
    brix_gw_t *gw = s->data;
    if (gw->draining)
        return;
    brix_gw_cfg_t nc;
    memset(&nc, 0, sizeof nc);
    char err[512];
    if (load_cfg(&nc, gw->argc, gw->argv, err, sizeof err)) {
        BRIX_ERROR("reload failed, keeping the running configuration: %s", err);
        brix_config_free(gw_opts, &nc);
        brix_metric_add(gw->m.reloads_failed, 1);
        return;
    }
    if (nc.port != gw->cfg.port || strcmp(nc.host, gw->cfg.host) || nc.workers != gw->cfg.workers ||
        list_differs(&nc.allowed_hosts, &gw->fixed.allowed_hosts))
        BRIX_WARN("reload: host, port, workers and allowed-host only change on restart; keeping "
                  "%s:%d with %d workers",
                  gw->cfg.host, gw->port, gw->nworkers);
    /* the index and the KV-event watchers are built for one block size */
    if (nc.route.block_size != gw->cfg.route.block_size ||
        nc.prefix_index_entries != gw->cfg.prefix_index_entries) {
        BRIX_WARN("reload: prefix-block-size and prefix-index-entries only change on restart; "
                  "keeping %lld and %lld",
                  (long long)gw->cfg.route.block_size, (long long)gw->cfg.prefix_index_entries);
        nc.route.block_size = gw->cfg.route.block_size;
        nc.prefix_index_entries = gw->cfg.prefix_index_entries;
    }
    brix_gw_rt_t *rt = brix_gw_rt_from_cfg(&nc, gw->rt->version + 1, err, sizeof err);
    if (!rt) {
        BRIX_ERROR("reload failed: %s", err);
        brix_config_free(gw_opts, &nc);
        return;
    }
    keep_start_only(&nc, &gw->cfg);
    /* Listener settings stay; everything else is the new file's. */
    int64_t port = gw->cfg.port, workers = gw->cfg.workers;
    char *host = gw->cfg.host;
    gw->cfg.host = NULL;
    brix_config_free(gw_opts, &gw->cfg);
    gw->cfg = nc;
    brix_free(gw->cfg.host);
    gw->cfg.host = host;
    gw->cfg.port = port;
    gw->cfg.workers = workers;
    brix_log_set_level((brix_log_level_t)brix_log_level_parse(gw->cfg.log_level));
    brix_metrics_set_max_children(gw->m.reg, (size_t)gw->cfg.metrics_max_children);
    brix_gw_rt_unref(gw->rt);
    gw->rt = rt;
    brix_gw_control_reconfigure(gw->ctl);
    brix_metric_add(gw->m.reloads_ok, 1);
    BRIX_INFO("configuration reloaded: %s%zu engine URL(s), strategy %s",
              gw->cfg.controller ? "engines from the controller, " : "", gw->cfg.worker_urls.n,
              gw->cfg.routing_strategy);
}

static void on_fair_timer(uv_timer_t *t)
{
    brix_gw_t *gw = t->data;
    brix_gw_fairs_sweep(gw->fair, brix_now_ns());
}

static void shutdown_now(brix_gw_t *gw)
{
    uv_timer_stop(&gw->fair_timer);
    uv_close((uv_handle_t *)&gw->fair_timer, NULL);
    if (gw->tn_seed) {
        brix_tn_conn_free(gw->tn_seed);
        gw->tn_seed = NULL;
    }
    uv_timer_stop(&gw->drain_timer);
    uv_close((uv_handle_t *)&gw->drain_timer, NULL);
    uv_close((uv_handle_t *)&gw->sigterm, NULL);
    uv_close((uv_handle_t *)&gw->sigint, NULL);
    uv_close((uv_handle_t *)&gw->sighup, NULL);
    brix_workers_stop(gw->workers); /* closes servers, aborting what is left */
    brix_gw_control_stop(gw->ctl);
}

static void on_drain_check(uv_timer_t *t)
{
    brix_gw_t *gw = t->data;
    int busy = 0;
    for (int i = 0; i < gw->nworkers; i++)
        busy += !atomic_load(&gw->w[i]->drained);
    uint64_t elapsed = (brix_now_ns() - gw->drain_start_ns) / 1000000u;
    if (busy == 0 || elapsed >= gw->cfg.drain_timeout) {
        if (busy)
            BRIX_WARN("drain: %d worker(s) still had requests in flight after %llu ms; closing",
                      busy, (unsigned long long)elapsed);
        else
            BRIX_INFO("drain: done");
        shutdown_now(gw);
    }
}

static void on_term(uv_signal_t *s, int signum)
{
    brix_gw_t *gw = s->data;
    if (gw->draining) {
        BRIX_WARN("second signal: closing now");
        gw->cfg.drain_timeout = 0;
        on_drain_check(&gw->drain_timer);
        return;
    }
    gw->draining = true;
    gw->drain_start_ns = brix_now_ns();
    BRIX_INFO("received %s: draining (up to %llu ms)", signum == SIGTERM ? "SIGTERM" : "SIGINT",
              (unsigned long long)gw->cfg.drain_timeout);
    for (int i = 0; i < gw->nworkers; i++) {
        brix_gw_worker_t *w = gw->w[i];
        uv_mutex_lock(&w->mu);
        w->stop_requested = true; /* the worker drains its server on wake */
        uv_mutex_unlock(&w->mu);
        uv_async_send(&w->wake);
    }
    uv_timer_start(&gw->drain_timer, on_drain_check, 20, 20);
}

/* ---------------------------------------------------------------- main -- */

int brix_gateway_main(int argc, char **argv)
{
    static brix_gw_t gateway;
    brix_gw_t *gw = &gateway;
    memset(gw, 0, sizeof *gw);
    gw->argc = argc;
    gw->argv = argv;
    uv_mutex_init(&gw->label_mu);
    char err[512];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            brix_config_usage(stdout, gw_opts, usage_line, about);
            return 0;
        }
    }
    if (load_cfg(&gw->cfg, argc, argv, err, sizeof err)) {
        fprintf(stderr, "brix gateway: %s\n", err);
        brix_config_free(gw_opts, &gw->cfg);
        return 2;
    }
    if (!gw->cfg.worker_urls.n && !gw->cfg.controller) {
        fprintf(stderr, "brix gateway: --worker-urls (engine base URLs, e.g. "
                        "http://127.0.0.1:8001) or --controller URL is required\n");
        brix_config_free(gw_opts, &gw->cfg);
        return 2;
    }
    brix_log_init("gateway", (brix_log_level_t)brix_log_level_parse(gw->cfg.log_level));
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    gw->loop = &loop;
    int rc = 1;
    if (brix_gw_demand_init(&gw->demand, &loop)) {
        fprintf(stderr, "brix gateway: cannot create the wake signal\n");
        uv_loop_close(&loop);
        brix_config_free(gw_opts, &gw->cfg);
        return 1;
    }
    if (brix_gw_metrics_init(gw) || !(gw->rt = brix_gw_rt_from_cfg(&gw->cfg, 1, err, sizeof err)) ||
        !(gw->index = brix_prefix_index_new((size_t)gw->cfg.prefix_index_entries))) {
        fprintf(stderr, "brix gateway: %s\n", gw->rt ? "out of memory" : err);
        goto out;
    }
    gw->fixed.admin_key = gw->cfg.admin_key ? brix_strdup(gw->cfg.admin_key) : NULL;
    gw->fixed.queue_size = gw->cfg.queue_size;
    gw->fixed.queue_timeout = gw->cfg.queue_timeout;
    gw->fixed.tenant_metrics_max = gw->cfg.tenant_metrics_max;
    gw->fixed.check_host = brix_http_host_is_loopback(gw->cfg.host) || gw->cfg.allowed_hosts.n;
    for (size_t i = 0; i < gw->cfg.allowed_hosts.n; i++)
        if (brix_strlist_push(&gw->fixed.allowed_hosts, gw->cfg.allowed_hosts.v[i]))
            goto out;
    if (gw->cfg.admin_key && !gw->fixed.admin_key)
        goto out;
    brix_tn_cfg_t tc;
    if (brix_gw_tenant_cfg(&gw->cfg, &tc, err, sizeof err)) {
        fprintf(stderr, "brix gateway: %s\n", err);
        goto out;
    }
    if (tc.enabled && !(gw->tn = brix_tn_new(&tc, err, sizeof err))) {
        brix_tn_cfg_free(&tc);
        fprintf(stderr, "brix gateway: %s\n", err);
        goto out;
    }
    brix_tn_cfg_free(&tc);
    if (gw->tn && brix_tn_uses_redis(gw->tn)) {
        if (!(gw->tn_seed = brix_tn_conn_new(gw->tn, &loop)))
            goto out;
        brix_tn_conn_seed(gw->tn_seed);
    }
    uv_timer_init(&loop, &gw->fair_timer);
    gw->fair_timer.data = gw;
    if (!strcmp(gw->cfg.fairness, "vtc")) {
        brix_fair_cfg_t fc = { .queue_size = gw->cfg.queue_size,
                               .timeout_ms = gw->cfg.queue_timeout,
                               .w_in = 1,
                               .w_out = 2,
                               .max_tenants = gw->cfg.fair_tenants,
                               .idle_ms = gw->cfg.fair_tenant_idle,
                               .reserve = gw->cfg.fair_reserve };
        if (!(gw->fair = brix_gw_fairs_new(&fc, gw->cfg.max_inflight_per_pod)))
            goto out;
        uv_timer_start(&gw->fair_timer, on_fair_timer, 50, 50);
    }
    gw->nworkers = (int)gw->cfg.workers;
    gw->w = brix_calloc((size_t)gw->nworkers, sizeof *gw->w);
    if (!gw->w || !(gw->http_shared = brix_http_shared_new()))
        goto out;
    int werr = 0;
    /* workers answer as soon as they start, before the handlers below exist: a
     * SIGTERM in between must wait for them (not kill the process), and the
     * threads started here inherit the mask so only this one takes it */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigaddset(&term, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    gw->workers =
        brix_workers_start(gw->nworkers, brix_gw_worker_init, brix_gw_worker_stop, gw, &werr);
    if (!gw->workers) {
        BRIX_ERROR("cannot listen on %s:%lld: %s", gw->cfg.host, (long long)gw->cfg.port,
                   uv_strerror(werr));
        goto out;
    }
    if (!brix_gw_control_start(gw)) {
        BRIX_ERROR("cannot start the control loop");
        brix_workers_stop(gw->workers);
        brix_workers_join(gw->workers);
        gw->workers = NULL;
        goto out;
    }
    uv_timer_init(&loop, &gw->drain_timer);
    gw->drain_timer.data = gw;
    uv_signal_init(&loop, &gw->sigterm);
    uv_signal_init(&loop, &gw->sigint);
    uv_signal_init(&loop, &gw->sighup);
    gw->sigterm.data = gw->sigint.data = gw->sighup.data = gw;
    uv_signal_start(&gw->sigterm, on_term, SIGTERM);
    uv_signal_start(&gw->sigint, on_term, SIGINT);
    uv_signal_start(&gw->sighup, on_sighup, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &term, NULL);
    if (gw->cfg.controller)
        BRIX_INFO("serving the OpenAI API on http://%s:%d with %d workers, engines from the "
                  "controller %s, strategy %s",
                  gw->cfg.host, gw->port, gw->nworkers, gw->cfg.controller,
                  gw->cfg.routing_strategy);
    else
        BRIX_INFO("serving the OpenAI API on http://%s:%d with %d workers, %zu engine(s), "
                  "strategy %s",
                  gw->cfg.host, gw->port, gw->nworkers, gw->cfg.worker_urls.n,
                  gw->cfg.routing_strategy);
    uv_run(&loop, UV_RUN_DEFAULT);
    brix_workers_join(gw->workers);
    gw->workers = NULL;
    rc = 0;
    BRIX_INFO("stopped");
out:
    if (gw->fair_timer.loop && !uv_is_closing((uv_handle_t *)&gw->fair_timer))
        uv_close((uv_handle_t *)&gw->fair_timer, NULL);
    if (gw->tn_seed)
        brix_tn_conn_free(gw->tn_seed);
    gw->tn_seed = NULL;
    brix_gw_demand_close(&gw->demand); /* the workers are joined: nobody sends any more */
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (gw->zctx)
        zmq_ctx_term(gw->zctx); /* every socket is closed by now */
    if (gw->rt)
        brix_gw_rt_unref(gw->rt);
    /* worker threads are joined: their structs are ours to free */
    for (int i = 0; gw->w && i < gw->nworkers; i++) {
        if (gw->w[i]) {
            uv_mutex_destroy(&gw->w[i]->mu);
            uv_mutex_destroy(&gw->w[i]->fair_mu);
            brix_free(gw->w[i]);
        }
    }
    brix_free(gw->w);
    brix_gw_metrics_free(gw);
    brix_prefix_index_free(gw->index);
    brix_gw_fairs_free(gw->fair);
    brix_tn_free(gw->tn);
    brix_free(gw->fixed.admin_key);
    brix_strlist_free(&gw->fixed.allowed_hosts);
    for (size_t i = 0; i < gw->nlabel_users; i++)
        brix_free(gw->label_users[i]);
    brix_free(gw->label_users);
    uv_mutex_destroy(&gw->label_mu);
    brix_gw_demand_free(&gw->demand);
    brix_http_shared_free(gw->http_shared); /* every worker's server is closed */
    brix_config_free(gw_opts, &gw->cfg);
    return rc;
}
