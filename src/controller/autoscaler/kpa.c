/*
 * kpa — Knative's Pod Autoscaler as AIBrix runs it (facts: Knative's
 * autoscaler docs and pkg/autoscaler/scaling/autoscaler.go, AIBrix's
 * metric-based-autoscaling docs, shared/reference/aibrix.md §3).
 *
 * Two means of the fleet total: over the stable window (observeWindowSeconds,
 * 180 s) and over the panic window (panicWindowSeconds, 60 s). Each asks for
 * ceil(total/target) replicas. Panic starts when the panic-window demand
 * (not rounded) reaches panic_threshold times the ready replicas, and is
 * re-armed on every tick that still meets that condition; it ends only after
 * a full stable window without it, by when the burst is inside the stable
 * mean. In panic the scale follows the higher of the two demands and never
 * goes down (the highest scale reached in panic is held). Outside panic,
 * AIBrix's tolerance band applies: no change while the per-replica stable
 * value is within target*(1±tolerance).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller/autoscaler/as_internal.h"

void brix__as_kpa(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r)
{
    int32_t cur = in->current > 0 ? in->current : 0;
    uint64_t now = in->now_ms;
    if (p->nmetrics <= 0) {
        r->frozen = true;
        snprintf(r->what, sizeof r->what, "no metric configured");
        return;
    }

    int32_t stable_rec = -1, panic_rec = -1;
    double panic_ratio = 0; /* the highest panic demand / ready over the metrics */
    int besti = 0;
    bool moved = false;
    for (int i = 0; i < p->nmetrics && i < BRIX_AS_MAX_METRICS; i++) {
        double st, srep, pt, prep;
        if (!brix__as_window_mean(s, i, now, p->stable_window_ms, &st, &srep)) {
            r->frozen = true;
            snprintf(r->what, sizeof r->what, "metric %d: no sample in the last %llus", i,
                     (unsigned long long)(p->stable_window_ms / 1000));
            return;
        }
        if (!brix__as_window_mean(s, i, now, p->panic_window_ms, &pt, &prep)) {
            pt = st; /* nothing recent: the panic view is the stable one */
            prep = srep;
        }
        double target = p->target[i] > 0 ? p->target[i] : 1e-9;
        d->metric[i] = brix__as_per_replica(st, srep, cur);

        int32_t want = brix__as_ceil(st / target);
        if (cur > 0) {
            double ratio = st / ((double)cur * target);
            if (ratio <= 1 + p->up_tolerance && ratio >= 1 - p->down_tolerance)
                want = cur;
        }
        if (want != cur)
            moved = true;
        if (want > stable_rec) {
            stable_rec = want;
            besti = i;
        }
        int32_t pw = brix__as_ceil(pt / target);
        if (pw > panic_rec)
            panic_rec = pw;
        /* Knative divides by ready pods, at least one (a fleet at zero with
         * demand panics, which is what waking it needs). */
        double pr = (pt / target) / (in->ready > 0 ? in->ready : 1);
        if (pr > panic_ratio)
            panic_ratio = pr;
    }

    bool over = panic_ratio >= p->panic_threshold && panic_rec > 0;
    if (over) {
        if (!s->panic)
            s->panic_peak = 0;
        s->panic = true;
        s->panic_since_ms = now; /* re-armed while the condition holds */
    } else if (s->panic && now >= s->panic_since_ms &&
               now - s->panic_since_ms >= p->stable_window_ms) {
        s->panic = false;
        s->panic_peak = 0;
    }

    int32_t rec = stable_rec;
    if (s->panic) {
        if (panic_rec > rec)
            rec = panic_rec;
        if (rec > s->panic_peak)
            s->panic_peak = rec;
        else
            rec = s->panic_peak;
        if (rec < cur)
            rec = cur;
        r->panic = true;
    }
    r->rec = rec;
    r->reason = s->panic ? "PanicMode" : moved ? NULL : "WithinTolerance";
    snprintf(r->what, sizeof r->what,
             "KPA stable %.2f/replica over %llus vs target %.2f, panic demand %.2fx ready%s",
             d->metric[besti], (unsigned long long)(p->stable_window_ms / 1000), p->target[besti],
             panic_ratio, s->panic ? " (panic)" : "");
}
