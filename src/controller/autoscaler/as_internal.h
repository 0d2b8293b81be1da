/*
 * as_internal — what the autoscaler's files share and nobody else uses: the
 * strategies' raw answer (brix__as_raw_t), window statistics over the sample
 * ring, and each strategy's entry point. autoscaler.c owns the pipeline that
 * turns a raw recommendation into a decision (windows, rates, zero, bounds,
 * in-flight floor); each strategy file only says what the load asks for.
 */
#ifndef BRIX_CONTROLLER_AS_INTERNAL_H
#define BRIX_CONTROLLER_AS_INTERNAL_H

#include "controller/autoscaler/autoscaler.h"

/* A strategy's raw answer, before the common bounds. */
typedef struct brix__as_raw {
    int32_t rec;        /* replicas the load asks for */
    bool frozen;        /* no usable metric: hold the scale */
    bool panic;         /* KPA panic: the pipeline never scales down */
    const char *reason; /* when nothing else limits: WithinTolerance, PanicMode …;
                           when frozen, why (NULL = MetricsUnavailable) */
    char
        what[176]; /* the numbers behind rec, e.g. "stable 3.20/replica over 180s vs target 1.00" */
} brix__as_raw_t;

/* Mean over the samples of (now - win, now] whose metric i is ok: the fleet
 * total and the reporting replicas. Returns how many samples were used. */
size_t brix__as_window_mean(const brix_as_state_t *s, int i, uint64_t now, uint64_t win,
                            double *total, double *reporting);
/* The i-th oldest sample kept (i < s->n). */
const brix_as_sample_t *brix__as_sample_at(const brix_as_state_t *s, size_t i);
/* The newest sample, or NULL. */
const brix_as_sample_t *brix__as_newest(const brix_as_state_t *s);
/* Per-replica value behind a fleet total: over the replicas that reported, or
 * (external metrics, reporting 0) over the current scale. */
double brix__as_per_replica(double total, double reporting, int32_t current);
/* ceil() of a non-negative replica count, saturated to int32. */
int32_t brix__as_ceil(double x);

/* Strategies (hpa.c, kpa.c, slo.c): fill r from the samples in s. */
void brix__as_hpa(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r);
void brix__as_apa(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r);
void brix__as_kpa(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r);
void brix__as_slo(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r);

/* The averaging window of HPA's metric: Kubernetes reads a metric once per
 * 15-s sync period (--horizontal-pod-autoscaler-sync-period); averaging the
 * 1-s samples of one period is the local equivalent of that one read. */
/* Time constants under the windows a user sets scale with them, so that a
 * PodAutoscaler whose windows are compressed (a benchmark replaying a trace
 * faster, with every annotation scaled alike) behaves the same in its own
 * time. At the defaults they are the documented values: HPA averages over
 * Kubernetes' 15-s sync period (stable window / 12), SLO mode measures load
 * over 10 s and smooths its level with a 10-s constant (panic window / 6)
 * and its trend with a 60-s one (the panic window). */
static inline uint64_t brix__as_hpa_window_ms(const brix_as_params_t *p)
{
    uint64_t w = p->stable_window_ms / 12;
    return w ? w : 1;
}
static inline double brix__as_slo_load_ms(const brix_as_params_t *p)
{
    double w = (double)p->panic_window_ms / 6.0;
    return w > 1 ? w : 1;
}
static inline double brix__as_slo_trend_ms(const brix_as_params_t *p)
{
    return p->panic_window_ms > 1 ? (double)p->panic_window_ms : 1;
}

#endif
