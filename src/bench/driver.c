/*
 * The load driver: replays a workload open-loop (each request leaves at its
 * arrival time, whatever is still running), over keep-alive connections from
 * the core HTTP client, and timestamps every SSE content event as it
 * arrives. It parses only what measurement needs: event boundaries, whether
 * an event carries text, the final usage, and [DONE].
 */
#include "bench/bench.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/http_client.h"
#include "core/time.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

typedef struct drv drv_t;

typedef struct dreq {
    drv_t *d;
    size_t i;
    brix_ureq_t *ur;
    brix_buf_t sse;
    double last;
    bool saw_done;
} dreq_t;

struct drv {
    uv_loop_t loop;
    uv_timer_t timer, progress;
    const bench_cfg_t *c;
    const bench_workload_t *w;
    bench_run_t *run;
    brix_upstream_t *up;
    dreq_t *reqs;
    size_t next, done, errors, inflight;
    double t0;
    brix_buf_t hdrs;
    double deadline; /* wall: give up on stragglers after this */
};

static double now_s(void)
{
    return (double)brix_now_ns() / 1e9;
}

static void add_itl(bench_run_t *run, double gap)
{
    if (run->nitl == run->itl_cap) {
        size_t nc = run->itl_cap ? run->itl_cap * 2 : 65536;
        float *v = brix_realloc(run->itl, nc * sizeof *v);
        if (!v)
            return;
        run->itl = v;
        run->itl_cap = nc;
    }
    run->itl[run->nitl++] = (float)gap;
}

/* True when a JSON string field `"key":"` in the event has a non-empty value. */
static bool nonempty_field(const char *ev, size_t n, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = ev; (p = memmem(p, (size_t)(ev + n - p), key, kl)); p += kl)
        if (p + kl < ev + n && p[kl] != '"')
            return true;
    return false;
}

static void on_event(dreq_t *q, const char *ev, size_t n)
{
    bench_res_t *r = &q->d->run->res[q->i];
    if (n < 6 || memcmp(ev, "data: ", 6))
        return;
    ev += 6;
    n -= 6;
    if (n == 6 && !memcmp(ev, "[DONE]", 6)) {
        q->saw_done = true;
        return;
    }
    const char *u = memmem(ev, n, "\"completion_tokens\":", 20);
    if (u && memmem(ev, n, "\"usage\":{", 9))
        r->out_tokens = (uint32_t)strtoul(u + 20, NULL, 10);
    if (nonempty_field(ev, n, "\"content\":\"") || nonempty_field(ev, n, "\"text\":\"")) {
        double t = now_s();
        if (!r->events)
            r->first = t;
        else {
            double gap = t - q->last;
            r->itl_sum += gap;
            r->itl_max = gap > r->itl_max ? gap : r->itl_max;
            add_itl(q->d->run, gap);
        }
        q->last = t;
        r->events++;
    }
}

static void on_head(brix_ureq_t *ur, int status, const brix_http_header_t *h, size_t nh, void *ud)
{
    dreq_t *q = ud;
    bench_res_t *r = &q->d->run->res[q->i];
    r->status = status;
    for (size_t i = 0; i < nh; i++)
        if (!strcasecmp(h[i].name, "target-pod"))
            snprintf(r->pod, sizeof r->pod, "%s", h[i].value);
}

static void on_data(brix_ureq_t *ur, const char *data, size_t len, void *ud)
{
    dreq_t *q = ud;
    if (brix_buf_append(&q->sse, data, len))
        return;
    size_t start = 0;
    for (;;) {
        char *e = memmem(q->sse.data + start, q->sse.len - start, "\n\n", 2);
        if (!e)
            break;
        on_event(q, q->sse.data + start, (size_t)(e - q->sse.data - start));
        start = (size_t)(e - q->sse.data) + 2;
    }
    brix_buf_consume(&q->sse, start);
}

static void finish(dreq_t *q, bool ok)
{
    drv_t *d = q->d;
    bench_res_t *r = &d->run->res[q->i];
    r->done = now_s();
    r->ok = ok && r->status == 200 && q->saw_done;
    if (!r->ok)
        d->errors++;
    brix_buf_free(&q->sse);
    q->ur = NULL;
    d->inflight--;
    d->done++;
    if (d->done == d->w->n) {
        uv_timer_stop(&d->timer);
        uv_timer_stop(&d->progress);
        uv_stop(&d->loop); /* pooled keep-alive connections would keep it running */
    }
}

