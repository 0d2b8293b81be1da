/*
 * Admission of a proxied request: when it may go, on a worker loop.
 *
 * After the body is valid (proxy_routes.c) a request passes, in order, the
 * tenant check (API key, model permission, RPM/TPM, asynchronous when the
 * store is Redis), the hold (a registered adapter that no ready pod serves
 * yet, or a deployment's model with no ready replica: held until one is
 * ready or its deadline; the control thread wakes it at the controller, see
 * hold.h) and the fairness queue (when enabled). Its first admission counts
 * it into its base model's load (reported to the controller).
 * Every refusal is answered here with brix_px_fail, which frees px; a
 * request let through goes on to brix_px_start (proxy_relay.c).
 */
#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/time.h"
#include "gateway/proxy_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Counts a tenancy decision for `user` ("" when nobody was identified). */
void brix_px_tenant_result(px_t *px, const char *user, const char *result)
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

void brix_px_on_tenant(void *ud, const brix_tn_decision_t *d)
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
            brix_px_tenant_result(px, px->user, "unchecked");
            brix_log(BRIX_LOG_DEBUG, h->id,
                     "rate limits not checked (%s): admitted (--redis-failure open)",
                     d->detail ? d->detail : "store down");
        }
        px->tenant = brix_http_req_header(h, "user");
        brix_px_admit(px);
        return;
    case BRIX_TN_NO_KEY:
        brix_px_tenant_result(px, px->user, "unauthorized");
        brix_px_fail(px, 401, "invalid_request_error", "invalid_api_key",
                     "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.");
        return;
    case BRIX_TN_BAD_KEY:
        brix_px_tenant_result(px, px->user, "unauthorized");
        brix_px_fail(px, 401, "invalid_request_error", "invalid_api_key",
                     "Incorrect API key provided.");
        return;
    case BRIX_TN_NO_USER:
        brix_px_tenant_result(px, px->user, "unauthorized");
        brix_px_fail(px, 401, "invalid_request_error", "invalid_user",
                     "user '%s' (the `user` header) is not known to this gateway", d->user);
        return;
    case BRIX_TN_KEY_NEEDED:
        brix_px_tenant_result(px, px->user, "unauthorized");
        brix_px_fail(px, 401, "invalid_request_error", "invalid_api_key",
                     "user '%s' has an API key: send it as `Authorization: Bearer <key>` (the user "
                     "header cannot name this user)",
                     d->user);
        return;
    case BRIX_TN_MODEL:
        brix_px_tenant_result(px, d->user, "forbidden");
        brix_px_fail(px, 403, "permission_error", "model_not_allowed",
                     "user '%s' may not use the model `%s`", d->user, px->model_name);
        return;
    case BRIX_TN_STORE_DOWN:
        brix_px_tenant_result(px, px->user, "store_down");
        snprintf(v, sizeof v, "%d", px->view->rt->retry_after_s);
        brix_http_add_header(h, "retry-after", v);
        brix_px_fail(
            px, 503, "overloaded_error", "service_unavailable",
            "rate limits cannot be checked (%s) and --redis-failure is closed; retry later",
            d->detail ? d->detail : "store down");
        return;
    case BRIX_TN_RPM:
    case BRIX_TN_TPM: {
        brix_px_tenant_result(px, d->user,
                              d->status == BRIX_TN_RPM ? "rpm_limited" : "tpm_limited");
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
            brix_px_fail(
                px, 429, "rate_limit_error", "rate_limit_exceeded",
                "Rate limit reached for %s on requests per minute (RPM): Limit %lld. Please "
                "try again in %s.",
                d->user, (long long)d->rpm, wait);
        else if (never)
            brix_px_fail(
                px, 429, "rate_limit_error", "rate_limit_exceeded",
                "Request too large for %s: about %lld tokens (prompt estimate + max_tokens), "
                "over the limit of %lld tokens per minute (TPM).",
                d->user, (long long)d->est_tokens, (long long)d->tpm);
        else
            brix_px_fail(
                px, 429, "rate_limit_error", "rate_limit_exceeded",
                "Rate limit reached for %s on tokens per minute (TPM): Limit %lld, Remaining "
                "%lld, Requested about %lld (prompt estimate + max_tokens). Please try again "
                "in %s.",
                d->user, (long long)d->tpm, (long long)d->tpm_remaining, (long long)d->est_tokens,
                wait);
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
    brix_px_tenant_result(px, px->user, "ok");
    add_limit_headers(h, d);
    brix_px_admit(px);
}

