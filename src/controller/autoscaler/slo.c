/*
 * slo — brix's own strategy: size the fleet from the offered load and what
 * one replica can serve within the latency target, early enough that the
 * capacity is up when the load arrives.
 *
 * Load in replica units. Over the last 10 s (panic window / 6; the scale at which the Azure
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
 * their prompt tokens must be cleared within max(TTFT target, start-up
 * time), which asks for backlog_tokens / (cap_in * that) more replicas:
 * capacity ordered now cannot help sooner than start-up, and clearing the
 * whole backlog within one TTFT would order a fleet for a queue that the
 * first new replicas drain.
 *
 * Forecast: Holt's double exponential smoothing of u_load (level time
 * constant 10 s, trend 60 s — panic window / 6 and the panic window —, scaled by the tick so a late tick
 * weighs more), projected over the replica start-up time plus one tick: a
 * replica ordered now serves only after start-up, so the scale must be the one
 * the load will need then. Only a rising trend is used (max with u_now).
 *
 * Desired = ceil(max(u_now, u_forecast) / headroom) when that is more than
 * the scale: a scale-up happens as soon as the demand exceeds the scale at
 * the planned utilisation (headroom, 0.8).
 *
 * Scale-down is where flaps come from. On a bursty load (the Azure code
 * trace: bursts of 10-40 s every 0.5-4 min, quiet in between) a replica
 * ordered for a burst arrives after it (start-up is 30 s to minutes), so what
 * serves the SLO is capacity KEPT from earlier bursts; and a fleet cut between
 * bursts is scaled up again by the next one, which is a flap. So the scale
 * kept is the one the highest demand of a long memory (3 down windows, plus
 * the pipeline's window: 20 min by default, several burst periods) needs,
 * planned at a utilisation 10 %
 * under the headroom (1 - down_tolerance): a scale-down is followed by a
 * scale-up only if a burst comes that is more than ~11 % above every burst
 * of the last 20 minutes, and the memory forgets a busy regime 20 minutes
 * after it ends, which is where the replica-seconds are saved. The
 * pipeline's down window then applies as for every strategy. Never below
 * ceil(u_now / headroom): the memory and the window can only add.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller/autoscaler/as_internal.h"
#include "core/alloc.h"

#define SLO_LEARN_DOWN      0.5
#define SLO_LEARN_UP        0.1
#define SLO_WELL_WITHIN     0.5
#define SLO_FORECAST_GROWTH 0.25 /* the forecast adds at most a quarter of the load (below) */
/* The demand memory, in down windows; the pipeline's own down window comes
 * on top, so a burst is remembered for 4 windows (20 min by default). On the
 * Azure code trace replayed three times over (1-s ticks, 30-s start-up),
 * 2 windows gave 2-5 flaps and 3 gave none; every window more costs
 * replica-seconds (+6 % each). */
#ifndef SLO_MEMORY_WINDOWS
#define SLO_MEMORY_WINDOWS 3
#endif

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
        /* A backlog (more in flight than Little's law expects at the target,
         * plus one per replica) explains a latency miss by itself: replicas
         * that were still starting, a burst being worked off. Capacity is
         * only learnt down when the latency misses without one. */
        bool backlog =
            q >= 0 && x->rps > 0 && p->slo_ttft_s > 0 && q > 2 * x->rps * p->slo_ttft_s + ready;
        s->cap_in_tps = learn(s->cap_in_tps, in->prior_cap_in_tps, x->in_tps / ready, x->ttft_s,
                              p->slo_ttft_s, growing && !backlog, steady);
        s->cap_out_tps = learn(s->cap_out_tps, in->prior_cap_out_tps, x->out_tps / ready, x->itl_s,
                               p->slo_itl_s, growing, steady);
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

/* The highest `n` pushed within the last `mem` ms: a monotonic deque (values
 * decreasing from the front), a few entries long. false on ENOMEM. */
