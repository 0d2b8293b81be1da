/*
 * fair — per-tenant queues in front of the fleet, dispatched by the Virtual
 * Token Counter (Sheng et al., "Fairness in Serving Large Language Models",
 * OSDI 2024).
 *
 * The gateway lets at most `capacity` requests into the fleet at once
 * (--max-inflight-per-pod x ready pods). Below that, requests pass straight
 * through; at capacity the fleet is saturated and a request waits in its
 * tenant's queue. Whenever a request leaves, the waiting tenant with the
 * smallest counter is served next (strict priority classes first, VTC within
 * a class). A tenant's counter grows by the service it received:
 * w_in x prompt tokens when its request is let in, w_out x output tokens when
 * it ends (the paper's weights, 1 and 2). A tenant that starts waiting is
 * lifted to the smallest counter among those already waiting (or to the
 * counter of the last tenant served when nobody waits), so credit cannot be
 * banked while idle — the paper's counter lift.
 *
 * Saturation is not all-or-nothing: a tenant already holding its fair share
 * of the slots (capacity / active tenants) may not take the last `reserve`
 * of them, which stay for tenants under their share, so a light tenant's
 * request starts at once instead of waiting for a heavy one's to finish
 * (the engine adds it to the running batch at its next step, as the paper's
 * in-engine scheduler would). Alone, a tenant may use everything.
 *
 * One scheduler per gateway process, shared by its worker threads (a mutex);
 * a dispatched request is handed to its worker's loop through `deliver`.
 * Queues are bounded per tenant (--queue-size -> 429) and in time
 * (--queue-timeout -> 503).
 *
 * The tenant table holds max_tenants; when it is full, a newcomer takes the
 * place of a tenant idle (nothing queued or in flight) for at least idle_ms:
 * the longest-idle one whose counter is no higher than where a newcomer
 * starts (the last counter served), which loses nothing since it comes back
 * as a newcomer; else the longest-idle one, whose excess is forgotten. When
 * no tenant has been idle that long, newcomers share one overflow tenant,
 * "(other)".
 */
#ifndef BRIX_GATEWAY_FAIR_H
#define BRIX_GATEWAY_FAIR_H

#include <stdbool.h>
#include <stdint.h>

typedef struct brix_fair brix_fair_t;

typedef enum brix_fair_state {
    BRIX_FAIR_QUEUED,
    BRIX_FAIR_ADMITTED, /* holds a slot */
    BRIX_FAIR_EXPIRED,  /* waited past the deadline; holds no slot */
    BRIX_FAIR_DONE,
} brix_fair_state_t;

typedef struct brix_fair_item brix_fair_item_t;
struct brix_fair_item {
    brix_fair_t *owner; /* the scheduler it belongs to */
    brix_fair_state_t state;
    int worker; /* whose loop gets it */
    void *px;   /* the request; NULL once the client left */
    int tenant; /* scheduler's tenant slot */
    int64_t priority;
    int64_t in_tokens;
    uint64_t enq_ns, deadline_ns, admit_ns;
    brix_fair_item_t *next; /* tenant queue, then the worker's ready list */
};

/* deliver(ud, worker, item) runs under the scheduler's lock, on any thread:
 * it must only hand the item to the worker's loop (a list and a wake-up). */
typedef void (*brix_fair_deliver_fn)(void *ud, int worker, brix_fair_item_t *it);

typedef struct brix_fair_cfg {
    int64_t queue_size;  /* per tenant */
    uint64_t timeout_ms; /* longest wait */
    double w_in, w_out;
    int64_t max_tenants; /* tracked tenants; beyond, they share one slot */
    uint64_t idle_ms;    /* a tenant idle this long may make room for a newcomer */
    double reserve;      /* share of capacity kept from tenants over their fair share */
} brix_fair_cfg_t;

brix_fair_t *brix_fair_new(const brix_fair_cfg_t *cfg, brix_fair_deliver_fn deliver, void *ud);
void brix_fair_free(brix_fair_t *f);
/* Sets the number of requests the fleet may hold: < 0 no limit (the start),
 * 0 none (no ready pod: requests wait until pods return or --queue-timeout). */
void brix_fair_set_capacity(brix_fair_t *f, int64_t capacity);

typedef enum brix_fair_rc {
    BRIX_FAIR_GO,   /* admitted now: the item holds a slot */
    BRIX_FAIR_WAIT, /* queued: deliver() hands it over later */
    BRIX_FAIR_FULL, /* the tenant's queue is full */
} brix_fair_rc_t;

/* Creates an item for a request of `tenant` ("" = anonymous) and admits or
 * queues it. *out is the item (NULL with FULL, or on out of memory, which
 * returns FULL too). */
brix_fair_rc_t brix_fair_enter(brix_fair_t *f, const char *tenant, int64_t priority,
                               int64_t in_tokens, int worker, void *px, brix_fair_item_t **out);
/* The request is over: frees the slot if the item holds one, charges
 * w_out x out_tokens, dispatches the next waiting requests, frees the item.
 * Only for items the worker has in hand (GO, or delivered). */
void brix_fair_leave(brix_fair_t *f, brix_fair_item_t *it, int64_t out_tokens);
/* The client of a waiting request left (on its worker's loop): a queued item
 * is removed and freed; one already on its way to the worker (admitted or
 * expired, not yet picked up) gets px = NULL, and the worker passes it to
 * brix_fair_leave when it arrives. */
void brix_fair_cancel(brix_fair_t *f, brix_fair_item_t *it);
/* Expires waiting items past their deadline (deliver() gets them). */
void brix_fair_sweep(brix_fair_t *f, uint64_t now_ns);

typedef struct brix_fair_stats {
    int64_t capacity, inflight, queued;
    uint64_t admitted_direct, admitted_queued, rejected_full, expired;
    uint64_t evicted; /* idle tenants dropped to make room */
} brix_fair_stats_t;
void brix_fair_stats(brix_fair_t *f, brix_fair_stats_t *out);
/* A tenant's virtual counter (tests, explanation). -1 if unknown. */
double brix_fair_counter(brix_fair_t *f, const char *tenant);

#endif
