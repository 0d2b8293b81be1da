/*
 * The gateway's HTTP routes, on each worker loop.
 *
 * Probes, /metrics and /v1/models are answered here; the admin API in
 * admin.c; a POST to an allowed inference route is validated once, without
 * building a tree (core/json_scan), for `model`, `stream` and the prompt
 * fields (duplicate or escaped keys that parsers read differently are
 * refused), checked against the fleet, and becomes a px (proxy_internal.h)
 * that proxy_admit.c takes on. Everything else is a 404 or 405 from the
 * gateway itself.
 */
#include "core/alloc.h"
#include "core/http_host.h"
#include "core/json.h"
#include "core/time.h"
#include "gateway/proxy_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
            brix_px_error(w, h, 400, "invalid_json", NULL, NULL,
                          "the request body is empty; expected a JSON object");
        else
            brix_px_error(w, h, 400, "invalid_json", NULL, NULL,
                          "invalid JSON in request body at byte offset %zu: %s", err_off, err_what);
        return;
    }
    if (src == BRIX_JSON_SCAN_NOT_OBJECT) {
        brix_px_error(w, h, 400, "invalid_request_body", NULL, NULL,
                      "the request body must be a JSON object");
        return;
    }
    if (sx.oom) {
        brix_px_error(w, h, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    if (sx.dup) {
        brix_px_error(w, h, 400, "duplicate_key", sx.dup, NULL,
                      "the request body has the key '%s' more than once (spelled plainly or with "
                      "escapes); send it once",
                      sx.dup);
        return;
    }
    if (sx.bad) {
        brix_px_error(w, h, 400, "invalid_value", sx.bad, NULL,
                      "'%s' must be an integer (within 64 bits)", sx.bad);
        return;
    }
    if (!f.model || !*f.model) {
        brix_px_error(w, h, 400, "missing_model", "model", NULL,
                      "you must provide a model parameter (a non-empty string)");
        return;
    }
    const char *model = f.model;
    const brix_model_entry_t *me = NULL;
    const brix_reg_adapter_t *ra = NULL;
    const brix_reg_deployment_t *dep = NULL;
    brix_hold_state_t hs =
        view ? brix_hold_classify(view->fleet, model, &me, &ra, &dep) : BRIX_HOLD_NONE;
    if (hs == BRIX_HOLD_FAILED) {
        brix_px_adapter_failed(w, h, model, ra);
        return;
    }
    if (hs == BRIX_HOLD_WAIT && dep && !view->rt->scale_from_zero_ms) {
        /* not held (--scale-from-zero-timeout 0), but woken for the retry */
        brix_gw_demand_poke(&w->gw->demand, BRIX_HOLD_MODEL, model);
        char msg[512];
        brix_px_scaling_msg(msg, sizeof msg, model, dep, 0);
        brix_px_add_retry_after(h, view->rt->scale_from_zero_retry_s);
        brix_px_error(w, h, 503, "model_scaling_from_zero", NULL, model, "%s", msg);
        return;
    }
    if (hs == BRIX_HOLD_WAIT && !dep && !view->rt->adapter_wake_timeout_ms) {
        /* not held (--adapter-wake-timeout 0), but woken for the retry */
        brix_gw_demand_poke(&w->gw->demand, BRIX_HOLD_ADAPTER, model);
        char msg[512];
        brix_px_loading_msg(msg, sizeof msg, model, ra, 0);
        brix_px_add_retry_after(h, view->rt->retry_after_s);
        brix_px_error(w, h, 503, "adapter_loading", NULL, model, "%s", msg);
        return;
    }
    /* with the controller's registry the model is known or not even with
     * no pod (every deployment at zero): 404 or 503 below, as it says */
    if (hs != BRIX_HOLD_WAIT && (!view || (!view->fleet->nmodels && !view->fleet->registry))) {
        brix_px_add_retry_after(h, view ? view->rt->retry_after_s : w->retry_after_s);
        brix_px_error(w, h, 503, "service_unavailable", NULL, model,
                      "no model server is ready yet; retry later");
        return;
    }
    if (hs != BRIX_HOLD_WAIT && !me) {
        const brix_reg_deployment_t *zd =
            brix_registry_deployment_for(view->fleet->registry, model);
        if (zd && zd->replicas == 0 && !zd->scale_to_zero) {
            /* scaled to 0 by its spec: nothing is coming, so no hold */
            brix_http_add_header(h, "x-error-no-model-backends", model);
            brix_px_error(w, h, 503, "service_unavailable", NULL, model,
                          "model '%s' is scaled to 0 replicas (ModelDeployment '%s' "
                          "spec.replicas, no autoscaler scales it from zero)",
                          model, zd->name);
            return;
        }
        if (brix_registry_has_base(view->fleet->registry, model)) {
            /* the controller runs replicas of it, none ready: not a typo */
            brix_px_add_retry_after(h, view->rt->retry_after_s);
            brix_http_add_header(h, "x-error-no-model-backends", model);
            brix_px_error(w, h, 503, "service_unavailable", NULL, model,
                          "model '%s' has no ready replica right now (the controller is starting "
                          "it); retry later",
                          model);
            return;
        }
        brix_http_add_header(h, "x-error-no-model-backends", model);
        brix_px_error(w, h, 404, "model_not_found", "model", model,
                      "The model `%s` does not exist.", model);
        return;
    }
    const char *sname = brix_http_req_header(h, "routing-strategy");
    brix_strategy_sel_t sel;
    if (sname && *sname) {
        char serr[256];
        if (brix_strategy_parse(sname, &sel, serr, sizeof serr)) {
            brix_http_add_header(h, "x-error-routing", "true");
            brix_http_add_header(h, "x-error-invalid-routing-strategy", "true");
            brix_px_error(w, h, 400, "invalid_routing_strategy", NULL, model, "%s", serr);
            return;
        }
    } else {
        sel = *brix_gw_rt_strategy(view->rt, model);
    }
    px_t *px = brix_calloc(1, sizeof *px);
    if (!px || !(px->model_name = brix_strdup(model))) {
        brix_free(px);
        brix_px_error(w, h, 500, NULL, NULL, model, "out of memory");
        return;
    }
    w->inflight++;
    px->w = w;
    px->h = h;
    px->view = view;
    brix_gw_view_ref(view);
    px->model = hs == BRIX_HOLD_WAIT ? NULL : me; /* NULL: held in brix_px_admit() */
    px->hold_kind = dep ? BRIX_HOLD_MODEL : BRIX_HOLD_ADAPTER;
    px->strategy = sel;
    const char *ex = brix_http_req_header(h, "x-brix-explain");
    px->explain = ex && (!strcmp(ex, "1") || !strcasecmp(ex, "true"));
    px->fields = f;
    px->est_tokens = brix_prompt_estimate(&f);
    if (f.max_tokens < 0 || f.max_tokens > 100000000)
        f.max_tokens = 0; /* the engine answers 400; nothing to reserve */
    h->ud = px;
    h->on_abort = brix_px_on_client_abort;
    h->on_drain = brix_px_on_drain;
    brix_gw_t *gw = w->gw;
    if (gw->tn) {
        const char *bearer = brix_http_req_bearer(h);
        px->key_used =
            bearer && (brix_tn_cfg(gw->tn)->require_key || !strncmp(bearer, "sk-brix-", 8));
        px->tn_start_ns = brix_now_ns();
        /* brix_px_on_tenant may run before this returns */
        brix_tn_op_t *op = brix_tn_check(w->tn, bearer, brix_http_req_header(h, "user"), model,
                                         px->est_tokens + f.max_tokens, brix_px_on_tenant, px);
        if (op)
            px->tn_op = op;
        return;
    }
    px->tenant = brix_http_req_header(h, "user");
    brix_px_admit(px);
}

static void handle_metrics(brix_gw_worker_t *w, brix_http_req_t *h)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_metrics_write(w->gw->m.reg, &b);
    brix_http_respond(h, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "",
                      b.len);
    brix_buf_free(&b);
}

