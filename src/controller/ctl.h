/*
 * ctl — the controller's shared state (internal to src/controller).
 *
 * One libuv loop owns everything: objects (desired state), replicas and
 * adapter placements (observed state), the HTTP API and its watchers. The
 * reconcile pass (reconcile.c) is level-triggered: it recomputes what should
 * be from the objects and what is from the last observations, and acts on the
 * difference; api.c renders the same state as JSON, tables and the watch.
 */
#ifndef BRIX_CONTROLLER_CTL_H
#define BRIX_CONTROLLER_CTL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "controller/auth.h"
#include "controller/objects.h"
#include "controller/provider.h"
#include "core/curl_uv.h"
#include "core/http.h"
#include "core/http_server.h"
#include "core/metrics.h"

typedef struct brix_ctl_cfg {
    char *host;
    int64_t port;
    char *state_dir;
    int64_t adapter_idle_ttl; /* ms; 0 = adapters are never unloaded for idleness */
    int64_t reconcile_interval;
    int64_t health_interval;
    int64_t health_timeout;
    int64_t restart_backoff_max;
    int64_t load_retries;
    int64_t load_timeout;
    uint64_t artifact_max_bytes;
    int64_t artifact_timeout;
    uint64_t artifact_max_unpacked; /* sum of an archive's member sizes */
    int64_t artifact_max_files;     /* members of an archive */
    uint64_t artifact_cache_max;    /* LRU cleanup of unreferenced artifacts above this */
    brix_strlist_t artifact_roots;  /* file:// allowed under these (empty: applied file's dir) */
    int64_t stop_grace;
    int64_t unload_drain;
    int64_t evict_idle_min;
    bool keep_replicas;
    int64_t max_watchers;
    char *log_level;
    char *config;
    char *token_file;      /* NULL: STATE_DIR/token, made on first start */
    bool insecure_no_auth; /* loopback only: no token at all */
    bool status_page_open; /* loopback only: `/` without the token */
    bool allow_engine_commands;
    char *engine_key_file;        /* NULL: STATE_DIR/engine-key, made on first start */
    bool no_engine_key;           /* replicas start without a key (their /v1 is open) */
    brix_strlist_t allowed_hosts; /* Host names besides IP literals and localhost */
    int64_t autoscale_interval;   /* ms: PodAutoscaler metrics collected and decided every */
    int64_t drain_timeout;        /* ms: a draining replica is stopped after this at the latest */
    int64_t drain_grace;          /* ms: it drains at least this long (gateways catch up) */
    int64_t gateway_stale;        /* ms: gateway load reports older than this are unavailable */
    char *kvcache_servers;        /* the brix kvcache members published to replicas and gateways */
    char *kvcache_token_file;     /* their token, given to replicas as a file path */
    brix_http_limits_t http;
} brix_ctl_cfg_t;

/* Artifact state of one adapter (what the engines are given to load). */
typedef enum brix_art_state {
    BRIX_ARTS_NONE,     /* not fetched for the current generation */
    BRIX_ARTS_FETCHING, /* a fetch is running */
    BRIX_ARTS_READY,    /* path holds the local artifact */
    BRIX_ARTS_FAILED,   /* reason/message say why; retried at retry_at (transient only) */
} brix_art_state_t;

/* A load or unload of one adapter on one replica, in flight or retrying. */
typedef struct brix_lora_op {
    char *replica;
    bool unload;
    bool inflight;
    bool done;        /* the engine said 200; waiting for /v1/models to confirm */
    uint64_t done_at; /* monotonic ms of that 200 */
    int tries;
    uint64_t next_at;  /* monotonic ms: earliest next attempt */
    uint64_t begin_ms; /* monotonic ms: first attempt (cold-load latency) */
    char last_err[200];
} brix_lora_op_t;

typedef struct brix_cond {
    const char *type; /* Initialized | Scheduled | Ready */
    bool status;
    char reason[40];
    char message[240];
    uint64_t since_wall_ms;
} brix_cond_t;

#define BRIX_ADAPTER_CONDS 3

typedef struct brix_adapter_rt {
    brix_obj_t *o;
    brix_art_state_t art;
    int64_t art_gen;    /* generation the artifact state belongs to */
    uint64_t art_fetch; /* id of the fetch in flight (ids are unique per controller) */
    char *art_path;
    char art_reason[32];
    char art_msg[256];
    uint64_t art_retry_at;
    bool scaled;             /* scaled to zero after idleTTL without traffic */
    uint64_t last_used_wall; /* wall ms of the last request / wake / apply */
    uint64_t woken_wall;     /* wall ms of the last wake (a request waits for it) */
    brix_lora_op_t *ops;
    size_t nops;
    char last_err[200]; /* the last failed load/unload, until one succeeds */
    /* what the last reconcile computed (rendered in status) */
    const char *phase;
    int candidates, desired, ready;
    brix_cond_t conds[BRIX_ADAPTER_CONDS];
    /* pods that failed to load it recently are skipped until this time */
    char **avoid;
    uint64_t *avoid_until;
    size_t navoid;
} brix_adapter_rt_t;

