/*
 * provider — where replicas run. The controller decides how many replicas of
 * which deployment exist and owns their records (brix_replica_t); a provider
 * only makes a record real: start it, stop it, tell when it died. The local
 * provider runs child processes; a Kubernetes provider will create pods
 * through the same four calls.
 */
#ifndef BRIX_CONTROLLER_PROVIDER_H
#define BRIX_CONTROLLER_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "controller/objects.h"

/* Replica phases; what is true in each: */
typedef enum brix_replica_phase {
    BRIX_RP_PENDING,     /* no process; it starts at restart_at_ms (now, or after backoff) */
    BRIX_RP_STARTING,    /* a process runs (pid > 0); /health has not answered 200 yet */
    BRIX_RP_RUNNING,     /* the process answered /health 200 since it started */
    BRIX_RP_FAILED,      /* the process is gone (exit, crash, startup timeout); restarts later */
    BRIX_RP_TERMINATING, /* stop requested; the record goes once the process is gone */
} brix_replica_phase_t;

const char *brix_replica_phase_name(brix_replica_phase_t p);

typedef struct brix_replica {
    char *name;       /* <deployment>-<index>, stable across restarts */
    char *deployment; /* owning ModelDeployment */
    char *model;      /* served model name */
    int index;
    int port;
    char url[64]; /* http://127.0.0.1:PORT */
    brix_labels_t labels;
    brix_replica_phase_t phase;
    bool ready;       /* /health answered 200 on the last check */
    int health_fails; /* consecutive failed checks while running */
    bool health_inflight;
    bool recycle;         /* TERMINATING for a restart (startup timeout, rollout) */
    bool timed_out;       /* the restart is for a startup timeout: back off */
    bool models_again;    /* /v1/models changed while a read was in flight: read again */
    uint64_t start_ticks; /* /proc/PID/stat starttime: the process's identity with pid */
    bool models_inflight;
    int pid;             /* 0 when no process */
    bool adopted;        /* started by an earlier controller; not our child */
    brix_strlist_t argv; /* the command it runs (to recognise it after a restart) */
    char *log_path;
    int64_t generation;  /* deployment generation it was started from */
    uint64_t started_ms; /* monotonic: process start */
    uint64_t started_wall_ms;
    uint64_t restart_at_ms; /* monotonic: PENDING/FAILED → start at this time */
    uint64_t backoff_ms;    /* next restart delay (doubles, capped) */
    int restarts;
    char last_exit[160];     /* why the last process ended */
    brix_strlist_t adapters; /* adapters its own /v1/models lists */
    brix_strlist_t roots;    /* and the path each was loaded from ("root"), same order */
    bool models_known;       /* adapters is from a successful /v1/models */
    /* Scale-down drain: gateways stop routing new requests here (the watch
     * shows phase Draining, ready false) while running streams finish; the
     * process is stopped once it is idle or --drain-timeout passed. */
    bool draining;
    uint64_t drain_since_ms; /* monotonic */
    uint64_t ready_after_ms; /* start → first ready, as this controller saw it (0 = not yet) */
    bool startup_seen;       /* ready_after_ms was counted (autoscaler) */
    void *prov;              /* provider-private state */
} brix_replica_t;

typedef struct brix_provider brix_provider_t;

/* Called on the loop thread when a replica's process is gone. */
typedef void (*brix_provider_exit_fn)(void *ud, brix_replica_t *r, const char *why);

typedef struct brix_provider_ops {
    const char *name;
    /* Starts r for deployment d (r->port, name, labels set by the caller).
     * Sets r->pid, argv, log_path. 0 or -1 with err. */
    int (*start)(brix_provider_t *p, brix_replica_t *r, const brix_obj_t *d, char *err,
                 size_t errlen);
    /* Asks r's process to stop (SIGTERM, SIGKILL after grace_ms); on_exit runs
     * when it is gone. No-op without a process. */
    void (*stop)(brix_provider_t *p, brix_replica_t *r, uint64_t grace_ms);
    /* Re-attaches to a process recorded by an earlier controller (r->pid, argv
     * from the state file): 0 if it is still that process, else -1. */
    int (*adopt)(brix_provider_t *p, brix_replica_t *r);
    /* Forgets r's provider state (the record is being freed). */
    void (*release)(brix_provider_t *p, brix_replica_t *r);
    void (*close)(brix_provider_t *p);
} brix_provider_ops_t;

struct brix_provider {
    const brix_provider_ops_t *ops;
    uv_loop_t *loop;
    brix_provider_exit_fn on_exit;
    void *ud;
    /* The key replicas require on their /v1 routes, given to each one started
     * as VLLM_API_KEY in its environment (never in argv, which `ps` and the
     * API show); NULL: replicas start without one. Owned by the controller. */
    const char *engine_key;
    /* The brix kvcache members ("HOST:PORT,..."), given to the replicas of
     * deployments with kvCache; NULL or "": no store. Owned by the controller. */
    const char *kvcache_servers;
    const char *kvcache_token_file; /* NULL: the store takes no token */
};

/* The local provider: replicas are child processes of this controller,
 * started in their own session so they survive a controller restart (and are
 * adopted by the next one). self_exe runs `engine-sim` when a deployment has
 * no command template; logs go to log_dir/<replica>.log. */
brix_provider_t *brix_provider_local_new(uv_loop_t *loop, const char *self_exe, const char *log_dir,
                                         brix_provider_exit_fn on_exit, void *ud);

#endif
