/*
 * kvstore — `brix bench --scenario kvstore`: the brixkv store against
 * redis-server, in the same run, from one load generator (issue 14).
 *
 * For each value size it starts a fresh redis-server (no persistence,
 * allkeys-lru at twice the cold set) and a fresh `brix kvcache` node (the
 * same capacity, a UNIX socket for the same-host path), preloads the same
 * cold set into both (--cold-set bytes of values: larger than the CPU caches,
 * so GETs read memory, not cache), and measures their memory per payload
 * byte. Then every cell — op (GET of random cold keys, PUT of new keys) x
 * path (redis over TCP and over its UNIX socket, brixkv over TCP, brixkv's
 * shared-memory path) x client threads — runs closed-loop for --duration
 * seconds, --repeat times; GETs first (PUTs evict the cold set). A request
 * carries --batch keys (redis: GET / MGET / pipelined SETs; brixkv: mget /
 * mput); its latency is recorded per request; throughput counts payload
 * bytes and keys. Every GET checks the tags stamped in the first and last 8
 * bytes of the value, so a path returning wrong bytes cannot look fast.
 * Results: results.md (tables, ratios against redis, the targets)
 * and results.json under --out.
 */
#include "bench/bench.h"

#include "bench/resp.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/time.h"
#include "kvcache/brixkv.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZES   4
#define MAX_THREADS 4 /* entries of --threads */
#define MAX_REPEAT  16
#define MAX_CLIENTS 64

enum { P_REDIS_TCP, P_REDIS_UNIX, P_BRIX_TCP, P_BRIX_SHM, P_N };
static const char *const path_name[P_N] = { "redis-tcp", "redis-unix", "brixkv-tcp", "brixkv-shm" };
enum { OP_GET, OP_PUT, OP_N };
static const char *const op_name[OP_N] = { "GET", "PUT" };

/* ---- shared helpers ---------------------------------------------------- */

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rss_bytes(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    uint64_t kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = strtoull(line + 6, NULL, 10);
    fclose(f);
    return kb * 1024;
}

static void loadavg(char *out, size_t n)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double a = 0, b = 0, c = 0;
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &a, &b, &c) != 3)
            a = b = c = 0;
        fclose(f);
    }
    snprintf(out, n, "%.2f %.2f %.2f", a, b, c);
}

static void cpu_model(char *out, size_t n)
{
    snprintf(out, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) {
                p += 2;
                p[strcspn(p, "\n")] = '\0';
                snprintf(out, n, "%s", p);
            }
            break;
        }
    }
    if (f)
        fclose(f);
}

int bench_kvnode_start(const bench_cfg_t *c, uint64_t capacity, const char *const *extra,
                       const char *log, bench_kvnode_t *n, char *err, size_t errlen)
{
    memset(n, 0, sizeof *n);
    n->port = bench_free_port();
    n->http_port = bench_free_port();
    static int seq;
    snprintf(n->unix_path, sizeof n->unix_path, "/tmp/brix-kvbench-%d-%d.sock", (int)getpid(),
             seq++);
    unlink(n->unix_path);
    snprintf(n->addr, sizeof n->addr, "127.0.0.1:%d", n->port);
    char http[16], cap[32];
    snprintf(http, sizeof http, "%d", n->http_port);
    snprintf(cap, sizeof cap, "%" PRIu64, capacity);
    const char *argv[96];
    int a = 0;
    argv[a++] = c->brix_bin;
    argv[a++] = "kvcache";
    argv[a++] = "--listen";
    argv[a++] = n->addr;
    argv[a++] = "--http-port";
    argv[a++] = http;
    argv[a++] = "--capacity";
    argv[a++] = cap;
    argv[a++] = "--unix";
    argv[a++] = n->unix_path;
    for (int i = 0; extra && extra[i] && a < 60; i++)
        argv[a++] = extra[i];
    char *more = c->kvcache_args ? brix_strdup(c->kvcache_args) : NULL;
    for (char *t = more ? strtok(more, " ") : NULL; t && a < 94; t = strtok(NULL, " "))
        argv[a++] = t;
    argv[a] = NULL;
    n->pid = bench_spawn(argv, log);
    brix_free(more);
    if (n->pid < 0) {
        snprintf(err, errlen, "cannot start %s kvcache: %s", c->brix_bin, strerror(errno));
        return -1;
    }
    /* the arena is preallocated (and may be prefaulted): allow for it */
    for (int i = 0; i < 600; i++) {
        if (bench_http(n->http_port, NULL, "GET", "/healthz", NULL, NULL, 0, NULL) == 200)
            return 0;
        if (waitpid(n->pid, NULL, WNOHANG) == n->pid) {
            n->pid = 0;
            break;
        }
        sleep_ms(50);
    }
    snprintf(err, errlen, "brix kvcache did not become healthy (see %s)", log);
    bench_kvnode_stop(n);
    return -1;
}

void bench_kvnode_stop(bench_kvnode_t *n)
{
    if (n->pid > 0)
        bench_stop(n->pid, 10);
    n->pid = 0;
    if (n->unix_path[0])
        unlink(n->unix_path);
}

/* ---- one size's servers ------------------------------------------------- */

typedef struct kv_env {
    const bench_cfg_t *c;
    size_t size, nkeys;
    bool redis_ok, kv_ok;
    pid_t redis_pid;
    int redis_port;
    char redis_sock[108];
    bench_kvnode_t node;
    uint64_t cell_seq; /* makes PUT keys unique across cells */
} kv_env_t;

static uint64_t tag_of(size_t size, uint64_t idx)
{
    return mix64(((uint64_t)size << 40) ^ idx);
}

static void redis_key(char *out, size_t n, size_t size, uint64_t idx)
{
    snprintf(out, n, "bk%zu:%" PRIu64, size, idx);
}

static brixkv_key_t brix_key(size_t size, uint64_t idx)
{
    return brixkv_key_u64(tag_of(size, idx));
}

static void stamp(void *v, size_t size, uint64_t tag)
{
    memcpy(v, &tag, 8);
    memcpy((char *)v + size - 8, &tag, 8);
}

static bool tag_ok(const void *v, size_t size, uint64_t tag)
{
    uint64_t a, b;
    memcpy(&a, v, 8);
    memcpy(&b, (const char *)v + size - 8, 8);
    return a == tag && b == tag;
}

