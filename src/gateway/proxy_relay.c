/*
 * Sending a request and relaying its answer, on a worker loop.
 *
 * Each attempt is routed to a pod and forwarded with the original body
 * bytes (or the rewritten one, proxy_admit.c) over the worker's pool for
 * that pod. The response is relayed as it arrives: SSE bodies event by
 * event (core/sse holds a partial event until its end arrives, so a failure
 * can always be reported as a clean SSE error event), other bodies byte for
 * byte with their Content-Length. Failures before anything reached the
 * client are retried on another pod (bounded); failures after that end the
 * stream with an error event. A client that stops reading pauses the
 * upstream (backpressure) and one that leaves cancels it at once. Usage
 * numbers are picked from the body for the tenant and fairness accounting.
 * Every outcome feeds the pod's circuit breaker; px is freed by whoever
 * answers (brix_px_free, proxy.c).
 */
#include "core/alloc.h"
#include "core/log.h"
#include "core/sse.h"
#include "core/time.h"
#include "gateway/proxy_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Headers that describe one connection, not the message (RFC 9110 7.6.1),
 * plus the ones the gateway sets itself. Dispatch on length first: this runs
 * for every header of every request and response. */
static bool hop_by_hop(const char *name, size_t n)
{
    switch (n) {
    case 2:
        return !strcasecmp(name, "te");
    case 4:
        return !strcasecmp(name, "host");
    case 6:
        return !strcasecmp(name, "expect");
    case 7:
        return !strcasecmp(name, "trailer") || !strcasecmp(name, "upgrade");
    case 10:
        return !strcasecmp(name, "connection") || !strcasecmp(name, "keep-alive");
    case 14:
        return !strcasecmp(name, "content-length");
    case 16:
        return !strcasecmp(name, "proxy-connection");
    case 17:
        return !strcasecmp(name, "transfer-encoding");
    case 18:
        return !strcasecmp(name, "proxy-authenticate");
    case 19:
        return !strcasecmp(name, "proxy-authorization");
    default:
        return false;
    }
}

/* ------------------------------------------------------------- upstreams -- */

static brix_upstream_t *upstream_for(brix_gw_worker_t *w, brix_pod_t *pod, const brix_gw_rt_t *rt)
{
    if (pod->id >= w->nups) {
        size_t n = pod->id + 16;
        brix_upstream_t **u = brix_realloc(w->ups, n * sizeof *u);
        if (!u)
            return NULL;
        w->ups = u;
        brix_pod_t **p = brix_realloc(w->ups_pod, n * sizeof *p);
        if (!p)
            return NULL;
        w->ups_pod = p;
        uint64_t *v = brix_realloc(w->ups_rt_version, n * sizeof *v);
        if (!v)
            return NULL;
        w->ups_rt_version = v;
        for (size_t i = w->nups; i < n; i++) {
            w->ups[i] = NULL;
            w->ups_pod[i] = NULL;
            w->ups_rt_version[i] = 0;
        }
        w->nups = n;
    }
    uint32_t id = pod->id;
    if (w->ups[id] && (w->ups_pod[id] != pod || w->ups_rt_version[id] != rt->version)) {
        brix_upstream_release(w->ups[id]);
        brix_pod_unref(w->ups_pod[id]);
        w->ups[id] = NULL;
        w->ups_pod[id] = NULL;
    }
    if (!w->ups[id]) {
        w->ups[id] = brix_upstream_new(w->loop, pod->host, pod->port, &rt->upstream);
        if (!w->ups[id])
            return NULL;
        brix_pod_ref(pod);
        w->ups_pod[id] = pod;
        w->ups_rt_version[id] = rt->version;
    }
    return w->ups[id];
}

/* The pod answered (first byte) or the attempt ended: its prefill work for
 * this request is no longer queued. */
static void release_pending(px_t *px)
{
    if (px->pod && px->pending) {
        atomic_fetch_sub_explicit(&px->pod->pending_prefill, px->pending, memory_order_relaxed);
        px->pending = 0;
    }
}

