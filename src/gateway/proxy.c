/*
 * The end of a proxied request and the gateway's own answers.
 *
 * brix_px_free is the one place a px ends: it settles the user's token
 * account (a single brix_tn_charge per admitted request, the refund of the
 * reservation when nothing was sent), leaves the fairness queue and releases
 * what px holds. brix_px_fail and brix_px_error answer from the gateway
 * (OpenAI error JSON); every outcome is counted and ends in one access-log
 * line, gathered per loop iteration and written with one system call.
 */
#include "core/alloc.h"
#include "core/log.h"
#include "core/time.h"
#include "gateway/proxy_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *brix_px_err_type(int status)
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
    case 403:
        return "permission_error";
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

/* Access-log lines are collected per loop iteration and written with one
 * system call at its end (uv_check), not one write per request. */
void brix_px_alog_flush(uv_check_t *c)
{
    brix_gw_worker_t *w = c->data;
    if (w->alog.len)
        brix_log_write(w->alog.data, w->alog.len);
    brix_buf_reset(&w->alog);
    uv_check_stop(c);
}

/* Bounds on client-supplied text in an access-log line (bytes written,
 * escapes included): a 10 KB model name would otherwise fill the line and
 * push the fields after it out of the 2 KB log line. */
#define ALOG_FIELD_MAX 256
#define ALOG_ERROR_MAX 512
#define ALOG_ROUTE_MAX 1024

/* Copies client-supplied `s` into `out` (room for max + 4 bytes) so that it
 * stays inside its field and its line: control bytes, DEL, '"' and '\' are
 * escaped (\n, \r, \t, \\, \xHH), and so is a space in an unquoted field,
 * so a forged " status=200" or a newline cannot add fields or lines. UTF-8
 * passes as it is. Past `max` bytes it ends in "…" (cut before an
 * incomplete UTF-8 sequence). */
static const char *log_field(char *out, size_t max, const char *s, bool quoted)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[4];
        size_t n = 2;
        e[0] = '\\';
        if (*p == '\n')
            e[1] = 'n';
        else if (*p == '\r')
            e[1] = 'r';
        else if (*p == '\t')
            e[1] = 't';
        else if (*p == '\\')
            e[1] = '\\';
        else if (*p < 0x20 || *p == 0x7f || *p == '"' || (*p == ' ' && !quoted)) {
            e[1] = 'x';
            e[2] = hex[*p >> 4];
            e[3] = hex[*p & 15];
            n = 4;
        } else {
            e[0] = (char)*p;
            n = 1;
        }
        if (o + n > max) {
            size_t k = o;
            while (k && ((unsigned char)out[k - 1] & 0xC0) == 0x80)
                k--;
            if (k && ((unsigned char)out[k - 1] & 0xC0) == 0xC0) {
                unsigned char lead = (unsigned char)out[k - 1];
                size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
                if (o - (k - 1) < need)
                    o = k - 1;
            }
            memcpy(out + o, "\xe2\x80\xa6", 3); /* … */
            o += 3;
            break;
        }
        memcpy(out + o, e, n);
        o += n;
    }
    out[o] = '\0';
    return out;
}

/* The one access-log line of a request: every field is always present
 * ("-" or -1 when unknown), so the lines can be parsed by position or key.
 * What the client chose (path, model, and the error and route texts that
 * may quote it) goes through log_field; the request id is already limited
 * to [A-Za-z0-9._:-] by the HTTP server. */
static void log_access(brix_gw_worker_t *w, const brix_http_req_t *h, const char *model,
                       const char *pod, const char *strategy, int status, double ttft_ms,
                       int attempts, int64_t prompt_tokens, int64_t completion_tokens,
                       const char *error, const char *route)
{
    if (w->view && !w->view->rt->access_log)
        return;
    double dur = (double)(brix_now_ns() - h->start_ns) / 1e6;
    if (!w->alog.len)
        uv_check_start(&w->alog_check, brix_px_alog_flush);
    char pb[ALOG_FIELD_MAX + 4], mb[ALOG_FIELD_MAX + 4], eb[ALOG_ERROR_MAX + 4],
        rb[ALOG_ROUTE_MAX + 4];
    brix_log_to(&w->alog, BRIX_LOG_INFO, h->id,
                "access method=%s path=%s model=%s pod=%s strategy=%s status=%d ttft_ms=%.2f "
                "dur_ms=%.2f attempts=%d prompt_tokens=%lld completion_tokens=%lld bytes=%llu "
                "error=%s%s%s%s%s%s",
                h->method_name, log_field(pb, ALOG_FIELD_MAX, h->path, false),
                model ? log_field(mb, ALOG_FIELD_MAX, model, false) : "-", pod ? pod : "-",
                strategy ? strategy : "-", status, ttft_ms, dur, attempts, (long long)prompt_tokens,
                (long long)completion_tokens, (unsigned long long)h->bytes_out, error ? "\"" : "-",
                error ? log_field(eb, ALOG_ERROR_MAX, error, true) : "", error ? "\"" : "",
                route ? " route=\"" : "", route ? log_field(rb, ALOG_ROUTE_MAX, route, true) : "",
                route ? "\"" : "");
}

/* An error answered by the gateway itself (never from an upstream). */
void brix_px_error(brix_gw_worker_t *w, brix_http_req_t *h, int status, const char *code,
                   const char *param, const char *model, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    count_request(w, model_label(w, model), status, NULL);
    log_access(w, h, model, NULL, NULL, status, -1, 0, 0, 0, msg, NULL);
    brix_http_respond_error(h, status, brix_px_err_type(status), code, param, "%s", msg);
}

void brix_px_free(px_t *px)
{
    brix_gw_worker_t *w = px->w;
    brix_gw_t *gw = w->gw;
    brix_px_unhold(px, "client_closed");
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
    if (px->load) {
        /* tokens of a request an engine answered (not refused): the usage it
         * reported, else the same fallbacks as above (a counter only grows) */
        brix_model_activity_t *a = px->load;
        if (px->head_sent && px->status < 400) {
            int64_t pt = px->prompt_tokens ? px->prompt_tokens : px->est_tokens;
            atomic_fetch_add_explicit(&a->prompt_tokens, pt > 0 ? pt : 0, memory_order_relaxed);
            atomic_fetch_add_explicit(&a->completion_tokens,
                                      px->completion_tokens > 0 ? px->completion_tokens : 0,
                                      memory_order_relaxed);
        }
        atomic_fetch_sub_explicit(&a->inflight, 1, memory_order_relaxed);
        brix_model_activity_unref(a);
        px->load = NULL;
    }
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

void brix_px_access_log(px_t *px, int status)
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

/* Answers the client from the gateway once px exists. */
void brix_px_fail(px_t *px, int status, const char *type, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    brix_http_req_t *h = px->h;
    px->err_kind = code;
    brix_px_access_log(px, status);
    h->on_abort = NULL;
    h->on_drain = NULL;
    brix_px_free(px);
    brix_http_respond_error(h, status, type, code, NULL, "%s", msg);
}

void brix_px_add_retry_after(brix_http_req_t *h, int seconds)
{
    char v[16];
    snprintf(v, sizeof v, "%d", seconds);
    brix_http_add_header(h, "retry-after", v);
}