static bool peak_push(brix_as_state_t *s, uint64_t now, uint64_t mem, int32_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < s->npeaks; i++) /* drop what has left the memory */
        if (s->peaks[i].t_ms + mem > now)
            s->peaks[k++] = s->peaks[i];
    s->npeaks = k;
    while (s->npeaks > 0 && s->peaks[s->npeaks - 1].n <= n)
        s->npeaks--;
    if (s->npeaks == s->peaks_cap) {
        size_t ncap = s->peaks_cap ? s->peaks_cap * 2 : 16;
        brix_as_rec_t *r = brix_realloc(s->peaks, ncap * sizeof *r);
        if (!r)
            return false;
        s->peaks = r;
        s->peaks_cap = ncap;
    }
    s->peaks[s->npeaks++] = (brix_as_rec_t){ .t_ms = now, .n = n };
    return true;
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
        if ((double)(t_last - x->t_ms) >= brix__as_slo_load_ms(p))
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
    double q =
        (newest->inflight > 0 ? newest->inflight : 0) + (newest->held > 0 ? newest->held : 0);
    if (q > 0 && rps > 0 && s->cap_in_tps > 0) {
        double ttft = p->slo_ttft_s > 0 ? p->slo_ttft_s : (newest->ttft_s > 0 ? newest->ttft_s : 1);
        double itl = p->slo_itl_s > 0 ? p->slo_itl_s : (newest->itl_s > 0 ? newest->itl_s : 0);
        double out_per_req = out_tps / rps, in_per_req = in_tps / rps;
        double expected = rps * (ttft + out_per_req * itl);
        double drain = in->startup_s > ttft ? in->startup_s : ttft;
        if (q > expected)
            u_queue = (q - expected) * in_per_req / (s->cap_in_tps * drain);
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
        double a = 1 - exp(-dt / brix__as_slo_load_ms(p)),
               b = 1 - exp(-dt / brix__as_slo_trend_ms(p));
        double prev = s->level;
        s->level = a * u_load + (1 - a) * (s->level + s->trend * dt);
        s->trend = b * (s->level - prev) / dt + (1 - b) * s->trend;
        s->level_t_ms = now;
        tick_ms = dt;
    }
    double horizon_ms = (in->startup_s > 0 ? in->startup_s * 1000 : 0) + tick_ms;
    /* The projection adds at most SLO_FORECAST_GROWTH of the level: a ramp
     * (a diurnal rise) grows far less than that over a start-up time, while
     * a burst's first seconds have a slope that, carried over a minute and
     * more of start-up, would order the whole fleet for a burst that is over
     * before the replicas are. */
    double grow = (s->trend > 0 ? s->trend : 0) * horizon_ms;
    double grow_max = SLO_FORECAST_GROWTH * (s->level > u_load ? s->level : u_load);
    double u_fc = s->level + (grow < grow_max ? grow : grow_max);
    if (u_fc < 0)
        u_fc = 0;
    d->forecast = u_fc;

    double need = u_now > u_fc ? u_now : u_fc;
    double keep_h =
        h * (1 - (p->down_tolerance > 0 && p->down_tolerance < 1 ? p->down_tolerance : 0));
    int32_t rec_up = brix__as_ceil(need / h);
    int32_t rec_keep = brix__as_ceil(need / keep_h);
    uint64_t mem = SLO_MEMORY_WINDOWS * p->down_stabilization_ms;
    int32_t keep = rec_keep;
    if (mem > 0) {
        if (peak_push(s, now, mem, rec_keep))
            keep = s->peaks[0].n;
        else
            keep = cur; /* no memory, no scale-down */
    }
    int32_t rec;
    if (rec_up > cur)
        rec = rec_up;
    else
        rec = keep < cur ? keep : cur;
    r->rec = rec;
    r->reason = rec == cur ? "WithinHeadroom" : NULL;
    snprintf(r->what, sizeof r->what,
             "SLO load %.2f replicas (in %.0f tok/s / %.0f, out %.0f tok/s / %.0f) + queue %.2f, "
             "forecast %.2f in %.0fs, headroom %.2f",
             u_load, in_tps, s->cap_in_tps, out_tps, s->cap_out_tps, u_queue, u_fc,
             horizon_ms / 1000, h);
}
