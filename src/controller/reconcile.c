/*
 * reconcile — the controller's level-triggered loop.
 *
 * Every pass (on a timer, and soon after any event) recomputes, from the
 * objects and the latest observations only: which replicas each deployment
 * should have (create, restart after backoff, roll one at a time onto a new
 * generation, remove extras), and where each adapter should be loaded (spread
 * over matching ready replicas, least-loaded first, within each replica's
 * adapter capacity), then issues the loads and unloads that close the gap.
 * Observations come from the replicas themselves: /health for readiness and
 * /v1/models for the adapters they really hold; nothing is assumed loaded
 * because a load call returned 200. A call in flight is tracked so the next
 * pass neither repeats nor contradicts it.
 */
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "controller/artifact.h"
#include "controller/ctl.h"
#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/time.h"

/* An HTTP call in flight; the name is looked up again on completion, since
 * the replica or adapter may be gone by then. */
typedef struct brix_ctl_call {
    brix_ctl_t *c;
    struct brix_ctl_call *next, **pprev;
    char *replica;
    char *adapter;
    int pid;
    int64_t gen;
    bool unload;
} call_t;

static call_t *call_new(brix_ctl_t *c, const char *replica, const char *adapter)
{
    call_t *k = brix_calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->c = c;
    k->replica = replica ? brix_strdup(replica) : NULL;
    k->adapter = adapter ? brix_strdup(adapter) : NULL;
    if ((replica && !k->replica) || (adapter && !k->adapter)) {
        brix_free(k->replica);
        brix_free(k->adapter);
        brix_free(k);
        return NULL;
    }
    k->next = c->calls;
    if (c->calls)
        c->calls->pprev = &k->next;
    k->pprev = &c->calls;
    c->calls = k;
    return k;
}

static void call_free(call_t *k)
{
    *k->pprev = k->next;
    if (k->next)
        k->next->pprev = k->pprev;
    brix_free(k->replica);
    brix_free(k->adapter);
    brix_free(k);
}

void brix_ctl_calls_free(brix_ctl_t *c)
{
    while (c->calls)
        call_free(c->calls);
}

/* ----------------------------------------------------------- lookups -- */

brix_replica_t *brix_ctl_replica(brix_ctl_t *c, const char *name)
{
    for (size_t i = 0; name && i < c->nreps; i++)
        if (!strcmp(c->reps[i]->name, name))
            return c->reps[i];
    return NULL;
}

brix_obj_t *brix_ctl_deploy(brix_ctl_t *c, const char *name)
{
    for (size_t i = 0; name && i < c->ndeploys; i++)
        if (!strcmp(c->deploys[i]->meta.name, name))
            return c->deploys[i];
    return NULL;
}

brix_adapter_rt_t *brix_ctl_adapter(brix_ctl_t *c, const char *name)
{
    for (size_t i = 0; name && i < c->nadapters; i++)
        if (!strcmp(c->adapters[i]->o->meta.name, name))
            return c->adapters[i];
    return NULL;
}

bool brix_ctl_replica_has(const brix_replica_t *r, const char *adapter)
{
    for (size_t i = 0; i < r->adapters.n; i++)
        if (!strcmp(r->adapters.v[i], adapter))
            return true;
    return false;
}

void brix_ctl_replica_free(brix_ctl_t *c, brix_replica_t *r)
{
    if (c && c->prov)
        c->prov->ops->release(c->prov, r);
    brix_free(r->name);
    brix_free(r->deployment);
    brix_free(r->model);
    brix_labels_free(&r->labels);
    brix_strlist_free(&r->argv);
    brix_free(r->log_path);
    brix_strlist_free(&r->adapters);
    brix_strlist_free(&r->roots);
    brix_free(r);
}

static void op_clear(brix_lora_op_t *op)
{
    brix_free(op->replica);
    memset(op, 0, sizeof *op);
}

void brix_ctl_adapter_free(brix_adapter_rt_t *a)
{
    brix_obj_free(a->o);
    brix_free(a->art_path);
    for (size_t i = 0; i < a->nops; i++)
        op_clear(&a->ops[i]);
    brix_free(a->ops);
    for (size_t i = 0; i < a->navoid; i++)
        brix_free(a->avoid[i]);
    brix_free(a->avoid);
    brix_free(a->avoid_until);
    brix_free(a);
}

int brix_ctl_add(brix_ctl_t *c, brix_obj_t *o, brix_adapter_rt_t **out)
{
    if (out)
        *out = NULL;
    if (o->kind == BRIX_KIND_DEPLOYMENT) {
        brix_obj_t **v = brix_realloc(c->deploys, (c->ndeploys + 1) * sizeof *v);
        if (!v)
            return -ENOMEM;
        c->deploys = v;
        c->deploys[c->ndeploys++] = o;
        return 0;
    }
    if (o->kind == BRIX_KIND_AUTOSCALER) {
        brix_pa_rt_t *p = brix_calloc(1, sizeof *p);
        brix_pa_rt_t **v = brix_realloc(c->pas, (c->npas + 1) * sizeof *v);
        if (v)
            c->pas = v;
        if (!p || !v || brix_as_state_init(&p->st)) {
            brix_free(p);
            return -ENOMEM;
        }
        p->o = o;
        p->scale = -1;
        p->st_gen = o->meta.generation;
        c->pas[c->npas++] = p;
        return 0;
    }
    brix_adapter_rt_t *a = brix_calloc(1, sizeof *a);
    brix_adapter_rt_t **v = brix_realloc(c->adapters, (c->nadapters + 1) * sizeof *v);
    if (v)
        c->adapters = v;
    if (!a || !v) {
        brix_free(a);
        return -ENOMEM;
    }
    a->o = o;
    a->art_gen = -1;
    a->phase = "Pending";
    c->adapters[c->nadapters++] = a;
    if (out)
        *out = a;
    return 0;
}

static void remove_replica(brix_ctl_t *c, brix_replica_t *r)
{
    for (size_t i = 0; i < c->nreps; i++) {
        if (c->reps[i] == r) {
            memmove(c->reps + i, c->reps + i + 1, (c->nreps - i - 1) * sizeof *c->reps);
            c->nreps--;
            break;
        }
    }
    brix_ctl_replica_free(c, r);
}

/* ------------------------------------------------------------ change -- */

static void on_save_timer(uv_timer_t *t)
{
    brix_ctl_t *c = t->data;
    if (c->dirty && !brix_ctl_save(c))
        c->dirty = false;
}

static void on_notify_timer(uv_timer_t *t)
{
    brix_ctl_notify_watchers(t->data);
}

/* Watchers hear of a change within 20 ms. The state file (each write
 * fsyncs) follows a change within 100 ms — a replica's new pid must be on
 * disk before a crash, or the next controller cannot adopt it — and last-use
 * times within a second; apply and delete save before they answer. */
