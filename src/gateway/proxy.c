/*
 * The gateway's request path, on each worker loop.
 *
 * A POST to an OpenAI route is validated once, without building a tree
 * (core/json_scan), for `model`, `stream` and the prompt fields,
 * routed to a pod, and forwarded with the original body bytes. The response
 * is relayed as it arrives: SSE bodies event by event (a partial event is
 * held until its end arrives, so a failure can always be reported as a clean
 * SSE error event), other bodies byte for byte with their Content-Length.
 * Failures before anything reached the client are retried on another pod
 * (bounded); failures after that end the stream with an error event. Client
 * disconnects cancel the upstream request at once. Every outcome feeds the
 * pod's circuit breaker and the metrics, and ends in one access-log line.
 *
 * A request for a registered adapter that no ready pod serves yet (scaled to
 * zero, or still loading) is held after its tenant check (hold.h): the
 * control thread wakes the adapter at the controller, and the worker looks
 * at its held requests again whenever a new fleet view arrives, routing them
 * once a ready pod serves the adapter, or answering 503 at the deadline.
 */
#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/sse.h"
#include "core/time.h"
#include "gateway/gateway.h"
#include "gateway/router.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_ATTEMPTS 8

typedef struct px {
    brix_gw_worker_t *w;
    brix_http_req_t *h;   /* NULL once the client is gone */
    brix_gw_view_t *view; /* reference held for the request's life */
    const brix_model_entry_t *model;
    char *model_name;
    brix_strategy_sel_t strategy; /* the default, or the request's routing-strategy */
    bool explain;                 /* x-brix-explain: 1 */
    brix_buf_t explanation;
    int64_t pending; /* tokens added to the pod's pending_prefill */
    brix_req_fields_t fields;
    brix_buf_t fwd_headers; /* request header lines for the upstream */
    brix_ureq_t *ur;
    uint32_t pod_idx;
    brix_pod_t *pod; /* current attempt's pod (ref held) */
    bool probe;
    uint32_t tried[MAX_ATTEMPTS];
    int attempts;
    int status;
    bool head_sent;
    bool sse;
    bool paused;
    brix_sse_t sse_fr; /* SSE: event framing, holds a partial event */
    const char *run;   /* SSE: complete events not relayed yet */
    size_t run_n;
    uint64_t t_first_byte;
    int64_t prompt_tokens, completion_tokens;
    const char *err_kind; /* for the access log */
    char last_error[160]; /* the previous attempt's failure, for the final answer */
    /* tenancy */
    brix_tn_op_t *tn_op; /* outstanding check */
    uint64_t tn_start_ns;
    char user[BRIX_TN_NAME_MAX]; /* the limited user, "" = none */
    int64_t user_tpm;
    int64_t est_tokens; /* prompt estimate */
    int64_t reserved;   /* tokens its admission reserved against the user's TPM */
    bool key_used;      /* the Authorization bearer was a brix key: not forwarded */
    bool strip_usage;   /* the usage chunk was asked for by the gateway: removed */
    brix_buf_t body;    /* rewritten body, or empty (the client's is sent) */
    const char *tenant; /* fairness tenant: the user, or the user header */
    int64_t priority;
    brix_fair_item_t *fair;
    bool fair_waiting; /* queued, or on its way back to this loop */
    int64_t events;    /* SSE events relayed to a user or under fairness (~1 token each
                       when no usage arrives) */

    /* waiting for its adapter (model is NULL until then) */
    brix_gw_held_t held;
} px_t;

#define HELD_PX(e) ((px_t *)(void *)((char *)(e)-offsetof(px_t, held)))

/* ---------------------------------------------------------------- utils -- */

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

static const char *err_type(int status)
{
    switch (status) {
    case 400:
    case 404:
    case 405:
    case 413:
    case 431:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "overloaded_error";
    default:
        return "api_error";
    }
}