/* One PodAutoscaler's runtime: the object, its algorithm state, the scale it
 * sets on its target and what it last decided (rendered as status). */
#define BRIX_PA_HISTORY 5
#define BRIX_PA_CONDS   3 /* AbleToScale, ScalingActive, ScalingLimited (HPA's types) */

typedef struct brix_pa_decision_rec {
    uint64_t wall_ms;
    int32_t from, to;
    char reason[32];
    char message[200];
} brix_pa_decision_rec_t;

typedef struct brix_pa_rt {
    brix_obj_t *o;
    brix_as_state_t st;
    int64_t st_gen;    /* generation the algorithm state was made for */
    int32_t scale;     /* replicas it asks of its target; -1 = not taken over yet */
    bool has_decision; /* last is valid */
    brix_as_decision_t last;
    int32_t actual;
    int32_t eff_min, eff_max;
    char active_schedule[64];
    double metric_value[BRIX_AS_MAX_METRICS]; /* per replica, last tick (NaN = none) */
    bool metric_ok[BRIX_AS_MAX_METRICS];
    brix_pa_decision_rec_t hist[BRIX_PA_HISTORY]; /* ring, newest at (hist_n - 1) */
    size_t hist_n;
    uint64_t last_scale_wall;
    uint64_t scale_events_up, scale_events_down;
    brix_cond_t conds[BRIX_PA_CONDS];
    /* external source: the last value fetched */
    bool ext_inflight;
    uint64_t ext_seq; /* id of the fetch in flight: a late answer to an older one is dropped */
    uint64_t woke_ms; /* monotonic ms of the last wake from zero (a gateway holds requests) */
    bool ext_ok;
    double ext_value;
    uint64_t ext_at_ms;
    char ext_err[160];
    uint64_t warned_ms;    /* rate limit of repeated warnings */
    uint64_t frozen_since; /* monotonic ms the scale has been frozen since (0 = not) */
} brix_pa_rt_t;

typedef struct brix_ctl_metrics {
    brix_metrics_t *reg;
    brix_metric_family_t *replicas, *adapters;
    brix_metric_t *loads_ok, *loads_failed, *unloads_ok, *unloads_failed;
    brix_metric_t *restarts, *fetch_ok, *fetch_failed, *watchers, *wakes, *scaled_down;
    brix_metric_t *evictions;
    brix_metric_t *cache_bytes, *cache_evictions;
    brix_metric_t *load_seconds, *reconcile_seconds;
    brix_process_metrics_t process;
} brix_ctl_metrics_t;

typedef struct brix_ctl {
    brix_ctl_cfg_t cfg;
    uv_loop_t *loop;
    char *self_exe;
    char *state_path, *log_dir, *artifact_dir;
    brix_provider_t *prov;
    brix_curl_t *curl;        /* calls to replicas' /v1 routes: with the engine key */
    brix_curl_t *health_curl; /* replicas' health path: without it (open, as in vLLM) */
    brix_http_server_t *srv;
    int port; /* bound API port */

    brix_obj_t **deploys;
    size_t ndeploys;
    brix_adapter_rt_t **adapters;
    size_t nadapters;
    brix_replica_t **reps;
    size_t nreps;
    brix_pa_rt_t **pas; /* PodAutoscalers */
    size_t npas;
    struct brix_as_world *as; /* autoscale.c's observations (pods, gateways, start-up times) */

    uint64_t version; /* bumped on every change a watcher can see */
    uint64_t sent_version;
    bool dirty; /* state file needs writing */
    bool ready;
    bool stopping;

    struct brix_ctl_call *calls; /* HTTP calls in flight (freed at shutdown) */
    brix_http_req_t **watchers;
    size_t nwatchers;

    uv_timer_t reconcile_timer, health_timer, heartbeat_timer, save_timer, kick_timer;
    uv_timer_t notify_timer, autoscale_timer;
    uint64_t fetch_seq;
    bool gc_running, gc_wanted; /* artifact cache cleanup on the pool; another one asked for */
    uint64_t gc_next_at;        /* monotonic ms of the next periodic cleanup */
    uint64_t rng;
    uv_signal_t sigterm, sigint;
    uint64_t stop_deadline;
    uv_timer_t stop_timer;
    brix_ctl_metrics_t m;

    /* API credentials: token[0] == '\0' only with --insecure-no-auth */
    char token[BRIX_AUTH_TOKEN_MAX];
    char cookie[65]; /* the status page's session cookie value */
    /* the replicas' key (VLLM_API_KEY); '\0' only with --no-engine-key */
    char engine_key[BRIX_AUTH_TOKEN_MAX];
    struct brix_ctl_login {
        char code[65];    /* one-time status-page login code ("" = free slot) */
        uint64_t expires; /* monotonic ms */
    } logins[8];
    uint64_t host_warned_ms; /* last WARN about a foreign Host (rate limit) */
} brix_ctl_t;

