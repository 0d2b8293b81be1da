/*
 * fair — Virtual Token Counter scheduling of per-tenant queues (fair.h).
 */
#include "gateway/fair.h"

#include <stdio.h>
#include <string.h>
#include <uv.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/time.h"

#define NAME_MAX_LEN 64

typedef struct tenant {
    char name[NAME_MAX_LEN];
    double counter;
    int64_t priority;
    brix_fair_item_t *head, *tail;
    int64_t qlen;
    int64_t inflight; /* its requests holding slots */
    int backlog_pos;  /* index in f->backlog, -1 when not waiting */
    /* idle tenants (nothing queued or in flight), longest idle first: the
     * candidates for eviction */
    int idle_prev, idle_next;
    bool idle_linked;
    uint64_t idle_since_ns;
} tenant_t;

struct brix_fair {
    brix_fair_cfg_t cfg;
    brix_fair_deliver_fn deliver;
    void *ud;
    uv_mutex_t mu;
    int64_t capacity, inflight, queued;
    tenant_t *t;
    size_t nt, tcap;
    int *slots; /* open addressing: tenant index + 1, 0 = empty */
    size_t nslots;
    int *backlog; /* tenants with waiting requests */
    size_t nbacklog;
    int64_t nactive;          /* tenants with requests waiting or in flight */
    int idle_head, idle_tail; /* -1: none */
    double last_served;
    brix_fair_stats_t st;
};

brix_fair_t *brix_fair_new(const brix_fair_cfg_t *cfg, brix_fair_deliver_fn deliver, void *ud)
{
    brix_fair_t *f = brix_calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->cfg = *cfg;
    if (f->cfg.max_tenants < 1)
        f->cfg.max_tenants = 1;
    f->deliver = deliver;
    f->ud = ud;
    f->nslots = 16;
    while (f->nslots < (size_t)f->cfg.max_tenants * 2 + 2)
        f->nslots *= 2;
    f->slots = brix_calloc(f->nslots, sizeof *f->slots);
    f->tcap = (size_t)f->cfg.max_tenants + 1;
    f->t = brix_calloc(f->tcap, sizeof *f->t);
    f->backlog = brix_calloc(f->tcap, sizeof *f->backlog);
    if (!f->slots || !f->t || !f->backlog) {
        brix_fair_free(f);
        return NULL;
    }
    /* slot 0: tenants beyond max_tenants share it */
    snprintf(f->t[0].name, sizeof f->t[0].name, "%s", "(other)");
    f->capacity = -1; /* unknown until the first fleet snapshot: no limit */
    f->t[0].backlog_pos = -1;
    f->nt = 1;
    f->idle_head = f->idle_tail = -1;
    uv_mutex_init(&f->mu);
    return f;
}

void brix_fair_free(brix_fair_t *f)
{
    if (!f)
        return;
    if (f->t) {
        for (size_t i = 0; i < f->nt; i++) {
            brix_fair_item_t *it = f->t[i].head;
            while (it) {
                brix_fair_item_t *n = it->next;
                brix_free(it);
                it = n;
            }
        }
        uv_mutex_destroy(&f->mu);
    }
    brix_free(f->slots);
    brix_free(f->t);
    brix_free(f->backlog);
    brix_free(f);
}

static void idle_unlink(brix_fair_t *f, int ti)
{
    tenant_t *t = &f->t[ti];
    if (!t->idle_linked)
        return;
    if (t->idle_prev >= 0)
        f->t[t->idle_prev].idle_next = t->idle_next;
    else
        f->idle_head = t->idle_next;
    if (t->idle_next >= 0)
        f->t[t->idle_next].idle_prev = t->idle_prev;
    else
        f->idle_tail = t->idle_prev;
    t->idle_linked = false;
}

static void idle_push(brix_fair_t *f, int ti)
{
    tenant_t *t = &f->t[ti];
    if (ti == 0 || t->idle_linked)
        return; /* the overflow tenant is never evicted */
    t->idle_since_ns = brix_now_ns();
    t->idle_prev = f->idle_tail;
    t->idle_next = -1;
    if (f->idle_tail >= 0)
        f->t[f->idle_tail].idle_next = ti;
    else
        f->idle_head = ti;
    f->idle_tail = ti;
    t->idle_linked = true;
}

static size_t slot_home(const brix_fair_t *f, const char *name)
{
    return XXH64(name, strlen(name), 0) & (f->nslots - 1);
}

