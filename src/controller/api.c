/*
 * api — the controller's HTTP API (default 127.0.0.1:8081).
 *
 *   POST   /v1/apply                     YAML or JSON documents, all or nothing
 *   GET    /v1/{deployments|adapters|replicas}[/NAME]
 *   DELETE /v1/{deployments|adapters}/NAME   (replicas/NAME restarts one)
 *   GET    /v1/watch                     NDJSON stream: a snapshot on every change
 *   POST   /v1/adapters/NAME/wake        a gateway holds a request for it
 *   POST   /v1/activity                  {"models":{"NAME":count}} from gateways
 *   POST   /v1/login                     a one-time status page link
 *   GET    /login?code=…                 trades that link for a session cookie
 *   GET    /  /healthz  /readyz  /metrics
 *
 * Every path but /healthz and /readyz passes admitted() first: the Host must
 * be an address of this controller (DNS rebinding), the request must carry
 * the bearer token (reads may use the status page's cookie instead), and a
 * body must be JSON or YAML (a cross-origin no-cors request cannot send
 * those types). The handlers below can assume all three.
 *
 * Kind names in paths accept the same aliases as `brix get`. Errors are
 * OpenAI-style JSON like every brix API. The watch protocol is pinned with the
 * gateway (src/gateway/watch.c): one JSON object per line, type "snapshot"
 * (full state) or "heartbeat" (every 5 s).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <openssl/rand.h>

#include "controller/ctl.h"
#include "core/alloc.h"
#include "core/http_host.h"
#include "core/json.h"
#include "core/log.h"
#include "core/secret.h"
#include "core/time.h"

/* ---------------------------------------------------------- rendering -- */

static int jkv(brix_buf_t *b, const char *k, const char *v)
{
    return brix_buf_printf(b, "\"%s\":", k) | brix_buf_append_json_str(b, v, strlen(v));
}

static int render_replica(brix_ctl_t *c, brix_buf_t *b, const brix_replica_t *r)
{
    char ts[32];
    int rc = brix_buf_append_str(b, "{\"apiVersion\":\"brix.dev/v1alpha1\",\"kind\":\"Replica\",");
    rc |= brix_buf_append_str(b, "\"metadata\":{") | jkv(b, "name", r->name);
    rc |= brix_buf_append_str(b, ",\"labels\":") | brix_labels_json(b, &r->labels);
    rc |= brix_buf_append_str(b, "},\"spec\":{") | jkv(b, "deployment", r->deployment);
    rc |= brix_buf_append_char(b, ',') | jkv(b, "model", r->model);
    rc |= brix_buf_append_str(b, ",\"command\":") | brix_auth_redact_json(b, &r->argv);
    rc |= brix_buf_append_str(b, "},\"status\":{") |
          jkv(b, "phase", r->draining ? "Draining" : brix_replica_phase_name(r->phase));
    rc |= brix_buf_printf(b, ",\"ready\":%s,\"url\":", r->ready ? "true" : "false");
    rc |= brix_buf_append_json_str(b, r->url, strlen(r->url));
    rc |= brix_buf_printf(b, ",\"port\":%d,\"pid\":%d,\"restarts\":%d,\"adopted\":%s", r->port,
                          r->pid, r->restarts, r->adopted ? "true" : "false");
    if (r->started_wall_ms) {
        brix_time_iso8601(ts, r->started_wall_ms);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "startTime", ts);
    }
    if (r->last_exit[0])
        rc |= brix_buf_append_char(b, ',') | jkv(b, "lastExit", r->last_exit);
    if (r->log_path)
        rc |= brix_buf_append_char(b, ',') | jkv(b, "log", r->log_path);
    const brix_obj_t *d = brix_ctl_deploy(c, r->deployment);
    if (d)
        rc |= brix_buf_printf(b, ",\"adapterCapacity\":%lld", (long long)d->d.adapter_capacity);
    rc |= brix_buf_append_str(b, ",\"adapters\":[");
    for (size_t i = 0; i < r->adapters.n; i++)
        rc |= (i ? brix_buf_append_char(b, ',') : 0) |
              brix_buf_append_json_str(b, r->adapters.v[i], strlen(r->adapters.v[i]));
    return rc | brix_buf_append_str(b, "]}}");
}

static int render_deploy(brix_ctl_t *c, brix_buf_t *b, const brix_obj_t *d)
{
    int total = 0, ready = 0, updated = 0;
    for (size_t i = 0; i < c->nreps; i++) {
        const brix_replica_t *r = c->reps[i];
        if (strcmp(r->deployment, d->meta.name))
            continue;
        total++;
        ready += r->phase == BRIX_RP_RUNNING && r->ready;
        updated += r->generation == d->meta.generation && r->pid > 0;
    }
    int rc = brix_obj_json_open_redacted(b, d);
    const brix_pa_rt_t *pa = brix_ctl_pa_for(c, d->meta.name);
    if (pa) /* the scale an autoscaler set, and which one */
        rc |= brix_buf_append_str(b, ",\"status\":{") | jkv(b, "autoscaler", pa->o->meta.name) |
              brix_buf_append_char(b, ',');
    else
        rc |= brix_buf_append_str(b, ",\"status\":{");
    rc |= brix_buf_printf(b,
                          "\"desiredReplicas\":%lld,\"replicas\":%d,\"readyReplicas\":%d,"
                          "\"updatedReplicas\":%d,\"phase\":\"%s\"}}",
                          (long long)brix_ctl_deploy_want(c, d), total, ready, updated,
                          d->meta.deleting_ms                   ? "Terminating"
                          : ready >= brix_ctl_deploy_want(c, d) ? "Running"
                                                                : "Progressing");
    return rc;
}

int brix_ctl_render_conds(brix_buf_t *b, const brix_cond_t *v, int n)
{
    char ts[32];
    int rc = brix_buf_append_char(b, '['), k = 0;
    for (int i = 0; i < n; i++) {
        const brix_cond_t *cd = &v[i];
        if (!cd->type)
            continue;
        brix_time_iso8601(ts, cd->since_wall_ms);
        rc |= brix_buf_append_str(b, k++ ? ",{" : "{") | jkv(b, "type", cd->type);
        rc |= brix_buf_printf(b, ",\"status\":\"%s\",", cd->status ? "True" : "False");
        rc |= jkv(b, "reason", cd->reason) | brix_buf_append_char(b, ',');
        rc |= jkv(b, "message", cd->message) | brix_buf_append_char(b, ',');
        rc |= jkv(b, "lastTransitionTime", ts) | brix_buf_append_char(b, '}');
    }
    return rc | brix_buf_append_char(b, ']');
}

