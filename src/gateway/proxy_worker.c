/*
 * A gateway worker's lifecycle: one per worker loop (core workers).
 *
 * brix_gw_worker_init sets up the loop's handles (view wake-up, drain timer,
 * access-log flush, fairness delivery, held-request timer, tenant store
 * connection) and its HTTP listener; brix_gw_worker_stop closes them, after
 * the server has closed its connections, which frees every px in flight.
 * New fleet views arrive through `wake`; requests the fairness queue lets in
 * arrive through `fair_wake` from whichever thread decided it.
 */
#include "core/alloc.h"
#include "core/time.h"
#include "gateway/proxy_internal.h"

#include <errno.h>
#include <stdio.h>

/* Draining: report when this worker has nothing left in flight. */
static void on_drain_tick(uv_timer_t *t)
{
    brix_gw_worker_t *w = t->data;
    brix_http_server_stats_t st;
    brix_http_server_stats(w->srv, &st);
    if (st.requests_active == 0) {
        atomic_store(&w->drained, true);
        uv_timer_stop(t);
    }
}

/* Adopts the newest view; releases pools of pods that left the fleet. */
static void on_wake(uv_async_t *a)
{
    brix_gw_worker_t *w = a->data;
    uv_mutex_lock(&w->mu);
    brix_gw_view_t *v = w->pending;
    w->pending = NULL;
    bool stop = w->stop_requested;
    uv_mutex_unlock(&w->mu);
    if (v) {
        brix_gw_view_t *old = w->view;
        w->view = v;
        for (size_t id = 0; id < w->nups; id++) {
            if (!w->ups[id])
                continue;
            bool present = false;
            for (size_t i = 0; i < v->fleet->npods && !present; i++)
                present = v->fleet->pods[i].pod == w->ups_pod[id];
            if (!present) {
                brix_upstream_release(w->ups[id]);
                brix_pod_unref(w->ups_pod[id]);
                w->ups[id] = NULL;
                w->ups_pod[id] = NULL;
            }
        }
        if (old)
            brix_gw_view_unref(old);
        if (w->held.n)
            brix_px_recheck_held(w, false);
    }
    if (stop && !w->draining && w->srv) {
        if (w->held.n && w->view)
            brix_px_recheck_held(w, true); /* nothing will load for them before the drain ends */
        w->draining = true;
        brix_http_server_drain(w->srv);
        uv_timer_start(&w->drain_timer, on_drain_tick, 0, 20);
    }
}

/* ------------------------------------------------------------ fairness -- */

void brix_gw_fair_deliver(void *ud, int worker, brix_fair_item_t *it)
{
    brix_gw_t *gw = ud;
    brix_gw_worker_t *w = gw->w[worker];
    uv_mutex_lock(&w->fair_mu);
    it->next = w->fair_ready;
    w->fair_ready = it;
    if (!w->fair_closed)
        uv_async_send(&w->fair_wake);
    uv_mutex_unlock(&w->fair_mu);
}

/* A request that waited routes on the fleet as it is now. Returns false
 * after answering when its model is gone. */
static bool refresh_view(px_t *px)
{
    brix_gw_worker_t *w = px->w;
    if (!w->view || w->view == px->view)
        return true;
    const brix_model_entry_t *me = brix_snap_model(w->view->fleet, px->model_name);
    if (!me) {
        brix_px_fail(px, 503, "overloaded_error", "service_unavailable",
                     "model '%s' is no longer served by any pod", px->model_name);
        return false;
    }
    brix_gw_view_ref(w->view);
    brix_gw_view_unref(px->view);
    px->view = w->view;
    px->model = me;
    return true;
}

/* Requests the fairness queue let in (or gave up on) arrive here. */
static void take_ready(brix_gw_worker_t *w, bool closing)
{
    uv_mutex_lock(&w->fair_mu);
    brix_fair_item_t *it = w->fair_ready;
    w->fair_ready = NULL;
    uv_mutex_unlock(&w->fair_mu);
    /* the list is newest first: reverse it to keep arrival order */
    brix_fair_item_t *rev = NULL;
    while (it) {
        brix_fair_item_t *n = it->next;
        it->next = rev;
        rev = it;
        it = n;
    }
    for (it = rev; it;) {
        brix_fair_item_t *n = it->next;
        it->next = NULL;
        px_t *px = it->px;
        if (!px || closing) {
            if (px)
                px->fair = NULL;
            brix_fair_leave(it->owner, it, 0); /* the client left meanwhile */
        } else {
            px->fair_waiting = false;
            brix_metric_observe(w->gw->m.fair_wait, (double)(brix_now_ns() - it->enq_ns) / 1e9);
            if (it->state == BRIX_FAIR_EXPIRED) {
                char v[16];
                snprintf(v, sizeof v, "%d", px->view->rt->retry_after_s);
                brix_http_add_header(px->h, "retry-after", v);
                brix_px_tenant_result(px, px->user, "queue_timeout");
                brix_px_fail(px, 503, "overloaded_error", "queue_timeout",
                             "no capacity for this request within %llu ms (--queue-timeout); retry "
                             "later",
                             (unsigned long long)w->gw->fixed.queue_timeout);
            } else if (refresh_view(px)) {
                brix_px_start(px);
            }
        }
        it = n;
    }
}

