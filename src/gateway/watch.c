/*
 * The controller watch: one streaming transfer at a time (brix_curl_stream),
 * its bytes split into lines (core/lines), each line parsed with cJSON (this
 * is the control thread, never a worker). Three timers: silence on the
 * stream, the reconnect backoff, and a 1 s tick for activity reports and
 * repeated wakes. Wakes and reports go through their own brix_curl_t, so a
 * --controller-token is never sent to engines and the engines' key never to
 * the controller.
 */
#include "gateway/watch.h"

#include "core/alloc.h"
#include "core/curl_uv.h"
#include "core/lines.h"
#include "core/log.h"
#include "core/time.h"
#include "gateway/gateway.h"
#include "gateway/hold.h"

#include <cjson/cJSON.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BACKOFF_MIN_MS     100
#define BACKOFF_MAX_MS     5000
#define STABLE_NS          (1000000000ull) /* a stream up this long resets the backoff */
#define TICK_MS            1000
#define WAKE_EVERY_NS      (5ull * 1000000000ull) /* wakes re-sent while requests wait */
#define CALL_TIMEOUT_MS    5000                   /* wake and activity POSTs */
#define MAX_LINE           (16u << 20)            /* one snapshot line */
#define MAX_WAKES_PER_TICK 64

/* ------------------------------------------------------------- parsing -- */

static char *opt_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && v->valuestring[0] ? brix_strdup(v->valuestring) : NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_adapter(const void *a, const void *b)
{
    return strcmp(((const brix_reg_adapter_t *)a)->name, ((const brix_reg_adapter_t *)b)->name);
}

static void replica_free(brix_ctl_replica_t *r)
{
    brix_free(r->name);
    brix_free(r->url);
    brix_free(r->model);
    brix_free(r->phase);
    brix_free(r->adapters_key);
}

void brix_ctl_snapshot_free(brix_ctl_snapshot_t *s)
{
    for (size_t i = 0; i < s->nreplicas; i++)
        replica_free(&s->replicas[i]);
    brix_free(s->replicas);
    brix_registry_unref(s->registry);
    memset(s, 0, sizeof *s);
}

/* The replica's adapters as one comparable string: sorted, '\n'-joined. */
static char *adapters_key(const cJSON *arr)
{
    size_t n = cJSON_IsArray(arr) ? (size_t)cJSON_GetArraySize(arr) : 0;
    const char **v = brix_calloc(n ? n : 1, sizeof *v);
    if (!v)
        return NULL;
    size_t k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (cJSON_IsString(it) && it->valuestring[0] && k < n)
            v[k++] = it->valuestring;
    }
    qsort(v, k, sizeof *v, cmp_str);
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_append_str(&b, "");
    for (size_t i = 0; i < k; i++) {
        if (i && !strcmp(v[i], v[i - 1]))
            continue;
        if (b.len)
            brix_buf_append_char(&b, '\n');
        brix_buf_append_str(&b, v[i]);
    }
    brix_free(v);
    return brix_buf_detach(&b, NULL);
}

static int parse_replicas(const cJSON *arr, brix_ctl_snapshot_t *s)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    s->replicas = brix_calloc(n ? n : 1, sizeof *s->replicas);
    if (!s->replicas)
        return -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        brix_ctl_replica_t r = { 0 };
        const cJSON *ready = cJSON_GetObjectItemCaseSensitive(it, "ready");
        r.name = opt_str(it, "name");
        r.url = opt_str(it, "url");
        r.model = opt_str(it, "model");
        r.phase = opt_str(it, "phase");
        r.ready = cJSON_IsTrue(ready);
        r.adapters_key = adapters_key(cJSON_GetObjectItemCaseSensitive(it, "adapters"));
        bool dup = false;
        for (size_t i = 0; r.name && i < s->nreplicas && !dup; i++)
            dup = !strcmp(s->replicas[i].name, r.name);
        if (!cJSON_IsObject(it) || !r.name || !r.url || !r.adapters_key || dup ||
            (ready && !cJSON_IsBool(ready))) {
            replica_free(&r);
            s->skipped++;
            continue;
        }
        s->replicas[s->nreplicas++] = r;
    }
    return 0;
}

static int cmp_deployment(const void *a, const void *b)
{
    return strcmp(((const brix_reg_deployment_t *)a)->name,
                  ((const brix_reg_deployment_t *)b)->name);
}