/* Ends the current attempt's accounting on its pod. */
static void attempt_end(px_t *px, bool ok)
{
    brix_gw_worker_t *w = px->w;
    brix_pod_t *pod = px->pod;
    if (!pod)
        return;
    release_pending(px);
    atomic_fetch_sub_explicit(&pod->inflight, 1, memory_order_relaxed);
    uint64_t now = brix_now_ns();
    if (brix_breaker_report(pod, &px->view->rt->breaker, ok, px->probe, now)) {
        brix_metric_add(brix_gw_metric1(w->gw->m.ejections, pod->name), 1);
        BRIX_WARN("pod %s ejected after failures (ejection #%u)", pod->name,
                  atomic_load(&pod->ejections));
    }
    px->probe = false;
    px->pod = NULL;
    brix_pod_unref(pod);
}

/* -------------------------------------------------------------- usage -- */

static int64_t json_int_after(const char *s, const char *end, const char *key)
{
    size_t kl = strlen(key);
    const char *p = s;
    while ((p = memmem(p, (size_t)(end - p), key, kl))) {
        p += kl;
        while (p < end && (*p == ' ' || *p == ':'))
            p++;
        if (p < end && *p >= '0' && *p <= '9')
            return strtoll(p, NULL, 10);
    }
    return -1;
}

/* Looks for usage numbers in a body fragment (an SSE event or the tail of a
 * JSON body); the last "usage" object wins. */
static void scan_usage(px_t *px, const char *s, size_t n)
{
    const char *u = NULL;
    for (const char *p = s; (p = memmem(p, (size_t)(s + n - p), "\"usage\"", 7)); p += 7)
        u = p;
    if (!u)
        return;
    int64_t pt = json_int_after(u, s + n, "\"prompt_tokens\"");
    int64_t ct = json_int_after(u, s + n, "\"completion_tokens\"");
    if (pt >= 0)
        px->prompt_tokens = pt;
    if (ct >= 0)
        px->completion_tokens = ct;
}

/* ------------------------------------------------------------ relaying -- */

void brix_px_on_drain(brix_http_req_t *h, void *ud)
{
    px_t *px = ud;
    if (px->paused && px->ur) {
        px->paused = false;
        brix_ureq_pause(px->ur, false);
    }
}

static int relay(px_t *px, const char *data, size_t len)
{
    int rc = brix_http_stream_write(px->h, data, len);
    if (rc)
        return rc; /* the client is gone: on_abort already cleaned up */
    if (!px->paused && brix_http_write_backlogged(px->h, px->view->rt->backpressure_bytes)) {
        px->paused = true;
        brix_ureq_pause(px->ur, true);
    }
    return 0;
}

/* Relays the complete events gathered so far (one write for a run of
 * them). Non-zero: the client is gone and px with it. */
static int flush_events(px_t *px)
{
    if (!px->run_n)
        return 0;
    const char *p = px->run;
    size_t n = px->run_n;
    px->run_n = 0;
    if (memmem(p, n, "\"usage\"", 7))
        scan_usage(px, p, n);
    return relay(px, p, n);
}

/* One whole SSE event (sse.h). Consecutive events of a chunk are relayed
 * together; when the gateway asked the engine for usage on the client's
 * behalf, the usage-only event ("choices":[] with a "usage" object, vLLM's
 * last chunk) is left out, so the client sees exactly the stream it asked
 * for. */
static int on_sse_event(void *ud, const char *ev, size_t n)
{
    px_t *px = ud;
    px->events++;
    if (px->strip_usage && memmem(ev, n, "\"choices\":[]", 12) && memmem(ev, n, "\"usage\":{", 9)) {
        scan_usage(px, ev, n);
        return flush_events(px);
    }
    if (px->run_n && px->run + px->run_n == ev) {
        px->run_n += n;
    } else {
        if (flush_events(px))
            return -1;
        px->run = ev;
        px->run_n = n;
    }
    /* an event completed from held bytes: relay it before they are reused */
    const char *held;
    brix_sse_pending(&px->sse_fr, &held);
    return ev == held ? flush_events(px) : 0;
}