/* reconcile.c */
void brix_ctl_reconcile(brix_ctl_t *c);
void brix_ctl_kick(brix_ctl_t *c);    /* reconcile soon (coalesced) */
void brix_ctl_changed(brix_ctl_t *c); /* visible state changed: bump version, save, notify */
void brix_ctl_dirty(brix_ctl_t *c);   /* only the state file is behind (e.g. last use times) */
void brix_ctl_health_tick(brix_ctl_t *c);
void brix_ctl_on_exit(void *ud, brix_replica_t *r, const char *why);
brix_replica_t *brix_ctl_replica(brix_ctl_t *c, const char *name);
brix_obj_t *brix_ctl_deploy(brix_ctl_t *c, const char *name);
brix_adapter_rt_t *brix_ctl_adapter(brix_ctl_t *c, const char *name);
void brix_ctl_replica_free(brix_ctl_t *c, brix_replica_t *r);
/* Takes o (a deployment, an adapter or a PodAutoscaler) into the tables; *out is the new
 * adapter record, if o is an adapter. 0 or -ENOMEM (o then still the caller's). */
int brix_ctl_add(brix_ctl_t *c, brix_obj_t *o, brix_adapter_rt_t **out);
void brix_ctl_adapter_free(brix_adapter_rt_t *a);
bool brix_ctl_replica_has(const brix_replica_t *r, const char *adapter);
/* An unload of adapter from r is pending: gateways must stop routing it there. */
bool brix_ctl_draining(brix_ctl_t *c, const brix_replica_t *r, const char *adapter);
/* Drops unloads of a not yet sent (a request wants the adapter again). */
void brix_ctl_cancel_unloads(brix_ctl_t *c, brix_adapter_rt_t *a);
/* Sets r's labels: the deployment's, plus AIBrix's pod labels. */
int brix_ctl_replica_labels(brix_replica_t *r, const brix_obj_t *d);
/* Restarts a replica (the API's DELETE /v1/replicas/NAME, like deleting a pod). */
void brix_ctl_replica_restart(brix_ctl_t *c, brix_replica_t *r);
void brix_ctl_calls_free(brix_ctl_t *c);

/* autoscale.c */
int brix_ctl_as_init(brix_ctl_t *c); /* 0 or -ENOMEM */
void brix_ctl_as_free(brix_ctl_t *c);
void brix_ctl_as_tick(brix_ctl_t *c); /* collect, decide, scale (the autoscale timer) */
/* Replicas deployment d should run: its PodAutoscaler's scale when one
 * manages it, else spec.replicas (0 when it is being deleted). */
int64_t brix_ctl_deploy_want(brix_ctl_t *c, const brix_obj_t *d);
/* The live PodAutoscaler managing deployment `name`, or NULL. */
brix_pa_rt_t *brix_ctl_pa_for(brix_ctl_t *c, const char *deployment);
brix_pa_rt_t *brix_ctl_pa(brix_ctl_t *c, const char *name);
void brix_ctl_pa_free(brix_pa_rt_t *p);
/* A draining replica with no work left (seen by a metrics scrape that
 * started after since_ms). */
bool brix_ctl_as_replica_idle(brix_ctl_t *c, const brix_replica_t *r, uint64_t since_ms);
/* POST /v1/deployments/NAME/wake: 0 (scaling from zero or already up),
 * -ENOENT, or -EPERM (scaled to zero by its spec: no autoscaler). */
int brix_ctl_as_wake(brix_ctl_t *c, const char *deployment, int64_t *replicas);
/* The "gateway"/"load" part of POST /v1/activity (a cJSON object). */
void brix_ctl_as_activity(brix_ctl_t *c, const void *json_root);
int brix_ctl_render_pa(brix_ctl_t *c, brix_buf_t *b, const brix_pa_rt_t *p);
void brix_ctl_as_metrics_init(brix_ctl_t *c);

/* state.c */
/* Writes the state file atomically (0600); 0 or -errno (already logged). */
int brix_ctl_save(brix_ctl_t *c);
/* Reads the state file (none: a first start, 0); -errno with err otherwise. */
int brix_ctl_load(brix_ctl_t *c, char *err, size_t errlen);

/* api.c */
/* Appends a JSON array of the conditions set in v[0..n) (Kubernetes' shape). */
int brix_ctl_render_conds(brix_buf_t *b, const brix_cond_t *v, int n);
void brix_ctl_http(brix_http_req_t *h, void *ud);
void brix_ctl_notify_watchers(brix_ctl_t *c);
void brix_ctl_heartbeat(brix_ctl_t *c);
void brix_ctl_close_watchers(brix_ctl_t *c);
/* The list of a kind, or the one object `name` (secrets redacted): 0, -ENOENT
 * (no such name) or -ENOMEM. */
int brix_ctl_render(brix_ctl_t *c, brix_buf_t *b, brix_kind_t kind, const char *name);
/* Applies the documents of one YAML/JSON text; all or nothing. 0, or -errno
 * with err: -EINVAL (invalid input), -EBUSY (an object is being deleted),
 * -EPERM (an engine command without --allow-engine-commands), -EIO (applied
 * but the state file not written), -ENOMEM. */
int brix_ctl_apply(brix_ctl_t *c, const char *source, const char *base_dir, const char *text,
                   size_t len, brix_buf_t *result, char *err, size_t errlen);

#endif