/* A replica count: a non-negative integer within int64, 0 when absent;
 * -1 for anything else. */
static int64_t opt_count(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 9.2e18) ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return -1;
    return (int64_t)v->valuedouble;
}

/* "deployments" (absent from older controllers' snapshots: none). An entry
 * without a name or model, with a count that is not a non-negative integer
 * (an absent one is 0) or a name seen before is left out and counted in
 * s->skipped. */
static int parse_deployments(const cJSON *arr, brix_ctl_snapshot_t *s, brix_registry_t *reg)
{
    size_t n = cJSON_IsArray(arr) ? (size_t)cJSON_GetArraySize(arr) : 0;
    reg->deployments = brix_calloc(n ? n : 1, sizeof *reg->deployments);
    if (!reg->deployments)
        return -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        brix_reg_deployment_t d = { 0 };
        const cJSON *stz = cJSON_GetObjectItemCaseSensitive(it, "scaleToZero");
        const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(it, "kvStore");
        d.name = opt_str(it, "name");
        d.model = opt_str(it, "model");
        d.replicas = opt_count(it, "replicas");
        d.ready = opt_count(it, "ready");
        d.scale_to_zero = cJSON_IsTrue(stz);
        d.kv_store = cJSON_IsTrue(kvs);
        bool dup = false;
        for (size_t i = 0; d.name && i < reg->ndeployments && !dup; i++)
            dup = !strcmp(reg->deployments[i].name, d.name);
        if (!d.name || !d.model || d.replicas < 0 || d.ready < 0 || dup ||
            (stz && !cJSON_IsBool(stz)) || (kvs && !cJSON_IsBool(kvs))) {
            brix_free(d.name);
            brix_free(d.model);
            s->skipped++;
            continue;
        }
        reg->deployments[reg->ndeployments++] = d;
    }
    qsort(reg->deployments, reg->ndeployments, sizeof *reg->deployments, cmp_deployment);
    return 0;
}

/* The base models: those of the replicas and of the deployments, sorted
 * and distinct. */
static int collect_bases(const brix_ctl_snapshot_t *s, brix_registry_t *reg)
{
    size_t n = s->nreplicas + reg->ndeployments, nb = 0;
    char **bases = brix_calloc(n ? n : 1, sizeof *bases);
    if (!bases)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *m =
            i < s->nreplicas ? s->replicas[i].model : reg->deployments[i - s->nreplicas].model;
        bool have = !m;
        for (size_t k = 0; k < nb && !have; k++)
            have = !strcmp(bases[k], m);
        if (have)
            continue;
        if (!(bases[nb] = brix_strdup(m))) {
            for (size_t k = 0; k < nb; k++)
                brix_free(bases[k]);
            brix_free(bases);
            return -1;
        }
        nb++;
    }
    qsort(bases, nb, sizeof *bases, cmp_str);
    reg->base_models = bases;
    reg->nbase_models = nb;
    return 0;
}

static int parse_adapters(const cJSON *arr, brix_ctl_snapshot_t *s, brix_registry_t *reg)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    reg->adapters = brix_calloc(n ? n : 1, sizeof *reg->adapters);
    if (!reg->adapters)
        return -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        brix_reg_adapter_t a = { 0 };
        const cJSON *phase = cJSON_GetObjectItemCaseSensitive(it, "phase");
        const cJSON *inst = cJSON_GetObjectItemCaseSensitive(it, "instances");
        a.name = opt_str(it, "name");
        a.base_model = opt_str(it, "baseModel");
        a.phase = brix_reg_phase_parse(cJSON_IsString(phase) ? phase->valuestring : NULL);
        a.ninstances = cJSON_IsArray(inst) ? (size_t)cJSON_GetArraySize(inst) : 0;
        a.message = opt_str(it, "message");
        if (!a.message)
            a.message = opt_str(it, "reason");
        bool dup = false;
        for (size_t i = 0; a.name && i < reg->nadapters && !dup; i++)
            dup = !strcmp(reg->adapters[i].name, a.name);
        if (!a.name || dup) {
            brix_free(a.name);
            brix_free(a.base_model);
            brix_free(a.message);
            s->skipped++;
            continue;
        }
        reg->adapters[reg->nadapters++] = a;
    }
    qsort(reg->adapters, reg->nadapters, sizeof *reg->adapters, cmp_adapter);
    return 0;
}