static int render_adapter(brix_ctl_t *c, brix_buf_t *b, const brix_adapter_rt_t *a)
{
    char ts[32];
    int rc = brix_obj_json_open_redacted(b, a->o);
    rc |=
        brix_buf_append_str(b, ",\"status\":{") | jkv(b, "phase", a->phase ? a->phase : "Pending");
    rc |= brix_buf_printf(b, ",\"candidates\":%d,\"desiredReplicas\":%d,\"readyReplicas\":%d,",
                          a->candidates, a->desired, a->ready);
    rc |= brix_buf_append_str(b, "\"instances\":[");
    int k = 0;
    for (size_t i = 0; i < c->nreps; i++) {
        const brix_replica_t *r = c->reps[i];
        if (r->phase == BRIX_RP_RUNNING && brix_ctl_replica_has(r, a->o->meta.name))
            rc |= (k++ ? brix_buf_append_char(b, ',') : 0) |
                  brix_buf_append_json_str(b, r->name, strlen(r->name));
    }
    rc |= brix_buf_append_str(b, "],\"conditions\":") |
          brix_ctl_render_conds(b, a->conds, BRIX_ADAPTER_CONDS);
    static const char *const art[] = { "Pending", "Fetching", "Ready", "Failed" };
    rc |= brix_buf_append_str(b, ",\"artifact\":{") | jkv(b, "phase", art[a->art]);
    if (a->art_path)
        rc |= brix_buf_append_char(b, ',') | jkv(b, "path", a->art_path);
    if (a->art == BRIX_ARTS_FAILED)
        rc |= brix_buf_append_char(b, ',') | jkv(b, "reason", a->art_reason) |
              brix_buf_append_char(b, ',') | jkv(b, "message", a->art_msg);
    rc |= brix_buf_append_char(b, '}');
    if (a->last_used_wall) {
        brix_time_iso8601(ts, a->last_used_wall);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "lastRequestTime", ts);
    }
    return rc | brix_buf_append_str(b, "}}");
}

int brix_ctl_render(brix_ctl_t *c, brix_buf_t *b, brix_kind_t kind, const char *name)
{
    int rc = 0, found = 0;
    if (!name)
        rc |= brix_buf_append_str(b, "{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[");
    size_t n = kind == BRIX_KIND_DEPLOYMENT   ? c->ndeploys
               : kind == BRIX_KIND_ADAPTER    ? c->nadapters
               : kind == BRIX_KIND_AUTOSCALER ? c->npas
                                              : c->nreps;
    for (size_t i = 0; i < n; i++) {
        const char *nm = kind == BRIX_KIND_DEPLOYMENT   ? c->deploys[i]->meta.name
                         : kind == BRIX_KIND_ADAPTER    ? c->adapters[i]->o->meta.name
                         : kind == BRIX_KIND_AUTOSCALER ? c->pas[i]->o->meta.name
                                                        : c->reps[i]->name;
        if (name && strcmp(name, nm))
            continue;
        if (found++)
            rc |= brix_buf_append_char(b, ',');
        rc |= kind == BRIX_KIND_DEPLOYMENT   ? render_deploy(c, b, c->deploys[i])
              : kind == BRIX_KIND_ADAPTER    ? render_adapter(c, b, c->adapters[i])
              : kind == BRIX_KIND_AUTOSCALER ? brix_ctl_render_pa(c, b, c->pas[i])
                                             : render_replica(c, b, c->reps[i]);
    }
    if (!name)
        rc |= brix_buf_append_str(b, "]}");
    if (rc)
        return -ENOMEM;
    return name && !found ? -ENOENT : 0;
}

/* ------------------------------------------------------------- watch -- */