static void save_within(brix_ctl_t *c, uint64_t ms)
{
    c->dirty = true;
    if (!uv_is_active((uv_handle_t *)&c->save_timer) || uv_timer_get_due_in(&c->save_timer) > ms)
        uv_timer_start(&c->save_timer, on_save_timer, ms, 0);
}

void brix_ctl_dirty(brix_ctl_t *c)
{
    save_within(c, 1000);
}

void brix_ctl_changed(brix_ctl_t *c)
{
    c->version++;
    save_within(c, 100);
    if (!uv_is_active((uv_handle_t *)&c->notify_timer))
        uv_timer_start(&c->notify_timer, on_notify_timer, 20, 0);
}

static void on_kick(uv_timer_t *t)
{
    brix_ctl_reconcile(t->data);
}

void brix_ctl_kick(brix_ctl_t *c)
{
    if (!c->stopping && !uv_is_active((uv_handle_t *)&c->kick_timer))
        uv_timer_start(&c->kick_timer, on_kick, 5, 0);
}

/* ----------------------------------------------------------- replicas -- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    int port = -1;
    if (!bind(fd, (struct sockaddr *)&a, sizeof a) && !getsockname(fd, (struct sockaddr *)&a, &l))
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = !bind(fd, (struct sockaddr *)&a, sizeof a);
    close(fd);
    return ok;
}

int brix_ctl_replica_labels(brix_replica_t *r, const brix_obj_t *d)
{
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    brix_labels_free(&r->labels);
    int rc = 0;
    for (size_t i = 0; i < d->meta.labels.n; i++)
        rc |= brix_labels_set(&r->labels, d->meta.labels.k[i], d->meta.labels.v[i]);
    /* AIBrix's pod labels (shared/reference/aibrix.md §3) */
    rc |= brix_labels_set(&r->labels, "model.aibrix.ai/name", r->model);
    rc |= brix_labels_set(&r->labels, "model.aibrix.ai/port", port);
    rc |= brix_labels_set(&r->labels, "model.aibrix.ai/engine", d->d.command.n ? "custom" : "vllm");
    if (d->d.lora)
        rc |= brix_labels_set(&r->labels, "adapter.model.aibrix.ai/enabled", "true");
    rc |= brix_labels_set(&r->labels, "brix.dev/deployment", d->meta.name);
    rc |= brix_labels_set(&r->labels, "brix.dev/gpu", d->d.gpu);
    return rc;
}

static void start_replica(brix_ctl_t *c, brix_replica_t *r, const brix_obj_t *d, uint64_t now)
{
    char err[256];
    int port = r->port > 0 && port_free(r->port) ? r->port : free_port();
    if (port <= 0) {
        snprintf(r->last_exit, sizeof r->last_exit, "no free port");
        r->phase = BRIX_RP_FAILED;
        r->restart_at_ms = now + 1000;
        return;
    }
    r->port = port;
    snprintf(r->url, sizeof r->url, "http://127.0.0.1:%d", port);
    brix_free(r->model);
    r->model = brix_strdup(d->d.model);
    if (!r->model || brix_ctl_replica_labels(r, d)) {
        r->phase = BRIX_RP_FAILED;
        r->restart_at_ms = now + 1000;
        return;
    }
    r->generation = d->meta.generation;
    brix_strlist_free(&r->adapters);
    brix_strlist_free(&r->roots);
    r->models_known = false;
    r->ready = false;
    r->health_fails = 0;
    /* answers for the previous process are ignored (pid check), so their flags go */
    r->health_inflight = r->models_inflight = r->models_again = false;
    if (c->prov->ops->start(c->prov, r, d, err, sizeof err)) {
        BRIX_ERROR("replica %s: %s", r->name, err);
        snprintf(r->last_exit, sizeof r->last_exit, "%.150s", err);
        r->phase = BRIX_RP_FAILED;
        r->restart_at_ms = now + r->backoff_ms;
        r->backoff_ms = r->backoff_ms * 2 > (uint64_t)c->cfg.restart_backoff_max
                            ? (uint64_t)c->cfg.restart_backoff_max
                            : r->backoff_ms * 2;
        brix_ctl_changed(c);
        return;
    }
    r->phase = BRIX_RP_STARTING;
    r->started_ms = now;
    r->ready_after_ms = 0;
    r->startup_seen = false;
    r->started_wall_ms = brix_wall_ms();
    BRIX_INFO("replica %s: started pid %d on %s (log %s)", r->name, r->pid, r->url, r->log_path);
    brix_ctl_changed(c);
}

static void terminate(brix_ctl_t *c, brix_replica_t *r, bool recycle, const char *why)
{
    if (r->phase == BRIX_RP_TERMINATING)
        return;
    if (r->pid <= 0) {
        if (recycle) {
            r->phase = BRIX_RP_PENDING;
            r->restart_at_ms = brix_now_ms();
        } else {
            BRIX_INFO("replica %s: removed (%s)", r->name, why);
            remove_replica(c, r);
        }
        brix_ctl_changed(c);
        return;
    }
    BRIX_INFO("replica %s: stopping pid %d (%s)", r->name, r->pid, why);
    r->phase = BRIX_RP_TERMINATING;
    r->recycle = recycle;
    r->ready = false;
    c->prov->ops->stop(c->prov, r, (uint64_t)c->cfg.stop_grace);
    brix_ctl_changed(c);
}

void brix_ctl_replica_restart(brix_ctl_t *c, brix_replica_t *r)
{
    terminate(c, r, true, "restart requested");
}

void brix_ctl_on_exit(void *ud, brix_replica_t *r, const char *why)
{
    brix_ctl_t *c = ud;
    uint64_t now = brix_now_ms();
    bool expected = r->phase == BRIX_RP_TERMINATING;
    if (expected && !r->recycle) {
        BRIX_INFO("replica %s: stopped (%s)", r->name, why);
        remove_replica(c, r);
        brix_ctl_changed(c);
        brix_ctl_kick(c);
        return;
    }
    if (!expected && r->draining) { /* it was leaving anyway: not restarted */
        BRIX_WARN("replica %s: %s while draining; removed (the gateways retry what it had not "
                  "answered yet)",
                  r->name, why);
        remove_replica(c, r);
        brix_ctl_changed(c);
        brix_ctl_kick(c);
        return;
    }
    if (!expected || !r->last_exit[0])
        snprintf(r->last_exit, sizeof r->last_exit, "%s", why);
    r->ready = false;
    r->models_known = false;
    r->health_inflight = r->models_inflight = r->models_again = false;
    brix_strlist_free(&r->adapters);
    brix_strlist_free(&r->roots);
    if (expected && !r->timed_out) { /* a deliberate restart: no backoff */
        r->phase = BRIX_RP_PENDING;
        r->restart_at_ms = now;
    } else if (expected) { /* it did not start in time: back off like a crash */
        r->phase = BRIX_RP_FAILED;
        r->restart_at_ms = now + r->backoff_ms;
        r->backoff_ms = r->backoff_ms * 2 > (uint64_t)c->cfg.restart_backoff_max
                            ? (uint64_t)c->cfg.restart_backoff_max
                            : r->backoff_ms * 2;
    } else {
        r->phase = BRIX_RP_FAILED;
        r->restarts++;
        brix_metric_add(c->m.restarts, 1);
        r->restart_at_ms = now + r->backoff_ms;
        BRIX_WARN("replica %s: %s; restarting in %.1f s (log %s)", r->name, why,
                  (double)r->backoff_ms / 1000.0, r->log_path ? r->log_path : "-");
        r->backoff_ms = r->backoff_ms * 2 > (uint64_t)c->cfg.restart_backoff_max
                            ? (uint64_t)c->cfg.restart_backoff_max
                            : r->backoff_ms * 2;
    }
    r->recycle = r->timed_out = false;
    brix_ctl_changed(c);
    brix_ctl_kick(c);
}