brix_ctl_line_t brix_ctl_parse_line(const char *line, size_t len, brix_ctl_snapshot_t *snap,
                                    uint64_t *version, char *err, size_t errlen)
{
    memset(snap, 0, sizeof *snap);
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len)
        return BRIX_CTL_LINE_OTHER; /* a keep-alive blank line */
    cJSON *j = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "not a JSON object");
        cJSON_Delete(j);
        return BRIX_CTL_LINE_BAD;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "version");
    brix_ctl_line_t kind = BRIX_CTL_LINE_OTHER;
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "heartbeat"))
        kind = BRIX_CTL_LINE_HEARTBEAT;
    else if (cJSON_IsString(type) && !strcmp(type->valuestring, "snapshot"))
        kind = BRIX_CTL_LINE_SNAPSHOT;
    else if (!cJSON_IsString(type)) {
        snprintf(err, errlen, "no \"type\"");
        kind = BRIX_CTL_LINE_BAD;
    }
    if (kind == BRIX_CTL_LINE_OTHER || kind == BRIX_CTL_LINE_BAD) {
        cJSON_Delete(j);
        return kind;
    }
    /* a version outside uint64_t (JSON allows 1e30) counts as absent: casting
     * it would be undefined behaviour */
    double vd = cJSON_IsNumber(ver) ? ver->valuedouble : -1;
    *version = vd >= 0 && vd < 18446744073709551616.0 ? (uint64_t)vd : 0;
    if (kind == BRIX_CTL_LINE_HEARTBEAT) {
        cJSON_Delete(j);
        return kind;
    }
    const cJSON *reps = cJSON_GetObjectItemCaseSensitive(j, "replicas");
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(j, "adapters");
    const cJSON *deps = cJSON_GetObjectItemCaseSensitive(j, "deployments");
    if (!cJSON_IsArray(reps) || (ads && !cJSON_IsArray(ads)) || (deps && !cJSON_IsArray(deps))) {
        snprintf(err, errlen,
                 "a snapshot needs \"replicas\" (and \"adapters\", \"deployments\") arrays");
        cJSON_Delete(j);
        return BRIX_CTL_LINE_BAD;
    }
    brix_registry_t *reg = brix_calloc(1, sizeof *reg);
    if (!reg) {
        snprintf(err, errlen, "out of memory");
        cJSON_Delete(j);
        return BRIX_CTL_LINE_BAD;
    }
    atomic_init(&reg->refs, 1);
    reg->version = *version;
    snap->registry = reg;
    snap->version = *version;
    cJSON *empty = ads ? NULL : cJSON_CreateArray();
    int rc = parse_replicas(reps, snap);
    if (!rc)
        rc = parse_adapters(ads ? ads : empty, snap, reg);
    if (!rc)
        rc = parse_deployments(deps, snap, reg);
    if (!rc)
        rc = collect_bases(snap, reg);
    cJSON_Delete(empty);
    cJSON_Delete(j);
    if (rc) {
        brix_ctl_snapshot_free(snap);
        snprintf(err, errlen, "out of memory");
        return BRIX_CTL_LINE_BAD;
    }
    return BRIX_CTL_LINE_SNAPSHOT;
}

/* --------------------------------------------------------------- watch -- */

typedef struct wake_call {
    brix_gw_watch_t *w;
    struct wake_call *next, *prev;
    brix_hold_kind_t kind;
    char *target; /* the deployment woken for a model (logs) */
    char name[];  /* the demand entry's name: the adapter, or the model */
} wake_call_t;

struct brix_gw_watch {
    brix_gw_t *gw;
    brix_gw_watch_apply_fn apply;
    void *ud;
    brix_curl_t *curl;
    char *url; /* without a trailing '/' */
    brix_curl_xfer_t *xfer;
    brix_lines_t lines;
    uv_timer_t idle_timer, retry_timer, tick_timer;
    int open_handles;
    uint64_t backoff_ms;
    bool up;     /* a valid line arrived on the current stream */
    bool outage; /* down, and said so */
    bool ever_up;
    uint64_t down_since_ns, up_since_ns;
    uint64_t version;
    bool stopping;
    bool bad_line_logged; /* per stream */
    bool auth_logged;     /* a 401/403 was logged; again only after a success */
    /* activity */
    brix_model_activity_t **act;
    size_t nact;
    bool activity_busy;
    char id[17];               /* this gateway's id in load reports (random hex) */
    brix_registry_t *registry; /* the newest snapshot's: the models load is reported for */
    wake_call_t *wakes;        /* in flight */
};