static void up_head(brix_ureq_t *r, int status, const brix_http_header_t *hs, size_t nh, void *ud);
static void up_data(brix_ureq_t *r, const char *data, size_t len, void *ud);
static void up_done(brix_ureq_t *r, void *ud);
static void up_error(brix_ureq_t *r, brix_uerr_t err, bool got_bytes, void *ud);

static const brix_ureq_cb_t up_cb = { up_head, up_data, up_done, up_error };

static void attempt(px_t *px);
static void upstream_failed(px_t *px, const char *kind, const char *detail, bool got_bytes);

static bool can_retry(px_t *px)
{
    return !px->head_sent && px->attempts <= px->view->rt->max_retries &&
           px->attempts < BRIX_PX_MAX_ATTEMPTS;
}

/* Tries another pod, or answers `status` with "upstream failed: detail". */
static void retry_or_fail(px_t *px, int status, const char *detail)
{
    snprintf(px->last_error, sizeof px->last_error, "%s", detail);
    if (can_retry(px)) {
        attempt(px);
        return;
    }
    brix_http_req_t *h = px->h;
    brix_px_access_log(px, status);
    brix_http_respond_error(h, status, brix_px_err_type(status), NULL, NULL, "upstream failed: %s",
                            detail);
    brix_px_free(px);
}

static void up_head(brix_ureq_t *r, int status, const brix_http_header_t *hs, size_t nh, void *ud)
{
    px_t *px = ud;
    brix_http_req_t *h = px->h;
    px->status = status;
    if (status >= 500 && px->view->rt->retry_on_5xx) {
        /* Retried on another pod while any is left; the last failure is a
         * 502 from the gateway (the engine's own body is not relayed). */
        char d[96];
        snprintf(d, sizeof d, "%s answered %d", px->pod->name, status);
        px->err_kind = "upstream_5xx";
        brix_metric_add(brix_gw_metric2(px->w->gw->m.upstream_errors, px->pod->name, "status_5xx"),
                        1);
        brix_ureq_cancel(r);
        px->ur = NULL;
        attempt_end(px, false);
        retry_or_fail(px, 502, d);
        return;
    }
    if (status >= 500)
        brix_metric_add(brix_gw_metric2(px->w->gw->m.upstream_errors, px->pod->name, "status_5xx"),
                        1);
    const char *ctype = "application/json";
    long long clen = -1;
    for (size_t i = 0; i < nh; i++) {
        if (!strcasecmp(hs[i].name, "content-type"))
            ctype = hs[i].value;
        else if (!strcasecmp(hs[i].name, "content-length"))
            clen = strtoll(hs[i].value, NULL, 10);
        else if (!hop_by_hop(hs[i].name, hs[i].name_len) && strcasecmp(hs[i].name, "date") &&
                 strcasecmp(hs[i].name, "server") && strcasecmp(hs[i].name, "x-request-id") &&
                 strcasecmp(hs[i].name, "content-type"))
            brix_http_add_header(h, hs[i].name, hs[i].value);
    }
    const brix_pod_t *pod = px->view->fleet->pods[px->pod_idx].pod;
    brix_http_add_header(h, "target-pod", pod->name);
    brix_http_add_header(h, "target-pod-ip", pod->hostport);
    brix_http_add_header(h, "routing-strategy", px->strategy.name);
    if (px->explain && px->explanation.len)
        brix_http_add_header(h, "x-brix-route", px->explanation.data);
    brix_http_add_header(h, "request-id", h->id);
    px->sse = !strncasecmp(ctype, "text/event-stream", 17);
    if (px->sse)
        brix_sse_init(&px->sse_fr, px->view->rt->sse_max_event_bytes);
    px->head_sent = true;
    int rc = clen >= 0 && !px->sse ? brix_http_stream_start_len(h, status, ctype, (uint64_t)clen)
                                   : brix_http_stream_start(h, status, ctype);
    (void)rc; /* on failure on_abort has run: nothing left to do here */
}