static brixkv_t *brix_open(const kv_env_t *e, bool no_shm, char *err, size_t errlen)
{
    brixkv_opts_t o = { .servers = e->node.addr,
                        .timeout_ms = 10000,
                        .connect_timeout_ms = 2000,
                        .retry_ms = 200,
                        .no_shm = no_shm };
    brixkv_ns_t ns = { .model = "brix-bench",
                       .dtype = "bytes",
                       .layout = "kvstore",
                       .tp_size = 1,
                       .tp_rank = 0,
                       .hash_seed = 14,
                       .seed_deterministic = true,
                       .block_bytes = (uint32_t)e->size,
                       .client = "brix bench kvstore" };
    return brixkv_open(&o, &ns, err, errlen);
}

static int redis_start(kv_env_t *e, const char *dir, char *err, size_t errlen)
{
    const bench_cfg_t *c = e->c;
    e->redis_port = bench_free_port();
    snprintf(e->redis_sock, sizeof e->redis_sock, "/tmp/brix-kvbench-%d-redis.sock", (int)getpid());
    unlink(e->redis_sock);
    char port[16], mm[32], log[600];
    snprintf(port, sizeof port, "%d", e->redis_port);
    snprintf(mm, sizeof mm, "%" PRIu64, 2 * c->kv_cold_set + (64u << 20));
    snprintf(log, sizeof log, "%s/redis-%zu.log", dir, e->size);
    /* what the issue asks: no persistence; LRU eviction so the PUT cells
     * evict like brixkv does instead of failing at maxmemory */
    const char *argv[] = { c->redis_server,
                           "--port",
                           port,
                           "--bind",
                           "127.0.0.1",
                           "--save",
                           "",
                           "--appendonly",
                           "no",
                           "--maxmemory",
                           mm,
                           "--maxmemory-policy",
                           "allkeys-lru",
                           "--unixsocket",
                           e->redis_sock,
                           "--unixsocketperm",
                           "700",
                           "--daemonize",
                           "no",
                           NULL };
    e->redis_pid = bench_spawn(argv, log);
    if (e->redis_pid < 0) {
        snprintf(err, errlen, "cannot start %s: %s", c->redis_server, strerror(errno));
        return -1;
    }
    for (int i = 0; i < 200; i++) {
        resp_conn_t r;
        char out[64];
        const char *ping[] = { "PING" };
        if (!resp_connect_tcp(&r, e->redis_port, 1000) &&
            !resp_command(&r, out, sizeof out, 1, ping)) {
            resp_close(&r);
            return 0;
        }
        resp_close(&r);
        if (waitpid(e->redis_pid, NULL, WNOHANG) == e->redis_pid) {
            e->redis_pid = 0;
            break;
        }
        sleep_ms(50);
    }
    snprintf(err, errlen, "redis-server did not answer PING (see %.400s)", log);
    return -1;
}

static void env_stop(kv_env_t *e)
{
    if (e->redis_pid > 0)
        bench_stop(e->redis_pid, 10);
    e->redis_pid = 0;
    unlink(e->redis_sock);
    bench_kvnode_stop(&e->node);
}

/* ---- memory per payload byte -------------------------------------------- */

typedef struct kv_mem {
    size_t size, nkeys;
    double payload;
    /* redis */
    double r_used_delta, r_rss_delta, r_memory_usage; /* bytes */
    /* brixkv */
    double k_used, k_payload, k_capacity, k_objects, k_rss_delta;
    bool have_redis, have_kv;
} kv_mem_t;

static uint64_t info_field(const char *info, const char *name)
{
    const char *p = strstr(info, name);
    return p ? strtoull(p + strlen(name), NULL, 10) : 0;
}

static int redis_used_memory(int port, uint64_t *used)
{
    resp_conn_t r;
    static char info[16384];
    const char *cmd[] = { "INFO", "memory" };
    int rc = resp_connect_tcp(&r, port, 5000);
    if (!rc)
        rc = resp_command(&r, info, sizeof info, 2, cmd);
    resp_close(&r);
    *used = rc ? 0 : info_field(info, "\nused_memory:");
    return rc;
}

/* Preloads keys [0, nkeys) into redis, values stamped with their tags. */
static int redis_preload(kv_env_t *e, char *err, size_t errlen)
{
    size_t per = e->size >= (1u << 20) ? 4 : 64;
    resp_conn_t r;
    int rc = resp_connect_tcp(&r, e->redis_port, 30000);
    void **vals = brix_calloc(per, sizeof *vals);
    char(*keys)[48] = brix_calloc(per, sizeof *keys);
    const char **kp = brix_calloc(per, sizeof *kp);
    for (size_t i = 0; vals && i < per; i++)
        if (!(vals[i] = brix_malloc(e->size)))
            rc = -ENOMEM;
    if (!vals || !keys || !kp)
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i < e->nkeys; i += per) {
        size_t n = e->nkeys - i < per ? e->nkeys - i : per;
        for (size_t k = 0; k < n; k++) {
            memset(vals[k], (int)(i + k) & 0xff, e->size);
            stamp(vals[k], e->size, tag_of(e->size, i + k));
            redis_key(keys[k], sizeof keys[k], e->size, i + k);
            kp[k] = keys[k];
        }
        rc = resp_set(&r, kp, n, (const void *const *)vals, e->size);
    }
    if (rc)
        snprintf(err, errlen, "redis preload: %s %s", strerror(-rc), r.err);
    for (size_t i = 0; vals && i < per; i++)
        brix_free(vals[i]);
    brix_free(vals);
    brix_free(keys);
    brix_free(kp);
    resp_close(&r);
    return rc ? -1 : 0;
}

