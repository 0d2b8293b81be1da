/*
 * autoscale — runs the PodAutoscalers: collects their metrics, asks the
 * algorithms (autoscaler/, pure functions) for a scale, and sets it on the
 * target ModelDeployment; reconcile.c then starts replicas or drains them.
 *
 * Every --autoscale-interval the tick (1) starts a GET of /metrics on every
 * ready replica of a managed deployment and on every draining replica (the
 * answers arrive before the next tick and are used then: a decision never
 * waits on the network), (2) starts the GET of each external metric source,
 * and (3) for each PodAutoscaler builds one sample from the freshest answers
 * and the gateways' load reports (POST /v1/activity), feeds it to the
 * algorithm and applies the decision. Metric names are AIBrix's
 * (num_requests_waiting, gpu_cache_usage_perc, …) mapped onto what engines
 * export, old and new vLLM names both; counters become rates and histograms
 * means over the interval. What could not be read is marked missing, so an
 * outage freezes the scale instead of shrinking it.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "controller/ctl.h"
#include "core/alloc.h"
#include "core/gpu_profile.h"
#include "core/log.h"
#include "core/time.h"

#define MAX_WANT       24         /* metric names one scrape looks for */
#define SCRAPE_MAX     (4u << 20) /* bytes of one /metrics answer */
#define MAX_GATEWAYS   64         /* gateways whose load reports are kept */
#define MAX_LOAD_MODEL 256        /* models per gateway report */
#define STARTUP_EWMA   0.5

/* ------------------------------------------------------------- names -- */

/* How a targetMetric is read from an engine's /metrics. */
typedef enum { M_GAUGE, M_RATE, M_HIST_MEAN } mkind_t;

typedef struct mdef {
    const char *names[2]; /* sample names, first found wins */
    mkind_t kind;
} mdef_t;

/* AIBrix's metric names (pkg/metrics) onto vLLM's exposition: the v0 names
 * (gpu_cache_usage_perc) were renamed in vLLM 0.11 (kv_cache_usage_perc); both
 * are looked for, so a PodAutoscaler works against old and new engines. */
static const struct {
    const char *aibrix;
    mdef_t def;
} known_metrics[] = {
    { "num_requests_running", { { "vllm:num_requests_running", NULL }, M_GAUGE } },
    { "num_requests_waiting", { { "vllm:num_requests_waiting", NULL }, M_GAUGE } },
    { "num_requests_swapped", { { "vllm:num_requests_swapped", NULL }, M_GAUGE } },
    { "gpu_cache_usage_perc",
      { { "vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc" }, M_GAUGE } },
    { "kv_cache_usage_perc",
      { { "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc" }, M_GAUGE } },
    { "cpu_cache_usage_perc", { { "vllm:cpu_cache_usage_perc", NULL }, M_GAUGE } },
    { "avg_prompt_throughput_toks_per_s", { { "vllm:prompt_tokens_total", NULL }, M_RATE } },
    { "avg_generation_throughput_toks_per_s",
      { { "vllm:generation_tokens_total", NULL }, M_RATE } },
    { "prompt_tokens_total", { { "vllm:prompt_tokens_total", NULL }, M_RATE } },
    { "generation_tokens_total", { { "vllm:generation_tokens_total", NULL }, M_RATE } },
    { "request_success_total", { { "vllm:request_success_total", NULL }, M_RATE } },
    { "time_to_first_token_seconds",
      { { "vllm:time_to_first_token_seconds", NULL }, M_HIST_MEAN } },
    { "time_per_output_token_seconds",
      { { "vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds" },
        M_HIST_MEAN } },
    { "inter_token_latency_seconds",
      { { "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds" },
        M_HIST_MEAN } },
    { "e2e_request_latency_seconds",
      { { "vllm:e2e_request_latency_seconds", NULL }, M_HIST_MEAN } },
    { "request_queue_time_seconds", { { "vllm:request_queue_time_seconds", NULL }, M_HIST_MEAN } },
};

/* The definition of a pod metric. A name that is not one of AIBrix's is an
 * engine metric given by its own name, looked for as given and with vLLM's
 * "vllm:" prefix; bufs hold those names. Its kind follows Prometheus naming:
 * _total is a counter (a rate is used), _seconds a histogram (its mean). */
static void metric_def(const char *target, mdef_t *d, char bufs[2][128])
{
    const char *bare = strncmp(target, "vllm:", 5) ? target : target + 5;
    for (size_t i = 0; i < sizeof known_metrics / sizeof *known_metrics; i++) {
        if (!strcmp(bare, known_metrics[i].aibrix)) {
            *d = known_metrics[i].def;
            return;
        }
    }
    snprintf(bufs[0], 128, "%s", target);
    d->names[0] = bufs[0];
    d->names[1] = NULL;
    if (!strchr(target, ':')) {
        snprintf(bufs[1], 128, "vllm:%s", target);
        d->names[1] = bufs[1];
    }
    size_t n = strlen(bare);
    d->kind = n > 6 && !strcmp(bare + n - 6, "_total")     ? M_RATE
              : n > 8 && !strcmp(bare + n - 8, "_seconds") ? M_HIST_MEAN
                                                           : M_GAUGE;
}

/* ------------------------------------------------------ observations -- */

/* The fixed set every scrape reads (load, latency, drain), then each
 * PodAutoscaler's own targets. */
enum {
    S_RUNNING,
    S_WAITING,
    S_PROMPT,
    S_GEN,
    S_TTFT_SUM,
    S_TTFT_COUNT,
    S_ITL_SUM,
    S_ITL_COUNT,
    S_ITL2_SUM,
    S_ITL2_COUNT,
    S_FIXED
};

static const char *const fixed_names[S_FIXED] = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_sum",
    "vllm:inter_token_latency_seconds_count",
    "vllm:time_per_output_token_seconds_sum",
    "vllm:time_per_output_token_seconds_count",
};

/* One replica's metrics: the last two scrapes (for rates and means). */
typedef struct as_pod {
    char *name;
    int pid;
    bool inflight;
    uint64_t asked_ms; /* when the scrape in flight (or the last) started */
    int nwant;
    char want[MAX_WANT][128];
    /* the last good scrape and the one before it */
    bool have, have_prev;
    uint64_t t_ms, prev_t_ms, t_asked_ms;
    double v[MAX_WANT], prev_v[MAX_WANT];
    bool seen[MAX_WANT], prev_seen[MAX_WANT];
    /* parse accumulators */
    double acc[MAX_WANT];
    bool acc_seen[MAX_WANT];
    bool mark; /* still wanted this tick */
    /* resource source: the process's CPU time (/proc/PID/stat), for a rate */
    double cpu_s, prev_cpu_s;
    uint64_t cpu_t_ms, prev_cpu_t_ms;
} as_pod_t;

/* One gateway's reports for one model: the last two, for rates. */
typedef struct as_load {
    char model[128];
    double req, prompt, compl, offered, inflight, held;
    double rps, in_tps, out_tps; /* from the last two reports */
    bool rated;
} as_load_t;

typedef struct as_gw {
    char id[40];
    uint64_t seen_ms, prev_ms;
    as_load_t *loads;
    size_t nloads;
} as_gw_t;