static brix_replica_t *replica_new(brix_ctl_t *c, const brix_obj_t *d, int index)
{
    brix_replica_t *r = brix_calloc(1, sizeof *r);
    brix_replica_t **v = brix_realloc(c->reps, (c->nreps + 1) * sizeof *v);
    char name[300];
    snprintf(name, sizeof name, "%s-%d", d->meta.name, index);
    if (!r || !v || !(r->name = brix_strdup(name)) ||
        !(r->deployment = brix_strdup(d->meta.name)) || !(r->model = brix_strdup(d->d.model))) {
        if (v)
            c->reps = v;
        if (r)
            brix_ctl_replica_free(NULL, r);
        return NULL;
    }
    c->reps = v;
    r->index = index;
    r->phase = BRIX_RP_PENDING;
    r->backoff_ms = 1000;
    r->restart_at_ms = brix_now_ms();
    c->reps[c->nreps++] = r;
    return r;
}

/* A replica above its deployment's scale. A ready one is drained first:
 * gateways see it as Draining and send it nothing new, its running requests
 * finish, and it is stopped once a metrics scrape begun after the drain's
 * grace shows it idle (or at --drain-timeout). A deleted deployment's
 * replicas, and replicas that serve nothing, stop at once. */
static void drain_or_stop(brix_ctl_t *c, brix_replica_t *r, const brix_obj_t *d, uint64_t now)
{
    if (d->meta.deleting_ms || r->phase != BRIX_RP_RUNNING || (!r->ready && !r->draining)) {
        terminate(c, r, false, d->meta.deleting_ms ? "deployment deleted" : "scaled down");
        return;
    }
    if (!r->draining) {
        r->draining = true;
        r->drain_since_ms = now;
        BRIX_INFO("replica %s: draining (scaled down): no new requests, running ones finish",
                  r->name);
        brix_ctl_changed(c);
        return;
    }
    uint64_t grace = (uint64_t)c->cfg.drain_grace;
    if (now - r->drain_since_ms >= (uint64_t)c->cfg.drain_timeout)
        terminate(c, r, false, "scaled down; drain timeout reached with requests still running");
    else if (now - r->drain_since_ms >= grace &&
             brix_ctl_as_replica_idle(c, r, r->drain_since_ms + grace))
        terminate(c, r, false, "scaled down, drained");
}

static void reconcile_deployments(brix_ctl_t *c, uint64_t now)
{
    /* replicas whose deployment is gone */
    for (size_t i = c->nreps; i-- > 0;) {
        brix_replica_t *r = c->reps[i];
        if (!brix_ctl_deploy(c, r->deployment))
            terminate(c, r, false, "its deployment was deleted");
    }
    for (size_t di = c->ndeploys; di-- > 0;) {
        brix_obj_t *d = c->deploys[di];
        int64_t want = brix_ctl_deploy_want(c, d);
        int unsettled = 0;
        brix_replica_t *stale = NULL;
        for (int64_t i = 0; i < want; i++) {
            char name[300];
            snprintf(name, sizeof name, "%s-%lld", d->meta.name, (long long)i);
            if (!brix_ctl_replica(c, name) && replica_new(c, d, (int)i))
                brix_ctl_changed(c);
        }
        for (size_t i = c->nreps; i-- > 0;) {
            brix_replica_t *r = c->reps[i];
            if (strcmp(r->deployment, d->meta.name))
                continue;
            if (r->index >= want) {
                drain_or_stop(c, r, d, now);
                continue;
            }
            if (r->draining) { /* wanted again before it stopped: it serves on */
                r->draining = false;
                BRIX_INFO("replica %s: drain cancelled (scaled up again)", r->name);
                brix_ctl_changed(c);
            }
            if (r->phase != BRIX_RP_RUNNING || !r->ready)
                unsettled++;
            else if (r->generation != d->meta.generation && r->pid > 0)
                stale = r;
        }
        /* rolling update: one replica at a time, only while the rest serve */
        if (stale && !unsettled)
            terminate(c, stale, true, "spec changed (rolling update)");
        bool any = false;
        for (size_t i = 0; i < c->nreps && !any; i++)
            any = !strcmp(c->reps[i]->deployment, d->meta.name);
        if (d->meta.deleting_ms && !any) {
            BRIX_INFO("deployment %s: deleted", d->meta.name);
            brix_obj_free(d);
            memmove(c->deploys + di, c->deploys + di + 1,
                    (c->ndeploys - di - 1) * sizeof *c->deploys);
            c->ndeploys--;
            brix_ctl_changed(c);
        }
    }
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        brix_obj_t *d = brix_ctl_deploy(c, r->deployment);
        if (!d)
            continue;
        if ((r->phase == BRIX_RP_PENDING || r->phase == BRIX_RP_FAILED) &&
            now >= r->restart_at_ms && !d->meta.deleting_ms &&
            r->index < brix_ctl_deploy_want(c, d))
            start_replica(c, r, d, now);
        else if (r->phase == BRIX_RP_STARTING && now - r->started_ms > d->d.startup_timeout_ms) {
            snprintf(r->last_exit, sizeof r->last_exit, "no answer 200 on %s within %.0f s",
                     d->d.health_path, (double)d->d.startup_timeout_ms / 1000.0);
            BRIX_WARN("replica %s: %s; restarting it", r->name, r->last_exit);
            r->restarts++;
            r->timed_out = true;
            terminate(c, r, true, "startup timeout");
        }
    }
}

/* ------------------------------------------------------ observations -- */

static void fetch_models(brix_ctl_t *c, brix_replica_t *r);

/* GET r->url + path for the replica's current process; *inflight is set
 * while the call runs (cleared again if it cannot start). */
static void replica_get(brix_ctl_t *c, brix_replica_t *r, const char *path, size_t max_body,
                        bool *inflight, brix_curl_done_fn done)
{
    call_t *k = call_new(c, r->name, NULL);
    if (!k)
        return;
    k->pid = r->pid;
    char url[320];
    snprintf(url, sizeof url, "%s%s", r->url, path);
    *inflight = true;
    /* the engine key goes where engines require it (vLLM: paths under /v1)
     * and nowhere else */
    brix_curl_t *cu = strncmp(path, "/v1", 3) ? c->health_curl : c->curl;
    if (brix_curl_request(cu, "GET", url, NULL, 0, NULL, (uint64_t)c->cfg.health_timeout, max_body,
                          done, k)) {
        *inflight = false;
        call_free(k);
    }
}