static int render_watch(brix_ctl_t *c, brix_buf_t *b)
{
    int rc = brix_buf_printf(b, "{\"type\":\"snapshot\",\"version\":%llu,\"replicas\":[",
                             (unsigned long long)c->version);
    for (size_t i = 0; i < c->nreps; i++) {
        const brix_replica_t *r = c->reps[i];
        rc |= brix_buf_append_str(b, i ? ",{" : "{") | jkv(b, "name", r->name);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "deployment", r->deployment);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "model", r->model);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "url", r->url);
        rc |= brix_buf_append_char(b, ',') |
              jkv(b, "phase", r->draining ? "Draining" : brix_replica_phase_name(r->phase));
        rc |= brix_buf_printf(b, ",\"ready\":%s,\"labels\":",
                              r->phase == BRIX_RP_RUNNING && r->ready && !r->draining ? "true"
                                                                                      : "false");
        rc |= brix_labels_json(b, &r->labels) | brix_buf_append_str(b, ",\"adapters\":[");
        int k = 0; /* what gateways may route there: loaded, and not being drained */
        for (size_t j = 0; j < r->adapters.n; j++)
            if (!brix_ctl_draining(c, r, r->adapters.v[j]))
                rc |= (k++ ? brix_buf_append_char(b, ',') : 0) |
                      brix_buf_append_json_str(b, r->adapters.v[j], strlen(r->adapters.v[j]));
        rc |= brix_buf_append_str(b, "]}");
    }
    rc |= brix_buf_append_str(b, "],\"adapters\":[");
    int listed = 0;
    for (size_t i = 0; i < c->nadapters; i++) {
        const brix_adapter_rt_t *a = c->adapters[i];
        if (a->o->meta.deleting_ms)
            continue;
        rc |= brix_buf_append_str(b, listed++ ? ",{" : "{") | jkv(b, "name", a->o->meta.name);
        const char *base = a->o->a.base_model;
        if (!base) /* AIBrix allows no baseModel: take the selector's model name */
            base = brix_labels_get(&a->o->a.selector, "model.aibrix.ai/name");
        rc |= brix_buf_append_str(b, ",\"baseModel\":");
        rc |=
            base ? brix_buf_append_json_str(b, base, strlen(base)) : brix_buf_append_str(b, "null");
        rc |= brix_buf_append_char(b, ',') | jkv(b, "phase", a->phase ? a->phase : "Pending");
        rc |= brix_buf_append_str(b, ",\"instances\":[");
        int k = 0;
        for (size_t j = 0; j < c->nreps; j++)
            if (c->reps[j]->phase == BRIX_RP_RUNNING &&
                brix_ctl_replica_has(c->reps[j], a->o->meta.name))
                rc |= (k++ ? brix_buf_append_char(b, ',') : 0) |
                      brix_buf_append_json_str(b, c->reps[j]->name, strlen(c->reps[j]->name));
        rc |= brix_buf_append_str(b, "]}");
    }
    /* the deployments and the scale each runs now: a gateway holds requests
     * for a model scaled to zero instead of answering 404 */
    rc |= brix_buf_append_str(b, "],\"deployments\":[");
    listed = 0;
    for (size_t i = 0; i < c->ndeploys; i++) {
        const brix_obj_t *d = c->deploys[i];
        if (d->meta.deleting_ms)
            continue;
        int ready = 0;
        for (size_t j = 0; j < c->nreps; j++)
            ready += !strcmp(c->reps[j]->deployment, d->meta.name) &&
                     c->reps[j]->phase == BRIX_RP_RUNNING && c->reps[j]->ready &&
                     !c->reps[j]->draining;
        const brix_pa_rt_t *pa = brix_ctl_pa_for(c, d->meta.name);
        rc |= brix_buf_append_str(b, listed++ ? ",{" : "{") | jkv(b, "name", d->meta.name);
        rc |= brix_buf_append_char(b, ',') | jkv(b, "model", d->d.model);
        rc |= brix_buf_printf(b, ",\"replicas\":%lld,\"ready\":%d,\"scaleToZero\":%s",
                              (long long)brix_ctl_deploy_want(c, d), ready,
                              pa && pa->o->pa.params.scale_to_zero ? "true" : "false");
        /* its replicas share the brix kvcache: gateways count store-resident
         * prefix blocks when routing */
        rc |= brix_buf_printf(b, ",\"kvStore\":%s}",
                              d->d.kv_cache && c->cfg.kvcache_servers ? "true" : "false");
    }
    return rc | brix_buf_append_str(b, "]}\n");
}

static void drop_watcher(brix_ctl_t *c, brix_http_req_t *h)
{
    for (size_t i = 0; i < c->nwatchers; i++) {
        if (c->watchers[i] == h) {
            c->watchers[i] = c->watchers[--c->nwatchers];
            break;
        }
    }
    brix_metric_set(c->m.watchers, (double)c->nwatchers);
}

static void on_watch_abort(brix_http_req_t *h, void *ud)
{
    drop_watcher(ud, h);
}

/* Writes to every watcher; a watcher whose write fails is dropped (its
 * on_abort runs inside the failing call). */
static void broadcast(brix_ctl_t *c, const brix_buf_t *b)
{
    for (size_t i = c->nwatchers; i-- > 0;) {
        if (i >= c->nwatchers)
            continue;
        brix_http_req_t *h = c->watchers[i];
        if (brix_http_write_queue_bytes(h) > (8u << 20)) { /* a stuck reader */
            brix_http_abort(h);
            continue;
        }
        brix_http_stream_write(h, b->data, b->len);
    }
}

void brix_ctl_notify_watchers(brix_ctl_t *c)
{
    if (c->sent_version == c->version || !c->nwatchers) {
        c->sent_version = c->version;
        return;
    }
    c->sent_version = c->version;
    brix_buf_t b = BRIX_BUF_INIT;
    if (!render_watch(c, &b))
        broadcast(c, &b);
    brix_buf_free(&b);
}

void brix_ctl_heartbeat(brix_ctl_t *c)
{
    brix_buf_t b = BRIX_BUF_INIT;
    if (!brix_buf_printf(&b, "{\"type\":\"heartbeat\",\"version\":%llu}\n",
                         (unsigned long long)c->version))
        broadcast(c, &b);
    brix_buf_free(&b);
}

void brix_ctl_close_watchers(brix_ctl_t *c)
{
    while (c->nwatchers) {
        brix_http_req_t *h = c->watchers[--c->nwatchers];
        h->on_abort = NULL;
        brix_http_stream_end(h);
    }
    brix_free(c->watchers);
    c->watchers = NULL;
}

