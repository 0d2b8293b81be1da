/*
 * kvtool — a command line over libbrixkv for the integration tests (and for
 * poking a store by hand).
 *
 *   kvtool --servers HOST:PORT[,...] [options] CMD ARGS
 *
 *   put FIRST COUNT SIZE     put keys FIRST..FIRST+COUNT-1, SIZE-byte values
 *   get FIRST COUNT SIZE     get them and check every byte
 *   match FIRST COUNT        longest stored prefix of those keys
 *   delete FIRST COUNT
 *   churn FIRST COUNT SIZE   put, in batches, without reading back
 *   stats MEMBER             one node's counters
 *   owners FIRST COUNT       which member owns each key
 *
 * Options: --batch N (keys per call, default 16), --rounds N and
 * --interval-ms MS (repeat the command, one line per round), --stop-file F
 * (end the rounds early once F exists), --no-shm,
 * --timeout-ms, --connect-timeout-ms, --retry-ms, --seed N, --random-seed
 * (declare a non-deterministic hash seed), --model M, --ns-rank R/S,
 * --token T (the nodes' --token-file contents), --no-check (get does not
 * verify: a rough speed probe by hand, not for tests).
 *
 * Key i is brixkv_key_u64(xxh64(i)). Value i of SIZE bytes carries its own
 * check: bytes 0..8 the key index, 8..16 the xxh64 of the rest, which is a
 * pseudo-random stream seeded by (i, SIZE); get regenerates it and compares
 * every byte, so a value from another key, a torn value or a short one is
 * "wrong", never "ok".
 *
 * Each round prints one JSON line (flushed): its wall time (ms), the
 * per-status counts overall
 * and per member, "wrong" (values that failed the check), a digest of the OK
 * values' bytes (equal digests = the same bytes), the members (up, shm), the
 * client's counters and last_error. Exit 0; 2 on a usage or open error (the
 * message on stderr); 3 if any value was wrong.
 */
#include "kvcache/brixkv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#define NST 104 /* statuses are < 104 */

static brixkv_key_t key_of(uint64_t i)
{
    return brixkv_key_u64(XXH64(&i, sizeof(i), 0x6b76746f6f6cull));
}

static void fill(uint8_t *v, uint64_t i, size_t size)
{
    uint64_t x = XXH64(&i, sizeof(i), size) | 1;
    for (size_t j = 16; j < size; j++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
        v[j] = (uint8_t)(x >> 24);
    }
    if (size >= 16) {
        uint64_t h = XXH64(v + 16, size - 16, i);
        memcpy(v, &i, 8);
        memcpy(v + 8, &h, 8);
    }
}

static bool check(const uint8_t *v, size_t len, uint64_t i, size_t size, uint8_t *scratch)
{
    if (len != size)
        return false;
    fill(scratch, i, size);
    return memcmp(v, scratch, size) == 0;
}

typedef struct tally {
    uint64_t st[NST];
    uint64_t (*mst)[NST];
    uint64_t wrong;
    XXH64_state_t *digest;
} tally_t;

static void count(tally_t *t, brixkv_t *c, const brixkv_key_t *k, brixkv_status_t s)
{
    unsigned si = (unsigned)s < NST ? (unsigned)s : NST - 1;
    t->st[si]++;
    t->mst[brixkv_owner(c, k)][si]++;
}

static void print_counts(const uint64_t *st)
{
    printf("{");
    bool first = true;
    for (unsigned s = 0; s < NST; s++)
        if (st[s]) {
            printf("%s\"%s\":%" PRIu64, first ? "" : ",", brixkv_status_str((brixkv_status_t)s),
                   st[s]);
            first = false;
        }
    printf("}");
}