/* Start-up time per deployment (replica start → ready), smoothed. */
typedef struct as_startup {
    char *deployment;
    double seconds;
} as_startup_t;

typedef struct brix_as_world {
    as_pod_t **pods;
    size_t npods;
    as_gw_t gws[MAX_GATEWAYS];
    size_t ngws;
    as_startup_t *startups;
    size_t nstartups;
    brix_gpu_profiles_t profiles;
    bool profiles_ok;
    /* exported metrics */
    brix_metric_family_t *f_desired, *f_actual, *f_value, *f_target, *f_panic, *f_events,
        *f_unavail, *f_forecast, *f_min, *f_max;
} as_world_t;

static as_pod_t *pod_get(as_world_t *w, const brix_replica_t *r)
{
    for (size_t i = 0; i < w->npods; i++)
        if (!strcmp(w->pods[i]->name, r->name)) {
            if (w->pods[i]->pid != r->pid) { /* a new process: its counters start over */
                w->pods[i]->pid = r->pid;
                w->pods[i]->have = w->pods[i]->have_prev = false;
            }
            return w->pods[i];
        }
    as_pod_t *p = brix_calloc(1, sizeof *p);
    as_pod_t **v = brix_realloc(w->pods, (w->npods + 1) * sizeof *v);
    if (v)
        w->pods = v;
    if (!p || !v || !(p->name = brix_strdup(r->name))) {
        brix_free(p);
        return NULL;
    }
    p->pid = r->pid;
    w->pods[w->npods++] = p;
    return p;
}

static as_pod_t *pod_find(as_world_t *w, const char *name)
{
    for (size_t i = 0; w && i < w->npods; i++)
        if (!strcmp(w->pods[i]->name, name))
            return w->pods[i];
    return NULL;
}

static int pod_want_idx(const as_pod_t *p, const char *name)
{
    for (int i = 0; i < p->nwant; i++)
        if (!strcmp(p->want[i], name))
            return i;
    return -1;
}

static int pod_want(as_pod_t *p, const char *name)
{
    int i = pod_want_idx(p, name);
    if (i >= 0 || p->nwant >= MAX_WANT || strlen(name) >= sizeof p->want[0])
        return i;
    snprintf(p->want[p->nwant], sizeof p->want[0], "%s", name);
    return p->nwant++;
}

/* ------------------------------------------------------------ scrape -- */

typedef struct scrape_call {
    brix_ctl_t *c;
    char name[256];
    int pid;
} scrape_call_t;

static void on_sample(const brix_prom_sample_t *s, void *ud)
{
    as_pod_t *p = ud;
    int i = pod_want_idx(p, s->name);
    if (i < 0 || !isfinite(s->value))
        return;
    p->acc[i] += s->value; /* summed over label sets (e.g. one per model_name) */
    p->acc_seen[i] = true;
}

static void on_scrape(const brix_curl_result_t *res, void *ud)
{
    scrape_call_t *k = ud;
    brix_ctl_t *c = k->c;
    as_pod_t *p = c->as ? pod_find(c->as, k->name) : NULL;
    int pid = k->pid;
    brix_free(k);
    if (!p || p->pid != pid)
        return;
    p->inflight = false;
    if (res->status != 200)
        return;
    memset(p->acc, 0, sizeof p->acc);
    memset(p->acc_seen, 0, sizeof p->acc_seen);
    brix_prom_parser_t pp;
    brix_prom_parser_init(&pp, 0, on_sample, p);
    brix_prom_parser_feed(&pp, res->body, res->body_len);
    brix_prom_parser_finish(&pp);
    brix_prom_parser_free(&pp);
    if (p->have) {
        memcpy(p->prev_v, p->v, sizeof p->v);
        memcpy(p->prev_seen, p->seen, sizeof p->seen);
        p->prev_t_ms = p->t_ms;
        p->have_prev = true;
    }
    memcpy(p->v, p->acc, sizeof p->v);
    memcpy(p->seen, p->acc_seen, sizeof p->seen);
    p->t_ms = brix_now_ms();
    p->t_asked_ms = p->asked_ms;
    p->have = true;
}

static void scrape(brix_ctl_t *c, brix_replica_t *r, as_pod_t *p)
{
    if (p->inflight)
        return;
    scrape_call_t *k = brix_calloc(1, sizeof *k);
    if (!k)
        return;
    k->c = c;
    k->pid = r->pid;
    snprintf(k->name, sizeof k->name, "%s", r->name);
    char url[320];
    snprintf(url, sizeof url, "%s/metrics", r->url);
    uint64_t timeout = (uint64_t)c->cfg.autoscale_interval;
    if (timeout < 500)
        timeout = 500;
    if (timeout > (uint64_t)c->cfg.health_timeout)
        timeout = (uint64_t)c->cfg.health_timeout;
    p->inflight = true;
    p->asked_ms = brix_now_ms();
    /* /metrics is outside /v1: open on vLLM, so no engine key goes there */
    if (brix_curl_request(c->health_curl, "GET", url, NULL, 0, NULL, timeout, SCRAPE_MAX, on_scrape,
                          k)) {
        p->inflight = false;
        brix_free(k);
    }
}

/* The value of one metric on one pod from its last two scrapes; false when
 * it cannot be had (not exported, or a rate without a previous scrape). */
static bool pod_value(const as_pod_t *p, const mdef_t *d, double *out)
{
    if (!p->have)
        return false;
    for (int n = 0; n < 2 && d->names[n]; n++) {
        const char *name = d->names[n];
        if (d->kind == M_GAUGE) {
            int i = pod_want_idx(p, name);
            if (i >= 0 && p->seen[i]) {
                *out = p->v[i];
                return true;
            }
            continue;
        }
        if (d->kind == M_RATE) {
            int i = pod_want_idx(p, name);
            if (i < 0 || !p->seen[i])
                continue;
            if (!p->have_prev || !p->prev_seen[i] || p->t_ms <= p->prev_t_ms)
                return false;
            double dv = p->v[i] - p->prev_v[i];
            *out = dv < 0 ? 0 : dv * 1000.0 / (double)(p->t_ms - p->prev_t_ms);
            return true;
        }
        char sn[160], cn[160];
        snprintf(sn, sizeof sn, "%s_sum", name);
        snprintf(cn, sizeof cn, "%s_count", name);
        int si = pod_want_idx(p, sn), ci = pod_want_idx(p, cn);
        if (si < 0 || ci < 0 || !p->seen[si] || !p->seen[ci])
            continue;
        if (!p->have_prev || !p->prev_seen[si] || !p->prev_seen[ci])
            return false;
        double dc = p->v[ci] - p->prev_v[ci], ds = p->v[si] - p->prev_v[si];
        *out = dc > 0 && ds >= 0 ? ds / dc : 0; /* nothing finished: no latency to report */
        return true;
    }
    return false;
}

static void pod_want_def(as_pod_t *p, const mdef_t *d)
{
    for (int n = 0; n < 2 && d->names[n]; n++) {
        if (d->kind == M_HIST_MEAN) {
            char sn[160];
            snprintf(sn, sizeof sn, "%s_sum", d->names[n]);
            pod_want(p, sn);
            snprintf(sn, sizeof sn, "%s_count", d->names[n]);
            pod_want(p, sn);
        } else {
            pod_want(p, d->names[n]);
        }
    }
}

