/*
 * slo — brix's own strategy: size the fleet from the offered load and what
 * one replica can serve within the latency target, early enough that the
 * capacity is up when the load arrives.
 *
 * Load in replica units. Over the last 10 s (the scale at which the Azure
 * code trace's bursts live: its 10-s peak is 12.8x the mean):
 *     u_load = max(in_tps / cap_in, out_tps / cap_out)
 * prompt tokens are prefill work (TTFT), completion tokens decode work (ITL);
 * whichever saturates first sizes the fleet.
 *
 * Capacity per replica at the SLO (cap_in, cap_out) starts from the GPU
 * profile's prior and is learnt from what the fleet shows, within
 * [prior/4, prior*4] so that a few odd ticks cannot run it away:
 *   - TTFT (ITL) above its target while each ready replica was offered L
 *     tokens/s and the backlog was not shrinking: a replica cannot hold the
 *     SLO at L, so cap moves halfway down to L. The backlog guard matters:
 *     right after a burst TTFT stays high while the queue drains at a low
 *     offered load, and that says nothing about capacity;
 *   - TTFT (ITL) under half its target at an L above the estimate while the
 *     backlog was not growing: the replica does better than believed, cap
 *     moves a tenth of the way up (a growing backlog would mean it does not
 *     keep up, whatever the latency shows yet: latency lags the queue).
 *
 * Queue: requests in flight (engines) or held (gateways) beyond what Little's
 * law expects at the SLO (rps x time-in-system at the target) are backlog;
 * their prompt tokens must be cleared within one TTFT target, which asks for
 * backlog_tokens / (cap_in * ttft) more replicas.
 *
 * Forecast: Holt's double exponential smoothing of u_load (level time
 * constant 10 s, trend 60 s, both scaled by the real tick so a late tick
 * weighs more), projected over the replica start-up time plus one tick: a
 * replica ordered now serves only after start-up, so the scale must be the one
 * the load will need then. Only a rising trend is used (max with u_now).
 *
 * Desired = ceil(max(u_now, u_forecast) / headroom). Flap avoidance is a
 * hysteresis band plus the down window: a scale-up happens as soon as the
 * demand exceeds the scale at the planned utilisation (headroom, 0.8), but a
 * scale-down keeps ceil(demand / (headroom * (1 - down_tolerance))), i.e.
 * plans the smaller fleet at a utilisation 10 % lower, and the pipeline's down
 * window then keeps the highest such value of the last 300 s. A scale-down is
 * so followed by a scale-up only if the load climbs more than ~11 % above the
 * highest demand of the previous five minutes; noise around a flat mean never
 * does that. Never below ceil(u_now / headroom): the window can only add.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller/autoscaler/as_internal.h"

#define SLO_LOAD_WINDOW_MS 10000.0
#define SLO_LEVEL_TAU_MS   10000.0
#define SLO_TREND_TAU_MS   60000.0
#define SLO_LEARN_DOWN     0.5
#define SLO_LEARN_UP       0.1
#define SLO_WELL_WITHIN    0.5

static bool usable(const brix_as_sample_t *x)
{
    return x->in_tps >= 0 && x->out_tps >= 0;
}

static double bound_cap(double cap, double prior)
{
    if (prior <= 0)
        return cap;
    if (cap < prior / 4)
        return prior / 4;
    if (cap > prior * 4)
        return prior * 4;
    return cap;
}

/* One latency dimension's learning step; see the header comment. */
static double learn(double cap, double prior, double load, double lat, double slo, bool growing,
                    bool steady)
{
    if (cap <= 0 || slo <= 0 || lat < 0 || load <= 0)
        return cap;
    if (lat > slo && load < cap && growing)
        cap += SLO_LEARN_DOWN * (load - cap);
    else if (lat < SLO_WELL_WITHIN * slo && load > cap && steady)
        cap += SLO_LEARN_UP * (load - cap);
    return bound_cap(cap, prior);
}

static void learn_capacity(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in)
{
    if (s->cap_in_tps <= 0 && in->prior_cap_in_tps > 0)
        s->cap_in_tps = in->prior_cap_in_tps;
    if (s->cap_out_tps <= 0 && in->prior_cap_out_tps > 0)
        s->cap_out_tps = in->prior_cap_out_tps;
    s->cap_in_tps = bound_cap(s->cap_in_tps, in->prior_cap_in_tps);
    s->cap_out_tps = bound_cap(s->cap_out_tps, in->prior_cap_out_tps);

    for (size_t k = 0; k < s->n; k++) {
        const brix_as_sample_t *x = brix__as_sample_at(s, k);
        if (x->t_ms < s->learn_t_ms)
            continue; /* learnt from at an earlier decision */
        if (x->t_ms > in->now_ms)
            break;
        s->learn_t_ms = x->t_ms + 1;
        if (!usable(x))
            continue;
        /* The backlog's direction (inflight + held against the previous
         * sample): without queue figures latency alone decides; with them,
         * the first sample has no direction yet and teaches nothing. */
        double q = x->inflight >= 0 && x->held >= 0 ? x->inflight + x->held : -1;
        bool growing = q < 0 || (s->learn_inflight >= 0 && q >= s->learn_inflight);
        bool steady = q < 0 || (s->learn_inflight >= 0 && q <= s->learn_inflight);
        s->learn_inflight = q;
        if (in->ready <= 0)
            continue;
        double ready = in->ready;
        s->cap_in_tps = learn(s->cap_in_tps, in->prior_cap_in_tps, x->in_tps / ready, x->ttft_s,
                              p->slo_ttft_s, growing, steady);
        s->cap_out_tps = learn(s->cap_out_tps, in->prior_cap_out_tps, x->out_tps / ready,
                               x->itl_s, p->slo_itl_s, growing, steady);
    }
}