static void on_fair_wake(uv_async_t *a)
{
    take_ready(a->data, false);
}

static void close_fair(brix_gw_worker_t *w)
{
    uv_mutex_lock(&w->fair_mu);
    w->fair_closed = true;
    uv_mutex_unlock(&w->fair_mu);
    if (w->gw->fair)
        take_ready(w, true);
    uv_close((uv_handle_t *)&w->fair_wake, NULL);
}

int brix_gw_worker_init(uv_loop_t *loop, int idx, void *ud, void **wctx)
{
    brix_gw_t *gw = ud;
    brix_gw_worker_t *w = brix_calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    *wctx = w;
    w->gw = gw;
    w->idx = idx;
    w->loop = loop;
    w->retry_after_s = gw->rt->retry_after_s; /* answers before the first snapshot */
    w->rng = brix_now_ns() ^ ((uint64_t)idx << 56) ^ (uint64_t)(uintptr_t)w;
    uv_mutex_init(&w->mu);
    uv_async_init(loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_timer_init(loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_check_init(loop, &w->alog_check);
    w->alog_check.data = w;
    uv_mutex_init(&w->fair_mu);
    uv_async_init(loop, &w->fair_wake, on_fair_wake);
    w->fair_wake.data = w;
    brix_gw_holdq_init(&w->held, loop, &gw->demand, brix_px_on_held_expire, w);
    gw->w[idx] = w;
    if (gw->tn && !(w->tn = brix_tn_conn_new(gw->tn, loop)))
        return -ENOMEM;
    const brix_gw_cfg_t *c = &gw->cfg;
    w->srv = brix_http_server_new(loop, &c->http, brix_px_handler, w);
    if (!w->srv)
        return -ENOMEM;
    brix_http_server_set_shared(w->srv, gw->http_shared);
    int bound = 0;
    int port = idx == 0 ? (int)c->port : gw->port;
    int rc = brix_http_server_listen(w->srv, c->host, port, true, &bound);
    if (rc)
        return rc;
    if (idx == 0)
        gw->port = bound;
    return 0;
}

static void on_server_closed(void *arg)
{
    brix_gw_worker_t *w = arg;
    w->srv = NULL;
    for (size_t id = 0; id < w->nups; id++) {
        if (w->ups[id]) {
            brix_upstream_release(w->ups[id]);
            brix_pod_unref(w->ups_pod[id]);
        }
    }
    brix_free(w->ups);
    brix_free(w->ups_pod);
    brix_free(w->ups_rt_version);
    w->ups = NULL;
    w->nups = 0;
    uv_mutex_lock(&w->mu);
    brix_gw_view_t *pending = w->pending;
    w->pending = NULL;
    uv_mutex_unlock(&w->mu);
    if (pending)
        brix_gw_view_unref(pending);
    if (w->view)
        brix_gw_view_unref(w->view);
    w->view = NULL;
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    brix_gw_holdq_close(&w->held);
    close_fair(w);
    brix_tn_conn_free(w->tn);
    w->tn = NULL;
    brix_px_alog_flush(&w->alog_check); /* lines of aborted requests */
    uv_close((uv_handle_t *)&w->alog_check, NULL);
    brix_buf_free(&w->alog);
    atomic_fetch_add(&w->gw->workers_done, 1);
}

void brix_gw_worker_stop(uv_loop_t *loop, int idx, void *ud, void *wctx)
{
    brix_gw_worker_t *w = wctx;
    if (!w)
        return;
    uv_timer_stop(&w->drain_timer);
    if (w->srv) {
        brix_http_server_close(w->srv, on_server_closed, w);
    } else {
        uv_close((uv_handle_t *)&w->wake, NULL);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->alog_check, NULL);
        brix_gw_holdq_close(&w->held);
        close_fair(w);
        brix_tn_conn_free(w->tn);
        w->tn = NULL;
    }
}