void brix_px_handler(brix_http_req_t *h, void *ud)
{
    brix_gw_worker_t *w = ud;
    const char *p = h->path;
    bool get = h->method == HTTP_GET || h->method == HTTP_HEAD;
    bool post = h->method == HTTP_POST;
    /* DNS rebinding: a page the user opens must not reach a loopback
     * gateway under its own name. Probes answer whatever the Host (an
     * orchestrator's checks may use any name). */
    const brix_gw_t *gw = w->gw;
    if (gw->fixed.check_host && strcmp(p, "/healthz") && strcmp(p, "/readyz")) {
        const char *host = brix_http_req_header(h, "host");
        if (!brix_http_host_ok(host, gw->port, &gw->fixed.allowed_hosts)) {
            brix_px_error(w, h, 403, "host_not_allowed", NULL, NULL,
                          "Host '%.100s' is not an address of this gateway (DNS rebinding "
                          "protection; the operator can add --allowed-host NAME)",
                          host);
            return;
        }
    }
    if (!strcmp(p, "/healthz")) {
        if (!get)
            goto method;
        brix_http_respond(h, 200, "text/plain", "ok\n", 3);
    } else if (!strcmp(p, "/readyz")) {
        if (!get)
            goto method;
        /* ready with a healthy pod, or when the controller has deployments:
         * with every one scaled to zero the gateway must still take the
         * requests that wake them (an orchestrator would otherwise route
         * none here, and nothing would ever scale up) */
        const brix_fleet_snap_t *f = w->view ? w->view->fleet : NULL;
        bool ready =
            f && (f->nhealthy > 0 || (f->registry && f->registry->ndeployments)) && !w->draining;
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
        brix_px_error(w, h, 404, "not_found", NULL, NULL, "no route for %s %s", h->method_name, p);
    }
    return;
method:
    brix_http_add_header(h, "allow",
                         !strcmp(p, "/healthz") || !strcmp(p, "/readyz") ||
                                 !strcmp(p, "/metrics") || !strcmp(p, "/v1/models")
                             ? "GET, HEAD"
                             : "POST");
    brix_px_error(w, h, 405, "method_not_allowed", NULL, NULL, "method %s is not allowed on %s",
                  h->method_name, p);
}