/* The replica a finished call was for, if it still runs the same process
 * (answers for an earlier process are dropped); frees the call. */
static brix_replica_t *call_replica(call_t *k)
{
    brix_replica_t *r = brix_ctl_replica(k->c, k->replica);
    if (r && r->pid != k->pid)
        r = NULL;
    call_free(k);
    return r;
}

static void on_models(const brix_curl_result_t *res, void *ud)
{
    call_t *k = ud;
    brix_ctl_t *c = k->c;
    brix_replica_t *r = call_replica(k);
    if (!r)
        return;
    r->models_inflight = false;
    if (r->models_again) { /* a load or unload finished meanwhile: this answer may predate it */
        r->models_again = false;
        fetch_models(c, r);
    }
    cJSON *j = NULL;
    brix_json_err_t je;
    if (res->status != 200 || brix_json_parse(res->body, res->body_len, &j, &je))
        return;
    cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    brix_strlist_t seen = { 0, NULL }, roots = { 0, NULL };
    cJSON *it;
    cJSON_ArrayForEach(it, data)
    {
        cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        cJSON *parent = cJSON_GetObjectItemCaseSensitive(it, "parent");
        cJSON *root = cJSON_GetObjectItemCaseSensitive(it, "root");
        if (cJSON_IsString(id) && cJSON_IsString(parent)) { /* a LoRA adapter */
            brix_strlist_push(&seen, id->valuestring);
            brix_strlist_push(&roots, cJSON_IsString(root) ? root->valuestring : "");
        }
    }
    cJSON_Delete(j);
    bool same = r->models_known && seen.n == r->adapters.n && roots.n == seen.n;
    for (size_t i = 0; same && i < seen.n; i++)
        same = brix_ctl_replica_has(r, seen.v[i]) && i < r->roots.n &&
               !strcmp(r->adapters.v[i], seen.v[i]) && !strcmp(r->roots.v[i], roots.v[i]);
    if (!same) {
        brix_strlist_free(&r->adapters);
        brix_strlist_free(&r->roots);
        r->adapters = seen;
        r->roots = roots;
        r->models_known = true;
        brix_ctl_changed(c);
        brix_ctl_kick(c);
    } else {
        brix_strlist_free(&seen);
        brix_strlist_free(&roots);
    }
}

/* The path r loaded adapter from, as its /v1/models says ("" if unknown). */
static const char *replica_root(const brix_replica_t *r, const char *adapter)
{
    for (size_t i = 0; i < r->adapters.n && i < r->roots.n; i++)
        if (!strcmp(r->adapters.v[i], adapter))
            return r->roots.v[i];
    return "";
}

static void fetch_models(brix_ctl_t *c, brix_replica_t *r)
{
    if (r->pid <= 0)
        return;
    if (r->models_inflight) {
        r->models_again = true;
        return;
    }
    replica_get(c, r, "/v1/models", 4u << 20, &r->models_inflight, on_models);
}

static void on_health(const brix_curl_result_t *res, void *ud)
{
    call_t *k = ud;
    brix_ctl_t *c = k->c;
    brix_replica_t *r = call_replica(k);
    if (!r)
        return;
    r->health_inflight = false;
    uint64_t now = brix_now_ms();
    if (res->status == 200) {
        r->health_fails = 0;
        if (r->phase == BRIX_RP_STARTING) {
            r->phase = BRIX_RP_RUNNING;
            /* how long a start takes (autoscalers plan with it); an adopted
             * process was started long before and says nothing */
            if (!r->adopted)
                r->ready_after_ms = now > r->started_ms ? now - r->started_ms : 1;
            BRIX_INFO("replica %s: ready on %s after %.1f s", r->name, r->url,
                      (double)(now - r->started_ms) / 1000.0);
        }
        if (r->phase == BRIX_RP_RUNNING && now - r->started_ms > 60000)
            r->backoff_ms = 1000; /* it ran well for a minute: forget old crashes */
        if (!r->ready && r->phase == BRIX_RP_RUNNING) {
            r->ready = true;
            brix_ctl_changed(c);
            brix_ctl_kick(c);
        }
        if (r->ready)
            fetch_models(c, r);
        return;
    }
    if (r->phase == BRIX_RP_RUNNING && ++r->health_fails >= 3 && r->ready) {
        BRIX_WARN("replica %s: %d health checks failed (%s); not ready", r->name, r->health_fails,
                  res->error ? res->error : "bad status");
        r->ready = false;
        brix_ctl_changed(c);
    }
}

void brix_ctl_health_tick(brix_ctl_t *c)
{
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        if (r->pid <= 0 || r->health_inflight ||
            (r->phase != BRIX_RP_STARTING && r->phase != BRIX_RP_RUNNING))
            continue;
        brix_obj_t *d = brix_ctl_deploy(c, r->deployment);
        replica_get(c, r, d ? d->d.health_path : "/health", 65536, &r->health_inflight, on_health);
    }
}

/* ---------------------------------------------------------- artifacts -- */

static void on_artifact(const brix_art_result_t *res, void *ud)
{
    call_t *k = ud;
    brix_ctl_t *c = k->c;
    brix_adapter_rt_t *a = brix_ctl_adapter(c, k->adapter);
    uint64_t id = (uint64_t)k->gen;
    call_free(k);
    if (!a || a->art_fetch != id || a->art != BRIX_ARTS_FETCHING)
        return; /* a fetch for an older spec or a deleted and re-created adapter */
    if (res->status == BRIX_ART_OK) {
        a->art = BRIX_ARTS_READY;
        brix_free(a->art_path);
        a->art_path = brix_strdup(res->path);
        a->art_reason[0] = a->art_msg[0] = '\0';
        brix_metric_add(c->m.fetch_ok, 1);
        BRIX_INFO("adapter %s: artifact ready at %s%s", a->o->meta.name, res->path,
                  res->cached ? " (cached)" : "");
        c->gc_wanted |= !res->cached && res->bytes > 0; /* the cache grew: clean up after it */
    } else {
        a->art = BRIX_ARTS_FAILED;
        snprintf(a->art_reason, sizeof a->art_reason, "%s", brix_art_status_name(res->status));
        snprintf(a->art_msg, sizeof a->art_msg, "%s", res->message ? res->message : "fetch failed");
        /* a refused archive or path (TooLarge, UnsafeArchive, ArtifactNotAllowed)
         * fails the same way every time: it waits for a new spec */
        bool transient = res->status == BRIX_ART_IO || res->status == BRIX_ART_NOT_FOUND;
        a->art_retry_at = transient ? brix_now_ms() + 15000 : UINT64_MAX;
        brix_metric_add(c->m.fetch_failed, 1);
        BRIX_WARN("adapter %s: artifact %s: %s%s", a->o->meta.name, a->o->a.artifact_url,
                  a->art_msg, transient ? " (retrying in 15 s)" : "");
    }
    brix_ctl_changed(c);
    brix_ctl_kick(c);
}

