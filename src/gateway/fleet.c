/*
 * Pods, snapshots and the circuit breaker. The breaker follows Envoy's
 * outlier detection: N consecutive failures eject a pod for
 * base_ejection × 2^(ejections-1) (capped); when the time is up the pod is
 * half-open and one probe request decides whether it closes again.
 */
#include "gateway/fleet.h"

#include "core/alloc.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

brix_pod_t *brix_pod_new(uint32_t id, const char *name, const char *url, const char *host, int port)
{
    brix_pod_t *p = brix_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->id = id;
    p->name = brix_strdup(name);
    p->url = brix_strdup(url);
    if (!p->name || !p->url) {
        brix_free(p->name);
        brix_free(p->url);
        brix_free(p);
        return NULL;
    }
    snprintf(p->host, sizeof p->host, "%s", host);
    p->port = port;
    snprintf(p->hostport, sizeof p->hostport, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    atomic_init(&p->refs, 1);
    return p;
}

void brix_pod_ref(brix_pod_t *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
}

void brix_pod_unref(brix_pod_t *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) {
        brix_free(p->name);
        brix_free(p->url);
        brix_free(p);
    }
}

void brix_snap_ref(brix_fleet_snap_t *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void brix_snap_unref(brix_fleet_snap_t *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->npods; i++) {
        brix_free(s->pods[i].base_model);
        brix_pod_unref(s->pods[i].pod);
    }
    for (size_t i = 0; i < s->nmodels; i++) {
        brix_free(s->models[i].name);
        brix_free(s->models[i].parent);
        brix_free(s->models[i].pods);
        if (s->models[i].activity)
            brix_model_activity_unref(s->models[i].activity);
    }
    if (s->registry)
        brix_registry_unref(s->registry);
    brix_free(s->pods);
    brix_free(s->models);
    brix_free(s->models_json);
    brix_free(s);
}

