/*
 * proxy_internal — what the proxy's files share on a worker loop: px_t, one
 * proxied request, and the functions one file calls in another. Not for use
 * outside src/gateway/proxy*.c.
 *
 * The request path is split by concern: proxy_routes.c (the handler, the
 * allow-list, the body scan, /metrics) creates a px; proxy_admit.c (tenant
 * check, adapter hold, fairness queue) decides when it may go; proxy_relay.c
 * (attempts, retries, the SSE relay, usage) sends it and relays the answer;
 * proxy.c owns its end (brix_px_free) and the gateway's own answers and
 * access log; proxy_worker.c runs the loop around them.
 *
 * Lifetime: a px is brix_calloc'ed by brix_px_handler once the body is valid
 * and freed by brix_px_free only, exactly once, by whoever answers the
 * client or sees it leave (brix_px_on_client_abort). brix_px_free charges the
 * user's tokens (brix_tn_charge, once per admitted request, even 0), leaves
 * the fairness queue and drops the view, pod and buffers it holds. After a
 * call that may answer (brix_px_fail, brix_px_admit, brix_px_start, ...) the
 * caller must not touch px again.
 */
#ifndef BRIX_GATEWAY_PROXY_INTERNAL_H
#define BRIX_GATEWAY_PROXY_INTERNAL_H

#include "core/sse.h"
#include "gateway/gateway.h"
#include "gateway/router.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIX_PX_MAX_ATTEMPTS 8

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
    uint32_t tried[BRIX_PX_MAX_ATTEMPTS];
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

    /* waiting for its adapter, or its model's first ready replica (model
     * is NULL until then); hold_kind says which */
    brix_gw_held_t held;
    brix_hold_kind_t hold_kind;
    /* its base model's load record (a reference), counted from admission
     * to brix_px_free; NULL when the controller's registry does not know
     * the model (or there is no controller) */
    brix_model_activity_t *load;
    bool load_counted;
} px_t;

#define HELD_PX(e) ((px_t *)(void *)((char *)(e)-offsetof(px_t, held)))

#define BRIX_PX_HELD(e) ((px_t *)(void *)((char *)(e)-offsetof(px_t, held)))

/* ---- proxy.c: the end of a request, the gateway's own answers ---- */

/* Frees px and everything it holds; the only place a px ends. */
void brix_px_free(px_t *px);
/* Counts and logs px's outcome (metrics and the access-log line). */
void brix_px_access_log(px_t *px, int status);
/* Answers the client from the gateway once px exists; frees px. */
void brix_px_fail(px_t *px, int status, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* An error answered by the gateway before any px exists (never from an
 * upstream): counted, logged and answered. */
void brix_px_error(brix_gw_worker_t *w, brix_http_req_t *h, int status, const char *code,
                   const char *param, const char *model, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
/* The OpenAI error type of a status. */
const char *brix_px_err_type(int status);
void brix_px_add_retry_after(brix_http_req_t *h, int seconds);
/* The request stops waiting for its adapter or model; `result` labels the
 * wait. */
void brix_px_unhold(px_t *px, const char *result);
/* uv_check callback: writes the access-log lines of this loop iteration. */
void brix_px_alog_flush(uv_check_t *c);

/* ---- proxy_relay.c: attempts, retries, relaying, usage ---- */

/* Builds the upstream request's headers and sends the first attempt. */
void brix_px_start(px_t *px);
/* brix_http_req_t hooks: the client drained its backlog / went away. */
void brix_px_on_drain(brix_http_req_t *h, void *ud);
void brix_px_on_client_abort(brix_http_req_t *h, void *ud);

/* ---- proxy_admit.c: tenant check, adapter hold, fairness queue ---- */

/* The tenant store's decision on px (brix_tn_check callback). */
void brix_px_on_tenant(void *ud, const brix_tn_decision_t *d);
/* px may go on: held, queued for fairness, or started. */
void brix_px_admit(px_t *px);
/* Counts a tenancy decision for `user` ("" when nobody was identified). */
void brix_px_tenant_result(px_t *px, const char *user, const char *result);
void brix_px_loading_msg(char *out, size_t n, const char *name, const brix_reg_adapter_t *ra,
                         uint64_t waited_ms);
void brix_px_adapter_failed(brix_gw_worker_t *w, brix_http_req_t *h, const char *name,
                            const brix_reg_adapter_t *ra);
/* "model 'M' is scaling up from zero ..."; waited_ms 0: not held. */
void brix_px_scaling_msg(char *out, size_t n, const char *model, const brix_reg_deployment_t *dep,
                         uint64_t waited_ms);
/* Held requests: the deadline callback, and the re-check on a new view. */
void brix_px_on_held_expire(brix_gw_held_t *e, void *ud);
void brix_px_recheck_held(brix_gw_worker_t *w, bool shutdown);

/* ---- proxy_routes.c ---- */

/* The worker's HTTP handler (ud: the worker). */
void brix_px_handler(brix_http_req_t *h, void *ud);

#endif