/* Where an adapter's file:// artifact may be read from: the operator's
 * --artifact-root list, or else the directory its file was applied from; and
 * the state dir. *n is the count; NULL on ENOMEM. */
static const char **artifact_roots(brix_ctl_t *c, const brix_obj_t *o, size_t *n)
{
    const brix_strlist_t *l = &c->cfg.artifact_roots;
    const char **v = brix_calloc(l->n + 2, sizeof *v);
    *n = 0;
    if (!v)
        return NULL;
    for (size_t i = 0; i < l->n; i++)
        v[(*n)++] = l->v[i];
    if (!l->n && o->base_dir)
        v[(*n)++] = o->base_dir;
    v[(*n)++] = c->cfg.state_dir;
    return v;
}

static void on_gc(const brix_art_gc_result_t *r, void *ud)
{
    brix_ctl_t *c = ud;
    c->gc_running = false;
    if (r->err == UV_ECANCELED)
        return;
    if (r->err)
        BRIX_WARN("artifact cache %s: %s", c->artifact_dir, strerror(-r->err));
    brix_metric_set(c->m.cache_bytes, (double)r->bytes);
    brix_metric_add(c->m.cache_evictions, (double)r->evicted);
    if (r->temps_removed)
        BRIX_INFO("artifact cache: removed %llu temp file(s) an earlier run left",
                  (unsigned long long)r->temps_removed);
    if (r->evicted)
        BRIX_INFO("artifact cache: removed %llu unused artifact(s) (%llu bytes); %llu bytes left "
                  "(--artifact-cache-max %llu)",
                  (unsigned long long)r->evicted, (unsigned long long)r->evicted_bytes,
                  (unsigned long long)r->bytes, (unsigned long long)c->cfg.artifact_cache_max);
    if (c->gc_wanted)
        brix_ctl_kick(c);
}

/* The LRU cleanup of STATE/artifacts: at start (it also removes a crash's temp
 * files), after a fetch added to the cache, and every minute. What any adapter
 * references (its URL's cache entry, the path it was fetched to) and what any
 * replica reports as loaded from is never removed. */
static void artifact_gc(brix_ctl_t *c, uint64_t now)
{
    if (c->gc_running || (!c->gc_wanted && now < c->gc_next_at))
        return;
    size_t cap = 2 * c->nadapters, n = 0;
    for (size_t i = 0; i < c->nreps; i++)
        cap += c->reps[i]->roots.n;
    char **keep = brix_calloc(cap + 1, sizeof *keep);
    if (!keep)
        return;
    for (size_t i = 0; i < c->nadapters; i++) {
        const brix_adapter_rt_t *a = c->adapters[i];
        char name[160];
        if (brix_art_cache_name(a->o->a.artifact_url, a->o->a.sha256, name, sizeof name) == 0)
            keep[n++] = brix_strdup(name);
        if (a->art_path)
            keep[n++] = brix_strdup(a->art_path);
    }
    for (size_t i = 0; i < c->nreps; i++)
        for (size_t j = 0; j < c->reps[i]->roots.n; j++)
            keep[n++] = brix_strdup(c->reps[i]->roots.v[j]);
    bool nomem = false;
    for (size_t i = 0; i < n; i++)
        nomem |= !keep[i];
    brix_art_gc_req_t req = { .cache_dir = c->artifact_dir,
                              .max_bytes = c->cfg.artifact_cache_max,
                              .keep = (const char *const *)keep,
                              .nkeep = n };
    /* without the full keep list nothing may be removed: try again later */
    if (!nomem && brix_art_gc(c->loop, &req, on_gc, c) == 0) {
        c->gc_running = true;
        c->gc_wanted = false;
        c->gc_next_at = now + 60000;
    }
    for (size_t i = 0; i < n; i++)
        brix_free(keep[i]);
    brix_free(keep);
}

static void ensure_artifact(brix_ctl_t *c, brix_adapter_rt_t *a, uint64_t now)
{
    if (a->art_gen != a->o->meta.generation) {
        a->art_gen = a->o->meta.generation;
        a->art = BRIX_ARTS_NONE;
        brix_free(a->art_path);
        a->art_path = NULL;
    }
    if (a->art == BRIX_ARTS_FAILED && now >= a->art_retry_at)
        a->art = BRIX_ARTS_NONE;
    if (a->art != BRIX_ARTS_NONE)
        return;
    call_t *k = call_new(c, NULL, a->o->meta.name);
    if (!k)
        return;
    a->art_fetch = ++c->fetch_seq;
    k->gen = (int64_t)a->art_fetch;
    size_t nroots = 0;
    const char **roots = artifact_roots(c, a->o, &nroots);
    if (!roots) {
        call_free(k);
        return;
    }
    brix_art_req_t req = {
        .url = a->o->a.artifact_url,
        .sha256 = a->o->a.sha256,
        .cache_dir = c->artifact_dir,
        .max_bytes = c->cfg.artifact_max_bytes,
        .timeout_ms = (uint64_t)c->cfg.artifact_timeout,
        .label = a->o->meta.name,
        .roots = roots,
        .nroots = nroots,
        .max_unpacked = c->cfg.artifact_max_unpacked,
        .max_files = (uint64_t)c->cfg.artifact_max_files,
    };
    a->art = BRIX_ARTS_FETCHING;
    if (brix_art_fetch(c->loop, &req, on_artifact, k)) {
        a->art = BRIX_ARTS_NONE;
        call_free(k);
    }
    brix_free(roots);
}

/* ------------------------------------------------------- LoRA loading -- */

static bool avoided(brix_adapter_rt_t *a, const char *replica, uint64_t now)
{
    for (size_t i = 0; i < a->navoid; i++)
        if (!strcmp(a->avoid[i], replica))
            return now < a->avoid_until[i];
    return false;
}

static void avoid(brix_adapter_rt_t *a, const char *replica, uint64_t until)
{
    for (size_t i = 0; i < a->navoid; i++) {
        if (!strcmp(a->avoid[i], replica)) {
            a->avoid_until[i] = until;
            return;
        }
    }
    char **v = brix_realloc(a->avoid, (a->navoid + 1) * sizeof *v);
    if (!v)
        return;
    a->avoid = v;
    uint64_t *u = brix_realloc(a->avoid_until, (a->navoid + 1) * sizeof *u);
    if (!u)
        return;
    a->avoid_until = u;
    if (!(a->avoid[a->navoid] = brix_strdup(replica)))
        return;
    a->avoid_until[a->navoid++] = until;
}

static brix_lora_op_t *find_op(brix_adapter_rt_t *a, const char *replica)
{
    for (size_t i = 0; i < a->nops; i++)
        if (!strcmp(a->ops[i].replica, replica))
            return &a->ops[i];
    return NULL;
}