static void on_done(brix_ureq_t *ur, void *ud)
{
    finish(ud, true);
}

static void on_error(brix_ureq_t *ur, brix_uerr_t err, bool got, void *ud)
{
    finish(ud, false);
}

static const brix_ureq_cb_t cbs = { on_head, on_data, on_done, on_error };

static void schedule(drv_t *d);

static void on_timer(uv_timer_t *t)
{
    drv_t *d = t->data;
    double now = now_s();
    if (d->next >= d->w->n) {
        /* all sent: stragglers past the deadline are abandoned */
        if (now > d->deadline) {
            for (size_t i = 0; i < d->w->n; i++) {
                if (d->reqs[i].ur) {
                    brix_ureq_cancel(d->reqs[i].ur);
                    finish(&d->reqs[i], false);
                }
            }
        }
        return;
    }
    while (d->next < d->w->n && d->t0 + d->w->v[d->next].t * d->c->time_scale <= now) {
        size_t i = d->next++;
        const bench_req_t *rq = &d->w->v[i];
        dreq_t *q = &d->reqs[i];
        q->d = d;
        q->i = i;
        d->run->res[i].sent = now_s();
        d->inflight++;
        q->ur =
            brix_ureq_start(d->up, "POST", rq->chat ? "/v1/chat/completions" : "/v1/completions",
                            d->hdrs.data, d->hdrs.len, rq->body, rq->body_len, &cbs, q);
        if (!q->ur)
            finish(q, false);
    }
    schedule(d);
}

static void schedule(drv_t *d)
{
    if (d->next >= d->w->n) {
        /* check for stragglers every second */
        uv_timer_start(&d->timer, on_timer, 1000, 1000);
        return;
    }
    double due = d->t0 + d->w->v[d->next].t * d->c->time_scale - now_s();
    uv_timer_start(&d->timer, on_timer, due > 0 ? (uint64_t)ceil(due * 1000) : 0, 0);
}

static void on_progress(uv_timer_t *t)
{
    drv_t *d = t->data;
    fprintf(stderr, "\r  %-22s %6.1fs  sent %zu/%zu  done %zu  errors %zu  in flight %zu   ",
            d->run->strategy, (now_s() - d->t0) / d->c->time_scale, d->next, d->w->n, d->done,
            d->errors, d->inflight);
}

int bench_drive(const bench_cfg_t *c, const bench_workload_t *w, const char *host, int port,
                const char *strategy_header, bench_run_t *run)
{
    drv_t d;
    memset(&d, 0, sizeof d);
    d.c = c;
    d.w = w;
    d.run = run;
    run->n = w->n;
    run->res = brix_calloc(w->n, sizeof *run->res);
    d.reqs = brix_calloc(w->n, sizeof *d.reqs);
    if (!run->res || !d.reqs) {
        brix_free(d.reqs);
        return -1;
    }
    uv_loop_init(&d.loop);
    brix_upstream_opts_t o;
    brix_upstream_opts_default(&o);
    o.max_idle = 100000;
    o.first_byte_timeout_ms = 3600000;
    o.idle_timeout_ms = 3600000;
    d.up = brix_upstream_new(&d.loop, host, port, &o);
    if (!d.up) {
        uv_loop_close(&d.loop);
        brix_free(d.reqs);
        return -1;
    }
    brix_buf_append_str(&d.hdrs, "content-type: application/json\r\naccept: text/event-stream\r\n");
    if (strategy_header)
        brix_buf_printf(&d.hdrs, "routing-strategy: %s\r\n", strategy_header);
    uv_timer_init(&d.loop, &d.timer);
    uv_timer_init(&d.loop, &d.progress);
    d.timer.data = d.progress.data = &d;
    d.t0 = now_s() + 0.05;
    run->t0 = d.t0;
    double last = w->v[w->n - 1].t * c->time_scale;
    d.deadline = d.t0 + last + 600 * c->time_scale + 30;
    if (c->progress)
        uv_timer_start(&d.progress, on_progress, 2000, 2000);
    schedule(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    if (c->progress) {
        on_progress(&d.progress);
        fputc('\n', stderr);
    }
    run->t_end = now_s();
    brix_upstream_release(d.up);
    uv_close((uv_handle_t *)&d.timer, NULL);
    uv_close((uv_handle_t *)&d.progress, NULL);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    uv_loop_close(&d.loop);
    brix_buf_free(&d.hdrs);
    brix_free(d.reqs);
    return 0;
}