/* ---------------------------------------------------------- resource -- */

/* A `resource` source locally: the replica process's CPU in cores (a rate
 * of utime + stime between two ticks) or its resident memory in bytes, from
 * /proc (small kernel-generated files: reading them on the loop is cheap).
 * There are no Kubernetes resource requests here, so the target is
 * absolute (e.g. "0.8" cores), not a utilisation percentage. */
static bool resource_value(as_pod_t *pod, const brix_replica_t *r, const char *what, uint64_t now,
                           double *out)
{
    char path[64], buf[1024];
    if (!strcmp(what, "memory")) {
        snprintf(path, sizeof path, "/proc/%d/statm", r->pid);
        FILE *f = fopen(path, "re");
        unsigned long long size = 0, resident = 0;
        int n = f ? fscanf(f, "%llu %llu", &size, &resident) : 0;
        if (f)
            fclose(f);
        if (n != 2)
            return false;
        *out = (double)resident * (double)sysconf(_SC_PAGESIZE);
        return true;
    }
    if (pod->cpu_t_ms != now) { /* read once per tick, whatever asks */
        snprintf(path, sizeof path, "/proc/%d/stat", r->pid);
        FILE *f = fopen(path, "re");
        size_t len = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[len] = '\0';
        const char *rp = strrchr(buf, ')'); /* the command name may hold spaces */
        unsigned long long ut = 0, st = 0;
        /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
         * majflt cmajflt utime stime (proc(5)) */
        if (!rp ||
            sscanf(rp + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
            return false;
        pod->prev_cpu_s = pod->cpu_s;
        pod->prev_cpu_t_ms = pod->cpu_t_ms;
        pod->cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
        pod->cpu_t_ms = now;
    }
    if (!pod->prev_cpu_t_ms || pod->cpu_t_ms <= pod->prev_cpu_t_ms || pod->cpu_s < pod->prev_cpu_s)
        return false;
    *out = (pod->cpu_s - pod->prev_cpu_s) * 1000.0 / (double)(pod->cpu_t_ms - pod->prev_cpu_t_ms);
    return true;
}

/* ---------------------------------------------------------- external -- */

typedef struct ext_call {
    brix_ctl_t *c;
    char pa[256];
    uint64_t gen;
    uint64_t seq;
} ext_call_t;

static uint64_t ext_seq_next; /* fetch ids, unique in this process (loop thread only) */

static void on_ext_sample(const brix_prom_sample_t *s, void *ud)
{
    void **st = ud;
    const char *want = st[0];
    double *sum = st[1];
    bool *seen = st[2];
    if (!strcmp(s->name, want) && isfinite(s->value)) {
        *sum += s->value;
        *seen = true;
    }
}

static void on_external(const brix_curl_result_t *res, void *ud)
{
    ext_call_t *k = ud;
    brix_ctl_t *c = k->c;
    brix_pa_rt_t *p = brix_ctl_pa(c, k->pa);
    uint64_t gen = k->gen, seq = k->seq;
    brix_free(k);
    if (!p || p->ext_seq != seq) /* deleted, or an answer to an earlier fetch */
        return;
    p->ext_inflight = false; /* whatever the answer, the next tick may ask again */
    if ((uint64_t)p->o->meta.generation != gen)
        return; /* the spec (maybe the source) changed meanwhile: the value is not its */
    const brix_pa_metric_t *m = NULL;
    for (int i = 0; i < p->o->pa.nmetrics && !m; i++)
        if (p->o->pa.metrics[i].type == BRIX_PA_SRC_EXTERNAL)
            m = &p->o->pa.metrics[i];
    if (!m)
        return;
    if (res->status != 200) {
        p->ext_ok = false;
        snprintf(p->ext_err, sizeof p->ext_err, "%s", res->error ? res->error : "");
        if (!res->error)
            snprintf(p->ext_err, sizeof p->ext_err, "HTTP %ld", res->status);
        return;
    }
    double sum = 0;
    bool seen = false;
    void *st[3] = { m->target_metric, &sum, &seen };
    brix_prom_parser_t pp;
    brix_prom_parser_init(&pp, 0, on_ext_sample, st);
    brix_prom_parser_feed(&pp, res->body, res->body_len);
    brix_prom_parser_finish(&pp);
    brix_prom_parser_free(&pp);
    if (!seen) {
        /* a plain number is also accepted (a simple external service) */
        char *end;
        double v = strtod(res->body, &end);
        while (end && (*end == ' ' || *end == '\n' || *end == '\r'))
            end++;
        if (res->body_len && end && !*end && isfinite(v)) {
            sum = v;
            seen = true;
        }
    }
    p->ext_ok = seen;
    p->ext_value = sum;
    p->ext_at_ms = brix_now_ms();
    if (!seen)
        snprintf(p->ext_err, sizeof p->ext_err, "%s not in the answer", m->target_metric);
}

static void fetch_external(brix_ctl_t *c, brix_pa_rt_t *p, const brix_pa_metric_t *m)
{
    if (p->ext_inflight)
        return;
    ext_call_t *k = brix_calloc(1, sizeof *k);
    if (!k)
        return;
    k->c = c;
    k->gen = (uint64_t)p->o->meta.generation;
    k->seq = p->ext_seq = ++ext_seq_next;
    snprintf(k->pa, sizeof k->pa, "%s", p->o->meta.name);
    char url[1024];
    const char *path = m->path ? m->path : "";
    snprintf(url, sizeof url, "%s://%s%s%s", m->protocol ? m->protocol : "http", m->endpoint,
             path[0] == '/' ? "" : "/", path);
    p->ext_inflight = true;
    if (brix_curl_request(c->health_curl, "GET", url, NULL, 0, NULL, 5000, SCRAPE_MAX, on_external,
                          k)) {
        p->ext_inflight = false;
        brix_free(k);
    }
}

/* ------------------------------------------------------- gateway load -- */

static as_gw_t *gw_get(as_world_t *w, const char *id, uint64_t now, uint64_t stale_ms)
{
    for (size_t i = 0; i < w->ngws; i++)
        if (!strcmp(w->gws[i].id, id))
            return &w->gws[i];
    size_t slot = w->ngws;
    if (slot == MAX_GATEWAYS) { /* reuse the stalest, never a live gateway's entry */
        slot = 0;
        for (size_t i = 1; i < w->ngws; i++)
            if (w->gws[i].seen_ms < w->gws[slot].seen_ms)
                slot = i;
        if (now - w->gws[slot].seen_ms <= stale_ms)
            return NULL;
        brix_free(w->gws[slot].loads);
    } else {
        w->ngws++;
    }
    as_gw_t *g = &w->gws[slot];
    memset(g, 0, sizeof *g);
    snprintf(g->id, sizeof g->id, "%s", id);
    g->seen_ms = now;
    return g;
}

static as_load_t *load_get(as_gw_t *g, const char *model)
{
    for (size_t i = 0; i < g->nloads; i++)
        if (!strcmp(g->loads[i].model, model))
            return &g->loads[i];
    if (g->nloads >= MAX_LOAD_MODEL || strlen(model) >= sizeof g->loads[0].model)
        return NULL;
    as_load_t *v = brix_realloc(g->loads, (g->nloads + 1) * sizeof *v);
    if (!v)
        return NULL;
    g->loads = v;
    as_load_t *l = &g->loads[g->nloads++];
    memset(l, 0, sizeof *l);
    snprintf(l->model, sizeof l->model, "%s", model);
    return l;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble >= 0 ? v->valuedouble
                                                                                : 0;
}

void brix_ctl_as_activity(brix_ctl_t *c, const void *json_root)
{
    const cJSON *j = json_root;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "gateway");
    const cJSON *load = cJSON_GetObjectItemCaseSensitive(j, "load");
    if (!c->as || !cJSON_IsString(id) || !id->valuestring[0] || strlen(id->valuestring) >= 40 ||
        !cJSON_IsObject(load))
        return;
    uint64_t now = brix_now_ms();
    as_gw_t *g = gw_get(c->as, id->valuestring, now, (uint64_t)c->cfg.gateway_stale);
    if (!g) {
        BRIX_DEBUG("load report of gateway %.40s ignored: %d live gateways already report",
                   id->valuestring, MAX_GATEWAYS);
        return;
    }
    double dt = g->seen_ms && now > g->seen_ms ? (double)(now - g->seen_ms) / 1000.0 : 0;
    g->prev_ms = g->seen_ms;
    g->seen_ms = now;
    const cJSON *it;
    cJSON_ArrayForEach(it, load)
    {
        /* only models of known deployments: a report cannot grow the table */
        bool known = false;
        for (size_t i = 0; i < c->ndeploys && !known; i++)
            known = !strcmp(c->deploys[i]->d.model, it->string);
        if (!known || !cJSON_IsObject(it))
            continue;
        as_load_t *l = load_get(g, it->string);
        if (!l)
            continue;
        /* prompt tokens as offered (at admission) where the gateway says,
         * else as served: a burst must show when it arrives, not once served */
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "offeredPromptTokens");
        double req = num(it, "requests"),
               pr = cJSON_IsNumber(off) ? num(it, "offeredPromptTokens") : num(it, "promptTokens"),
               co = num(it, "completionTokens");
        if (l->rated || l->req || l->prompt || l->compl ) {
            if (dt > 0.05 && req >= l->req && pr >= l->prompt && co >= l->compl ) {
                l->rps = (req - l->req) / dt;
                l->in_tps = (pr - l->prompt) / dt;
                l->out_tps = (co - l->compl ) / dt;
                l->rated = true;
            } else if (req < l->req || pr < l->prompt || co < l->compl ) {
                l->rated = false; /* the gateway restarted: counters start over */
            }
        }
        l->req = req;
        l->prompt = pr;
        l->compl = co;
        l->inflight = num(it, "inflight");
        l->held = num(it, "held");
    }
}

