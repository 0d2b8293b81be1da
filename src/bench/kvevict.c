/*
 * kvevict — `brix bench --scenario kvevict`: how many prefix blocks a
 * `brix kvcache` node's eviction policies keep useful on real traces
 * (issue 14: "eviction hit rate on the Mooncake traces at 5–40 % capacity
 * >= LRU's").
 *
 * Each trace (Mooncake FAST'25 JSONL: hash_ids = chained 512-token blocks)
 * is replayed request by request, in file order, through a real node as an
 * engine would use it: match_prefix(hash_ids) gives the stored prefix, mget
 * reads those blocks (their leading OK run are the hits), and mput stores the
 * rest (a stored one is EXISTS, which refreshes it). Values are --value-size
 * bytes stamped with their block id, so a wrong block read back is counted.
 * The node's capacity is a fraction of the trace's unique blocks; one fresh
 * node per (trace, capacity, policy). Beside the node, the same replay runs
 * in-process against exact LRU caches of the same number of blocks (touched
 * in request order, and in reverse so parents outlive their children) and an
 * infinite cache (the upper bound), so the node's numbers have references
 * that do not depend on its watermarks or slot overheads.
 */
#include "bench/bench.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/time.h"
#include "kvcache/brixkv.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_FRACS    8
#define MAX_POLICIES 6
#define MAX_TRACES   4
#define CHUNK        128 /* keys per client call */

typedef struct trace {
    char name[64];
    uint64_t *ids; /* every request's hash_ids, concatenated */
    size_t *off;   /* request i is ids[off[i] .. off[i+1]) */
    size_t nreq, nids, nuniq, maxlen;
} trace_t;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ---- an open-addressing map id -> u32 (the LRU sims and unique counts) ---- */

typedef struct idmap {
    uint64_t *k;
    uint32_t *v;
    size_t cap; /* power of two; key 0 is stored as id+1 so 0 means empty */
} idmap_t;

static int idmap_init(idmap_t *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 16)
        m->cap <<= 1;
    m->k = brix_calloc(m->cap, sizeof *m->k);
    m->v = brix_calloc(m->cap, sizeof *m->v);
    return m->k && m->v ? 0 : -1;
}

static void idmap_free(idmap_t *m)
{
    brix_free(m->k);
    brix_free(m->v);
}

static size_t idmap_slot(const idmap_t *m, uint64_t id)
{
    uint64_t key = id + 1;
    size_t i = (size_t)mix64(key) & (m->cap - 1);
    while (m->k[i] && m->k[i] != key)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static uint32_t *idmap_get(idmap_t *m, uint64_t id)
{
    size_t i = idmap_slot(m, id);
    return m->k[i] ? &m->v[i] : NULL;
}

static void idmap_put(idmap_t *m, uint64_t id, uint32_t v)
{
    size_t i = idmap_slot(m, id);
    m->k[i] = id + 1;
    m->v[i] = v;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void idmap_del(idmap_t *m, uint64_t id)
{
    size_t i = idmap_slot(m, id);
    if (!m->k[i])
        return;
    size_t j = i;
    for (;;) {
        m->k[i] = 0;
        for (;;) {
            j = (j + 1) & (m->cap - 1);
            if (!m->k[j])
                return;
            size_t h = (size_t)mix64(m->k[j]) & (m->cap - 1);
            /* move j back to i unless its home lies cyclically in (i, j] */
            if (i <= j ? (i < h && h <= j) : (i < h || h <= j))
                continue;
            break;
        }
        m->k[i] = m->k[j];
        m->v[i] = m->v[j];
        i = j;
    }
}

/* ---- the trace ---------------------------------------------------------- */

static int trace_load(const char *path, trace_t *t, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    const char *b = strrchr(path, '/');
    snprintf(t->name, sizeof t->name, "%s", b ? b + 1 : path);
    char *dot = strstr(t->name, ".jsonl");
    if (dot)
        *dot = '\0';
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t capi = 1 << 16, capr = 1 << 12, lineno = 0;
    t->ids = brix_malloc(capi * sizeof *t->ids);
    t->off = brix_malloc((capr + 1) * sizeof *t->off);
    char *line = NULL;
    size_t lcap = 0;
    ssize_t ll;
    int rc = t->ids && t->off ? 0 : -1;
    if (!rc)
        t->off[0] = 0;
    while (!rc && (ll = getline(&line, &lcap, f)) > 0) {
        lineno++;
        if (ll <= 1)
            continue;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)ll);
        const cJSON *ids = j ? cJSON_GetObjectItemCaseSensitive(j, "hash_ids") : NULL;
        if (!cJSON_IsArray(ids)) {
            snprintf(err, errlen, "%s:%zu: expected an object with hash_ids", path, lineno);
            cJSON_Delete(j);
            rc = -1;
            break;
        }
        size_t n = (size_t)cJSON_GetArraySize(ids);
        if (t->nids + n > capi) {
            while (t->nids + n > capi)
                capi *= 2;
            uint64_t *v = brix_realloc(t->ids, capi * sizeof *v);
            if (!v) {
                cJSON_Delete(j);
                rc = -1;
                break;
            }
            t->ids = v;
        }
        const cJSON *x;
        cJSON_ArrayForEach(x, ids)
        {
            t->ids[t->nids++] = cJSON_IsNumber(x) ? (uint64_t)x->valuedouble : 0;
        }
        cJSON_Delete(j);
        if (t->nreq + 1 == capr) {
            size_t *v = brix_realloc(t->off, (2 * capr + 1) * sizeof *v);
            if (!v) {
                rc = -1;
                break;
            }
            t->off = v;
            capr *= 2;
        }
        t->off[++t->nreq] = t->nids;
        t->maxlen = n > t->maxlen ? n : t->maxlen;
    }
    free(line); /* getline's buffer comes from libc */
    fclose(f);
    if (!rc && !t->nreq) {
        snprintf(err, errlen, "%s: no requests", path);
        rc = -1;
    }
    idmap_t u;
    if (!rc && !idmap_init(&u, t->nids)) {
        for (size_t i = 0; i < t->nids; i++) {
            if (!idmap_get(&u, t->ids[i])) {
                idmap_put(&u, t->ids[i], 1);
                t->nuniq++;
            }
        }
        idmap_free(&u);
    } else if (!rc) {
        rc = -1;
    }
    return rc;
}