static void print_json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(brixkv_t *c, const char *cmd, tally_t *t, int64_t match, int round, double t0)
{
    printf("{\"cmd\":\"%s\",\"round\":%d,\"ms\":%.3f,\"status\":", cmd, round,
           (now_s() - t0) * 1e3);
    print_counts(t->st);
    printf(",\"wrong\":%" PRIu64 ",\"digest\":\"%016" PRIx64 "\"", t->wrong,
           XXH64_digest(t->digest));
    if (match >= 0)
        printf(",\"match\":%" PRId64, match);
    printf(",\"by_member\":[");
    for (size_t m = 0; m < brixkv_nmembers(c); m++) {
        printf("%s", m ? "," : "");
        print_counts(t->mst[m]);
    }
    printf("],\"members\":[");
    for (size_t m = 0; m < brixkv_nmembers(c); m++) {
        printf("%s{\"addr\":", m ? "," : "");
        print_json_str(brixkv_member_addr(c, m));
        printf(",\"up\":%s,\"shm\":%s}", brixkv_member_up(c, m) ? "true" : "false",
               brixkv_member_shm(c, m) ? "true" : "false");
    }
    brixkv_client_stats_t cs;
    brixkv_client_stats(c, &cs);
    printf("],\"client\":{\"calls\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"unavailable\":%" PRIu64
           ",\"stale\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"bytes_in\":%" PRIu64
           ",\"bytes_out\":%" PRIu64 ",\"shm_bytes_in\":%" PRIu64 "},\"last_error\":",
           cs.calls, cs.timeouts, cs.unavailable, cs.stale, cs.reconnects, cs.bytes_in,
           cs.bytes_out, cs.shm_bytes_in);
    print_json_str(brixkv_last_error(c));
    printf("}\n");
    fflush(stdout);
}

static int usage(void)
{
    fprintf(stderr, "usage: kvtool --servers HOST:PORT[,...] [options] "
                    "put|get|match|delete|churn|stats|owners ARGS (see kvtool.c)\n");
    return 2;
}

