/*
 * bench — `brix bench`: workload generator, load driver and report in one
 * command (internal header shared by workload.c, driver.c, fleet.c,
 * report.c and bench.c).
 *
 * A workload is a list of requests, each with its arrival time on the
 * simulated clock and a ready-to-send OpenAI body. For each routing
 * strategy compared, bench starts a fresh fleet (engine-sims + the gateway,
 * or nginx for the nginx-least-conn peer) so no strategy inherits another's
 * caches, replays the workload open-loop at the arrival times scaled by
 * --time-scale, measures every stream as a client sees it, reads the
 * engines' own counters at the end, and reports all strategies side by
 * side. Latencies are reported in simulated seconds (wall / time-scale), the
 * unit a real GPU fleet would show.
 */
#ifndef BRIX_BENCH_BENCH_H
#define BRIX_BENCH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/config.h"

#include <sys/types.h>

typedef struct bench_cfg {
    char *config;
    char *scenario;   /* shared-prefix | sharegpt | lora-mix | trace | mooncake | azure */
    char *trace;      /* file for trace scenarios */
    char *strategies; /* comma-separated; nginx-least-conn is the nginx peer */
    char *target;     /* existing gateway URL: no fleet is started */
    int64_t replicas;
    char *gpu;
    double time_scale;
    double duration; /* simulated seconds of arrivals (generated scenarios) */
    double speed;    /* trace scenarios: arrival times divided by this */
    int64_t max_requests;
    double rate;                /* requests per simulated second */
    char *arrival;              /* poisson | bursty */
    double burst_on, burst_off; /* bursty: seconds on / off (rate is the on-rate) */
    int64_t seed;
    char *out; /* results directory */
    double slo_ttft, slo_tpot;
    /* shared-prefix */
    int64_t groups, users_per_group, turns;
    int64_t system_tokens, user_tokens, reply_tokens;
    /* sharegpt-like lengths */
    double in_median, in_sigma, out_median, out_sigma;
    int64_t max_prompt, max_output;
    /* lora-mix */
    int64_t adapters;
    double zipf;
    /* engines */
    int64_t max_model_len;
    int64_t kv_blocks; /* --num-gpu-blocks-override, 0 = the profile's */
    int64_t block_size;
    char *brix_bin;
    char *nginx_bin;
    bool progress;
    char *gateway_args; /* extra gateway flags, space separated */
    /* trace slices (azure, autoscale): simulated seconds after the first arrival */
    double trace_start, trace_length; /* length 0 = to the end */
    /* autoscale scenario (autoscale.c) */
    char *policies;                     /* static,hpa,kpa,apa,slo */
    int64_t static_replicas;            /* 0 = computed from the slice's peak */
    double static_util;                 /* utilization at that peak the computation plans for */
    int64_t min_replicas, max_replicas; /* max 0 = 1.5 x static */
    char *startup_delay;                /* engines' --startup-delay (SECONDS | auto) */
    char *as_metric, *as_target;        /* HPA/KPA/APA metricsSources target */
    double sample_interval;             /* wall seconds between controller samples */
    double flap_window;                 /* simulated seconds (AIBrix's down cooldown) */
    char *envelope; /* ServeGen aggregate-rate CSV: arrivals from its rate envelope */
    double envelope_start, envelope_speed, envelope_rate;
    char *controller_args; /* extra controller flags in the clusters, space separated */
    char *routing;         /* gateway strategy in the autoscale clusters */
    /* kvstore / kvevict scenarios (kvstore.c, kvevict.c) */
    char *kv_sizes;       /* value sizes, e.g. "2MiB,4KiB" */
    char *kv_threads;     /* client thread counts, e.g. "1,4" */
    char *kv_paths;       /* redis-tcp,redis-unix,brixkv-tcp,brixkv-shm */
    char *kv_ops;         /* get,put */
    int64_t repeat;       /* repetitions of every cell */
    int64_t kv_batch;     /* keys per request */
    uint64_t kv_cold_set; /* bytes preloaded per size */
    char *redis_server;   /* redis-server binary */
    char *kv_traces;      /* kvevict: JSONL traces with hash_ids */
    char *kv_capacities;  /* kvevict: capacities as fractions of the unique blocks */
    uint64_t kv_value;    /* kvevict: bytes per block */
    char *kvcache_args;   /* extra `brix kvcache` flags, space separated */
    /* fleets: one kvcache node shared by the engines of "+kvcache" strategies */
    bool kvcache;              /* run every strategy without and with the store */
    uint64_t kvcache_capacity; /* the node's --capacity */
    uint64_t kvcache_block;    /* engines' block_bytes in the store (0 = 2 MiB per 16 tokens) */
    double kvcache_gbps;       /* simulated transfer rate of real-size blocks, Gbit/s */
} bench_cfg_t;

typedef struct bench_req {
    double t; /* arrival, simulated seconds */
    char *model;
    char *body;
    size_t body_len;
    int prompt_tokens; /* as generated (approximate for text traces) */
    bool chat;         /* /v1/chat/completions, else /v1/completions */
    int max_tokens;
} bench_req_t;

