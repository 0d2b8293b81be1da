/*
 * fleet — what the gateway knows about its engines, shared between the
 * control thread and the worker loops.
 *
 * A pod (one engine endpoint) is a long-lived object: its identity, its
 * in-flight counter and its circuit breaker are updated by workers with
 * atomics and read by everyone. Everything else — health, scraped engine
 * metrics, which models and adapters it serves — lives in an immutable
 * snapshot that the control thread rebuilds (after every scrape round,
 * health change or discovery change) and hands to each worker. A worker
 * keeps a reference to its current snapshot and takes one more for each
 * request that started with it, so a snapshot is freed only when the last
 * request using it ends. No lock is taken on the request path.
 */
#ifndef BRIX_GATEWAY_FLEET_H
#define BRIX_GATEWAY_FLEET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/engine_stats.h"
#include "gateway/prefix_index.h"

typedef enum brix_breaker_state {
    BRIX_BREAKER_CLOSED = 0, /* healthy: traffic flows */
    BRIX_BREAKER_OPEN,       /* ejected until ejected_until_ns */
    BRIX_BREAKER_HALF_OPEN,  /* ejection over: one probe request may pass */
} brix_breaker_state_t;

typedef struct brix_pod {
    atomic_int refs;
    uint32_t id;   /* stable index for per-worker tables, reused after free */
    char *name;    /* AIBrix target-pod: the pod name (static: "host:port") */
    char *url;     /* base URL, "http://127.0.0.1:8001" */
    char host[64]; /* numeric address */
    int port;
    char hostport[80];            /* "ip:port", AIBrix target-pod-ip */
    atomic_int inflight;          /* requests the gateway has on this pod (all workers) */
    atomic_llong pending_prefill; /* prompt tokens sent there, not yet answered by a first byte */
    atomic_llong routed_blocks;   /* prompt blocks the gateway routed there (ever) */
    /* passive outlier detection / circuit breaker */
    atomic_int breaker; /* brix_breaker_state_t */
    atomic_uint consecutive_failures;
    atomic_ullong ejected_until_ns;
    atomic_uint ejections; /* times ejected in a row; scales the ejection time */
    atomic_int probe_in_flight;
    atomic_ullong total_ejections;
} brix_pod_t;

/* What one snapshot says about a pod. */
typedef struct brix_pod_view {
    brix_pod_t *pod;
    bool healthy;              /* active health checks pass and models are known */
    bool metrics_fresh;        /* last scrape younger than the staleness bound */
    bool kv_events;            /* its KV-event stream is subscribed and in sequence */
    brix_engine_stats_t stats; /* from the last scrapes (engine_stats.h) */
    double scraped_at_s;       /* monotonic seconds of the scrape */
    int inflight_at_scrape;    /* pod->inflight when that scrape was answered */
    char *base_model;          /* the base model's id (first /v1/models entry without parent) */
} brix_pod_view_t;

/* What the gateway tells the controller about one model name, counted by
 * workers with relaxed atomics and no lookup. Long-lived: the control thread
 * (watch.c) keeps one per name; every snapshot's entry for that name, and
 * the registry's entry for a base model, point at it.
 *  - routed: requests routed to the name since the last activity report
 *    (the controller's idle TTL for adapters); reset by each report.
 *  - the load figures of a base model (adapter requests count toward their
 *    base), reported every second: requests, prompt_tokens and
 *    completion_tokens are cumulative since the record was made (only ever
 *    grow); inflight (admitted, not finished) and held (waiting for a ready
 *    replica or adapter) are gauges. */
typedef struct brix_model_activity {
    atomic_int refs;
    atomic_llong routed;
    atomic_llong requests, prompt_tokens, completion_tokens;
    /* the prompt-token estimate of every request at admission (held and
     * refused ones too): the load offered now, where prompt_tokens is what
     * engines served, known only when a request ends */
    atomic_llong offered_prompt_tokens;
    atomic_llong inflight, held;
    char name[]; /* NUL-terminated */
} brix_model_activity_t;

void brix_model_activity_ref(brix_model_activity_t *a);
void brix_model_activity_unref(brix_model_activity_t *a);

/* A model name the fleet serves: a base model or a LoRA adapter. */
typedef struct brix_model_entry {
    char *name;
    char *parent;   /* base model for adapters, NULL for base models */
    uint32_t *pods; /* indices into snapshot pods[] */
    size_t npods;
    brix_model_activity_t *activity; /* NULL without --controller */
    /* the load record of its base model (itself, or an adapter's parent)
     * when the registry knows that model: the registry's reference, valid
     * while the snapshot is; NULL otherwise */
    brix_model_activity_t *load;
} brix_model_entry_t;

/* ModelAdapter phases as the controller reports them. */
typedef enum brix_reg_phase {
    BRIX_REG_UNKNOWN = 0, /* a phase this gateway does not know: treated as loading */
    BRIX_REG_PENDING,     /* accepted, not placed yet */
    BRIX_REG_SCHEDULED,   /* replicas chosen */
    BRIX_REG_BOUND,       /* loading on its replicas */
    BRIX_REG_RUNNING,     /* loaded on at least one replica */
    BRIX_REG_SCALED,      /* scaled to zero: registered, loaded nowhere, woken on demand */
    BRIX_REG_FAILED,      /* could not be loaded (see message) */
} brix_reg_phase_t;