static void handle_watch(brix_ctl_t *c, brix_http_req_t *h)
{
    if (c->stopping) {
        brix_http_respond_error(h, 503, NULL, "shutting_down", NULL, "the controller is stopping");
        return;
    }
    if (c->nwatchers >= (size_t)c->cfg.max_watchers) {
        brix_http_respond_error(h, 503, NULL, "too_many_watchers", NULL,
                                "%zu watchers already (--max-watchers)", c->nwatchers);
        return;
    }
    brix_http_req_t **v = brix_realloc(c->watchers, (c->nwatchers + 1) * sizeof *v);
    if (!v) {
        brix_http_respond_error(h, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    c->watchers = v;
    brix_buf_t b = BRIX_BUF_INIT;
    if (render_watch(c, &b) || brix_http_add_header(h, "cache-control", "no-cache") ||
        brix_http_stream_start(h, 200, "application/x-ndjson")) {
        brix_buf_free(&b);
        brix_http_respond_error(h, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    h->ud = c;
    h->on_abort = on_watch_abort;
    c->watchers[c->nwatchers++] = h;
    brix_metric_set(c->m.watchers, (double)c->nwatchers);
    brix_http_stream_write(h, b.data, b.len); /* may abort and drop it */
    brix_buf_free(&b);
}

/* ------------------------------------------------------------- apply -- */

static brix_meta_t *obj_meta(brix_ctl_t *c, brix_kind_t kind, const char *name)
{
    if (kind == BRIX_KIND_DEPLOYMENT && brix_ctl_deploy(c, name))
        return &brix_ctl_deploy(c, name)->meta;
    if (kind == BRIX_KIND_ADAPTER && brix_ctl_adapter(c, name))
        return &brix_ctl_adapter(c, name)->o->meta;
    if (kind == BRIX_KIND_AUTOSCALER && brix_ctl_pa(c, name))
        return &brix_ctl_pa(c, name)->o->meta;
    return NULL;
}

int brix_ctl_apply(brix_ctl_t *c, const char *source, const char *base_dir, const char *text,
                   size_t len, brix_buf_t *result, char *err, size_t errlen)
{
    brix_yaml_node_t *docs;
    if (brix_yaml_parse_docs(source, text, len, &docs, err, errlen))
        return -EINVAL;
    int rc = -EINVAL;
    brix_obj_t **objs = brix_calloc(docs->n + 1, sizeof *objs);
    size_t nobjs = 0;
    if (!objs) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    /* validate everything first: nothing is applied unless all of it is valid */
    for (size_t i = 0; i < docs->n; i++) {
        brix_obj_t *o;
        if (brix_obj_parse(docs->items[i], source, base_dir, &o, err, errlen))
            goto out;
        if (o->kind == BRIX_KIND_CLUSTER) { /* brix up's settings: not an object */
            brix_obj_free(o);
            continue;
        }
        for (size_t j = 0; j < nobjs; j++) {
            if (objs[j]->kind == o->kind && !strcmp(objs[j]->meta.name, o->meta.name)) {
                snprintf(err, errlen, "%s:%d:%d: %s '%s' appears twice", source,
                         docs->items[i]->line, docs->items[i]->col, brix_kind_name(o->kind),
                         o->meta.name);
                brix_obj_free(o);
                goto out;
            }
        }
        const brix_meta_t *old = obj_meta(c, o->kind, o->meta.name);
        if (old && old->deleting_ms) {
            snprintf(err, errlen,
                     "%s:%d:%d: %s '%s' is being deleted; apply it again when it is gone", source,
                     docs->items[i]->line, docs->items[i]->col, brix_kind_name(o->kind),
                     o->meta.name);
            brix_obj_free(o);
            rc = -EBUSY;
            goto out;
        }
        /* a command runs as the controller's user: only the operator allows that,
         * never the API on its own (the token may be in a gateway's hands) */
        if (o->kind == BRIX_KIND_DEPLOYMENT && o->d.command.n && !c->cfg.allow_engine_commands) {
            snprintf(err, errlen,
                     "%s:%d:%d: ModelDeployment '%s': spec.engine.command is not allowed by this "
                     "controller: it runs only the built-in engine-sim unless started with "
                     "--allow-engine-commands (brix up: when its own file has engine commands)",
                     source, docs->items[i]->line, docs->items[i]->col, o->meta.name);
            brix_obj_free(o);
            rc = -EPERM;
            goto out;
        }
        /* one autoscaler per deployment: two would fight over its scale */
        if (o->kind == BRIX_KIND_AUTOSCALER) {
            const char *clash = NULL;
            for (size_t j = 0; j < c->npas && !clash; j++)
                if (!c->pas[j]->o->meta.deleting_ms &&
                    strcmp(c->pas[j]->o->meta.name, o->meta.name) &&
                    !strcmp(c->pas[j]->o->pa.target_name, o->pa.target_name))
                    clash = c->pas[j]->o->meta.name;
            for (size_t j = 0; j < nobjs && !clash; j++)
                if (objs[j]->kind == BRIX_KIND_AUTOSCALER &&
                    !strcmp(objs[j]->pa.target_name, o->pa.target_name))
                    clash = objs[j]->meta.name;
            if (clash) {
                snprintf(err, errlen,
                         "%s:%d:%d: PodAutoscaler '%s': spec.scaleTargetRef.name: %s is already "
                         "scaled by PodAutoscaler '%s' (one autoscaler per deployment)",
                         source, docs->items[i]->line, docs->items[i]->col, o->meta.name,
                         o->pa.target_name, clash);
                brix_obj_free(o);
                goto out;
            }
        }
        /* AIBrix logs and ignores autoscaling annotations it does not read
         * (old names such as …/up-fluctuation-tolerance): so does brix */
        for (size_t j = 0; o->kind == BRIX_KIND_AUTOSCALER && j < o->meta.annotations.n; j++)
            if (brix_pa_annotation_unknown(o->meta.annotations.k[j]))
                BRIX_WARN("PodAutoscaler %s: annotation %s is not one brix reads; ignored",
                          o->meta.name, o->meta.annotations.k[j]);
        o->meta.deleting_ms = 0; /* the controller's fields are not taken from input */
        o->meta.generation = 0;
        objs[nobjs++] = o;
    }
    if (!nobjs) {
        snprintf(err, errlen, "%s: no ModelDeployment, ModelAdapter or PodAutoscaler documents",
                 source);
        goto out;
    }
    brix_buf_append_str(result, "{\"items\":[");
    uint64_t wall = brix_wall_ms();
    for (size_t i = 0; i < nobjs; i++) {
        brix_obj_t *o = objs[i];
        const char *what;
        brix_obj_t **slot = NULL;
        brix_adapter_rt_t *a = NULL;
        brix_pa_rt_t *pa = NULL;
        if (o->kind == BRIX_KIND_DEPLOYMENT) {
            for (size_t j = 0; j < c->ndeploys && !slot; j++)
                if (!strcmp(c->deploys[j]->meta.name, o->meta.name))
                    slot = &c->deploys[j];
        } else if (o->kind == BRIX_KIND_AUTOSCALER) {
            if ((pa = brix_ctl_pa(c, o->meta.name)))
                slot = &pa->o;
        } else if ((a = brix_ctl_adapter(c, o->meta.name))) {
            slot = &a->o;
        }
        if (slot && brix_obj_same(*slot, o)) {
            what = "unchanged";
            brix_obj_free(o);
            o = *slot;
        } else if (slot) {
            what = "configured";
            bool spec_changed = !brix_obj_spec_same(*slot, o);
            o->meta.created_ms = (*slot)->meta.created_ms;
            o->meta.generation = (*slot)->meta.generation + (spec_changed ? 1 : 0);
            brix_obj_free(*slot);
            *slot = o;
            if (a && spec_changed) /* a new spec: serve it now, not after an old TTL */
                a->last_used_wall = wall, a->scaled = false;
            if (pa && spec_changed && strcmp(pa->o->pa.target_name, o->pa.target_name))
                pa->scale = -1; /* a new target: take over from what runs there */
            if (o->kind == BRIX_KIND_DEPLOYMENT && !spec_changed) /* labels: in place */
                for (size_t j = 0; j < c->nreps; j++)
                    if (!strcmp(c->reps[j]->deployment, o->meta.name) && c->reps[j]->port > 0)
                        brix_ctl_replica_labels(c->reps[j], o);
        } else {
            what = "created";
            o->meta.created_ms = wall;
            o->meta.generation = 1;
            brix_adapter_rt_t *na = NULL;
            int arc = brix_ctl_add(c, o, &na);
            if (na)
                na->last_used_wall = wall;
            if (arc) {
                brix_obj_free(o);
                o = NULL;
                what = "failed (out of memory)";
            }
        }
        objs[i] = NULL;
        BRIX_INFO("apply: %s/%s %s", brix_kind_name(o ? o->kind : BRIX_KIND_NONE),
                  o ? o->meta.name : "?", what);
        if (o) {
            brix_buf_printf(result, "%s{\"kind\":\"%s\",\"name\":", i ? "," : "",
                            brix_kind_name(o->kind));
            brix_buf_append_json_str(result, o->meta.name, strlen(o->meta.name));
            brix_buf_printf(result, ",\"result\":\"%s\"}", what);
        }
    }
    brix_buf_append_str(result, "]}");
    brix_ctl_changed(c);
    brix_ctl_kick(c);
    rc = 0;
    if (brix_ctl_save(c)) { /* applied in memory; say that it is not durable yet */
        snprintf(err, errlen, "applied, but the state file could not be written (see the log)");
        rc = -EIO;
    } else {
        c->dirty = false;
    }
out:
    for (size_t i = 0; objs && i < nobjs; i++)
        brix_obj_free(objs[i]);
    brix_free(objs);
    brix_yaml_free(docs);
    return rc;
}

/* ---------------------------------------------------------- handlers -- */

static void respond_json(brix_http_req_t *h, int status, brix_buf_t *b)
{
    brix_http_respond(h, status, "application/json", b->data ? b->data : "{}",
                      b->data ? b->len : 2);
    brix_buf_free(b);
}

static void handle_apply(brix_ctl_t *c, brix_http_req_t *h)
{
    const char *src = brix_http_req_header(h, "x-brix-source");
    const char *dir = brix_http_req_header(h, "x-brix-base-dir");
    if (dir && dir[0] != '/')
        dir = NULL;
    char err[1024] = "";
    brix_buf_t out = BRIX_BUF_INIT;
    int rc = brix_ctl_apply(c, src && *src ? src : "request", dir, h->body.data ? h->body.data : "",
                            h->body.len, &out, err, sizeof err);
    if (rc) { /* the HTTP status of each outcome is decided here, at the edge */
        brix_buf_free(&out);
        int st = rc == -EBUSY ? 409 : rc == -EPERM ? 403 : rc == -EINVAL ? 400 : 500;
        const char *code = rc == -EBUSY    ? "conflict"
                           : rc == -EPERM  ? "engine_command_not_allowed"
                           : rc == -EIO    ? "state_not_saved"
                           : rc == -EINVAL ? "invalid_object"
                                           : NULL;
        if (rc == -EPERM)
            BRIX_WARN("apply refused: %s", err);
        brix_http_respond_error(h, st, NULL, code, NULL, "%s", err);
        return;
    }
    respond_json(h, 200, &out);
}

static void handle_object(brix_ctl_t *c, brix_http_req_t *h, brix_kind_t kind, const char *name)
{
    bool get = h->method == HTTP_GET, del = h->method == HTTP_DELETE;
    if (!get && !(del && name)) {
        brix_http_add_header(h, "allow", name ? "GET, DELETE" : "GET");
        brix_http_respond_error(h, 405, NULL, "method_not_allowed", NULL, "%s is not allowed here",
                                h->method_name);
        return;
    }
    if (get) {
        brix_buf_t b = BRIX_BUF_INIT;
        int rc = brix_ctl_render(c, &b, kind, name);
        if (rc == -ENOENT) {
            brix_buf_free(&b);
            brix_http_respond_error(h, 404, NULL, "not_found", NULL, "%s '%s' not found",
                                    brix_kind_name(kind), name);
        } else if (rc) {
            brix_buf_free(&b);
            brix_http_respond_error(h, 500, NULL, NULL, NULL, "out of memory");
        } else {
            respond_json(h, 200, &b);
        }
        return;
    }
    brix_meta_t *m = NULL;
    if (kind == BRIX_KIND_REPLICA) {
        brix_replica_t *r = brix_ctl_replica(c, name);
        if (!r) {
            brix_http_respond_error(h, 404, NULL, "not_found", NULL, "Replica '%s' not found",
                                    name);
            return;
        }
        brix_ctl_replica_restart(c, r);
        brix_buf_t b = BRIX_BUF_INIT;
        brix_buf_printf(&b, "{\"kind\":\"Replica\",\"name\":\"%s\",\"result\":\"restarting\"}",
                        name);
        respond_json(h, 200, &b);
        return;
    }
    m = obj_meta(c, kind, name);
    if (!m) {
        brix_http_respond_error(h, 404, NULL, "not_found", NULL, "%s '%s' not found",
                                brix_kind_name(kind), name);
        return;
    }
    if (!m->deleting_ms) {
        m->deleting_ms = (int64_t)brix_wall_ms();
        BRIX_INFO("delete: %s/%s", brix_kind_name(kind), name);
        brix_ctl_changed(c);
        brix_ctl_kick(c);
        if (!brix_ctl_save(c))
            c->dirty = false;
    }
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_printf(&b, "{\"kind\":\"%s\",\"name\":", brix_kind_name(kind));
    brix_buf_append_json_str(&b, name, strlen(name));
    brix_buf_append_str(&b, ",\"result\":\"deleted\"}");
    respond_json(h, 200, &b);
}

static void handle_wake(brix_ctl_t *c, brix_http_req_t *h, const char *name)
{
    brix_adapter_rt_t *a = brix_ctl_adapter(c, name);
    if (!a || a->o->meta.deleting_ms) {
        brix_http_respond_error(h, 404, NULL, "not_found", NULL, "ModelAdapter '%s' not found",
                                name);
        return;
    }
    a->last_used_wall = a->woken_wall = brix_wall_ms();
    if (a->scaled) {
        a->scaled = false;
        brix_ctl_cancel_unloads(c, a); /* still loaded where the drain had not ended */
        a->phase = "Scheduled";        /* until the next pass says more */
        brix_metric_add(c->m.wakes, 1);
        BRIX_INFO("adapter %s: woken up by a waiting request", name);
        brix_ctl_changed(c);
    }
    brix_ctl_kick(c);
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_append_str(&b, "{\"name\":");
    brix_buf_append_json_str(&b, name, strlen(name));
    brix_buf_printf(&b, ",\"phase\":\"%s\"}", a->phase ? a->phase : "Pending");
    respond_json(h, 202, &b);
}

static void handle_wake_deploy(brix_ctl_t *c, brix_http_req_t *h, const char *name)
{
    int64_t replicas = 0;
    int rc = brix_ctl_as_wake(c, name, &replicas);
    if (rc == -ENOENT) {
        brix_http_respond_error(h, 404, NULL, "not_found", NULL, "ModelDeployment '%s' not found",
                                name);
        return;
    }
    if (rc == -EPERM) {
        brix_http_respond_error(h, 409, NULL, "scaled_to_zero", NULL,
                                "ModelDeployment '%s' runs 0 replicas by its spec (no "
                                "PodAutoscaler may scale it from zero)",
                                name);
        return;
    }
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_append_str(&b, "{\"name\":");
    brix_buf_append_json_str(&b, name, strlen(name));
    brix_buf_printf(&b, ",\"replicas\":%lld}", (long long)replicas);
    respond_json(h, 202, &b);
}

static void handle_activity(brix_ctl_t *c, brix_http_req_t *h)
{
    cJSON *j = NULL;
    brix_json_err_t je;
    if (brix_json_parse(h->body.data ? h->body.data : "", h->body.len, &j, &je) ||
        !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "models"))) {
        cJSON_Delete(j);
        brix_http_respond_error(h, 400, NULL, "invalid_body", NULL,
                                "expected {\"models\":{\"NAME\":count,...}}");
        return;
    }
    uint64_t wall = brix_wall_ms();
    bool used = false;
    cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "models"))
    {
        brix_adapter_rt_t *a = brix_ctl_adapter(c, it->string);
        if (a && cJSON_IsNumber(it) && it->valuedouble > 0) {
            a->last_used_wall = wall;
            used = true;
        }
    }
    brix_ctl_as_activity(c, j); /* the gateways' per-model load, for autoscalers */
    cJSON_Delete(j);
    if (used) /* reports come every second per gateway: the state file only when it matters */
        brix_ctl_dirty(c);
    brix_http_respond(h, 204, NULL, NULL, 0);
}