/* "... was not ready within 30 s" / "... 1500 ms"; waited_ms 0: not held. */
void brix_px_loading_msg(char *out, size_t n, const char *name, const brix_reg_adapter_t *ra,
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

void brix_px_adapter_failed(brix_gw_worker_t *w, brix_http_req_t *h, const char *name,
                            const brix_reg_adapter_t *ra)
{
    char msg[512];
    failed_msg(msg, sizeof msg, name, ra);
    brix_px_error(w, h, 503, "adapter_failed", NULL, name, "%s", msg);
}

/* "... within 30 s" / "... 1500 ms" */
static void fmt_wait(char *out, size_t n, uint64_t ms)
{
    if (ms % 1000 == 0)
        snprintf(out, n, "%llu s", (unsigned long long)(ms / 1000));
    else
        snprintf(out, n, "%llu ms", (unsigned long long)ms);
}

void brix_px_scaling_msg(char *out, size_t n, const char *model, const brix_reg_deployment_t *dep,
                         uint64_t waited_ms)
{
    char how[300] = "";
    if (dep)
        snprintf(how, sizeof how, " (deployment '%s' is starting a replica)", dep->name);
    char wait[48];
    fmt_wait(wait, sizeof wait, waited_ms);
    if (!waited_ms)
        snprintf(out, n,
                 "model '%s' has no ready replica: it is scaling up from zero%s; retry later",
                 model, how);
    else
        snprintf(out, n,
                 "model '%s' is scaling up from zero%s and had no ready replica within %s; retry "
                 "later",
                 model, how, wait);
}

/* The deployment a held model request waits for, on view v (NULL: none any
 * more). */
static const brix_reg_deployment_t *held_dep(const px_t *px, const brix_gw_view_t *v)
{
    return brix_registry_deployment_for(v->fleet->registry, px->model_name);
}

/* Counts px into its base model's load once, at its first admission. The
 * lookup is in the snapshot already (me->load) for a model that is served;
 * only a held request (no model entry) searches the registry. */
static void count_load(px_t *px)
{
    if (px->load_counted)
        return;
    px->load_counted = true;
    const brix_registry_t *reg = px->view->fleet->registry;
    brix_model_activity_t *a = px->model ? px->model->load : NULL;
    if (!a && !px->model && reg) {
        const brix_reg_adapter_t *ra = brix_registry_adapter(reg, px->model_name);
        a = brix_registry_load(reg, ra ? ra->base_model : px->model_name);
    }
    if (!a)
        return;
    brix_model_activity_ref(a);
    px->load = a;
    atomic_fetch_add_explicit(&a->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&a->offered_prompt_tokens, px->est_tokens > 0 ? px->est_tokens : 0,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&a->inflight, 1, memory_order_relaxed);
}

/* Holds px until a ready pod serves its adapter or model (or its deadline). */
static void hold(px_t *px)
{
    brix_gw_worker_t *w = px->w;
    const brix_gw_rt_t *rt = px->view->rt;
    bool model = px->hold_kind == BRIX_HOLD_MODEL;
    int rc = brix_gw_holdq_add(&w->held, &px->held, px->hold_kind, px->model_name,
                               model ? rt->scale_from_zero_ms : rt->adapter_wake_timeout_ms,
                               rt->max_held_requests);
    if (rc == -EBUSY && model) {
        brix_px_add_retry_after(px->h, rt->scale_from_zero_retry_s);
        brix_px_fail(px, 503, "overloaded_error", "model_scaling_from_zero",
                     "model '%s' is scaling up from zero and too many requests are already "
                     "waiting for replicas or adapters (--max-held-requests %lld); retry later",
                     px->model_name, (long long)rt->max_held_requests);
    } else if (rc == -EBUSY) {
        brix_px_add_retry_after(px->h, rt->retry_after_s);
        brix_px_fail(px, 503, "overloaded_error", "too_many_held_requests",
                     "too many requests are waiting for adapters to be loaded (--max-held-requests "
                     "%lld); retry later",
                     (long long)rt->max_held_requests);
    } else if (rc) {
        brix_px_add_retry_after(px->h, rt->retry_after_s);
        brix_px_fail(px, 503, "overloaded_error", "service_unavailable",
                     "cannot hold the request for %s '%s' (%s); retry later",
                     model ? "model" : "adapter", px->model_name,
                     rc == -ENOMEM ? "out of memory" : "shutting down");
    } else {
        if (px->load)
            atomic_fetch_add_explicit(&px->load->held, 1, memory_order_relaxed);
        if (model)
            brix_metric_add(brix_gw_metric1(w->gw->m.model_held, px->model_name), 1);
        brix_log(BRIX_LOG_DEBUG, px->h->id, "held until %s %s", px->model_name,
                 model ? "has a ready replica" : "is loaded");
    }
}

/* Ends the hold bookkeeping of px, which the queue already unlinked. */
static void held_done(px_t *px, const char *result)
{
    brix_gw_t *gw = px->w->gw;
    bool model = px->hold_kind == BRIX_HOLD_MODEL;
    brix_metric_observe(brix_gw_metric1(model ? gw->m.model_wait : gw->m.adapter_wait, result),
                        (double)(brix_now_ns() - px->held.since_ns) / 1e9);
    if (px->load)
        atomic_fetch_sub_explicit(&px->load->held, 1, memory_order_relaxed);
    if (model)
        brix_metric_add(brix_gw_metric1(gw->m.model_held, px->model_name), -1);
}

void brix_px_unhold(px_t *px, const char *result)
{
    if (!px->held.linked)
        return;
    brix_gw_holdq_remove(&px->w->held, &px->held);
    held_done(px, result);
}

/* Deadline of a held request. */
void brix_px_on_held_expire(brix_gw_held_t *e, void *ud)
{
    px_t *px = BRIX_PX_HELD(e);
    brix_gw_worker_t *w = ud;
    const brix_gw_view_t *v = w->view ? w->view : px->view;
    held_done(px, "timeout");
    char msg[512];
    if (px->hold_kind == BRIX_HOLD_MODEL) {
        brix_px_scaling_msg(msg, sizeof msg, px->model_name, held_dep(px, v),
                            (e->deadline_ns - e->since_ns) / 1000000);
        brix_px_add_retry_after(px->h, v->rt->scale_from_zero_retry_s);
        brix_px_fail(px, 503, "overloaded_error", "model_scaling_from_zero", "%s", msg);
        return;
    }
    const brix_reg_adapter_t *ra = brix_registry_adapter(v->fleet->registry, px->model_name);
    brix_px_loading_msg(msg, sizeof msg, px->model_name, ra,
                        (e->deadline_ns - e->since_ns) / 1000000);
    brix_px_add_retry_after(px->h, v->rt->retry_after_s);
    brix_px_fail(px, 503, "overloaded_error", "adapter_loading", "%s", msg);
}

/* A new fleet view: held requests whose adapter is now served go on. */
void brix_px_recheck_held(brix_gw_worker_t *w, bool shutdown)
{
    brix_gw_view_t *v = w->view;
    for (brix_gw_held_t *e = w->held.head; e;) {
        /* answering px may start the next request pipelined on its
         * connection (appended at the tail), never remove another entry */
        brix_gw_held_t *next = e->next;
        px_t *px = BRIX_PX_HELD(e);
        const brix_model_entry_t *me = NULL;
        const brix_reg_adapter_t *ra = NULL;
        const brix_reg_deployment_t *dep = NULL;
        brix_hold_state_t hs = shutdown
                                   ? BRIX_HOLD_WAIT
                                   : brix_hold_classify(v->fleet, px->model_name, &me, &ra, &dep);
        if (shutdown) {
            brix_px_unhold(px, "shutdown");
            brix_px_add_retry_after(px->h, v->rt->retry_after_s);
            brix_px_fail(px, 503, "overloaded_error", "service_unavailable",
                         "the gateway is shutting down; retry on another one");
        } else if (hs == BRIX_HOLD_READY ||
                   (hs == BRIX_HOLD_NONE && brix_snap_model_ready(v->fleet, me))) {
            brix_px_unhold(px, "routed");
            brix_gw_view_ref(v);
            brix_gw_view_unref(px->view);
            px->view = v;
            px->model = me;
            brix_px_admit(px);
        } else if (hs == BRIX_HOLD_FAILED) {
            brix_px_unhold(px, "failed");
            char msg[512];
            failed_msg(msg, sizeof msg, px->model_name, ra);
            brix_px_fail(px, 503, "overloaded_error", "adapter_failed", "%s", msg);
        } else if (hs == BRIX_HOLD_NONE) {
            brix_px_unhold(px, "gone");
            brix_http_add_header(px->h, "x-error-no-model-backends", px->model_name);
            brix_px_fail(px, 404, "invalid_request_error", "model_not_found",
                         "The model `%s` does not exist (its %s was removed from the controller "
                         "while the request waited).",
                         px->model_name,
                         px->hold_kind == BRIX_HOLD_MODEL ? "deployment" : "adapter");
        }
        e = next;
    }
}

/* The request may go on: held for its adapter first when no ready pod
 * serves it, then through the fairness queue when there is one. */
void brix_px_admit(px_t *px)
{
    brix_gw_t *gw = px->w->gw;
    count_load(px);
    if (!px->model) {
        hold(px);
        return;
    }
    /* tokens must be counted: a TPM limit, or the fairness counters */
    if (px->fields.stream && (px->user_tpm > 0 || gw->fair) && ask_usage(px)) {
        brix_px_fail(px, 500, "api_error", NULL, "out of memory");
        return;
    }
    if (!gw->fair) {
        brix_px_start(px);
        return;
    }
    brix_fair_item_t *it = NULL;
    brix_fair_t *fq = brix_gw_fairs_get(gw, px->model, px->view->fleet);
    brix_fair_rc_t rc =
        fq ? brix_fair_enter(fq, px->tenant, px->priority, px->est_tokens, px->w->idx, px, &it)
           : BRIX_FAIR_FULL;
    if (rc == BRIX_FAIR_FULL) {
        brix_px_tenant_result(px, px->user, "queue_full");
        brix_px_fail(
            px, 429, "rate_limit_error", "queue_full",
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
    brix_px_start(px);
}