static int kv_preload(kv_env_t *e, char *err, size_t errlen)
{
    size_t per = e->size >= (1u << 20) ? 4 : 64;
    brixkv_t *k = brix_open(e, true, err, errlen);
    if (!k)
        return -1;
    void **vals = brix_calloc(per, sizeof *vals);
    size_t *lens = brix_calloc(per, sizeof *lens);
    brixkv_key_t *keys = brix_calloc(per, sizeof *keys);
    brixkv_status_t *st = brix_calloc(per, sizeof *st);
    int rc = vals && lens && keys && st ? 0 : -1;
    for (size_t i = 0; !rc && i < per; i++)
        if (!(vals[i] = brix_malloc(e->size)))
            rc = -1;
    for (size_t i = 0; !rc && i < e->nkeys; i += per) {
        size_t n = e->nkeys - i < per ? e->nkeys - i : per;
        for (size_t j = 0; j < n; j++) {
            memset(vals[j], (int)(i + j) & 0xff, e->size);
            stamp(vals[j], e->size, tag_of(e->size, i + j));
            keys[j] = brix_key(e->size, i + j);
            lens[j] = e->size;
        }
        size_t ok = brixkv_mput(k, keys, n, (const void *const *)vals, lens, st);
        if (ok != n) {
            snprintf(err, errlen, "brixkv preload: key %zu: %s", i,
                     brixkv_status_str(st[0] ? st[0] : st[n - 1]));
            rc = -1;
        }
    }
    for (size_t i = 0; vals && i < per; i++)
        brix_free(vals[i]);
    brix_free(vals);
    brix_free(lens);
    brix_free(keys);
    brix_free(st);
    brixkv_close(k);
    return rc;
}

static void measure_memory(kv_env_t *e, kv_mem_t *m, char *err, size_t errlen, const char *dir)
{
    (void)dir;
    memset(m, 0, sizeof *m);
    m->size = e->size;
    m->nkeys = e->nkeys;
    m->payload = (double)e->size * (double)e->nkeys;
    if (e->redis_ok) {
        uint64_t u0 = 0, u1 = 0, r0 = rss_bytes(e->redis_pid);
        redis_used_memory(e->redis_port, &u0);
        if (redis_preload(e, err, errlen)) {
            fprintf(stderr, "bench: %s\n", err);
            e->redis_ok = false;
        } else {
            redis_used_memory(e->redis_port, &u1);
            m->r_used_delta = (double)u1 - (double)u0;
            m->r_rss_delta = (double)rss_bytes(e->redis_pid) - (double)r0;
            resp_conn_t r;
            char key[48], out[64];
            redis_key(key, sizeof key, e->size, e->nkeys / 2);
            const char *cmd[] = { "MEMORY", "USAGE", key };
            if (!resp_connect_tcp(&r, e->redis_port, 5000) &&
                !resp_command(&r, out, sizeof out, 3, cmd))
                m->r_memory_usage = strtod(out, NULL);
            resp_close(&r);
            m->have_redis = true;
        }
    }
    if (e->kv_ok) {
        uint64_t r0 = rss_bytes(e->node.pid);
        if (kv_preload(e, err, errlen)) {
            fprintf(stderr, "bench: %s\n", err);
            e->kv_ok = false;
        } else {
            (void)r0;
            m->k_rss_delta = (double)rss_bytes(e->node.pid); /* the arena is preallocated */
            brixkv_t *k = brix_open(e, true, err, errlen);
            brixkv_stats_t st;
            if (k && brixkv_stats(k, 0, &st) == 0) {
                m->k_used = (double)st.used_bytes;
                m->k_payload = (double)st.payload_bytes;
                m->k_capacity = (double)st.capacity_bytes;
                m->k_objects = (double)st.objects;
                m->have_kv = true;
            }
            brixkv_close(k);
        }
    }
}

/* ---- one cell: op x path x threads for duration seconds ------------------ */

typedef struct kv_res {
    bool ran;
    double gbps, ops_s, req_s, p50, p99, p999; /* latencies in µs */
    uint64_t errors, misses, wrong;
    bool shm; /* brixkv-shm: every client really used the mapping */
} kv_res_t;

typedef struct kv_thread {
    kv_env_t *e;
    int path, op, tid;
    size_t batch;
    double duration;
    uint64_t seq;
    pthread_barrier_t *bar;
    pthread_t th;
    /* out */
    uint64_t t_start, t_end, keys, bytes, errors, misses, wrong;
    float *lat;
    size_t nlat, cap;
    bool shm;
    int setup_rc;
    char err[200];
} kv_thread_t;

static void lat_push(kv_thread_t *t, double us)
{
    if (t->nlat == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 4096;
        float *v = brix_realloc(t->lat, cap * sizeof *v);
        if (!v)
            return;
        t->lat = v;
        t->cap = cap;
    }
    t->lat[t->nlat++] = (float)us;
}