static void drop_op(brix_adapter_rt_t *a, brix_lora_op_t *op)
{
    size_t i = (size_t)(op - a->ops);
    op_clear(op);
    memmove(a->ops + i, a->ops + i + 1, (a->nops - i - 1) * sizeof *a->ops);
    a->nops--;
}

bool brix_ctl_draining(brix_ctl_t *c, const brix_replica_t *r, const char *adapter)
{
    brix_adapter_rt_t *a = brix_ctl_adapter(c, adapter);
    brix_lora_op_t *op = a ? find_op(a, r->name) : NULL;
    return op && op->unload;
}

static brix_lora_op_t *add_op(brix_adapter_rt_t *a, const char *replica, bool unload, uint64_t now)
{
    brix_lora_op_t *v = brix_realloc(a->ops, (a->nops + 1) * sizeof *v);
    if (!v)
        return NULL;
    a->ops = v;
    brix_lora_op_t *op = &a->ops[a->nops];
    memset(op, 0, sizeof *op);
    if (!(op->replica = brix_strdup(replica)))
        return NULL;
    op->unload = unload;
    op->next_at = now;
    op->begin_ms = now;
    a->nops++;
    return op;
}

void brix_ctl_cancel_unloads(brix_ctl_t *c, brix_adapter_rt_t *a)
{
    bool any = false;
    for (size_t i = a->nops; i-- > 0;) {
        if (a->ops[i].unload && !a->ops[i].inflight && !a->ops[i].done) {
            drop_op(a, &a->ops[i]);
            any = true;
        }
    }
    if (any)
        brix_ctl_changed(c);
}

/* An unload waits --unload-drain after gateways were told (the watch lists
 * the replica without the adapter from now on), so no request meets it. */
static brix_lora_op_t *add_unload(brix_ctl_t *c, brix_adapter_rt_t *a, const char *replica,
                                  uint64_t now)
{
    brix_lora_op_t *op = add_op(a, replica, true, now);
    if (op) {
        op->next_at = now + (uint64_t)c->cfg.unload_drain;
        brix_ctl_changed(c);
    }
    return op;
}

/* Loads in flight (or retrying) to replica r, over every adapter. */
static int loads_to(brix_ctl_t *c, const brix_replica_t *r)
{
    int n = 0;
    for (size_t i = 0; i < c->nadapters; i++) {
        brix_lora_op_t *op = find_op(c->adapters[i], r->name);
        n += op && !op->unload && !brix_ctl_replica_has(r, c->adapters[i]->o->meta.name);
    }
    return n;
}

static void on_lora_call(const brix_curl_result_t *res, void *ud)
{
    call_t *k = ud;
    brix_ctl_t *c = k->c;
    brix_adapter_rt_t *a = brix_ctl_adapter(c, k->adapter);
    brix_replica_t *r = brix_ctl_replica(c, k->replica);
    bool unload = k->unload;
    int pid = k->pid;
    brix_lora_op_t *op = a ? find_op(a, k->replica) : NULL;
    call_free(k);
    if (!a || !op || op->unload != unload || !op->inflight)
        return;
    op->inflight = false;
    uint64_t now = brix_now_ms();
    /* vLLM answers 400 "already been loaded" / 404 "not found" when the
     * engine is already where we want it: success for a level-triggered loop */
    bool ok = res->status == 200 ||
              (!unload && res->status == 400 && res->body && strstr(res->body, "already")) ||
              (unload && res->status == 404);
    if (ok) {
        double secs = (double)(now - op->begin_ms) / 1000.0;
        if (!unload) {
            brix_metric_add(c->m.loads_ok, 1);
            brix_metric_observe(c->m.load_seconds, secs);
            BRIX_INFO("adapter %s: loaded on %s in %.2f s", a->o->meta.name, op->replica, secs);
        } else {
            brix_metric_add(c->m.unloads_ok, 1);
            BRIX_INFO("adapter %s: unloaded from %s", a->o->meta.name, op->replica);
        }
        /* kept until the replica's /v1/models confirms it (see reconcile_adapter) */
        op->done = true;
        op->done_at = now;
        a->last_err[0] = '\0';
        if (r && r->pid == pid)
            fetch_models(c, r);
        brix_ctl_kick(c);
        return;
    }
    op->tries++;
    if (res->error)
        snprintf(op->last_err, sizeof op->last_err, "%s %s: %s", unload ? "unload from" : "load on",
                 op->replica, res->error);
    else
        snprintf(op->last_err, sizeof op->last_err, "%s %s: HTTP %ld: %.*s",
                 unload ? "unload from" : "load on", op->replica, res->status,
                 (int)(res->body_len > 120 ? 120 : res->body_len), res->body ? res->body : "");
    snprintf(a->last_err, sizeof a->last_err, "%s", op->last_err);
    if (op->tries >= c->cfg.load_retries) {
        BRIX_WARN("adapter %s: %s failed %d times; giving up on this replica for 60 s: %s",
                  a->o->meta.name, unload ? "unload" : "load", op->tries, op->last_err);
        brix_metric_add(unload ? c->m.unloads_failed : c->m.loads_failed, 1);
        if (!unload)
            avoid(a, op->replica, now + 60000);
        drop_op(a, op);
    } else {
        op->next_at = now + (500ull << (op->tries - 1 < 5 ? op->tries - 1 : 5));
    }
    brix_ctl_changed(c);
    brix_ctl_kick(c);
}

static void issue_op(brix_ctl_t *c, brix_adapter_rt_t *a, brix_lora_op_t *op, brix_replica_t *r)
{
    call_t *k = call_new(c, r->name, a->o->meta.name);
    if (!k)
        return;
    k->pid = r->pid;
    k->unload = op->unload;
    brix_buf_t body = BRIX_BUF_INIT;
    char url[160];
    snprintf(url, sizeof url, "%s/v1/%s_lora_adapter", r->url, op->unload ? "unload" : "load");
    int rc = brix_buf_append_str(&body, "{\"lora_name\":") |
             brix_buf_append_json_str(&body, a->o->meta.name, strlen(a->o->meta.name));
    if (!op->unload && a->art_path)
        rc |= brix_buf_append_str(&body, ",\"lora_path\":") |
              brix_buf_append_json_str(&body, a->art_path, strlen(a->art_path));
    rc |= brix_buf_append_char(&body, '}');
    if (rc || brix_curl_request(c->curl, "POST", url, body.data, body.len, "application/json",
                                (uint64_t)c->cfg.load_timeout, 65536, on_lora_call, k)) {
        call_free(k);
    } else {
        op->inflight = true;
    }
    brix_buf_free(&body);
}

static bool is_candidate(brix_ctl_t *c, const brix_adapter_rt_t *a, const brix_replica_t *r)
{
    if (r->phase != BRIX_RP_RUNNING || !r->ready || !r->models_known || r->draining)
        return false;
    const brix_obj_t *d = brix_ctl_deploy(c, r->deployment);
    if (!d || !d->d.lora)
        return false;
    if (a->o->a.base_model && strcmp(a->o->a.base_model, r->model))
        return false;
    return brix_labels_match(&a->o->a.selector, &r->labels);
}