/* Removes tenant ti from the name index (linear probing: entries after the
 * hole move back unless their home lies cyclically in (hole, entry]). */
static void slot_remove(brix_fair_t *f, int ti)
{
    size_t mask = f->nslots - 1, i = slot_home(f, f->t[ti].name);
    while (f->slots[i] && f->slots[i] != ti + 1)
        i = (i + 1) & mask;
    if (!f->slots[i])
        return;
    f->slots[i] = 0;
    for (size_t j = (i + 1) & mask; f->slots[j]; j = (j + 1) & mask) {
        size_t h = slot_home(f, f->t[f->slots[j] - 1].name);
        bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
        if (!stays) {
            f->slots[i] = f->slots[j];
            f->slots[j] = 0;
            i = j;
        }
    }
}

/* How many of the longest-idle tenants a newcomer looks at: bounded work
 * under the lock whatever the number of tenants. */
#define EVICT_SCAN 64

/* A table entry for a newcomer when the table is full: among the tenants
 * idle for idle_ms, the longest-idle one whose counter a newcomer's start
 * (last_served) would not lower, so that coming back as a newcomer gives it
 * nothing; failing that, the longest-idle one (its excess service is then
 * forgotten: fairness is kept among the tenants the table holds, and a
 * self-declared user could shed its counter by changing its name anyway).
 * -1 if no tenant has been idle long enough. */
static int evict_idle(brix_fair_t *f)
{
    uint64_t now = brix_now_ns(), idle_ns = f->cfg.idle_ms * 1000000ull;
    int n = 0, pick = -1;
    for (int ti = f->idle_head; ti >= 0 && n < EVICT_SCAN; ti = f->t[ti].idle_next, n++) {
        tenant_t *t = &f->t[ti];
        if (now - t->idle_since_ns < idle_ns)
            break; /* the rest went idle later still */
        if (pick < 0)
            pick = ti;
        if (t->counter <= f->last_served) {
            pick = ti;
            break;
        }
    }
    if (pick >= 0) {
        idle_unlink(f, pick);
        slot_remove(f, pick);
        f->st.evicted++;
    }
    return pick;
}

/* A tenant's slot; with `create`, a new one (or the shared overflow slot 0
 * when the table is full and no idle tenant can make room), else -1 when
 * unknown. */
static int tenant_of(brix_fair_t *f, const char *full, bool create)
{
    /* names are kept to NAME_MAX_LEN - 1 bytes: hash and compare what is kept */
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s", full);
    size_t mask = f->nslots - 1;
    for (size_t i = slot_home(f, name);; i = (i + 1) & mask) {
        int s = f->slots[i];
        if (!s) {
            if (!create)
                return -1;
            int ti;
            if (f->nt < f->tcap) {
                ti = (int)f->nt++;
            } else {
                ti = evict_idle(f);
                if (ti < 0)
                    return 0;
                /* the removal may have moved entries: probe again */
                for (i = slot_home(f, name); f->slots[i]; i = (i + 1) & mask)
                    ;
            }
            tenant_t *t = &f->t[ti];
            memset(t, 0, sizeof *t);
            snprintf(t->name, sizeof t->name, "%s", name);
            t->backlog_pos = -1;
            /* a newcomer starts level with the least-served tenant waiting,
             * or with the last one served */
            t->counter = f->last_served;
            f->slots[i] = ti + 1;
            idle_push(f, ti); /* until its first request is in (or refused) */
            return ti;
        }
        if (!strcmp(f->t[s - 1].name, name))
            return s - 1;
    }
}

static void dispatch(brix_fair_t *f);

void brix_fair_set_capacity(brix_fair_t *f, int64_t capacity)
{
    uv_mutex_lock(&f->mu);
    f->capacity = capacity;
    dispatch(f); /* more room: let waiting requests in */
    uv_mutex_unlock(&f->mu);
}

static bool active(const tenant_t *t)
{
    return t->qlen > 0 || t->inflight > 0;
}

/* Wraps a change of t's queue or in-flight count, keeping nactive. */
#define ACTIVE_CHANGE(f, t, stmt)                                                                  \
    do {                                                                                           \
        bool was_ = active(t);                                                                     \
        stmt;                                                                                      \
        (f)->nactive += (int64_t)active(t) - (int64_t)was_;                                        \
        if (was_ && !active(t))                                                                    \
            idle_push(f, (int)((t) - (f)->t));                                                     \
        else if (!was_ && active(t))                                                               \
            idle_unlink(f, (int)((t) - (f)->t));                                                   \
    } while (0)

