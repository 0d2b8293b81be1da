/*
 * watch — the gateway's link to `brix controller` (--controller URL), on the
 * control thread.
 *
 * It keeps `GET URL/v1/watch` open: NDJSON lines, each a full snapshot
 * ({"type":"snapshot","version":N,"replicas":[...],"adapters":[...],
 * "deployments":[...]}; "adapters" and "deployments" may be absent) or a
 * heartbeat ({"type":"heartbeat","version":N}, every 5 s). Each snapshot is
 * parsed into replicas and an immutable registry (adapters, deployments,
 * base models) and handed to the control module, which turns the ready
 * replicas into pods (a Draining replica is not ready: it gets no new
 * requests, while those already on it run to their end). A stream that
 * ends, fails, or stays silent for --controller-idle-timeout is dropped and
 * opened again with exponential backoff (100 ms doubling to 5 s) while the
 * gateway keeps serving the last pods it knew; one WARN per outage, one INFO
 * on recovery.
 *
 * The same link carries the gateway's requests to the controller: wakes
 * (POST URL/v1/adapters/NAME/wake for an adapter, URL/v1/deployments/NAME/
 * wake for a model's deployment; driven by the demand table in hold.h) and,
 * every second, an activity report (POST URL/v1/activity): this gateway's
 * random id, the requests routed per model name since the last report, and
 * each known base model's load (cumulative requests and tokens, in-flight
 * and held requests now), counted through brix_model_activity_t records
 * this module owns.
 */
#ifndef BRIX_GATEWAY_WATCH_H
#define BRIX_GATEWAY_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/fleet.h"

/* One engine replica as the controller reports it. */
typedef struct brix_ctl_replica {
    char *name; /* the pod name (AIBrix target-pod) */
    char *url;  /* base URL */
    char *model;
    char *phase;        /* Pending | Starting | Running | Draining | Failed | Terminating */
    bool ready;         /* its /health answered recently */
    char *adapters_key; /* its confirmed adapters, sorted, '\n'-joined ("" = none) */
} brix_ctl_replica_t;

typedef struct brix_ctl_snapshot {
    uint64_t version;
    brix_ctl_replica_t *replicas;
    size_t nreplicas;
    brix_registry_t *registry; /* one reference, owned */
    size_t skipped;            /* malformed replica, adapter or deployment entries left out */
} brix_ctl_snapshot_t;

typedef enum brix_ctl_line {
    BRIX_CTL_LINE_OTHER = 0, /* empty, or a type this gateway does not know */
    BRIX_CTL_LINE_SNAPSHOT,
    BRIX_CTL_LINE_HEARTBEAT,
    BRIX_CTL_LINE_BAD, /* not JSON, or a snapshot without its lists (err says why) */
} brix_ctl_line_t;

/* Parses one watch line. SNAPSHOT fills *snap (free it with
 * brix_ctl_snapshot_free); SNAPSHOT and HEARTBEAT set *version. */
brix_ctl_line_t brix_ctl_parse_line(const char *line, size_t len, brix_ctl_snapshot_t *snap,
                                    uint64_t *version, char *err, size_t errlen);
void brix_ctl_snapshot_free(brix_ctl_snapshot_t *s);

typedef struct brix_gw brix_gw_t;
typedef struct brix_gw_watch brix_gw_watch_t;

/* Called for every snapshot, on the control loop; snap is valid during the
 * call (take a reference to snap->registry to keep it). */
typedef void (*brix_gw_watch_apply_fn)(void *ud, const brix_ctl_snapshot_t *snap);

/* Starts watching gw->cfg.controller. NULL on ENOMEM. */
brix_gw_watch_t *brix_gw_watch_start(brix_gw_t *gw, brix_gw_watch_apply_fn apply, void *ud);
/* The configured URL or token changed: reconnect with the new ones. */
void brix_gw_watch_reconfigure(brix_gw_watch_t *w);
/* Cancels everything and frees the watch once its handles are closed. */
void brix_gw_watch_stop(brix_gw_watch_t *w);
/* The activity record of a model name (created on first use): a new
 * reference, or NULL on ENOMEM. */
brix_model_activity_t *brix_gw_watch_activity(brix_gw_watch_t *w, const char *name);

#endif
