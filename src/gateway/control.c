/*
 * The gateway's control thread (the main loop): discovery, active health
 * checks, model lists and metric scraping, all through libcurl on libuv, and
 * the snapshots the workers route with.
 *
 * Each pod has a small state record here. Timers fan out requests (never more
 * than one of each kind per pod in flight); results update the record and
 * mark the fleet dirty; a short coalescing timer then builds one immutable
 * snapshot and hands it to every worker. A pod is routable when its health
 * checks pass (healthy_threshold successes after a failure; it starts
 * unhealthy) and its model list is known. Scraped metrics older than
 * metrics_stale_after are flagged stale so strategies stop trusting them.
 *
 * Discovery is static (--worker-urls, diffed on reload by
 * brix_gw_control_reconfigure) or from `brix controller` (--controller,
 * watch.c): every controller snapshot is diffed the same way against the
 * pods it manages — ready replicas join at once, the others leave at once —
 * and a replica whose confirmed adapters changed has its /v1/models read
 * again right away. Both kinds of pod get the same health checks, model
 * lists, scraping, breaker and KV events. The controller's adapter registry
 * rides along in every snapshot, and /v1/models lists registered adapters
 * that are loaded nowhere yet.
 */
#include <openssl/crypto.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/time.h"
#include "gateway/gateway.h"
#include "gateway/kv_watch.h"
#include "gateway/watch.h"

#include <zmq.h>

#include <cjson/cJSON.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define PUBLISH_DELAY_MS 2

typedef struct cmodel {
    char *id;
    char *parent;
    char *json; /* the /v1/models entry as served */
} cmodel_t;

typedef struct cpod {
    brix_pod_t *pod;
    brix_kvw_t *kvw; /* KV-event subscription, when configured */
    brix_gw_control_t *ctl;
    bool managed;       /* from the controller's snapshots (else --worker-urls) */
    char *ctl_adapters; /* managed: the adapters the controller last said it serves */
    bool removed;       /* left the fleet; freed when no request is in flight */
    int inflight;       /* curl transfers referring to this record */
    /* health */
    bool healthy;
    int ok_streak, fail_streak;
    bool health_busy;
    /* models */
    bool models_known;
    bool models_busy;
    bool models_again; /* read them again once the read in flight is answered */
    uint64_t models_at_ns;
    cmodel_t *models;
    size_t nmodels;
    /* scraping */
    bool scrape_busy;
    bool scraped_ok;
    bool bad_values_warned; /* the last scrape had refused values (warned once) */
    uint64_t scraped_at_ns;
    int inflight_at_scrape; /* pod->inflight when the last scrape was answered */
    brix_engine_stats_t stats;
    brix_scrape_state_t scrape_state;
    uint64_t scrape_errors;
} cpod_t;

struct brix_gw_control {
    brix_gw_t *gw;
    brix_curl_t *curl;
    cpod_t **pods;
    size_t npods;
    uv_timer_t health_timer, scrape_timer, models_timer, publish_timer;
    bool publish_pending;
    uint64_t version;
    uint32_t *free_ids;
    size_t nfree_ids;
    /* removed pods whose id is reused only once nothing refers to them any
     * more (a worker on an old snapshot may still route there and record
     * prefix blocks under the id) */
    brix_pod_t **retired;
    size_t nretired;
    uint32_t next_id;
    bool stopping;
    brix_gw_watch_t *watch;    /* --controller */
    brix_registry_t *registry; /* its last snapshot's (kept through outages) */
};

/* ------------------------------------------------------------- views -- */

void brix_gw_rt_ref(brix_gw_rt_t *rt)
{
    atomic_fetch_add(&rt->refs, 1);
}

void brix_gw_rt_unref(brix_gw_rt_t *rt)
{
    if (rt && atomic_fetch_sub(&rt->refs, 1) == 1) {
        for (size_t i = 0; i < rt->nmodel_sel; i++)
            brix_free(rt->model_sel[i].model);
        brix_free(rt->model_sel);
        brix_free(rt->default_strategy);
        if (rt->engine_api_key) {
            OPENSSL_cleanse(rt->engine_api_key, strlen(rt->engine_api_key));
            brix_free(rt->engine_api_key);
        }
        brix_free(rt);
    }
}

void brix_gw_view_ref(brix_gw_view_t *v)
{
    atomic_fetch_add(&v->refs, 1);
}

void brix_gw_view_unref(brix_gw_view_t *v)
{
    if (v && atomic_fetch_sub(&v->refs, 1) == 1) {
        brix_snap_unref(v->fleet);
        brix_gw_rt_unref(v->rt);
        brix_free(v);
    }
}

void brix_gw_publish(brix_gw_t *gw, brix_gw_view_t *v)
{
    if (gw->fair)
        brix_gw_fairs_publish(gw->fair, v->fleet);
    for (int i = 0; i < gw->nworkers; i++) {
        brix_gw_worker_t *w = gw->w[i];
        if (!w)
            continue;
        brix_gw_view_ref(v);
        uv_mutex_lock(&w->mu);
        brix_gw_view_t *old = w->pending;
        w->pending = v;
        uv_mutex_unlock(&w->mu);
        if (old)
            brix_gw_view_unref(old);
        uv_async_send(&w->wake);
    }
}