static void connect_now(brix_gw_watch_t *w);

static void on_retry(uv_timer_t *t)
{
    connect_now(t->data);
}

static void set_connected(brix_gw_watch_t *w, bool up)
{
    brix_metric_set(w->gw->m.ctl_connected, up);
}

/* The stream is gone (ended, failed, silent): serve on, reconnect later. */
static void lost(brix_gw_watch_t *w, const char *why)
{
    if (w->xfer) {
        brix_curl_cancel(w->curl, w->xfer);
        w->xfer = NULL;
    }
    uv_timer_stop(&w->idle_timer);
    brix_lines_reset(&w->lines);
    uint64_t now = brix_now_ns();
    /* the backoff starts over only after a stream that lasted: a controller
     * that answers and hangs up at once is retried ever more slowly */
    if (w->up && now - w->up_since_ns >= STABLE_NS)
        w->backoff_ms = BACKOFF_MIN_MS;
    w->up = false;
    set_connected(w, false);
    if (!w->outage) {
        w->outage = true;
        w->down_since_ns = now;
        if (w->ever_up)
            BRIX_WARN("controller watch %s/v1/watch lost: %s; serving the last known pods "
                      "(version %llu) and reconnecting",
                      w->url, why, (unsigned long long)w->version);
        else
            BRIX_WARN("controller %s not reachable: %s; retrying (no pods until it answers)",
                      w->url, why);
    } else {
        BRIX_DEBUG("controller watch attempt failed: %s", why);
    }
    if (w->stopping)
        return;
    uv_timer_start(&w->retry_timer, on_retry, w->backoff_ms, 0);
    w->backoff_ms = w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
}

static void on_idle(uv_timer_t *t)
{
    brix_gw_watch_t *w = t->data;
    char why[96];
    snprintf(why, sizeof why, "no line for %llu ms",
             (unsigned long long)w->gw->cfg.controller_idle_timeout);
    lost(w, why);
}

static void got_up(brix_gw_watch_t *w)
{
    if (w->up)
        return;
    w->up = true;
    w->up_since_ns = brix_now_ns();
    set_connected(w, true);
    if (w->outage)
        BRIX_INFO("controller watch %s/v1/watch is back after %.1f s (version %llu)", w->url,
                  (double)(brix_now_ns() - w->down_since_ns) / 1e9, (unsigned long long)w->version);
    else
        BRIX_INFO("controller watch %s/v1/watch connected (version %llu)", w->url,
                  (unsigned long long)w->version);
    w->outage = false;
    w->ever_up = true;
    w->auth_logged = false;
}

/* Gives each base model of a new registry its load record (before anyone
 * else sees the registry), so workers count with no lookup of their own. A
 * record that cannot be made (ENOMEM) leaves that model uncounted. */
static void attach_load(brix_gw_watch_t *w, brix_registry_t *reg)
{
    if (!reg->nbase_models || !(reg->base_load = brix_calloc(reg->nbase_models, sizeof(void *))))
        return;
    for (size_t i = 0; i < reg->nbase_models; i++)
        reg->base_load[i] = brix_gw_watch_activity(w, reg->base_models[i]);
}

