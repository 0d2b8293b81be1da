/*
 * Held requests and wake demand. The demand table is a small array (one
 * entry per adapter or model that requests waited for recently) under a mutex; the
 * per-worker queue is a list with one timer armed for the earliest deadline,
 * re-armed after each expiry scan.
 */
#include "gateway/hold.h"

#include "core/alloc.h"
#include "core/time.h"

#include <errno.h>
#include <string.h>

#define WANT_FORGET_NS (60ull * 1000000000ull) /* an entry nothing waited for in this long goes */
#define FRESH_MIN_NS   (1000000000ull)         /* a new wait re-wakes at most once a second */

brix_hold_state_t brix_hold_classify(const brix_fleet_snap_t *s, const char *model,
                                     const brix_model_entry_t **me, const brix_reg_adapter_t **ra,
                                     const brix_reg_deployment_t **dep)
{
    *me = brix_snap_model(s, model);
    *ra = brix_registry_adapter(s->registry, model);
    *dep = NULL;
    if (!*ra) {
        /* a base model: routed when a ready pod serves it; else held when a
         * deployment of the controller serves it (the lookup is only paid
         * by requests that have nowhere to go) */
        if ((*me && brix_snap_model_ready(s, *me)) || !s->registry)
            return BRIX_HOLD_NONE;
        *dep = brix_registry_deployment_for(s->registry, model);
        /* held only when a replica is coming: the deployment runs some, or an
         * autoscaler scales it from zero; one at 0 by its spec has none to
         * wait for (answered at once below) */
        return *dep && ((*dep)->replicas > 0 || (*dep)->scale_to_zero) ? BRIX_HOLD_WAIT
                                                                       : BRIX_HOLD_NONE;
    }
    if (brix_snap_model_ready(s, *me))
        return BRIX_HOLD_READY;
    if ((*ra)->phase == BRIX_REG_FAILED && (*ra)->ninstances == 0)
        return BRIX_HOLD_FAILED;
    return BRIX_HOLD_WAIT;
}

/* -------------------------------------------------------------- demand -- */

static void on_kick(uv_async_t *a)
{
    brix_gw_demand_t *d = a->data;
    if (d->on_kick)
        d->on_kick(d->kick_ud);
}

int brix_gw_demand_init(brix_gw_demand_t *d, uv_loop_t *control_loop)
{
    memset(d, 0, sizeof *d);
    uv_mutex_init(&d->mu);
    int rc = uv_async_init(control_loop, &d->kick, on_kick);
    if (rc)
        return rc;
    d->kick.data = d;
    uv_unref((uv_handle_t *)&d->kick);
    return 0;
}

void brix_gw_demand_close(brix_gw_demand_t *d)
{
    if (d->kick.loop && !uv_is_closing((uv_handle_t *)&d->kick))
        uv_close((uv_handle_t *)&d->kick, NULL);
}

void brix_gw_demand_free(brix_gw_demand_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        brix_free(d->v[i].name);
    brix_free(d->v);
    d->v = NULL;
    d->n = 0;
    uv_mutex_destroy(&d->mu);
}

/* Under mu. */
static brix_gw_want_t *want_get(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name,
                                bool create)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->v[i].kind == kind && !strcmp(d->v[i].name, name))
            return &d->v[i];
    if (!create)
        return NULL;
    brix_gw_want_t *v = brix_realloc(d->v, (d->n + 1) * sizeof *v);
    if (!v)
        return NULL;
    d->v = v;
    brix_gw_want_t *w = &d->v[d->n];
    memset(w, 0, sizeof *w);
    w->kind = kind;
    if (!(w->name = brix_strdup(name)))
        return NULL;
    d->n++;
    return w;
}

static int mark(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name, bool hold,
                int64_t cap)
{
    if (hold && cap >= 0 && atomic_load(&d->held_total) >= cap)
        return -EBUSY;
    uv_mutex_lock(&d->mu);
    brix_gw_want_t *w = want_get(d, kind, name, true);
    bool kick = false;
    if (w) {
        if (hold) {
            kick = w->held++ == 0;
            atomic_fetch_add(&d->held_total, 1);
            atomic_fetch_add(&d->held_kind[kind], 1);
        } else {
            kick = w->poked = true;
        }
        w->fresh |= kick;
    }
    uv_mutex_unlock(&d->mu);
    if (!w)
        return -ENOMEM;
    if (kick)
        uv_async_send(&d->kick);
    return 0;
}

int brix_gw_demand_hold(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name, int64_t cap)
{
    return mark(d, kind, name, true, cap);
}

int brix_gw_demand_poke(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name)
{
    return mark(d, kind, name, false, -1);
}

void brix_gw_demand_release(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name)
{
    uv_mutex_lock(&d->mu);
    brix_gw_want_t *w = want_get(d, kind, name, false);
    if (w && w->held > 0) {
        atomic_fetch_sub(&d->held_total, 1);
        atomic_fetch_sub(&d->held_kind[kind], 1);
        if (--w->held == 0) {
            w->quiet_ns = brix_now_ns();
            w->fresh = w->poked; /* nobody waits any more: no wake for them */
        }
    }
    uv_mutex_unlock(&d->mu);
}