static double load_units(const brix_as_state_t *s, double in_tps, double out_tps)
{
    double u = 0;
    if (s->cap_in_tps > 0 && in_tps > 0)
        u = in_tps / s->cap_in_tps;
    if (s->cap_out_tps > 0 && out_tps > 0 && out_tps / s->cap_out_tps > u)
        u = out_tps / s->cap_out_tps;
    return u;
}

void brix__as_slo(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in,
                  brix_as_decision_t *d, brix__as_raw_t *r)
{
    int32_t cur = in->current > 0 ? in->current : 0;
    uint64_t now = in->now_ms;
    double h = p->slo_headroom > 0 && p->slo_headroom <= 1 ? p->slo_headroom : 0.8;

    learn_capacity(p, s, in);
    d->capacity_in_tps = s->cap_in_tps;
    d->capacity_out_tps = s->cap_out_tps;

    /* The offered load: the mean of the last 10 s of usable samples; the
     * gauges (inflight, held) from the newest one. */
    const brix_as_sample_t *newest = NULL;
    double in_sum = 0, out_sum = 0, rps_sum = 0;
    size_t used = 0;
    uint64_t t_last = 0;
    for (size_t k = s->n; k-- > 0;) {
        const brix_as_sample_t *x = brix__as_sample_at(s, k);
        if (x->t_ms + p->stable_window_ms <= now)
            break;
        if (x->t_ms > now || !usable(x))
            continue;
        if (!newest) {
            newest = x;
            t_last = x->t_ms;
        }
        if ((double)(t_last - x->t_ms) >= SLO_LOAD_WINDOW_MS)
            break;
        in_sum += x->in_tps;
        out_sum += x->out_tps;
        rps_sum += x->rps > 0 ? x->rps : 0;
        used++;
    }
    if (!newest) {
        r->frozen = true;
        snprintf(r->what, sizeof r->what, "SLO: no load report in the last %llus",
                 (unsigned long long)(p->stable_window_ms / 1000));
        return;
    }
    if (s->cap_in_tps <= 0 && s->cap_out_tps <= 0) {
        r->frozen = true;
        r->reason = "NoCapacity";
        snprintf(r->what, sizeof r->what, "SLO: no per-replica capacity known");
        return;
    }
    double in_tps = in_sum / (double)used, out_tps = out_sum / (double)used;
    double rps = rps_sum / (double)used;
    double u_load = load_units(s, in_tps, out_tps);

    /* Backlog beyond Little's law at the SLO. */
    double u_queue = 0;
    double q = (newest->inflight > 0 ? newest->inflight : 0) + (newest->held > 0 ? newest->held : 0);
    if (q > 0 && rps > 0 && s->cap_in_tps > 0) {
        double ttft = p->slo_ttft_s > 0 ? p->slo_ttft_s : (newest->ttft_s > 0 ? newest->ttft_s : 1);
        double itl = p->slo_itl_s > 0 ? p->slo_itl_s : (newest->itl_s > 0 ? newest->itl_s : 0);
        double out_per_req = out_tps / rps, in_per_req = in_tps / rps;
        double expected = rps * (ttft + out_per_req * itl);
        if (q > expected)
            u_queue = (q - expected) * in_per_req / (s->cap_in_tps * ttft);
    }
    double u_now = u_load + u_queue;

    /* Holt's forecast of u_load. */
    double tick_ms = 1000;
    if (!s->level_init) {
        s->level = u_load;
        s->trend = 0;
        s->level_t_ms = now;
        s->level_init = true;
    } else if (now > s->level_t_ms) {
        double dt = (double)(now - s->level_t_ms);
        double a = 1 - exp(-dt / SLO_LEVEL_TAU_MS), b = 1 - exp(-dt / SLO_TREND_TAU_MS);
        double prev = s->level;
        s->level = a * u_load + (1 - a) * (s->level + s->trend * dt);
        s->trend = b * (s->level - prev) / dt + (1 - b) * s->trend;
        s->level_t_ms = now;
        tick_ms = dt;
    }
    double horizon_ms = (in->startup_s > 0 ? in->startup_s * 1000 : 0) + tick_ms;
    double u_fc = s->level + (s->trend > 0 ? s->trend : 0) * horizon_ms;
    if (u_fc < 0)
        u_fc = 0;
    d->forecast = u_fc;

    double need = u_now > u_fc ? u_now : u_fc;
    double keep_h = h * (1 - (p->down_tolerance > 0 && p->down_tolerance < 1 ? p->down_tolerance : 0));
    int32_t rec_up = brix__as_ceil(need / h);
    int32_t rec_keep = brix__as_ceil(need / keep_h);
    int32_t rec;
    if (rec_up > cur)
        rec = rec_up;
    else
        rec = rec_keep < cur ? rec_keep : cur;
    r->rec = rec;
    r->reason = rec == cur ? "WithinHeadroom" : NULL;
    snprintf(r->what, sizeof r->what,
             "SLO load %.2f replicas (in %.0f tok/s / %.0f, out %.0f tok/s / %.0f) + queue %.2f, "
             "forecast %.2f in %.0fs, headroom %.2f",
             u_load, in_tps, s->cap_in_tps, out_tps, s->cap_out_tps, u_queue, u_fc,
             horizon_ms / 1000, h);
}
