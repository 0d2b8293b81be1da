/*
 * KV connector; see kv_connector.h for the contract.
 *
 * Loop side: a load is a job in `inflight` (at most max_inflight) from the
 * lookup until it is delivered to the scheduler, which happens when the
 * thread returned it and its simulated transfer time has passed, or when
 * 2 x timeout_ms passed without an answer (abandoned: the sequence
 * recomputes; the job is freed when the thread hands it back; the thread
 * starts no I/O for a load after timeout_ms). One timer serves both
 * deadlines, re-armed for the earliest. Saves are fire-and-forget jobs, at
 * most max_inflight queued; the thread yields between chunks of a save when
 * a load is waiting, since loads hold requests back and saves hold nothing.
 */
#include "engine_sim/kv_connector.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/secret.h"
#include "core/time.h"
#include "engine_sim/kv_cache.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#define DEFAULT_TIMEOUT_MS   500
#define DEFAULT_GBPS         100.0 /* one 100 GbE link */
#define DEFAULT_MAX_INFLIGHT 64
#define MAX_BLOCK_BYTES      (256ll << 20)
/* The thread moves at most this many bytes per store call (one scratch
 * buffer): a 2 MiB-block engine keeps 16 MiB, whatever the prompt length. */
#define SCRATCH_BYTES (16u << 20)
#define DTYPE         "bfloat16" /* the profiles' model; engine-sim has no --dtype */

/* ------------------------------------------------------------ config -- */

typedef enum key_type {
    K_STR,
    K_INT,
    K_NUM,
    K_BOOL,
    K_IGNORED, /* a vLLM KVTransferConfig field with no meaning here */
} key_type_t;

typedef struct cfg_key {
    const char *name;
    key_type_t type;
    size_t off;
    double min, max;
} cfg_key_t;

#define OFF(f) offsetof(brix_kvc_cfg_t, f)
/* kv_connector_extra_config: brix's keys */
static const cfg_key_t extra_keys[] = {
    { "servers", K_STR, OFF(servers), 1, 0 },
    { "timeout_ms", K_INT, OFF(timeout_ms), 1, 600000 },
    { "block_bytes", K_INT, OFF(block_bytes), 1, (double)MAX_BLOCK_BYTES },
    { "sim_block_bytes", K_INT, OFF(sim_block_bytes), 1, (double)MAX_BLOCK_BYTES },
    { "transfer_gbps", K_NUM, OFF(transfer_gbps), 0, 1e6 },
    { "max_inflight", K_INT, OFF(max_inflight), 1, 4096 },
    { "no_shm", K_BOOL, OFF(no_shm), 0, 0 },
    { "token_file", K_STR, OFF(token_file), 1, 0 },
};
#undef OFF

/* The top level: vLLM's KVTransferConfig (vllm config/kv_transfer.py). The
 * three that matter are parsed by hand; the rest are accepted, unused. */
static const char *const top_keys[] = {
    "kv_connector",
    "kv_role",
    "kv_connector_extra_config",
    "kv_load_failure_policy",
    "engine_id",
    "kv_buffer_device",
    "kv_buffer_size",
    "kv_rank",
    "kv_parallel_size",
    "kv_ip",
    "kv_port",
    "kv_connector_module_path",
    "enable_permute_local_kv",
};

static int check_keys(const cJSON *obj, const char *where, bool (*known)(const char *),
                      brix_json_err_t *je)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (!known(it->string)) {
            brix_json_errf(je, it->string, "unknown key '%s'%s", it->string, where);
            return -1;
        }
        /* the getters read the first of equal keys; say so rather than guess */
        for (const cJSON *prev = obj->child; prev != it; prev = prev->next)
            if (strcmp(prev->string, it->string) == 0) {
                brix_json_errf(je, it->string, "duplicate key '%s'%s", it->string, where);
                return -1;
            }
    }
    return 0;
}

static bool top_known(const char *k)
{
    for (size_t i = 0; i < sizeof top_keys / sizeof *top_keys; i++)
        if (!strcmp(top_keys[i], k))
            return true;
    return false;
}

static bool extra_known(const char *k)
{
    for (size_t i = 0; i < sizeof extra_keys / sizeof *extra_keys; i++)
        if (!strcmp(extra_keys[i].name, k))
            return true;
    return false;
}

static int extra_set(brix_kvc_cfg_t *cfg, const cJSON *obj, const cfg_key_t *k, brix_json_err_t *je)
{
    char *base = (char *)cfg;
    bool present = false;
    switch (k->type) {
    case K_INT:
        return brix_json_get_int(obj, k->name, (int64_t)k->min, (int64_t)k->max, &present,
                                 (int64_t *)(base + k->off), je);
    case K_NUM:
        return brix_json_get_number(obj, k->name, k->min, k->max, &present,
                                    (double *)(base + k->off), je);
    case K_BOOL:
        return brix_json_get_bool(obj, k->name, &present, (bool *)(base + k->off), je);
    case K_STR: {
        const char *s = NULL;
        if (brix_json_get_string(obj, k->name, &present, &s, je))
            return -1;
        if (!present)
            return 0;
        if (!*s) {
            brix_json_errf(je, k->name, "'%s' must not be empty", k->name);
            return -1;
        }
        char **field = (char **)(base + k->off);
        brix_free(*field);
        if (!(*field = brix_strdup(s))) {
            brix_json_errf(je, k->name, "out of memory");
            return -1;
        }
        return 0;
    }
    case K_IGNORED:
        return 0;
    }
    return -1;
}