/* --------------------------------------------------------- snapshots -- */

static int cmp_model(const void *a, const void *b)
{
    return strcmp(((const brix_model_entry_t *)a)->name, ((const brix_model_entry_t *)b)->name);
}

/* key: sorted names joined by '\n' (the watch's adapters_key) */
static bool key_has(const char *key, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = key; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !memcmp(p, name, n))
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

static brix_fleet_snap_t *build_snapshot(brix_gw_control_t *ctl)
{
    brix_gw_t *gw = ctl->gw;
    uint64_t now = brix_now_ns();
    brix_fleet_snap_t *s = brix_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->version = ++ctl->version;
    if (ctl->registry) {
        brix_registry_ref(ctl->registry);
        s->registry = ctl->registry;
    }
    size_t live = 0;
    for (size_t i = 0; i < ctl->npods; i++)
        live += !ctl->pods[i]->removed;
    s->pods = brix_calloc(live ? live : 1, sizeof *s->pods);
    if (!s->pods)
        goto fail;
    size_t nm_total = 0;
    for (size_t i = 0; i < ctl->npods; i++) {
        cpod_t *cp = ctl->pods[i];
        if (cp->removed)
            continue;
        brix_pod_view_t *v = &s->pods[s->npods++];
        v->pod = cp->pod;
        brix_pod_ref(cp->pod);
        v->healthy = cp->healthy && cp->models_known;
        v->metrics_fresh =
            cp->scraped_ok && now - cp->scraped_at_ns <= gw->cfg.metrics_stale_after * 1000000ull;
        v->stats = cp->stats;
        v->inflight_at_scrape = cp->inflight_at_scrape;
        v->kv_events = cp->kvw && brix_kvw_live(cp->kvw);
        if (cp->kvw) {
            const brix_kvw_stats_t *ks = brix_kvw_stats(cp->kvw);
            const char *pn = cp->pod->name;
            brix_metric_set(brix_gw_metric1(gw->m.kv_batches, pn), (double)ks->batches);
            brix_metric_set(brix_gw_metric1(gw->m.kv_gaps, pn), (double)ks->gaps);
            brix_metric_set(brix_gw_metric1(gw->m.kv_resets, pn), (double)ks->resets);
            brix_metric_set(brix_gw_metric1(gw->m.kv_replays, pn), (double)ks->replays);
            brix_metric_set(brix_gw_metric1(gw->m.kv_unknown, pn), (double)ks->unknown_parents);
            brix_metric_set(brix_gw_metric1(gw->m.kv_live, pn), v->kv_events);
        }
        if (v->kv_events)
            brix_podset_add(&s->precise, cp->pod->id);
        v->scraped_at_s = (double)cp->scraped_at_ns / 1e9;
        s->nhealthy += v->healthy;
        if (cp->models_known)
            nm_total += cp->nmodels;
        brix_metric_set(brix_gw_metric1(gw->m.pod_healthy, cp->pod->name), v->healthy);
        brix_metric_set(brix_gw_metric1(gw->m.pod_inflight, cp->pod->name),
                        atomic_load(&cp->pod->inflight));
        if (cp->scraped_ok) {
            brix_metric_set(brix_gw_metric1(gw->m.pod_running, cp->pod->name), cp->stats.running);
            brix_metric_set(brix_gw_metric1(gw->m.pod_waiting, cp->pod->name), cp->stats.waiting);
            brix_metric_set(brix_gw_metric1(gw->m.pod_kv, cp->pod->name), cp->stats.kv_usage);
        }
    }
    /* models: union over pods with a known list */
    s->models = brix_calloc(nm_total ? nm_total : 1, sizeof *s->models);
    if (!s->models)
        goto fail;
    bool *listed = brix_calloc(nm_total ? nm_total : 1, sizeof *listed);
    if (!listed)
        goto fail;
    brix_buf_t js = BRIX_BUF_INIT;
    brix_buf_append_str(&js, "{\"object\":\"list\",\"data\":[");
    bool first = true;
    for (int pass = 0; pass < 2; pass++) { /* base models first, then adapters */
        for (size_t pi = 0; pi < s->npods; pi++) {
            cpod_t *cp = NULL;
            for (size_t k = 0; k < ctl->npods; k++)
                if (ctl->pods[k]->pod == s->pods[pi].pod)
                    cp = ctl->pods[k];
            if (!cp || !cp->models_known)
                continue;
            for (size_t j = 0; j < cp->nmodels; j++) {
                cmodel_t *cm = &cp->models[j];
                if ((pass == 0) != (cm->parent == NULL))
                    continue;
                /* a managed pod serves the adapters the controller lists for it: one
                 * it is about to unload is left out first (drained), so no request
                 * meets the unload */
                if (cm->parent && cp->ctl_adapters && !key_has(cp->ctl_adapters, cm->id))
                    continue;
                size_t mi = s->nmodels;
                for (size_t k = 0; k < s->nmodels; k++)
                    if (!strcmp(s->models[k].name, cm->id))
                        mi = k;
                brix_model_entry_t *me = &s->models[mi];
                if (mi == s->nmodels) {
                    s->nmodels++;
                    me->name = brix_strdup(cm->id);
                    me->parent = cm->parent ? brix_strdup(cm->parent) : NULL;
                    me->pods = brix_calloc(s->npods, sizeof *me->pods);
                    if (ctl->watch)
                        me->activity = brix_gw_watch_activity(ctl->watch, cm->id);
                    if (!me->name || !me->pods) {
                        brix_buf_free(&js);
                        brix_free(listed);
                        goto fail;
                    }
                }
                /* /v1/models lists a model once, from the first healthy pod
                 * serving it (routing still knows every pod) */
                if (s->pods[pi].healthy && !listed[mi]) {
                    listed[mi] = true;
                    if (!first)
                        brix_buf_append_char(&js, ',');
                    brix_buf_append_str(&js, cm->json);
                    first = false;
                }
                if (!me->npods || me->pods[me->npods - 1] != (uint32_t)pi)
                    me->pods[me->npods++] = (uint32_t)pi;
            }
        }
    }
    /* registered adapters loaded nowhere (or on no healthy pod) are listed
     * too, so clients see every model they may ask for */
    const brix_registry_t *reg = s->registry;
    size_t nextra = reg ? reg->nadapters + reg->ndeployments : 0;
    for (size_t i = 0; i < nextra; i++) {
        /* ... and so are the models of deployments with no healthy replica
         * (scaled to zero: a request for one is held while it starts) */
        const brix_reg_adapter_t *a = i < reg->nadapters ? &reg->adapters[i] : NULL;
        const char *name = a ? a->name : reg->deployments[i - reg->nadapters].model;
        const char *parent = a ? a->base_model : NULL;
        bool shown = false;
        for (size_t k = 0; k < s->nmodels && !shown; k++)
            shown = listed[k] && !strcmp(s->models[k].name, name);
        if (!a) /* listed already: an adapter of that name, or another deployment of it */
            shown = shown || brix_registry_adapter(reg, name);
        for (size_t k = reg->nadapters; k < i && !shown; k++)
            shown = !strcmp(reg->deployments[k - reg->nadapters].model, name);
        if (shown)
            continue;
        if (!first)
            brix_buf_append_char(&js, ',');
        first = false;
        brix_buf_append_str(&js, "{\"id\":");
        brix_buf_append_json_str(&js, name, strlen(name));
        brix_buf_printf(&js,
                        ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"brix\",\"root\":",
                        (long long)brix_wall_s());
        brix_buf_append_json_str(&js, name, strlen(name));
        brix_buf_append_str(&js, ",\"parent\":");
        if (parent)
            brix_buf_append_json_str(&js, parent, strlen(parent));
        else
            brix_buf_append_str(&js, "null");
        brix_buf_append_str(&js, ",\"max_model_len\":null,\"permission\":[]}");
    }
    brix_buf_append_str(&js, "]}");
    brix_free(listed);
    s->models_json = brix_buf_detach(&js, &s->models_json_len);
    if (!s->models_json)
        goto fail;
    qsort(s->models, s->nmodels, sizeof *s->models, cmp_model);
    for (size_t i = 0; i < s->nmodels; i++) {
        brix_model_entry_t *me = &s->models[i];
        me->load = brix_registry_load(reg, me->parent ? me->parent : me->name);
    }
    return s;
fail:
    brix_snap_unref(s);
    return NULL;
}