static void trace_free(trace_t *t)
{
    brix_free(t->ids);
    brix_free(t->off);
}

/* ---- in-process references ---------------------------------------------- */

/* Exact LRU of cap blocks. Per request: the leading run present is the hit;
 * then every block is touched (present) or inserted (absent), in request
 * order or, with reverse, last block first so the root ends most recent. */
static double sim_lru(const trace_t *t, size_t cap, bool reverse)
{
    idmap_t m;
    uint64_t *id = brix_malloc((cap + 1) * sizeof *id);
    uint32_t *prev = brix_malloc((cap + 1) * sizeof *prev),
             *next = brix_malloc((cap + 1) * sizeof *next);
    if (!id || !prev || !next || idmap_init(&m, cap + 1)) {
        brix_free(id);
        brix_free(prev);
        brix_free(next);
        return NAN;
    }
    /* node 0 is the list head (sentinel); 1..cap are slots */
    prev[0] = next[0] = 0;
    size_t used = 0, hits = 0;
#define UNLINK(x) (next[prev[x]] = next[x], prev[next[x]] = prev[x])
#define PUSH(x)   (next[x] = next[0], prev[x] = 0, prev[next[0]] = x, next[0] = x)
    for (size_t r = 0; r < t->nreq; r++) {
        const uint64_t *ids = t->ids + t->off[r];
        size_t n = t->off[r + 1] - t->off[r], h = 0;
        while (h < n && idmap_get(&m, ids[h]))
            h++;
        hits += h;
        for (size_t k = 0; k < n; k++) {
            uint64_t b = ids[reverse ? n - 1 - k : k];
            uint32_t *s = idmap_get(&m, b);
            uint32_t x;
            if (s) {
                x = *s;
                UNLINK(x);
            } else if (used < cap) {
                x = (uint32_t)++used;
                id[x] = b;
                idmap_put(&m, b, x);
            } else {
                x = prev[0]; /* the least recent */
                UNLINK(x);
                idmap_del(&m, id[x]);
                id[x] = b;
                idmap_put(&m, b, x);
            }
            PUSH(x);
        }
    }
#undef UNLINK
#undef PUSH
    idmap_free(&m);
    brix_free(id);
    brix_free(prev);
    brix_free(next);
    return (double)hits / (double)t->nids;
}