/* Sums the fresh reports for model; false when no gateway reported lately. */
static bool gw_load(brix_ctl_t *c, const char *model, uint64_t now, double *rps, double *in_tps,
                    double *out_tps, double *inflight, double *held)
{
    as_world_t *w = c->as;
    bool any = false;
    *rps = *in_tps = *out_tps = *inflight = *held = 0;
    for (size_t i = 0; i < w->ngws; i++) {
        as_gw_t *g = &w->gws[i];
        if (now - g->seen_ms > (uint64_t)c->cfg.gateway_stale)
            continue;
        any = true;
        for (size_t k = 0; k < g->nloads; k++) {
            as_load_t *l = &g->loads[k];
            if (strcmp(l->model, model))
                continue;
            if (l->rated) {
                *rps += l->rps;
                *in_tps += l->in_tps;
                *out_tps += l->out_tps;
            }
            *inflight += l->inflight;
            *held += l->held;
        }
    }
    return any;
}

/* ---------------------------------------------------------- start-up -- */

static as_startup_t *startup_get(as_world_t *w, const char *deployment)
{
    for (size_t i = 0; i < w->nstartups; i++)
        if (!strcmp(w->startups[i].deployment, deployment))
            return &w->startups[i];
    as_startup_t *v = brix_realloc(w->startups, (w->nstartups + 1) * sizeof *v);
    if (!v)
        return NULL;
    w->startups = v;
    as_startup_t *s = &w->startups[w->nstartups];
    if (!(s->deployment = brix_strdup(deployment)))
        return NULL;
    s->seconds = 0;
    w->nstartups++;
    return s;
}

/* --------------------------------------------------------- lifecycle -- */

int brix_ctl_as_init(brix_ctl_t *c)
{
    as_world_t *w = brix_calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    char err[256];
    w->profiles_ok = !brix_gpu_profiles_builtin(&w->profiles, err, sizeof err);
    c->as = w;
    return 0;
}

void brix_ctl_as_free(brix_ctl_t *c)
{
    as_world_t *w = c->as;
    if (!w)
        return;
    for (size_t i = 0; i < w->npods; i++) {
        brix_free(w->pods[i]->name);
        brix_free(w->pods[i]);
    }
    brix_free(w->pods);
    for (size_t i = 0; i < w->ngws; i++)
        brix_free(w->gws[i].loads);
    for (size_t i = 0; i < w->nstartups; i++)
        brix_free(w->startups[i].deployment);
    brix_free(w->startups);
    if (w->profiles_ok)
        brix_gpu_profiles_free(&w->profiles);
    brix_free(w);
    c->as = NULL;
}

void brix_ctl_pa_free(brix_pa_rt_t *p)
{
    if (!p)
        return;
    brix_as_state_free(&p->st);
    brix_obj_free(p->o);
    brix_free(p);
}

brix_pa_rt_t *brix_ctl_pa(brix_ctl_t *c, const char *name)
{
    for (size_t i = 0; name && i < c->npas; i++)
        if (!strcmp(c->pas[i]->o->meta.name, name))
            return c->pas[i];
    return NULL;
}

brix_pa_rt_t *brix_ctl_pa_for(brix_ctl_t *c, const char *deployment)
{
    for (size_t i = 0; i < c->npas; i++) {
        brix_pa_rt_t *p = c->pas[i];
        if (!p->o->meta.deleting_ms && !strcmp(p->o->pa.target_name, deployment))
            return p;
    }
    return NULL;
}

int64_t brix_ctl_deploy_want(brix_ctl_t *c, const brix_obj_t *d)
{
    if (d->meta.deleting_ms)
        return 0;
    brix_pa_rt_t *p = brix_ctl_pa_for(c, d->meta.name);
    return p && p->scale >= 0 ? p->scale : d->d.replicas;
}

bool brix_ctl_as_replica_idle(brix_ctl_t *c, const brix_replica_t *r, uint64_t since_ms)
{
    as_pod_t *p = pod_find(c->as, r->name);
    if (!p || p->pid != r->pid || !p->have || p->t_asked_ms < since_ms)
        return false;
    int ri = pod_want_idx(p, fixed_names[S_RUNNING]), wi = pod_want_idx(p, fixed_names[S_WAITING]);
    if (ri < 0 || wi < 0 || !p->seen[ri])
        return false;
    return p->v[ri] + (p->seen[wi] ? p->v[wi] : 0) < 0.5;
}

/* ------------------------------------------------------------ status -- */