static void on_publish(uv_timer_t *t)
{
    brix_gw_control_t *ctl = t->data;
    ctl->publish_pending = false;
    brix_gw_t *gw = ctl->gw;
    brix_fleet_snap_t *s = build_snapshot(ctl);
    if (!s) {
        BRIX_ERROR("out of memory building the fleet snapshot");
        return;
    }
    brix_gw_view_t *v = brix_calloc(1, sizeof *v);
    if (!v) {
        brix_snap_unref(s);
        return;
    }
    atomic_init(&v->refs, 1);
    v->fleet = s;
    v->rt = gw->rt;
    brix_gw_rt_ref(gw->rt);
    brix_gw_publish(gw, v);
    brix_gw_view_unref(v);
    brix_metric_set(gw->m.fleet_version, (double)s->version);
}

static void mark_dirty(brix_gw_control_t *ctl)
{
    if (ctl->publish_pending || ctl->stopping)
        return;
    ctl->publish_pending = true;
    uv_timer_start(&ctl->publish_timer, on_publish, PUBLISH_DELAY_MS, 0);
}

/* --------------------------------------------------------------- pods -- */

static void cpod_free(cpod_t *cp)
{
    if (cp->kvw)
        brix_kvw_close(cp->kvw);
    for (size_t i = 0; i < cp->nmodels; i++) {
        brix_free(cp->models[i].id);
        brix_free(cp->models[i].parent);
        brix_free(cp->models[i].json);
    }
    brix_free(cp->models);
    brix_free(cp->ctl_adapters);
    brix_gw_control_t *ctl = cp->ctl;
    brix_prefix_index_forget_pod(ctl->gw->index, BRIX_PREFIX_ROUTED, cp->pod->id);
    brix_pod_t **r = brix_realloc(ctl->retired, (ctl->nretired + 1) * sizeof *r);
    if (r) {
        ctl->retired = r;
        ctl->retired[ctl->nretired++] = cp->pod; /* keeps our reference */
    } else {
        brix_pod_unref(cp->pod); /* its id is not reused */
    }
    brix_free(cp);
}