const brix_model_entry_t *brix_snap_model(const brix_fleet_snap_t *s, const char *name)
{
    size_t lo = 0, hi = s->nmodels;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->models[mid].name, name);
        if (c == 0)
            return &s->models[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

bool brix_snap_model_ready(const brix_fleet_snap_t *s, const brix_model_entry_t *me)
{
    for (size_t i = 0; me && i < me->npods; i++)
        if (s->pods[me->pods[i]].healthy)
            return true;
    return false;
}

void brix_model_activity_ref(brix_model_activity_t *a)
{
    atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
}

void brix_model_activity_unref(brix_model_activity_t *a)
{
    if (atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1)
        brix_free(a);
}

/* ----------------------------------------------------------- registry -- */

static const char *const phase_names[] = {
    [BRIX_REG_UNKNOWN] = "Unknown",     [BRIX_REG_PENDING] = "Pending",
    [BRIX_REG_SCHEDULED] = "Scheduled", [BRIX_REG_BOUND] = "Bound",
    [BRIX_REG_RUNNING] = "Running",     [BRIX_REG_SCALED] = "Scaled",
    [BRIX_REG_FAILED] = "Failed",
};

brix_reg_phase_t brix_reg_phase_parse(const char *s)
{
    for (size_t i = 1; s && i < sizeof phase_names / sizeof *phase_names; i++)
        if (!strcmp(s, phase_names[i]))
            return (brix_reg_phase_t)i;
    return BRIX_REG_UNKNOWN;
}

const char *brix_reg_phase_name(brix_reg_phase_t p)
{
    return (size_t)p < sizeof phase_names / sizeof *phase_names ? phase_names[p] : "Unknown";
}

void brix_registry_ref(brix_registry_t *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void brix_registry_unref(brix_registry_t *r)
{
    if (!r || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < r->nadapters; i++) {
        brix_free(r->adapters[i].name);
        brix_free(r->adapters[i].base_model);
        brix_free(r->adapters[i].message);
    }
    for (size_t i = 0; i < r->ndeployments; i++) {
        brix_free(r->deployments[i].name);
        brix_free(r->deployments[i].model);
    }
    for (size_t i = 0; i < r->nbase_models; i++) {
        brix_free(r->base_models[i]);
        if (r->base_load && r->base_load[i])
            brix_model_activity_unref(r->base_load[i]);
    }
    brix_free(r->adapters);
    brix_free(r->deployments);
    brix_free(r->base_models);
    brix_free(r->base_load);
    brix_free(r);
}

const brix_reg_adapter_t *brix_registry_adapter(const brix_registry_t *r, const char *name)
{
    size_t lo = 0, hi = r ? r->nadapters : 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(r->adapters[mid].name, name);
        if (c == 0)
            return &r->adapters[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Index of a base model, or -1. */
static ptrdiff_t base_index(const brix_registry_t *r, const char *name)
{
    size_t lo = 0, hi = r && name ? r->nbase_models : 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(r->base_models[mid], name);
        if (c == 0)
            return (ptrdiff_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

bool brix_registry_has_base(const brix_registry_t *r, const char *name)
{
    return base_index(r, name) >= 0;
}

brix_model_activity_t *brix_registry_load(const brix_registry_t *r, const char *base)
{
    ptrdiff_t i = base_index(r, base);
    return i >= 0 && r->base_load ? r->base_load[i] : NULL;
}

const brix_reg_deployment_t *brix_registry_deployment_for(const brix_registry_t *r,
                                                          const char *model)
{
    const brix_reg_deployment_t *first = NULL, *stz = NULL;
    for (size_t i = 0; r && i < r->ndeployments; i++) {
        const brix_reg_deployment_t *d = &r->deployments[i];
        if (strcmp(d->model, model))
            continue;
        if (d->replicas > 0)
            return d; /* already starting: waking it keeps the demand on one */
        if (!stz && d->scale_to_zero)
            stz = d;
        if (!first)
            first = d;
    }
    return stz ? stz : first;
}

brix_breaker_state_t brix_breaker_state(brix_pod_t *p, uint64_t now_ns)
{
    int st = atomic_load_explicit(&p->breaker, memory_order_acquire);
    if (st == BRIX_BREAKER_OPEN && now_ns >= atomic_load(&p->ejected_until_ns))
        return BRIX_BREAKER_HALF_OPEN;
    return (brix_breaker_state_t)st;
}

bool brix_breaker_allow(brix_pod_t *p, uint64_t now_ns, bool *probe)
{
    *probe = false;
    switch (brix_breaker_state(p, now_ns)) {
    case BRIX_BREAKER_CLOSED:
        return true;
    case BRIX_BREAKER_OPEN:
        return false;
    case BRIX_BREAKER_HALF_OPEN: {
        int expected = 0;
        if (atomic_compare_exchange_strong(&p->probe_in_flight, &expected, 1)) {
            *probe = true;
            return true;
        }
        return false;
    }
    }
    return false;
}

bool brix_breaker_report(brix_pod_t *p, const brix_breaker_cfg_t *c, bool ok, bool probe,
                         uint64_t now_ns)
{
    if (probe)
        atomic_store(&p->probe_in_flight, 0);
    if (ok) {
        atomic_store(&p->consecutive_failures, 0);
        if (probe || atomic_load(&p->breaker) != BRIX_BREAKER_CLOSED) {
            atomic_store(&p->breaker, BRIX_BREAKER_CLOSED);
            atomic_store(&p->ejections, 0);
        }
        return false;
    }
    unsigned fails = atomic_fetch_add(&p->consecutive_failures, 1) + 1;
    bool eject = probe || (c->consecutive_failures && fails >= c->consecutive_failures &&
                           atomic_load(&p->breaker) == BRIX_BREAKER_CLOSED);
    if (!eject)
        return false;
    unsigned n = atomic_fetch_add(&p->ejections, 1);
    uint64_t ms = c->base_ejection_ms;
    for (unsigned i = 0; i < n && ms < c->max_ejection_ms; i++)
        ms *= 2;
    if (ms > c->max_ejection_ms)
        ms = c->max_ejection_ms;
    atomic_store(&p->ejected_until_ns, now_ns + ms * 1000000ull);
    atomic_store(&p->breaker, BRIX_BREAKER_OPEN);
    atomic_store(&p->consecutive_failures, 0);
    atomic_fetch_add(&p->total_ejections, 1);
    return true;
}
