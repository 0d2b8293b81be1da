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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int parse_replicas(const cJSON *arr, brix_ctl_snapshot_t *s, brix_registry_t *reg)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    s->replicas = brix_calloc(n ? n : 1, sizeof *s->replicas);
    char **bases = brix_calloc(n ? n : 1, sizeof *bases);
    if (!s->replicas || !bases) {
        brix_free(bases);
        return -1;
    }
    size_t nb = 0;
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
        if (r.model) {
            bool have = false;
            for (size_t i = 0; i < nb && !have; i++)
                have = !strcmp(bases[i], r.model);
            if (!have && (bases[nb] = brix_strdup(r.model)))
                nb++;
        }
        s->replicas[s->nreplicas++] = r;
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
    if (!cJSON_IsArray(reps) || (ads && !cJSON_IsArray(ads))) {
        snprintf(err, errlen, "a snapshot needs \"replicas\" (and \"adapters\") arrays");
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
    int rc = parse_replicas(reps, snap, reg);
    if (!rc)
        rc = parse_adapters(ads ? ads : empty, snap, reg);
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
    char name[];
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
    wake_call_t *wakes; /* in flight */
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
        BRIX_WARN("controller snapshot %llu: %zu malformed replica/adapter entr%s left out",
                  (unsigned long long)version, snap.skipped, snap.skipped == 1 ? "y" : "ies");
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
    brix_gw_demand_sent(&w->gw->demand, wc->name);
    if (r->status == 200 || r->status == 202)
        BRIX_DEBUG("controller: wake of adapter %s accepted: %.200s", wc->name, r->body);
    else if (refused(w, r->status, "a wake"))
        ;
    else if (r->status == 404)
        BRIX_WARN("controller does not know adapter %s (wake answered 404)", wc->name);
    else if (r->error)
        BRIX_DEBUG("controller: wake of adapter %s failed: %s", wc->name, r->error);
    else
        BRIX_WARN("controller: wake of adapter %s answered %ld: %.200s", wc->name, r->status,
                  r->body);
    brix_free(wc);
}

static void send_wakes(brix_gw_watch_t *w)
{
    if (w->stopping)
        return;
    char *names[MAX_WAKES_PER_TICK];
    size_t n =
        brix_gw_demand_due(&w->gw->demand, brix_now_ns(), WAKE_EVERY_NS, names, MAX_WAKES_PER_TICK);
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        wake_call_t *wc = brix_calloc(1, sizeof *wc + nl + 1);
        brix_buf_t url = BRIX_BUF_INIT;
        brix_buf_append_str(&url, w->url);
        brix_buf_append_str(&url, "/v1/adapters/");
        path_escape(&url, names[i]);
        brix_buf_append_str(&url, "/wake");
        if (wc) {
            wc->w = w;
            memcpy(wc->name, names[i], nl + 1);
        }
        if (!wc || !url.data ||
            brix_curl_request(w->curl, "POST", url.data, "{}", 2, "application/json",
                              CALL_TIMEOUT_MS, 1 << 16, on_wake_done, wc)) {
            brix_gw_demand_sent(&w->gw->demand, names[i]);
            brix_free(wc);
        } else {
            wc->next = w->wakes;
            if (w->wakes)
                w->wakes->prev = wc;
            w->wakes = wc;
            brix_metric_add(brix_gw_metric1(w->gw->m.adapter_wakes, names[i]), 1);
            BRIX_INFO("waking adapter %s (requests are waiting for it)", names[i]);
        }
        brix_buf_free(&url);
        brix_free(names[i]);
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

static void report_activity(brix_gw_watch_t *w)
{
    if (w->activity_busy)
        return; /* counts keep adding up for the next report */
    cJSON *root = cJSON_CreateObject();
    cJSON *models = root ? cJSON_AddObjectToObject(root, "models") : NULL;
    size_t any = 0, j = 0;
    for (size_t i = 0; i < w->nact; i++) {
        brix_model_activity_t *a = w->act[i];
        long long n = models ? atomic_exchange(&a->routed, 0) : 0;
        if (n > 0 && cJSON_AddNumberToObject(models, a->name, (double)n))
            any++;
        if (n <= 0 && atomic_load(&a->refs) == 1) {
            brix_model_activity_unref(a); /* no snapshot names it any more */
            continue;
        }
        w->act[j++] = a;
    }
    w->nact = j;
    char *body = any ? cJSON_PrintUnformatted(root) : NULL;
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
    uv_timer_start(&w->tick_timer, on_tick, TICK_MS, TICK_MS);
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
        brix_gw_demand_sent(&w->gw->demand, wc->name);
        brix_free(wc);
    }
    uv_close((uv_handle_t *)&w->idle_timer, on_closed);
    uv_close((uv_handle_t *)&w->retry_timer, on_closed);
    uv_close((uv_handle_t *)&w->tick_timer, on_closed);
}
