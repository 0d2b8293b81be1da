/*
 * gateway — internal state of `brix gateway`, shared by its modules:
 * gateway.c (flags, start-up, signals, reload), control.c (the control thread:
 * discovery, health checks, /v1/models, scraping, snapshots), watch.c (its
 * link to `brix controller`), proxy.c (the request path on the worker loops),
 * hold.c (requests waiting for an adapter), router.c (strategies) and
 * gw_metrics.c.
 *
 * Threads: the main thread runs the control loop; N worker threads each run
 * an HTTP server on the shared port (SO_REUSEPORT) and their own upstream
 * pools. Workers see the fleet only through snapshots (fleet.h) and the
 * reloadable runtime settings they carry (brix_gw_rt_t).
 */
#ifndef BRIX_GATEWAY_GATEWAY_H
#define BRIX_GATEWAY_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/config.h"
#include "core/curl_uv.h"
#include "core/http_client.h"
#include "core/http_server.h"
#include "core/metrics.h"
#include "core/workers.h"
#include "gateway/fair.h"
#include "gateway/fleet.h"
#include "gateway/hold.h"
#include "gateway/prefix_index.h"
#include "gateway/router.h"
#include "gateway/tenants.h"

typedef struct brix_gw_cfg {
    char *config;
    char *host;
    int64_t port;
    brix_strlist_t allowed_hosts; /* Host names besides IP literals and localhost */
    int64_t workers;
    brix_strlist_t worker_urls;
    /* discovery from `brix controller` */
    char *controller, *controller_token;
    char *controller_token_file;        /* read into controller_token at load */
    int64_t controller_report_interval; /* ms between activity/load reports */
    uint64_t controller_idle_timeout;
    uint64_t adapter_wake_timeout;
    uint64_t scale_from_zero_timeout;
    int64_t max_held_requests;
    char *routing_strategy;
    brix_strlist_t model_strategy; /* MODEL=STRATEGY */
    brix_strlist_t kv_events;      /* URL=ENDPOINT[;REPLAY] */
    int64_t prefix_index_entries;
    brix_route_params_t route;
    char *log_level;
    bool access_log;
    /* client side */
    brix_http_limits_t http;
    /* upstream */
    uint64_t connect_timeout, first_byte_timeout, upstream_idle_timeout, upstream_keepalive;
    int64_t upstream_max_idle;
    int64_t max_retries;
    bool retry_on_5xx;
    /* outlier detection */
    int64_t breaker_failures;
    uint64_t ejection_time, max_ejection_time;
    /* control plane */
    uint64_t health_interval, health_timeout;
    int64_t unhealthy_threshold, healthy_threshold;
    uint64_t scrape_interval, scrape_timeout, metrics_stale_after;
    uint64_t models_refresh_interval;
    uint64_t drain_timeout;
    int64_t retry_after;
    uint64_t backpressure_bytes;
    uint64_t sse_max_event_bytes;
    uint64_t kv_events_max_msg;
    /* tenants */
    char *redis_url, *redis_password, *redis_prefix, *redis_failure;
    uint64_t redis_timeout;
    char *admin_key;
    char *engine_api_key;      /* the engines' vLLM --api-key */
    char *engine_api_key_file; /* read into engine_api_key at load (and reload) */
    bool require_key;
    brix_strlist_t users; /* NAME[:rpm=N,tpm=N,...] */
    int64_t default_rpm, default_tpm;
    int64_t max_implicit_users;
    int64_t tenant_metrics_max;
    int64_t metrics_max_children; /* per metric family */
    /* fairness */
    char *fairness;
    int64_t max_inflight_per_pod, queue_size, fair_tenants;
    double fair_reserve;
    uint64_t queue_timeout;
    uint64_t fair_tenant_idle; /* ms */
} brix_gw_cfg_t;

/* Settings a reload may change, immutable once published (refcounted,
 * carried by snapshots). */
typedef struct brix_gw_rt {
    atomic_int refs;
    uint64_t version;
    char *default_strategy;
    brix_strategy_sel_t default_sel;
    struct brix_gw_model_sel {
        char *model;
        brix_strategy_sel_t sel;
    } * model_sel;
    size_t nmodel_sel;
    brix_route_params_t route;
    bool access_log;
    int max_retries;
    bool retry_on_5xx;
    brix_breaker_cfg_t breaker;
    brix_upstream_opts_t upstream;
    int retry_after_s;
    uint64_t backpressure_bytes;
    uint64_t sse_max_event_bytes; /* longest SSE event relayed */
    char *engine_api_key; /* sent to engines instead of any client Authorization; NULL: none */
    uint64_t adapter_wake_timeout_ms; /* 0: answer 503 at once instead of holding */
    uint64_t scale_from_zero_ms;      /* the same for a model with no ready replica */
    int scale_from_zero_retry_s;      /* Retry-After when that hold gives up */
    int64_t max_held_requests;
} brix_gw_rt_t;

void brix_gw_rt_ref(brix_gw_rt_t *rt);
void brix_gw_rt_unref(brix_gw_rt_t *rt);