static void up_data(brix_ureq_t *r, const char *data, size_t len, void *ud)
{
    px_t *px = ud;
    if (!px->t_first_byte) {
        px->t_first_byte = brix_now_ns();
        release_pending(px);
        if (px->sse)
            brix_metric_observe(brix_gw_metric1(px->w->gw->m.ttft, px->model_name),
                                (double)(px->t_first_byte - px->h->start_ns) / 1e9);
    }
    if (!px->sse) {
        /* usage is near the end of a JSON body, which usually arrives in one
         * piece: scan each piece where it lies (no copy) */
        if (memmem(data, len, "\"usage\"", 7))
            scan_usage(px, data, len);
        relay(px, data, len);
        return;
    }
    /* SSE: forward whole events only; hold a trailing partial one. */
    int rc = brix_sse_feed(&px->sse_fr, data, len, on_sse_event, px);
    if (rc == -1)
        return; /* the client is gone: on_abort already cleaned up */
    if (!rc) {
        flush_events(px);
        return;
    }
    /* An event over --sse-max-event-bytes (or no memory to hold it): the
     * engine's stream is broken; what was complete is relayed, then an
     * error event ends the stream. */
    if (flush_events(px))
        return;
    brix_ureq_cancel(r);
    px->ur = NULL;
    char detail[160];
    if (rc == -E2BIG)
        snprintf(detail, sizeof detail, "pod %s: an SSE event over %zu bytes",
                 px->pod ? px->pod->name : "?", px->sse_fr.max);
    else
        snprintf(detail, sizeof detail, "pod %s: out of memory", px->pod ? px->pod->name : "?");
    upstream_failed(px, rc == -E2BIG ? "event_too_large" : "nomem", detail, true);
}

static void up_done(brix_ureq_t *r, void *ud)
{
    px_t *px = ud;
    px->ur = NULL;
    /* An unterminated last event is passed on as it is. If the client is
     * gone the write fails and on_abort has already freed px. */
    const char *tail;
    size_t tn = brix_sse_pending(&px->sse_fr, &tail);
    if (tn && on_sse_event(px, tail, tn))
        return;
    attempt_end(px, px->status < 500);
    brix_px_access_log(px, px->status);
    brix_http_req_t *h = px->h;
    h->on_abort = NULL;
    h->on_drain = NULL;
    brix_px_free(px);
    brix_http_stream_end(h);
}

/* The current attempt failed (kind labels the metric): retried while no
 * byte reached the client, else the response is ended as well as it can be. */
static void upstream_failed(px_t *px, const char *kind, const char *detail, bool got_bytes)
{
    brix_gw_worker_t *w = px->w;
    const char *pod_name = px->pod ? px->pod->name : "?";
    px->err_kind = kind;
    brix_metric_add(brix_gw_metric2(w->gw->m.upstream_errors, pod_name, kind), 1);
    BRIX_WARN("upstream %s (%s)", detail,
              got_bytes ? "after the response started" : "before any response byte");
    attempt_end(px, false);
    if (!px->head_sent) {
        /* Nothing reached the client. Timeouts are not retried: the
         * request may well be running there (a long prefill). */
        if (!strcmp(kind, "first_byte_timeout") || !strcmp(kind, "idle_timeout") ||
            !strcmp(kind, "write_timeout")) {
            brix_px_access_log(px, 504);
            brix_http_respond_error(px->h, 504, "api_error", NULL, NULL, "upstream timed out: %s",
                                    detail);
            brix_px_free(px);
            return;
        }
        retry_or_fail(px, 502, detail);
        return;
    }
    brix_metric_add(w->gw->m.streams_broken, 1);
    brix_http_req_t *h = px->h;
    if (px->sse) {
        /* End the stream cleanly: drop the partial event, send an error
         * event and [DONE], then the terminating chunk. */
        brix_buf_t ev = BRIX_BUF_INIT;
        brix_buf_append_str(&ev, "data: {\"error\":{\"message\":");
        char msg[256];
        snprintf(msg, sizeof msg,
                 "the model server failed mid-stream (%s); the response is "
                 "incomplete",
                 detail);
        brix_buf_append_json_str(&ev, msg, strlen(msg));
        brix_buf_append_str(&ev, ",\"type\":\"api_error\",\"param\":null,\"code\":502}}\n\n"
                                 "data: [DONE]\n\n");
        int rc = brix_http_stream_write(h, ev.data, ev.len);
        brix_buf_free(&ev);
        if (rc)
            return; /* client gone too; on_abort freed px */
        brix_px_access_log(px, px->status);
        h->on_abort = NULL;
        h->on_drain = NULL;
        brix_px_free(px);
        brix_http_stream_end(h);
        return;
    }
    /* A plain body cut short cannot be repaired: drop the connection so the
     * client sees the truncation. */
    brix_px_access_log(px, px->status);
    h->on_abort = NULL;
    h->on_drain = NULL;
    brix_px_free(px);
    brix_http_abort(h);
}