int brix_kvc_cfg_parse(const char *json, brix_kvc_cfg_t *cfg, char *err, size_t errlen)
{
    brix_json_err_t je = { "", "" };
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = DEFAULT_TIMEOUT_MS;
    cfg->transfer_gbps = DEFAULT_GBPS;
    cfg->max_inflight = DEFAULT_MAX_INFLIGHT;

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json ? json : "", &end, 1);
    if (!root) {
        size_t off = end && json && end >= json ? (size_t)(end - json) : 0;
        snprintf(err, errlen, "kv-transfer-config: invalid JSON at byte offset %zu", off);
        return -1;
    }
    const cJSON *extra = NULL;
    bool present;
    const char *s;
    if (!cJSON_IsObject(root)) {
        brix_json_errf(&je, NULL, "must be a JSON object");
        goto fail;
    }
    if (check_keys(root, "", top_known, &je))
        goto fail;

    if (brix_json_get_string(root, "kv_connector", &present, &s, &je))
        goto fail;
    if (!present) {
        brix_json_errf(&je, "kv_connector", "'kv_connector' is required (\"BrixConnector\")");
        goto fail;
    }
    if (strcmp(s, "BrixConnector") != 0) {
        brix_json_errf(&je, "kv_connector",
                       "unknown kv_connector \"%s\" (engine-sim has \"BrixConnector\")", s);
        goto fail;
    }
    if (brix_json_get_string(root, "kv_role", &present, &s, &je))
        goto fail;
    if (!present) {
        /* as vLLM: a connector needs a role */
        brix_json_errf(&je, "kv_role",
                       "'kv_role' is required: kv_both, kv_producer or kv_consumer");
        goto fail;
    }
    if (!strcmp(s, "kv_both"))
        cfg->role = BRIX_KVC_BOTH;
    else if (!strcmp(s, "kv_producer"))
        cfg->role = BRIX_KVC_PRODUCER;
    else if (!strcmp(s, "kv_consumer"))
        cfg->role = BRIX_KVC_CONSUMER;
    else {
        brix_json_errf(&je, "kv_role",
                       "unknown kv_role \"%s\" (kv_both, kv_producer or kv_consumer)", s);
        goto fail;
    }
    if (brix_json_get_string(root, "kv_load_failure_policy", &present, &s, &je))
        goto fail;
    if (present && strcmp(s, "recompute") != 0) {
        /* vLLM's "fail" fails the request; brix promises a store never does */
        brix_json_errf(&je, "kv_load_failure_policy",
                       "kv_load_failure_policy \"%s\" is not supported (only \"recompute\")", s);
        goto fail;
    }

    extra = cJSON_GetObjectItemCaseSensitive(root, "kv_connector_extra_config");
    if (!extra || cJSON_IsNull(extra)) {
        brix_json_errf(&je, "kv_connector_extra_config",
                       "'kv_connector_extra_config' with \"servers\" is required");
        goto fail;
    }
    if (!cJSON_IsObject(extra)) {
        brix_json_errf(&je, "kv_connector_extra_config",
                       "'kv_connector_extra_config' must be an object");
        goto fail;
    }
    if (check_keys(extra, " in kv_connector_extra_config", extra_known, &je))
        goto fail;
    for (size_t i = 0; i < sizeof extra_keys / sizeof *extra_keys; i++)
        if (extra_set(cfg, extra, &extra_keys[i], &je))
            goto fail;
    if (!cfg->servers) {
        brix_json_errf(&je, "servers",
                       "'servers' (\"HOST:PORT[,HOST:PORT...]\") is required in "
                       "kv_connector_extra_config");
        goto fail;
    }
    cJSON_Delete(root);
    return 0;

fail:
    snprintf(err, errlen, "kv-transfer-config: %s", je.msg);
    cJSON_Delete(root);
    brix_kvc_cfg_free(cfg);
    return -1;
}

void brix_kvc_cfg_free(brix_kvc_cfg_t *cfg)
{
    brix_free(cfg->servers);
    brix_free(cfg->token_file);
    cfg->servers = cfg->token_file = NULL;
}

const char *brix_kvc_fail_name(brix_kvc_fail_t f)
{
    static const char *const names[BRIX_KVC_FAIL_N] = {
        "timeout", "unavailable", "not_found", "stale", "checksum", "refused", "busy", "other",
    };
    return f < BRIX_KVC_FAIL_N ? names[f] : "other";
}

/* ---------------------------------------------------- block contents -- */