typedef struct bench_workload {
    bench_req_t *v;
    size_t n;
    char about[512]; /* one line on what it is, for the report */
    int nadapters;
} bench_workload_t;

int bench_workload_build(const bench_cfg_t *c, bench_workload_t *w, char *err, size_t errlen);
void bench_workload_free(bench_workload_t *w);

/* One request's outcome, as the client saw it (wall seconds). */
typedef struct bench_res {
    int status; /* HTTP status, 0 = connection failure */
    bool ok;    /* 200 and the stream ended with [DONE] */
    double sent, first, done;
    uint32_t events; /* content events received */
    uint32_t out_tokens;
    double itl_sum, itl_max;
    char pod[48]; /* target-pod header */
} bench_res_t;

typedef struct bench_run {
    char strategy[64];
    bench_res_t *res;
    size_t n;
    float *itl; /* every inter-event gap (wall s) */
    size_t nitl, itl_cap;
    double t0, t_end; /* wall */
    /* from the engines, deltas over the run */
    double prefix_queries, prefix_hits, preemptions;
    int npods;
    char pods[64][48];
    double pod_requests[64];
    double gw_decision_us; /* mean routing decision, gateway /metrics */
    /* the KV store, from the engines (vllm:external_prefix_cache_*, tokens) */
    double ext_queries, ext_hits;
    double kv_saved, kv_loaded; /* blocks (brix_engine_kv_saved|loaded_blocks_total) */
    double kv_wait;             /* simulated s waiting for loads (..._remote_wait_seconds_total) */
    bool kvcache;               /* the run had a kvcache node */
} bench_run_t;

/* Replays w against host:port (numeric), header routing-strategy when
 * strategy_header is set. Fills run->res. Returns 0 or -1. */
int bench_drive(const bench_cfg_t *c, const bench_workload_t *w, const char *host, int port,
                const char *strategy_header, bench_run_t *run);

/* proc.c: processes and blocking HTTP for the fleets bench starts. */
int bench_free_port(void); /* a free loopback port, or -1 */
/* Writes md to OUT/results.md and echoes it on stdout (every scenario's table). */
void bench_write_results_md(const bench_cfg_t *c, const brix_buf_t *md);
/* Starts argv with stdout and stderr in log; the pid or -1. */
pid_t bench_spawn(const char *const *argv, const char *log);
/* SIGTERM, up to grace_s seconds for it to exit, then SIGKILL; reaps it. */
void bench_stop(pid_t pid, double grace_s);
/* One request to 127.0.0.1:port on a fresh connection (5-s read timeout);
 * token adds a bearer header, body a Content-Type and length. *out (may be
 * NULL) gets the body, de-chunked and NUL-terminated. The status, 0 on
 * failure. */
int bench_http(int port, const char *token, const char *method, const char *path, const char *ctype,
               const char *body, size_t blen, brix_buf_t *out);

typedef struct bench_fleet bench_fleet_t;
/* Starts replicas engine-sims and, for a gateway strategy, the gateway (or
 * nginx for nginx-least-conn); *port is where to send traffic. */
bench_fleet_t *bench_fleet_start(const bench_cfg_t *c, const char *strategy, int nadapters,
                                 int *port, char *err, size_t errlen);
/* Scrapes every engine's counters (call before and after a run). */
void bench_fleet_sample(bench_fleet_t *f, bench_run_t *run, bool after);
void bench_fleet_stop(bench_fleet_t *f);

/* autoscale.c: `--scenario autoscale`, one fresh `brix up` cluster per
 * policy (static peak provisioning or a PodAutoscaler), sampled from the
 * controller while the workload replays; writes its own report. */
int bench_autoscale(const bench_cfg_t *c, const bench_workload_t *w);

/* kvstore.c: `--scenario kvstore`, brixkv against redis-server (throughput,
 * latency, memory per payload byte); writes its own report. */
int bench_kvstore(const bench_cfg_t *c);
/* kvevict.c: `--scenario kvevict`, prefix hit rate of the kvcache node's
 * eviction policies on traces with hash_ids; writes its own report. */
int bench_kvevict(const bench_cfg_t *c);

/* kvstore.c: a `brix kvcache` node on free loopback ports (extra flags in
 * c->kvcache_args and extra[]), logs in log; NULL with err when it does not
 * become healthy. */
typedef struct bench_kvnode {
    pid_t pid;
    int port, http_port;
    char unix_path[108];
    char addr[64]; /* "127.0.0.1:PORT" */
} bench_kvnode_t;
int bench_kvnode_start(const bench_cfg_t *c, uint64_t capacity, const char *const *extra,
                       const char *log, bench_kvnode_t *n, char *err, size_t errlen);
void bench_kvnode_stop(bench_kvnode_t *n);

/* report.c */
int bench_report(const bench_cfg_t *c, const bench_workload_t *w, bench_run_t *runs, size_t n);

double bench_pct(double *v, size_t n, double p); /* sorts v */

#endif