/* The published unit: fleet snapshot + runtime settings. */
typedef struct brix_gw_view {
    atomic_int refs;
    brix_fleet_snap_t *fleet;
    brix_gw_rt_t *rt;
} brix_gw_view_t;

void brix_gw_view_ref(brix_gw_view_t *v);
void brix_gw_view_unref(brix_gw_view_t *v);

typedef struct brix_gw brix_gw_t;
typedef struct brix_gw_fairs brix_gw_fairs_t;

/* Per-worker state (owned by its thread). */
typedef struct brix_gw_worker {
    brix_gw_t *gw;
    int idx;
    int retry_after_s; /* --retry-after at start, until the first view arrives */
    uv_loop_t *loop;
    brix_http_server_t *srv;
    uv_async_t wake; /* a new view is waiting, or stop */
    uv_mutex_t mu;   /* guards `pending` only */
    brix_gw_view_t *pending;
    bool stop_requested;
    brix_gw_view_t *view; /* current */
    /* upstream pools by pod id; each remembers its pod and settings version */
    brix_upstream_t **ups;
    brix_pod_t **ups_pod;
    uint64_t *ups_rt_version;
    size_t nups;
    uint64_t rr; /* round-robin cursor */
    uint64_t rng;
    bool draining;
    uv_timer_t drain_timer;
    atomic_bool drained;   /* draining and nothing left in flight */
    brix_buf_t alog;       /* access-log lines of this loop iteration */
    uv_check_t alog_check; /* writes them out at the end of the iteration */
    uint64_t inflight;     /* proxied requests in flight on this worker */
    brix_tn_conn_t *tn;    /* tenant store connection (NULL without tenancy) */
    /* requests let in (or expired) by the fairness queue, for this loop */
    uv_async_t fair_wake;
    uv_mutex_t fair_mu;
    brix_fair_item_t *fair_ready;
    bool fair_closed;
    brix_gw_holdq_t held; /* requests waiting for an adapter or a model's first replica */
} brix_gw_worker_t;

/* Metric children and families, shared by all threads (atomics). */
typedef struct brix_gw_metrics {
    brix_metrics_t *reg;
    brix_metric_family_t *requests;                           /* {model,status,strategy} */
    brix_metric_family_t *duration;                           /* {model} */
    brix_metric_family_t *ttft;                               /* {model} */
    brix_metric_family_t *upstream_errors;                    /* {pod,kind} */
    brix_metric_family_t *retries;                            /* {model} */
    brix_metric_family_t *ejections;                          /* {pod} */
    brix_metric_family_t *pod_inflight;                       /* {pod} */
    brix_metric_family_t *pod_healthy;                        /* {pod} */
    brix_metric_family_t *pod_running, *pod_waiting, *pod_kv; /* {pod} scraped */
    brix_metric_family_t *scrapes;                            /* {pod,result} */
    brix_metric_family_t *values_refused;                     /* {pod} */
    brix_metric_t *decision;                                  /* routing decision seconds */
    brix_metric_t *fleet_version;
    brix_metric_t *reloads_ok, *reloads_failed;
    brix_metric_t *client_aborts;
    brix_metric_t *streams_broken;
    brix_metric_t *index_entries, *index_bytes, *index_evictions;
    brix_metric_family_t *kv_batches, *kv_gaps, *kv_resets, *kv_replays, *kv_unknown, *kv_live;
    /* tenants and fairness */
    brix_metric_family_t *tenant_requests; /* {user,result} */
    brix_metric_family_t *tenant_tokens;   /* {user,kind} */
    brix_metric_t *ratelimit_check;        /* seconds */
    brix_metric_t *store_up, *store_errors, *store_timeouts, *fail_open, *fail_closed;
    brix_metric_t *fair_capacity, *fair_inflight, *fair_queued, *fair_expired, *fair_rejected;
    brix_metric_t *fair_wait; /* seconds waited in the queue */
    /* bounded tenant tables (NULL-safe: not checked at start) */
    brix_metric_t *implicit_users, *implicit_evicted, *implicit_refused, *fair_evicted;
    /* controller discovery and adapter wakes */
    brix_metric_t *ctl_connected, *ctl_reconnects, *ctl_version;
    brix_metric_t *ctl_events_snapshot, *ctl_events_heartbeat, *ctl_events_bad;
    brix_metric_t *ctl_activity_ok, *ctl_activity_failed;
    brix_metric_family_t *adapter_wakes; /* {model} */
    brix_metric_t *adapter_held;
    brix_metric_family_t *adapter_wait;     /* {result} seconds */
    brix_metric_family_t *deployment_wakes; /* {deployment} */
    brix_metric_family_t *model_held;       /* {model} gauge */
    brix_metric_family_t *model_wait;       /* {result} seconds */
    /* client connections: slow peers and limits (core/http_server guard stats) */
    brix_metric_t *http_conns, *http_buffered, *http_timeouts[4]; /* header body idle write */
    brix_metric_t *http_refused_ip, *http_refused_full, *http_evicted;
    brix_metric_t *http_budget_pauses;
    brix_process_metrics_t process;
} brix_gw_metrics_t;