static void count_request(brix_gw_worker_t *w, const char *model, int status, const char *strategy)
{
    char st[4] = { (char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                   (char)('0' + status % 10), '\0' };
    brix_metric_add(
        brix_gw_metric3(w->gw->m.requests, model ? model : "", st, strategy ? strategy : ""), 1);
}

/* The model label of an answer the gateway gives itself: a name the fleet
 * serves or the registry knows, else "unknown" ("" when the body named
 * none), so request bodies cannot mint label values. */
static const char *model_label(const brix_gw_worker_t *w, const char *model)
{
    if (!model)
        return NULL;
    const brix_gw_view_t *v = w->view;
    if (v &&
        (brix_snap_model(v->fleet, model) || brix_registry_adapter(v->fleet->registry, model) ||
         brix_registry_has_base(v->fleet->registry, model)))
        return model;
    return "unknown";
}

/* The one access-log line of a request: every field is always present
 * ("-" or -1 when unknown), so the lines can be parsed by position or key. */
/* Access-log lines are collected per loop iteration and written with one
 * system call at its end (uv_check), not one write per request. */
static void on_alog_check(uv_check_t *c)
{
    brix_gw_worker_t *w = c->data;
    if (w->alog.len)
        brix_log_write(w->alog.data, w->alog.len);
    brix_buf_reset(&w->alog);
    uv_check_stop(c);
}

static void log_access(brix_gw_worker_t *w, const brix_http_req_t *h, const char *model,
                       const char *pod, const char *strategy, int status, double ttft_ms,
                       int attempts, int64_t prompt_tokens, int64_t completion_tokens,
                       const char *error, const char *route)
{
    if (w->view && !w->view->rt->access_log)
        return;
    double dur = (double)(brix_now_ns() - h->start_ns) / 1e6;
    if (!w->alog.len)
        uv_check_start(&w->alog_check, on_alog_check);
    brix_log_to(&w->alog, BRIX_LOG_INFO, h->id,
                "access method=%s path=%s model=%s pod=%s strategy=%s status=%d ttft_ms=%.2f "
                "dur_ms=%.2f attempts=%d prompt_tokens=%lld completion_tokens=%lld bytes=%llu "
                "error=%s%s%s%s%s%s",
                h->method_name, h->path, model ? model : "-", pod ? pod : "-",
                strategy ? strategy : "-", status, ttft_ms, dur, attempts, (long long)prompt_tokens,
                (long long)completion_tokens, (unsigned long long)h->bytes_out, error ? "\"" : "-",
                error ? error : "", error ? "\"" : "", route ? " route=\"" : "", route ? route : "",
                route ? "\"" : "");
}

/* An error answered by the gateway itself (never from an upstream). */
static void gw_error(brix_gw_worker_t *w, brix_http_req_t *h, int status, const char *code,
                     const char *param, const char *model, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void gw_error(brix_gw_worker_t *w, brix_http_req_t *h, int status, const char *code,
                     const char *param, const char *model, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    count_request(w, model_label(w, model), status, NULL);
    log_access(w, h, model, NULL, NULL, status, -1, 0, 0, 0, msg, NULL);
    brix_http_respond_error(h, status, err_type(status), code, param, "%s", msg);
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

/* ------------------------------------------------------------ lifecycle -- */

/* The request stops waiting for its adapter; `result` labels the wait. */
static void unhold(px_t *px, const char *result)
{
    if (!px->held.linked)
        return;
    brix_gw_worker_t *w = px->w;
    brix_gw_holdq_remove(&w->held, &px->held);
    brix_metric_observe(brix_gw_metric1(w->gw->m.adapter_wait, result),
                        (double)(brix_now_ns() - px->held.since_ns) / 1e9);
}

static void px_free(px_t *px)
{
    brix_gw_worker_t *w = px->w;
    brix_gw_t *gw = w->gw;
    unhold(px, "client_closed");
    if (px->tn_op)
        brix_tn_cancel(px->tn_op);
    if (px->attempts && !px->prompt_tokens && !px->completion_tokens && px->events) {
        /* a stream cut short before its usage: the prompt estimate and
         * about one token per event relayed */
        px->prompt_tokens = px->est_tokens;
        px->completion_tokens = px->events;
    }
    int64_t used = px->prompt_tokens + px->completion_tokens;
    if (px->attempts && !used)
        used = px->est_tokens; /* nothing seen at all: the estimate */
    /* once per admitted request (it also ends the user's in-flight count);
     * never sent: the reservation is refunded */
    if (px->user[0])
        brix_tn_charge(w->tn, px->user, px->user_tpm,
                       px->attempts ? used - px->reserved : -px->reserved);
    if (px->user[0] && px->attempts) {
        const char *label = brix_gw_user_label(gw, px->user);
        brix_metric_add(brix_gw_metric2(gw->m.tenant_tokens, label, "prompt"),
                        (double)px->prompt_tokens);
        brix_metric_add(brix_gw_metric2(gw->m.tenant_tokens, label, "completion"),
                        (double)px->completion_tokens);
    }
    if (px->fair) {
        if (px->fair_waiting)
            brix_fair_cancel(px->fair->owner, px->fair);
        else
            brix_fair_leave(px->fair->owner, px->fair, px->completion_tokens);
    }
    brix_buf_free(&px->body);
    if (px->pod)
        brix_pod_unref(px->pod);
    brix_buf_free(&px->fwd_headers);
    brix_sse_free(&px->sse_fr);
    brix_buf_free(&px->explanation);
    brix_gw_view_unref(px->view);
    brix_free(px->model_name);
    brix_free(px);
    w->inflight--;
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

static void access_log(px_t *px, int status)
{
    brix_http_req_t *h = px->h;
    double dur = (double)(brix_now_ns() - h->start_ns) / 1e6;
    double ttft = px->t_first_byte ? ((double)px->t_first_byte - (double)h->start_ns) / 1e6 : -1;
    const brix_fleet_snap_t *s = px->view->fleet;
    const char *pod = px->attempts ? s->pods[px->pod_idx].pod->name : NULL;
    brix_metric_observe(brix_gw_metric1(px->w->gw->m.duration, px->model_name), dur / 1e3);
    count_request(px->w, px->model_name, status, px->strategy.label);
    log_access(px->w, h, px->model_name, pod, px->strategy.name, status, ttft, px->attempts,
               px->prompt_tokens, px->completion_tokens, px->err_kind,
               px->explain && px->explanation.len ? px->explanation.data : NULL);
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

static void on_drain(brix_http_req_t *h, void *ud)
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
           px->attempts < MAX_ATTEMPTS;
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
    access_log(px, status);
    brix_http_respond_error(h, status, err_type(status), NULL, NULL, "upstream failed: %s", detail);
    px_free(px);
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
    access_log(px, px->status);
    brix_http_req_t *h = px->h;
    h->on_abort = NULL;
    h->on_drain = NULL;
    px_free(px);
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
            access_log(px, 504);
            brix_http_respond_error(px->h, 504, "api_error", NULL, NULL, "upstream timed out: %s",
                                    detail);
            px_free(px);
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
        access_log(px, px->status);
        h->on_abort = NULL;
        h->on_drain = NULL;
        px_free(px);
        brix_http_stream_end(h);
        return;
    }
    /* A plain body cut short cannot be repaired: drop the connection so the
     * client sees the truncation. */
    access_log(px, px->status);
    h->on_abort = NULL;
    h->on_drain = NULL;
    px_free(px);
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

static void on_client_abort(brix_http_req_t *h, void *ud)
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
    access_log(px, 499);
    px->h = NULL;
    px_free(px);
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
        access_log(px, 500);
        brix_http_respond_error(h, 500, "api_error", NULL, NULL, "out of memory");
        px_free(px);
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
            access_log(px, 502);
            brix_http_respond_error(h, 502, "api_error", NULL, NULL,
                                    "upstream failed after %d attempt(s); last: %s", px->attempts,
                                    px->last_error);
            px_free(px);
            return;
        }
        char ra[16];
        snprintf(ra, sizeof ra, "%d", px->view->rt->retry_after_s);
        brix_http_add_header(h, "retry-after", ra);
        brix_http_add_header(h, "x-error-no-model-backends", px->model_name);
        access_log(px, 503);
        brix_http_respond_error(h, 503, "overloaded_error", "service_unavailable", NULL,
                                "model '%s' is unavailable: no pod serving it is ready; retry "
                                "later",
                                px->model_name);
        px_free(px);
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

/* ------------------------------------------------------------- routes -- */

/* The inference endpoints vLLM serves to clients, and nothing else: the
 * engine's administration paths (/v1/load_lora_adapter, /sleep,
 * /start_profile, /reset_prefix_cache, /collective_rpc, ...) answer 404
 * here, so only the controller manages adapters and engine state. Exact
 * matches on the path (query excluded): "/v1/./x", "/v1//x" or percent-
 * encoded spellings are not the same route and are refused too. Audio
 * endpoints are multipart, not JSON, and GET/cancel of a stored response
 * carry no model: neither can be routed, so neither is listed. */
static bool proxied_path(const char *p)
{
    static const char *const routes[] = {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/score",
        "/v1/rerank",           "/v2/rerank",      "/score",         "/rerank",       "/tokenize",
        "/detokenize",          "/pooling",        "/classify",      "/invocations",
    };
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        if (!strcmp(p, routes[i]))
            return true;
    return false;
}

/* Top-level keys the gateway reads. A body that has one of them twice is
 * refused: JSON parsers disagree on which copy wins (Python's json, and so
 * vLLM, takes the last; cJSON the first), so the gateway could check and
 * route one model while the engine serves another. */
enum {
    K_MODEL,
    K_STREAM,
    K_MAX_TOKENS,
    K_MAX_COMPLETION_TOKENS,
    K_MESSAGES,
    K_PROMPT,
    K_INPUT,
    K_USER,
    K_STREAM_OPTIONS,
    K_ADD_GENERATION_PROMPT,
};

typedef struct scan_ctx {
    brix_req_fields_t *f;
    brix_http_req_t *h;
    bool oom;
    unsigned seen;   /* K_* bits */
    const char *dup; /* a key seen twice */
    const char *bad; /* a key with a value the gateway refuses */
    bool has_mct;    /* max_completion_tokens given: it wins over max_tokens */
} scan_ctx_t;

static bool key_eq(const char *k, size_t kl, const char *want, size_t wl)
{
    return kl == wl && !memcmp(k, want, wl);
}

/* A token count: an integer (1e3 and 100.0 are, as pydantic reads them)
 * within int64. Returns false for fractions and anything out of range,
 * where a plain (int64_t) cast would be undefined. */
static bool json_int64(const brix_json_val_t *v, int64_t *out)
{
    if (v->kind != BRIX_JSON_NUMBER)
        return false;
    char tmp[64];
    if (v->n >= sizeof tmp)
        return false; /* more digits than any int64 needs (or a huge exponent) */
    memcpy(tmp, v->p, v->n);
    tmp[v->n] = '\0';
    if (!memchr(tmp, '.', v->n) && !memchr(tmp, 'e', v->n) && !memchr(tmp, 'E', v->n)) {
        errno = 0;
        long long x = strtoll(tmp, NULL, 10);
        if (errno == ERANGE)
            return false;
        *out = x;
        return true;
    }
    double d = strtod(tmp, NULL);
    /* [-2^63, 2^63): both bounds are exact doubles */
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || d != (double)(int64_t)d)
        return false;
    *out = (int64_t)d;
    return true;
}

/* Picks the fields routing needs. Keys are compared after decoding their
 * escapes ("mod\u0065l" is "model" to the engine too); no allocation. */
static int on_member(const char *key, size_t klen, const brix_json_val_t *v, void *ud)
{
    scan_ctx_t *sx = ud;
    brix_req_fields_t *f = sx->f;
    char kb[24]; /* longer than every key below */
    const char *k = key;
    size_t kl = klen;
    if (memchr(key, '\\', klen)) {
        kl = brix_json_key_decode(key, klen, kb, sizeof kb);
        if (kl == SIZE_MAX)
            return 0;
        k = kb;
    }
    static const struct {
        const char *name;
        size_t len;
    } keys[] = {
        [K_MODEL] = { "model", 5 },
        [K_STREAM] = { "stream", 6 },
        [K_MAX_TOKENS] = { "max_tokens", 10 },
        [K_MAX_COMPLETION_TOKENS] = { "max_completion_tokens", 21 },
        [K_MESSAGES] = { "messages", 8 },
        [K_PROMPT] = { "prompt", 6 },
        [K_INPUT] = { "input", 5 },
        [K_USER] = { "user", 4 },
        [K_STREAM_OPTIONS] = { "stream_options", 14 },
        [K_ADD_GENERATION_PROMPT] = { "add_generation_prompt", 21 },
    };
    int id = -1;
    for (int i = 0; i < (int)(sizeof keys / sizeof *keys) && id < 0; i++)
        if (key_eq(k, kl, keys[i].name, keys[i].len))
            id = i;
    const char *name = id >= 0 ? keys[id].name : NULL;
    if (id < 0)
        return 0;
    if (sx->seen & (1u << id)) {
        sx->dup = name;
        return 1; /* refused: the rest need not be read */
    }
    sx->seen |= 1u << id;
    int64_t mt;
    switch (id) {
    case K_MODEL:
        f->model = NULL;
        if (v->kind == BRIX_JSON_STRING) {
            char *m = brix_arena_alloc(&sx->h->arena, v->n + 1);
            if (!m) {
                sx->oom = true;
                return 0;
            }
            /* a NUL inside would make the name routed ("a") differ from
             * the one the engine reads ("a\0b"): refused as not a string */
            if (brix_json_unescape(v->p, v->n, m) == strlen(m))
                f->model = m;
        }
        break;
    case K_INPUT:
        f->input = *v;
        break;
    case K_STREAM:
        /* lenient like vLLM's parser: true or a non-zero number */
        f->stream =
            v->kind == BRIX_JSON_TRUE || (v->kind == BRIX_JSON_NUMBER && strtod(v->p, NULL) != 0);
        break;
    case K_PROMPT:
        f->prompt = *v;
        break;
    case K_MESSAGES:
        f->messages = *v;
        break;
    case K_MAX_TOKENS:
    case K_MAX_COMPLETION_TOKENS:
        if (v->kind != BRIX_JSON_NUMBER)
            break; /* null, or a type the engine judges (pydantic takes "10") */
        if (!json_int64(v, &mt)) {
            sx->bad = name;
            return 1;
        }
        if (id == K_MAX_COMPLETION_TOKENS || !sx->has_mct)
            f->max_tokens = mt;
        sx->has_mct |= id == K_MAX_COMPLETION_TOKENS;
        break;
    case K_STREAM_OPTIONS:
        f->stream_options = *v;
        break;
    case K_ADD_GENERATION_PROMPT:
        f->no_generation_prompt = v->kind == BRIX_JSON_FALSE;
        break;
    default:
        break;
    }
    return 0;
}

static void admit(px_t *px);
static void start(px_t *px);

/* Answers the client from the gateway once px exists. */
static void px_fail(px_t *px, int status, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void px_fail(px_t *px, int status, const char *type, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    brix_http_req_t *h = px->h;
    px->err_kind = code;
    access_log(px, status);
    h->on_abort = NULL;
    h->on_drain = NULL;
    px_free(px);
    brix_http_respond_error(h, status, type, code, NULL, "%s", msg);
}

/* Counts a tenancy decision for `user` ("" when nobody was identified). */
static void tenant_result(px_t *px, const char *user, const char *result)
{
    brix_gw_t *gw = px->w->gw;
    const char *label = user[0] ? brix_gw_user_label(gw, user) : "";
    brix_metric_add(brix_gw_metric2(gw->m.tenant_requests, label, result), 1);
}

static void add_limit_headers(brix_http_req_t *h, const brix_tn_decision_t *d)
{
    char v[32];
    if (d->rpm > 0) {
        snprintf(v, sizeof v, "%lld", (long long)d->rpm);
        brix_http_add_header(h, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof v, "%lld", (long long)d->rpm_remaining);
        brix_http_add_header(h, "x-ratelimit-remaining-requests", v);
        brix_tn_fmt_reset(d->rpm_reset_us, v, sizeof v);
        brix_http_add_header(h, "x-ratelimit-reset-requests", v);
    }
    if (d->tpm > 0) {
        snprintf(v, sizeof v, "%lld", (long long)d->tpm);
        brix_http_add_header(h, "x-ratelimit-limit-tokens", v);
        snprintf(v, sizeof v, "%lld", (long long)d->tpm_remaining);
        brix_http_add_header(h, "x-ratelimit-remaining-tokens", v);
        brix_tn_fmt_reset(d->tpm_reset_us, v, sizeof v);
        brix_http_add_header(h, "x-ratelimit-reset-tokens", v);
    }
}

static int on_stream_opt(const char *key, size_t klen, const brix_json_val_t *v, void *ud)
{
    brix_json_val_t *iu = ud;
    if (brix_json_key_is(key, klen, "include_usage"))
        *iu = *v; /* the last one wins, as in vLLM */
    return 0;
}

/* A TPM-limited user's stream must report usage: if the client did not ask
 * for it, the gateway does (stream_options.include_usage) and removes that
 * chunk from what the client sees. vLLM includes usage when stream_options
 * is an object without include_usage, so only an absent or null
 * stream_options, or include_usage false, needs the rewrite. The value is
 * replaced in place (a duplicate key would be read differently by
 * different JSON parsers). */
static int ask_usage(px_t *px)
{
    const brix_http_req_t *h = px->h;
    const brix_json_val_t *so = &px->fields.stream_options;
    const char *b = h->body.data;
    size_t at, cut, n = h->body.len;
    const char *ins;
    if (so->kind == BRIX_JSON_OBJECT) {
        brix_json_val_t iu = { 0 };
        size_t eo = 0;
        const char *ew = NULL;
        brix_json_scan(so->p, so->n, on_stream_opt, &iu, &eo, &ew);
        if (!iu.p || iu.kind == BRIX_JSON_TRUE)
            return 0; /* absent (vLLM's default is true) or true */
        at = (size_t)(iu.p - b);
        cut = iu.n;
        ins = "true";
    } else if (so->p && so->kind == BRIX_JSON_NULL) {
        at = (size_t)(so->p - b);
        cut = so->n;
        ins = "{\"include_usage\":true}";
    } else if (!so->p) {
        at = n;
        while (at && b[at - 1] != '}')
            at--;
        if (!at)
            return 0;
        at--;
        cut = 0;
        ins = ",\"stream_options\":{\"include_usage\":true}";
    } else {
        return 0; /* not an object: the engine answers 400 */
    }
    if (brix_buf_append(&px->body, b, at) || brix_buf_append_str(&px->body, ins) ||
        brix_buf_append(&px->body, b + at + cut, n - at - cut))
        return -1;
    px->strip_usage = true;
    return 0;
}

static void on_tenant(void *ud, const brix_tn_decision_t *d)
{
    px_t *px = ud;
    brix_gw_t *gw = px->w->gw;
    brix_http_req_t *h = px->h;
    px->tn_op = NULL;
    brix_metric_observe(gw->m.ratelimit_check, (double)(brix_now_ns() - px->tn_start_ns) / 1e9);
    char v[32];
    switch (d->status) {
    case BRIX_TN_ANONYMOUS:
    case BRIX_TN_STORE_OPEN:
        if (d->status == BRIX_TN_STORE_OPEN) {
            tenant_result(px, px->user, "unchecked");
            brix_log(BRIX_LOG_DEBUG, h->id,
                     "rate limits not checked (%s): admitted (--redis-failure open)",
                     d->detail ? d->detail : "store down");
        }
        px->tenant = brix_http_req_header(h, "user");
        admit(px);
        return;
    case BRIX_TN_NO_KEY:
        tenant_result(px, px->user, "unauthorized");
        px_fail(px, 401, "invalid_request_error", "invalid_api_key",
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.");
        return;
    case BRIX_TN_BAD_KEY:
        tenant_result(px, px->user, "unauthorized");
        px_fail(px, 401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.");
        return;
    case BRIX_TN_NO_USER:
        tenant_result(px, px->user, "unauthorized");
        px_fail(px, 401, "invalid_request_error", "invalid_user",
                "user '%s' (the `user` header) is not known to this gateway", d->user);
        return;
    case BRIX_TN_KEY_NEEDED:
        tenant_result(px, px->user, "unauthorized");
        px_fail(px, 401, "invalid_request_error", "invalid_api_key",
                "user '%s' has an API key: send it as `Authorization: Bearer <key>` (the user "
                "header cannot name this user)",
                d->user);
        return;
    case BRIX_TN_MODEL:
        tenant_result(px, d->user, "forbidden");
        px_fail(px, 403, "permission_error", "model_not_allowed",
                "user '%s' may not use the model `%s`", d->user, px->model_name);
        return;
    case BRIX_TN_STORE_DOWN:
        tenant_result(px, px->user, "store_down");
        snprintf(v, sizeof v, "%d", px->view->rt->retry_after_s);
        brix_http_add_header(h, "retry-after", v);
        px_fail(px, 503, "overloaded_error", "service_unavailable",
                "rate limits cannot be checked (%s) and --redis-failure is closed; retry later",
                d->detail ? d->detail : "store down");
        return;
    case BRIX_TN_RPM:
    case BRIX_TN_TPM: {
        tenant_result(px, d->user, d->status == BRIX_TN_RPM ? "rpm_limited" : "tpm_limited");
        add_limit_headers(h, d);
        bool never = d->status == BRIX_TN_TPM && d->est_tokens > d->tpm; /* retrying cannot help */
        snprintf(v, sizeof v, "%llu", (unsigned long long)((d->retry_us + 999999) / 1000000));
        if (!never)
            brix_http_add_header(h, "retry-after", v);
        brix_http_add_header(
            h, d->status == BRIX_TN_RPM ? "x-error-rpm-exceeded" : "x-error-tpm-exceeded", "true");
        char wait[32];
        brix_tn_fmt_reset(d->retry_us, wait, sizeof wait);
        if (d->status == BRIX_TN_RPM)
            px_fail(px, 429, "rate_limit_error", "rate_limit_exceeded",
                    "Rate limit reached for %s on requests per minute (RPM): Limit %lld. Please "
                    "try again in %s.",
                    d->user, (long long)d->rpm, wait);
        else if (never)
            px_fail(px, 429, "rate_limit_error", "rate_limit_exceeded",
                    "Request too large for %s: about %lld tokens (prompt estimate + max_tokens), "
                    "over the limit of %lld tokens per minute (TPM).",
                    d->user, (long long)d->est_tokens, (long long)d->tpm);
        else
            px_fail(px, 429, "rate_limit_error", "rate_limit_exceeded",
                    "Rate limit reached for %s on tokens per minute (TPM): Limit %lld, Remaining "
                    "%lld, Requested about %lld (prompt estimate + max_tokens). Please try again "
                    "in %s.",
                    d->user, (long long)d->tpm, (long long)d->tpm_remaining,
                    (long long)d->est_tokens, wait);
        return;
    }
    case BRIX_TN_OK:
        break;
    }
    snprintf(px->user, sizeof px->user, "%s", d->user);
    px->user_tpm = d->tpm;
    px->reserved = d->tpm > 0 ? d->est_tokens : 0;
    px->priority = d->priority;
    px->tenant = px->user;
    tenant_result(px, px->user, "ok");
    add_limit_headers(h, d);
    admit(px);
}

/* ------------------------------------------------------------ holding -- */

static void add_retry_after(brix_http_req_t *h, int seconds)
{
    char v[16];
    snprintf(v, sizeof v, "%d", seconds);
    brix_http_add_header(h, "retry-after", v);
}

/* "... was not ready within 30 s" / "... 1500 ms"; waited_ms 0: not held. */
static void loading_msg(char *out, size_t n, const char *name, const brix_reg_adapter_t *ra,
                        uint64_t waited_ms)
{
    char on[300] = "";
    if (ra && ra->base_model)
        snprintf(on, sizeof on, " on a replica of '%s'", ra->base_model);
    if (!waited_ms)
        snprintf(out, n,
                 "adapter '%s' is not loaded on a ready replica yet; it is being loaded%s, "
                 "retry later",
                 name, on);
    else if (waited_ms % 1000 == 0)
        snprintf(out, n,
                 "adapter '%s' is being loaded%s and was not ready within %llu s; retry "
                 "later",
                 name, on, (unsigned long long)(waited_ms / 1000));
    else
        snprintf(out, n,
                 "adapter '%s' is being loaded%s and was not ready within %llu ms; retry "
                 "later",
                 name, on, (unsigned long long)waited_ms);
}

static void failed_msg(char *out, size_t n, const char *name, const brix_reg_adapter_t *ra)
{
    if (ra && ra->message)
        snprintf(out, n, "adapter '%s' could not be loaded: %s", name, ra->message);
    else
        snprintf(out, n, "adapter '%s' could not be loaded on any replica (phase Failed)", name);
}

static void adapter_failed(brix_gw_worker_t *w, brix_http_req_t *h, const char *name,
                           const brix_reg_adapter_t *ra)
{
    char msg[512];
    failed_msg(msg, sizeof msg, name, ra);
    gw_error(w, h, 503, "adapter_failed", NULL, name, "%s", msg);
}

/* Holds px until a ready pod serves its adapter (or its deadline). */
static void hold(px_t *px)
{
    brix_gw_worker_t *w = px->w;
    const brix_gw_rt_t *rt = px->view->rt;
    int rc = brix_gw_holdq_add(&w->held, &px->held, px->model_name, rt->adapter_wake_timeout_ms,
                               rt->max_held_requests);
    if (rc == -EBUSY) {
        add_retry_after(px->h, rt->retry_after_s);
        px_fail(px, 503, "overloaded_error", "too_many_held_requests",
                "too many requests are waiting for adapters to be loaded (--max-held-requests "
                "%lld); retry later",
                (long long)rt->max_held_requests);
    } else if (rc) {
        add_retry_after(px->h, rt->retry_after_s);
        px_fail(px, 503, "overloaded_error", "service_unavailable",
                "cannot hold the request for adapter '%s' (%s); retry later", px->model_name,
                rc == -ENOMEM ? "out of memory" : "shutting down");
    } else {
        brix_log(BRIX_LOG_DEBUG, px->h->id, "held until adapter %s is loaded", px->model_name);
    }
}

/* Deadline of a held request. */
static void on_held_expire(brix_gw_held_t *e, void *ud)
{
    px_t *px = HELD_PX(e);
    brix_gw_worker_t *w = ud;
    const brix_gw_view_t *v = w->view ? w->view : px->view;
    const brix_reg_adapter_t *ra = brix_registry_adapter(v->fleet->registry, px->model_name);
    brix_metric_observe(brix_gw_metric1(w->gw->m.adapter_wait, "timeout"),
                        (double)(brix_now_ns() - e->since_ns) / 1e9);
    char msg[512];
    loading_msg(msg, sizeof msg, px->model_name, ra, (e->deadline_ns - e->since_ns) / 1000000);
    add_retry_after(px->h, v->rt->retry_after_s);
    px_fail(px, 503, "overloaded_error", "adapter_loading", "%s", msg);
}

/* A new fleet view: held requests whose adapter is now served go on. */
static void recheck_held(brix_gw_worker_t *w, bool shutdown)
{
    brix_gw_view_t *v = w->view;
    for (brix_gw_held_t *e = w->held.head; e;) {
        /* answering px may start the next request pipelined on its
         * connection (appended at the tail), never remove another entry */
        brix_gw_held_t *next = e->next;
        px_t *px = HELD_PX(e);
        const brix_model_entry_t *me = NULL;
        const brix_reg_adapter_t *ra = NULL;
        brix_hold_state_t hs =
            shutdown ? BRIX_HOLD_WAIT : brix_hold_classify(v->fleet, px->model_name, &me, &ra);
        if (shutdown) {
            unhold(px, "shutdown");
            add_retry_after(px->h, v->rt->retry_after_s);
            px_fail(px, 503, "overloaded_error", "service_unavailable",
                    "the gateway is shutting down; retry on another one");
        } else if (hs == BRIX_HOLD_READY ||
                   (hs == BRIX_HOLD_NONE && brix_snap_model_ready(v->fleet, me))) {
            unhold(px, "routed");
            brix_gw_view_ref(v);
            brix_gw_view_unref(px->view);
            px->view = v;
            px->model = me;
            admit(px);
        } else if (hs == BRIX_HOLD_FAILED) {
            unhold(px, "failed");
            char msg[512];
            failed_msg(msg, sizeof msg, px->model_name, ra);
            px_fail(px, 503, "overloaded_error", "adapter_failed", "%s", msg);
        } else if (hs == BRIX_HOLD_NONE) {
            unhold(px, "gone");
            brix_http_add_header(px->h, "x-error-no-model-backends", px->model_name);
            px_fail(px, 404, "invalid_request_error", "model_not_found",
                    "The model `%s` does not exist (its adapter was unregistered while the "
                    "request waited).",
                    px->model_name);
        }
        e = next;
    }
}

static void handle_proxy(brix_gw_worker_t *w, brix_http_req_t *h)
{
    brix_gw_view_t *view = w->view;
    brix_req_fields_t f;
    size_t err_off = 0;
    const char *err_what = NULL;
    memset(&f, 0, sizeof f);
    scan_ctx_t sx = { .f = &f, .h = h };
    brix_json_scan_rc_t src = brix_json_scan(h->body.data ? h->body.data : "", h->body.len,
                                             on_member, &sx, &err_off, &err_what);
    if (src == BRIX_JSON_SCAN_INVALID) {
        if (!h->body.len)
            gw_error(w, h, 400, "invalid_json", NULL, NULL,
                     "the request body is empty; expected a JSON object");
        else
            gw_error(w, h, 400, "invalid_json", NULL, NULL,
                     "invalid JSON in request body at byte offset %zu: %s", err_off, err_what);
        return;
    }
    if (src == BRIX_JSON_SCAN_NOT_OBJECT) {
        gw_error(w, h, 400, "invalid_request_body", NULL, NULL,
                 "the request body must be a JSON object");
        return;
    }
    if (sx.oom) {
        gw_error(w, h, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    if (sx.dup) {
        gw_error(w, h, 400, "duplicate_key", sx.dup, NULL,
                 "the request body has the key '%s' more than once (spelled plainly or with "
                 "escapes); send it once",
                 sx.dup);
        return;
    }
    if (sx.bad) {
        gw_error(w, h, 400, "invalid_value", sx.bad, NULL,
                 "'%s' must be an integer (within 64 bits)", sx.bad);
        return;
    }
    if (!f.model || !*f.model) {
        gw_error(w, h, 400, "missing_model", "model", NULL,
                 "you must provide a model parameter (a non-empty string)");
        return;
    }
    const char *model = f.model;
    const brix_model_entry_t *me = NULL;
    const brix_reg_adapter_t *ra = NULL;
    brix_hold_state_t hs = view ? brix_hold_classify(view->fleet, model, &me, &ra) : BRIX_HOLD_NONE;
    if (hs == BRIX_HOLD_FAILED) {
        adapter_failed(w, h, model, ra);
        return;
    }
    if (hs == BRIX_HOLD_WAIT && !view->rt->adapter_wake_timeout_ms) {
        /* not held (--adapter-wake-timeout 0), but woken for the retry */
        brix_gw_demand_poke(&w->gw->demand, model);
        char msg[512];
        loading_msg(msg, sizeof msg, model, ra, 0);
        add_retry_after(h, view->rt->retry_after_s);
        gw_error(w, h, 503, "adapter_loading", NULL, model, "%s", msg);
        return;
    }
    if (hs != BRIX_HOLD_WAIT && (!view || !view->fleet->nmodels)) {
        add_retry_after(h, view ? view->rt->retry_after_s : w->retry_after_s);
        gw_error(w, h, 503, "service_unavailable", NULL, model,
                 "no model server is ready yet; retry later");
        return;
    }
    if (hs != BRIX_HOLD_WAIT && !me) {
        if (brix_registry_has_base(view->fleet->registry, model)) {
            /* the controller runs replicas of it, none ready: not a typo */
            add_retry_after(h, view->rt->retry_after_s);
            brix_http_add_header(h, "x-error-no-model-backends", model);
            gw_error(w, h, 503, "service_unavailable", NULL, model,
                     "model '%s' has no ready replica right now (the controller is starting "
                     "it); retry later",
                     model);
            return;
        }
        brix_http_add_header(h, "x-error-no-model-backends", model);
        gw_error(w, h, 404, "model_not_found", "model", model, "The model `%s` does not exist.",
                 model);
        return;
    }
    const char *sname = brix_http_req_header(h, "routing-strategy");
    brix_strategy_sel_t sel;
    if (sname && *sname) {
        char serr[256];
        if (brix_strategy_parse(sname, &sel, serr, sizeof serr)) {
            brix_http_add_header(h, "x-error-routing", "true");
            brix_http_add_header(h, "x-error-invalid-routing-strategy", "true");
            gw_error(w, h, 400, "invalid_routing_strategy", NULL, model, "%s", serr);
            return;
        }
    } else {
        sel = *brix_gw_rt_strategy(view->rt, model);
    }
    px_t *px = brix_calloc(1, sizeof *px);
    if (!px || !(px->model_name = brix_strdup(model))) {
        brix_free(px);
        gw_error(w, h, 500, NULL, NULL, model, "out of memory");
        return;
    }
    w->inflight++;
    px->w = w;
    px->h = h;
    px->view = view;
    brix_gw_view_ref(view);
    px->model = hs == BRIX_HOLD_WAIT ? NULL : me; /* NULL: held in admit() */
    px->strategy = sel;
    const char *ex = brix_http_req_header(h, "x-brix-explain");
    px->explain = ex && (!strcmp(ex, "1") || !strcasecmp(ex, "true"));
    px->fields = f;
    px->est_tokens = brix_prompt_estimate(&f);
    if (f.max_tokens < 0 || f.max_tokens > 100000000)
        f.max_tokens = 0; /* the engine answers 400; nothing to reserve */
    h->ud = px;
    h->on_abort = on_client_abort;
    h->on_drain = on_drain;
    brix_gw_t *gw = w->gw;
    if (gw->tn) {
        const char *bearer = brix_http_req_bearer(h);
        px->key_used =
            bearer && (brix_tn_cfg(gw->tn)->require_key || !strncmp(bearer, "sk-brix-", 8));
        px->tn_start_ns = brix_now_ns();
        /* on_tenant may run before this returns */
        brix_tn_op_t *op = brix_tn_check(w->tn, bearer, brix_http_req_header(h, "user"), model,
                                         px->est_tokens + f.max_tokens, on_tenant, px);
        if (op)
            px->tn_op = op;
        return;
    }
    px->tenant = brix_http_req_header(h, "user");
    admit(px);
}

/* The request may go on: held for its adapter first when no ready pod
 * serves it, then through the fairness queue when there is one. */
static void admit(px_t *px)
{
    brix_gw_t *gw = px->w->gw;
    if (!px->model) {
        hold(px);
        return;
    }
    /* tokens must be counted: a TPM limit, or the fairness counters */
    if (px->fields.stream && (px->user_tpm > 0 || gw->fair) && ask_usage(px)) {
        px_fail(px, 500, "api_error", NULL, "out of memory");
        return;
    }
    if (!gw->fair) {
        start(px);
        return;
    }
    brix_fair_item_t *it = NULL;
    brix_fair_t *fq = brix_gw_fairs_get(gw, px->model, px->view->fleet);
    brix_fair_rc_t rc =
        fq ? brix_fair_enter(fq, px->tenant, px->priority, px->est_tokens, px->w->idx, px, &it)
           : BRIX_FAIR_FULL;
    if (rc == BRIX_FAIR_FULL) {
        tenant_result(px, px->user, "queue_full");
        px_fail(px, 429, "rate_limit_error", "queue_full",
                "too many of your requests are waiting for capacity (--queue-size %lld); retry "
                "later",
                (long long)gw->fixed.queue_size);
        return;
    }
    px->fair = it;
    if (rc == BRIX_FAIR_WAIT) {
        px->fair_waiting = true;
        return;
    }
    start(px);
}

/* Builds the upstream request's headers and sends the first attempt. */
static void start(px_t *px)
{
    brix_http_req_t *h = px->h;
    if (px->model->activity) /* for the controller's idle TTL */
        atomic_fetch_add_explicit(&px->model->activity->routed, 1, memory_order_relaxed);
    for (size_t i = 0; i < h->nheaders; i++) {
        const brix_http_header_t *hd = &h->headers[i];
        if (hop_by_hop(hd->name, hd->name_len) || !strcasecmp(hd->name, "x-request-id"))
            continue;
        if (px->key_used && hd->name_len == 13 && !strcasecmp(hd->name, "authorization"))
            continue; /* a brix user key stays here */
        brix_buf_t *b = &px->fwd_headers;
        brix_buf_append(b, hd->name, hd->name_len);
        brix_buf_append(b, ": ", 2);
        brix_buf_append(b, hd->value, hd->value_len);
        brix_buf_append(b, "\r\n", 2);
    }
    const char *ek = px->w->gw->fixed.engine_api_key;
    if (px->key_used && ek) {
        brix_buf_append_str(&px->fwd_headers, "authorization: Bearer ");
        brix_buf_append_str(&px->fwd_headers, ek);
        brix_buf_append(&px->fwd_headers, "\r\n", 2);
    }
    brix_buf_append_str(&px->fwd_headers, "x-request-id: ");
    brix_buf_append_str(&px->fwd_headers, h->id);
    brix_buf_append(&px->fwd_headers, "\r\n", 2);
    attempt(px);
}

static void handle_metrics(brix_gw_worker_t *w, brix_http_req_t *h)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_metrics_write(w->gw->m.reg, &b);
    brix_http_respond(h, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "",
                      b.len);
    brix_buf_free(&b);
}

static void handler(brix_http_req_t *h, void *ud)
{
    brix_gw_worker_t *w = ud;
    const char *p = h->path;
    bool get = h->method == HTTP_GET || h->method == HTTP_HEAD;
    bool post = h->method == HTTP_POST;
    if (!strcmp(p, "/healthz")) {
        if (!get)
            goto method;
        brix_http_respond(h, 200, "text/plain", "ok\n", 3);
    } else if (!strcmp(p, "/readyz")) {
        if (!get)
            goto method;
        bool ready = w->view && w->view->fleet->nhealthy > 0 && !w->draining;
        if (ready)
            brix_http_respond(h, 200, "text/plain", "ready\n", 6);
        else
            brix_http_respond(h, 503, "text/plain", "not ready\n", 10);
    } else if (!strcmp(p, "/metrics")) {
        if (!get)
            goto method;
        handle_metrics(w, h);
    } else if (!strcmp(p, "/v1/models")) {
        if (!get)
            goto method;
        if (!w->view) {
            static const char empty[] = "{\"object\":\"list\",\"data\":[]}";
            brix_http_respond(h, 200, "application/json", empty, sizeof empty - 1);
        } else {
            brix_http_respond(h, 200, "application/json", w->view->fleet->models_json,
                              w->view->fleet->models_json_len);
        }
    } else if (brix_gw_admin_handle(w, h)) {
        /* answered (or answering) there */
    } else if (proxied_path(p)) {
        if (!post)
            goto method;
        handle_proxy(w, h);
    } else {
        gw_error(w, h, 404, "not_found", NULL, NULL, "no route for %s %s", h->method_name, p);
    }
    return;
method:
    brix_http_add_header(h, "allow",
                         !strcmp(p, "/healthz") || !strcmp(p, "/readyz") ||
                                 !strcmp(p, "/metrics") || !strcmp(p, "/v1/models")
                             ? "GET, HEAD"
                             : "POST");
    gw_error(w, h, 405, "method_not_allowed", NULL, NULL, "method %s is not allowed on %s",
             h->method_name, p);
}

/* ------------------------------------------------------------ workers -- */

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
            recheck_held(w, false);
    }
    if (stop && !w->draining && w->srv) {
        if (w->held.n && w->view)
            recheck_held(w, true); /* nothing will load for them before the drain ends */
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
        px_fail(px, 503, "overloaded_error", "service_unavailable",
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
                tenant_result(px, px->user, "queue_timeout");
                px_fail(px, 503, "overloaded_error", "queue_timeout",
                        "no capacity for this request within %llu ms (--queue-timeout); retry "
                        "later",
                        (unsigned long long)w->gw->fixed.queue_timeout);
            } else if (refresh_view(px)) {
                start(px);
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
    brix_gw_holdq_init(&w->held, loop, &gw->demand, on_held_expire, w);
    gw->w[idx] = w;
    if (gw->tn && !(w->tn = brix_tn_conn_new(gw->tn, loop)))
        return -ENOMEM;
    const brix_gw_cfg_t *c = &gw->cfg;
    w->srv = brix_http_server_new(loop, &c->http, handler, w);
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
    on_alog_check(&w->alog_check); /* lines of aborted requests */
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
