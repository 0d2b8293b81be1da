/*
 * ratio — the two strategies that scale by "per-replica value / target":
 *
 *   HPA  Kubernetes' rule (facts: the Kubernetes HPA docs, "Algorithm
 *        details"): desired = ceil(current * value/target), no change while
 *        |ratio - 1| <= tolerance. Kubernetes reads the metric once per 15-s
 *        sync; here the value is the mean of the last 15 s of samples.
 *   APA  AIBrix's (facts: aibrix docs "metric-based-autoscaling" and
 *        shared/reference/aibrix.md §3): the same ratio r over the stable
 *        window's mean, a deadband [1-down_tol, 1+up_tol], and each step
 *        bounded by the rates inside the algorithm itself:
 *        up   min(ceil(n*r), ceil(n*max_up_rate)),
 *        down max(ceil(n*r), floor(n/max_down_rate)).
 *
 * Both: each metric recommends and the highest wins (Kubernetes and AIBrix
 * both take the max over metrics). A metric with no ok sample in the stable
 * window freezes the decision: a gap says nothing about the load, and
 * "scale to min because the exporter is down" is the failure to avoid.
 *
 * Replicas still starting are counted as idle when scaling up (the ratio is
 * taken over the current scale, not only over the replicas that reported),
 * as Kubernetes does for not-yet-ready pods: otherwise the load that the
 * starting replicas are about to take would order them a second time.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller/autoscaler/as_internal.h"

typedef enum { RATIO_HPA, RATIO_APA } ratio_kind_t;

static void ratio_strategy(ratio_kind_t kind, const brix_as_params_t *p, brix_as_state_t *s,
                           const brix_as_input_t *in, brix_as_decision_t *d, brix__as_raw_t *r)
{
    int32_t cur = in->current > 0 ? in->current : 0;
    uint64_t now = in->now_ms;
    uint64_t win = kind == RATIO_HPA ? brix__as_hpa_window_ms(p) : p->stable_window_ms;
    if (win > p->stable_window_ms && p->stable_window_ms > 0)
        win = p->stable_window_ms;
    const char *wname = kind == RATIO_HPA ? "HPA" : "APA stable";

    if (p->nmetrics <= 0) {
        r->frozen = true;
        snprintf(r->what, sizeof r->what, "no metric configured");
        return;
    }

    int32_t best = -1;
    int besti = 0;
    bool moved = false;
    for (int i = 0; i < p->nmetrics && i < BRIX_AS_MAX_METRICS; i++) {
        double total, rep;
        size_t used = brix__as_window_mean(s, i, now, win, &total, &rep);
        if (!used && kind == RATIO_HPA) {
            /* Nothing in the last sync period but something in the stable
             * window: the freshest value there is the best we know. */
            for (size_t k = s->n; k-- > 0;) {
                const brix_as_sample_t *x = brix__as_sample_at(s, k);
                if (x->t_ms + p->stable_window_ms <= now)
                    break;
                if (x->t_ms <= now && x->ok[i]) {
                    total = x->value[i];
                    rep = x->reporting > 0 ? x->reporting : 0;
                    used = 1;
                    break;
                }
            }
        }
        if (!used) {
            r->frozen = true;
            snprintf(r->what, sizeof r->what, "metric %d: no sample in the last %llus", i,
                     (unsigned long long)(p->stable_window_ms / 1000));
            return;
        }
        double target = p->target[i] > 0 ? p->target[i] : 1e-9;
        double per = brix__as_per_replica(total, rep, cur);
        d->metric[i] = per;
        double ratio = per / target;

        int32_t rec = cur;
        if (cur == 0) {
            /* No replica to take a ratio of: the plain recommendation. */
            rec = brix__as_ceil(total / target);
        } else if (ratio > 1 + p->up_tolerance) {
            double r_up = rep < cur ? total / ((double)cur * target) : ratio;
            if (r_up > 1 + p->up_tolerance) {
                rec = brix__as_ceil((double)cur * r_up);
                if (kind == RATIO_APA) {
                    int32_t cap = brix__as_ceil((double)cur * p->max_up_rate);
                    if (rec > cap)
                        rec = cap;
                }
            }
        } else if (ratio < 1 - p->down_tolerance) {
            rec = brix__as_ceil((double)cur * ratio);
            if (kind == RATIO_APA) {
                double rate = p->max_down_rate > 1 ? p->max_down_rate : 1;
                int32_t floor_n = (int32_t)floor((double)cur / rate);
                if (rec < floor_n)
                    rec = floor_n;
            }
        }
        if (rec != cur)
            moved = true;
        if (rec > best) {
            best = rec;
            besti = i;
        }
    }
    r->rec = best;
    r->reason = moved ? NULL : "WithinTolerance";
    snprintf(r->what, sizeof r->what, "%s %.2f/replica over %llus vs target %.2f", wname,
             d->metric[besti], (unsigned long long)(win / 1000), p->target[besti]);
}

void brix__as_hpa(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r)
{
    ratio_strategy(RATIO_HPA, p, s, in, d, r);
}

void brix__as_apa(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r)
{
    ratio_strategy(RATIO_APA, p, s, in, d, r);
}
