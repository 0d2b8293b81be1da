/*
 * hold — requests that wait on their worker loop for something the
 * controller is bringing up (scale from zero): a registered LoRA adapter no
 * ready pod serves yet, or a base model whose deployment has no ready
 * replica (scaled to zero, or its replicas still starting).
 *
 * Two halves. On each worker: an intrusive list of held requests (embedded
 * in the caller's request struct) and one timer for the earliest deadline;
 * the worker re-checks the list itself whenever a new fleet view arrives, so
 * nothing polls. Gateway-wide: the demand table — which adapters and which
 * models have requests waiting, and whether a wake is due — shared by the
 * workers (who count holds in and out) and the control thread (which sends
 * the wakes to the controller). Entries are keyed by (kind, name): an
 * adapter and a model of the same name are two entries. The table's mutex
 * is taken only when a request starts or stops waiting and once a second by
 * the control thread; never on the ordinary request path.
 */
#ifndef BRIX_GATEWAY_HOLD_H
#define BRIX_GATEWAY_HOLD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "gateway/fleet.h"

/* ---- classification (pure; any thread) ---- */

typedef enum brix_hold_state {
    BRIX_HOLD_NONE = 0, /* unknown, or served (or no deployment to wait for): route as usual */
    BRIX_HOLD_READY,    /* a registered adapter a ready pod now serves */
    BRIX_HOLD_WAIT,     /* a registered adapter, or a deployment's model, not servable yet:
                           hold (and wake it) */
    BRIX_HOLD_FAILED,   /* registered but Failed and loaded nowhere: answer at once */
} brix_hold_state_t;

/* What a request waits for; part of the demand table's key. */
typedef enum brix_hold_kind {
    BRIX_HOLD_ADAPTER = 0, /* name: the adapter; woken at /v1/adapters/NAME/wake */
    BRIX_HOLD_MODEL = 1,   /* name: the served base model; its deployment is woken */
} brix_hold_kind_t;

/* What a request for `model` should do on this snapshot. *me is the model
 * entry when one exists (READY, NONE), *ra the registry entry when the
 * model is a registered adapter, *dep (may be NULL) the deployment to wake
 * when WAIT is for a base model (*ra is NULL then). */
brix_hold_state_t brix_hold_classify(const brix_fleet_snap_t *s, const char *model,
                                     const brix_model_entry_t **me, const brix_reg_adapter_t **ra,
                                     const brix_reg_deployment_t **dep);

/* ---- the gateway-wide demand table ---- */

typedef struct brix_gw_want {
    brix_hold_kind_t kind;
    char *name;
    int held;          /* requests waiting for it, all workers */
    bool fresh;        /* a new wait began (or a poke) since the last wake */
    bool poked;        /* the fresh demand is a poke: due even with nothing held */
    bool in_flight;    /* a wake is being sent */
    uint64_t last_ns;  /* when the last wake was sent (0: never) */
    uint64_t quiet_ns; /* since when nothing waits (for dropping the entry) */
} brix_gw_want_t;

typedef struct brix_gw_demand {
    uv_mutex_t mu;
    brix_gw_want_t *v;
    size_t n;
    atomic_int held_total;
    atomic_int held_kind[2];   /* held_total by brix_hold_kind_t */
    uv_async_t kick;           /* control loop: a new wait began */
    void (*on_kick)(void *ud); /* set by the control thread */
    void *kick_ud;
} brix_gw_demand_t;

/* On the control loop, before any worker runs; kick does not keep it alive. */
int brix_gw_demand_init(brix_gw_demand_t *d, uv_loop_t *control_loop);
/* After the workers are joined. */
void brix_gw_demand_close(brix_gw_demand_t *d);
void brix_gw_demand_free(brix_gw_demand_t *d);

/* Workers. hold: one more request waits for (kind, name) (-EBUSY when `cap`
 * requests already wait, of any kind; -ENOMEM); release undoes it. poke asks
 * for one wake without holding (with a hold timeout of 0). */
int brix_gw_demand_hold(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name, int64_t cap);
void brix_gw_demand_release(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name);
int brix_gw_demand_poke(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name);

/* A wake that is due. */
typedef struct brix_gw_wake {
    brix_hold_kind_t kind;
    char *name; /* brix_strdup'ed: the caller frees */
} brix_gw_wake_t;

/* Control thread: entries whose wake is due now (a new wait, or `every_ns`
 * since the last wake with requests still waiting, and none in flight),
 * marked in flight. Returns how many were written to out, at most max. */
size_t brix_gw_demand_due(brix_gw_demand_t *d, uint64_t now_ns, uint64_t every_ns,
                          brix_gw_wake_t *out, size_t max);
/* The wake for (kind, name) ended (answered, failed, or not sent). */
void brix_gw_demand_sent(brix_gw_demand_t *d, brix_hold_kind_t kind, const char *name);

/* ---- per worker ---- */

typedef struct brix_gw_held {
    struct brix_gw_held *prev, *next;
    const char *model; /* the caller's string, alive while held */
    brix_hold_kind_t kind;
    uint64_t since_ns, deadline_ns;
    bool linked;
} brix_gw_held_t;

typedef struct brix_gw_holdq {
    brix_gw_held_t *head, *tail; /* arrival order */
    size_t n;
    uv_timer_t timer;
    uint64_t armed_ns; /* the timer's due time, 0 = not armed */
    bool closed;
    brix_gw_demand_t *demand;
    void (*expire)(brix_gw_held_t *e, void *ud); /* deadline passed (e is unlinked first) */
    void *ud;
} brix_gw_holdq_t;

void brix_gw_holdq_init(brix_gw_holdq_t *q, uv_loop_t *loop, brix_gw_demand_t *d,
                        void (*expire)(brix_gw_held_t *, void *), void *ud);
/* Holds e, waiting for (kind, model), for up to timeout_ms; -EBUSY (cap
 * reached) or -ENOMEM leave e unlinked. */
int brix_gw_holdq_add(brix_gw_holdq_t *q, brix_gw_held_t *e, brix_hold_kind_t kind,
                      const char *model, uint64_t timeout_ms, int64_t cap);
/* Unlinks e (it stops waiting for any reason); a no-op when not held. */
void brix_gw_holdq_remove(brix_gw_holdq_t *q, brix_gw_held_t *e);
/* Closes the timer; entries still held must be removed by their owners. */
void brix_gw_holdq_close(brix_gw_holdq_t *q);

#endif