static int on_line(const char *line, size_t len, void *ud)
{
    brix_gw_watch_t *w = ud;
    brix_gw_metrics_t *m = &w->gw->m;
    uv_timer_again(&w->idle_timer);
    brix_ctl_snapshot_t snap;
    uint64_t version = 0;
    char err[160];
    switch (brix_ctl_parse_line(line, len, &snap, &version, err, sizeof err)) {
    case BRIX_CTL_LINE_OTHER:
        return 0;
    case BRIX_CTL_LINE_BAD:
        brix_metric_add(m->ctl_events_bad, 1);
        if (!w->bad_line_logged)
            BRIX_WARN("controller watch: a line was not understood (%s): %.*s", err,
                      (int)(len < 120 ? len : 120), line);
        w->bad_line_logged = true;
        return 0;
    case BRIX_CTL_LINE_HEARTBEAT:
        brix_metric_add(m->ctl_events_heartbeat, 1);
        if (version < w->version)
            BRIX_DEBUG("controller heartbeat at version %llu, below %llu (controller restarted?)",
                       (unsigned long long)version, (unsigned long long)w->version);
        got_up(w);
        return 0;
    case BRIX_CTL_LINE_SNAPSHOT:
        break;
    }
    brix_metric_add(m->ctl_events_snapshot, 1);
    if (snap.skipped)
        BRIX_WARN(
            "controller snapshot %llu: %zu malformed replica/adapter/deployment entr%s left out",
            (unsigned long long)version, snap.skipped, snap.skipped == 1 ? "y" : "ies");
    attach_load(w, snap.registry);
    brix_registry_unref(w->registry);
    brix_registry_ref(snap.registry);
    w->registry = snap.registry;
    w->version = version;
    brix_metric_set(m->ctl_version, (double)version);
    got_up(w);
    w->apply(w->ud, &snap);
    brix_ctl_snapshot_free(&snap);
    return 0;
}

static void on_data(const char *data, size_t len, void *ud)
{
    brix_gw_watch_t *w = ud;
    uint64_t too_long = w->lines.too_long;
    if (brix_lines_feed(&w->lines, data, len, on_line, w) < 0) {
        lost(w, "out of memory");
        return;
    }
    if (w->lines.too_long != too_long) {
        brix_metric_add(w->gw->m.ctl_events_bad, 1);
        BRIX_WARN("controller watch: a line over %u bytes was skipped", MAX_LINE);
    }
}

/* 401/403 from the controller: a wrong or missing token is a configuration
 * error no retry fixes, so it is logged as one (once per outage). */
static bool refused(brix_gw_watch_t *w, long status, const char *what)
{
    if (status != 401 && status != 403)
        return false;
    if (!w->auth_logged)
        BRIX_ERROR("controller %s refused %s (%ld): %s; set --controller-token-file to the "
                   "controller's STATE_DIR/token (or --controller-token / "
                   "BRIX_CONTROLLER_TOKEN)",
                   w->url, what, status,
                   w->gw->cfg.controller_token ? "the controller token is wrong"
                                               : "no controller token is configured");
    w->auth_logged = true;
    return true;
}

static void on_stream_done(const brix_curl_result_t *r, void *ud)
{
    brix_gw_watch_t *w = ud;
    w->xfer = NULL;
    char why[256];
    refused(w, r->status, "the watch");
    if (r->error)
        snprintf(why, sizeof why, "%s", r->error);
    else if (r->status < 200 || r->status >= 300)
        snprintf(why, sizeof why, "GET /v1/watch answered %ld: %.120s", r->status, r->body);
    else
        snprintf(why, sizeof why, "the stream ended");
    lost(w, why);
}

static void connect_now(brix_gw_watch_t *w)
{
    if (w->stopping || w->xfer)
        return;
    char url[1024];
    snprintf(url, sizeof url, "%s/v1/watch", w->url);
    brix_lines_reset(&w->lines);
    w->bad_line_logged = false;
    if (w->ever_up || w->outage)
        brix_metric_add(w->gw->m.ctl_reconnects, 1);
    w->xfer = brix_curl_stream(w->curl, url, w->gw->cfg.connect_timeout, MAX_LINE, on_data,
                               on_stream_done, w);
    if (!w->xfer) {
        lost(w, "out of memory");
        return;
    }
    /* silence covers a hung connect or a head that never comes, too */
    uint64_t idle = w->gw->cfg.controller_idle_timeout;
    uv_timer_start(&w->idle_timer, on_idle, idle, idle);
}

/* ------------------------------------------------------- wakes, activity -- */

/* Percent-encodes a path segment (adapter names are DNS labels, but a
 * Hugging Face style "org/name" must not become two segments). */
static void path_escape(brix_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            brix_buf_append_char(b, (char)c);
        } else {
            char e[3] = { '%', hex[c >> 4], hex[c & 15] };
            brix_buf_append(b, e, 3);
        }
    }
}

static void wake_call_free(wake_call_t *wc)
{
    brix_free(wc->target);
    brix_free(wc);
}

