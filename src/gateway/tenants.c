/*
 * tenants — users, keys and GCRA rate limits, in memory or in Redis
 * (see tenants.h for the model).
 */
#include "gateway/tenants.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/time.h"

/* GCRA runs on integer microseconds, in C and in the Lua scripts alike:
 * absolute times as doubles (µs since boot, or since the epoch in Redis)
 * round `now + cost` by an ulp where it crosses a power of two, which
 * refused a request for exactly the budget left at some clock values. Redis'
 * Lua numbers are doubles too, so every value stays an integer below 2^53:
 * times (~2^51 µs since the epoch) plus at most COST_MAX + AHEAD_MAX. */
#define PERIOD_US INT64_C(60000000) /* limits are per minute */
/* units counted per request saturate here (n x PERIOD_US < 2^53) */
#define COUNT_MAX INT64_C(100000000)
/* a bucket never runs further ahead of now than this (2^45 µs, 407 days) */
#define AHEAD_MAX (INT64_C(1) << 45)

/* ------------------------------------------------------------- helpers -- */

void brix_tn_key_hash(const char *key, size_t len, char out[BRIX_TN_KEYHASH])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, len, d);
    for (size_t i = 0; i < sizeof d; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

int brix_tn_new_key(char *out, size_t outlen)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char r[32];
    if (outlen < 8 + 43 + 1 || RAND_bytes(r, sizeof r) != 1)
        return -1;
    memcpy(out, "sk-brix-", 8);
    size_t o = 8;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < sizeof r; i++) {
        acc = (acc << 8) | r[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = b64[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[o++] = b64[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return 0;
}

bool brix_tn_ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return false;
    return CRYPTO_memcmp(a, b, la) == 0;
}

void brix_tn_fmt_reset(uint64_t us, char *out, size_t outlen)
{
    if (us < 1000000) {
        snprintf(out, outlen, "%llums", (unsigned long long)((us + 999) / 1000));
    } else if (us < 60000000) {
        double s = (double)us / 1e6;
        snprintf(out, outlen, "%.3g", s);
        size_t n = strlen(out);
        snprintf(out + n, outlen - n, "s");
    } else {
        uint64_t s = (us + 999999) / 1000000;
        snprintf(out, outlen, "%llum%llus", (unsigned long long)(s / 60),
                 (unsigned long long)(s % 60));
    }
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

static bool valid_name(const char *s, size_t n)
{
    if (!n || n >= BRIX_TN_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '@'))
            return false;
    }
    return true;
}

int brix_tn_parse_user(const char *spec, brix_tn_user_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    const char *colon = strchr(spec, ':');
    size_t nl = colon ? (size_t)(colon - spec) : strlen(spec);
    if (!valid_name(spec, nl)) {
        snprintf(err, errlen,
                 "user '%s': the name must be 1-63 characters of letters, digits, - _ . @", spec);
        return -1;
    }
    memcpy(u->name, spec, nl);
    if (!colon)
        return 0;
    char *rest = brix_strdup(colon + 1);
    if (!rest) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    char *save = NULL;
    for (char *kv = strtok_r(rest, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            snprintf(err, errlen, "user '%s': '%s' is not key=value", u->name, kv);
            rc = -1;
            break;
        }
        *eq = '\0';
        const char *v = eq + 1;
        if (!strcmp(kv, "rpm") || !strcmp(kv, "tpm") || !strcmp(kv, "priority")) {
            int64_t x;
            if (parse_i64(v, &x)) {
                snprintf(err, errlen, "user '%s': %s must be a non-negative integer, not '%s'",
                         u->name, kv, v);
                rc = -1;
                break;
            }
            *(kv[0] == 'r' ? &u->rpm : kv[0] == 't' ? &u->tpm : &u->priority) = x;
        } else if (!strcmp(kv, "models")) {
            if (strlen(v) >= sizeof u->models) {
                snprintf(err, errlen, "user '%s': models list too long", u->name);
                rc = -1;
                break;
            }
            /* '|' separates models on the command line (',' separates keys) */
            for (size_t i = 0; v[i]; i++)
                u->models[i] = v[i] == '|' ? ',' : v[i];
        } else if (!strcmp(kv, "key")) {
            if (strlen(v) < 16) {
                snprintf(err, errlen, "user '%s': a key must have at least 16 characters", u->name);
                rc = -1;
                break;
            }
            brix_tn_key_hash(v, strlen(v), u->key_sha256);
        } else if (!strcmp(kv, "key-sha256")) {
            size_t n = strlen(v);
            bool hex = n == 64;
            for (size_t i = 0; hex && i < n; i++)
                hex = isxdigit((unsigned char)v[i]);
            if (!hex) {
                snprintf(err, errlen, "user '%s': key-sha256 must be 64 hex digits", u->name);
                rc = -1;
                break;
            }
            for (size_t i = 0; i < n; i++)
                u->key_sha256[i] = (char)tolower((unsigned char)v[i]);
        } else {
            snprintf(err, errlen,
                     "user '%s': unknown field '%s' (rpm, tpm, models, priority, key, "
                     "key-sha256)",
                     u->name, kv);
            rc = -1;
            break;
        }
    }
    brix_free(rest);
    return rc;
}

int brix_tn_parse_redis_url(const char *url, brix_tn_cfg_t *cfg, char *err, size_t errlen)
{
    if (!strncmp(url, "rediss://", 9)) {
        snprintf(err, errlen,
                 "redis-url %s: TLS is not supported (Debian 12's hiredis 0.14 has no TLS); "
                 "use a local TLS tunnel such as stunnel and redis://",
                 url);
        return -1;
    }
    if (strncmp(url, "redis://", 8)) {
        snprintf(err, errlen, "redis-url %s: expected redis://[:PASSWORD@]HOST[:PORT][/DB]", url);
        return -1;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    char *password = NULL;
    if (at) {
        const char *c = memchr(p, ':', (size_t)(at - p));
        const char *pw = c ? c + 1 : p;
        password = brix_strndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    const char *hend = slash ? slash : p + strlen(p);
    const char *colon = memchr(p, ':', (size_t)(hend - p));
    int port = 6379, db = 0;
    if (colon) {
        char *e;
        long v = strtol(colon + 1, &e, 10);
        if (e != hend || v < 1 || v > 65535) {
            snprintf(err, errlen, "redis-url %s: bad port", url);
            brix_free(password);
            return -1;
        }
        port = (int)v;
    }
    if (slash && slash[1]) {
        char *e;
        long v = strtol(slash + 1, &e, 10);
        if (*e || v < 0 || v > 1000) {
            snprintf(err, errlen, "redis-url %s: bad database number", url);
            brix_free(password);
            return -1;
        }
        db = (int)v;
    }
    const char *hstart = p, *hstop = colon ? colon : hend;
    if (hstop == hstart) {
        snprintf(err, errlen, "redis-url %s: no host", url);
        brix_free(password);
        return -1;
    }
    brix_free(cfg->redis_host);
    brix_free(cfg->redis_password);
    cfg->redis_host = brix_strndup(hstart, (size_t)(hstop - hstart));
    cfg->redis_password = password && *password ? password : NULL;
    if (password && !*password)
        brix_free(password);
    cfg->redis_port = port;
    cfg->redis_db = db;
    return 0;
}

void brix_tn_cfg_free(brix_tn_cfg_t *cfg)
{
    brix_free(cfg->redis_host);
    brix_free(cfg->redis_password);
    brix_free(cfg->prefix);
    brix_free(cfg->users);
    memset(cfg, 0, sizeof *cfg);
}

static bool model_allowed(const char *models, const char *model)
{
    if (!*models || !model || !*model)
        return true;
    size_t ml = strlen(model);
    for (const char *p = models; *p;) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n == ml && !memcmp(p, model, n))
            return true;
        if (!c)
            break;
        p = c + 1;
    }
    return false;
}

/* How far (µs) n units move a bucket of `limit` per minute, rounded toward
 * zero (negative n: a refund). Rounding down keeps the exact budget
 * admissible: limit x cost(1) <= PERIOD_US; it admits at most 1 µs per
 * request more than the limit, which is nothing below ~7,700 per minute and
 * under 0.02 % at 70,000. The Lua scripts' cost() computes the same. */
static int64_t gcra_cost(int64_t n, int64_t limit)
{
    if (limit <= 0)
        return 0;
    if (n > COUNT_MAX)
        n = COUNT_MAX;
    if (n < -COUNT_MAX)
        n = -COUNT_MAX;
    return n * PERIOD_US / limit;
}

/* How many units fit in `room` µs of a bucket (one request of n costs
 * gcra_cost(n) <= room), at most `limit`. */
static int64_t gcra_fit(int64_t room, int64_t limit)
{
    if (room < 0)
        return 0;
    if (room >= PERIOD_US || limit > (INT64_MAX - 1) / (PERIOD_US + 1))
        return limit;
    int64_t n = ((room + 1) * limit - 1) / PERIOD_US;
    return n < limit ? n : limit;
}

/* Fills the header numbers from GCRA state: r_ahead / t_ahead are how far
 * each bucket's theoretical arrival time is ahead of now (µs). */
static void fill_numbers(brix_tn_decision_t *d, int64_t r_ahead, int64_t t_ahead)
{
    if (r_ahead < 0)
        r_ahead = 0;
    if (t_ahead < 0)
        t_ahead = 0;
    d->rpm_reset_us = (uint64_t)r_ahead;
    d->tpm_reset_us = (uint64_t)t_ahead;
    d->rpm_remaining = -1;
    if (d->rpm > 0) {
        /* requests of gcra_cost(1) each */
        int64_t rc = gcra_cost(1, d->rpm), room = PERIOD_US - r_ahead;
        d->rpm_remaining = room <= 0 ? 0 : rc > 0 ? room / rc : d->rpm;
        if (d->rpm_remaining > d->rpm)
            d->rpm_remaining = d->rpm;
    }
    d->tpm_remaining = d->tpm > 0 ? gcra_fit(PERIOD_US - t_ahead, d->tpm) : -1;
}

/* ---------------------------------------------------------- the store -- */

typedef struct mem_user mem_user_t;
struct mem_user {
    brix_tn_user_t u;
    int64_t rt, tt;   /* GCRA theoretical arrival times, µs on the monotonic clock */
    bool implicit;    /* created by the default-limit policy, not configured */
    int64_t inflight; /* admitted requests not yet over (brix_tn_charge) */
    size_t pos;       /* in tn->users */
    /* implicit users, most recently admitted first: eviction takes from the
     * tail */
    mem_user_t *lru_prev, *lru_next;
};

/* An open-addressing index of users (linear probing, deletion by backward
 * shift, so lookups never scan more than a cluster): by name, or by key hash. */
typedef struct mem_index {
    mem_user_t **slot;
    size_t n, used; /* n: a power of two, >= 2 x used + 2 */
    bool by_key;
} mem_index_t;

struct brix_tn {
    brix_tn_cfg_t cfg;
    char check_sha[41], charge_sha[41], admin_sha[41];
    /* memory store */
    uv_mutex_t mu;
    mem_user_t **users; /* every user, unordered (LIST) */
    size_t nusers, cap;
    mem_index_t by_name, by_key;
    mem_user_t *lru_head, *lru_tail; /* implicit users */
    size_t nimplicit;
    brix_tn_clock_fn clock; /* tests: replaces brix_now_ns */
    void *clock_ud;
    atomic_ullong store_errors, store_timeouts, fail_open, fail_closed, reconnects;
    atomic_ullong implicit_evicted, implicit_refused, key_compares;
    atomic_int conns_up; /* worker connections to Redis that are up */
    char *redis_ip;      /* redis_host resolved once at start (no DNS on the loops) */
};

static int64_t mono_us(const brix_tn_t *tn);

/* The GCRA arithmetic of gcra_cost() in Lua, on integer-valued doubles
 * (exact below 2^53; see PERIOD_US). */
#define LUA_GCRA                                                                                   \
    "local P, NMAX, AMAX = 60000000, 100000000, 35184372088832\n"                                  \
    "local function cost(n, lim)\n"                                                                \
    "  if lim <= 0 or n == 0 then return 0 end\n"                                                  \
    "  local a = math.min(math.abs(n), NMAX) * P\n"                                                \
    "  local q = math.floor(a / lim)\n"                                                            \
    "  if q * lim > a then q = q - 1 end\n"                                                        \
    "  if n < 0 then return -q end\n"                                                              \
    "  return q\n"                                                                                 \
    "end\n"

static const char CHECK_LUA[] = LUA_GCRA
    "local p, name = ARGV[1], ARGV[3]\n"
    "if ARGV[2] == 'k' then\n"
    "  name = redis.call('GET', p .. 'key:' .. ARGV[3])\n"
    "  if not name then return {'nokey'} end\n"
    "end\n"
    "local u = redis.call('HMGET', p .. 'user:' .. name, 'rpm', 'tpm', 'models', 'priority', "
    "'key')\n"
    "local rpm, tpm, prio = tonumber(u[1]) or 0, tonumber(u[2]) or 0, tonumber(u[4]) or 0\n"
    "if ARGV[2] == 'u' and u[5] then return {'needkey', name} end\n"
    "if not (u[1] or u[2] or u[3] or u[4] or u[5]) then\n"
    "  if tonumber(ARGV[6]) < 0 then return {'nouser', name} end\n"
    "  rpm, tpm = tonumber(ARGV[6]), tonumber(ARGV[7])\n"
    "end\n"
    "if u[3] and u[3] ~= '' and ARGV[4] ~= '' then\n"
    "  local ok = false\n"
    "  for m in string.gmatch(u[3], '[^,]+') do if m == ARGV[4] then ok = true; break end end\n"
    "  if not ok then return {'model', name} end\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local rl = p .. 'rl:' .. name\n"
    "local rt, tt = 0, 0\n"
    "local cur = redis.call('GET', rl)\n"
    "if cur then\n"
    "  local a, b = string.match(cur, '^(%d+),(%d+)$')\n"
    "  rt, tt = tonumber(a) or 0, tonumber(b) or 0\n"
    "end\n"
    "local ra, ta = math.max(rt - now, 0), math.max(tt - now, 0)\n"
    "local est = math.max(tonumber(ARGV[5]) or 0, 0)\n"
    "local rc, tc = cost(1, rpm), cost(est, tpm)\n"
    "local st, wait = 'ok', 0\n"
    "if rpm > 0 and ra + rc > P then st, wait = 'rpm', ra + rc - P\n"
    "elseif tpm > 0 and ta + tc > P then st, wait = 'tpm', ta + tc - P end\n"
    "local changed = false\n"
    "if st == 'ok' and rpm > 0 then ra = ra + rc; changed = true end\n"
    "if st == 'ok' and tpm > 0 and est > 0 then ta = ta + tc; changed = true end\n"
    "if changed then\n"
    "  redis.call('SET', rl, string.format('%.0f,%.0f', now + ra, now + ta), 'PX', "
    "math.ceil(math.max(ra, ta) / 1000) + 1000)\n"
    "end\n"
    "return {st, name, rpm, tpm, prio, string.format('%.0f', ra), string.format('%.0f', ta), "
    "string.format('%.0f', wait)}\n";

static const char CHARGE_LUA[] =
    LUA_GCRA "local tpm, n = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
             "if tpm <= 0 or n == 0 then return 0 end\n"
             "local t = redis.call('TIME')\n"
             "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
             "local rl = ARGV[1] .. 'rl:' .. ARGV[2]\n"
             "local rt, tt = 0, 0\n"
             "local cur = redis.call('GET', rl)\n"
             "if cur then\n"
             "  local a, b = string.match(cur, '^(%d+),(%d+)$')\n"
             "  rt, tt = tonumber(a) or 0, tonumber(b) or 0\n"
             "end\n"
             "local ra = math.max(rt - now, 0)\n"
             "local ta = math.min(math.max(math.max(tt - now, 0) + cost(n, tpm), 0), AMAX)\n"
             "local ahead = math.max(ra, ta)\n"
             "if ahead <= 0 then redis.call('DEL', rl) return 1 end\n"
             "redis.call('SET', rl, string.format('%.0f,%.0f', now + ra, now + ta), 'PX', "
             "math.ceil(ahead / 1000) + 1000)\n"
             "return 1\n";

static const char ADMIN_LUA[] =
    "local p, op, name = ARGV[1], ARGV[2], ARGV[3]\n"
    "local uk = p .. 'user:' .. name\n"
    "local function put(r, n)\n"
    "  local u = redis.call('HMGET', p .. 'user:' .. n, 'rpm', 'tpm', 'models', 'priority')\n"
    "  for _, v in ipairs({n, u[1] or '0', u[2] or '0', u[3] or '', u[4] or '0'}) do r[#r + 1] = "
    "v end\n"
    "  return r\n"
    "end\n"
    "if op == 'list' then\n"
    "  local r = {'ok'}\n"
    "  local names = redis.call('SMEMBERS', p .. 'users')\n"
    "  table.sort(names)\n"
    "  for _, n in ipairs(names) do put(r, n) end\n"
    "  return r\n"
    "end\n"
    "local exists = redis.call('EXISTS', uk) == 1\n"
    "if op == 'get' then if exists then return put({'ok'}, name) end return {'notfound'} end\n"
    "if op == 'delete' then\n"
    "  if not exists then return {'notfound'} end\n"
    "  local r = put({'ok'}, name)\n"
    "  local kh = redis.call('HGET', uk, 'key')\n"
    "  if kh then redis.call('DEL', p .. 'key:' .. kh) end\n"
    "  redis.call('DEL', uk, p .. 'rl:' .. name)\n"
    "  redis.call('SREM', p .. 'users', name)\n"
    "  return r\n"
    "end\n"
    "if op == 'create' and exists then return {'exists'} end\n"
    "if op == 'create-keep' and exists then return put({'exists'}, name) end\n"
    "if (op == 'update' or op == 'rotate') and not exists then return {'notfound'} end\n"
    "local set = tonumber(ARGV[9])\n"
    "if op == 'rotate' then set = 0 elseif op ~= 'update' then set = 15 end\n"
    "if set % 2 == 1 then redis.call('HSET', uk, 'rpm', ARGV[4]) end\n"
    "if math.floor(set / 2) % 2 == 1 then redis.call('HSET', uk, 'tpm', ARGV[5]) end\n"
    "if math.floor(set / 4) % 2 == 1 then redis.call('HSET', uk, 'models', ARGV[6]) end\n"
    "if math.floor(set / 8) % 2 == 1 then redis.call('HSET', uk, 'priority', ARGV[7]) end\n"
    "if ARGV[8] ~= '' then\n"
    "  local old = redis.call('HGET', uk, 'key')\n"
    "  if old then redis.call('DEL', p .. 'key:' .. old) end\n"
    "  redis.call('HSET', uk, 'key', ARGV[8])\n"
    "  redis.call('SET', p .. 'key:' .. ARGV[8], name)\n"
    "end\n"
    "redis.call('SADD', p .. 'users', name)\n"
    "return put({'ok'}, name)\n";

static void sha1_hex(const char *s, char out[41])
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)s, strlen(s), d);
    for (size_t i = 0; i < sizeof d; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static uint64_t idx_home(const mem_index_t *ix, const mem_user_t *m)
{
    const char *k = ix->by_key ? m->u.key_sha256 : m->u.name;
    return XXH64(k, strlen(k), 0);
}

static int idx_resize(mem_index_t *ix, size_t want_used)
{
    size_t n = 64;
    while (n < want_used * 2 + 2)
        n *= 2;
    if (n <= ix->n)
        return 0;
    mem_user_t **ns = brix_calloc(n, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; i < ix->n; i++) {
        mem_user_t *m = ix->slot[i];
        if (!m)
            continue;
        size_t k = idx_home(ix, m) & (n - 1);
        while (ns[k])
            k = (k + 1) & (n - 1);
        ns[k] = m;
    }
    brix_free(ix->slot);
    ix->slot = ns;
    ix->n = n;
    return 0;
}

static int idx_put(mem_index_t *ix, mem_user_t *m)
{
    if (idx_resize(ix, ix->used + 1))
        return -1;
    size_t mask = ix->n - 1, k = idx_home(ix, m) & mask;
    while (ix->slot[k])
        k = (k + 1) & mask;
    ix->slot[k] = m;
    ix->used++;
    return 0;
}

static void idx_del(mem_index_t *ix, const mem_user_t *m)
{
    if (!ix->n)
        return;
    size_t mask = ix->n - 1, i = idx_home(ix, m) & mask;
    while (ix->slot[i] && ix->slot[i] != m)
        i = (i + 1) & mask;
    if (!ix->slot[i])
        return;
    ix->slot[i] = NULL;
    ix->used--;
    /* backward shift: an entry after the hole moves into it unless its home
     * lies cyclically in (hole, entry] */
    for (size_t j = (i + 1) & mask; ix->slot[j]; j = (j + 1) & mask) {
        size_t h = idx_home(ix, ix->slot[j]) & mask;
        bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
        if (!stays) {
            ix->slot[i] = ix->slot[j];
            ix->slot[j] = NULL;
            i = j;
        }
    }
}

static mem_user_t *mem_find(brix_tn_t *tn, const char *name)
{
    mem_index_t *ix = &tn->by_name;
    if (!ix->n)
        return NULL;
    size_t mask = ix->n - 1;
    for (size_t k = XXH64(name, strlen(name), 0) & mask; ix->slot[k]; k = (k + 1) & mask)
        if (!strcmp(ix->slot[k]->u.name, name))
            return ix->slot[k];
    return NULL;
}

/* The user whose key has this SHA-256 (hex). Only the entries of one probe
 * cluster are compared, each in constant time: a wrong key costs the same
 * few comparisons however many users there are. */
static mem_user_t *mem_find_key(brix_tn_t *tn, const char *kh)
{
    mem_index_t *ix = &tn->by_key;
    if (!ix->n)
        return NULL;
    size_t mask = ix->n - 1;
    mem_user_t *found = NULL;
    for (size_t k = XXH64(kh, strlen(kh), 0) & mask; ix->slot[k]; k = (k + 1) & mask) {
        atomic_fetch_add_explicit(&tn->key_compares, 1, memory_order_relaxed);
        if (brix_tn_ct_equal(ix->slot[k]->u.key_sha256, kh))
            found = ix->slot[k];
    }
    return found;
}

/* Sets m's key hash ("" = none), keeping the key index. */
static int mem_set_key(brix_tn_t *tn, mem_user_t *m, const char *kh)
{
    if (m->u.key_sha256[0])
        idx_del(&tn->by_key, m);
    snprintf(m->u.key_sha256, sizeof m->u.key_sha256, "%s", kh);
    if (m->u.key_sha256[0] && idx_put(&tn->by_key, m)) {
        m->u.key_sha256[0] = '\0'; /* out of memory: the key does not work */
        return -1;
    }
    return 0;
}

static void lru_unlink(brix_tn_t *tn, mem_user_t *m)
{
    if (m->lru_prev)
        m->lru_prev->lru_next = m->lru_next;
    else if (tn->lru_head == m)
        tn->lru_head = m->lru_next;
    if (m->lru_next)
        m->lru_next->lru_prev = m->lru_prev;
    else if (tn->lru_tail == m)
        tn->lru_tail = m->lru_prev;
    m->lru_prev = m->lru_next = NULL;
}

static void lru_front(brix_tn_t *tn, mem_user_t *m)
{
    lru_unlink(tn, m);
    m->lru_next = tn->lru_head;
    if (tn->lru_head)
        tn->lru_head->lru_prev = m;
    tn->lru_head = m;
    if (!tn->lru_tail)
        tn->lru_tail = m;
}

/* An implicit user becomes a configured one (written by the admin or the
 * config): never evicted. */
static void mem_make_explicit(brix_tn_t *tn, mem_user_t *m)
{
    if (!m->implicit)
        return;
    m->implicit = false;
    lru_unlink(tn, m);
    tn->nimplicit--;
}

static void mem_remove(brix_tn_t *tn, mem_user_t *m)
{
    mem_make_explicit(tn, m);
    idx_del(&tn->by_name, m);
    if (m->u.key_sha256[0])
        idx_del(&tn->by_key, m);
    mem_user_t *last = tn->users[--tn->nusers];
    tn->users[m->pos] = last;
    last->pos = m->pos;
    brix_free(m);
}

/* How many of the least recently admitted implicit users an eviction looks
 * at: it stays O(1) under the store's lock, whatever an attacker sends. */
#define EVICT_SCAN 64

/* Frees the least recently admitted implicit user that carries no state
 * worth keeping: nothing in flight (its charge would be lost) and both
 * buckets full again (a new user starts with full buckets, so dropping it
 * gives nobody anything). Returns 0, or -1 with *wait_us: how long until the
 * first one of those looked at will be evictable (0 = unknown, in flight). */
static int mem_evict_one(brix_tn_t *tn, int64_t now, uint64_t *wait_us)
{
    int64_t wait = -1;
    int n = 0;
    for (mem_user_t *m = tn->lru_tail; m && n < EVICT_SCAN; m = m->lru_prev, n++) {
        if (m->inflight > 0)
            continue;
        int64_t ahead = (m->rt > m->tt ? m->rt : m->tt) - now;
        if (ahead <= 0) {
            mem_remove(tn, m);
            atomic_fetch_add(&tn->implicit_evicted, 1);
            return 0;
        }
        if (wait < 0 || ahead < wait)
            wait = ahead;
    }
    *wait_us = wait < 0 ? 0 : (uint64_t)wait;
    return -1;
}

static mem_user_t *mem_add(brix_tn_t *tn, const char *name, bool implicit)
{
    if (tn->nusers == tn->cap) {
        size_t nc = tn->cap ? tn->cap * 2 : 16;
        mem_user_t **nu = brix_realloc(tn->users, nc * sizeof *nu);
        if (!nu)
            return NULL;
        tn->users = nu;
        tn->cap = nc;
    }
    mem_user_t *m = brix_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    snprintf(m->u.name, sizeof m->u.name, "%s", name);
    if (idx_put(&tn->by_name, m)) {
        brix_free(m);
        return NULL;
    }
    m->pos = tn->nusers;
    tn->users[tn->nusers++] = m;
    if (implicit) {
        m->implicit = true;
        tn->nimplicit++;
        lru_front(tn, m);
    }
    return m;
}

void brix_tn_seed_memory(brix_tn_t *tn)
{
    uv_mutex_lock(&tn->mu);
    for (size_t i = 0; i < tn->cfg.nusers; i++) {
        const brix_tn_user_t *cu = &tn->cfg.users[i];
        mem_user_t *m = mem_find(tn, cu->name);
        if (!m && !(m = mem_add(tn, cu->name, false)))
            break;
        mem_make_explicit(tn, m);
        char key[BRIX_TN_KEYHASH];
        memcpy(key, m->u.key_sha256, sizeof key);
        m->u = *cu;
        memcpy(m->u.key_sha256, key, sizeof key);
        /* a key given by the admin since is kept unless the config names one */
        mem_set_key(tn, m, cu->key_sha256[0] ? cu->key_sha256 : key);
    }
    uv_mutex_unlock(&tn->mu);
}

brix_tn_t *brix_tn_new(const brix_tn_cfg_t *cfg, char *err, size_t errlen)
{
    brix_tn_t *tn = brix_calloc(1, sizeof *tn);
    if (!tn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    tn->cfg = *cfg;
    tn->cfg.redis_host = cfg->redis_host ? brix_strdup(cfg->redis_host) : NULL;
    tn->cfg.redis_password = cfg->redis_password ? brix_strdup(cfg->redis_password) : NULL;
    tn->cfg.prefix = brix_strdup(cfg->prefix ? cfg->prefix : "brix:");
    tn->cfg.users = NULL;
    tn->by_key.by_key = true;
    if (tn->cfg.max_implicit <= 0)
        tn->cfg.max_implicit = BRIX_TN_IMPLICIT_MAX;
    if (cfg->nusers) {
        tn->cfg.users = brix_malloc(cfg->nusers * sizeof *cfg->users);
        if (tn->cfg.users)
            memcpy(tn->cfg.users, cfg->users, cfg->nusers * sizeof *cfg->users);
    }
    if (!tn->cfg.prefix || (cfg->nusers && !tn->cfg.users) ||
        (cfg->redis_host && !tn->cfg.redis_host)) {
        brix_tn_cfg_free(&tn->cfg);
        brix_free(tn);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (tn->cfg.redis_host) {
        /* resolved once here: hiredis would block a worker loop on DNS at
         * every reconnect */
        /* IPv4 first, as hiredis itself tries: "localhost" must reach a
         * Redis bound to 127.0.0.1 */
        char ip[INET6_ADDRSTRLEN] = "";
        static const int fams[] = { AF_INET, AF_INET6 };
        for (size_t k = 0; k < 2 && !ip[0]; k++) {
            struct addrinfo hints = { .ai_family = fams[k], .ai_socktype = SOCK_STREAM },
                            *ai = NULL;
            if (!getaddrinfo(tn->cfg.redis_host, NULL, &hints, &ai) && ai) {
                const void *a = ai->ai_family == AF_INET6
                                    ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                                    : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
                inet_ntop(ai->ai_family, a, ip, sizeof ip);
            }
            if (ai)
                freeaddrinfo(ai);
        }
        if (!ip[0]) {
            /* not resolvable now (a service not up yet): hiredis resolves it
             * at each connect instead */
            BRIX_WARN("redis-url: cannot resolve '%s' now; it is resolved at each connect",
                      tn->cfg.redis_host);
            snprintf(ip, sizeof ip, "%.45s", tn->cfg.redis_host);
        }
        if (!(tn->redis_ip = brix_strdup(ip))) {
            snprintf(err, errlen, "out of memory");
            brix_tn_cfg_free(&tn->cfg);
            brix_free(tn);
            return NULL;
        }
    }
    uv_mutex_init(&tn->mu);
    sha1_hex(CHECK_LUA, tn->check_sha);
    sha1_hex(CHARGE_LUA, tn->charge_sha);
    sha1_hex(ADMIN_LUA, tn->admin_sha);
    if (!tn->cfg.redis_host)
        brix_tn_seed_memory(tn);
    return tn;
}

void brix_tn_free(brix_tn_t *tn)
{
    if (!tn)
        return;
    uv_mutex_destroy(&tn->mu);
    for (size_t i = 0; i < tn->nusers; i++)
        brix_free(tn->users[i]);
    brix_free(tn->users);
    brix_free(tn->by_name.slot);
    brix_free(tn->by_key.slot);
    brix_free(tn->redis_ip);
    brix_tn_cfg_free(&tn->cfg);
    brix_free(tn);
}

bool brix_tn_uses_redis(const brix_tn_t *tn)
{
    return tn->cfg.redis_host != NULL;
}

const brix_tn_cfg_t *brix_tn_cfg(const brix_tn_t *tn)
{
    return &tn->cfg;
}

void brix_tn_stats(const brix_tn_t *tn, brix_tn_stats_t *out)
{
    brix_tn_t *t = (brix_tn_t *)tn;
    out->store_errors = atomic_load(&t->store_errors);
    out->store_timeouts = atomic_load(&t->store_timeouts);
    out->fail_open = atomic_load(&t->fail_open);
    out->fail_closed = atomic_load(&t->fail_closed);
    out->reconnects = atomic_load(&t->reconnects);
    out->conns_up = atomic_load(&t->conns_up);
    out->implicit_evicted = atomic_load(&t->implicit_evicted);
    out->implicit_refused = atomic_load(&t->implicit_refused);
    out->key_compares = atomic_load(&t->key_compares);
    uv_mutex_lock(&t->mu);
    out->implicit_users = (int64_t)t->nimplicit;
    uv_mutex_unlock(&t->mu);
}

/* ------------------------------------------------------- memory checks -- */

static uint64_t mem_now_ns(const brix_tn_t *tn)
{
    return tn->clock ? tn->clock(tn->clock_ud) : brix_now_ns();
}

static int64_t mono_us(const brix_tn_t *tn)
{
    return (int64_t)(mem_now_ns(tn) / 1000);
}

void brix_tn_set_clock(brix_tn_t *tn, brix_tn_clock_fn fn, void *ud)
{
    tn->clock = fn;
    tn->clock_ud = ud;
}

static void mem_check(brix_tn_t *tn, bool by_key, const char *id, const char *model,
                      brix_tn_decision_t *d)
{
    uv_mutex_lock(&tn->mu);
    mem_user_t *m = NULL;
    int64_t now = mono_us(tn);
    if (by_key) {
        m = mem_find_key(tn, id);
        if (!m) {
            uv_mutex_unlock(&tn->mu);
            d->status = BRIX_TN_BAD_KEY;
            return;
        }
    } else {
        m = mem_find(tn, id);
        if (!m) {
            if (tn->cfg.default_rpm < 0) {
                uv_mutex_unlock(&tn->mu);
                snprintf(d->user, sizeof d->user, "%s", id);
                d->status = BRIX_TN_NO_USER;
                return;
            }
            /* the default-limit policy: an unknown user gets its own
             * counters with the default limits, up to --max-implicit-users
             * of them; beyond, an idle one makes room or the newcomer waits
             * (429) — sharing a bucket would let one of them spend the
             * others' budget */
            uint64_t wait = 0;
            if ((int64_t)tn->nimplicit >= tn->cfg.max_implicit && mem_evict_one(tn, now, &wait)) {
                uv_mutex_unlock(&tn->mu);
                atomic_fetch_add(&tn->implicit_refused, 1);
                snprintf(d->user, sizeof d->user, "%s", id);
                d->status = BRIX_TN_RPM;
                d->rpm = tn->cfg.default_rpm;
                d->tpm = tn->cfg.default_tpm;
                d->rpm_remaining = 0;
                d->retry_us = wait ? wait : 1000000;
                d->detail = "too many users with the default limits are active";
                return;
            }
            m = mem_add(tn, id, true);
            if (!m) {
                uv_mutex_unlock(&tn->mu);
                d->status = BRIX_TN_STORE_DOWN;
                d->detail = "out of memory";
                return;
            }
            m->u.rpm = tn->cfg.default_rpm;
            m->u.tpm = tn->cfg.default_tpm;
        }
    }
    snprintf(d->user, sizeof d->user, "%s", m->u.name);
    if (!by_key && m->u.key_sha256[0]) {
        uv_mutex_unlock(&tn->mu);
        d->status = BRIX_TN_KEY_NEEDED; /* a user with a key is only its key */
        return;
    }
    d->rpm = m->u.rpm;
    d->tpm = m->u.tpm;
    d->priority = m->u.priority;
    if (!model_allowed(m->u.models, model)) {
        uv_mutex_unlock(&tn->mu);
        d->status = BRIX_TN_MODEL;
        return;
    }
    /* relative to now, in integer µs: exact (see PERIOD_US) */
    int64_t ra = m->rt > now ? m->rt - now : 0, ta = m->tt > now ? m->tt - now : 0;
    int64_t est = d->est_tokens > 0 ? d->est_tokens : 0;
    int64_t rc = gcra_cost(1, d->rpm), tc = gcra_cost(est, d->tpm);
    d->status = BRIX_TN_OK;
    if (d->rpm > 0 && ra + rc > PERIOD_US) {
        d->status = BRIX_TN_RPM;
        d->retry_us = (uint64_t)(ra + rc - PERIOD_US);
    } else if (d->tpm > 0 && ta + tc > PERIOD_US) {
        d->status = BRIX_TN_TPM;
        d->retry_us = (uint64_t)(ta + tc - PERIOD_US);
    }
    if (d->status == BRIX_TN_OK && d->rpm > 0) {
        ra += rc;
        m->rt = now + ra;
    }
    if (d->status == BRIX_TN_OK && d->tpm > 0 && est > 0) {
        ta += tc; /* reserved */
        m->tt = now + ta;
    }
    if (d->status == BRIX_TN_OK) {
        m->inflight++; /* until brix_tn_charge */
        if (m->implicit)
            lru_front(tn, m);
    }
    uv_mutex_unlock(&tn->mu);
    fill_numbers(d, ra, ta);
}

static void mem_charge(brix_tn_t *tn, const char *user, int64_t tokens)
{
    uv_mutex_lock(&tn->mu);
    mem_user_t *m = mem_find(tn, user);
    if (m && m->inflight > 0)
        m->inflight--;
    if (m && m->u.tpm > 0 && tokens) {
        int64_t now = mono_us(tn);
        int64_t ta = (m->tt > now ? m->tt - now : 0) + gcra_cost(tokens, m->u.tpm);
        if (ta < 0)
            ta = 0; /* a refund never banks credit */
        if (ta > AHEAD_MAX)
            ta = AHEAD_MAX;
        m->tt = now + ta;
    }
    uv_mutex_unlock(&tn->mu);
}

static brix_tn_admin_rc_t mem_admin(brix_tn_t *tn, brix_tn_admin_op_t op, const brix_tn_user_t *in,
                                    unsigned set, brix_tn_user_t **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    uv_mutex_lock(&tn->mu);
    brix_tn_admin_rc_t rc = BRIX_TN_ADMIN_OK;
    if (op == BRIX_TN_LIST) {
        brix_tn_user_t *all = brix_malloc((tn->nusers + 1) * sizeof *all);
        if (!all) {
            rc = BRIX_TN_ADMIN_FAILED;
        } else {
            for (size_t i = 0; i < tn->nusers; i++)
                all[i] = tn->users[i]->u;
            *out = all;
            *nout = tn->nusers;
        }
        uv_mutex_unlock(&tn->mu);
        return rc;
    }
    mem_user_t *m = mem_find(tn, in->name);
    switch (op) {
    case BRIX_TN_GET:
        if (!m)
            rc = BRIX_TN_ADMIN_NOT_FOUND;
        break;
    case BRIX_TN_DELETE:
        if (!m) {
            rc = BRIX_TN_ADMIN_NOT_FOUND;
        } else {
            brix_tn_user_t gone = m->u;
            mem_remove(tn, m);
            brix_tn_user_t *o = brix_malloc(sizeof *o);
            if (o) {
                *o = gone;
                *out = o;
                *nout = 1;
            }
            m = NULL;
        }
        break;
    case BRIX_TN_CREATE:
    case BRIX_TN_CREATE_KEEP:
        if (m && !m->implicit) {
            rc = BRIX_TN_ADMIN_EXISTS;
            break;
        }
        /* fall through */
    case BRIX_TN_UPSERT:
        if (m)
            mem_make_explicit(tn, m);
        if (!m && !(m = mem_add(tn, in->name, false))) {
            rc = BRIX_TN_ADMIN_FAILED;
            break;
        }
        set = BRIX_TN_SET_RPM | BRIX_TN_SET_TPM | BRIX_TN_SET_MODELS | BRIX_TN_SET_PRIO;
        /* fall through */
    case BRIX_TN_UPDATE:
    case BRIX_TN_ROTATE:
        if (!m) {
            rc = BRIX_TN_ADMIN_NOT_FOUND;
            break;
        }
        if (op == BRIX_TN_ROTATE)
            set = 0;
        mem_make_explicit(tn, m); /* written by the admin: no longer evictable */
        if (set & BRIX_TN_SET_RPM)
            m->u.rpm = in->rpm;
        if (set & BRIX_TN_SET_TPM)
            m->u.tpm = in->tpm;
        if (set & BRIX_TN_SET_MODELS)
            memcpy(m->u.models, in->models, sizeof m->u.models);
        if (set & BRIX_TN_SET_PRIO)
            m->u.priority = in->priority;
        if (in->key_sha256[0] && mem_set_key(tn, m, in->key_sha256))
            rc = BRIX_TN_ADMIN_FAILED;
        break;
    case BRIX_TN_LIST:
        break;
    }
    if (m && rc != BRIX_TN_ADMIN_FAILED) {
        brix_tn_user_t *o = brix_malloc(sizeof *o);
        if (o) {
            *o = m->u;
            *out = o;
            *nout = 1;
        }
    }
    uv_mutex_unlock(&tn->mu);
    return rc;
}

/* -------------------------------------------------------- redis conns -- */

enum { OP_CHECK, OP_CHARGE, OP_ADMIN, OP_SETUP };
enum { S_CHECK, S_CHARGE, S_ADMIN };

struct brix_tn_op {
    brix_tn_conn_t *c;
    int kind;
    int script;
    bool done; /* answered (or cancelled): the reply is only freed */
    bool retried_eval;
    bool by_key; /* a check that identifies the user by key */
    uint64_t deadline_ns;
    brix_tn_op_t *prev, *next; /* outstanding in Redis */
    brix_tn_check_cb ccb;
    brix_tn_admin_cb acb;
    void *ud;
    brix_tn_decision_t d;
    brix_tn_admin_op_t aop;
    /* arguments, kept to resend as EVAL after NOSCRIPT */
    int argc;
    char *argv[12];
    size_t argvlen[12];
};

struct brix_tn_conn {
    brix_tn_t *tn;
    uv_loop_t *loop;
    redisAsyncContext *ac;
    bool up;
    bool closing;
    uint64_t connect_start_ns;
    uint64_t backoff_ms;
    uv_timer_t reconnect;
    uv_timer_t watchdog;
    brix_tn_op_t *pending; /* outstanding, oldest first not guaranteed */
    int handles_open;
    bool seed; /* write the configured users on every (re)connect */
};

static void conn_connect(brix_tn_conn_t *c);

static void op_unlink(brix_tn_op_t *op)
{
    brix_tn_conn_t *c = op->c;
    if (op->prev)
        op->prev->next = op->next;
    else if (c && c->pending == op)
        c->pending = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = op->next = NULL;
}

static void op_free(brix_tn_op_t *op)
{
    for (int i = 0; i < op->argc; i++)
        brix_free(op->argv[i]);
    brix_free(op);
}

/* Answers an operation as a store failure (policy for checks). */
static void op_fail(brix_tn_op_t *op, const char *why, bool timeout)
{
    if (op->done)
        return;
    op->done = true;
    brix_tn_t *tn = op->c->tn;
    if (timeout)
        atomic_fetch_add(&tn->store_timeouts, 1);
    else
        atomic_fetch_add(&tn->store_errors, 1);
    if (op->kind == OP_CHECK) {
        op->d.detail = why;
        /* fail-open waives limits, never authentication: a key that cannot
         * be checked is not accepted */
        if (tn->cfg.fail_open && !op->by_key) {
            atomic_fetch_add(&tn->fail_open, 1);
            op->d.status = BRIX_TN_STORE_OPEN;
        } else {
            atomic_fetch_add(&tn->fail_closed, 1);
            op->d.status = BRIX_TN_STORE_DOWN;
        }
        if (op->ccb)
            op->ccb(op->ud, &op->d);
    } else if (op->kind == OP_ADMIN) {
        if (op->acb)
            op->acb(op->ud, BRIX_TN_ADMIN_FAILED, NULL, 0, why);
    }
}

static int64_t rint64(const redisReply *r)
{
    if (!r)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return 0;
}

static const char *rstr(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : "";
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static const char *script_text(int s)
{
    return s == S_CHECK ? CHECK_LUA : s == S_CHARGE ? CHARGE_LUA : ADMIN_LUA;
}

static int op_send(brix_tn_op_t *op, bool eval)
{
    brix_tn_conn_t *c = op->c;
    brix_tn_t *tn = c->tn;
    const char *sha = op->script == S_CHECK    ? tn->check_sha
                      : op->script == S_CHARGE ? tn->charge_sha
                                               : tn->admin_sha;
    const char *argv[16];
    size_t lens[16];
    argv[0] = eval ? "EVAL" : "EVALSHA";
    lens[0] = strlen(argv[0]);
    argv[1] = eval ? script_text(op->script) : sha;
    lens[1] = strlen(argv[1]);
    argv[2] = "0";
    lens[2] = 1;
    for (int i = 0; i < op->argc; i++) {
        argv[3 + i] = op->argv[i];
        lens[3 + i] = op->argvlen[i];
    }
    if (redisAsyncCommandArgv(c->ac, on_reply, op, 3 + op->argc, argv, lens) != REDIS_OK)
        return -1;
    return 0;
}

static void deliver_check(brix_tn_op_t *op, const redisReply *r)
{
    brix_tn_decision_t *d = &op->d;
    const char *st = rstr(r->element[0]);
    if (!strcmp(st, "nokey")) {
        d->status = BRIX_TN_BAD_KEY;
    } else if (!strcmp(st, "nouser")) {
        snprintf(d->user, sizeof d->user, "%s", r->elements > 1 ? rstr(r->element[1]) : "");
        d->status = BRIX_TN_NO_USER;
    } else if (!strcmp(st, "needkey")) {
        snprintf(d->user, sizeof d->user, "%s", r->elements > 1 ? rstr(r->element[1]) : "");
        d->status = BRIX_TN_KEY_NEEDED;
    } else if (!strcmp(st, "model")) {
        snprintf(d->user, sizeof d->user, "%s", r->elements > 1 ? rstr(r->element[1]) : "");
        d->status = BRIX_TN_MODEL;
    } else if (r->elements >= 8) {
        snprintf(d->user, sizeof d->user, "%s", rstr(r->element[1]));
        d->rpm = rint64(r->element[2]);
        d->tpm = rint64(r->element[3]);
        d->priority = rint64(r->element[4]);
        d->retry_us = (uint64_t)rint64(r->element[7]);
        d->status = !strcmp(st, "ok") ? BRIX_TN_OK : !strcmp(st, "rpm") ? BRIX_TN_RPM : BRIX_TN_TPM;
        fill_numbers(d, rint64(r->element[5]), rint64(r->element[6]));
    } else {
        op_fail(op, "unexpected reply from the check script", false);
        return;
    }
    op->done = true;
    if (op->ccb)
        op->ccb(op->ud, d);
}

static void deliver_admin(brix_tn_op_t *op, const redisReply *r)
{
    const char *st = rstr(r->element[0]);
    brix_tn_admin_rc_t rc = !strcmp(st, "ok")       ? BRIX_TN_ADMIN_OK
                            : !strcmp(st, "exists") ? BRIX_TN_ADMIN_EXISTS
                                                    : BRIX_TN_ADMIN_NOT_FOUND;
    size_t n = (r->elements - 1) / 5;
    brix_tn_user_t *us = n ? brix_calloc(n, sizeof *us) : NULL;
    if (n && !us) {
        op_fail(op, "out of memory", false);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply **e = r->element + 1 + 5 * i;
        snprintf(us[i].name, sizeof us[i].name, "%s", rstr(e[0]));
        us[i].rpm = rint64(e[1]);
        us[i].tpm = rint64(e[2]);
        snprintf(us[i].models, sizeof us[i].models, "%s", rstr(e[3]));
        us[i].priority = rint64(e[4]);
    }
    op->done = true;
    if (op->acb)
        op->acb(op->ud, rc, us, n, NULL);
    brix_free(us);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    brix_tn_op_t *op = privdata;
    redisReply *r = reply;
    if (op->kind == OP_SETUP) {
        if (r && r->type == REDIS_REPLY_ERROR)
            BRIX_ERROR("redis: %s failed: %s", op->argv[0], r->str);
        op_free(op);
        return;
    }
    if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8) && !op->retried_eval &&
        !op->c->closing && op->c->ac == ac) {
        op->retried_eval = true; /* EVAL loads it for the next EVALSHA */
        if (op_send(op, true) == 0)
            return;
    }
    op_unlink(op);
    if (!r) {
        op_fail(op, "redis connection lost", false);
    } else if (r->type == REDIS_REPLY_ERROR) {
        BRIX_WARN("redis: script error: %s", r->str);
        op_fail(op, "redis error", false);
    } else if (op->done) {
        /* answered already (timeout) or cancelled */
    } else if (op->kind == OP_CHARGE) {
        op->done = true;
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        op_fail(op, "unexpected reply from redis", false);
    } else if (op->kind == OP_CHECK) {
        deliver_check(op, r);
    } else {
        deliver_admin(op, r);
    }
    op_free(op);
}

static void on_reconnect_timer(uv_timer_t *t)
{
    conn_connect(t->data);
}

static void schedule_reconnect(brix_tn_conn_t *c)
{
    if (c->closing)
        return;
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : 100;
    if (c->backoff_ms > 2000)
        c->backoff_ms = 2000;
    uv_timer_start(&c->reconnect, on_reconnect_timer, c->backoff_ms, 0);
}

static void on_seeded(void *ud, brix_tn_admin_rc_t rc, const brix_tn_user_t *users, size_t n,
                      const char *detail)
{
    if (rc == BRIX_TN_ADMIN_FAILED)
        BRIX_ERROR("redis: writing a configured user failed: %s", detail ? detail : "?");
    else if (n)
        BRIX_INFO("redis: user %s configured (rpm %lld, tpm %lld)", users[0].name,
                  (long long)users[0].rpm, (long long)users[0].tpm);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    brix_tn_conn_t *c = ac->data;
    if (!c || c->ac != ac)
        return;
    if (status != REDIS_OK) {
        BRIX_WARN("redis %s:%d: connect failed: %s", c->tn->cfg.redis_host, c->tn->cfg.redis_port,
                  ac->errstr);
        c->ac = NULL; /* hiredis frees it after this callback */
        schedule_reconnect(c);
        return;
    }
    c->up = true;
    atomic_fetch_add(&c->tn->conns_up, 1);
    c->backoff_ms = 0;
    redisEnableKeepAlive(&((redisAsyncContext *)ac)->c);
    BRIX_INFO("redis %s:%d: connected", c->tn->cfg.redis_host, c->tn->cfg.redis_port);
    if (c->seed)
        for (size_t i = 0; i < c->tn->cfg.nusers; i++)
            brix_tn_admin(c, BRIX_TN_UPSERT, &c->tn->cfg.users[i], 0, on_seeded, c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    brix_tn_conn_t *c = ac->data;
    if (!c || c->ac != ac)
        return;
    c->ac = NULL;
    if (c->up)
        atomic_fetch_sub(&c->tn->conns_up, 1);
    c->up = false;
    if (!c->closing) {
        BRIX_WARN("redis %s:%d: connection lost%s%s", c->tn->cfg.redis_host, c->tn->cfg.redis_port,
                  status == REDIS_OK ? "" : ": ", status == REDIS_OK ? "" : ac->errstr);
        schedule_reconnect(c);
    }
}

static void setup_cmd(brix_tn_conn_t *c, int argc, const char **argv)
{
    brix_tn_op_t *op = brix_calloc(1, sizeof *op);
    if (!op)
        return;
    op->c = c;
    op->kind = OP_SETUP;
    op->argc = 1;
    op->argv[0] = brix_strdup(argv[0]);
    if (redisAsyncCommandArgv(c->ac, on_reply, op, argc, argv, NULL) != REDIS_OK)
        op_free(op);
}

static void conn_connect(brix_tn_conn_t *c)
{
    if (c->closing || c->ac)
        return;
    const brix_tn_cfg_t *cfg = &c->tn->cfg;
    redisAsyncContext *ac = redisAsyncConnect(c->tn->redis_ip, cfg->redis_port);
    if (!ac || ac->err) {
        BRIX_WARN("redis %s:%d: %s", cfg->redis_host, cfg->redis_port,
                  ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    atomic_fetch_add(&c->tn->reconnects, 1);
    ac->data = c;
    c->ac = ac;
    c->connect_start_ns = brix_now_ns();
    if (redisLibuvAttach(ac, c->loop) != REDIS_OK) {
        BRIX_WARN("redis %s:%d: cannot watch the connection", cfg->redis_host, cfg->redis_port);
        c->ac = NULL;
        /* the adapter may have set its hooks without their data: unset them
         * so the free does not call them */
        ac->ev.addRead = ac->ev.delRead = ac->ev.addWrite = ac->ev.delWrite = NULL;
        ac->ev.cleanup = NULL;
        ac->ev.data = NULL;
        redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (cfg->redis_password) {
        const char *a[] = { "AUTH", cfg->redis_password };
        setup_cmd(c, 2, a);
    }
    if (cfg->redis_db) {
        char db[16];
        snprintf(db, sizeof db, "%d", cfg->redis_db);
        const char *a[] = { "SELECT", db };
        setup_cmd(c, 2, a);
    }
}

/* Drops the connection (hung or never connected): outstanding operations
 * are answered as failures by hiredis' free, then reconnect. */
static void conn_reset(brix_tn_conn_t *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    BRIX_WARN("redis %s:%d: %s; reconnecting", c->tn->cfg.redis_host, c->tn->cfg.redis_port, why);
    c->ac = NULL;
    if (c->up)
        atomic_fetch_sub(&c->tn->conns_up, 1);
    c->up = false;
    ac->data = NULL;
    redisAsyncFree(ac);
    schedule_reconnect(c);
}

static void on_watchdog(uv_timer_t *t)
{
    brix_tn_conn_t *c = t->data;
    uint64_t now = brix_now_ns();
    uint64_t tmo = c->tn->cfg.redis_timeout_ms * 1000000ull;
    if (c->ac && !c->up && now - c->connect_start_ns > tmo) {
        conn_reset(c, "connect timed out");
        return;
    }
    /* a reply overdue means Redis is hung or the connection is dead (the
     * libuv adapter does not report socket errors): start over at once */
    bool stuck = false;
    for (brix_tn_op_t *op = c->pending; op && !stuck; op = op->next)
        stuck = now > op->deadline_ns;
    if (stuck) {
        for (brix_tn_op_t *op = c->pending; op; op = op->next)
            if (!op->done && now > op->deadline_ns)
                op_fail(op, "redis timed out", true);
        conn_reset(c, "no reply within --redis-timeout");
    }
}

brix_tn_conn_t *brix_tn_conn_new(brix_tn_t *tn, uv_loop_t *loop)
{
    brix_tn_conn_t *c = brix_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->tn = tn;
    c->loop = loop;
    if (tn->cfg.redis_host) {
        uv_timer_init(loop, &c->reconnect);
        uv_timer_init(loop, &c->watchdog);
        c->reconnect.data = c->watchdog.data = c;
        c->handles_open = 2;
        uint64_t every = tn->cfg.redis_timeout_ms / 4;
        if (every < 5)
            every = 5;
        if (every > 100)
            every = 100;
        uv_timer_start(&c->watchdog, on_watchdog, every, every);
        conn_connect(c);
    }
    return c;
}

static void on_handle_closed(uv_handle_t *h)
{
    brix_tn_conn_t *c = h->data;
    if (--c->handles_open == 0)
        brix_free(c);
}

void brix_tn_conn_free(brix_tn_conn_t *c)
{
    if (!c)
        return;
    c->closing = true;
    if (c->up)
        atomic_fetch_sub(&c->tn->conns_up, 1);
    c->up = false;
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac); /* answers what is outstanding */
    }
    if (!c->handles_open) {
        brix_free(c);
        return;
    }
    uv_close((uv_handle_t *)&c->reconnect, on_handle_closed);
    uv_close((uv_handle_t *)&c->watchdog, on_handle_closed);
}

void brix_tn_conn_seed(brix_tn_conn_t *c)
{
    c->seed = true;
}

bool brix_tn_conn_up(const brix_tn_conn_t *c)
{
    return !c->tn->cfg.redis_host || c->up;
}

static brix_tn_op_t *op_new(brix_tn_conn_t *c, int kind, int script)
{
    brix_tn_op_t *op = brix_calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->c = c;
    op->kind = kind;
    op->script = script;
    return op;
}

static int op_arg(brix_tn_op_t *op, const char *s)
{
    if (op->argc >= (int)(sizeof op->argv / sizeof *op->argv))
        return -1;
    char *d = brix_strdup(s);
    if (!d)
        return -1;
    op->argv[op->argc] = d;
    op->argvlen[op->argc] = strlen(d);
    op->argc++;
    return 0;
}

static int op_argi(brix_tn_op_t *op, int64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%" PRId64, v);
    return op_arg(op, b);
}

/* Sends an op; on failure answers it at once. Returns the op if it is
 * outstanding, NULL if it was answered. */
static brix_tn_op_t *op_start(brix_tn_op_t *op)
{
    brix_tn_conn_t *c = op->c;
    if (!c->up || !c->ac) {
        op_fail(op, "redis is unreachable", false);
        op_free(op);
        return NULL;
    }
    if (op_send(op, false)) {
        op_fail(op, "redis command failed", false);
        op_free(op);
        return NULL;
    }
    op->deadline_ns = brix_now_ns() + c->tn->cfg.redis_timeout_ms * 1000000ull;
    op->next = c->pending;
    if (c->pending)
        c->pending->prev = op;
    c->pending = op;
    return op;
}

void brix_tn_cancel(brix_tn_op_t *op)
{
    if (op)
        op->done = true;
}

static bool sk_brix(const char *b)
{
    return b && !strncmp(b, "sk-brix-", 8);
}

brix_tn_op_t *brix_tn_check(brix_tn_conn_t *c, const char *bearer, const char *user,
                            const char *model, int64_t est_tokens, brix_tn_check_cb cb, void *ud)
{
    brix_tn_t *tn = c->tn;
    brix_tn_decision_t d;
    memset(&d, 0, sizeof d);
    d.est_tokens = est_tokens;
    d.rpm_remaining = d.tpm_remaining = -1;
    bool by_key = false;
    const char *id = NULL;
    char kh[BRIX_TN_KEYHASH];
    if (tn->cfg.require_key) {
        if (!bearer || !*bearer) {
            d.status = BRIX_TN_NO_KEY;
            cb(ud, &d);
            return NULL;
        }
        by_key = true;
    } else if (sk_brix(bearer)) {
        by_key = true;
    } else if (user && *user) {
        id = user;
    } else {
        d.status = BRIX_TN_ANONYMOUS;
        cb(ud, &d);
        return NULL;
    }
    if (by_key) {
        brix_tn_key_hash(bearer, strlen(bearer), kh);
        id = kh;
    } else if (!valid_name(id, strlen(id))) {
        snprintf(d.user, sizeof d.user, "%.40s", id);
        d.status = BRIX_TN_NO_USER;
        cb(ud, &d);
        return NULL;
    }
    if (!tn->cfg.redis_host) {
        mem_check(tn, by_key, id, model, &d);
        cb(ud, &d);
        return NULL;
    }
    brix_tn_op_t *op = op_new(c, OP_CHECK, S_CHECK);
    if (!op) {
        d.status = BRIX_TN_STORE_DOWN;
        d.detail = "out of memory";
        cb(ud, &d);
        return NULL;
    }
    op->d = d;
    op->ccb = cb;
    op->ud = ud;
    op->by_key = by_key;
    if (op_arg(op, tn->cfg.prefix) || op_arg(op, by_key ? "k" : "u") || op_arg(op, id) ||
        op_arg(op, model ? model : "") || op_argi(op, est_tokens) ||
        op_argi(op, tn->cfg.default_rpm) || op_argi(op, tn->cfg.default_tpm)) {
        op->c = c;
        op_fail(op, "out of memory", false);
        op_free(op);
        return NULL;
    }
    return op_start(op);
}

void brix_tn_charge(brix_tn_conn_t *c, const char *user, int64_t tpm, int64_t tokens)
{
    brix_tn_t *tn = c->tn;
    if (!user || !*user)
        return;
    if (!tn->cfg.redis_host) {
        mem_charge(tn, user, tokens); /* also ends the request's in-flight count */
        return;
    }
    if (tpm <= 0 || !tokens)
        return;
    brix_tn_op_t *op = op_new(c, OP_CHARGE, S_CHARGE);
    if (!op)
        return;
    if (op_arg(op, tn->cfg.prefix) || op_arg(op, user) || op_argi(op, tpm) || op_argi(op, tokens)) {
        op_free(op);
        return;
    }
    op_start(op);
}

brix_tn_op_t *brix_tn_admin(brix_tn_conn_t *c, brix_tn_admin_op_t aop, const brix_tn_user_t *u,
                            unsigned set, brix_tn_admin_cb cb, void *ud)
{
    brix_tn_t *tn = c->tn;
    if (!tn->cfg.redis_host) {
        brix_tn_user_t *out;
        size_t n;
        brix_tn_admin_rc_t rc = mem_admin(tn, aop, u, set, &out, &n);
        for (size_t i = 0; i < n; i++)
            out[i].key_sha256[0] = '\0';
        cb(ud, rc, out, n, rc == BRIX_TN_ADMIN_FAILED ? "out of memory" : NULL);
        brix_free(out);
        return NULL;
    }
    static const char *const names[] = { "create", "create-keep", "get",    "update",
                                         "delete", "rotate",      "upsert", "list" };
    brix_tn_op_t *op = op_new(c, OP_ADMIN, S_ADMIN);
    if (!op) {
        cb(ud, BRIX_TN_ADMIN_FAILED, NULL, 0, "out of memory");
        return NULL;
    }
    op->acb = cb;
    op->ud = ud;
    op->aop = aop;
    if (op_arg(op, tn->cfg.prefix) || op_arg(op, names[aop]) || op_arg(op, u ? u->name : "") ||
        op_argi(op, u ? u->rpm : 0) || op_argi(op, u ? u->tpm : 0) ||
        op_arg(op, u ? u->models : "") || op_argi(op, u ? u->priority : 0) ||
        op_arg(op, u ? u->key_sha256 : "") || op_argi(op, (int64_t)set)) {
        op_fail(op, "out of memory", false);
        op_free(op);
        return NULL;
    }
    return op_start(op);
}