static void pa_cond(brix_ctl_t *c, brix_pa_rt_t *p, int i, const char *type, bool status,
                    const char *reason, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static void pa_cond(brix_ctl_t *c, brix_pa_rt_t *p, int i, const char *type, bool status,
                    const char *reason, const char *fmt, ...)
{
    brix_cond_t *k = &p->conds[i];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k->message, sizeof k->message, fmt, ap);
    va_end(ap);
    /* only a flip is news for watchers; numbers in the message change every tick */
    if (!k->type || k->status != status || strcmp(k->reason, reason)) {
        k->since_wall_ms = brix_wall_ms();
        brix_ctl_changed(c);
    }
    k->type = type;
    k->status = status;
    snprintf(k->reason, sizeof k->reason, "%s", reason);
}

static void pa_record(brix_pa_rt_t *p, int32_t from, int32_t to, const char *reason,
                      const char *msg)
{
    if (p->hist_n == BRIX_PA_HISTORY) {
        memmove(p->hist, p->hist + 1, (BRIX_PA_HISTORY - 1) * sizeof *p->hist);
        p->hist_n--;
    }
    brix_pa_decision_rec_t *h = &p->hist[p->hist_n++];
    h->wall_ms = brix_wall_ms();
    h->from = from;
    h->to = to;
    snprintf(h->reason, sizeof h->reason, "%s", reason);
    snprintf(h->message, sizeof h->message, "%s", msg);
    p->last_scale_wall = h->wall_ms;
    if (to > from)
        p->scale_events_up++;
    else
        p->scale_events_down++;
}

int brix_ctl_as_wake(brix_ctl_t *c, const char *deployment, int64_t *replicas)
{
    brix_obj_t *d = brix_ctl_deploy(c, deployment);
    if (!d || d->meta.deleting_ms)
        return -ENOENT;
    brix_pa_rt_t *p = brix_ctl_pa_for(c, deployment);
    *replicas = brix_ctl_deploy_want(c, d);
    if (*replicas > 0)
        return 0;
    if (!p)
        return -EPERM;
    int32_t max = p->eff_max > 0 ? p->eff_max : (int32_t)p->o->pa.max_replicas;
    if (max < 1)
        return -EPERM; /* a schedule holds it at zero */
    char msg[120];
    snprintf(msg, sizeof msg, "a gateway holds requests for %s, which has no replica", d->d.model);
    pa_record(p, 0, 1, "ScaleFromZero", msg);
    BRIX_INFO("autoscaler %s: %s 0 -> 1 (ScaleFromZero: %s)", p->o->meta.name, deployment, msg);
    p->scale = 1;
    p->woke_ms = brix_now_ms();
    *replicas = 1;
    brix_ctl_changed(c);
    brix_ctl_kick(c);
    return 0;
}

/* ------------------------------------------------------------- decide -- */

/* The engines' --time-scale (1 for a real engine): a simulated engine's
 * clock runs that much faster than the wall. Its latencies (histograms) are
 * in its own seconds, as are the SLO targets (the user states model time);
 * rates, windows and start-up times here are wall time. SLO mode works in
 * wall time throughout, so a time-compressed fleet (a benchmark) is sized as
 * the real one would be. */
/* The value of an engine flag in the deployment's args ("--flag VALUE"), or
 * NULL. */
static const char *engine_arg(const brix_obj_t *d, const char *flag)
{
    for (size_t i = 0; i + 1 < d->d.args.n; i++)
        if (!strcmp(d->d.args.v[i], flag))
            return d->d.args.v[i + 1];
    return NULL;
}

static double engine_time_scale(const brix_obj_t *d)
{
    const char *v = engine_arg(d, "--time-scale");
    double ts = v ? atof(v) : 1.0;
    return ts > 0 && isfinite(ts) ? ts : 1.0;
}

/* Per-replica capacity prior at the SLO from the GPU profile, in wall
 * tokens/s: prefill throughput, and decode throughput at the batch whose
 * step time still meets the ITL target (the whole batch if none). */
static void capacity_prior(brix_ctl_t *c, const brix_obj_t *d, const brix_as_params_t *pp,
                           double *in_tps, double *out_tps)
{
    *in_tps = *out_tps = 0;
    as_world_t *w = c->as;
    if (!w->profiles_ok)
        return;
    const brix_gpu_profile_t *g = brix_gpu_profiles_find(&w->profiles, d->d.gpu);
    if (!g)
        return;
    double ts = engine_time_scale(d);
    const char *ms = engine_arg(d, "--max-num-seqs");
    int64_t seqs = ms ? atoll(ms) : g->max_num_seqs;
    if (seqs < 1)
        seqs = 1;
    /* prefill: one batch of max_num_batched_tokens per step */
    double pf = brix_gpu_prefill_seconds(g, (uint64_t)g->max_num_batched_tokens);
    *in_tps = pf > 0 ? (double)g->max_num_batched_tokens / pf / ts : 0;
    /* decode at ~1000 tokens of context per sequence */
    int64_t n = seqs;
    if (pp->slo_itl_s > 0)
        while (n > 1 &&
               brix_gpu_decode_seconds(g, (uint64_t)n * 1000u, (uint64_t)n) > pp->slo_itl_s)
            n /= 2;
    double st = brix_gpu_decode_seconds(g, (uint64_t)n * 1000u, (uint64_t)n);
    *out_tps = st > 0 ? (double)n / st / ts : 0;
}

static int32_t clamp32(int64_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : v > hi ? hi : (int32_t)v;
}