/* Ids of retired pods nothing refers to any more become free again, with
 * whatever was recorded under them since they were removed forgotten. */
static void reclaim_ids(brix_gw_control_t *ctl)
{
    size_t j = 0;
    for (size_t i = 0; i < ctl->nretired; i++) {
        brix_pod_t *p = ctl->retired[i];
        uint32_t *ids = NULL;
        if (atomic_load(&p->refs) == 1 &&
            (ids = brix_realloc(ctl->free_ids, (ctl->nfree_ids + 1) * sizeof *ids))) {
            brix_prefix_index_forget_pod(ctl->gw->index, BRIX_PREFIX_ROUTED, p->id);
            brix_prefix_index_forget_pod(ctl->gw->index, BRIX_PREFIX_CACHED, p->id);
            ctl->free_ids = ids;
            ctl->free_ids[ctl->nfree_ids++] = p->id;
            brix_pod_unref(p);
        } else {
            ctl->retired[j++] = p;
        }
    }
    ctl->nretired = j;
}

/* Drops removed records that no transfer refers to any more. */
static void reap(brix_gw_control_t *ctl)
{
    size_t j = 0;
    for (size_t i = 0; i < ctl->npods; i++) {
        cpod_t *cp = ctl->pods[i];
        if (cp->removed && !cp->inflight)
            cpod_free(cp);
        else
            ctl->pods[j++] = cp;
    }
    ctl->npods = j;
}

static void xfer_end(cpod_t *cp)
{
    cp->inflight--;
    if (cp->removed && !cp->inflight)
        reap(cp->ctl);
}

/* Parses "http://host:port[/]" and resolves host (the control thread may
 * block briefly on DNS; workers never do). */
static int parse_url(const char *url, char *host, size_t hostlen, int *port, char *err,
                     size_t errlen)
{
    const char *p = url;
    if (!strncmp(p, "http://", 7)) {
        p += 7;
    } else if (strstr(p, "://")) {
        snprintf(err, errlen, "%s: only http:// engine URLs are supported", url);
        return -1;
    }
    char name[256];
    const char *colon = strrchr(p, ':');
    const char *slash = strchr(p, '/');
    if (!colon || (slash && slash < colon)) {
        snprintf(err, errlen, "%s: expected http://HOST:PORT", url);
        return -1;
    }
    size_t hl = (size_t)(colon - p);
    if (hl == 0 || hl >= sizeof name) {
        snprintf(err, errlen, "%s: bad host", url);
        return -1;
    }
    memcpy(name, p, hl);
    name[hl] = '\0';
    char *end;
    long pt = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end && *end != '/') || pt < 1 || pt > 65535) {
        snprintf(err, errlen, "%s: bad port", url);
        return -1;
    }
    if (*end == '/' && end[1]) {
        snprintf(err, errlen, "%s: engine URLs take no path", url);
        return -1;
    }
    *port = (int)pt;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "%s: cannot resolve %s: %s", url, name, gai_strerror(rc));
        return -1;
    }
    rc = getnameinfo(res->ai_addr, res->ai_addrlen, host, (socklen_t)hostlen, NULL, 0,
                     NI_NUMERICHOST);
    freeaddrinfo(res);
    if (rc) {
        snprintf(err, errlen, "%s: cannot resolve %s", url, name);
        return -1;
    }
    return 0;
}

static void check_health(cpod_t *cp);
static void fetch_models(cpod_t *cp);
static void attach_kv_events(brix_gw_control_t *ctl, cpod_t *cp);

