/*
 * tenants — users, API keys and RPM/TPM limits for the gateway.
 *
 * A user has a name, a request limit per minute (rpm), a token limit per
 * minute (tpm; 0 = unlimited for either), an optional list of allowed
 * models, a priority class for the fairness queue, and an optional API key
 * kept only as its SHA-256 (hex).
 *
 * Limits are GCRA (the generic cell rate algorithm, a leaky bucket kept as
 * one "theoretical arrival time" per counter): a user may spend its whole
 * minute's budget at once and earns it back continuously at limit/60 s.
 * A request is admitted when one more request fits the RPM bucket and its
 * estimated tokens (prompt estimate + max_tokens, as OpenAI counts them) fit
 * the TPM bucket, and those tokens are reserved at once, so concurrent
 * requests cannot overshoot; when the response ends the difference to the
 * tokens actually used (usage) is charged or refunded. OpenAI's x-ratelimit-* headers are computed from the same state:
 * remaining = what fits now, reset = time until the bucket is full again.
 *
 * Two stores behind one interface:
 *  - memory: one table per process (a mutex; no Redis configured);
 *  - redis:  users and counters in Redis, each check and each charge one
 *            EVALSHA round trip on the worker's own hiredis connection
 *            (libuv adapter), with Redis' clock, so any number of gateway
 *            processes enforce one limit. Keys: PREFIX user:NAME (hash),
 *            PREFIX key:SHA256 -> NAME, PREFIX users (set),
 *            PREFIX rl:NAME ("RT,TT": both GCRA times in µs, expiring).
 * Redis unreachable or slow (--redis-timeout): --redis-failure open admits
 * the request unlimited, closed answers 503; both are logged and counted,
 * and the connection is re-established in the background. Fail-open waives
 * limits only: a request identified by an API key is refused (503) while
 * the key cannot be checked. A user that has a key can only be named by it
 * (not by the user header).
 */
#ifndef BRIX_GATEWAY_TENANTS_H
#define BRIX_GATEWAY_TENANTS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/config.h"

#define BRIX_TN_NAME_MAX   64
#define BRIX_TN_MODELS_MAX 512
#define BRIX_TN_KEYHASH    65 /* hex SHA-256 + NUL */
/* memory store: users the default-limit policy may create unless
 * configured (--max-implicit-users) */
#define BRIX_TN_IMPLICIT_MAX 10000

typedef struct brix_tn_user {
    char name[BRIX_TN_NAME_MAX];
    int64_t rpm, tpm;                 /* 0 = unlimited */
    char models[BRIX_TN_MODELS_MAX];  /* comma-separated; "" = every model */
    int64_t priority;                 /* fairness class: higher first */
    char key_sha256[BRIX_TN_KEYHASH]; /* "" = no key */
} brix_tn_user_t;

typedef struct brix_tn_cfg {
    bool enabled; /* any tenancy at all */
    bool require_key;
    char *redis_host; /* NULL = memory store */
    int redis_port, redis_db;
    char *redis_password; /* NULL = none */
    char *prefix;         /* Redis key prefix, "brix:" */
    bool fail_open;
    uint64_t redis_timeout_ms;
    int64_t default_rpm, default_tpm; /* < 0: unknown users are refused */
    /* memory store: users the default-limit policy may hold at once (0 =
     * BRIX_TN_IMPLICIT_MAX). When all are taken, the least recently admitted
     * one with nothing in flight and full buckets is dropped (it holds
     * nothing a newcomer would not get); when none is, the newcomer gets
     * BRIX_TN_RPM with retry_us. In Redis an implicit user is only its
     * counter key, which expires once its buckets are full again. */
    int64_t max_implicit;
    brix_tn_user_t *users; /* from config */
    size_t nusers;
} brix_tn_cfg_t;

/* Parses "NAME[:rpm=N,tpm=N,models=A|B,priority=N,key=KEY|key-sha256=HEX]".
 * Returns 0, or -1 with err. */
