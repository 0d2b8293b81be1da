/*
 * autoscaler — the scaling algorithms of PodAutoscaler, as pure functions over
 * metric series: no HTTP, no clock, no loop. The controller (autoscale.c)
 * collects one sample per tick, feeds it to brix_as_observe, and asks
 * brix_as_decide for the scale; unit tests feed recorded series instead.
 *
 * Strategies (facts: shared/reference/aibrix.md §3, AIBrix's
 * docs/source/features/autoscaling/metric-based-autoscaling.rst, Kubernetes'
 * HPA algorithm, Knative's KPA):
 *   HPA  Kubernetes' rule: desired = ceil(current * metric/target), no change
 *        within the 0.1 tolerance, scale-down stabilisation (the highest
 *        recommendation of the last window wins).
 *   KPA  Knative's: a stable window (observeWindowSeconds, 180 s) and a panic
 *        window (panicWindowSeconds, 60 s); panic when the panic-window demand
 *        reaches panic-threshold (2) times the current capacity; in panic the
 *        scale never goes down.
 *   APA  AIBrix's: per-replica mean / target outside a ±tolerance deadband.
 *   SLO  brix's own: replicas from the offered load (tokens/s from the
 *        gateways) over each replica's capacity at the TTFT/ITL target, with a
 *        forecast over the replica start-up time.
 * All strategies then apply the same bounds: max scale-up/down rates,
 * up/down stabilisation windows (AIBrix's "cooldown" annotations), schedules'
 * min/max, scale-to-zero, and the in-flight floor.
 *
 * Units: times in milliseconds on the caller's monotonic clock; a metric value
 * in a sample is the fleet TOTAL (summed over the replicas that reported, or
 * an external metric as read); the target is per replica, so the plain
 * recommendation is ceil(total / target).
 */
#ifndef BRIX_CONTROLLER_AUTOSCALER_H
#define BRIX_CONTROLLER_AUTOSCALER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIX_AS_MAX_METRICS   4
#define BRIX_AS_MAX_SCHEDULES 16

typedef enum brix_as_strategy {
    BRIX_AS_HPA = 0,
    BRIX_AS_KPA,
    BRIX_AS_APA,
    BRIX_AS_SLO,
} brix_as_strategy_t;

const char *brix_as_strategy_name(brix_as_strategy_t s); /* "HPA" … */
/* "HPA" | "KPA" | "APA" | "SLO" (exact case, as AIBrix's enum); -1 if unknown. */
int brix_as_strategy_parse(const char *s);

typedef struct brix_as_params {
    brix_as_strategy_t strategy;
    int32_t min_replicas, max_replicas;  /* effective bounds (schedules already applied) */
    int nmetrics;                        /* 0..BRIX_AS_MAX_METRICS (SLO mode may use 0) */
    double target[BRIX_AS_MAX_METRICS];  /* per-replica target of each metric (> 0) */
    uint64_t stable_window_ms;           /* observeWindowSeconds / apa window: 180000 */
    uint64_t panic_window_ms;            /* panicWindowSeconds: 60000 */
    double panic_threshold;              /* 2.0 */
    double max_up_rate, max_down_rate;   /* 2.0, 2.0 */
    double up_tolerance, down_tolerance; /* 0.1, 0.1 */
    uint64_t up_stabilization_ms;        /* scale-up-cooldown-window: 0 */
    uint64_t down_stabilization_ms;      /* scale-down-cooldown-window: 300000 */
    bool scale_to_zero;                  /* the annotation; zero still needs min_replicas 0 */
    uint64_t zero_grace_ms;              /* idle (no load, nothing held) this long before 0 */
    /* SLO mode */
    double slo_ttft_s, slo_itl_s; /* targets (0 = not set; at least one is set) */
    double slo_headroom;          /* share of measured capacity planned for: 0.8 */
} brix_as_params_t;

/* AIBrix's defaults above (strategy APA, min 1, max 1, no metrics). */
void brix_as_params_default(brix_as_params_t *p);

/* One tick's observations. Negative load fields mean "unknown". */
typedef struct brix_as_sample {
    uint64_t t_ms;
    int32_t reporting; /* replicas whose metrics are in the values (pod sources) */
    bool ok[BRIX_AS_MAX_METRICS];
    double value[BRIX_AS_MAX_METRICS]; /* fleet total of metric i */
    /* load, from the gateways' activity reports and the engines */
    double in_tps, out_tps; /* offered prompt / completion tokens per second */
    double rps;             /* offered requests per second */
    double inflight;        /* requests running + waiting on the engines */
    double held;            /* requests held at gateways for want of a replica */
    double ttft_s, itl_s;   /* fleet mean over the tick (engines' histograms) */
} brix_as_sample_t;

typedef struct brix_as_rec {
    uint64_t t_ms;
    int32_t n;
} brix_as_rec_t;