/* A block is the arithmetic sequence of 64-bit words seed, seed + STEP,
 * seed + 2 STEP... (host byte order; a little-endian store, see proto.h),
 * seed = XXH64(key, namespace). Not random, and it need not be: the reader
 * recomputes every word and compares, so any wrong byte is caught, another
 * key's block differs from its first word, and a shifted copy differs
 * everywhere. An add per word keeps fill and check at memory speed (a mixing
 * generator ran at ~1 GB/s: 250 ms for a 2000-token prompt of 2 MiB blocks,
 * longer than the prefill the load replaces). */
#define FILL_STEP 0x9e3779b97f4a7c15ull

static uint64_t block_seed(const brixkv_key_t *key, uint64_t ns_hash)
{
    return XXH64(key->b, sizeof key->b, ns_hash);
}

void brix_kvc_fill(void *buf, size_t len, const brixkv_key_t *key, uint64_t ns_hash)
{
    uint8_t *p = buf;
    uint64_t w = block_seed(key, ns_hash);
    size_t i = 0;
    for (; i + 32 <= len; i += 32, w += 4 * FILL_STEP) {
        uint64_t v[4] = { w, w + FILL_STEP, w + 2 * FILL_STEP, w + 3 * FILL_STEP };
        memcpy(p + i, v, 32);
    }
    for (; i + 8 <= len; i += 8, w += FILL_STEP)
        memcpy(p + i, &w, 8);
    if (i < len)
        memcpy(p + i, &w, len - i);
}

bool brix_kvc_verify(const void *buf, size_t len, const brixkv_key_t *key, uint64_t ns_hash)
{
    const uint8_t *p = buf;
    uint64_t w = block_seed(key, ns_hash), diff = 0;
    size_t i = 0;
    /* no early exit: a wrong block is the rare case, a branch per word the
     * common cost */
    /* four independent lanes: the adds and compares of a 32-byte stride
     * overlap (one chain ran at half the speed) */
    for (; i + 32 <= len; i += 32, w += 4 * FILL_STEP) {
        uint64_t v[4];
        memcpy(v, p + i, 32);
        diff |= (v[0] ^ w) | (v[1] ^ (w + FILL_STEP)) | (v[2] ^ (w + 2 * FILL_STEP)) |
                (v[3] ^ (w + 3 * FILL_STEP));
    }
    for (; i + 8 <= len; i += 8, w += FILL_STEP) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        diff |= v ^ w;
    }
    if (i < len) {
        uint8_t tail[8];
        memcpy(tail, &w, 8);
        diff |= (uint64_t)memcmp(p + i, tail, len - i);
    }
    return diff == 0;
}

/* --------------------------------------------------------------- jobs -- */

typedef enum job_kind { JOB_LOAD, JOB_SAVE } job_kind_t;

typedef struct kvc_job {
    struct kvc_job *next;          /* thread queue or done list */
    struct kvc_job *lprev, *lnext; /* loop: the inflight list (loads) */
    job_kind_t kind;
    size_t n;
    uint64_t deadline_ns; /* the thread starts no I/O for a load after this */
    uint64_t abandon_ns;  /* the loop stops waiting for it (one call later) */
    /* results, written by the thread */
    size_t matched; /* LOAD: the store's longest stored prefix */
    size_t ok;      /* LOAD: leading blocks loaded and verified; SAVE: stored */
    size_t done;    /* SAVE: keys handled so far (a save yields to loads) */
    bool failed;    /* LOAD: stopped short of matched, or the match was cut */
    brix_kvc_fail_t fail;
    bool outage;   /* a node was down, slow or refused us (for the log) */
    char why[160]; /* the client's words for it */
    uint64_t checksum_errors;
    uint32_t members, members_up, members_shm; /* after the job */
    /* loop state */
    brix_seq_t *seq; /* NULL once cancelled or abandoned */
    size_t from;
    uint64_t submit_ns, ready_ns;
    bool returned, delivered, in_list;
    brixkv_key_t keys[];
} kvc_job_t;

struct brix_kvc {
    brix_kvc_cfg_t cfg;
    brix_kvc_env_t env;
    brix_sched_kv_t hooks;
    uint64_t block_bytes;
    uint64_t sim_block_bytes; /* the modelled block, for the transfer time */
    uint64_t ns_hash;
    brix_kvc_stats_t st;
    char *model;

    /* thread-owned once started */
    brixkv_t *client;
    uint8_t *scratch;
    size_t scratch_blocks;
    void **bufs;
    size_t *caps, *lens;
    brixkv_status_t *sts;
    const void **vals;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    kvc_job_t *loads_head, *loads_tail, *saves_head, *saves_tail;
    kvc_job_t *done_head, *done_tail;
    bool stop;

    /* loop */
    uv_async_t async;
    uv_timer_t timer;
    int handles_open;
    kvc_job_t *inflight; /* loads not yet delivered (doubly linked via lprev/lnext) */
    size_t ninflight;
    size_t saves_queued;  /* save jobs handed to the thread and not yet back */
    kvc_job_t *abandoned; /* delivered before the thread returned them (list via lnext) */
    bool store_down;      /* the last load failed for want of a node (logged once) */
};