static void on_wake_done(const brix_curl_result_t *r, void *ud)
{
    wake_call_t *wc = ud;
    brix_gw_watch_t *w = wc->w;
    if (wc->prev)
        wc->prev->next = wc->next;
    else
        w->wakes = wc->next;
    if (wc->next)
        wc->next->prev = wc->prev;
    brix_gw_demand_sent(&w->gw->demand, wc->kind, wc->name);
    const char *what = wc->kind == BRIX_HOLD_MODEL ? "deployment" : "adapter";
    const char *name = wc->kind == BRIX_HOLD_MODEL ? wc->target : wc->name;
    if (r->status == 200 || r->status == 202)
        BRIX_DEBUG("controller: wake of %s %s accepted: %.200s", what, name, r->body);
    else if (refused(w, r->status, "a wake"))
        ;
    else if (r->status == 404)
        BRIX_WARN("controller does not know %s %s (wake answered 404)", what, name);
    else if (r->error)
        BRIX_DEBUG("controller: wake of %s %s failed: %s", what, name, r->error);
    else
        BRIX_WARN("controller: wake of %s %s answered %ld: %.200s", what, name, r->status, r->body);
    wake_call_free(wc);
}

/* POSTs one wake: URL/v1/adapters/NAME/wake for an adapter, or
 * URL/v1/deployments/NAME/wake for the deployment the newest snapshot names
 * for a model (none any more: nothing to wake; the held requests find out
 * with the next view). */
static void send_wake(brix_gw_watch_t *w, const brix_gw_wake_t *wk)
{
    const char *target = wk->name;
    if (wk->kind == BRIX_HOLD_MODEL) {
        const brix_reg_deployment_t *d = brix_registry_deployment_for(w->registry, wk->name);
        if (!d) {
            brix_gw_demand_sent(&w->gw->demand, wk->kind, wk->name);
            return;
        }
        target = d->name;
    }
    size_t nl = strlen(wk->name);
    wake_call_t *wc = brix_calloc(1, sizeof *wc + nl + 1);
    brix_buf_t url = BRIX_BUF_INIT;
    brix_buf_append_str(&url, w->url);
    brix_buf_append_str(&url, wk->kind == BRIX_HOLD_MODEL ? "/v1/deployments/" : "/v1/adapters/");
    path_escape(&url, target);
    brix_buf_append_str(&url, "/wake");
    if (wc) {
        wc->w = w;
        wc->kind = wk->kind;
        memcpy(wc->name, wk->name, nl + 1);
        wc->target = brix_strdup(target);
    }
    if (!wc || !wc->target || !url.data ||
        brix_curl_request(w->curl, "POST", url.data, "{}", 2, "application/json", CALL_TIMEOUT_MS,
                          1 << 16, on_wake_done, wc)) {
        brix_gw_demand_sent(&w->gw->demand, wk->kind, wk->name);
        if (wc)
            wake_call_free(wc);
    } else {
        wc->next = w->wakes;
        if (w->wakes)
            w->wakes->prev = wc;
        w->wakes = wc;
        if (wk->kind == BRIX_HOLD_MODEL) {
            brix_metric_add(brix_gw_metric1(w->gw->m.deployment_wakes, target), 1);
            BRIX_INFO("waking deployment %s (requests are waiting for model %s, which has no "
                      "ready replica)",
                      target, wk->name);
        } else {
            brix_metric_add(brix_gw_metric1(w->gw->m.adapter_wakes, wk->name), 1);
            BRIX_INFO("waking adapter %s (requests are waiting for it)", wk->name);
        }
    }
    brix_buf_free(&url);
}

static void send_wakes(brix_gw_watch_t *w)
{
    if (w->stopping)
        return;
    brix_gw_wake_t due[MAX_WAKES_PER_TICK];
    size_t n =
        brix_gw_demand_due(&w->gw->demand, brix_now_ns(), WAKE_EVERY_NS, due, MAX_WAKES_PER_TICK);
    for (size_t i = 0; i < n; i++) {
        send_wake(w, &due[i]);
        brix_free(due[i].name);
    }
}

static void on_kick(void *ud)
{
    send_wakes(ud);
}