/* May t have one more request in the fleet? Below capacity, a tenant under
 * its fair share (capacity / active tenants) always may; one at or above it
 * may not take the last `reserve` of the capacity, which is kept for the
 * others so their requests start at once instead of waiting for a slot. */
static bool can_admit(const brix_fair_t *f, const tenant_t *t)
{
    if (f->capacity < 0)
        return true;
    if (f->inflight >= f->capacity)
        return false;
    int64_t act = f->nactive + (active(t) ? 0 : 1);
    double share = (double)f->capacity / (double)(act > 0 ? act : 1);
    if ((double)t->inflight < share)
        return true;
    return (double)f->inflight < (double)f->capacity * (1.0 - f->cfg.reserve);
}

static void backlog_add(brix_fair_t *f, int ti)
{
    tenant_t *t = &f->t[ti];
    if (t->backlog_pos >= 0)
        return;
    /* the counter lift: no credit for the time spent idle */
    double lift = f->last_served;
    if (f->nbacklog) {
        lift = f->t[f->backlog[0]].counter;
        for (size_t i = 1; i < f->nbacklog; i++)
            if (f->t[f->backlog[i]].counter < lift)
                lift = f->t[f->backlog[i]].counter;
    }
    if (t->counter < lift)
        t->counter = lift;
    t->backlog_pos = (int)f->nbacklog;
    f->backlog[f->nbacklog++] = ti;
}

static void backlog_remove(brix_fair_t *f, int ti)
{
    tenant_t *t = &f->t[ti];
    int pos = t->backlog_pos;
    if (pos < 0)
        return;
    int last = f->backlog[--f->nbacklog];
    f->backlog[pos] = last;
    f->t[last].backlog_pos = pos;
    t->backlog_pos = -1;
}

static void queue_remove(brix_fair_t *f, tenant_t *t, brix_fair_item_t *it)
{
    brix_fair_item_t **pp = &t->head, *prev = NULL;
    while (*pp && *pp != it) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = it->next;
    if (t->tail == it)
        t->tail = prev;
    it->next = NULL;
    ACTIVE_CHANGE(f, t, t->qlen--);
    f->queued--;
    if (!t->qlen)
        backlog_remove(f, (int)(t - f->t));
}

static void charge_in(brix_fair_t *f, brix_fair_item_t *it)
{
    tenant_t *t = &f->t[it->tenant];
    ACTIVE_CHANGE(f, t, t->inflight++);
    t->counter += f->cfg.w_in * (double)it->in_tokens;
    f->last_served = t->counter;
}

/* Lets waiting requests in while there is room: highest priority class
 * first, smallest counter within it. */
static void dispatch(brix_fair_t *f)
{
    while (f->nbacklog) {
        int best = -1;
        for (size_t i = 0; i < f->nbacklog; i++) {
            int ti = f->backlog[i];
            const tenant_t *a = &f->t[ti];
            if (!can_admit(f, a))
                continue;
            const tenant_t *b = best >= 0 ? &f->t[best] : NULL;
            /* a tenant lifted to the least counter ties with it: the one
             * with fewer requests in flight goes first */
            if (!b || a->priority > b->priority ||
                (a->priority == b->priority &&
                 (a->counter < b->counter ||
                  (a->counter == b->counter && a->inflight < b->inflight))))
                best = ti;
        }
        if (best < 0)
            break;
        tenant_t *t = &f->t[best];
        brix_fair_item_t *it = t->head;
        queue_remove(f, t, it);
        it->state = BRIX_FAIR_ADMITTED;
        it->admit_ns = brix_now_ns();
        f->inflight++;
        f->st.admitted_queued++;
        charge_in(f, it);
        f->deliver(f->ud, it->worker, it);
    }
}