static int64_t capacity(brix_ctl_t *c, const brix_replica_t *r)
{
    const brix_obj_t *d = brix_ctl_deploy(c, r->deployment);
    return d ? d->d.adapter_capacity : 0;
}

static void set_cond(brix_ctl_t *c, brix_adapter_rt_t *a, int i, const char *type, bool status,
                     const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void set_cond(brix_ctl_t *c, brix_adapter_rt_t *a, int i, const char *type, bool status,
                     const char *reason, const char *fmt, ...)
{
    brix_cond_t *k = &a->conds[i];
    char msg[sizeof k->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bool flip = !k->type || k->status != status || strcmp(k->reason, reason);
    if (flip)
        k->since_wall_ms = brix_wall_ms();
    if (flip || strcmp(k->message, msg))
        brix_ctl_changed(c);
    k->type = type;
    k->status = status;
    snprintf(k->reason, sizeof k->reason, "%s", reason);
    snprintf(k->message, sizeof k->message, "%s", msg);
}

static int cmp_load(brix_ctl_t *c, const brix_replica_t *x, const brix_replica_t *y)
{
    int lx = (int)x->adapters.n + loads_to(c, x), ly = (int)y->adapters.n + loads_to(c, y);
    if (lx != ly)
        return lx - ly;
    return strcmp(x->name, y->name);
}

/* A request waits for the adapter: a gateway woke it in the last minute
 * (gateways repeat the wake every 5 s while they hold requests). */
static bool awaited(const brix_adapter_rt_t *a, uint64_t wall)
{
    return a->woken_wall && wall >= a->woken_wall && wall - a->woken_wall < 60000;
}

static void reconcile_adapter(brix_ctl_t *c, brix_adapter_rt_t *a, uint64_t now, uint64_t wall)
{
    const brix_adapter_spec_t *s = &a->o->a;
    const char *name = a->o->meta.name;
    bool deleting = a->o->meta.deleting_ms != 0;
    int64_t ttl = s->idle_ttl_ms >= 0 ? s->idle_ttl_ms : c->cfg.adapter_idle_ttl;
    if (!deleting && !a->scaled && ttl > 0 && wall > a->last_used_wall &&
        wall - a->last_used_wall > (uint64_t)ttl) {
        a->scaled = true;
        brix_metric_add(c->m.scaled_down, 1);
        BRIX_INFO("adapter %s: no requests for %.0f s; scaling to zero", name,
                  (double)ttl / 1000.0);
        brix_ctl_changed(c);
    }
    if (!deleting)
        ensure_artifact(c, a, now);

    /* settle finished operations: a 200 counts once /v1/models agrees (or
     * after 5 s, when the level-triggered logic below decides afresh) */
    for (size_t i = a->nops; i-- > 0;) {
        brix_lora_op_t *op = &a->ops[i];
        brix_replica_t *r = brix_ctl_replica(c, op->replica);
        if (op->inflight)
            continue;
        bool has = r && brix_ctl_replica_has(r, name);
        bool drop = !r;
        if (!drop && op->done)
            drop = op->unload ? !has : has || now - op->done_at > 5000;
        else if (!drop)
            drop = op->unload ? !has : has || !is_candidate(c, a, r);
        if (drop)
            drop_op(a, op);
    }
    int ncand = 0, ninst = 0, nloading = 0;
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        if (!is_candidate(c, a, r))
            continue;
        ncand++;
        brix_lora_op_t *op = find_op(a, r->name);
        if (brix_ctl_replica_has(r, name)) {
            const char *root = replica_root(r, name);
            /* loaded from another artifact (the spec changed): reload it */
            bool stale =
                a->art == BRIX_ARTS_READY && a->art_path && root[0] && strcmp(root, a->art_path);
            if (stale && !op) {
                BRIX_INFO("adapter %s: %s holds it from %s; reloading from %s", name, r->name, root,
                          a->art_path);
                op = add_unload(c, a, r->name, now);
            }
            ninst += !stale && !(op && op->unload);
        } else if (op && !op->unload) {
            nloading++;
        }
    }
    int desired = deleting || a->scaled                ? 0
                  : s->replicas && s->replicas < ncand ? (int)s->replicas
                                                       : ncand;
    bool nocap = false;
    if (ninst + nloading < desired && a->art == BRIX_ARTS_READY) {
        int need = desired - ninst - nloading;
        bool random = !strcmp(s->scheduler, "random"), pack = !strcmp(s->scheduler, "binPack");
        while (need-- > 0) {
            brix_replica_t *best = NULL;
            int seen = 0;
            for (size_t i = 0; i < c->nreps; i++) {
                brix_replica_t *r = c->reps[i];
                if (!is_candidate(c, a, r) || brix_ctl_replica_has(r, name) ||
                    find_op(a, r->name) || avoided(a, r->name, now))
                    continue;
                if ((int64_t)r->adapters.n + loads_to(c, r) >= capacity(c, r))
                    continue;
                if (random) { /* reservoir sampling: each eligible replica equally likely */
                    c->rng ^= c->rng << 13, c->rng ^= c->rng >> 7, c->rng ^= c->rng << 17;
                    if (c->rng % (uint64_t)++seen == 0)
                        best = r;
                } else if (!best || (pack ? cmp_load(c, r, best) > 0 : cmp_load(c, r, best) < 0)) {
                    best = r;
                }
            }
            if (!best) {
                nocap = true;
                break;
            }
            if (add_op(a, best->name, false, now)) {
                nloading++;
                BRIX_INFO("adapter %s: placing on %s", name, best->name);
            }
        }
    } else if (ninst > desired) {
        int extra = ninst - desired;
        while (extra-- > 0) {
            brix_replica_t *worst = NULL;
            for (size_t i = 0; i < c->nreps; i++) {
                brix_replica_t *r = c->reps[i];
                if (!is_candidate(c, a, r) || !brix_ctl_replica_has(r, name) || find_op(a, r->name))
                    continue;
                if (!worst || cmp_load(c, r, worst) > 0)
                    worst = r;
            }
            if (!worst || !add_unload(c, a, worst->name, now))
                break;
        }
    }
    /* no room anywhere for an adapter a request is waiting for (a gateway
     * woke it in the last minute): the least recently used adapter idle for
     * --evict-idle-min on a candidate replica is scaled to zero early (LRU),
     * and this one goes there once it is gone */
    if (nocap && ninst + nloading == 0 && desired > 0 && a->art == BRIX_ARTS_READY &&
        c->cfg.evict_idle_min > 0 && awaited(a, wall)) {
        brix_adapter_rt_t *victim = NULL;
        bool room_coming = false; /* an unload on a candidate is under way: wait for it */
        for (size_t i = 0; i < c->nreps && !room_coming; i++) {
            brix_replica_t *r = c->reps[i];
            if (!is_candidate(c, a, r) || avoided(a, r->name, now))
                continue;
            for (size_t j = 0; j < r->adapters.n && !room_coming; j++) {
                brix_adapter_rt_t *b = brix_ctl_adapter(c, r->adapters.v[j]);
                if (b && (brix_ctl_draining(c, r, r->adapters.v[j]) || b->scaled)) {
                    room_coming = true;
                    break;
                }
                if (!b || b == a || b->scaled || b->o->meta.deleting_ms || b->nops ||
                    wall < b->last_used_wall ||
                    wall - b->last_used_wall < (uint64_t)c->cfg.evict_idle_min)
                    continue;
                if (!victim || b->last_used_wall < victim->last_used_wall)
                    victim = b;
            }
        }
        if (victim && !room_coming) {
            victim->scaled = true;
            brix_metric_add(c->m.evictions, 1);
            BRIX_INFO("adapter %s: idle for %.0f s, scaled to zero early to make room for %s",
                      victim->o->meta.name, (double)(wall - victim->last_used_wall) / 1000.0, name);
            brix_ctl_changed(c);
            brix_ctl_kick(c);
        }
    }
    /* unload from replicas that hold it but are no longer candidates, e.g.
     * when the podSelector changed or the adapter is being deleted (a replica
     * that is not ready is tried too: the object waits until it is clean) */
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        if (r->phase == BRIX_RP_RUNNING && brix_ctl_replica_has(r, name) &&
            (deleting || !is_candidate(c, a, r)) && !find_op(a, r->name))
            add_unload(c, a, r->name, now);
    }
    for (size_t i = 0; i < a->nops; i++) {
        brix_lora_op_t *op = &a->ops[i];
        brix_replica_t *r = brix_ctl_replica(c, op->replica);
        if (!op->inflight && !op->done && r && now >= op->next_at &&
            (op->unload || a->art == BRIX_ARTS_READY))
            issue_op(c, a, op, r);
    }

    /* status: phase and conditions, from what was just computed */
    int prev_ready = a->ready;
    const char *prev_phase = a->phase;
    a->candidates = ncand;
    a->desired = desired;
    a->ready = ninst;
    set_cond(c, a, 0, "Initialized", true, "Accepted", "adapter %s is registered", name);
    const char *phase;
    if (deleting) {
        phase = "Unknown";
        set_cond(c, a, 1, "Scheduled", false, "Deleting", "unloading from %d replica(s)", ninst);
    } else if (a->art == BRIX_ARTS_FAILED && ninst == 0) {
        phase = "Failed";
        set_cond(c, a, 1, "Scheduled", false, a->art_reason, "%s", a->art_msg);
    } else if (a->scaled) {
        phase = "Scaled";
        set_cond(c, a, 1, "Scheduled", true, "ScaledToZero",
                 "no requests for %.0f s; the next request loads it", (double)ttl / 1000.0);
    } else if (ncand == 0) {
        phase = "Pending";
        set_cond(c, a, 1, "Scheduled", false, "NoCandidates",
                 "no ready replica matches the podSelector%s%s",
                 s->base_model ? " and base model " : "", s->base_model ? s->base_model : "");
    } else if (nocap && ninst + nloading == 0) {
        phase = "Pending";
        set_cond(c, a, 1, "Scheduled", false, "NoCapacity",
                 "all %d candidate replica(s) are full or failing (adapter capacity per replica)",
                 ncand);
    } else {
        phase = ninst >= desired && ninst > 0 ? "Running" : ninst > 0 ? "Bound" : "Scheduled";
        set_cond(c, a, 1, "Scheduled", true, "Placed", "%d of %d candidate replica(s) chosen",
                 ninst + nloading, ncand);
    }
    if (a->art == BRIX_ARTS_FETCHING && ninst == 0 && !a->scaled && !deleting)
        phase = "Pending";
    bool ready = ninst > 0 && ninst >= desired;
    if (ready)
        set_cond(c, a, 2, "Ready", true, "Loaded", "loaded on %d replica(s)", ninst);
    else if (a->scaled)
        set_cond(c, a, 2, "Ready", false, "ScaledToZero", "loaded nowhere until a request arrives");
    else if (a->art == BRIX_ARTS_FETCHING)
        set_cond(c, a, 2, "Ready", false, "Fetching", "fetching %s", s->artifact_url);
    else
        set_cond(c, a, 2, "Ready", false, ninst ? "PartiallyLoaded" : "NotLoaded",
                 "loaded on %d of %d wanted replica(s)%s%s", ninst, desired,
                 a->last_err[0] ? "; last error: " : "", a->last_err);
    a->phase = phase;
    if (prev_phase != phase || prev_ready != a->ready)
        brix_ctl_changed(c);
}