static double sim_infinite(const trace_t *t)
{
    idmap_t m;
    if (idmap_init(&m, t->nuniq))
        return NAN;
    size_t hits = 0;
    for (size_t r = 0; r < t->nreq; r++) {
        const uint64_t *ids = t->ids + t->off[r];
        size_t n = t->off[r + 1] - t->off[r], h = 0;
        while (h < n && idmap_get(&m, ids[h]))
            h++;
        hits += h;
        for (size_t k = h; k < n; k++)
            if (!idmap_get(&m, ids[k]))
                idmap_put(&m, ids[k], 1);
    }
    idmap_free(&m);
    return (double)hits / (double)t->nids;
}

/* ---- the node ------------------------------------------------------------- */

typedef struct node_res {
    bool ran;
    double hit;
    uint64_t hits, errors, wrong, objects, evictions, cap_blocks;
    double secs;
} node_res_t;

static const char *const *policy_flags(const char *p)
{
    static const char *const prefix[] = { "--eviction", "lru", "--eviction-order", "prefix", NULL };
    static const char *const request[] = { "--eviction", "lru", "--eviction-order", "request",
                                           NULL };
    static const char *const s3fifo[] = { "--eviction", "s3fifo", NULL };
    if (!strcmp(p, "prefix"))
        return prefix;
    if (!strcmp(p, "request"))
        return request;
    if (!strcmp(p, "s3fifo"))
        return s3fifo;
    return NULL;
}

static const char *policy_label(const char *p)
{
    if (!strcmp(p, "prefix"))
        return "lru, prefix order (brix default)";
    if (!strcmp(p, "request"))
        return "lru, request order (plain LRU)";
    if (!strcmp(p, "s3fifo"))
        return "s3fifo";
    return p;
}

static void stamp(void *v, size_t size, uint64_t tag)
{
    memcpy(v, &tag, 8);
    memcpy((char *)v + size - 8, &tag, 8);
}