brix_fair_rc_t brix_fair_enter(brix_fair_t *f, const char *tenant, int64_t priority,
                               int64_t in_tokens, int worker, void *px, brix_fair_item_t **out)
{
    *out = NULL;
    brix_fair_item_t *it = brix_calloc(1, sizeof *it);
    if (!it)
        return BRIX_FAIR_FULL;
    it->owner = f;
    it->worker = worker;
    it->px = px;
    it->priority = priority;
    it->in_tokens = in_tokens > 0 ? in_tokens : 0;
    it->enq_ns = brix_now_ns();
    it->deadline_ns = it->enq_ns + f->cfg.timeout_ms * 1000000ull;
    uv_mutex_lock(&f->mu);
    int ti = tenant_of(f, tenant && *tenant ? tenant : "(anonymous)", true);
    it->tenant = ti;
    tenant_t *t = &f->t[ti];
    /* straight in when there is room for it and it would not overtake
     * anyone with a better claim: nobody waits, or it is under its share
     * with nothing of its own waiting */
    bool under =
        f->capacity > 0 &&
        (double)t->inflight < (double)f->capacity / (double)(f->nactive + (active(t) ? 0 : 1));
    if (can_admit(f, t) && !t->qlen && (!f->nbacklog || under)) {
        it->state = BRIX_FAIR_ADMITTED;
        it->admit_ns = it->enq_ns;
        f->inflight++;
        f->st.admitted_direct++;
        charge_in(f, it);
        uv_mutex_unlock(&f->mu);
        *out = it;
        return BRIX_FAIR_GO;
    }
    if (t->qlen >= f->cfg.queue_size) {
        f->st.rejected_full++;
        uv_mutex_unlock(&f->mu);
        brix_free(it);
        return BRIX_FAIR_FULL;
    }
    it->state = BRIX_FAIR_QUEUED;
    t->priority = priority;
    if (t->tail)
        t->tail->next = it;
    else
        t->head = it;
    t->tail = it;
    ACTIVE_CHANGE(f, t, t->qlen++);
    f->queued++;
    backlog_add(f, ti);
    *out = it;
    /* room may have opened between the check and here on another thread
     * only under this lock, so nothing to dispatch unless capacity allows */
    dispatch(f);
    uv_mutex_unlock(&f->mu);
    return BRIX_FAIR_WAIT;
}

void brix_fair_leave(brix_fair_t *f, brix_fair_item_t *it, int64_t out_tokens)
{
    if (!it)
        return;
    uv_mutex_lock(&f->mu);
    switch (it->state) {
    case BRIX_FAIR_QUEUED:
        queue_remove(f, &f->t[it->tenant], it);
        break;
    case BRIX_FAIR_ADMITTED: {
        tenant_t *t = &f->t[it->tenant];
        f->inflight--;
        ACTIVE_CHANGE(f, t, t->inflight--);
        if (out_tokens > 0)
            t->counter += f->cfg.w_out * (double)out_tokens;
        break;
    }
    default:
        break;
    }
    it->state = BRIX_FAIR_DONE;
    dispatch(f);
    uv_mutex_unlock(&f->mu);
    brix_free(it);
}

void brix_fair_cancel(brix_fair_t *f, brix_fair_item_t *it)
{
    if (!it)
        return;
    uv_mutex_lock(&f->mu);
    if (it->state == BRIX_FAIR_QUEUED) {
        queue_remove(f, &f->t[it->tenant], it);
        uv_mutex_unlock(&f->mu);
        brix_free(it);
        return;
    }
    it->px = NULL;
    uv_mutex_unlock(&f->mu);
}

void brix_fair_sweep(brix_fair_t *f, uint64_t now_ns)
{
    uv_mutex_lock(&f->mu);
    for (size_t b = 0; b < f->nbacklog;) {
        tenant_t *t = &f->t[f->backlog[b]];
        brix_fair_item_t *it = t->head;
        /* queues are FIFO, so expired items are at the head */
        if (it && it->deadline_ns <= now_ns) {
            queue_remove(f, t, it); /* may remove t from the backlog */
            it->state = BRIX_FAIR_EXPIRED;
            f->st.expired++;
            f->deliver(f->ud, it->worker, it);
            continue; /* re-examine position b */
        }
        b++;
    }
    uv_mutex_unlock(&f->mu);
}

void brix_fair_stats(brix_fair_t *f, brix_fair_stats_t *out)
{
    uv_mutex_lock(&f->mu);
    *out = f->st;
    out->capacity = f->capacity;
    out->inflight = f->inflight;
    out->queued = f->queued;
    uv_mutex_unlock(&f->mu);
}

double brix_fair_counter(brix_fair_t *f, const char *tenant)
{
    uv_mutex_lock(&f->mu);
    int ti = tenant_of(f, tenant, false);
    double c = ti < 0 ? -1 : f->t[ti].counter;
    uv_mutex_unlock(&f->mu);
    return c;
}