static void pa_tick(brix_ctl_t *c, brix_pa_rt_t *p, uint64_t now)
{
    const brix_pa_spec_t *s = &p->o->pa;
    brix_obj_t *d = brix_ctl_deploy(c, s->target_name);
    if (!d || d->meta.deleting_ms) {
        pa_cond(c, p, 0, "AbleToScale", false, "FailedGetScale",
                "the target ModelDeployment %s does not exist", s->target_name);
        p->has_decision = false;
        p->scale = -1; /* a deployment created again later starts from its own spec */
        return;
    }
    if (p->st_gen != p->o->meta.generation) { /* a new spec: the algorithm starts over */
        brix_as_state_free(&p->st);
        brix_as_state_init(&p->st);
        p->st_gen = p->o->meta.generation;
    }
    brix_as_params_t pp = s->params;
    int32_t base_min = (int32_t)s->min_replicas, base_max = (int32_t)s->max_replicas;
    const char *active = NULL;
    int32_t mn = base_min, mx = base_max;
    if (s->nschedules &&
        brix_as_schedule_bounds(s->schedules, s->nschedules, (int64_t)brix_wall_ms(), base_min,
                                base_max, &mn, &mx, &active))
        mn = base_min, mx = base_max, active = NULL;
    /* minReplicas 0 means zero only with scale-to-zero (as AIBrix's flag) */
    if (mn < 1 && !pp.scale_to_zero)
        mn = 1;
    if (mx < mn)
        mx = mn;
    pp.min_replicas = mn;
    pp.max_replicas = mx;
    p->eff_min = mn;
    p->eff_max = mx;
    snprintf(p->active_schedule, sizeof p->active_schedule, "%s", active ? active : "");
    if (p->scale < 0) /* taking over: start from what runs */
        p->scale = clamp32(d->d.replicas, mn, mx);

    /* the target's replicas */
    int32_t ready = 0, starting = 0, failing = 0;
    double inflight = 0;
    as_startup_t *su = startup_get(c->as, d->meta.name);
    brix_as_sample_t x;
    memset(&x, 0, sizeof x);
    x.t_ms = now;
    x.in_tps = x.out_tps = x.rps = x.held = x.ttft_s = x.itl_s = -1;
    mdef_t defs[BRIX_AS_MAX_METRICS];
    char bufs[BRIX_AS_MAX_METRICS][2][128];
    int32_t got[BRIX_AS_MAX_METRICS] = { 0 };
    bool pod_metric[BRIX_AS_MAX_METRICS] = { false };
    for (int i = 0; i < s->nmetrics; i++) {
        pod_metric[i] =
            s->metrics[i].type == BRIX_PA_SRC_POD || s->metrics[i].type == BRIX_PA_SRC_RESOURCE;
        if (s->metrics[i].type == BRIX_PA_SRC_POD)
            metric_def(s->metrics[i].target_metric, &defs[i], bufs[i]);
        x.ok[i] = true;
    }
    double ttft_w = 0, ttft_n = 0, itl_w = 0, itl_n = 0;
    int32_t reporting = 0, missing = 0;
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        if (strcmp(r->deployment, d->meta.name))
            continue;
        if (r->phase == BRIX_RP_FAILED && r->restarts > 0)
            failing++;
        if (r->ready_after_ms && !r->startup_seen && su) { /* a start this controller saw */
            double sec = (double)r->ready_after_ms / 1000.0;
            su->seconds =
                su->seconds > 0 ? su->seconds * (1 - STARTUP_EWMA) + sec * STARTUP_EWMA : sec;
            r->startup_seen = true;
        }
        if (r->phase == BRIX_RP_STARTING || r->phase == BRIX_RP_PENDING)
            starting++;
        if (r->phase != BRIX_RP_RUNNING || !r->ready)
            continue;
        as_pod_t *pod = pod_get(c->as, r);
        if (!pod)
            continue;
        bool fresh = pod->have && now - pod->t_ms <= 3 * (uint64_t)c->cfg.autoscale_interval + 1000;
        if (fresh) {
            int ri = pod_want_idx(pod, fixed_names[S_RUNNING]),
                wi = pod_want_idx(pod, fixed_names[S_WAITING]);
            inflight += (ri >= 0 && pod->seen[ri] ? pod->v[ri] : 0) +
                        (wi >= 0 && pod->seen[wi] ? pod->v[wi] : 0);
            double v;
            static const mdef_t ttft = { { "vllm:time_to_first_token_seconds", NULL },
                                         M_HIST_MEAN },
                                itl = { { "vllm:inter_token_latency_seconds",
                                          "vllm:time_per_output_token_seconds" },
                                        M_HIST_MEAN };
            if (pod_value(pod, &ttft, &v) && v > 0) {
                int ci = pod_want_idx(pod, fixed_names[S_TTFT_COUNT]);
                double n = ci >= 0 && pod->have_prev ? pod->v[ci] - pod->prev_v[ci] : 0;
                ttft_w += v * n;
                ttft_n += n;
            }
            if (pod_value(pod, &itl, &v) && v > 0) {
                itl_w += v;
                itl_n += 1;
            }
        }
        if (r->draining)
            continue; /* leaving: neither capacity nor load of the target any more */
        ready++;
        bool counted = false;
        for (int m = 0; m < s->nmetrics; m++) {
            if (!pod_metric[m])
                continue;
            double v;
            bool have = s->metrics[m].type == BRIX_PA_SRC_RESOURCE
                            ? resource_value(pod, r, s->metrics[m].target_metric, now, &v)
                            : fresh && pod_value(pod, &defs[m], &v);
            if (have) {
                x.value[m] += v;
                got[m]++;
                counted = true;
            } else {
                missing++;
            }
        }
        reporting += counted || !s->nmetrics;
    }
    /* A pod metric is usable when at least one ready replica reported it;
     * the total is then extrapolated to every ready replica (one failed
     * scrape must not read as less load). None reporting is an outage: the
     * scale freezes. With no replica at all (scaled to zero) the load the
     * replicas would measure is zero, known, not missing. */
    for (int m = 0; m < s->nmetrics; m++) {
        if (!pod_metric[m])
            continue;
        if (got[m] > 0 && got[m] < ready)
            x.value[m] *= (double)ready / (double)got[m];
        else if (!got[m] && (ready > 0 || p->scale > 0))
            x.ok[m] = false;
    }
    /* totals now stand for every ready replica */
    x.reporting = reporting > 0 ? ready : 0;
    x.inflight = inflight;
    if (ttft_n > 0)
        x.ttft_s = ttft_w / ttft_n;
    if (itl_n > 0)
        x.itl_s = itl_w / itl_n;
    double rps, in_tps, out_tps, gw_inflight, held;
    bool gw = gw_load(c, d->d.model, now, &rps, &in_tps, &out_tps, &gw_inflight, &held);
    if (gw) {
        x.rps = rps;
        x.in_tps = in_tps;
        x.out_tps = out_tps;
        x.held = held;
    }
    /* A wake from zero is a request held now, even while the load reports
     * the controller has are older than it: without this the next tick
     * would read the last idle report and scale the new replica away. */
    if (p->woke_ms && now - p->woke_ms < (uint64_t)c->cfg.gateway_stale)
        x.held = x.held > 1 ? x.held : 1;
    for (int m = 0; m < s->nmetrics; m++) {
        const brix_pa_metric_t *pm = &s->metrics[m];
        if (pm->type == BRIX_PA_SRC_EXTERNAL) {
            x.ok[m] =
                p->ext_ok && now - p->ext_at_ms <= 3 * (uint64_t)c->cfg.autoscale_interval + 5000;
            x.value[m] = p->ext_value;
            fetch_external(c, p, pm);
        } else if (pm->type == BRIX_PA_SRC_GATEWAY) {
            const char *n = pm->target_metric;
            x.ok[m] = gw;
            x.value[m] = !strcmp(n, "requests_per_second") || !strcmp(n, "rps") || !strcmp(n, "qps")
                             ? rps
                         : !strcmp(n, "prompt_tokens_per_second") ? in_tps
                         : !strcmp(n, "completion_tokens_per_second") ||
                                 !strcmp(n, "generation_tokens_per_second")
                             ? out_tps
                         : !strcmp(n, "tokens_per_second") ? in_tps + out_tps
                         : !strcmp(n, "inflight") || !strcmp(n, "requests_inflight") ? gw_inflight
                         : !strcmp(n, "held") || !strcmp(n, "requests_held")         ? held
                                                                                     : NAN;
            if (isnan(x.value[m]))
                x.ok[m] = false;
        } else if (pm->type == BRIX_PA_SRC_CUSTOM) {
            x.ok[m] = false; /* the Kubernetes custom metrics API: refused at apply locally */
        }
    }
    if (pp.strategy == BRIX_AS_SLO) { /* model time → wall time (engine_time_scale) */
        double ts = engine_time_scale(d);
        pp.slo_ttft_s *= ts;
        pp.slo_itl_s *= ts;
        if (x.ttft_s > 0)
            x.ttft_s *= ts;
        if (x.itl_s > 0)
            x.itl_s *= ts;
    }
    brix_as_observe(&p->st, &pp, &x);

    brix_as_input_t in;
    memset(&in, 0, sizeof in);
    in.now_ms = now;
    in.current = p->scale;
    in.ready = ready;
    in.starting = starting;
    in.startup_s = su ? su->seconds : 0;
    const char *ms = engine_arg(d, "--max-num-seqs");
    int64_t slots = ms ? atoll(ms) : 256; /* vLLM's default */
    if (slots < 1)
        slots = 1;
    double work = inflight + (gw ? held : 0);
    in.inflight_floor = (int32_t)ceil(work / (double)slots);
    if (work > 0 && in.inflight_floor < 1)
        in.inflight_floor = 1;
    capacity_prior(c, d, &s->params, &in.prior_cap_in_tps, &in.prior_cap_out_tps);
    brix_as_decision_t dec;
    memset(&dec, 0, sizeof dec);
    brix_as_decide(&pp, &p->st, &in, &dec);
    p->last = dec;
    p->has_decision = true;
    p->actual = ready;
    for (int m = 0; m < s->nmetrics; m++) {
        p->metric_ok[m] = x.ok[m];
        p->metric_value[m] = dec.metric[m];
    }
    /* conditions, as a Kubernetes HPA reports them */
    if (failing)
        pa_cond(c, p, 0, "AbleToScale", false, "BackoffReplicas",
                "%d replica(s) of %s failed to start and are backed off", failing, d->meta.name);
    else
        pa_cond(c, p, 0, "AbleToScale", true, "SucceededGetScale",
                "the autoscaler can set the scale of %s (now %d)", d->meta.name, p->scale);
    if (dec.frozen)
        pa_cond(c, p, 1, "ScalingActive", false, "FailedGetMetrics",
                "metrics unavailable (%d replica metric(s) missing%s%s); the scale is held at %d",
                missing, p->ext_err[0] ? "; external: " : "", p->ext_err, p->scale);
    else
        pa_cond(c, p, 1, "ScalingActive", true, "ValidMetricFound", "%s", dec.message);
    if (dec.limited)
        pa_cond(c, p, 2, "ScalingLimited", true, dec.reason, "%s", dec.message);
    else
        pa_cond(c, p, 2, "ScalingLimited", false, "DesiredWithinRange",
                "the desired count is within the acceptable range");
    if (!dec.frozen)
        p->frozen_since = 0;
    else if (!p->frozen_since)
        p->frozen_since = now;
    /* said once it lasts (the first ticks after a start have no scrape yet),
     * then every 30 s */
    if (dec.frozen && now - p->frozen_since >= 5 * (uint64_t)c->cfg.autoscale_interval &&
        now - p->warned_ms > 30000) {
        p->warned_ms = now;
        BRIX_WARN("autoscaler %s: metrics unavailable, holding %s at %d replica(s)",
                  p->o->meta.name, d->meta.name, p->scale);
    }
    if (dec.desired != p->scale && dec.desired >= 0) {
        BRIX_INFO("autoscaler %s: %s %d -> %d (%s: %s)", p->o->meta.name, d->meta.name, p->scale,
                  dec.desired, dec.reason ? dec.reason : "?", dec.message);
        pa_record(p, p->scale, dec.desired, dec.reason ? dec.reason : "", dec.message);
        p->scale = dec.desired;
        brix_ctl_changed(c);
        brix_ctl_kick(c);
    } else {
        BRIX_DEBUG("autoscaler %s: %s stays at %d (%s: %s)", p->o->meta.name, d->meta.name,
                   p->scale, dec.reason ? dec.reason : "?", dec.message);
    }
}