static int replay_node(const bench_cfg_t *c, const trace_t *t, const char *policy,
                       uint64_t cap_blocks, node_res_t *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    res->cap_blocks = cap_blocks;
    size_t vs = (size_t)c->kv_value;
    char log[1200];
    snprintf(log, sizeof log, "%s/kvcache-%s-%s-%" PRIu64 ".log", c->out, t->name, policy,
             cap_blocks);
    bench_kvnode_t node;
    if (bench_kvnode_start(c, cap_blocks * vs, policy_flags(policy), log, &node, err, errlen))
        return -1;
    brixkv_opts_t o = { .servers = node.addr,
                        .timeout_ms = 10000,
                        .connect_timeout_ms = 2000,
                        .retry_ms = 200,
                        .no_shm = false };
    brixkv_ns_t ns = { .model = "brix-bench-evict",
                       .dtype = "bytes",
                       .layout = "mooncake-512",
                       .tp_size = 1,
                       .hash_seed = 14,
                       .seed_deterministic = true,
                       .block_bytes = (uint32_t)vs,
                       .client = "brix bench kvevict" };
    brixkv_t *k = brixkv_open(&o, &ns, err, errlen);
    size_t m = t->maxlen;
    brixkv_key_t *keys = brix_calloc(m, sizeof *keys);
    void **bufs = brix_calloc(m, sizeof *bufs);
    size_t *lens = brix_calloc(m, sizeof *lens), *caps = brix_calloc(m, sizeof *caps);
    brixkv_status_t *st = brix_calloc(m, sizeof *st);
    int rc = k && keys && bufs && lens && caps && st ? 0 : -1;
    for (size_t i = 0; !rc && i < m; i++) {
        if (!(bufs[i] = brix_malloc(vs)))
            rc = -1;
        else
            memset(bufs[i], 0x5a, vs);
        caps[i] = vs;
    }
    uint64_t t0 = brix_now_ns();
    for (size_t r = 0; !rc && r < t->nreq; r++) {
        const uint64_t *ids = t->ids + t->off[r];
        size_t n = t->off[r + 1] - t->off[r];
        for (size_t i = 0; i < n; i++)
            keys[i] = brixkv_key_u64(mix64(ids[i]));
        /* the stored prefix, CHUNK keys per call */
        size_t h = 0;
        while (h < n) {
            size_t want = n - h < CHUNK ? n - h : CHUNK;
            size_t got = brixkv_match_prefix(k, keys + h, want);
            h += got;
            if (got < want)
                break;
        }
        /* read it (an engine loads what matched); the leading OK run counts */
        size_t ok = 0;
        for (size_t at = 0; at < h; at += CHUNK) {
            size_t cnt = h - at < CHUNK ? h - at : CHUNK;
            brixkv_mget(k, keys + at, cnt, bufs + at, caps + at, lens + at, st + at);
        }
        while (ok < h && st[ok] == BRIXKV_ST_OK) {
            uint64_t a, b, tag = mix64(ids[ok] ^ 0x14);
            memcpy(&a, bufs[ok], 8);
            memcpy(&b, (char *)bufs[ok] + vs - 8, 8);
            if (lens[ok] != vs || a != tag || b != tag) {
                res->wrong++;
                break;
            }
            ok++;
        }
        for (size_t i = ok; i < h; i++)
            if (st[i] != BRIXKV_ST_OK && st[i] != BRIXKV_ST_NOT_FOUND && st[i] != BRIXKV_ST_STALE)
                res->errors++;
        res->hits += ok;
        /* store the rest */
        for (size_t i = ok; i < n; i++) {
            stamp(bufs[i], vs, mix64(ids[i] ^ 0x14));
            lens[i] = vs;
        }
        for (size_t at = ok; at < n; at += CHUNK) {
            size_t cnt = n - at < CHUNK ? n - at : CHUNK;
            brixkv_mput(k, keys + at, cnt, (const void *const *)(bufs + at), lens + at, st + at);
            for (size_t i = at; i < at + cnt; i++)
                if (st[i] != BRIXKV_ST_OK && st[i] != BRIXKV_ST_EXISTS &&
                    st[i] != BRIXKV_ST_NO_SPACE)
                    res->errors++;
        }
        if (res->errors > 1000) {
            snprintf(err, errlen, "more than 1000 errors (see %.400s)", log);
            rc = -1;
        }
    }
    res->secs = (double)(brix_now_ns() - t0) / 1e9;
    brixkv_stats_t s;
    if (k && brixkv_stats(k, 0, &s) == 0) {
        res->objects = s.objects;
        res->evictions = s.evictions;
    }
    if (!rc) {
        res->ran = true;
        res->hit = (double)res->hits / (double)t->nids;
    }
    for (size_t i = 0; bufs && i < m; i++)
        brix_free(bufs[i]);
    brix_free(bufs);
    brix_free(keys);
    brix_free(lens);
    brix_free(caps);
    brix_free(st);
    brixkv_close(k);
    bench_kvnode_stop(&node);
    return rc;
}

/* ---- the scenario ----------------------------------------------------------- */

typedef struct evict_trace {
    trace_t t;
    double bound;
    double sim_req[MAX_FRACS], sim_rev[MAX_FRACS];
    double held_req[MAX_FRACS], held_rev[MAX_FRACS]; /* at the blocks the node held */
    node_res_t node[MAX_POLICIES][MAX_FRACS];
} evict_trace_t;