/* A pod for an engine URL; `pod_name` NULL names it "ip:port" (static). */
static cpod_t *add_pod(brix_gw_control_t *ctl, const char *url, const char *pod_name, char *err,
                       size_t errlen)
{
    char host[64];
    int port;
    if (parse_url(url, host, sizeof host, &port, err, errlen))
        return NULL;
    reclaim_ids(ctl);
    char name[256], hp[96], base[128];
    snprintf(hp, sizeof hp, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    snprintf(base, sizeof base, "http://%s", hp);
    snprintf(name, sizeof name, "%s", pod_name ? pod_name : hp);
    if (!ctl->nfree_ids && ctl->next_id == BRIX_PREFIX_STORE_POD)
        ctl->next_id++; /* the shared store's id in the prefix index */
    uint32_t id = ctl->nfree_ids ? ctl->free_ids[--ctl->nfree_ids] : ctl->next_id++;
    cpod_t *cp = brix_calloc(1, sizeof *cp);
    cpod_t **v = brix_realloc(ctl->pods, (ctl->npods + 1) * sizeof *v);
    if (!cp || !v) {
        brix_free(cp);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ctl->pods = v;
    cp->ctl = ctl;
    cp->pod = brix_pod_new(id, name, base, host, port);
    if (!cp->pod) {
        brix_free(cp);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ctl->pods[ctl->npods++] = cp;
    BRIX_INFO("pod %s added (%s)", name, url);
    check_health(cp);
    return cp;
}

/* ------------------------------------------------------------- health -- */

/* The pod's KV cache is unknown or empty now (it failed, or a new process
 * answers on its address): forget what it was sent and what it reported. */
static void forget_cache(cpod_t *cp)
{
    brix_prefix_index_forget_pod(cp->ctl->gw->index, BRIX_PREFIX_ROUTED, cp->pod->id);
    if (cp->kvw)
        brix_kvw_reset(cp->kvw);
}

static void set_healthy(cpod_t *cp, bool healthy, const char *why)
{
    if (cp->healthy == healthy)
        return;
    cp->healthy = healthy;
    if (healthy) {
        BRIX_INFO("pod %s is healthy", cp->pod->name);
        fetch_models(cp); /* the engine may have restarted with other models */
    } else {
        BRIX_WARN("pod %s is unhealthy: %s", cp->pod->name, why);
        forget_cache(cp);
    }
    mark_dirty(cp->ctl);
}

static void on_health(const brix_curl_result_t *r, void *ud)
{
    cpod_t *cp = ud;
    brix_gw_cfg_t *c = &cp->ctl->gw->cfg;
    cp->health_busy = false;
    if (!cp->removed && !cp->ctl->stopping) {
        if (r->status == 200) {
            cp->fail_streak = 0;
            if (++cp->ok_streak >= c->healthy_threshold)
                set_healthy(cp, true, NULL);
        } else {
            char why[160];
            if (r->error)
                snprintf(why, sizeof why, "%s", r->error);
            else
                snprintf(why, sizeof why, "/health answered %ld", r->status);
            cp->ok_streak = 0;
            if (++cp->fail_streak >= c->unhealthy_threshold || !cp->healthy)
                set_healthy(cp, false, why);
        }
    }
    xfer_end(cp);
}

static void check_health(cpod_t *cp)
{
    if (cp->health_busy || cp->removed)
        return;
    char url[256];
    snprintf(url, sizeof url, "%s/health", cp->pod->url);
    brix_gw_cfg_t *c = &cp->ctl->gw->cfg;
    if (brix_curl_request(cp->ctl->curl, "GET", url, NULL, 0, NULL, c->health_timeout, 1 << 16,
                          on_health, cp) == 0) {
        cp->health_busy = true;
        cp->inflight++;
    }
}

static void on_health_timer(uv_timer_t *t)
{
    brix_gw_control_t *ctl = t->data;
    for (size_t i = 0; i < ctl->npods; i++)
        check_health(ctl->pods[i]);
}

/* ------------------------------------------------------------- models -- */

static void on_models(const brix_curl_result_t *r, void *ud)
{
    cpod_t *cp = ud;
    cp->models_busy = false;
    if (cp->removed || cp->ctl->stopping) {
        xfer_end(cp);
        return;
    }
    cJSON *j = r->status == 200 ? cJSON_ParseWithLength(r->body, r->body_len) : NULL;
    const cJSON *data = j ? cJSON_GetObjectItemCaseSensitive(j, "data") : NULL;
    if (!cJSON_IsArray(data)) {
        BRIX_WARN("pod %s: /v1/models failed: %s", cp->pod->name,
                  r->error ? r->error : (r->status == 200 ? "not a model list" : "bad status"));
        cJSON_Delete(j);
        if (cp->models_again) {
            cp->models_again = false;
            fetch_models(cp);
        }
        xfer_end(cp);
        return;
    }
    size_t n = (size_t)cJSON_GetArraySize(data);
    cmodel_t *ms = brix_calloc(n ? n : 1, sizeof *ms);
    size_t k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, data)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *parent = cJSON_GetObjectItemCaseSensitive(it, "parent");
        if (!ms || !cJSON_IsString(id))
            continue;
        bool dup = false; /* a model listed twice counts once */
        for (size_t i = 0; i < k && !dup; i++)
            dup = !strcmp(ms[i].id, id->valuestring);
        if (dup)
            continue;
        ms[k].id = brix_strdup(id->valuestring);
        ms[k].parent = cJSON_IsString(parent) ? brix_strdup(parent->valuestring) : NULL;
        ms[k].json = cJSON_PrintUnformatted(it);
        k++;
    }
    cJSON_Delete(j);
    bool changed = !cp->models_known || k != cp->nmodels;
    for (size_t i = 0; !changed && i < k; i++)
        changed = strcmp(ms[i].id, cp->models[i].id) != 0;
    for (size_t i = 0; i < cp->nmodels; i++) {
        brix_free(cp->models[i].id);
        brix_free(cp->models[i].parent);
        brix_free(cp->models[i].json);
    }
    brix_free(cp->models);
    cp->models = ms;
    cp->nmodels = ms ? k : 0;
    cp->models_known = ms != NULL;
    /* KV events are subscribed once the base model (the root of the block
     * chain) is known, so a start-up replay can be mapped at once */
    const char *base = NULL;
    for (size_t i = 0; i < cp->nmodels && !base; i++)
        if (!cp->models[i].parent)
            base = cp->models[i].id;
    if (base && !cp->kvw)
        attach_kv_events(cp->ctl, cp);
    if (cp->kvw)
        brix_kvw_set_base_model(cp->kvw, base);
    cp->models_at_ns = brix_now_ns();
    if (changed) {
        BRIX_INFO("pod %s serves %zu model(s)%s%s", cp->pod->name, cp->nmodels,
                  cp->nmodels ? ", first " : "", cp->nmodels ? cp->models[0].id : "");
        mark_dirty(cp->ctl);
    }
    if (cp->models_again) {
        /* asked for while this read was under way: it may predate the change */
        cp->models_again = false;
        fetch_models(cp);
    }
    xfer_end(cp);
}

static void fetch_models(cpod_t *cp)
{
    if (cp->removed)
        return;
    if (cp->models_busy) {
        cp->models_again = true;
        return;
    }
    char url[256];
    snprintf(url, sizeof url, "%s/v1/models", cp->pod->url);
    if (brix_curl_request(cp->ctl->curl, "GET", url, NULL, 0, NULL, cp->ctl->gw->cfg.health_timeout,
                          8 << 20, on_models, cp) == 0) {
        cp->models_busy = true;
        cp->inflight++;
    }
}

static void on_models_timer(uv_timer_t *t)
{
    brix_gw_control_t *ctl = t->data;
    for (size_t i = 0; i < ctl->npods; i++)
        if (ctl->pods[i]->healthy && !ctl->pods[i]->models_busy)
            fetch_models(ctl->pods[i]);
}

/* ------------------------------------------------------------ scraping -- */

static void on_scrape(const brix_curl_result_t *r, void *ud)
{
    cpod_t *cp = ud;
    brix_gw_t *gw = cp->ctl->gw;
    cp->scrape_busy = false;
    if (cp->removed || cp->ctl->stopping) {
        xfer_end(cp);
        return;
    }
    bool ok = false;
    cp->scrape_state.invalid_values = 0;
    if (r->status == 200) {
        uint64_t now = brix_now_ns();
        ok = brix_engine_stats_update(r->body, r->body_len, (double)now / 1e9, &cp->scrape_state,
                                      &cp->stats);
        if (ok) {
            cp->scraped_at_ns = now;
            cp->inflight_at_scrape = atomic_load(&cp->pod->inflight);
        }
        if (ok && cp->scrape_state.restarted) {
            /* counters went backwards: a new engine process, with an empty cache */
            BRIX_INFO("pod %s restarted (its counters went back)", cp->pod->name);
            forget_cache(cp);
        }
    }
    unsigned bad = cp->scrape_state.invalid_values;
    if (ok != cp->scraped_ok && !ok && !bad)
        BRIX_WARN("pod %s: scraping /metrics failed: %s", cp->pod->name,
                  r->error ? r->error : "no vLLM metrics in the answer");
    if (bad && !cp->bad_values_warned)
        BRIX_WARN("pod %s: /metrics has vLLM value(s) that are NaN, infinite or negative; they "
                  "are not used%s",
                  cp->pod->name, ok ? "" : " (nor the load figures of that scrape)");
    cp->bad_values_warned = bad > 0;
    cp->scraped_ok = ok;
    brix_metric_add(brix_gw_metric2(gw->m.scrapes, cp->pod->name,
                                    ok    ? "ok"
                                    : bad ? "invalid_values"
                                          : "error"),
                    1);
    if (bad)
        brix_metric_add(brix_gw_metric1(gw->m.values_refused, cp->pod->name), bad);
    mark_dirty(cp->ctl);
    xfer_end(cp);
}

static void on_scrape_timer(uv_timer_t *t)
{
    brix_gw_control_t *ctl = t->data;
    brix_gw_cfg_t *c = &ctl->gw->cfg;
    uint64_t now = brix_now_ns();
    for (size_t i = 0; i < ctl->npods; i++) {
        cpod_t *cp = ctl->pods[i];
        if (cp->removed || !cp->healthy)
            continue;
        if (cp->scraped_ok && now - cp->scraped_at_ns > c->metrics_stale_after * 1000000ull) {
            cp->scraped_ok = false; /* stale: strategies stop trusting it */
            mark_dirty(ctl);
        }
        if (cp->scrape_busy)
            continue;
        char url[256];
        snprintf(url, sizeof url, "%s/metrics", cp->pod->url);
        if (brix_curl_request(ctl->curl, "GET", url, NULL, 0, NULL, c->scrape_timeout, 16 << 20,
                              on_scrape, cp) == 0) {
            cp->scrape_busy = true;
            cp->inflight++;
        }
    }
}

/* --------------------------------------------------------- kv events -- */

static void on_kvw_change(void *ud)
{
    mark_dirty((brix_gw_control_t *)ud);
}

/* --kv-events URL=ENDPOINT[;REPLAY]: subscribe to this pod's events. */
static void attach_kv_events(brix_gw_control_t *ctl, cpod_t *cp)
{
    brix_gw_t *gw = ctl->gw;
    char err[256];
    for (size_t i = 0; i < gw->cfg.kv_events.n; i++) {
        const char *e = gw->cfg.kv_events.v[i];
        const char *eq = strchr(e, '=');
        char url[256], host[64], ep[256], rep[256];
        int port;
        if (!eq || (size_t)(eq - e) >= sizeof url)
            continue;
        snprintf(url, sizeof url, "%.*s", (int)(eq - e), e);
        if (parse_url(url, host, sizeof host, &port, err, sizeof err) ||
            strcmp(host, cp->pod->host) || port != cp->pod->port)
            continue;
        const char *semi = strchr(eq + 1, ';');
        snprintf(ep, sizeof ep, "%.*s", (int)(semi ? semi - eq - 1 : (long)strlen(eq + 1)), eq + 1);
        if (semi)
            snprintf(rep, sizeof rep, "%s", semi + 1);
        if (!gw->zctx && !(gw->zctx = zmq_ctx_new())) {
            BRIX_ERROR("kv events: cannot create a ZMQ context");
            return;
        }
        cp->kvw = brix_kvw_new(gw->loop, gw->zctx, gw->index, cp->pod, ep, semi ? rep : NULL,
                               (uint32_t)gw->cfg.route.block_size,
                               (int64_t)gw->cfg.kv_events_max_msg, on_kvw_change, ctl);
        return;
    }
}

/* --------------------------------------------------------- lifecycle -- */

static void remove_pod(cpod_t *cp, const char *why)
{
    if (cp->removed)
        return;
    BRIX_INFO("pod %s removed (%s)", cp->pod->name, why);
    cp->removed = true;
    brix_metric_set(brix_gw_metric1(cp->ctl->gw->m.pod_healthy, cp->pod->name), 0);
    mark_dirty(cp->ctl);
}

static bool url_moved(const char *url, const brix_pod_t *p, char *err, size_t errlen)
{
    char host[64];
    int port;
    return parse_url(url, host, sizeof host, &port, err, errlen) || strcmp(host, p->host) ||
           port != p->port;
}

/* A controller snapshot: its ready replicas are the managed pods. */
static void on_ctl_snapshot(void *ud, const brix_ctl_snapshot_t *snap)
{
    brix_gw_control_t *ctl = ud;
    char err[512];
    for (size_t i = 0; i < ctl->npods; i++) {
        cpod_t *cp = ctl->pods[i];
        if (!cp->managed || cp->removed)
            continue;
        const brix_ctl_replica_t *r = NULL;
        for (size_t k = 0; k < snap->nreplicas && !r; k++)
            if (!strcmp(snap->replicas[k].name, cp->pod->name))
                r = &snap->replicas[k];
        if (!r) {
            remove_pod(cp, "gone from the controller's snapshot");
        } else if (!r->ready) {
            remove_pod(cp, r->phase ? r->phase : "not ready");
        } else if (strcmp(r->url, cp->pod->url) && url_moved(r->url, cp->pod, err, sizeof err)) {
            /* same name, another address: a new engine, not this one */
            remove_pod(cp, "its URL changed");
        } else if (strcmp(r->adapters_key, cp->ctl_adapters ? cp->ctl_adapters : "")) {
            /* the controller confirmed other adapters there: read the list
             * now instead of at the next periodic refresh */
            char *k = brix_strdup(r->adapters_key);
            if (k) {
                brix_free(cp->ctl_adapters);
                cp->ctl_adapters = k;
            }
            mark_dirty(ctl); /* an adapter being drained leaves the routes at once */
            if (cp->healthy)
                fetch_models(cp);
        }
    }
    for (size_t k = 0; k < snap->nreplicas; k++) {
        const brix_ctl_replica_t *r = &snap->replicas[k];
        if (!r->ready)
            continue;
        bool have = false;
        for (size_t i = 0; i < ctl->npods && !have; i++)
            have = ctl->pods[i]->managed && !ctl->pods[i]->removed &&
                   !strcmp(ctl->pods[i]->pod->name, r->name);
        if (have)
            continue;
        cpod_t *cp = add_pod(ctl, r->url, r->name, err, sizeof err);
        if (!cp) {
            BRIX_WARN("controller replica %s: %s", r->name, err);
            continue;
        }
        cp->managed = true;
        cp->ctl_adapters = brix_strdup(r->adapters_key);
    }
    reap(ctl);
    brix_registry_unref(ctl->registry);
    brix_registry_ref(snap->registry);
    ctl->registry = snap->registry;
    mark_dirty(ctl);
}

void brix_gw_control_reconfigure(brix_gw_control_t *ctl)
{
    brix_gw_t *gw = ctl->gw;
    char err[512];
    /* a new engine key (--engine-api-key-file re-read): our own engine calls */
    if (brix_curl_set_bearer(ctl->curl, gw->cfg.engine_api_key))
        BRIX_ERROR("out of memory setting the engine key");
    /* the controller: start, follow a new URL, or stop (its pods go too) */
    if (gw->cfg.controller && !ctl->watch) {
        if (!(ctl->watch = brix_gw_watch_start(gw, on_ctl_snapshot, ctl)))
            BRIX_ERROR("controller: out of memory starting the watch");
    } else if (gw->cfg.controller) {
        brix_gw_watch_reconfigure(ctl->watch);
    } else if (ctl->watch) {
        brix_gw_watch_stop(ctl->watch);
        ctl->watch = NULL;
        brix_registry_unref(ctl->registry);
        ctl->registry = NULL;
        for (size_t i = 0; i < ctl->npods; i++)
            if (ctl->pods[i]->managed)
                remove_pod(ctl->pods[i], "--controller is no longer set");
    }
    /* static pods: add new URLs, remove the ones no longer listed */
    for (size_t i = 0; i < ctl->npods; i++) {
        cpod_t *cp = ctl->pods[i];
        if (cp->managed)
            continue;
        bool keep = false;
        for (size_t j = 0; j < gw->cfg.worker_urls.n && !keep; j++) {
            char host[64];
            int port;
            if (parse_url(gw->cfg.worker_urls.v[j], host, sizeof host, &port, err, sizeof err))
                continue;
            keep = !strcmp(host, cp->pod->host) && port == cp->pod->port;
        }
        if (!keep)
            remove_pod(cp, "no longer in --worker-urls");
    }
    for (size_t j = 0; j < gw->cfg.worker_urls.n; j++) {
        char host[64];
        int port;
        if (parse_url(gw->cfg.worker_urls.v[j], host, sizeof host, &port, err, sizeof err)) {
            BRIX_ERROR("--worker-urls: %s", err);
            continue;
        }
        bool have = false;
        for (size_t i = 0; i < ctl->npods && !have; i++)
            have = !ctl->pods[i]->removed && !ctl->pods[i]->managed &&
                   !strcmp(host, ctl->pods[i]->pod->host) && port == ctl->pods[i]->pod->port;
        if (!have && !add_pod(ctl, gw->cfg.worker_urls.v[j], NULL, err, sizeof err))
            BRIX_ERROR("--worker-urls: %s", err);
    }
    reap(ctl);
    uv_timer_start(&ctl->health_timer, on_health_timer, gw->cfg.health_interval,
                   gw->cfg.health_interval);
    uv_timer_start(&ctl->scrape_timer, on_scrape_timer, gw->cfg.scrape_interval,
                   gw->cfg.scrape_interval);
    uv_timer_start(&ctl->models_timer, on_models_timer, gw->cfg.models_refresh_interval,
                   gw->cfg.models_refresh_interval);
    mark_dirty(ctl);
}

brix_gw_control_t *brix_gw_control_start(brix_gw_t *gw)
{
    brix_gw_control_t *ctl = brix_calloc(1, sizeof *ctl);
    if (!ctl)
        return NULL;
    ctl->gw = gw;
    ctl->curl = brix_curl_new(gw->loop);
    if (ctl->curl && gw->cfg.engine_api_key)
        brix_curl_set_bearer(ctl->curl, gw->cfg.engine_api_key);
    if (!ctl->curl) {
        brix_free(ctl);
        return NULL;
    }
    uv_timer_t *timers[] = { &ctl->health_timer, &ctl->scrape_timer, &ctl->models_timer,
                             &ctl->publish_timer };
    for (size_t i = 0; i < 4; i++) {
        uv_timer_init(gw->loop, timers[i]);
        timers[i]->data = ctl;
    }
    gw->ctl = ctl;
    brix_gw_control_reconfigure(ctl);
    return ctl;
}

static void on_timer_closed(uv_handle_t *h)
{
    brix_gw_control_t *ctl = h->data;
    if (h == (uv_handle_t *)&ctl->publish_timer) {
        for (size_t i = 0; i < ctl->npods; i++) {
            ctl->pods[i]->inflight = 0;
            cpod_free(ctl->pods[i]);
        }
        brix_free(ctl->pods);
        for (size_t i = 0; i < ctl->nretired; i++)
            brix_pod_unref(ctl->retired[i]);
        brix_free(ctl->retired);
        brix_free(ctl->free_ids);
        brix_registry_unref(ctl->registry);
        brix_free(ctl);
    }
}

void brix_gw_control_stop(brix_gw_control_t *ctl)
{
    ctl->stopping = true;
    if (ctl->watch)
        brix_gw_watch_stop(ctl->watch);
    ctl->watch = NULL;
    brix_curl_close(ctl->curl); /* aborts transfers without callbacks */
    /* the ZMQ context is terminated by gateway.c once the loop has closed
     * every handle (and with them every socket) */
    for (size_t i = 0; i < ctl->npods; i++) {
        if (ctl->pods[i]->kvw) {
            brix_kvw_close(ctl->pods[i]->kvw);
            ctl->pods[i]->kvw = NULL;
        }
    }
    uv_close((uv_handle_t *)&ctl->health_timer, NULL);
    uv_close((uv_handle_t *)&ctl->scrape_timer, NULL);
    uv_close((uv_handle_t *)&ctl->models_timer, NULL);
    uv_close((uv_handle_t *)&ctl->publish_timer, on_timer_closed);
}