void brix_ctl_as_tick(brix_ctl_t *c)
{
    if (!c->as || c->stopping)
        return;
    uint64_t now = brix_now_ms();
    as_world_t *w = c->as;
    for (size_t i = 0; i < w->npods; i++)
        w->pods[i]->mark = false;
    /* decide on what the last tick's scrapes brought */
    for (size_t i = 0; i < c->npas; i++)
        if (!c->pas[i]->o->meta.deleting_ms)
            pa_tick(c, c->pas[i], now);
    /* then scrape for the next tick: managed deployments' ready replicas and
     * every draining replica (the drain waits for them to go idle) */
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        if (r->phase != BRIX_RP_RUNNING || r->pid <= 0 || (!r->ready && !r->draining))
            continue;
        brix_pa_rt_t *p = brix_ctl_pa_for(c, r->deployment);
        if (!p && !r->draining)
            continue;
        as_pod_t *pod = pod_get(w, r);
        if (!pod)
            continue;
        pod->mark = true;
        for (int k = 0; k < S_FIXED; k++)
            pod_want(pod, fixed_names[k]);
        for (int m = 0; p && m < p->o->pa.nmetrics; m++) {
            if (p->o->pa.metrics[m].type != BRIX_PA_SRC_POD)
                continue;
            mdef_t def;
            char buf[2][128];
            metric_def(p->o->pa.metrics[m].target_metric, &def, buf);
            pod_want_def(pod, &def);
        }
        scrape(c, r, pod);
    }
    /* forget replicas that are gone (an answer in flight finds no record) */
    for (size_t i = w->npods; i-- > 0;) {
        if (w->pods[i]->mark || brix_ctl_replica(c, w->pods[i]->name))
            continue;
        brix_free(w->pods[i]->name);
        brix_free(w->pods[i]);
        w->pods[i] = w->pods[--w->npods];
    }
}

/* ------------------------------------------------------------ render -- */

static int jkv(brix_buf_t *b, const char *k, const char *v)
{
    return brix_buf_append_json_str(b, k, strlen(k)) | brix_buf_append_char(b, ':') |
           brix_buf_append_json_str(b, v ? v : "", v ? strlen(v) : 0);
}

static int jnum(brix_buf_t *b, double v)
{
    char t[32];
    if (!isfinite(v))
        return brix_buf_append_str(b, "null");
    brix_metrics_format_double(t, v);
    return brix_buf_append_str(b, t);
}