brix_model_activity_t *brix_gw_watch_activity(brix_gw_watch_t *w, const char *name)
{
    for (size_t i = 0; i < w->nact; i++) {
        if (!strcmp(w->act[i]->name, name)) {
            brix_model_activity_ref(w->act[i]);
            return w->act[i];
        }
    }
    size_t nl = strlen(name);
    brix_model_activity_t *a = brix_calloc(1, sizeof *a + nl + 1);
    brix_model_activity_t **v = brix_realloc(w->act, (w->nact + 1) * sizeof *v);
    if (!a || !v) {
        brix_free(a);
        if (v)
            w->act = v;
        return NULL;
    }
    w->act = v;
    memcpy(a->name, name, nl + 1);
    atomic_init(&a->refs, 2); /* ours and the caller's */
    w->act[w->nact++] = a;
    return a;
}

static void on_activity_done(const brix_curl_result_t *r, void *ud)
{
    brix_gw_watch_t *w = ud;
    w->activity_busy = false;
    bool ok = r->status >= 200 && r->status < 300;
    brix_metric_add(ok ? w->gw->m.ctl_activity_ok : w->gw->m.ctl_activity_failed, 1);
    refused(w, r->status, "an activity report");
    if (!ok)
        BRIX_DEBUG("controller: activity report failed: %s",
                   r->error ? r->error : "unexpected status");
}

/* One model's load figures: {"requests":R,"promptTokens":P,...}. */
static bool add_load(cJSON *load, const brix_model_activity_t *a)
{
    cJSON *o = cJSON_AddObjectToObject(load, a->name);
    long long inflight = atomic_load_explicit(&a->inflight, memory_order_relaxed);
    long long held = atomic_load_explicit(&a->held, memory_order_relaxed);
    return o &&
           cJSON_AddNumberToObject(
               o, "requests", (double)atomic_load_explicit(&a->requests, memory_order_relaxed)) &&
           cJSON_AddNumberToObject(
               o, "promptTokens",
               (double)atomic_load_explicit(&a->prompt_tokens, memory_order_relaxed)) &&
           cJSON_AddNumberToObject(
               o, "completionTokens",
               (double)atomic_load_explicit(&a->completion_tokens, memory_order_relaxed)) &&
           cJSON_AddNumberToObject(
               o, "offeredPromptTokens",
               (double)atomic_load_explicit(&a->offered_prompt_tokens, memory_order_relaxed)) &&
           /* the gauges are read apart from their updates: never negative */
           cJSON_AddNumberToObject(o, "inflight", (double)(inflight > 0 ? inflight : 0)) &&
           cJSON_AddNumberToObject(o, "held", (double)(held > 0 ? held : 0));
}

/* Every tick, whatever changed (the controller reads silence as "metrics
 * unavailable"): {"gateway":ID, "models":{NAME:routed since the last
 * report}, "load":{BASE:{...}}} with a load entry for each base model the
 * newest snapshot knows — never for a name only a client has used. */
static void report_activity(brix_gw_watch_t *w)
{
    if (w->activity_busy)
        return; /* counts keep adding up for the next report */
    cJSON *root = cJSON_CreateObject();
    cJSON *models = root ? cJSON_AddObjectToObject(root, "models") : NULL;
    cJSON *load = models ? cJSON_AddObjectToObject(root, "load") : NULL;
    bool ok = load && cJSON_AddStringToObject(root, "gateway", w->id);
    size_t j = 0;
    for (size_t i = 0; i < w->nact; i++) {
        brix_model_activity_t *a = w->act[i];
        long long n = ok ? atomic_exchange(&a->routed, 0) : 0;
        if (n > 0 && !cJSON_AddNumberToObject(models, a->name, (double)n))
            ok = false;
        if (n <= 0 && atomic_load(&a->refs) == 1) {
            brix_model_activity_unref(a); /* no snapshot names it any more */
            continue;
        }
        w->act[j++] = a;
    }
    w->nact = j;
    const brix_registry_t *reg = w->registry;
    for (size_t i = 0; ok && reg && reg->base_load && i < reg->nbase_models; i++)
        if (reg->base_load[i] && !add_load(load, reg->base_load[i]))
            ok = false;
    char *body = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!body)
        return;
    char url[1024];
    snprintf(url, sizeof url, "%s/v1/activity", w->url);
    if (brix_curl_request(w->curl, "POST", url, body, strlen(body), "application/json",
                          CALL_TIMEOUT_MS, 1 << 16, on_activity_done, w) == 0)
        w->activity_busy = true;
    cJSON_free(body);
}

static void on_tick(uv_timer_t *t)
{
    brix_gw_watch_t *w = t->data;
    report_activity(w);
    send_wakes(w);
}

