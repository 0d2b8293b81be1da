/*
 * autoscaler — the part every strategy shares: the sample ring, window means,
 * idleness, and the pipeline that turns a strategy's raw recommendation into
 * the scale to run.
 *
 * The pipeline, in order (each step may only narrow what the previous one
 * allowed, and the last step that changed the number names the reason):
 *   1. the strategy's recommendation (hpa.c, kpa.c, slo.c); a metric outage
 *      freezes it at the current scale (never "scale to min on an outage");
 *      requests held at a gateway while at zero replicas ask for >= 1 at once;
 *   2. stabilisation windows, as Kubernetes HPA's behavior (facts: the
 *      Kubernetes HPA docs, "stabilizationWindowSeconds"): a scale-up goes only
 *      as high as the LOWEST recommendation of the up window, a scale-down only
 *      as low as the HIGHEST of the down window (AIBrix's scale-up/down
 *      "cooldown" annotations are these windows);
 *   3. KPA panic: never down;
 *   4. max rates: up to max(current+1, ceil(current*up)), down to
 *      floor(current/down);
 *   5. scale-to-zero only when allowed and idle for the grace period;
 *   6. min/max (schedules already applied by the caller);
 *   7. the in-flight floor, last, so that nothing drops work being served
 *      (it wins even over max: a lowered max drains as the work finishes).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller/autoscaler/as_internal.h"
#include "core/alloc.h"

/* Samples kept at most, whatever the windows: 65536 1-s ticks is 18 h, far
 * beyond any window; the bound only keeps a mis-set window from eating memory. */
#define AS_RING_MAX 65536u
/* SLO mode averages the offered load over the last 10 s (see slo.c). */
/* A held-requests report older than this no longer wakes a fleet at zero:
 * gateways report every second, and a held request's deadline is ~30 s. */
#define AS_WAKE_FRESH_MS  30000u
#define AS_OUTAGE_SAMPLES 3

static const char *const strategy_names[] = { "HPA", "KPA", "APA", "SLO" };

const char *brix_as_strategy_name(brix_as_strategy_t s)
{
    if ((unsigned)s < sizeof strategy_names / sizeof strategy_names[0])
        return strategy_names[s];
    return "?";
}

int brix_as_strategy_parse(const char *s)
{
    if (!s)
        return -1;
    for (size_t i = 0; i < sizeof strategy_names / sizeof strategy_names[0]; i++)
        if (strcmp(s, strategy_names[i]) == 0)
            return (int)i;
    return -1;
}

void brix_as_params_default(brix_as_params_t *p)
{
    memset(p, 0, sizeof *p);
    p->strategy = BRIX_AS_APA;
    p->min_replicas = 1;
    p->max_replicas = 1;
    p->stable_window_ms = 180000;
    p->panic_window_ms = 60000;
    p->panic_threshold = 2.0;
    p->max_up_rate = 2.0;
    p->max_down_rate = 2.0;
    p->up_tolerance = 0.1;
    p->down_tolerance = 0.1;
    p->up_stabilization_ms = 0;
    p->down_stabilization_ms = 300000;
    p->scale_to_zero = false;
    /* Not an AIBrix annotation: Knative's scale-to-zero-grace-period is 30 s;
     * the down window (300 s) already keeps a fleet up that long, so the
     * grace only matters when that window is shortened. */
    p->zero_grace_ms = 30000;
    p->slo_headroom = 0.8;
}

int brix_as_state_init(brix_as_state_t *s)
{
    memset(s, 0, sizeof *s);
    s->learn_inflight = -1;
    return 0;
}

