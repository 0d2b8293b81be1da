/*
 * fair_pool — one fairness queue per base model (fair.h), so a saturated
 * model never holds back requests for another: an adapter shares its base
 * model's pods, hence its queue. Each queue's capacity is
 * --max-inflight-per-pod x that model's ready pods, updated with every
 * fleet snapshot. Queues are created on first use and live as long as the
 * gateway (their pointers are held by requests without a lock).
 */
#include <string.h>

#include "core/alloc.h"
#include "gateway/gateway.h"

struct brix_gw_fairs {
    uv_mutex_t mu;
    brix_fair_cfg_t cfg;
    int64_t per_pod;
    struct fq {
        char *model;
        brix_fair_t *f;
    } * q;
    size_t n, cap;
};

brix_gw_fairs_t *brix_gw_fairs_new(const brix_fair_cfg_t *cfg, int64_t per_pod)
{
    brix_gw_fairs_t *p = brix_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->cfg = *cfg;
    p->per_pod = per_pod;
    uv_mutex_init(&p->mu);
    return p;
}

void brix_gw_fairs_free(brix_gw_fairs_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        brix_fair_free(p->q[i].f);
        brix_free(p->q[i].model);
    }
    brix_free(p->q);
    uv_mutex_destroy(&p->mu);
    brix_free(p);
}

static int64_t capacity_of(const brix_gw_fairs_t *p, const brix_fleet_snap_t *snap,
                           const char *model)
{
    const brix_model_entry_t *me = snap ? brix_snap_model(snap, model) : NULL;
    if (!me)
        return 0;
    int64_t ready = 0;
    for (size_t i = 0; i < me->npods; i++)
        ready += snap->pods[me->pods[i]].healthy;
    return p->per_pod * ready;
}

brix_fair_t *brix_gw_fairs_get(brix_gw_t *gw, const brix_model_entry_t *me,
                               const brix_fleet_snap_t *snap)
{
    brix_gw_fairs_t *p = gw->fair;
    const char *base = me->parent ? me->parent : me->name;
    brix_fair_t *f = NULL;
    uv_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n && !f; i++)
        if (!strcmp(p->q[i].model, base))
            f = p->q[i].f;
    if (!f) {
        if (p->n == p->cap) {
            size_t nc = p->cap ? p->cap * 2 : 8;
            struct fq *nq = brix_realloc(p->q, nc * sizeof *nq);
            if (!nq)
                goto out;
            p->q = nq;
            p->cap = nc;
        }
        char *name = brix_strdup(base);
        f = name ? brix_fair_new(&p->cfg, brix_gw_fair_deliver, gw) : NULL;
        if (!f) {
            brix_free(name);
            goto out;
        }
        brix_fair_set_capacity(f, capacity_of(p, snap, base));
        p->q[p->n].model = name;
        p->q[p->n].f = f;
        p->n++;
    }
out:
    uv_mutex_unlock(&p->mu);
    return f;
}

void brix_gw_fairs_publish(brix_gw_fairs_t *p, const brix_fleet_snap_t *snap)
{
    uv_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++)
        brix_fair_set_capacity(p->q[i].f, capacity_of(p, snap, p->q[i].model));
    uv_mutex_unlock(&p->mu);
}

void brix_gw_fairs_sweep(brix_gw_fairs_t *p, uint64_t now_ns)
{
    uv_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++)
        brix_fair_sweep(p->q[i].f, now_ns);
    uv_mutex_unlock(&p->mu);
}

void brix_gw_fairs_stats(brix_gw_fairs_t *p, brix_fair_stats_t *sum)
{
    memset(sum, 0, sizeof *sum);
    uv_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        brix_fair_stats_t s;
        brix_fair_stats(p->q[i].f, &s);
        sum->capacity += s.capacity > 0 ? s.capacity : 0;
        sum->inflight += s.inflight;
        sum->queued += s.queued;
        sum->admitted_direct += s.admitted_direct;
        sum->admitted_queued += s.admitted_queued;
        sum->rejected_full += s.rejected_full;
        sum->expired += s.expired;
        sum->evicted += s.evicted;
    }
    uv_mutex_unlock(&p->mu);
}