static void html_esc(brix_buf_t *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<':
            brix_buf_append_str(b, "&lt;");
            break;
        case '>':
            brix_buf_append_str(b, "&gt;");
            break;
        case '&':
            brix_buf_append_str(b, "&amp;");
            break;
        case '"':
            brix_buf_append_str(b, "&quot;");
            break;
        default:
            brix_buf_append_char(b, *s);
        }
    }
}

/* A small status page that refreshes itself: what `brix get` shows. */
static void handle_status(brix_ctl_t *c, brix_http_req_t *h)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_append_str(&b, "<!doctype html><html><head><meta charset=utf-8>"
                            "<meta http-equiv=refresh content=2><title>brix controller</title>"
                            "<style>body{font:14px system-ui,sans-serif;margin:2em}"
                            "table{border-collapse:collapse;margin-bottom:2em}"
                            "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
                            "th{background:#f3f3f3}.ok{color:#070}.bad{color:#b00}</style></head>"
                            "<body><h1>brix controller</h1>");
    brix_buf_printf(&b,
                    "<p>state version %llu &middot; %zu watcher(s) &middot; "
                    "<a href=/v1/deployments>deployments</a> &middot; "
                    "<a href=/v1/adapters>adapters</a> &middot; "
                    "<a href=/v1/replicas>replicas</a> &middot; <a href=/metrics>metrics</a></p>",
                    (unsigned long long)c->version, c->nwatchers);
    brix_buf_append_str(&b, "<h2>Deployments</h2><table><tr><th>name</th><th>model</th><th>gpu</th>"
                            "<th>replicas</th><th>ready</th></tr>");
    for (size_t i = 0; i < c->ndeploys; i++) {
        const brix_obj_t *d = c->deploys[i];
        int ready = 0;
        for (size_t j = 0; j < c->nreps; j++)
            ready += !strcmp(c->reps[j]->deployment, d->meta.name) && c->reps[j]->ready;
        brix_buf_append_str(&b, "<tr><td>");
        html_esc(&b, d->meta.name);
        brix_buf_append_str(&b, "</td><td>");
        html_esc(&b, d->d.model);
        brix_buf_append_str(&b, "</td><td>");
        html_esc(&b, d->d.gpu);
        brix_buf_printf(&b, "</td><td>%lld</td><td class=%s>%d</td></tr>", (long long)d->d.replicas,
                        ready >= d->d.replicas ? "ok" : "bad", ready);
    }
    brix_buf_append_str(&b, "</table><h2>Replicas</h2><table><tr><th>name</th><th>phase</th>"
                            "<th>ready</th><th>url</th><th>pid</th><th>restarts</th>"
                            "<th>adapters</th></tr>");
    for (size_t i = 0; i < c->nreps; i++) {
        const brix_replica_t *r = c->reps[i];
        brix_buf_append_str(&b, "<tr><td>");
        html_esc(&b, r->name);
        brix_buf_printf(&b,
                        "</td><td>%s</td><td class=%s>%s</td><td>%s</td><td>%d</td><td>%d</td><td>",
                        brix_replica_phase_name(r->phase), r->ready ? "ok" : "bad",
                        r->ready ? "yes" : "no", r->url, r->pid, r->restarts);
        for (size_t j = 0; j < r->adapters.n; j++) {
            if (j)
                brix_buf_append_str(&b, ", ");
            html_esc(&b, r->adapters.v[j]);
        }
        brix_buf_append_str(&b, "</td></tr>");
    }
    brix_buf_append_str(&b, "</table><h2>Adapters</h2><table><tr><th>name</th><th>base</th>"
                            "<th>phase</th><th>desired</th><th>ready</th><th>artifact</th>"
                            "<th>why</th></tr>");
    for (size_t i = 0; i < c->nadapters; i++) {
        const brix_adapter_rt_t *a = c->adapters[i];
        brix_buf_append_str(&b, "<tr><td>");
        html_esc(&b, a->o->meta.name);
        brix_buf_append_str(&b, "</td><td>");
        html_esc(&b, a->o->a.base_model ? a->o->a.base_model : "");
        brix_buf_printf(&b, "</td><td>%s</td><td>%d</td><td>%d</td><td>",
                        a->phase ? a->phase : "Pending", a->desired, a->ready);
        brix_buf_t u = BRIX_BUF_INIT;
        bool pending = false;
        brix_auth_redact_str(&u, a->o->a.artifact_url, &pending);
        html_esc(&b, u.data ? u.data : "");
        brix_buf_free(&u);
        brix_buf_append_str(&b, "</td><td>");
        html_esc(&b, a->conds[2].type ? a->conds[2].message : "");
        brix_buf_append_str(&b, "</td></tr>");
    }
    brix_buf_append_str(&b, "</table></body></html>\n");
    brix_http_respond(h, 200, "text/html; charset=utf-8", b.data, b.len);
    brix_buf_free(&b);
}