/* Algorithm state of one PodAutoscaler; the caller zero-initialises it with
 * brix_as_state_init and frees it with brix_as_state_free. Fields are the
 * algorithms' own; the caller reads results from brix_as_decision_t only. */
typedef struct brix_as_state {
    brix_as_sample_t *ring; /* samples, oldest first from head, within the longest window */
    size_t cap, head, n;
    brix_as_rec_t *recs; /* recommendations within the stabilisation windows */
    size_t nrecs, recs_cap;
    bool panic;
    uint64_t panic_since_ms;
    int32_t panic_peak;     /* KPA: the highest scale while in panic */
    uint64_t idle_since_ms; /* 0 = not idle */
    uint64_t last_change_ms;
    int32_t last_dir; /* +1 / -1 of the last change */
    /* SLO mode */
    double cap_in_tps, cap_out_tps; /* learned per-replica capacity at the SLO (0 = none) */
    double level, trend;            /* Holt's forecast of the load, in replicas */
    uint64_t level_t_ms;
    /* added with the implementation */
    bool idle;             /* every known load signal zero since idle_since_ms */
    bool level_init;       /* SLO: level/trend hold a value */
    uint64_t learn_t_ms;   /* SLO: samples before this time have been learnt from */
    double learn_inflight; /* SLO: inflight+held of that sample (-1 = unknown) */
    brix_as_rec_t *peaks;  /* SLO: decreasing maxima of the demand over its memory */
    size_t npeaks, peaks_cap;
    bool started;       /* decided at least once */
    int32_t seed_n;     /* the scale found at the first decision … */
    uint64_t seed_t_ms; /* … counts as a down-window recommendation from then */
} brix_as_state_t;

typedef struct brix_as_input {
    uint64_t now_ms;
    int32_t current;        /* the target's scale now (replicas it is asked to run) */
    int32_t ready;          /* of those, ready */
    int32_t starting;       /* of those, started but not ready yet */
    int32_t inflight_floor; /* replicas the work in flight needs; 0 = none */
    double startup_s;       /* measured replica start-up time (0 = unknown) */
    /* per-replica capacity prior at the SLO, from the GPU profile (SLO mode) */
    double prior_cap_in_tps, prior_cap_out_tps;
} brix_as_input_t;

typedef struct brix_as_decision {
    int32_t desired;     /* what the target should run now */
    int32_t recommended; /* the strategy's raw recommendation, before rates and windows */
    bool panic;          /* KPA panic mode */
    bool frozen;         /* no usable metrics: desired == current */
    bool limited;        /* a bound, rate or window changed the recommendation */
    double metric[BRIX_AS_MAX_METRICS];       /* per-replica value each decision used */
    double forecast;                          /* SLO: forecast load in replicas (0 otherwise) */
    double capacity_in_tps, capacity_out_tps; /* SLO: per-replica capacity used */
    const char *reason; /* static CamelCase word: ScaleUp ScaleDown WithinTolerance
                           PanicMode Stabilizing MetricsUnavailable AtMinimum AtMaximum
                           ScaleToZero InFlightFloor … */
    char message[256];  /* one line with the numbers, for logs and status */
} brix_as_decision_t;

int brix_as_state_init(brix_as_state_t *s);
void brix_as_state_free(brix_as_state_t *s);
/* Appends x (t_ms non-decreasing) and drops samples older than every window
 * needs. 0 or -ENOMEM. */
int brix_as_observe(brix_as_state_t *s, const brix_as_params_t *p, const brix_as_sample_t *x);
/* The decision at in->now_ms from the samples so far; records the
 * recommendation for the stabilisation windows. Never fails. */
void brix_as_decide(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                    brix_as_decision_t *d);

/* ---- schedules (AIBrix spec.schedules: daily windows overriding min/max) ---- */

typedef struct brix_as_schedule {
    char name[64];
    char timezone[64];                  /* IANA name; "" = UTC */
    uint8_t days;                       /* bit 0 = Sunday … bit 6 = Saturday; 0 = every day */
    int start_min, end_min;             /* minutes after local midnight, [start, end) */
    int32_t min_replicas, max_replicas; /* -1 = not overridden */
} brix_as_schedule_t;

/* "Mon".."Sun" (any case) → 1..6,0; -1 if not a day. */
int brix_as_day_parse(const char *s);
/* "HH:MM" strict → minutes; -1 if malformed. */
int brix_as_hhmm_parse(const char *s);
/* Effective bounds at wall time wall_ms: the first active schedule (in list
 * order) overrides base min/max; *active is its name or NULL. 0, or -EINVAL
 * for an unknown timezone. */
int brix_as_schedule_bounds(const brix_as_schedule_t *v, size_t n, int64_t wall_ms,
                            int32_t base_min, int32_t base_max, int32_t *min, int32_t *max,
                            const char **active);
/* true if tz names a zone this machine knows (validation at apply). */
bool brix_as_timezone_valid(const char *tz);

#endif