void brix_as_state_free(brix_as_state_t *s)
{
    brix_free(s->ring);
    brix_free(s->recs);
    brix_free(s->peaks);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------- samples -- */

const brix_as_sample_t *brix__as_sample_at(const brix_as_state_t *s, size_t i)
{
    return &s->ring[(s->head + i) % s->cap];
}

const brix_as_sample_t *brix__as_newest(const brix_as_state_t *s)
{
    return s->n ? brix__as_sample_at(s, s->n - 1) : NULL;
}

static uint64_t keep_ms(const brix_as_params_t *p)
{
    uint64_t k = p->stable_window_ms;
    if (p->panic_window_ms > k)
        k = p->panic_window_ms;
    /* the derived windows (as_internal.h) are shorter than these */
    return k;
}

/* A sample is idle when every load signal it knows is zero and it knows one:
 * an unknown signal is no evidence of idleness, so silence never scales to 0. */
static bool sample_idle(const brix_as_params_t *p, const brix_as_sample_t *x)
{
    bool known = false;
    for (int i = 0; i < p->nmetrics && i < BRIX_AS_MAX_METRICS; i++) {
        if (!x->ok[i])
            continue;
        known = true;
        if (x->value[i] > 0)
            return false;
    }
    const double load[] = { x->in_tps, x->out_tps, x->rps, x->inflight, x->held };
    for (size_t i = 0; i < sizeof load / sizeof load[0]; i++) {
        if (load[i] < 0)
            continue;
        known = true;
        if (load[i] > 0)
            return false;
    }
    return known;
}

static int ring_grow(brix_as_state_t *s)
{
    size_t ncap = s->cap ? s->cap * 2 : 64;
    if (ncap > AS_RING_MAX)
        ncap = AS_RING_MAX;
    brix_as_sample_t *r = brix_malloc(ncap * sizeof *r);
    if (!r)
        return -ENOMEM;
    for (size_t i = 0; i < s->n; i++)
        r[i] = *brix__as_sample_at(s, i);
    brix_free(s->ring);
    s->ring = r;
    s->cap = ncap;
    s->head = 0;
    return 0;
}

int brix_as_observe(brix_as_state_t *s, const brix_as_params_t *p, const brix_as_sample_t *x)
{
    if (s->n == s->cap) {
        if (s->cap < AS_RING_MAX) {
            int rc = ring_grow(s);
            if (rc < 0)
                return rc;
        } else {
            s->head = (s->head + 1) % s->cap; /* full at the bound: drop the oldest */
            s->n--;
        }
    }
    brix_as_sample_t *slot = &s->ring[(s->head + s->n) % s->cap];
    *slot = *x;
    /* Time never runs backwards in the ring: windows assume it is sorted. */
    const brix_as_sample_t *prev = brix__as_newest(s);
    if (prev && slot->t_ms < prev->t_ms)
        slot->t_ms = prev->t_ms;
    s->n++;

    uint64_t keep = keep_ms(p);
    while (s->n > 1 && brix__as_sample_at(s, 0)->t_ms + keep <= slot->t_ms) {
        s->head = (s->head + 1) % s->cap;
        s->n--;
    }

    if (!sample_idle(p, slot)) {
        s->idle = false;
    } else if (!s->idle) {
        s->idle = true;
        s->idle_since_ms = slot->t_ms;
    }
    return 0;
}

size_t brix__as_window_mean(const brix_as_state_t *s, int i, uint64_t now, uint64_t win,
                            double *total, double *reporting)
{
    double sum = 0, rep = 0;
    size_t used = 0;
    for (size_t k = s->n; k-- > 0;) {
        const brix_as_sample_t *x = brix__as_sample_at(s, k);
        if (x->t_ms + win <= now)
            break;
        if (x->t_ms > now || !x->ok[i])
            continue;
        sum += x->value[i];
        rep += x->reporting > 0 ? x->reporting : 0;
        used++;
    }
    *total = used ? sum / (double)used : 0;
    *reporting = used ? rep / (double)used : 0;
    return used;
}

double brix__as_per_replica(double total, double reporting, int32_t current)
{
    if (reporting > 0)
        return total / reporting;
    return total / (current > 0 ? current : 1);
}

int32_t brix__as_ceil(double x)
{
    if (!(x > 0)) /* also NaN */
        return 0;
    /* A value a hair above an integer (3.0000000001 from float noise in a
     * mean) must not order one more replica. */
    double c = ceil(x - 1e-9);
    return c >= 2147483647.0 ? INT32_MAX : (int32_t)c;
}

/* ---------------------------------------------------- recommendations -- */

/* Remembers rec at now for the stabilisation windows; false on ENOMEM (the
 * caller then refuses to scale down, the one thing a lost record could allow). */
static bool record(brix_as_state_t *s, const brix_as_params_t *p, uint64_t now, int32_t rec)
{
    uint64_t win = p->up_stabilization_ms > p->down_stabilization_ms ? p->up_stabilization_ms
                                                                     : p->down_stabilization_ms;
    size_t keep = 0;
    for (size_t i = 0; i < s->nrecs; i++)
        if (s->recs[i].t_ms + win > now)
            s->recs[keep++] = s->recs[i];
    s->nrecs = keep;
    if (win == 0)
        return true; /* no window remembers anything */
    if (s->nrecs == s->recs_cap) {
        size_t ncap = s->recs_cap ? s->recs_cap * 2 : 64;
        brix_as_rec_t *r = brix_realloc(s->recs, ncap * sizeof *r);
        if (!r)
            return false;
        s->recs = r;
        s->recs_cap = ncap;
    }
    s->recs[s->nrecs++] = (brix_as_rec_t){ .t_ms = now, .n = rec };
    return true;
}

static int32_t up_limit(const brix_as_params_t *p, int32_t cur)
{
    double rate = p->max_up_rate > 1 ? p->max_up_rate : 1;
    /* From zero the rate counts from one replica: 0 -> at most ceil(rate). */
    int32_t base = cur > 0 ? cur : 1;
    int32_t lim = brix__as_ceil((double)base * rate);
    if (cur == 0)
        return lim > 1 ? lim : 1;
    return lim > cur + 1 ? lim : cur + 1;
}

static int32_t down_limit(const brix_as_params_t *p, int32_t cur)
{
    double rate = p->max_down_rate > 1 ? p->max_down_rate : 1;
    return (int32_t)floor((double)cur / rate);
}

void brix_as_decide(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                    brix_as_decision_t *d)
{
    memset(d, 0, sizeof *d);
    int32_t cur = in->current > 0 ? in->current : 0;
    uint64_t now = in->now_ms;

    brix__as_raw_t r;
    memset(&r, 0, sizeof r);
    r.rec = cur;
    r.reason = NULL;
    switch (p->strategy) {
    case BRIX_AS_HPA:
        brix__as_hpa(p, s, in, d, &r);
        break;
    case BRIX_AS_KPA:
        brix__as_kpa(p, s, in, d, &r);
        break;
    case BRIX_AS_APA:
        brix__as_apa(p, s, in, d, &r);
        break;
    case BRIX_AS_SLO:
        brix__as_slo(p, s, in, d, &r);
        break;
    default:
        r.frozen = true;
        r.reason = "UnknownStrategy";
        snprintf(r.what, sizeof r.what, "unknown strategy %d", (int)p->strategy);
        break;
    }

    /* An outage freezes at once: when the newest AS_OUTAGE_SAMPLES samples of
     * a metric were all unread, the window's older values are the past, not
     * the load; deciding on them for up to a stable window would scale on
     * data the fleet no longer shows. */
    for (int i = 0; p->strategy != BRIX_AS_SLO && !r.frozen && i < p->nmetrics; i++) {
        size_t seen = 0, unread = 0;
        for (size_t k = s->n; k-- > 0 && seen < AS_OUTAGE_SAMPLES; seen++)
            unread += !brix__as_sample_at(s, k)->ok[i];
        if (seen && unread == seen) {
            r.frozen = true;
            r.reason = "MetricsUnavailable";
            snprintf(r.what, sizeof r.what, "metric %d unread in the last %zu samples", i, seen);
        }
    }

    /* Requests waiting at a gateway for a replica of a model at zero: wake
     * now, whatever the windows say (a held request has a deadline). Only a
     * fresh report counts: a gateway gone silent holds nothing any more. */
    const brix_as_sample_t *last = brix__as_newest(s);
    bool wake = cur == 0 && last && last->held > 0 && last->t_ms <= now &&
                now - last->t_ms < AS_WAKE_FRESH_MS;

    int32_t rec = r.frozen ? cur : r.rec;
    if (rec < 0)
        rec = 0;
    if (wake && rec < 1)
        rec = 1;
    d->recommended = rec;
    d->panic = r.panic;
    d->frozen = r.frozen && !wake;

    /* A new autoscaler (or a restarted controller) has no history: the scale
     * it finds is taken as the down window's recommendation at its first
     * decision, so it does not scale down before a full window of evidence. */
    if (!s->started) {
        s->started = true;
        s->seed_n = cur;
        s->seed_t_ms = now;
    }
    const char *why = NULL;
    bool recorded = record(s, p, now, rec);
    int32_t want = rec;
    if (!wake) {
        int32_t up = rec, down = rec;
        for (size_t i = 0; i < s->nrecs; i++) {
            const brix_as_rec_t *e = &s->recs[i];
            if (e->t_ms + p->up_stabilization_ms > now && e->n < up)
                up = e->n;
            if (e->t_ms + p->down_stabilization_ms > now && e->n > down)
                down = e->n;
        }
        if (s->seed_t_ms + p->down_stabilization_ms > now && s->seed_n > down)
            down = s->seed_n;
        want = cur;
        if (want < up)
            want = up;
        if (want > down)
            want = down;
        if (!recorded && want < cur)
            want = cur;
        if (want != rec)
            why = "Stabilizing";
    }
    if (r.panic && want < cur) {
        want = cur;
        why = "PanicMode";
    }
    if (want > cur) {
        int32_t lim = up_limit(p, cur);
        if (want > lim) {
            want = lim;
            why = "RateLimited";
        }
    } else if (want < cur) {
        int32_t lim = down_limit(p, cur);
        if (want < lim) {
            want = lim;
            why = "RateLimited";
        }
    }

    bool zero_ok = p->scale_to_zero && p->min_replicas <= 0;
    bool idle_enough =
        s->idle && now >= s->idle_since_ms && now - s->idle_since_ms >= p->zero_grace_ms;
    if (want == 0 && cur > 0 && zero_ok && !idle_enough) {
        want = 1;
        why = "IdleGrace";
    }
    int32_t lo = p->min_replicas > 0 ? p->min_replicas : (zero_ok ? 0 : 1);
    if (want > p->max_replicas && p->max_replicas >= 0) {
        want = p->max_replicas;
        why = "AtMaximum";
    }
    if (want < lo) {
        want = lo;
        why = "AtMinimum";
    }
    /* The floor guards scale-downs only: replicas the work in flight needs
     * are not taken away, but the work never adds replicas the strategy did
     * not ask for (a queue is the metric's business, e.g.
     * num_requests_waiting; otherwise a backlog would override the metric
     * the user chose). */
    int32_t floor = in->inflight_floor < cur ? in->inflight_floor : cur;
    if (want < floor) {
        want = floor;
        why = "InFlightFloor";
    }

    d->desired = want;
    d->limited = want != rec;
    if (d->limited && why)
        d->reason = why;
    else if (wake)
        d->reason = "ScaleFromZero";
    else if (d->frozen)
        d->reason = r.reason ? r.reason : "MetricsUnavailable";
    else if (want > cur)
        d->reason = "ScaleUp";
    else if (want < cur)
        d->reason = want == 0 ? "ScaleToZero" : "ScaleDown";
    else
        d->reason = r.reason ? r.reason : "WithinTolerance";

    int n;
    if (d->limited)
        n = snprintf(d->message, sizeof d->message, "%s: %d -> %d (recommended %d, %s)",
                     r.what[0] ? r.what : "no recommendation", (int)cur, (int)want, (int)rec,
                     d->reason);
    else
        n = snprintf(d->message, sizeof d->message, "%s: %d -> %d",
                     r.what[0] ? r.what : "no recommendation", (int)cur, (int)want);
    (void)n; /* a truncated message is still a useful message */

    if (want != cur) {
        s->last_change_ms = now;
        s->last_dir = want > cur ? 1 : -1;
    }
}