static void handle_metrics(brix_ctl_t *c, brix_http_req_t *h)
{
    static const char *const rphase[] = { "Pending", "Starting", "Running", "Failed",
                                          "Terminating" };
    static const char *const aphase[] = { "Pending", "Scheduled", "Bound",  "Running",
                                          "Scaled",  "Failed",    "Unknown" };
    for (int p = 0; p < 5; p++) {
        int n = 0;
        for (size_t i = 0; i < c->nreps; i++)
            n += (int)c->reps[i]->phase == p;
        const char *lv[] = { rphase[p] };
        brix_metric_set(brix_metric_child(c->m.replicas, lv), n);
    }
    for (size_t p = 0; p < sizeof aphase / sizeof *aphase; p++) {
        int n = 0;
        for (size_t i = 0; i < c->nadapters; i++)
            n += c->adapters[i]->phase && !strcmp(c->adapters[i]->phase, aphase[p]);
        const char *lv[] = { aphase[p] };
        brix_metric_set(brix_metric_child(c->m.adapters, lv), n);
    }
    brix_buf_t b = BRIX_BUF_INIT;
    if (brix_metrics_write(c->m.reg, &b)) {
        brix_http_respond_error(h, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    brix_http_respond(h, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    brix_buf_free(&b);
}

/* ------------------------------------------------------------ guards -- */

/* A printed login link may be opened much later; it is single use. */
#define BRIX_CTL_LOGIN_TTL_MS (24 * 3600 * 1000)

/* POST /v1/login (with the token): a one-time URL for the status page, which
 * `brix up` prints. The code is single use; the URL trades it for a cookie. */
static void handle_login_new(brix_ctl_t *c, brix_http_req_t *h)
{
    unsigned char raw[32];
    struct brix_ctl_login *slot = &c->logins[0];
    for (size_t i = 0; i < sizeof c->logins / sizeof *c->logins; i++)
        if (c->logins[i].expires < slot->expires) /* a free slot or the oldest */
            slot = &c->logins[i];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        brix_http_respond_error(h, 500, NULL, NULL, NULL, "no random bytes");
        return;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(slot->code + 2 * i, 3, "%02x", raw[i]);
    slot->expires = brix_now_ms() + BRIX_CTL_LOGIN_TTL_MS;
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_printf(&b, "{\"path\":\"/login?code=%s\",\"expiresInSeconds\":%d}", slot->code,
                    BRIX_CTL_LOGIN_TTL_MS / 1000);
    respond_json(h, 200, &b);
}

/* GET /login?code=…: a valid code sets the session cookie and goes to `/`. */
static void handle_login(brix_ctl_t *c, brix_http_req_t *h)
{
    const char *q = h->query ? strstr(h->query, "code=") : NULL;
    char code[65] = "";
    if (q && (q == h->query || q[-1] == '&'))
        snprintf(code, sizeof code, "%.*s", (int)strcspn(q + 5, "&"), q + 5);
    uint64_t now = brix_now_ms();
    struct brix_ctl_login *hit = NULL;
    for (size_t i = 0; i < sizeof c->logins / sizeof *c->logins; i++) {
        struct brix_ctl_login *l = &c->logins[i];
        if (l->code[0] && l->expires > now && code[0] && brix_secret_equal(code, l->code))
            hit = l;
    }
    if (!hit) {
        brix_http_add_header(h, "www-authenticate", "Bearer realm=\"brix-controller\"");
        brix_http_respond_error(h, 401, NULL, "invalid_login_code", NULL,
                                "this login link is unknown, used or expired: get a new one with "
                                "`curl -X POST -H \"Authorization: Bearer $(cat STATE_DIR/token)\" "
                                "http://HOST:PORT/v1/login`");
        return;
    }
    memset(hit, 0, sizeof *hit); /* one use only */
    char cookie[160];
    snprintf(cookie, sizeof cookie, "%s=%s; Path=/; HttpOnly; SameSite=Strict", BRIX_AUTH_COOKIE,
             c->cookie);
    brix_http_add_header(h, "set-cookie", cookie);
    brix_http_add_header(h, "location", "/");
    brix_http_add_header(h, "cache-control", "no-store");
    brix_http_respond(h, 303, "text/plain", "logged in\n", 10);
    BRIX_INFO("status page: a login link was used");
}

/* The request carries the token (or, for reads, the status page's cookie). */
static bool authenticated(brix_ctl_t *c, brix_http_req_t *h)
{
    if (!c->token[0])
        return true; /* --insecure-no-auth (loopback only) */
    const char *bearer = brix_http_req_bearer(h);
    if (bearer)
        return brix_secret_equal(bearer, c->token);
    const char *ck = brix_http_req_header(h, "cookie");
    char v[128];
    bool read = h->method == HTTP_GET || h->method == HTTP_HEAD;
    return read && ck && brix_auth_cookie_get(ck, BRIX_AUTH_COOKIE, v, sizeof v) &&
           brix_secret_equal(v, c->cookie);
}

/* Everything a request must pass before a handler: Host (DNS rebinding),
 * the token, and the body's type on writes. False: answered already. */
static bool admitted(brix_ctl_t *c, brix_http_req_t *h, bool *open_page)
{
    const char *host = brix_http_req_header(h, "host");
    if (!brix_http_host_ok(host, c->port, &c->cfg.allowed_hosts)) {
        uint64_t now = brix_now_ms(); /* a page can send these in a loop: one line per 10 s */
        if (!c->host_warned_ms || now - c->host_warned_ms >= 10000) {
            c->host_warned_ms = now;
            BRIX_WARN("refused a request for Host '%.100s' (not this controller's address; "
                      "--allowed-host adds names)",
                      host);
        }
        brix_http_respond_error(h, 403, NULL, "host_not_allowed", NULL,
                                "Host '%.100s' is not an address of this controller (DNS "
                                "rebinding protection; the operator can add --allowed-host NAME)",
                                host);
        return false;
    }
    bool status_page = (h->method == HTTP_GET || h->method == HTTP_HEAD) &&
                       (!strcmp(h->path, "/") || !strcmp(h->path, "/status"));
    *open_page = status_page && c->cfg.status_page_open;
    if (!strcmp(h->path, "/login") || *open_page)
        return true;
    if (!authenticated(c, h)) {
        bool given = brix_http_req_bearer(h) != NULL;
        brix_http_add_header(h, "www-authenticate",
                             given ? "Bearer realm=\"brix-controller\", error=\"invalid_token\""
                                   : "Bearer realm=\"brix-controller\"");
        brix_http_respond_error(
            h, 401, NULL, "invalid_api_key", NULL, "%s",
            given ? "incorrect controller token"
            : status_page
                ? "the status page needs a login: open the one-time URL `brix up` printed"
                : "the controller API needs `Authorization: Bearer <token>` (the token is in "
                  "STATE_DIR/token; brix get/apply/delete read it from --state-dir)");
        return false;
    }
    bool write = h->method == HTTP_POST || h->method == HTTP_PUT || h->method == HTTP_PATCH ||
                 h->method == HTTP_DELETE;
    if (write && h->body.len && !brix_auth_write_type_ok(brix_http_req_header(h, "content-type"))) {
        brix_http_respond_error(h, 415, NULL, "unsupported_media_type", NULL,
                                "a request body must be application/json or application/yaml "
                                "(got '%.100s')",
                                brix_http_req_header(h, "content-type")
                                    ? brix_http_req_header(h, "content-type")
                                    : "none");
        return false;
    }
    return true;
}

void brix_ctl_http(brix_http_req_t *h, void *ud)
{
    brix_ctl_t *c = ud;
    const char *p = h->path;
    bool get = h->method == HTTP_GET, post = h->method == HTTP_POST;
    if (!strcmp(p, "/healthz")) { /* probes: no Host or token check */
        brix_http_respond(h, 200, "text/plain", "ok\n", 3);
        return;
    }
    if (!strcmp(p, "/readyz")) {
        if (c->ready && !c->stopping)
            brix_http_respond(h, 200, "text/plain", "ready\n", 6);
        else
            brix_http_respond(h, 503, "text/plain", "not ready\n", 10);
        return;
    }
    bool open_page;
    if (!admitted(c, h, &open_page))
        return;
    if (!strcmp(p, "/login") && get) {
        handle_login(c, h);
        return;
    }
    if (!strcmp(p, "/v1/login") && post) {
        handle_login_new(c, h);
        return;
    }
    if (!strcmp(p, "/metrics") && get) {
        handle_metrics(c, h);
        return;
    }
    if ((!strcmp(p, "/") || !strcmp(p, "/status")) && get) {
        handle_status(c, h);
        return;
    }
    if (!strcmp(p, "/v1/watch") && get) {
        handle_watch(c, h);
        return;
    }
    if (!strcmp(p, "/v1/apply")) {
        if (!post) {
            brix_http_add_header(h, "allow", "POST");
            brix_http_respond_error(h, 405, NULL, "method_not_allowed", NULL, "use POST");
            return;
        }
        handle_apply(c, h);
        return;
    }
    if (!strcmp(p, "/v1/activity") && post) {
        handle_activity(c, h);
        return;
    }
    if (!strncmp(p, "/v1/", 4)) {
        char kind[64] = "", name[256] = "", verb[32] = "";
        int n = sscanf(p + 4, "%63[^/]/%255[^/]/%31s", kind, name, verb);
        brix_kind_t k = brix_kind_parse(kind);
        if (n == 3 && (k == BRIX_KIND_ADAPTER || k == BRIX_KIND_DEPLOYMENT) &&
            !strcmp(verb, "wake")) {
            if (post && k == BRIX_KIND_DEPLOYMENT) {
                handle_wake_deploy(c, h, name);
            } else if (post) {
                handle_wake(c, h, name);
            } else {
                brix_http_add_header(h, "allow", "POST");
                brix_http_respond_error(h, 405, NULL, "method_not_allowed", NULL, "use POST");
            }
            return;
        }
        if (n >= 1 && n <= 2 && k != BRIX_KIND_NONE && k != BRIX_KIND_CLUSTER) {
            handle_object(c, h, k, n == 2 ? name : NULL);
            return;
        }
        if (n >= 1 && k == BRIX_KIND_NONE) {
            brix_http_respond_error(
                h, 404, NULL, "unknown_kind", NULL,
                "unknown kind '%s' (deployments, adapters, replicas, podautoscalers)", kind);
            return;
        }
    }
    brix_http_respond_error(h, 404, NULL, "not_found", NULL, "no route for %s %s", h->method_name,
                            p);
}