int brix_ctl_render_pa(brix_ctl_t *c, brix_buf_t *b, const brix_pa_rt_t *p)
{
    (void)c;
    char ts[32];
    int rc = brix_obj_json_open(b, p->o);
    rc |= brix_buf_printf(b, ",\"status\":{\"desiredScale\":%d,\"actualScale\":%d",
                          p->scale < 0 ? 0 : p->scale, p->actual);
    if (p->last_scale_wall) {
        brix_time_iso8601(ts, p->last_scale_wall);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "lastScaleTime", ts);
    }
    rc |= brix_buf_append_str(b, ",\"conditions\":") |
          brix_ctl_render_conds(b, p->conds, BRIX_PA_CONDS);
    rc |= brix_buf_append_str(b, ",\"scalingHistory\":[");
    for (size_t i = 0; i < p->hist_n; i++) {
        const brix_pa_decision_rec_t *h = &p->hist[i];
        brix_time_iso8601(ts, h->wall_ms);
        rc |= brix_buf_append_str(b, i ? ",{" : "{") | jkv(b, "timestamp", ts);
        rc |= brix_buf_printf(b, ",\"previousScale\":%d,\"newScale\":%d,", h->from, h->to);
        rc |= jkv(b, "reason", h->reason) | brix_buf_append_char(b, ',');
        rc |= jkv(b, "message", h->message) | brix_buf_append_str(b, ",\"success\":true}");
    }
    rc |= brix_buf_printf(b,
                          "],\"scheduledBounds\":{\"effectiveMinReplicas\":%d,"
                          "\"effectiveMaxReplicas\":%d",
                          p->eff_min, p->eff_max);
    if (p->active_schedule[0])
        rc |= brix_buf_append_char(b, ',') | jkv(b, "activeSchedule", p->active_schedule);
    rc |= brix_buf_append_str(b, "},\"metrics\":[");
    for (int i = 0; i < p->o->pa.nmetrics; i++) {
        const brix_pa_metric_t *m = &p->o->pa.metrics[i];
        rc |= brix_buf_append_str(b, i ? ",{" : "{") | jkv(b, "name", m->target_metric);
        rc |= brix_buf_append_str(b, ",\"value\":");
        rc |= p->has_decision && p->metric_ok[i] ? jnum(b, p->metric_value[i])
                                                 : brix_buf_append_str(b, "null");
        rc |= brix_buf_append_str(b, ",\"target\":") | jnum(b, m->target);
        rc |= brix_buf_append_char(b, '}');
    }
    rc |= brix_buf_printf(b, "],\"panic\":%s", p->has_decision && p->last.panic ? "true" : "false");
    if (p->has_decision) {
        rc |= brix_buf_printf(b, ",\"recommendedScale\":%d,", p->last.recommended);
        rc |= jkv(b, "reason", p->last.reason ? p->last.reason : "");
        rc |= brix_buf_append_char(b, ',') | jkv(b, "message", p->last.message);
        if (p->o->pa.strategy == BRIX_AS_SLO) {
            rc |= brix_buf_append_str(b, ",\"slo\":{\"forecastReplicas\":") |
                  jnum(b, p->last.forecast);
            rc |= brix_buf_append_str(b, ",\"capacityPromptTokensPerSecond\":") |
                  jnum(b, p->last.capacity_in_tps);
            rc |= brix_buf_append_str(b, ",\"capacityCompletionTokensPerSecond\":") |
                  jnum(b, p->last.capacity_out_tps);
            as_startup_t *su = NULL;
            for (size_t i = 0; c->as && i < c->as->nstartups && !su; i++)
                if (!strcmp(c->as->startups[i].deployment, p->o->pa.target_name))
                    su = &c->as->startups[i];
            rc |= brix_buf_append_str(b, ",\"replicaStartupSeconds\":") |
                  jnum(b, su ? su->seconds : 0) | brix_buf_append_char(b, '}');
        }
    }
    return rc | brix_buf_append_str(b, "}}");
}

/* ----------------------------------------------------------- metrics -- */

static void collect(brix_metrics_t *reg, void *ud)
{
    (void)reg;
    brix_ctl_t *c = ud;
    as_world_t *w = c->as;
    if (!w)
        return;
    brix_metric_family_t *fs[] = {
        w->f_desired, w->f_actual,   w->f_value, w->f_target, w->f_panic,
        w->f_unavail, w->f_forecast, w->f_min,   w->f_max,    w->f_events
    };
    for (size_t i = 0; i < sizeof fs / sizeof *fs; i++)
        if (fs[i])
            brix_metric_family_clear(fs[i]);
    for (size_t i = 0; i < c->npas; i++) {
        const brix_pa_rt_t *p = c->pas[i];
        const char *n = p->o->meta.name;
        const char *l1[] = { n, NULL };
        brix_metric_set(brix_metric_child(w->f_desired, l1), p->scale < 0 ? 0 : p->scale);
        brix_metric_set(brix_metric_child(w->f_actual, l1), p->actual);
        brix_metric_set(brix_metric_child(w->f_min, l1), p->eff_min);
        brix_metric_set(brix_metric_child(w->f_max, l1), p->eff_max);
        brix_metric_set(brix_metric_child(w->f_panic, l1), p->has_decision && p->last.panic);
        brix_metric_set(brix_metric_child(w->f_unavail, l1), p->has_decision && p->last.frozen);
        if (p->o->pa.strategy == BRIX_AS_SLO && p->has_decision)
            brix_metric_set(brix_metric_child(w->f_forecast, l1), p->last.forecast);
        const char *up[] = { n, "up" }, *down[] = { n, "down" };
        brix_metric_set(brix_metric_child(w->f_events, up), (double)p->scale_events_up);
        brix_metric_set(brix_metric_child(w->f_events, down), (double)p->scale_events_down);
        for (int m = 0; m < p->o->pa.nmetrics; m++) {
            const char *l2[] = { n, p->o->pa.metrics[m].target_metric };
            brix_metric_set(brix_metric_child(w->f_target, l2), p->o->pa.metrics[m].target);
            if (p->has_decision && p->metric_ok[m] && isfinite(p->metric_value[m]))
                brix_metric_set(brix_metric_child(w->f_value, l2), p->metric_value[m]);
        }
    }
}

void brix_ctl_as_metrics_init(brix_ctl_t *c)
{
    as_world_t *w = c->as;
    brix_metrics_t *r = c->m.reg;
    if (!w || !r)
        return;
    static const char *const l1[] = { "autoscaler", NULL };
    static const char *const l2[] = { "autoscaler", "metric", NULL };
    static const char *const le[] = { "autoscaler", "direction", NULL };
    const brix_metric_type_t G = BRIX_METRIC_GAUGE, C = BRIX_METRIC_COUNTER;
    w->f_desired =
        brix_metrics_family(r, G, "brix_autoscaler_desired_replicas",
                            "replicas the PodAutoscaler asks of its target", l1, NULL, 0);
    w->f_actual = brix_metrics_family(r, G, "brix_autoscaler_actual_replicas",
                                      "ready replicas of the target", l1, NULL, 0);
    w->f_min = brix_metrics_family(r, G, "brix_autoscaler_min_replicas",
                                   "effective minimum (schedules applied)", l1, NULL, 0);
    w->f_max = brix_metrics_family(r, G, "brix_autoscaler_max_replicas",
                                   "effective maximum (schedules applied)", l1, NULL, 0);
    w->f_value =
        brix_metrics_family(r, G, "brix_autoscaler_metric_value",
                            "per-replica value of the metric the last decision used", l2, NULL, 0);
    w->f_target = brix_metrics_family(r, G, "brix_autoscaler_metric_target",
                                      "per-replica target of the metric", l2, NULL, 0);
    w->f_panic = brix_metrics_family(r, G, "brix_autoscaler_panic_mode",
                                     "1 while KPA is in panic mode", l1, NULL, 0);
    w->f_unavail =
        brix_metrics_family(r, G, "brix_autoscaler_metrics_unavailable",
                            "1 while the scale is frozen for want of metrics", l1, NULL, 0);
    w->f_forecast = brix_metrics_family(r, G, "brix_autoscaler_forecast_replicas",
                                        "SLO mode: replicas the forecast load needs", l1, NULL, 0);
    w->f_events = brix_metrics_family(r, C, "brix_autoscaler_scale_events_total",
                                      "scale changes made", le, NULL, 0);
    brix_metrics_on_collect(r, collect, c);
}