typedef struct brix_gw_control brix_gw_control_t;

struct brix_gw {
    brix_gw_cfg_t cfg;
    int argc;
    char **argv;
    uv_loop_t *loop; /* control loop (main thread) */
    int port;        /* bound port */
    brix_workers_t *workers;
    brix_gw_worker_t **w; /* per worker, set by init */
    int nworkers;
    brix_gw_metrics_t m;
    brix_gw_control_t *ctl;
    brix_gw_rt_t *rt;           /* current runtime settings (control thread) */
    brix_prefix_index_t *index; /* shared by workers and the control thread */
    void *zctx;                 /* ZMQ context of KV-event subscriptions (control thread) */
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain_timer;
    bool draining;
    uint64_t drain_start_ns;
    atomic_int workers_done;
    brix_tn_t *tn;           /* NULL: no tenancy */
    brix_gw_fairs_t *fair;   /* NULL: no fairness queues */
    brix_tn_conn_t *tn_seed; /* control loop's connection: writes configured users */
    /* settings the worker threads read, fixed at start (a reload swaps gw->cfg) */
    struct brix_gw_fixed {
        char *admin_key;
        int64_t queue_size, tenant_metrics_max;
        uint64_t queue_timeout;
        /* DNS rebinding: Host is checked on a loopback listener, or once
         * names are listed (core/http_host) */
        bool check_host;
        brix_strlist_t allowed_hosts;
    } fixed;
    uv_timer_t fair_timer;
    brix_gw_demand_t demand; /* adapters and models requests wait for (workers → control thread) */
    uv_mutex_t label_mu;     /* users with their own metric labels */
    brix_http_shared_t *http_shared; /* per-IP counts and byte budget of all workers */
    char **label_users;
    size_t nlabel_users;
};

/* gateway.c */
const brix_opt_t *brix_gw_options(void);
/* Builds runtime settings from a config; NULL with err on a bad strategy. */
brix_gw_rt_t *brix_gw_rt_from_cfg(const brix_gw_cfg_t *c, uint64_t version, char *err,
                                  size_t errlen);
/* The strategy selection for a model when the request names none. */
const brix_strategy_sel_t *brix_gw_rt_strategy(const brix_gw_rt_t *rt, const char *model);

/* control.c: runs on the main loop */
brix_gw_control_t *brix_gw_control_start(brix_gw_t *gw);
/* Applies a (re)loaded config: the pod set and runtime settings. */
void brix_gw_control_reconfigure(brix_gw_control_t *ctl);
void brix_gw_control_stop(brix_gw_control_t *ctl);
/* Publishes a view to every worker (takes a reference per worker). */
void brix_gw_publish(brix_gw_t *gw, brix_gw_view_t *v);

/* proxy.c: runs on worker loops */
int brix_gw_worker_init(uv_loop_t *loop, int idx, void *ud, void **wctx);
/* fair.h's deliver(): hands a dispatched or expired request to its worker. */
void brix_gw_fair_deliver(void *ud, int worker, brix_fair_item_t *it);
void brix_gw_worker_stop(uv_loop_t *loop, int idx, void *ud, void *wctx);

/* tenancy.c: tenant settings from the config (validated at load) */
int brix_gw_tenant_cfg(const brix_gw_cfg_t *c, brix_tn_cfg_t *out, char *err, size_t errlen);
/* admin.c: the user-management API; true if the path was one of its own */
bool brix_gw_admin_handle(brix_gw_worker_t *w, brix_http_req_t *h);
/* The label a user's metrics go under ("other" beyond --tenant-metrics-max). */
const char *brix_gw_user_label(brix_gw_t *gw, const char *user);

/* fair_pool.c: one fairness queue per base model */
brix_gw_fairs_t *brix_gw_fairs_new(const brix_fair_cfg_t *cfg, int64_t per_pod);
void brix_gw_fairs_free(brix_gw_fairs_t *p);
/* The queue of a model's base model (created on first use); NULL: no memory. */
brix_fair_t *brix_gw_fairs_get(brix_gw_t *gw, const brix_model_entry_t *me,
                               const brix_fleet_snap_t *snap);
void brix_gw_fairs_publish(brix_gw_fairs_t *p, const brix_fleet_snap_t *snap);
void brix_gw_fairs_sweep(brix_gw_fairs_t *p, uint64_t now_ns);
void brix_gw_fairs_stats(brix_gw_fairs_t *p, brix_fair_stats_t *sum);

/* gw_metrics.c */
int brix_gw_metrics_init(brix_gw_t *gw);
void brix_gw_metrics_free(brix_gw_t *gw);
brix_metric_t *brix_gw_metric1(brix_metric_family_t *f, const char *a);
brix_metric_t *brix_gw_metric2(brix_metric_family_t *f, const char *a, const char *b);
brix_metric_t *brix_gw_metric3(brix_metric_family_t *f, const char *a, const char *b,
                               const char *c);

#endif