static void up_error(brix_ureq_t *r, brix_uerr_t err, bool got_bytes, void *ud)
{
    px_t *px = ud;
    px->ur = NULL;
    static const char *const kinds[] = {
        "",         "connect", "connect_timeout", "first_byte_timeout", "idle_timeout", "closed",
        "protocol", "nomem"
    };
    const char *kind =
        err == BRIX_UERR_WRITE_TIMEOUT ? "write_timeout" : kinds[err <= BRIX_UERR_NOMEM ? err : 0];
    char detail[160];
    snprintf(detail, sizeof detail, "pod %s: %s", px->pod ? px->pod->name : "?",
             brix_uerr_str(err));
    upstream_failed(px, kind, detail, got_bytes);
}

void brix_px_on_client_abort(brix_http_req_t *h, void *ud)
{
    px_t *px = ud;
    brix_metric_add(px->w->gw->m.client_aborts, 1);
    if (px->ur) {
        brix_ureq_cancel(px->ur);
        px->ur = NULL;
    }
    if (px->pod) {
        /* the client left: not the pod's fault */
        release_pending(px);
        atomic_fetch_sub_explicit(&px->pod->inflight, 1, memory_order_relaxed);
        if (px->probe)
            atomic_store(&px->pod->probe_in_flight, 0);
        brix_pod_unref(px->pod);
        px->pod = NULL;
    }
    px->err_kind = "client_closed";
    brix_px_access_log(px, 499);
    px->h = NULL;
    brix_px_free(px);
}

/* Routes and sends one attempt; answers the client itself when no pod is
 * left. */
