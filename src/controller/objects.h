/*
 * objects — the controller's object model: ModelDeployment (brix's own kind:
 * a base model served by N engine replicas), ModelAdapter and PodAutoscaler
 * (AIBrix's kinds, model.aibrix.ai and autoscaling.aibrix.ai/v1alpha1, applied
 * unchanged; a PodAutoscaler's annotations are parsed into its
 * brix_as_params_t at apply, so bad values are refused there with
 * file:line:col and the runtime reads params only), parsed from YAML or JSON with
 * strict validation that names file:line:col, and written back as canonical
 * JSON ({"apiVersion","kind","metadata","spec"}; the controller adds status).
 *
 * Everything is parsed from brix_yaml trees, JSON included (JSON is YAML), so
 * `brix apply -f`, the HTTP API and the state file share one code path.
 * Ownership: a brix_obj_t owns all its strings; brix_obj_free releases it.
 */
#ifndef BRIX_CONTROLLER_OBJECTS_H
#define BRIX_CONTROLLER_OBJECTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/yaml.h"
#include "controller/autoscaler/autoscaler.h"

typedef enum brix_kind {
    BRIX_KIND_NONE = -1,
    BRIX_KIND_DEPLOYMENT = 0, /* ModelDeployment */
    BRIX_KIND_ADAPTER,        /* ModelAdapter */
    BRIX_KIND_REPLICA,        /* read-only: the replicas the provider runs */
    BRIX_KIND_CLUSTER,        /* brix up's own settings document; never stored */
    BRIX_KIND_AUTOSCALER,     /* PodAutoscaler (autoscaling.aibrix.ai/v1alpha1) */
} brix_kind_t;

/* "deployments", "deployment", "deploy", "md", "modeldeployment(s)" …;
 * case-insensitive; BRIX_KIND_NONE when unknown. */
brix_kind_t brix_kind_parse(const char *s);
const char *brix_kind_name(brix_kind_t k);   /* "ModelDeployment" */
const char *brix_kind_plural(brix_kind_t k); /* "deployments" (the API path) */

typedef struct brix_labels {
    size_t n;
    char **k, **v;
} brix_labels_t;

int brix_labels_set(brix_labels_t *l, const char *k, const char *v);
const char *brix_labels_get(const brix_labels_t *l, const char *k);
/* Every key of sel is in labels with the same value (an empty sel matches). */
bool brix_labels_match(const brix_labels_t *sel, const brix_labels_t *labels);
void brix_labels_free(brix_labels_t *l);
int brix_labels_json(brix_buf_t *b, const brix_labels_t *l);

typedef struct brix_meta {
    char *name;
    brix_labels_t labels, annotations;
    int64_t generation;  /* bumped by the controller when the spec changes */
    uint64_t created_ms; /* wall clock */
    int64_t deleting_ms; /* wall clock of the delete request; 0 = live */
} brix_meta_t;

typedef struct brix_deploy_spec {
    char *model;            /* --served-model-name; default metadata.name */
    int64_t replicas;       /* 0..256 */
    char *gpu;              /* GPU profile (engine-sim --gpu); default "a100" */
    brix_strlist_t command; /* engine command template; empty = brix engine-sim */
    brix_strlist_t args;    /* extra arguments appended to the command */
    bool lora;              /* LoRA enabled (default true) */
    /* brix extension kvCache: replicas load and save prefix blocks in the
     * controller's brix kvcache members (engine-sim: --kv-transfer-config is
     * added; a custom command places {kvcache} itself). Default: engine-sim */
    bool kv_cache;
    int64_t max_loras;        /* adapters in one batch (engine --max-loras) */
    int64_t max_cpu_loras;    /* adapters resident (engine --max-cpu-loras) */
    int64_t adapter_capacity; /* placement capacity per replica (default max_cpu_loras) */
    char *health_path;        /* default /health */
    uint64_t startup_timeout_ms;
} brix_deploy_spec_t;

typedef struct brix_adapter_spec {
    char *base_model;       /* may be NULL (AIBrix: optional) */
    brix_labels_t selector; /* podSelector.matchLabels (required) */
    char *scheduler;        /* default | leastAdapters | binPack | random */
    char *artifact_url;     /* file://, http(s)://; others → condition */
    char *sha256;           /* brix extension: artifact checksum (lowercase hex) */
    char *credentials_ref;  /* credentialsSecretRef.name, unsupported locally */
    int64_t replicas;       /* 0 = every matching replica (AIBrix's nil) */
    int64_t idle_ttl_ms;    /* brix extension idleTTL; -1 = controller default, 0 = never */
    brix_labels_t additional_config;
} brix_adapter_spec_t;