int main(int argc, char **argv)
{
    brixkv_opts_t o = { 0 };
    brixkv_ns_t ns = { .model = "kvtool-model",
                       .dtype = "bfloat16",
                       .layout = "paged-16",
                       .tp_size = 1,
                       .hash_seed = 1234,
                       .seed_deterministic = true,
                       .client = "kvtool" };
    size_t batch = 16;
    int rounds = 1, interval_ms = 0;
    const char *stop_file = NULL;
    bool no_check = false;
    int i = 1;
    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-shm")) {
            o.no_shm = true;
            continue;
        }
        if (!strcmp(a, "--no-check")) { /* a rough speed probe; never in tests */
            no_check = true;
            continue;
        }
        if (!strcmp(a, "--random-seed")) {
            ns.seed_deterministic = false;
            continue;
        }
        if (!v)
            return usage();
        i++;
        if (!strcmp(a, "--servers"))
            o.servers = v;
        else if (!strcmp(a, "--timeout-ms"))
            o.timeout_ms = atoi(v);
        else if (!strcmp(a, "--connect-timeout-ms"))
            o.connect_timeout_ms = atoi(v);
        else if (!strcmp(a, "--retry-ms"))
            o.retry_ms = atoi(v);
        else if (!strcmp(a, "--batch"))
            batch = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--rounds"))
            rounds = atoi(v);
        else if (!strcmp(a, "--stop-file"))
            stop_file = v;
        else if (!strcmp(a, "--interval-ms"))
            interval_ms = atoi(v);
        else if (!strcmp(a, "--seed"))
            ns.hash_seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--token"))
            ns.token = v;
        else if (!strcmp(a, "--model"))
            ns.model = v;
        else if (!strcmp(a, "--ns-rank")) {
            unsigned r, s;
            if (sscanf(v, "%u/%u", &r, &s) != 2)
                return usage();
            ns.tp_rank = (uint16_t)r;
            ns.tp_size = (uint16_t)s;
        } else
            return usage();
    }
    if (i >= argc || batch == 0)
        return usage();
    const char *cmd = argv[i++];
    uint64_t first = i < argc ? strtoull(argv[i], NULL, 10) : 0;
    uint64_t n = i + 1 < argc ? strtoull(argv[i + 1], NULL, 10) : 0;
    size_t size = i + 2 < argc ? (size_t)strtoull(argv[i + 2], NULL, 10) : 0;
    bool sized = !strcmp(cmd, "put") || !strcmp(cmd, "get") || !strcmp(cmd, "churn");
    if (sized && size < 16) {
        fprintf(stderr, "kvtool: SIZE must be >= 16 (the value's check header)\n");
        return 2;
    }

    char err[256];
    brixkv_t *c = brixkv_open(&o, &ns, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "kvtool: %s\n", err);
        return 2;
    }
    size_t nm = brixkv_nmembers(c);
    tally_t t = { .mst = calloc(nm, sizeof(*t.mst)), .digest = XXH64_createState() };
    brixkv_key_t *keys = calloc(batch, sizeof(*keys));
    uint8_t **vals = calloc(batch, sizeof(*vals));
    size_t *lens = calloc(batch, sizeof(*lens)), *caps = calloc(batch, sizeof(*caps));
    brixkv_status_t *st = calloc(batch, sizeof(*st));
    uint8_t *scratch = sized ? malloc(size) : NULL;
    for (size_t b = 0; sized && b < batch; b++) {
        vals[b] = malloc(size);
        caps[b] = size;
    }
    int rc = 0;
    for (int r = 0; r < rounds; r++) {
        memset(t.st, 0, sizeof(t.st));
        memset(t.mst, 0, nm * sizeof(*t.mst));
        t.wrong = 0;
        XXH64_reset(t.digest, 0);
        int64_t match = -1;
        double t0 = now_s();
        if (!strcmp(cmd, "stats")) {
            brixkv_stats_t s;
            int e = brixkv_stats(c, (size_t)first, &s);
            printf("{\"cmd\":\"stats\",\"status\":\"%s\",\"capacity_bytes\":%" PRIu64
                   ",\"used_bytes\":%" PRIu64 ",\"payload_bytes\":%" PRIu64 ",\"objects\":%" PRIu64
                   ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"evictions\":%" PRIu64
                   ",\"leases_active\":%" PRIu64 ",\"connections\":%" PRIu64 "}\n",
                   brixkv_status_str((brixkv_status_t)e), e ? 0 : s.capacity_bytes,
                   e ? 0 : s.used_bytes, e ? 0 : s.payload_bytes, e ? 0 : s.objects, e ? 0 : s.hits,
                   e ? 0 : s.misses, e ? 0 : s.evictions, e ? 0 : s.leases_active,
                   e ? 0 : s.connections);
            fflush(stdout);
        } else if (!strcmp(cmd, "owners")) {
            printf("{\"owners\":[");
            for (uint64_t k = 0; k < n; k++) {
                brixkv_key_t key = key_of(first + k);
                printf("%s%zu", k ? "," : "", brixkv_owner(c, &key));
            }
            printf("]}\n");
            fflush(stdout);
        } else if (!strcmp(cmd, "match")) {
            brixkv_key_t *all = calloc(n ? n : 1, sizeof(*all));
            for (uint64_t k = 0; k < n; k++)
                all[k] = key_of(first + k);
            match = (int64_t)brixkv_match_prefix(c, all, n);
            free(all);
            report(c, cmd, &t, match, r, t0);
        } else if (sized || !strcmp(cmd, "delete")) {
            for (uint64_t k0 = 0; k0 < n; k0 += batch) {
                size_t m = n - k0 < batch ? (size_t)(n - k0) : batch;
                for (size_t b = 0; b < m; b++) {
                    keys[b] = key_of(first + k0 + b);
                    if (strcmp(cmd, "get") && sized) {
                        fill(vals[b], first + k0 + b, size);
                        lens[b] = size;
                    }
                }
                if (!strcmp(cmd, "get"))
                    brixkv_mget(c, keys, m, (void *const *)vals, caps, lens, st);
                else if (!strcmp(cmd, "delete"))
                    brixkv_delete(c, keys, m, st);
                else
                    brixkv_mput(c, keys, m, (const void *const *)vals, lens, st);
                for (size_t b = 0; b < m; b++) {
                    if (!strcmp(cmd, "get") && st[b] == BRIXKV_ST_OK && !no_check) {
                        if (!check(vals[b], lens[b], first + k0 + b, size, scratch)) {
                            t.wrong++;
                            fprintf(stderr, "kvtool: key %" PRIu64 ": WRONG BYTES\n",
                                    first + k0 + b);
                        }
                        XXH64_update(t.digest, vals[b], lens[b]);
                    }
                    count(&t, c, &keys[b], st[b]);
                }
            }
            report(c, cmd, &t, -1, r, t0);
            if (t.wrong)
                rc = 3;
        } else {
            rc = usage();
            break;
        }
        if (stop_file && access(stop_file, F_OK) == 0)
            break;
        if (interval_ms > 0 && r + 1 < rounds)
            usleep((useconds_t)interval_ms * 1000);
    }
    for (size_t b = 0; sized && b < batch; b++)
        free(vals[b]);
    free(vals);
    free(keys);
    free(lens);
    free(caps);
    free(st);
    free(scratch);
    free(t.mst);
    XXH64_freeState(t.digest);
    brixkv_close(c);
    return rc;
}