brix_reg_phase_t brix_reg_phase_parse(const char *s);
const char *brix_reg_phase_name(brix_reg_phase_t p);

/* One registered adapter (the controller's ModelAdapter). */
typedef struct brix_reg_adapter {
    char *name;
    char *base_model; /* NULL when the controller names none */
    brix_reg_phase_t phase;
    size_t ninstances; /* replicas it is loaded on, by the controller's account */
    char *message;     /* why it failed, when the controller says; NULL */
} brix_reg_adapter_t;

/* One model deployment (the controller's ModelDeployment) as its snapshot
 * reports it: the scale it runs now (an autoscaler may have set it to 0) and
 * how many of its replicas are ready. */
typedef struct brix_reg_deployment {
    char *name;
    char *model; /* the served model name */
    int64_t replicas, ready;
    bool scale_to_zero;
    bool kv_store; /* its engines load and save prefix blocks in brix kvcache */
} brix_reg_deployment_t;

/* What the controller registered: adapters (loaded or not), deployments
 * (snapshots of older controllers have none) and the base models its
 * replicas or deployments serve (ready or not, scaled to zero or not).
 * Immutable once published and shared by reference between snapshots; NULL
 * without --controller. */
typedef struct brix_registry {
    atomic_int refs;
    uint64_t version;             /* the controller's snapshot version */
    brix_reg_adapter_t *adapters; /* sorted by name */
    size_t nadapters;
    brix_reg_deployment_t *deployments; /* sorted by name */
    size_t ndeployments;
    char **base_models; /* sorted, distinct */
    size_t nbase_models;
    /* base_models[i]'s load record (one reference each), attached by the
     * watch before the registry is published; NULL entries (or a NULL
     * array) count nothing */
    brix_model_activity_t **base_load;
} brix_registry_t;

void brix_registry_ref(brix_registry_t *r);
void brix_registry_unref(brix_registry_t *r);
/* Binary searches; NULL/false when r is NULL or the name is not there. */
const brix_reg_adapter_t *brix_registry_adapter(const brix_registry_t *r, const char *name);
bool brix_registry_has_base(const brix_registry_t *r, const char *name);
/* The load record of a base model the registry knows; NULL otherwise. */
brix_model_activity_t *brix_registry_load(const brix_registry_t *r, const char *base);
/* The deployment a request for served model `model` wakes: among those
 * serving it (by name), the first already scaled above zero (it is starting
 * replicas), else the first that may scale to zero, else the first; NULL
 * when no deployment serves it. */
const brix_reg_deployment_t *brix_registry_deployment_for(const brix_registry_t *r,
                                                          const char *model);

typedef struct brix_fleet_snap {
    atomic_int refs;
    uint64_t version;
    brix_pod_view_t *pods;
    size_t npods;
    brix_model_entry_t *models; /* sorted by name */
    size_t nmodels;
    char *models_json; /* the aggregated /v1/models answer */
    size_t models_json_len;
    size_t nhealthy;
    brix_podset_t precise;     /* pods (by id) whose KV events are live */
    brix_registry_t *registry; /* the controller's, as last seen; NULL without one */
} brix_fleet_snap_t;

brix_pod_t *brix_pod_new(uint32_t id, const char *name, const char *url, const char *host,
                         int port);
void brix_pod_ref(brix_pod_t *p);
void brix_pod_unref(brix_pod_t *p);

void brix_snap_ref(brix_fleet_snap_t *s);
void brix_snap_unref(brix_fleet_snap_t *s);
/* Binary search by name; NULL when the fleet does not serve it. */
const brix_model_entry_t *brix_snap_model(const brix_fleet_snap_t *s, const char *name);
/* Whether a pod that passes health checks serves the model. */
bool brix_snap_model_ready(const brix_fleet_snap_t *s, const brix_model_entry_t *me);

/* Circuit breaker, called by workers. */
typedef struct brix_breaker_cfg {
    uint32_t consecutive_failures; /* failures in a row that eject, 0 = never */
    uint64_t base_ejection_ms;     /* first ejection; doubles with each repeat */
    uint64_t max_ejection_ms;
} brix_breaker_cfg_t;

/* Whether the pod may take a request now; a half-open pod admits exactly one
 * probe at a time (*probe is set when this request is that probe). */
bool brix_breaker_allow(brix_pod_t *p, uint64_t now_ns, bool *probe);
/* Outcome of a request; returns true when this failure ejected the pod. */
bool brix_breaker_report(brix_pod_t *p, const brix_breaker_cfg_t *c, bool ok, bool probe,
                         uint64_t now_ns);
/* Ejections in a row so far (for logs). */
brix_breaker_state_t brix_breaker_state(brix_pod_t *p, uint64_t now_ns);

#endif