int brix_tn_parse_user(const char *spec, brix_tn_user_t *u, char *err, size_t errlen);
/* Parses redis://[:PASSWORD@]HOST[:PORT][/DB] into cfg. rediss:// (TLS) is
 * refused: Debian 12's hiredis 0.14 has no TLS. */
int brix_tn_parse_redis_url(const char *url, brix_tn_cfg_t *cfg, char *err, size_t errlen);
void brix_tn_cfg_free(brix_tn_cfg_t *cfg);

/* Hex SHA-256 of a key. */
void brix_tn_key_hash(const char *key, size_t len, char out[BRIX_TN_KEYHASH]);
/* A new random key "sk-brix-" + 43 base64url characters (256 bits). */
int brix_tn_new_key(char *out, size_t outlen);
/* Constant-time string comparison (for keys and key hashes). */
bool brix_tn_ct_equal(const char *a, const char *b);
/* Formats a duration like OpenAI's reset headers: "20ms", "1.5s", "6m0s". */
void brix_tn_fmt_reset(uint64_t us, char *out, size_t outlen);

/* ---------------------------------------------------------------- checks -- */

typedef enum brix_tn_status {
    BRIX_TN_OK,
    BRIX_TN_ANONYMOUS,  /* no user named and no key required: not limited */
    BRIX_TN_NO_KEY,     /* 401: a key is required and none was given */
    BRIX_TN_BAD_KEY,    /* 401: no user has this key */
    BRIX_TN_NO_USER,    /* 401: the user header names nobody */
    BRIX_TN_KEY_NEEDED, /* 401: the user header names a user that has a key */
    BRIX_TN_MODEL,      /* 403: the user may not use this model */
    BRIX_TN_RPM,        /* 429 */
    BRIX_TN_TPM,        /* 429 */
    BRIX_TN_STORE_DOWN, /* 503 (fail-closed) */
    BRIX_TN_STORE_OPEN, /* store unreachable, admitted (fail-open) */
} brix_tn_status_t;

typedef struct brix_tn_decision {
    brix_tn_status_t status;
    char user[BRIX_TN_NAME_MAX];
    int64_t rpm, tpm, priority;
    int64_t rpm_remaining, tpm_remaining;
    uint64_t rpm_reset_us, tpm_reset_us; /* until the bucket is full again */
    uint64_t retry_us;                   /* 429: until the request would fit */
    int64_t est_tokens;
    const char *detail; /* store failure reason */
} brix_tn_decision_t;

typedef struct brix_tn brix_tn_t;           /* process-wide */
typedef struct brix_tn_conn brix_tn_conn_t; /* one per worker loop */
typedef struct brix_tn_op brix_tn_op_t;     /* an outstanding check or admin call */

typedef void (*brix_tn_check_cb)(void *ud, const brix_tn_decision_t *d);

brix_tn_t *brix_tn_new(const brix_tn_cfg_t *cfg, char *err, size_t errlen);
void brix_tn_free(brix_tn_t *tn);
bool brix_tn_uses_redis(const brix_tn_t *tn);
const brix_tn_cfg_t *brix_tn_cfg(const brix_tn_t *tn);

/* Worker side (call on the worker's loop). */
brix_tn_conn_t *brix_tn_conn_new(brix_tn_t *tn, uv_loop_t *loop);
/* Closes the connection; outstanding operations are answered as failures. */
void brix_tn_conn_free(brix_tn_conn_t *c);
bool brix_tn_conn_up(const brix_tn_conn_t *c);
/* This connection writes the configured users to Redis on every connect
 * (one per process: the control loop's). */
void brix_tn_conn_seed(brix_tn_conn_t *c);