static void *kv_thread_main(void *arg)
{
    kv_thread_t *t = arg;
    kv_env_t *e = t->e;
    size_t b = t->batch, size = e->size;
    bool redis = t->path == P_REDIS_TCP || t->path == P_REDIS_UNIX;
    resp_conn_t r = { .fd = -1 };
    brixkv_t *k = NULL;
    void **bufs = brix_calloc(b, sizeof *bufs);
    size_t *lens = brix_calloc(b, sizeof *lens), *caps = brix_calloc(b, sizeof *caps);
    char(*rkeys)[48] = brix_calloc(b, sizeof *rkeys);
    const char **rkp = brix_calloc(b, sizeof *rkp);
    brixkv_key_t *keys = brix_calloc(b, sizeof *keys);
    brixkv_status_t *st = brix_calloc(b, sizeof *st);
    uint64_t *idx = brix_calloc(b, sizeof *idx);
    int rc = bufs && lens && caps && rkeys && rkp && keys && st && idx ? 0 : -ENOMEM;
    for (size_t i = 0; !rc && i < b; i++) {
        /* touched once so page faults are not timed */
        if (!(bufs[i] = brix_malloc(size)))
            rc = -ENOMEM;
        else
            memset(bufs[i], 0x11, size);
        caps[i] = size;
        rkp[i] = rkeys[i];
    }
    if (!rc && redis) {
        rc = t->path == P_REDIS_TCP ? resp_connect_tcp(&r, e->redis_port, 10000)
                                    : resp_connect_unix(&r, e->redis_sock, 10000);
        if (rc)
            snprintf(t->err, sizeof t->err, "redis connect: %s", strerror(-rc));
    } else if (!rc) {
        k = brix_open(e, t->path == P_BRIX_TCP, t->err, sizeof t->err);
        if (!k) {
            rc = -EINVAL;
        } else {
            /* connect (and map the arena) before the clock starts */
            brixkv_key_t k0 = brix_key(size, 0);
            brixkv_match_prefix(k, &k0, 1);
            if (!brixkv_member_up(k, 0)) {
                rc = -ECONNREFUSED;
                snprintf(t->err, sizeof t->err, "brixkv: node %s not up", e->node.addr);
            }
            t->shm = brixkv_member_shm(k, 0);
        }
    }
    t->setup_rc = rc;
    pthread_barrier_wait(t->bar);
    if (rc)
        goto out;
    uint64_t rng = mix64(((uint64_t)t->tid << 32) ^ t->seq ^ brix_now_ns());
    uint64_t put_next = ((t->seq + 1) << 40) | ((uint64_t)t->tid << 32);
    t->t_start = brix_now_ns();
    uint64_t deadline = t->t_start + (uint64_t)(t->duration * 1e9);
    for (;;) {
        uint64_t now = brix_now_ns();
        if (now >= deadline)
            break;
        for (size_t i = 0; i < b; i++) {
            if (t->op == OP_GET) {
                rng = mix64(rng);
                idx[i] = rng % e->nkeys;
            } else {
                idx[i] = put_next++;
                stamp(bufs[i], size, tag_of(size, idx[i]));
                lens[i] = size;
            }
            if (redis)
                redis_key(rkeys[i], sizeof rkeys[i], size, idx[i]);
            else
                keys[i] = brix_key(size, idx[i]);
        }
        uint64_t t0 = brix_now_ns();
        size_t good = 0;
        if (redis) {
            int x = t->op == OP_GET ? resp_get(&r, rkp, b, bufs, size, lens)
                                    : resp_set(&r, rkp, b, (const void *const *)bufs, size);
            if (x) {
                t->errors += b;
                snprintf(t->err, sizeof t->err, "redis: %s %s", strerror(-x), r.err);
                break; /* the connection's state is unknown */
            }
            for (size_t i = 0; i < b; i++) {
                if (t->op == OP_PUT)
                    good++;
                else if (lens[i] == SIZE_MAX)
                    t->misses++;
                else if (lens[i] != size || !tag_ok(bufs[i], size, tag_of(size, idx[i])))
                    t->wrong++;
                else
                    good++;
            }
        } else if (t->op == OP_GET) {
            brixkv_mget(k, keys, b, bufs, caps, lens, st);
            for (size_t i = 0; i < b; i++) {
                if (st[i] == BRIXKV_ST_NOT_FOUND || st[i] == BRIXKV_ST_STALE)
                    t->misses++;
                else if (st[i] != BRIXKV_ST_OK)
                    t->errors++;
                else if (lens[i] != size || !tag_ok(bufs[i], size, tag_of(size, idx[i])))
                    t->wrong++;
                else
                    good++;
            }
        } else {
            good = brixkv_mput(k, keys, b, (const void *const *)bufs, lens, st);
            t->errors += b - good;
        }
        uint64_t t1 = brix_now_ns();
        lat_push(t, (double)(t1 - t0) / 1e3);
        t->keys += good;
        t->bytes += good * size;
        t->t_end = t1;
    }
    if (!t->t_end)
        t->t_end = brix_now_ns();
out:
    if (redis)
        resp_close(&r);
    brixkv_close(k);
    for (size_t i = 0; bufs && i < b; i++)
        brix_free(bufs[i]);
    brix_free(bufs);
    brix_free(lens);
    brix_free(caps);
    brix_free(rkeys);
    brix_free(rkp);
    brix_free(keys);
    brix_free(st);
    brix_free(idx);
    return NULL;
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static double pctf(const float *v, size_t n, double p)
{
    if (!n)
        return NAN;
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    return v[i ? i - 1 : 0]; /* nearest rank */
}

static int run_cell(kv_env_t *e, int op, int path, int threads, double duration, kv_res_t *res)
{
    const bench_cfg_t *c = e->c;
    memset(res, 0, sizeof *res);
    kv_thread_t *t = brix_calloc((size_t)threads, sizeof *t);
    pthread_barrier_t bar;
    if (!t)
        return -1;
    pthread_barrier_init(&bar, NULL, (unsigned)threads);
    uint64_t seq = ++e->cell_seq;
    int started = 0;
    for (int i = 0; i < threads; i++) {
        t[i] = (kv_thread_t){ .e = e,
                              .path = path,
                              .op = op,
                              .tid = i,
                              .batch = (size_t)c->kv_batch,
                              .duration = duration,
                              .seq = seq,
                              .bar = &bar };
        if (pthread_create(&t[i].th, NULL, kv_thread_main, &t[i]))
            break;
        started++;
    }
    if (started < threads) {
        /* the barrier would never open: fail loudly rather than hang */
        fprintf(stderr, "bench: cannot start %d client threads\n", threads);
        abort();
    }
    for (int i = 0; i < threads; i++)
        pthread_join(t[i].th, NULL);
    pthread_barrier_destroy(&bar);
    uint64_t t0 = UINT64_MAX, t1 = 0, keys = 0, bytes = 0;
    size_t nlat = 0;
    int rc = 0;
    res->shm = true;
    for (int i = 0; i < threads; i++) {
        if (t[i].setup_rc) {
            fprintf(stderr, "bench: %s %s: %s\n", op_name[op], path_name[path], t[i].err);
            rc = -1;
        } else if (t[i].errors && t[i].err[0]) {
            fprintf(stderr, "bench: %s %s: %s\n", op_name[op], path_name[path], t[i].err);
        }
        t0 = t[i].t_start && t[i].t_start < t0 ? t[i].t_start : t0;
        t1 = t[i].t_end > t1 ? t[i].t_end : t1;
        keys += t[i].keys;
        bytes += t[i].bytes;
        res->errors += t[i].errors;
        res->misses += t[i].misses;
        res->wrong += t[i].wrong;
        res->shm &= t[i].shm;
        nlat += t[i].nlat;
    }
    float *all = brix_malloc((nlat + 1) * sizeof *all);
    size_t at = 0;
    for (int i = 0; i < threads; i++) {
        if (all && t[i].nlat)
            memcpy(all + at, t[i].lat, t[i].nlat * sizeof *all);
        at += t[i].nlat;
        brix_free(t[i].lat);
    }
    if (!rc && all && t1 > t0) {
        double secs = (double)(t1 - t0) / 1e9;
        qsort(all, nlat, sizeof *all, cmp_f);
        res->ran = true;
        res->gbps = (double)bytes / secs / 1e9;
        res->ops_s = (double)keys / secs;
        res->req_s = (double)nlat / secs;
        res->p50 = pctf(all, nlat, 50);
        res->p99 = pctf(all, nlat, 99);
        res->p999 = pctf(all, nlat, 99.9);
    }
    brix_free(all);
    brix_free(t);
    return rc;
}

/* ---- the report ------------------------------------------------------------ */

typedef struct kv_all {
    size_t sizes[MAX_SIZES];
    int nsizes;
    int threads[MAX_THREADS];
    int nthreads;
    bool path_on[P_N], op_on[OP_N];
    int repeat;
    kv_res_t r[MAX_SIZES][OP_N][P_N][MAX_THREADS][MAX_REPEAT];
    kv_mem_t mem[MAX_SIZES];
} kv_all_t;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct agg {
    int n;
    double med, lo, hi;
} agg_t;

/* Median and range over the repeats of one cell's field (offset into kv_res_t). */
static agg_t agg_of(const kv_all_t *A, int s, int op, int p, int th, size_t off)
{
    double v[MAX_REPEAT];
    agg_t a = { 0, NAN, NAN, NAN };
    for (int i = 0; i < A->repeat; i++) {
        const kv_res_t *x = &A->r[s][op][p][th][i];
        if (x->ran)
            v[a.n++] = *(const double *)((const char *)x + off);
    }
    if (!a.n)
        return a;
    qsort(v, (size_t)a.n, sizeof *v, cmp_d);
    a.lo = v[0];
    a.hi = v[a.n - 1];
    a.med = a.n % 2 ? v[a.n / 2] : (v[a.n / 2 - 1] + v[a.n / 2]) / 2;
    return a;
}

#define F(field) offsetof(kv_res_t, field)

static void size_str(size_t s, char *out, size_t n)
{
    if (s >= (1u << 20) && s % (1u << 20) == 0)
        snprintf(out, n, "%zu MiB", s >> 20);
    else if (s >= 1024 && s % 1024 == 0)
        snprintf(out, n, "%zu KiB", s >> 10);
    else
        snprintf(out, n, "%zu B", s);
}

/* The best redis path of a cell (higher median throughput), -1 if none ran. */
static int best_redis(const kv_all_t *A, int s, int op, int th)
{
    int best = -1;
    double bv = -1;
    for (int p = P_REDIS_TCP; p <= P_REDIS_UNIX; p++) {
        agg_t a = agg_of(A, s, op, p, th, F(ops_s));
        if (a.n && a.med > bv) {
            bv = a.med;
            best = p;
        }
    }
    return best;
}

/* Per-repeat ratio of path p to path q's throughput: median and range. */
static agg_t ratio_of(const kv_all_t *A, int s, int op, int p, int q, int th)
{
    double v[MAX_REPEAT];
    agg_t a = { 0, NAN, NAN, NAN };
    for (int i = 0; i < A->repeat; i++) {
        const kv_res_t *x = &A->r[s][op][p][th][i], *y = &A->r[s][op][q][th][i];
        if (x->ran && y->ran && y->ops_s > 0)
            v[a.n++] = x->ops_s / y->ops_s;
    }
    if (!a.n)
        return a;
    qsort(v, (size_t)a.n, sizeof *v, cmp_d);
    a.lo = v[0];
    a.hi = v[a.n - 1];
    a.med = a.n % 2 ? v[a.n / 2] : (v[a.n / 2 - 1] + v[a.n / 2]) / 2;
    return a;
}

/* "median (min–max)" with prec decimals and a suffix ("x" for ratios). */
static void fmt_agg(brix_buf_t *b, agg_t a, int prec, const char *suffix)
{
    if (!a.n) {
        brix_buf_append_str(b, " n/a |");
        return;
    }
    if (a.n > 1)
        brix_buf_printf(b, " %.*f%s (%.*f–%.*f) |", prec, a.med, suffix, prec, a.lo, prec, a.hi);
    else
        brix_buf_printf(b, " %.*f%s |", prec, a.med, suffix);
}

static int find_size(const kv_all_t *A, size_t s)
{
    for (int i = 0; i < A->nsizes; i++)
        if (A->sizes[i] == s)
            return i;
    return -1;
}

static void target_row(brix_buf_t *md, const char *what, const char *want, const char *got, int ok)
{
    brix_buf_printf(md, "| %s | %s | %s | %s |\n", what, want, ok < 0 ? "n/a" : got,
                    ok < 0 ? "not measured"
                    : ok   ? "met"
                           : "**missed**");
}

static void targets(const kv_all_t *A, brix_buf_t *md)
{
    brix_buf_append_str(md, "| target | wanted | measured (median over repeats) | |\n"
                            "|---|---|---|---|\n");
    int s2 = find_size(A, 2u << 20), s4 = find_size(A, 4u << 10);
    char got[256], what[128];
    for (int th = 0; th < A->nthreads; th++) {
        int T = A->threads[th];
        if (s2 >= 0) {
            int br = best_redis(A, s2, OP_GET, th);
            /* same host: against the better redis path */
            agg_t r = br >= 0 ? ratio_of(A, s2, OP_GET, P_BRIX_SHM, br, th) : (agg_t){ 0 };
            agg_t p99 = agg_of(A, s2, OP_GET, P_BRIX_SHM, th, F(p99));
            snprintf(what, sizeof what, "2 MiB GET same-host (brixkv-shm vs %s), %d thread%s",
                     br >= 0 ? path_name[br] : "redis", T, T > 1 ? "s" : "");
            snprintf(got, sizeof got, "%.2fx, p99 %.0f µs", r.med, p99.med);
            target_row(md, what, ">= 4x, p99 <= 1 ms", got,
                       r.n && p99.n ? r.med >= 4 && p99.med <= 1000 : -1);
            r = ratio_of(A, s2, OP_GET, P_BRIX_TCP, P_REDIS_TCP, th);
            agg_t kp = agg_of(A, s2, OP_GET, P_BRIX_TCP, th, F(p99));
            agg_t rp = agg_of(A, s2, OP_GET, P_REDIS_TCP, th, F(p99));
            snprintf(what, sizeof what, "2 MiB GET over TCP (brixkv-tcp vs redis-tcp), %d thread%s",
                     T, T > 1 ? "s" : "");
            snprintf(got, sizeof got, "%.2fx, p99 %.0f vs %.0f µs (%.2fx)", r.med, kp.med, rp.med,
                     kp.med / rp.med);
            target_row(md, what, ">= 2x, p99 <= 0.5x redis's", got,
                       r.n && kp.n && rp.n ? r.med >= 2 && kp.med <= rp.med / 2 : -1);
            r = ratio_of(A, s2, OP_PUT, P_BRIX_TCP, P_REDIS_TCP, th);
            snprintf(what, sizeof what, "2 MiB PUT over TCP (brixkv-tcp vs redis-tcp), %d thread%s",
                     T, T > 1 ? "s" : "");
            snprintf(got, sizeof got, "%.2fx", r.med);
            target_row(md, what, ">= 1.5x", got, r.n ? r.med >= 1.5 : -1);
            br = best_redis(A, s2, OP_PUT, th);
            r = br >= 0 ? ratio_of(A, s2, OP_PUT, P_BRIX_SHM, br, th) : (agg_t){ 0 };
            snprintf(what, sizeof what, "2 MiB PUT same-host (brixkv-shm vs %s), %d thread%s",
                     br >= 0 ? path_name[br] : "redis", T, T > 1 ? "s" : "");
            snprintf(got, sizeof got, "%.2fx", r.med);
            target_row(md, what, ">= 1.5x", got, r.n ? r.med >= 1.5 : -1);
        }
        if (s4 >= 0) {
            agg_t r = ratio_of(A, s4, OP_GET, P_BRIX_TCP, P_REDIS_TCP, th);
            snprintf(what, sizeof what, "4 KiB GET over TCP (brixkv-tcp vs redis-tcp), %d thread%s",
                     T, T > 1 ? "s" : "");
            snprintf(got, sizeof got, "%.2fx", r.med);
            target_row(md, what, ">= 1.0x", got, r.n ? r.med >= 1.0 : -1);
            int br = best_redis(A, s4, OP_GET, th);
            r = br >= 0 ? ratio_of(A, s4, OP_GET, P_BRIX_SHM, br, th) : (agg_t){ 0 };
            snprintf(what, sizeof what, "4 KiB GET same-host (brixkv-shm vs %s), %d thread%s",
                     br >= 0 ? path_name[br] : "redis", T, T > 1 ? "s" : "");
            snprintf(got, sizeof got, "%.2fx", r.med);
            target_row(md, what, ">= 1.0x", got, r.n ? r.med >= 1.0 : -1);
        }
    }
    if (s2 >= 0) {
        const kv_mem_t *m = &A->mem[s2];
        snprintf(got, sizeof got, "brixkv %.3f, redis %.3f (MEMORY USAGE) / %.3f (used_memory)",
                 m->have_kv && m->k_payload > 0 ? m->k_used / m->k_payload : NAN,
                 m->have_redis ? m->r_memory_usage / (double)m->size : NAN,
                 m->have_redis ? m->r_used_delta / m->payload : NAN);
        target_row(md, "memory accounted per payload byte at 2 MiB", "<= 1.05 (redis 1.25)", got,
                   m->have_kv && m->k_payload > 0 ? m->k_used / m->k_payload <= 1.05 : -1);
    }
}

static void write_report(const bench_cfg_t *c, const kv_all_t *A, const char *load0,
                         const char *load1, double wall)
{
    brix_buf_t md = BRIX_BUF_INIT;
    char cpu[128], sz[32];
    cpu_model(cpu, sizeof cpu);
    char cold[32];
    size_str((size_t)c->kv_cold_set, cold, sizeof cold);
    brix_buf_printf(&md,
                    "Machine: %ld cores (%s); load average %s at the start, %s at the end; "
                    "%.0f s of wall time. Cold set %s per size, %lld key%s per request, "
                    "%.1f s per cell, %d repeat%s (median, and min–max over the repeats in "
                    "parentheses). Latency is per request, in µs.\n\n",
                    sysconf(_SC_NPROCESSORS_ONLN), cpu, load0, load1, wall, cold,
                    (long long)c->kv_batch, c->kv_batch > 1 ? "s" : "", c->duration, A->repeat,
                    A->repeat > 1 ? "s" : "");
    brix_buf_append_str(&md, "### Against the issue's targets\n\n");
    targets(A, &md);
    brix_buf_append_str(&md, "\n### Throughput and latency\n\n"
                             "| size | op | path | threads | GB/s | keys/s | p50 µs | p99 µs | "
                             "p999 µs | × redis-tcp | × best redis |\n"
                             "|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < A->nsizes; s++) {
        size_str(A->sizes[s], sz, sizeof sz);
        for (int op = 0; op < OP_N; op++) {
            if (!A->op_on[op])
                continue;
            for (int th = 0; th < A->nthreads; th++) {
                int br = best_redis(A, s, op, th);
                for (int p = 0; p < P_N; p++) {
                    if (!A->path_on[p])
                        continue;
                    brix_buf_printf(&md, "| %s | %s | %s | %d |", sz, op_name[op], path_name[p],
                                    A->threads[th]);
                    fmt_agg(&md, agg_of(A, s, op, p, th, F(gbps)), 2, "");
                    fmt_agg(&md, agg_of(A, s, op, p, th, F(ops_s)), 0, "");
                    fmt_agg(&md, agg_of(A, s, op, p, th, F(p50)), 0, "");
                    fmt_agg(&md, agg_of(A, s, op, p, th, F(p99)), 0, "");
                    fmt_agg(&md, agg_of(A, s, op, p, th, F(p999)), 0, "");
                    if (p >= P_BRIX_TCP) {
                        fmt_agg(&md, ratio_of(A, s, op, p, P_REDIS_TCP, th), 2, "x");
                        if (br >= 0)
                            fmt_agg(&md, ratio_of(A, s, op, p, br, th), 2, "x");
                        else
                            brix_buf_append_str(&md, " n/a |");
                    } else {
                        brix_buf_append_str(&md, " | |");
                    }
                    brix_buf_append_str(&md, "\n");
                }
            }
        }
    }
    /* anything that went wrong, so a fast number with errors is not trusted */
    bool notes = false;
    for (int s = 0; s < A->nsizes; s++)
        for (int op = 0; op < OP_N; op++)
            for (int p = 0; p < P_N; p++)
                for (int th = 0; th < A->nthreads; th++) {
                    uint64_t err = 0, miss = 0, wrong = 0;
                    bool shm = true, ran = false;
                    for (int i = 0; i < A->repeat; i++) {
                        const kv_res_t *x = &A->r[s][op][p][th][i];
                        err += x->errors;
                        miss += x->misses;
                        wrong += x->wrong;
                        shm &= x->shm || !x->ran;
                        ran |= x->ran;
                    }
                    bool noshm = p == P_BRIX_SHM && ran && !shm;
                    if (!err && !miss && !wrong && !noshm)
                        continue;
                    if (!notes)
                        brix_buf_append_str(&md, "\nProblems seen:\n\n");
                    notes = true;
                    size_str(A->sizes[s], sz, sizeof sz);
                    brix_buf_printf(&md,
                                    "- %s %s %s, %d threads: %" PRIu64 " errors, %" PRIu64
                                    " misses, %" PRIu64 " wrong values%s\n",
                                    sz, op_name[op], path_name[p], A->threads[th], err, miss, wrong,
                                    noshm ? "; the client did NOT use the shared-memory "
                                            "path (fell back to the socket)"
                                          : "");
                }
    brix_buf_append_str(
        &md, "\n### Memory per payload byte (after the preload)\n\n"
             "| size | keys | brixkv used / payload | brixkv RSS after preload / payload | "
             "brixkv capacity | redis MEMORY USAGE / value | redis used_memory "
             "delta / payload | redis RSS delta / payload |\n"
             "|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < A->nsizes; s++) {
        const kv_mem_t *m = &A->mem[s];
        size_str(A->sizes[s], sz, sizeof sz);
        brix_buf_printf(&md, "| %s | %zu |", sz, m->nkeys);
        if (m->have_kv)
            brix_buf_printf(&md, " %.4f | %.4f | %.0f MiB |",
                            m->k_payload > 0 ? m->k_used / m->k_payload : NAN,
                            m->k_rss_delta / m->payload, m->k_capacity / 1048576.0);
        else
            brix_buf_append_str(&md, " n/a | n/a | n/a |");
        if (m->have_redis)
            brix_buf_printf(&md, " %.4f | %.4f | %.4f |\n", m->r_memory_usage / (double)m->size,
                            m->r_used_delta / m->payload, m->r_rss_delta / m->payload);
        else
            brix_buf_append_str(&md, " n/a | n/a | n/a |\n");
    }
    bench_write_results_md(c, &md);
    brix_buf_free(&md);

    /* results.json: every repeat of every cell */
    char path[1024];
    snprintf(path, sizeof path, "%s/results.json", c->out);
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f,
            "{\"scenario\":\"kvstore\",\"cores\":%ld,\"cpu\":\"%s\",\"load_start\":\"%s\","
            "\"load_end\":\"%s\",\"wall_s\":%.1f,\"cold_set\":%" PRIu64
            ",\"batch\":%lld,\"duration_s\":%g,\"repeat\":%d,\"cells\":[",
            sysconf(_SC_NPROCESSORS_ONLN), cpu, load0, load1, wall, c->kv_cold_set,
            (long long)c->kv_batch, c->duration, A->repeat);
    bool first = true;
    for (int s = 0; s < A->nsizes; s++)
        for (int op = 0; op < OP_N; op++)
            for (int p = 0; p < P_N; p++)
                for (int th = 0; th < A->nthreads; th++) {
                    if (!A->op_on[op] || !A->path_on[p])
                        continue;
                    fprintf(f,
                            "%s{\"size\":%zu,\"op\":\"%s\",\"path\":\"%s\",\"threads\":%d,"
                            "\"repeats\":[",
                            first ? "" : ",", A->sizes[s], op_name[op], path_name[p],
                            A->threads[th]);
                    first = false;
                    for (int i = 0; i < A->repeat; i++) {
                        const kv_res_t *x = &A->r[s][op][p][th][i];
                        fprintf(
                            f,
                            "%s{\"ran\":%s,\"gbps\":%.4f,\"keys_per_s\":%.1f,\"req_per_s\":%.1f,"
                            "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"errors\":%" PRIu64
                            ",\"misses\":%" PRIu64 ",\"wrong\":%" PRIu64 ",\"shm\":%s}",
                            i ? "," : "", x->ran ? "true" : "false", x->gbps, x->ops_s, x->req_s,
                            isnan(x->p50) ? 0 : x->p50, isnan(x->p99) ? 0 : x->p99,
                            isnan(x->p999) ? 0 : x->p999, x->errors, x->misses, x->wrong,
                            x->shm ? "true" : "false");
                    }
                    fprintf(f, "]}");
                }
    fprintf(f, "],\"memory\":[");
    for (int s = 0; s < A->nsizes; s++) {
        const kv_mem_t *m = &A->mem[s];
        fprintf(f,
                "%s{\"size\":%zu,\"keys\":%zu,\"payload\":%.0f,\"brixkv_used\":%.0f,"
                "\"brixkv_payload\":%.0f,\"brixkv_capacity\":%.0f,\"brixkv_objects\":%.0f,"
                "\"brixkv_rss\":%.0f,\"redis_memory_usage\":%.0f,\"redis_used_delta\":%.0f,"
                "\"redis_rss_delta\":%.0f}",
                s ? "," : "", m->size, m->nkeys, m->payload, m->k_used, m->k_payload, m->k_capacity,
                m->k_objects, m->k_rss_delta, m->r_memory_usage, m->r_used_delta, m->r_rss_delta);
    }
    fprintf(f, "]}\n");
    fclose(f);
    fprintf(stderr, "bench: wrote %s/results.md and results.json\n", c->out);
}