int bench_kvevict(const bench_cfg_t *c)
{
    double fr[MAX_FRACS];
    int nf = 0, np = 0, nt = 0, rc = 0;
    char *pol[MAX_POLICIES];
    char *fl = brix_strdup(c->kv_capacities), *pl = brix_strdup(c->policies),
         *tl = brix_strdup(c->kv_traces);
    char *paths[MAX_TRACES];
    char err[512];
    evict_trace_t *T = brix_calloc(MAX_TRACES, sizeof *T);
    if (!fl || !pl || !tl || !T) {
        rc = 2;
        goto out;
    }
    for (char *s = strtok(fl, ","); s; s = strtok(NULL, ",")) {
        double f = strtod(s, NULL);
        if (nf == MAX_FRACS || !(f > 0 && f <= 1)) {
            fprintf(stderr,
                    "brix bench: --capacities: '%s' is not a fraction in (0, 1] (at most %d)\n", s,
                    MAX_FRACS);
            rc = 2;
            goto out;
        }
        fr[nf++] = f;
    }
    for (char *s = strtok(pl, ","); s; s = strtok(NULL, ",")) {
        if (np == MAX_POLICIES || !policy_flags(s)) {
            fprintf(stderr, "brix bench: --policies: '%s' is not prefix, request or s3fifo\n", s);
            rc = 2;
            goto out;
        }
        pol[np++] = s;
    }
    for (char *s = strtok(tl, ","); s && nt < MAX_TRACES; s = strtok(NULL, ","))
        paths[nt++] = s;
    if (!nf || !nt) {
        fprintf(stderr, "brix bench: kvevict needs --traces and --capacities\n");
        rc = 2;
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    uint64_t wall0 = brix_now_ms();
    for (int i = 0; i < nt; i++) {
        evict_trace_t *e = &T[i];
        if (trace_load(paths[i], &e->t, err, sizeof err)) {
            fprintf(stderr, "bench: %s\n", err);
            rc = 2;
            goto out;
        }
        e->bound = sim_infinite(&e->t);
        fprintf(stderr,
                "bench: %s: %zu requests, %zu block references, %zu unique; infinite-cache "
                "prefix hit %.3f\n",
                e->t.name, e->t.nreq, e->t.nids, e->t.nuniq, e->bound);
        for (int f = 0; f < nf; f++) {
            size_t cap = (size_t)ceil(fr[f] * (double)e->t.nuniq);
            e->sim_req[f] = sim_lru(&e->t, cap, false);
            e->sim_rev[f] = sim_lru(&e->t, cap, true);
            fprintf(stderr, "bench: %s at %.0f%% (%zu blocks): simulated LRU %.3f, reversed %.3f\n",
                    e->t.name, fr[f] * 100, cap, e->sim_req[f], e->sim_rev[f]);
            for (int p = 0; p < np; p++) {
                node_res_t *nr = &e->node[p][f];
                if (replay_node(c, &e->t, pol[p], (uint64_t)cap, nr, err, sizeof err)) {
                    fprintf(stderr, "bench: %s %s at %.0f%%: %s\n", e->t.name, pol[p], fr[f] * 100,
                            err);
                    rc = 1;
                    continue;
                }
                if (p == 0 && nr->objects) {
                    e->held_req[f] = sim_lru(&e->t, (size_t)nr->objects, false);
                    e->held_rev[f] = sim_lru(&e->t, (size_t)nr->objects, true);
                }
                fprintf(stderr,
                        "bench: %s %-8s at %4.0f%%: node hit %.3f (objects at the end %" PRIu64
                        ", evictions %" PRIu64 ", errors %" PRIu64 ", wrong %" PRIu64 ", %.1f s)\n",
                        e->t.name, pol[p], fr[f] * 100, nr->hit, nr->objects, nr->evictions,
                        nr->errors, nr->wrong, nr->secs);
            }
        }
    }
    /* the report */
    brix_buf_t md = BRIX_BUF_INIT;
    brix_buf_printf(&md,
                    "Prefix hit rate = blocks read back from the store's longest stored prefix / "
                    "all block references, replaying each trace in file order through one fresh "
                    "`brix kvcache` node per cell (%" PRIu64 "-byte values; capacity = the "
                    "fraction of the trace's unique blocks x the value size). %.0f s of wall "
                    "time.\n\n",
                    c->kv_value, (double)(brix_now_ms() - wall0) / 1e3);
    for (int i = 0; i < nt; i++) {
        evict_trace_t *e = &T[i];
        brix_buf_printf(&md,
                        "#### %s (%zu requests, %zu block references, %zu unique blocks; "
                        "infinite cache: %.3f)\n\n| policy |",
                        e->t.name, e->t.nreq, e->t.nids, e->t.nuniq, e->bound);
        for (int f = 0; f < nf; f++)
            brix_buf_printf(&md, " %.0f %% |", fr[f] * 100);
        brix_buf_append_str(&md, "\n|---|");
        for (int f = 0; f < nf; f++)
            brix_buf_append_str(&md, "---|");
        brix_buf_append_str(&md, "\n");
        for (int p = 0; p < np; p++) {
            brix_buf_printf(&md, "| node: %s |", policy_label(pol[p]));
            for (int f = 0; f < nf; f++) {
                node_res_t *nr = &e->node[p][f];
                if (!nr->ran)
                    brix_buf_append_str(&md, " not run |");
                else
                    brix_buf_printf(&md, " %.3f%s |", nr->hit,
                                    nr->wrong || nr->errors ? " (errors)" : "");
            }
            brix_buf_append_str(&md, "\n");
        }
        brix_buf_append_str(&md, "| simulated exact LRU, request order |");
        for (int f = 0; f < nf; f++)
            brix_buf_printf(&md, " %.3f |", e->sim_req[f]);
        brix_buf_append_str(&md, "\n| simulated exact LRU, reversed (root most recent) |");
        for (int f = 0; f < nf; f++)
            brix_buf_printf(&md, " %.3f |", e->sim_rev[f]);
        brix_buf_append_str(&md,
                            "\n| simulated exact LRU at the blocks the node held, request order "
                            "/ reversed |");
        for (int f = 0; f < nf; f++)
            brix_buf_printf(&md, " %.3f / %.3f |", e->held_req[f], e->held_rev[f]);
        brix_buf_append_str(&md, "\n| node: objects held at the end / capacity in blocks |");
        for (int f = 0; f < nf; f++) {
            node_res_t *nr = &e->node[0][f];
            brix_buf_printf(&md, " %" PRIu64 " / %" PRIu64 " |", nr->objects, nr->cap_blocks);
        }
        brix_buf_append_str(&md, "\n\n");
        int ip = -1, ir = -1;
        for (int p = 0; p < np; p++) {
            if (!strcmp(pol[p], "prefix"))
                ip = p;
            if (!strcmp(pol[p], "request"))
                ir = p;
        }
        if (ip >= 0 && ir >= 0) {
            brix_buf_append_str(&md, "Target brix default >= plain LRU:");
            for (int f = 0; f < nf; f++) {
                node_res_t *a = &e->node[ip][f], *b = &e->node[ir][f];
                if (a->ran && b->ran)
                    brix_buf_printf(&md, " %.0f %%: %.3f vs %.3f %s;", fr[f] * 100, a->hit, b->hit,
                                    a->hit >= b->hit ? "met" : "**missed**");
                else
                    brix_buf_printf(&md, " %.0f %%: not run;", fr[f] * 100);
            }
            md.len--;
            brix_buf_append_str(&md, ".\n\n");
        }
    }
    bench_write_results_md(c, &md);
    brix_buf_free(&md);
    char path[1024];
    snprintf(path, sizeof path, "%s/results.json", c->out);
    FILE *o = fopen(path, "w");
    if (o) {
        fprintf(o, "{\"scenario\":\"kvevict\",\"value_size\":%" PRIu64 ",\"traces\":[",
                c->kv_value);
        for (int i = 0; i < nt; i++) {
            evict_trace_t *e = &T[i];
            fprintf(o,
                    "%s{\"name\":\"%s\",\"requests\":%zu,\"refs\":%zu,\"unique\":%zu,"
                    "\"infinite\":%.5f,\"cells\":[",
                    i ? "," : "", e->t.name, e->t.nreq, e->t.nids, e->t.nuniq, e->bound);
            for (int f = 0; f < nf; f++) {
                fprintf(o,
                        "%s{\"fraction\":%g,\"sim_lru\":%.5f,\"sim_lru_reversed\":%.5f,"
                        "\"sim_lru_at_held\":%.5f,\"sim_lru_reversed_at_held\":%.5f,\"node\":{",
                        f ? "," : "", fr[f], e->sim_req[f], e->sim_rev[f], e->held_req[f],
                        e->held_rev[f]);
                for (int p = 0; p < np; p++) {
                    node_res_t *nr = &e->node[p][f];
                    fprintf(o,
                            "%s\"%s\":{\"ran\":%s,\"hit\":%.5f,\"capacity_blocks\":%" PRIu64
                            ",\"objects\":%" PRIu64 ",\"evictions\":%" PRIu64 ",\"errors\":%" PRIu64
                            ",\"wrong\":%" PRIu64 ",\"seconds\":%.2f}",
                            p ? "," : "", pol[p], nr->ran ? "true" : "false", nr->hit,
                            nr->cap_blocks, nr->objects, nr->evictions, nr->errors, nr->wrong,
                            nr->secs);
                }
                fprintf(o, "}}");
            }
            fprintf(o, "]}");
        }
        fprintf(o, "]}\n");
        fclose(o);
    }
    fprintf(stderr, "bench: wrote %s/results.md and results.json\n", c->out);
out:
    for (int i = 0; T && i < nt; i++)
        trace_free(&T[i].t);
    brix_free(T);
    brix_free(fl);
    brix_free(pl);
    brix_free(tl);
    return rc;
}