/*
 * Decides on a request: `bearer` is the Authorization bearer token or NULL,
 * `user` the user header or NULL. With a key required, only the key counts.
 * Without, a key that starts with "sk-brix-" names its user and any other
 * bearer is ignored; else the user header names the user; else anonymous.
 * cb may run before this returns (memory store, anonymous, bad input);
 * otherwise it runs later on the loop, unless brix_tn_cancel() is called
 * first. Returns the operation handle (NULL when cb already ran).
 */
brix_tn_op_t *brix_tn_check(brix_tn_conn_t *c, const char *bearer, const char *user,
                            const char *model, int64_t est_tokens, brix_tn_check_cb cb, void *ud);
/* The callback will not run; the operation's memory is reclaimed later. */
void brix_tn_cancel(brix_tn_op_t *op);
/* The end of a request that was admitted (BRIX_TN_OK): call it exactly once
 * per such request, with tokens 0 when nothing is to be settled. Charges
 * (tokens > 0) or refunds (< 0) the difference between what the request used
 * and what its admission reserved (fire and forget), and ends its in-flight
 * count (an implicit user in flight is never evicted). */
void brix_tn_charge(brix_tn_conn_t *c, const char *user, int64_t tpm, int64_t tokens);

/* ----------------------------------------------------------------- admin -- */

typedef enum brix_tn_admin_op {
    BRIX_TN_CREATE,      /* fails if the user exists */
    BRIX_TN_CREATE_KEEP, /* AIBrix CreateUser: an existing user is kept as is */
    BRIX_TN_GET,
    BRIX_TN_UPDATE, /* fields in `set` only */
    BRIX_TN_DELETE,
    BRIX_TN_ROTATE, /* new key */
    BRIX_TN_UPSERT, /* config seeding */
    BRIX_TN_LIST,
} brix_tn_admin_op_t;

enum { BRIX_TN_SET_RPM = 1, BRIX_TN_SET_TPM = 2, BRIX_TN_SET_MODELS = 4, BRIX_TN_SET_PRIO = 8 };

typedef enum brix_tn_admin_rc {
    BRIX_TN_ADMIN_OK,
    BRIX_TN_ADMIN_EXISTS,
    BRIX_TN_ADMIN_NOT_FOUND,
    BRIX_TN_ADMIN_FAILED, /* store unreachable */
} brix_tn_admin_rc_t;

/* users: one for single-user operations, all for LIST; key_sha256 is never
 * filled in answers. */
typedef void (*brix_tn_admin_cb)(void *ud, brix_tn_admin_rc_t rc, const brix_tn_user_t *users,
                                 size_t n, const char *detail);

/* u->key_sha256 set: the new key hash (CREATE, ROTATE, UPSERT). */
brix_tn_op_t *brix_tn_admin(brix_tn_conn_t *c, brix_tn_admin_op_t op, const brix_tn_user_t *u,
                            unsigned set, brix_tn_admin_cb cb, void *ud);

/* Memory store only: applies the configured users (start-up and reload). */
void brix_tn_seed_memory(brix_tn_t *tn);

/* Tests: the memory store reads its clock (monotonic ns) from fn instead of
 * brix_now_ns(); NULL restores it. */
typedef uint64_t (*brix_tn_clock_fn)(void *ud);
void brix_tn_set_clock(brix_tn_t *tn, brix_tn_clock_fn fn, void *ud);

/* Counters for /metrics (all threads). */
typedef struct brix_tn_stats {
    uint64_t store_errors, store_timeouts, fail_open, fail_closed, reconnects;
    uint64_t implicit_evicted; /* idle implicit users dropped to make room */
    uint64_t implicit_refused; /* new implicit users refused: all in use */
    uint64_t key_compares;     /* key hashes compared (tests: lookups do not scan) */
    int64_t implicit_users;    /* memory store: implicit users held now */
    int conns_up;              /* worker connections to Redis that are up */
} brix_tn_stats_t;
void brix_tn_stats(const brix_tn_t *tn, brix_tn_stats_t *out);

#endif