/* ---- the scenario ------------------------------------------------------------ */

static int parse_list(const char *what, const char *s, bool sizes, uint64_t *out, int max, int *n)
{
    char *dup = brix_strdup(s);
    *n = 0;
    int rc = 0;
    for (char *t = strtok(dup, ","); t; t = strtok(NULL, ",")) {
        while (*t == ' ')
            t++;
        uint64_t v = 0;
        if (*n == max || (sizes ? brix_parse_size(t, &v) : (v = strtoull(t, NULL, 10), 0)) ||
            v == 0) {
            fprintf(stderr, "brix bench: --%s: bad or too many entries at '%s' (at most %d)\n",
                    what, t, max);
            rc = -1;
            break;
        }
        out[(*n)++] = v;
    }
    brix_free(dup);
    return rc || !*n ? -1 : 0;
}

static bool in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

int bench_kvstore(const bench_cfg_t *c)
{
    kv_all_t *A = brix_calloc(1, sizeof *A);
    if (!A)
        return -1;
    uint64_t v[MAX_SIZES];
    int n;
    if (parse_list("sizes", c->kv_sizes, true, v, MAX_SIZES, &n))
        goto bad;
    A->nsizes = n;
    for (int i = 0; i < n; i++) {
        if (v[i] < 16 || v[i] > (256u << 20)) {
            fprintf(stderr, "brix bench: --sizes: %" PRIu64 " is outside 16 B..256 MiB\n", v[i]);
            goto bad;
        }
        A->sizes[i] = (size_t)v[i];
    }
    if (parse_list("threads", c->kv_threads, false, v, MAX_THREADS, &n))
        goto bad;
    A->nthreads = n;
    for (int i = 0; i < n; i++) {
        if (v[i] > MAX_CLIENTS) {
            fprintf(stderr, "brix bench: --threads: at most %d\n", MAX_CLIENTS);
            goto bad;
        }
        A->threads[i] = (int)v[i];
    }
    if (c->repeat < 1 || c->repeat > MAX_REPEAT) {
        fprintf(stderr, "brix bench: --repeat must be 1..%d\n", MAX_REPEAT);
        goto bad;
    }
    A->repeat = (int)c->repeat;
    int npaths = 0;
    for (int p = 0; p < P_N; p++)
        npaths += A->path_on[p] = in_list(c->kv_paths, path_name[p]);
    A->op_on[OP_GET] = in_list(c->kv_ops, "get") || in_list(c->kv_ops, "GET");
    A->op_on[OP_PUT] = in_list(c->kv_ops, "put") || in_list(c->kv_ops, "PUT");
    if (!npaths || (!A->op_on[OP_GET] && !A->op_on[OP_PUT])) {
        fprintf(stderr, "brix bench: --paths needs some of %s,%s,%s,%s and --ops get and/or put\n",
                path_name[0], path_name[1], path_name[2], path_name[3]);
        goto bad;
    }
    signal(SIGPIPE, SIG_IGN);
    char load0[64], load1[64], err[512];
    loadavg(load0, sizeof load0);
    uint64_t wall0 = brix_now_ms();
    int rc = 0;
    for (int s = 0; s < A->nsizes; s++) {
        kv_env_t e = { .c = c, .size = A->sizes[s] };
        e.nkeys = (size_t)(c->kv_cold_set / e.size);
        if (e.nkeys < 16)
            e.nkeys = 16;
        char sz[32], log[1200];
        size_str(e.size, sz, sizeof sz);
        fprintf(stderr, "bench: %s values, %zu keys: starting redis-server and brix kvcache\n", sz,
                e.nkeys);
        bool want_redis = A->path_on[P_REDIS_TCP] || A->path_on[P_REDIS_UNIX];
        bool want_kv = A->path_on[P_BRIX_TCP] || A->path_on[P_BRIX_SHM];
        if (want_redis) {
            e.redis_ok = redis_start(&e, c->out, err, sizeof err) == 0;
            if (!e.redis_ok) {
                fprintf(stderr, "bench: %s\n", err);
                rc = 1;
            }
        }
        if (want_kv) {
            snprintf(log, sizeof log, "%s/kvcache-%zu.log", c->out, e.size);
            uint64_t cap = 2 * c->kv_cold_set + 16 * (uint64_t)e.size;
            e.kv_ok = bench_kvnode_start(c, cap, NULL, log, &e.node, err, sizeof err) == 0;
            if (!e.kv_ok) {
                fprintf(stderr, "bench: %s\n", err);
                rc = 1;
            }
        }
        fprintf(stderr, "bench: %s: preloading %zu values into each store\n", sz, e.nkeys);
        measure_memory(&e, &A->mem[s], err, sizeof err, c->out);
        for (int op = 0; op < OP_N; op++) {
            if (!A->op_on[op])
                continue;
            /* Untimed warm-up per path: the first PUTs after the preload
             * grow each store up to its limit (redis-tcp ran 10-20x slower
             * in its first second than afterwards on this machine). */
            for (int p = 0; p < P_N; p++) {
                bool redis = p <= P_REDIS_UNIX;
                kv_res_t warm;
                if (A->path_on[p] && (redis ? e.redis_ok : e.kv_ok))
                    run_cell(&e, op, p, 1, op == OP_PUT ? 1.0 : 0.3, &warm);
            }
            for (int rep = 0; rep < A->repeat; rep++) {
                for (int th = 0; th < A->nthreads; th++) {
                    /* the paths interleaved within a repeat: drift in the
                     * machine's load hits every path alike */
                    for (int p = 0; p < P_N; p++) {
                        bool redis = p <= P_REDIS_UNIX;
                        if (!A->path_on[p] || (redis ? !e.redis_ok : !e.kv_ok))
                            continue;
                        kv_res_t *res = &A->r[s][op][p][th][rep];
                        if (run_cell(&e, op, p, A->threads[th], c->duration, res))
                            rc = 1;
                        fprintf(stderr,
                                "bench: %s %s %-10s %d thr rep %d: %6.2f GB/s %9.0f keys/s p50 "
                                "%6.0f p99 %6.0f µs%s\n",
                                sz, op_name[op], path_name[p], A->threads[th], rep + 1, res->gbps,
                                res->ops_s, res->p50, res->p99,
                                res->errors || res->wrong || res->misses ? " (errors/misses)" : "");
                    }
                }
            }
        }
        env_stop(&e);
    }
    loadavg(load1, sizeof load1);
    write_report(c, A, load0, load1, (double)(brix_now_ms() - wall0) / 1e3);
    brix_free(A);
    return rc;
bad:
    brix_free(A);
    return 2;
}