void brix_ctl_reconcile(brix_ctl_t *c)
{
    if (c->stopping || !c->ready)
        return;
    uint64_t t0 = brix_now_ns();
    uint64_t now = brix_now_ms(), wall = brix_wall_ms();
    /* a deleted PodAutoscaler lets go at once: its deployment runs
     * spec.replicas again */
    for (size_t i = c->npas; i-- > 0;) {
        brix_pa_rt_t *p = c->pas[i];
        if (!p->o->meta.deleting_ms)
            continue;
        BRIX_INFO("autoscaler %s: deleted; %s runs its spec.replicas again", p->o->meta.name,
                  p->o->pa.target_name);
        memmove(c->pas + i, c->pas + i + 1, (c->npas - i - 1) * sizeof *c->pas);
        c->npas--;
        brix_ctl_pa_free(p);
        brix_ctl_changed(c);
    }
    reconcile_deployments(c, now);
    /* adapters a request waits for (woken in the last minute) go first: a slot
     * that just freed up (an eviction) is theirs, not an idle newcomer's */
    for (size_t i = c->nadapters; i-- > 0;) {
        brix_adapter_rt_t *a = c->adapters[i];
        if (awaited(a, wall))
            reconcile_adapter(c, a, now, wall);
    }
    for (size_t i = c->nadapters; i-- > 0;) {
        brix_adapter_rt_t *a = c->adapters[i];
        if (!awaited(a, wall))
            reconcile_adapter(c, a, now, wall);
        if (a->o->meta.deleting_ms && a->ready == 0 && a->nops == 0) {
            bool anywhere = false;
            for (size_t j = 0; j < c->nreps && !anywhere; j++)
                anywhere = c->reps[j]->phase == BRIX_RP_RUNNING &&
                           brix_ctl_replica_has(c->reps[j], a->o->meta.name);
            if (!anywhere) {
                BRIX_INFO("adapter %s: deleted", a->o->meta.name);
                memmove(c->adapters + i, c->adapters + i + 1,
                        (c->nadapters - i - 1) * sizeof *c->adapters);
                c->nadapters--;
                brix_ctl_adapter_free(a);
                brix_ctl_changed(c);
            }
        }
    }
    artifact_gc(c, now);
    brix_metric_observe(c->m.reconcile_seconds, (double)(brix_now_ns() - t0) / 1e9);
}