static void attempt(px_t *px)
{
    brix_gw_worker_t *w = px->w;
    brix_http_req_t *h = px->h;
    const brix_fleet_snap_t *snap = px->view->fleet;
    uint32_t *cand = brix_arena_alloc(&h->arena, snap->npods * sizeof *cand + 1);
    double *score = brix_arena_alloc(&h->arena, snap->npods * sizeof *score + 1);
    if (!cand || !score) {
        brix_px_access_log(px, 500);
        brix_http_respond_error(h, 500, "api_error", NULL, NULL, "out of memory");
        brix_px_free(px);
        return;
    }
    brix_route_ctx_t ctx = {
        .snap = snap,
        .model = px->model,
        .req = h,
        .fields = &px->fields,
        .now_ns = brix_now_ns(),
        .rng = &w->rng,
        .rr = &w->rr,
        .exclude = px->tried,
        .nexclude = (size_t)px->attempts,
        .cand = cand,
        .score = score,
        .params = &px->view->rt->route,
        .index = w->gw->index,
        .precise = &snap->precise,
        .arena = &h->arena,
        .explain = px->explain ? &px->explanation : NULL,
    };
    if (px->explain)
        brix_buf_reset(&px->explanation);
    uint64_t t0 = brix_now_ns();
    uint32_t idx;
    bool probe;
    brix_route_rc_t rc = brix_route(&ctx, &px->strategy, &idx, &probe);
    brix_metric_observe(w->gw->m.decision, (double)(brix_now_ns() - t0) / 1e9);
    if (rc != BRIX_ROUTE_OK) {
        if (px->attempts) {
            /* pods were tried and failed: an upstream failure, not overload */
            brix_px_access_log(px, 502);
            brix_http_respond_error(h, 502, "api_error", NULL, NULL,
                                    "upstream failed after %d attempt(s); last: %s", px->attempts,
                                    px->last_error);
            brix_px_free(px);
            return;
        }
        char ra[16];
        snprintf(ra, sizeof ra, "%d", px->view->rt->retry_after_s);
        brix_http_add_header(h, "retry-after", ra);
        brix_http_add_header(h, "x-error-no-model-backends", px->model_name);
        brix_px_access_log(px, 503);
        brix_http_respond_error(h, 503, "overloaded_error", "service_unavailable", NULL,
                                "model '%s' is unavailable: no pod serving it is ready; retry "
                                "later",
                                px->model_name);
        brix_px_free(px);
        return;
    }
    if (px->attempts)
        brix_metric_add(brix_gw_metric1(w->gw->m.retries, px->model_name), 1);

    brix_pod_t *pod = snap->pods[idx].pod;
    brix_route_commit(&ctx, idx);
    if (ctx.session_out)
        brix_http_add_header(h, "x-session-id", ctx.session_out);
    brix_upstream_t *u = upstream_for(w, pod, px->view->rt);
    px->pod_idx = idx;
    /* prefill work now queued on the pod: the prompt minus what it holds */
    if (ctx.prompt_done && ctx.prompt.ntokens) {
        int64_t cached = 0;
        if (ctx.match_done && ctx.match)
            for (size_t i = 0; i < ctx.ncand; i++)
                if (ctx.cand[i] == idx)
                    cached = (int64_t)ctx.match[i] * px->view->rt->route.block_size;
        int64_t t = (int64_t)ctx.prompt.ntokens - cached;
        px->pending = t > 0 ? t : 0;
        atomic_fetch_add_explicit(&pod->pending_prefill, px->pending, memory_order_relaxed);
    }
    px->tried[px->attempts++] = idx;
    brix_pod_ref(pod);
    px->pod = pod;
    px->probe = probe;
    px->status = 0;
    atomic_fetch_add_explicit(&pod->inflight, 1, memory_order_relaxed);
    if (!u) {
        up_error(NULL, BRIX_UERR_NOMEM, false, px);
        return;
    }
    const char *body = px->body.len ? px->body.data : h->body.data;
    size_t blen = px->body.len ? px->body.len : h->body.len;
    px->ur = brix_ureq_start(u, h->method_name, h->url, px->fwd_headers.data, px->fwd_headers.len,
                             body, blen, &up_cb, px);
    if (!px->ur)
        up_error(NULL, BRIX_UERR_NOMEM, false, px);
}

/* Builds the upstream request's headers and sends the first attempt. */
void brix_px_start(px_t *px)
{
    brix_http_req_t *h = px->h;
    if (px->model->activity) /* for the controller's idle TTL */
        atomic_fetch_add_explicit(&px->model->activity->routed, 1, memory_order_relaxed);
    /* the key of the settings this request was admitted under (a reload may
     * swap them meanwhile; the view keeps these alive) */
    const char *ek = px->view->rt->engine_api_key;
    for (size_t i = 0; i < h->nheaders; i++) {
        const brix_http_header_t *hd = &h->headers[i];
        if (hop_by_hop(hd->name, hd->name_len) || !strcasecmp(hd->name, "x-request-id"))
            continue;
        /* a brix user key stays here, and so does any client credential when
         * the engines have their own key: a client must never reach an engine
         * with a key of its choosing (nor learn by trying whether it is the
         * engine key) */
        if ((px->key_used || ek) && hd->name_len == 13 && !strcasecmp(hd->name, "authorization"))
            continue;
        brix_buf_t *b = &px->fwd_headers;
        brix_buf_append(b, hd->name, hd->name_len);
        brix_buf_append(b, ": ", 2);
        brix_buf_append(b, hd->value, hd->value_len);
        brix_buf_append(b, "\r\n", 2);
    }
    if (ek) {
        brix_buf_append_str(&px->fwd_headers, "authorization: Bearer ");
        brix_buf_append_str(&px->fwd_headers, ek);
        brix_buf_append(&px->fwd_headers, "\r\n", 2);
    }
    brix_buf_append_str(&px->fwd_headers, "x-request-id: ");
    brix_buf_append_str(&px->fwd_headers, h->id);
    brix_buf_append(&px->fwd_headers, "\r\n", 2);
    attempt(px);
}