static void push(kvc_job_t **head, kvc_job_t **tail, kvc_job_t *j)
{
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static kvc_job_t *pop(kvc_job_t **head, kvc_job_t **tail)
{
    kvc_job_t *j = *head;
    if (j) {
        *head = j->next;
        if (!*head)
            *tail = NULL;
        j->next = NULL;
    }
    return j;
}

static brix_kvc_fail_t fail_of(brixkv_status_t st)
{
    switch (st) {
    case BRIXKV_ST_TIMEOUT:
        return BRIX_KVC_FAIL_TIMEOUT;
    case BRIXKV_ST_UNAVAILABLE:
        return BRIX_KVC_FAIL_UNAVAILABLE;
    case BRIXKV_ST_NAMESPACE:
    case BRIXKV_ST_DENIED:
        return BRIX_KVC_FAIL_REFUSED;
    case BRIXKV_ST_NOT_FOUND:
        return BRIX_KVC_FAIL_NOT_FOUND;
    case BRIXKV_ST_STALE:
        return BRIX_KVC_FAIL_STALE;
    case BRIXKV_ST_SHORT_BUFFER:
        return BRIX_KVC_FAIL_CHECKSUM; /* a value of the wrong size is not our block */
    default:
        return BRIX_KVC_FAIL_OTHER;
    }
}

/* ------------------------------------------------------------- thread -- */

static void run_load(brix_kvc_t *c, kvc_job_t *j)
{
    if (brix_now_ns() >= j->deadline_ns) {
        j->failed = true;
        j->fail = BRIX_KVC_FAIL_TIMEOUT;
        return;
    }
    brixkv_client_stats_t a, b;
    brixkv_client_stats(c->client, &a);
    size_t m = brixkv_match_prefix(c->client, j->keys, j->n);
    brixkv_client_stats(c->client, &b);
    j->matched = m;
    /* The prefix may have ended at a node that failed (or refused us), not
     * at a miss: that is a failure to count, not a plain miss. */
    if (m < j->n && b.timeouts > a.timeouts) {
        j->failed = true;
        j->fail = BRIX_KVC_FAIL_TIMEOUT;
    } else if (m < j->n && (b.unavailable > a.unavailable ||
                            !brixkv_member_up(c->client, brixkv_owner(c->client, &j->keys[m])))) {
        /* which failure: a node backing off answers a get at once with its
         * status (UNAVAILABLE, or NAMESPACE / DENIED when it refused us) */
        j->failed = true;
        c->bufs[0] = c->scratch;
        c->caps[0] = c->block_bytes;
        brixkv_mget(c->client, &j->keys[m], 1, c->bufs, c->caps, c->lens, c->sts);
        j->fail = c->sts[0] == BRIXKV_ST_OK ? BRIX_KVC_FAIL_UNAVAILABLE : fail_of(c->sts[0]);
    }
    size_t ok = 0;
    bool out_of_time = false; /* our own bound, not the store's failure */
    while (ok < m) {
        if (brix_now_ns() >= j->deadline_ns) {
            /* what is loaded is used; the rest of the prompt is computed */
            j->failed = out_of_time = true;
            j->fail = BRIX_KVC_FAIL_TIMEOUT;
            break;
        }
        size_t k = m - ok < c->scratch_blocks ? m - ok : c->scratch_blocks;
        for (size_t i = 0; i < k; i++) {
            c->bufs[i] = c->scratch + i * c->block_bytes;
            c->caps[i] = c->block_bytes;
            c->lens[i] = 0;
        }
        brixkv_mget(c->client, j->keys + ok, k, c->bufs, c->caps, c->lens, c->sts);
        size_t i = 0;
        for (; i < k; i++) {
            if (c->sts[i] != BRIXKV_ST_OK) {
                j->failed = true;
                j->fail = fail_of(c->sts[i]);
                if (c->sts[i] == BRIXKV_ST_SHORT_BUFFER)
                    j->checksum_errors++; /* longer than our blocks: not ours */
                break;
            }
            if (c->lens[i] != c->block_bytes ||
                !brix_kvc_verify(c->bufs[i], c->lens[i], &j->keys[ok + i], c->ns_hash)) {
                j->checksum_errors++;
                j->failed = true;
                j->fail = BRIX_KVC_FAIL_CHECKSUM;
                break;
            }
        }
        ok += i;
        if (i < k)
            break; /* this block and every later one are recomputed */
    }
    j->ok = ok;
    if (j->failed && !out_of_time &&
        (j->fail == BRIX_KVC_FAIL_TIMEOUT || j->fail == BRIX_KVC_FAIL_UNAVAILABLE ||
         j->fail == BRIX_KVC_FAIL_REFUSED)) {
        j->outage = true;
        snprintf(j->why, sizeof j->why, "%s", brixkv_last_error(c->client));
    }
}

/* Returns false when the save yielded to a waiting load or to close (j->done
 * tells how far it got) and must be queued again. */
static bool run_save(brix_kvc_t *c, kvc_job_t *j)
{
    while (j->done < j->n) {
        size_t k = j->n - j->done < c->scratch_blocks ? j->n - j->done : c->scratch_blocks;
        for (size_t i = 0; i < k; i++) {
            uint8_t *buf = c->scratch + i * c->block_bytes;
            brix_kvc_fill(buf, c->block_bytes, &j->keys[j->done + i], c->ns_hash);
            c->vals[i] = buf;
            c->lens[i] = c->block_bytes;
        }
        j->ok += brixkv_mput(c->client, j->keys + j->done, k, c->vals, c->lens, c->sts);
        for (size_t i = 0; i < k && !j->outage; i++) {
            brixkv_status_t st = c->sts[i];
            if (st == BRIXKV_ST_UNAVAILABLE || st == BRIXKV_ST_TIMEOUT ||
                st == BRIXKV_ST_NAMESPACE || st == BRIXKV_ST_DENIED) {
                j->outage = true;
                snprintf(j->why, sizeof j->why, "%s", brixkv_last_error(c->client));
            }
        }
        j->done += k;
        if (j->done < j->n) {
            /* a waiting load goes first; a closing engine does not wait
             * for the rest of a long save (it is dropped, counted) */
            pthread_mutex_lock(&c->mu);
            bool yield = c->loads_head != NULL || c->stop;
            pthread_mutex_unlock(&c->mu);
            if (yield)
                return false;
        }
    }
    return true;
}

static void *thread_main(void *arg)
{
    brix_kvc_t *c = arg;
    /* connect (HELLO, and map a same-host node's arena) before the first
     * request needs it, as vLLM's connectors do at start: a lazy first
     * lookup would charge that request the set-up. A node that is down now
     * is tried again by the first call that needs it. */
    for (size_t i = 0; i < brixkv_nmembers(c->client); i++) {
        brixkv_stats_t st;
        (void)brixkv_stats(c->client, i, &st);
    }
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && !c->loads_head && !c->saves_head)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        kvc_job_t *j = pop(&c->loads_head, &c->loads_tail);
        if (!j)
            j = pop(&c->saves_head, &c->saves_tail);
        pthread_mutex_unlock(&c->mu);
        bool finished = true;
        if (j->kind == JOB_LOAD)
            run_load(c, j);
        else
            finished = run_save(c, j);
        pthread_mutex_lock(&c->mu);
        if (!finished) {
            /* back to the front of the saves: it keeps its order */
            j->next = c->saves_head;
            c->saves_head = j;
            if (!c->saves_tail)
                c->saves_tail = j;
            continue;
        }
        /* members' state for /metrics (the client is this thread's) */
        size_t nm = brixkv_nmembers(c->client);
        j->members = (uint32_t)nm;
        for (size_t i = 0; i < nm; i++) {
            j->members_up += brixkv_member_up(c->client, i);
            j->members_shm += brixkv_member_shm(c->client, i);
        }
        push(&c->done_head, &c->done_tail, j);
        uv_async_send(&c->async);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void submit(brix_kvc_t *c, kvc_job_t *j)
{
    pthread_mutex_lock(&c->mu);
    if (j->kind == JOB_LOAD)
        push(&c->loads_head, &c->loads_tail, j);
    else
        push(&c->saves_head, &c->saves_tail, j);
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* --------------------------------------------------------------- loop -- */

static void list_add(brix_kvc_t *c, kvc_job_t *j)
{
    j->lprev = NULL;
    j->lnext = c->inflight;
    if (c->inflight)
        c->inflight->lprev = j;
    c->inflight = j;
    j->in_list = true;
    c->ninflight++;
}

static void list_del(brix_kvc_t *c, kvc_job_t *j)
{
    if (j->lprev)
        j->lprev->lnext = j->lnext;
    else
        c->inflight = j->lnext;
    if (j->lnext)
        j->lnext->lprev = j->lprev;
    j->lprev = j->lnext = NULL;
    j->in_list = false;
    c->ninflight--;
}

/* Hands a load's outcome to the scheduler (n usable blocks) and frees a slot. */
static void deliver(brix_kvc_t *c, kvc_job_t *j, size_t n, uint64_t now)
{
    list_del(c, j);
    j->delivered = true;
    c->st.wait_seconds += (double)(now - j->submit_ns) / 1e9 / c->env.time_scale;
    if (j->seq) {
        brix_sched_kv_ready(c->env.sched, j->seq, j->from, n);
        j->seq = NULL;
    }
}

static void arm(brix_kvc_t *c);
static void note_outage(brix_kvc_t *c, bool outage, bool clean, const char *why);

/* Delivers every load whose time has come: returned and past its simulated
 * transfer time, or unanswered past timeout_ms (abandoned). */
static void sweep(brix_kvc_t *c)
{
    uint64_t now = brix_now_ns();
    bool any = false;
    for (kvc_job_t *j = c->inflight, *next; j; j = next) {
        next = j->lnext;
        if (j->returned && now >= j->ready_ns) {
            deliver(c, j, j->ok, now);
            brix_free(j);
            any = true;
        } else if (!j->returned && now >= j->abandon_ns) {
            c->st.loads++;
            c->st.load_failures[BRIX_KVC_FAIL_TIMEOUT]++;
            char why[64];
            snprintf(why, sizeof why, "a load took over %lld ms",
                     (long long)(2 * c->cfg.timeout_ms));
            note_outage(c, true, false, why);
            deliver(c, j, 0, now);
            j->lnext = c->abandoned; /* the thread still has it */
            c->abandoned = j;
            any = true;
        }
    }
    arm(c);
    if (any && c->env.kick)
        c->env.kick(c->env.ud);
}

static void on_timer(uv_timer_t *t)
{
    sweep(t->data);
}

static void arm(brix_kvc_t *c)
{
    uint64_t next = UINT64_MAX;
    for (kvc_job_t *j = c->inflight; j; j = j->lnext) {
        uint64_t at = j->returned ? j->ready_ns : j->abandon_ns;
        if (at < next)
            next = at;
    }
    if (next == UINT64_MAX) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = brix_now_ns();
    uint64_t ms = next > now ? (next - now + 999999) / 1000000 : 0;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void unlink_abandoned(brix_kvc_t *c, kvc_job_t *j)
{
    for (kvc_job_t **pp = &c->abandoned; *pp; pp = &(*pp)->lnext)
        if (*pp == j) {
            *pp = j->lnext;
            return;
        }
}

/* One log line per outage, not one per request: the first job that met a
 * node down, slow or refusing us, and the first clean one after. */
static void note_outage(brix_kvc_t *c, bool outage, bool clean, const char *why)
{
    if (outage && !c->store_down) {
        /* the client's words name the node; without them, name the list */
        if (why && *why)
            BRIX_WARN("KV store: %s; requests recompute what they cannot load, saves are lost",
                      why);
        else
            BRIX_WARN("KV store %s: unavailable; requests recompute what they cannot load, saves "
                      "are lost",
                      c->cfg.servers);
        c->store_down = true;
    } else if (clean && !outage && c->store_down) {
        BRIX_INFO("KV store %s answers again", c->cfg.servers);
        c->store_down = false;
    }
}

static void on_done(uv_async_t *a)
{
    brix_kvc_t *c = a->data;
    pthread_mutex_lock(&c->mu);
    kvc_job_t *list = c->done_head;
    c->done_head = c->done_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    uint64_t now = brix_now_ns();
    for (kvc_job_t *j = list, *next; j; j = next) {
        next = j->next;
        c->st.members = j->members;
        c->st.members_up = j->members_up;
        c->st.members_shm = j->members_shm;
        if (j->kind == JOB_SAVE) {
            c->saves_queued--;
            c->st.blocks_saved += j->ok;
            c->st.bytes_saved += j->ok * c->block_bytes;
            c->st.save_failures += j->n - j->ok;
            note_outage(c, j->outage, j->ok == j->n, j->why);
            brix_free(j);
            continue;
        }
        if (j->delivered) { /* abandoned: the request went on without it */
            unlink_abandoned(c, j);
            brix_free(j);
            continue;
        }
        j->returned = true;
        c->st.loads++;
        c->st.blocks_loaded += j->ok;
        c->st.bytes_loaded += j->ok * c->block_bytes;
        c->st.checksum_errors += j->checksum_errors;
        if (j->failed)
            c->st.load_failures[j->fail]++;
        note_outage(c, j->outage, !j->failed, j->why);
        /* the request waits max(real I/O, bytes / bandwidth) in wall time */
        double xfer_ns = c->cfg.transfer_gbps > 0 ? (double)(j->ok * c->sim_block_bytes) * 8.0 /
                                                        c->cfg.transfer_gbps * c->env.time_scale
                                                  : 0;
        uint64_t floor_ns = j->submit_ns + (uint64_t)xfer_ns;
        j->ready_ns = floor_ns > now ? floor_ns : now;
    }
    sweep(c);
}

/* --------------------------------------------------------------- hooks -- */

static brixkv_key_t key_of(const brix_seq_t *q, size_t i)
{
    brixkv_key_t k = brixkv_key_u64(q->hashes[i]);
    if (q->lora) {
        /* An adapter's numeric id (in the chain hash) is per engine, in load
         * order: two engines may give one id to different adapters. The
         * adapter's name in the key's upper half keeps their blocks apart. */
        uint64_t h = XXH64(q->lora->name, strlen(q->lora->name), 0);
        for (int b = 0; b < 8; b++)
            k.b[8 + b] = (uint8_t)(h >> (8 * b));
    }
    return k;
}

static kvc_job_t *job_new(job_kind_t kind, const brix_seq_t *q, size_t from, size_t to)
{
    size_t n = to - from;
    kvc_job_t *j = brix_calloc(1, sizeof *j + n * sizeof(brixkv_key_t));
    if (!j)
        return NULL;
    j->kind = kind;
    j->n = n;
    j->from = from;
    for (size_t i = 0; i < n; i++)
        j->keys[i] = key_of(q, from + i);
    return j;
}

static int hook_lookup(brix_seq_t *q, size_t from, size_t to, void *ud)
{
    brix_kvc_t *c = ud;
    if (from >= to) {
        c->st.queries_tokens += q->ntokens;
        return 0; /* the local cache has all a cache could give */
    }
    if (c->ninflight >= (size_t)c->cfg.max_inflight) {
        /* Saturated: the request is computed now rather than held until a
         * load slot frees. Deferring it (the scheduler's -EAGAIN) let an
         * overloaded engine skip the same requests step after step: in the
         * Mooncake run at 3x pace some waited past the gateway's idle
         * timeout and failed. A store that is slow costs recompute. */
        c->st.queries_tokens += q->ntokens;
        c->st.load_failures[BRIX_KVC_FAIL_BUSY]++;
        return 0;
    }
    kvc_job_t *j = job_new(JOB_LOAD, q, from, to);
    if (!j)
        return 0; /* ENOMEM: recompute */
    c->st.queries_tokens += q->ntokens;
    j->seq = q;
    j->submit_ns = brix_now_ns();
    /* The thread loads what it can in timeout_ms (a prefix: the rest is
     * computed); a call it started just before may take timeout_ms more
     * (the client's bound), after which the loop gives up on the job. */
    j->deadline_ns = j->submit_ns + (uint64_t)c->cfg.timeout_ms * 1000000u;
    j->abandon_ns = j->deadline_ns + (uint64_t)c->cfg.timeout_ms * 1000000u;
    q->kv_job = j;
    list_add(c, j);
    submit(c, j);
    arm(c);
    return 1;
}

static void hook_cancel(brix_seq_t *q, void *ud)
{
    (void)ud;
    kvc_job_t *j = q->kv_job;
    if (j)
        j->seq = NULL; /* delivered to nobody; its slot frees when it ends */
    q->kv_job = NULL;
}

static void hook_admitted(brix_seq_t *q, size_t ext_blocks, void *ud)
{
    brix_kvc_t *c = ud;
    (void)q;
    c->st.hits_tokens += ext_blocks * c->env.block_size;
}

static void hook_save(brix_seq_t *q, size_t from, size_t to, void *ud)
{
    brix_kvc_t *c = ud;
    if (c->saves_queued >= (size_t)c->cfg.max_inflight) {
        c->st.save_dropped += to - from; /* best effort: never queue without bound */
        return;
    }
    kvc_job_t *j = job_new(JOB_SAVE, q, from, to);
    if (!j) {
        c->st.save_dropped += to - from;
        return;
    }
    c->saves_queued++;
    submit(c, j);
}

/* ------------------------------------------------------------ set-up -- */

static void free_buffers(brix_kvc_t *c)
{
    brix_free(c->scratch);
    brix_free(c->bufs);
    brix_free(c->caps);
    brix_free(c->lens);
    brix_free(c->sts);
    brix_free(c->vals);
    brix_free(c->model);
    brix_kvc_cfg_free(&c->cfg);
}

/* The nodes' token from a file, read by brix's one reader of credential
 * files (as `brix kvcache --token-file` and the controller read theirs): a
 * file, not a flag, so it never shows in the process list. */
static int read_token(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    char *tok = NULL, e[256];
    if (brix_secret_read_file(path, &tok, e, sizeof e)) {
        snprintf(err, errlen, "kv-transfer-config: token_file: %s", e);
        return -1;
    }
    size_t n = strlen(tok);
    int rc = 0;
    if (n >= cap) {
        snprintf(err, errlen, "kv-transfer-config: token_file %s: longer than %zu bytes", path,
                 cap - 1);
        rc = -1;
    } else {
        memcpy(out, tok, n + 1);
    }
    explicit_bzero(tok, n);
    brix_free(tok);
    return rc;
}

brix_kvc_t *brix_kvc_new(const brix_kvc_cfg_t *cfg, const brix_kvc_env_t *env, char *err,
                         size_t errlen)
{
    brix_kvc_t *c = brix_calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->cfg = *cfg;
    c->cfg.servers = brix_strdup(cfg->servers);
    c->cfg.token_file = NULL; /* read once below, not kept */
    c->env = *env;
    c->model = brix_strdup(env->model);
    c->sim_block_bytes = cfg->sim_block_bytes
                             ? (uint64_t)cfg->sim_block_bytes
                             : (uint64_t)BRIX_KVC_BYTES_PER_TOKEN * env->block_size;
    c->block_bytes = cfg->block_bytes ? (uint64_t)cfg->block_bytes : c->sim_block_bytes;
    c->scratch_blocks = SCRATCH_BYTES / c->block_bytes;
    if (c->scratch_blocks < 1)
        c->scratch_blocks = 1;
    size_t sb = c->scratch_blocks;
    c->scratch = brix_malloc(sb * c->block_bytes);
    c->bufs = brix_calloc(sb, sizeof *c->bufs);
    c->caps = brix_calloc(sb, sizeof *c->caps);
    c->lens = brix_calloc(sb, sizeof *c->lens);
    c->sts = brix_calloc(sb, sizeof *c->sts);
    c->vals = brix_calloc(sb, sizeof *c->vals);
    if (!c->cfg.servers || !c->model || !c->scratch || !c->bufs || !c->caps || !c->lens ||
        !c->sts || !c->vals) {
        snprintf(err, errlen, "out of memory for the KV connector");
        goto fail;
    }
    char layout[32];
    snprintf(layout, sizeof layout, "paged-%u", env->block_size);
    /* The namespace hash seeds the block contents: the same key in another
     * model or layout must not verify. */
    char nsbuf[512];
    int nl = snprintf(nsbuf, sizeof nsbuf, "%s|%s|%s|1/0", c->model, DTYPE, layout);
    c->ns_hash = XXH64(nsbuf, nl > 0 ? (size_t)nl : 0, BRIX_KV_ROOT_HASH);

    brixkv_opts_t o = {
        .servers = c->cfg.servers,
        .timeout_ms = (int)c->cfg.timeout_ms,
        .connect_timeout_ms = c->cfg.timeout_ms < 200 ? (int)c->cfg.timeout_ms : 200,
        .retry_ms = 1000,
        .no_shm = c->cfg.no_shm,
    };
    brixkv_ns_t ns = {
        .model = c->model,
        .dtype = DTYPE,
        .layout = layout,
        .tp_size = 1,
        .tp_rank = 0,
        .hash_seed = BRIX_KV_ROOT_HASH, /* a constant root: every engine chains alike */
        .seed_deterministic = true,
        .block_bytes = (uint32_t)c->block_bytes,
        .client = "brix engine-sim",
    };
    char token[256] = "";
    if (cfg->token_file && read_token(cfg->token_file, token, sizeof token, err, errlen))
        goto fail;
    if (token[0])
        ns.token = token;
    char cerr[256] = "";
    c->client = brixkv_open(&o, &ns, cerr, sizeof cerr);
    explicit_bzero(token, sizeof token);
    if (!c->client) {
        snprintf(err, errlen, "kv-transfer-config: servers: %s", cerr[0] ? cerr : "refused");
        goto fail;
    }
    if (pthread_mutex_init(&c->mu, NULL) || pthread_cond_init(&c->cv, NULL)) {
        snprintf(err, errlen, "kv connector: cannot create a lock");
        goto fail; /* (never happens with default attributes) */
    }
    uv_async_init(env->loop, &c->async, on_done);
    uv_timer_init(env->loop, &c->timer);
    c->async.data = c->timer.data = c;
    c->handles_open = 2;
    /* Signals (SIGTERM's drain, SIGPIPE) are the loop's business: the thread
     * starts with all of them blocked, so none lands on it mid-call. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int trc = pthread_create(&c->thread, NULL, thread_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (trc) {
        snprintf(err, errlen, "kv connector: cannot start its thread");
        brix_kvc_close(c);
        return NULL;
    }
    c->thread_started = true;

    c->hooks.ud = c;
    if (c->cfg.role != BRIX_KVC_PRODUCER) {
        c->hooks.lookup = hook_lookup;
        c->hooks.cancel = hook_cancel;
        c->hooks.admitted = hook_admitted;
    }
    if (c->cfg.role != BRIX_KVC_CONSUMER)
        c->hooks.save = hook_save;
    return c;

fail:
    if (c->client)
        brixkv_close(c->client);
    free_buffers(c);
    brix_free(c);
    return NULL;
}

static void on_handle_closed(uv_handle_t *h)
{
    brix_kvc_t *c = h->data;
    if (--c->handles_open == 0) {
        free_buffers(c);
        brix_free(c);
    }
}

void brix_kvc_close(brix_kvc_t *c)
{
    if (!c)
        return;
    if (c->thread_started) {
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thread, NULL); /* at most the call it is in: timeout_ms */
        c->thread_started = false;
    }
    /* Every job is on exactly one list now: a queue, done, inflight (loads
     * not returned sit in a queue too), abandoned. Free each once. */
    kvc_job_t *lists[] = { c->loads_head, c->saves_head, c->done_head };
    for (size_t i = 0; i < 3; i++)
        for (kvc_job_t *j = lists[i], *next; j; j = next) {
            next = j->next;
            if (j->kind == JOB_SAVE) {
                c->st.save_dropped += j->n - j->done;
            } else if (j->in_list) {
                list_del(c, j); /* its sequence is never looked at again */
            } else if (j->delivered) {
                unlink_abandoned(c, j);
            }
            brix_free(j);
        }
    c->loads_head = c->saves_head = c->done_head = NULL;
    /* inflight jobs left were returned and are waiting out their transfer */
    while (c->inflight) {
        kvc_job_t *j = c->inflight;
        list_del(c, j);
        brix_free(j);
    }
    if (c->client) {
        brixkv_close(c->client);
        c->client = NULL;
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    uv_close((uv_handle_t *)&c->async, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

const brix_sched_kv_t *brix_kvc_sched_hooks(brix_kvc_t *c)
{
    return &c->hooks;
}

const brix_kvc_stats_t *brix_kvc_stats(const brix_kvc_t *c)
{
    return &c->st;
}

uint64_t brix_kvc_block_bytes(const brix_kvc_t *c)
{
    return c->block_bytes;
}