size_t brix_gw_demand_due(brix_gw_demand_t *d, uint64_t now_ns, uint64_t every_ns,
                          brix_gw_wake_t *out, size_t max)
{
    size_t k = 0;
    uv_mutex_lock(&d->mu);
    size_t j = 0;
    for (size_t i = 0; i < d->n; i++) {
        brix_gw_want_t *w = &d->v[i];
        bool due = !w->in_flight && k < max &&
                   ((w->fresh && (!w->last_ns || now_ns - w->last_ns >= FRESH_MIN_NS)) ||
                    (w->held > 0 && now_ns - w->last_ns >= every_ns));
        if (due && (out[k].name = brix_strdup(w->name))) {
            out[k++].kind = w->kind;
            w->in_flight = true;
            w->fresh = w->poked = false;
            w->last_ns = now_ns;
        }
        if (!w->held && !w->fresh && !w->in_flight && now_ns - w->quiet_ns > WANT_FORGET_NS &&
            now_ns - w->last_ns > WANT_FORGET_NS) {
            brix_free(w->name);
            continue;
        }
        d->v[j++] = *w;
    }
    d->n = j;
    uv_mutex_unlock(&d->mu);
    return k;
}

void brix_gw_demand_sent(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name)
{
    uv_mutex_lock(&d->mu);
    brix_gw_want_t *w = want_get(d, kind, name, false);
    if (w)
        w->in_flight = false;
    uv_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------- workers -- */

static void arm(brix_gw_holdq_t *q);

static void on_deadline(uv_timer_t *t)
{
    brix_gw_holdq_t *q = t->data;
    q->armed_ns = 0;
    /* restart from the head after each expiry: answering one request may
     * start the next one pipelined on its connection (which may be held) */
    for (;;) {
        uint64_t now = brix_now_ns();
        brix_gw_held_t *e = q->head;
        while (e && e->deadline_ns > now)
            e = e->next;
        if (!e)
            break;
        brix_gw_holdq_remove(q, e);
        q->expire(e, q->ud);
    }
    arm(q);
}

static void arm(brix_gw_holdq_t *q)
{
    if (q->closed)
        return;
    uint64_t first = 0;
    for (brix_gw_held_t *e = q->head; e; e = e->next)
        if (!first || e->deadline_ns < first)
            first = e->deadline_ns;
    if (!first) {
        uv_timer_stop(&q->timer);
        q->armed_ns = 0;
        return;
    }
    if (q->armed_ns && q->armed_ns <= first)
        return;
    uint64_t now = brix_now_ns();
    uint64_t ms = first > now ? (first - now + 999999) / 1000000 : 0;
    uv_timer_start(&q->timer, on_deadline, ms, 0);
    q->armed_ns = first;
}

void brix_gw_holdq_init(brix_gw_holdq_t *q, uv_loop_t *loop, brix_gw_demand_t *d,
                        void (*expire)(brix_gw_held_t *, void *), void *ud)
{
    memset(q, 0, sizeof *q);
    uv_timer_init(loop, &q->timer);
    q->timer.data = q;
    q->demand = d;
    q->expire = expire;
    q->ud = ud;
}

int brix_gw_holdq_add(brix_gw_holdq_t *q, brix_gw_held_t *e, brix_hold_kind_t kind,
                      const char *model, uint64_t timeout_ms, int64_t cap)
{
    if (q->closed)
        return -ECANCELED;
    int rc = brix_gw_demand_hold(q->demand, kind, model, cap);
    if (rc)
        return rc;
    e->model = model;
    e->kind = kind;
    e->since_ns = brix_now_ns();
    e->deadline_ns = e->since_ns + timeout_ms * 1000000ull;
    e->next = NULL;
    e->prev = q->tail;
    if (q->tail)
        q->tail->next = e;
    else
        q->head = e;
    q->tail = e;
    q->n++;
    e->linked = true;
    arm(q);
    return 0;
}

void brix_gw_holdq_remove(brix_gw_holdq_t *q, brix_gw_held_t *e)
{
    if (!e->linked)
        return;
    if (e->prev)
        e->prev->next = e->next;
    else
        q->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        q->tail = e->prev;
    e->prev = e->next = NULL;
    e->linked = false;
    q->n--;
    brix_gw_demand_release(q->demand, e->kind, e->model);
    if (!q->head && q->armed_ns && !q->closed) {
        uv_timer_stop(&q->timer);
        q->armed_ns = 0;
    }
}

void brix_gw_holdq_close(brix_gw_holdq_t *q)
{
    if (q->closed)
        return;
    q->closed = true;
    uv_timer_stop(&q->timer);
    uv_close((uv_handle_t *)&q->timer, NULL);
}