/* ----------------------------------------------------------- lifecycle -- */

static int set_url(brix_gw_watch_t *w)
{
    const brix_gw_cfg_t *c = &w->gw->cfg;
    size_t n = strlen(c->controller);
    while (n && c->controller[n - 1] == '/')
        n--;
    char *u = brix_strndup(c->controller, n);
    if (!u)
        return -1;
    brix_free(w->url);
    w->url = u;
    const char *token = c->controller_token;
    return brix_curl_set_bearer(w->curl, token);
}

brix_gw_watch_t *brix_gw_watch_start(brix_gw_t *gw, brix_gw_watch_apply_fn apply, void *ud)
{
    brix_gw_watch_t *w = brix_calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->gw = gw;
    w->apply = apply;
    w->ud = ud;
    w->backoff_ms = BACKOFF_MIN_MS;
    /* the controller tells gateways apart (and a restarted one from the
     * old) by this id; it needs to be unlikely to repeat, not secret */
    uint64_t id = 0;
    if (RAND_bytes((unsigned char *)&id, sizeof id) != 1)
        id = brix_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)w;
    snprintf(w->id, sizeof w->id, "%016llx", (unsigned long long)id);
    brix_lines_init(&w->lines, MAX_LINE);
    if (!(w->curl = brix_curl_new(gw->loop)) || set_url(w)) {
        if (w->curl)
            brix_curl_close(w->curl);
        brix_free(w->url);
        brix_free(w);
        return NULL;
    }
    uv_timer_t *timers[] = { &w->idle_timer, &w->retry_timer, &w->tick_timer };
    for (size_t i = 0; i < 3; i++) {
        uv_timer_init(gw->loop, timers[i]);
        timers[i]->data = w;
        w->open_handles++;
    }
    uint64_t tick = w->gw->cfg.controller_report_interval > 0
                        ? (uint64_t)w->gw->cfg.controller_report_interval
                        : TICK_MS;
    uv_timer_start(&w->tick_timer, on_tick, tick, tick);
    gw->demand.kick_ud = w;
    gw->demand.on_kick = on_kick;
    set_connected(w, false);
    BRIX_INFO("discovering engines from the controller at %s", w->url);
    connect_now(w);
    return w;
}

void brix_gw_watch_reconfigure(brix_gw_watch_t *w)
{
    const brix_gw_cfg_t *c = &w->gw->cfg;
    size_t n = strlen(c->controller);
    while (n && c->controller[n - 1] == '/')
        n--;
    bool same = strlen(w->url) == n && !strncmp(w->url, c->controller, n);
    if (set_url(w))
        BRIX_ERROR("controller: out of memory applying the new settings");
    if (same)
        return; /* a new token applies to the next request (and reconnect) */
    BRIX_INFO("controller URL changed to %s: reconnecting", w->url);
    w->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_stop(&w->retry_timer);
    if (w->xfer) {
        brix_curl_cancel(w->curl, w->xfer);
        w->xfer = NULL;
    }
    w->up = false;
    set_connected(w, false);
    connect_now(w);
}

static void on_closed(uv_handle_t *h)
{
    brix_gw_watch_t *w = h->data;
    if (--w->open_handles)
        return;
    brix_registry_unref(w->registry);
    for (size_t i = 0; i < w->nact; i++)
        brix_model_activity_unref(w->act[i]);
    brix_free(w->act);
    brix_lines_free(&w->lines);
    brix_free(w->url);
    brix_free(w);
}

void brix_gw_watch_stop(brix_gw_watch_t *w)
{
    w->stopping = true;
    if (w->gw->demand.kick_ud == w) {
        w->gw->demand.on_kick = NULL;
        w->gw->demand.kick_ud = NULL;
    }
    set_connected(w, false);
    brix_curl_close(w->curl); /* aborts transfers without callbacks */
    w->xfer = NULL;
    while (w->wakes) {
        wake_call_t *wc = w->wakes;
        w->wakes = wc->next;
        brix_gw_demand_sent(&w->gw->demand, wc->kind, wc->name);
        wake_call_free(wc);
    }
    uv_close((uv_handle_t *)&w->idle_timer, on_closed);
    uv_close((uv_handle_t *)&w->retry_timer, on_closed);
    uv_close((uv_handle_t *)&w->tick_timer, on_closed);
}