/* Where a PodAutoscaler metric comes from (AIBrix's metricSourceType). */
typedef enum brix_pa_source_type {
    BRIX_PA_SRC_POD,      /* each replica's own metrics endpoint (locally: the replica's URL) */
    BRIX_PA_SRC_EXTERNAL, /* protocolType://endpoint/path (also "domain", deprecated) */
    BRIX_PA_SRC_GATEWAY,  /* brix extension "gateway": the gateways' per-model load reports */
    BRIX_PA_SRC_RESOURCE, /* cpu/memory of the replica processes (local: /proc) */
    BRIX_PA_SRC_CUSTOM,   /* Kubernetes custom metrics API: refused locally at apply */
} brix_pa_source_type_t;

typedef struct brix_pa_metric {
    brix_pa_source_type_t type;
    char *protocol;      /* "http" | "https" (default http) */
    char *endpoint;      /* external: host[:port] */
    char *path;          /* as given ("metrics" or "/metrics") */
    char *port;          /* pod: the metrics port in a pod (locally unused: the replica URL) */
    char *target_metric; /* AIBrix's name (num_requests_waiting …) or an engine metric name */
    char *target_value;  /* as given (a string in AIBrix) */
    double target;       /* target_value parsed, > 0 */
} brix_pa_metric_t;

typedef struct brix_pa_spec {
    char *target_api_version, *target_kind, *target_name; /* scaleTargetRef */
    char *sub_target_role;                                /* subTargetSelector.roleName */
    int64_t min_replicas; /* default 1 (0 allowed with scale-to-zero) */
    int64_t max_replicas; /* required, >= min */
    brix_as_strategy_t strategy;
    brix_pa_metric_t metrics[BRIX_AS_MAX_METRICS];
    int nmetrics;
    int64_t observe_window_ms; /* 0 = default */
    int64_t panic_window_ms;   /* 0 = default */
    char *predictive_mode;     /* "Preview" | "Auto" | NULL */
    int64_t predictive_horizon_ms;
    brix_as_schedule_t schedules[BRIX_AS_MAX_SCHEDULES];
    size_t nschedules;
    /* brix extension spec.slo (scalingStrategy SLO) */
    double slo_ttft_s, slo_itl_s, slo_headroom;
    /* annotations, parsed and checked at apply (defaults filled in) */
    brix_as_params_t params; /* strategy, bounds, windows, rates, tolerances, zero, slo */
} brix_pa_spec_t;

/* "pod", "external" ("domain" is read as external), "gateway", "resource", "custom". */
const char *brix_pa_source_name(brix_pa_source_type_t t);
/* key is in AIBrix's autoscaling annotation namespaces (autoscaling.aibrix.ai/…,
 * kpa.autoscaling.aibrix.ai/…) but not one brix reads: the parser keeps it in
 * metadata.annotations and applies nothing; the controller may warn (AIBrix
 * logs and ignores such keys). */
bool brix_pa_annotation_unknown(const char *key);

typedef struct brix_obj {
    brix_kind_t kind;
    char *api_version;
    brix_meta_t meta;
    brix_deploy_spec_t d;  /* BRIX_KIND_DEPLOYMENT */
    brix_adapter_spec_t a; /* BRIX_KIND_ADAPTER */
    brix_pa_spec_t pa;     /* BRIX_KIND_AUTOSCALER */
    /* The directory the object was applied from (brix apply -f's file, sent as
     * x-brix-base-dir), or NULL: by default the one place besides the state
     * dir its file:// artifact may be read from. Not part of the spec; kept
     * in the state file's status so it survives a restart. */
    char *base_dir;
} brix_obj_t;

/*
 * Validates one document. file names the source in errors; base_dir (may be
 * NULL) resolves relative file:// artifact paths and, when absolute, is kept
 * as an adapter's base_dir. On error returns -1 and
 * writes "file:line:col: field.path: what is wrong" into err. A Cluster
 * document returns 0 with kind BRIX_KIND_CLUSTER and nothing else parsed.
 */
int brix_obj_parse(const brix_yaml_node_t *doc, const char *file, const char *base_dir,
                   brix_obj_t **out, char *err, size_t errlen);
void brix_obj_free(brix_obj_t *o);

/* Appends {"apiVersion","kind","metadata":{…},"spec":{…} — without the closing
 * brace, so the caller can add ,"status":{…} and then '}'. */
int brix_obj_json_open(brix_buf_t *b, const brix_obj_t *o);
/* The same for API output: secrets in engine argv and artifact URLs hidden
 * (brix_auth_redact_*). */
int brix_obj_json_open_redacted(brix_buf_t *b, const brix_obj_t *o);
/* Same spec, labels and annotations (what decides "unchanged" on apply). */
bool brix_obj_same(const brix_obj_t *a, const brix_obj_t *b);
/* Same spec (what decides a new generation: labels alone do not roll replicas). */
bool brix_obj_spec_same(const brix_obj_t *a, const brix_obj_t *b);

/* Names: DNS-1123 labels joined by '.', lowercase, ≤ 253 characters. */
bool brix_obj_name_valid(const char *s);

#endif
