/*
 * brixkv_members — the member list and key placement of libbrixkv.
 *
 * Placement is rendezvous hashing (Thaler & Ravishankar's highest random
 * weight): each key goes to the member whose xxh64(key, seed of member) is
 * highest. Removing a member only moves the keys it owned (every other key's
 * highest weight is unchanged), and adding one only takes keys to it — the
 * property that makes a node leaving cost misses on its own keys only. It is
 * O(members) per key, which is fine for the handful of nodes a fleet runs.
 */
#include "kvcache/brixkv_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

static int fail(char *err, size_t errlen, const char *what, const char *s, size_t len)
{
    if (err && errlen)
        snprintf(err, errlen, "servers: %s in \"%.*s\"", what, (int)(len > 200 ? 200 : len), s);
    return -EINVAL;
}

/* One member "host:port" or "[v6]:port" of len bytes at s (trimmed). */
static int parse_one(const char *s, size_t len, brixkv__member_t *m, char *err, size_t errlen)
{
    const char *host, *port;
    size_t hlen, plen;
    if (len == 0)
        return fail(err, errlen, "empty member", s, len);
    if (len >= sizeof(m->addr))
        return fail(err, errlen, "member too long", s, len);
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close || close + 1 >= s + len || close[1] != ':')
            return fail(err, errlen, "want [IPV6]:PORT", s, len);
        host = s + 1;
        hlen = (size_t)(close - host);
        port = close + 2;
        if (hlen == 0 || !memchr(host, ':', hlen))
            return fail(err, errlen, "brackets are for IPv6 addresses", s, len);
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < len; i++)
            if (s[i] == ':') {
                if (colon)
                    return fail(err, errlen, "IPv6 addresses need brackets ([ADDR]:PORT)", s, len);
                colon = s + i;
            }
        if (!colon)
            return fail(err, errlen, "missing :PORT", s, len);
        host = s;
        hlen = (size_t)(colon - s);
        port = colon + 1;
        if (hlen == 0)
            return fail(err, errlen, "missing host", s, len);
    }
    plen = (size_t)(s + len - port);
    if (plen == 0 || plen > 5)
        return fail(err, errlen, "bad port", s, len);
    unsigned long pv = 0;
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9')
            return fail(err, errlen, "bad port", s, len);
        pv = pv * 10 + (unsigned long)(port[i] - '0');
    }
    if (pv == 0 || pv > 65535)
        return fail(err, errlen, "port out of range", s, len);
    for (size_t i = 0; i < hlen; i++) {
        unsigned char ch = (unsigned char)host[i];
        if (ch <= ' ' || ch >= 0x7f || ch == '/' || ch == '[' || ch == ']' || ch == '@')
            return fail(err, errlen, "bad character in host", s, len);
    }
    if (hlen > BRIXKV__MAX_HOST)
        return fail(err, errlen, "host too long", s, len);
    memcpy(m->addr, s, len);
    m->addr[len] = 0;
    memcpy(m->host, host, hlen);
    m->host[hlen] = 0;
    memcpy(m->port, port, plen);
    m->port[plen] = 0;
    return 0;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

int brixkv__parse_members(const char *servers, brixkv__member_t **out, size_t *n, char *err,
                          size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!servers || !*servers) {
        if (err && errlen)
            snprintf(err, errlen, "servers: empty (want HOST:PORT[,HOST:PORT...])");
        return -EINVAL;
    }
    size_t total = strnlen(servers, BRIXKV__MAX_SERVERS_LEN + 1);
    if (total > BRIXKV__MAX_SERVERS_LEN) {
        if (err && errlen)
            snprintf(err, errlen, "servers: list longer than %d bytes", BRIXKV__MAX_SERVERS_LEN);
        return -EINVAL;
    }
    size_t cap = 1;
    for (size_t i = 0; i < total; i++)
        cap += servers[i] == ',';
    if (cap > BRIXKV__MAX_MEMBERS) {
        if (err && errlen)
            snprintf(err, errlen, "servers: more than %d members", BRIXKV__MAX_MEMBERS);
        return -EINVAL;
    }
    brixkv__member_t *m = calloc(cap, sizeof(*m));
    if (!m)
        return -ENOMEM;
    size_t cnt = 0;
    const char *p = servers, *end = servers + total;
    while (p <= end) {
        const char *q = memchr(p, ',', (size_t)(end - p));
        if (!q)
            q = end;
        const char *a = p, *b = q;
        while (a < b && is_space(*a))
            a++;
        while (b > a && is_space(b[-1]))
            b--;
        int rc = parse_one(a, (size_t)(b - a), &m[cnt], err, errlen);
        if (rc) {
            free(m);
            return rc;
        }
        for (size_t i = 0; i < cnt; i++)
            if (!strcmp(m[i].addr, m[cnt].addr)) {
                free(m);
                return fail(err, errlen, "duplicate member", a, (size_t)(b - a));
            }
        cnt++;
        p = q + 1;
    }
    *out = m;
    *n = cnt;
    return 0;
}

uint64_t brixkv__member_seed(const char *addr)
{
    return XXH64(addr, strlen(addr), 0x6272697862726978ull /* "brixbrix" */);
}

size_t brixkv__rendezvous(const uint64_t *seeds, size_t n, const brixkv_key_t *key)
{
    size_t best = 0;
    uint64_t bw = XXH64(key->b, BRIXKV_KEY_LEN, seeds[0]);
    for (size_t i = 1; i < n; i++) {
        uint64_t w = XXH64(key->b, BRIXKV_KEY_LEN, seeds[i]);
        if (w > bw || (w == bw && seeds[i] > seeds[best])) {
            best = i;
            bw = w;
        }
    }
    return best;
}
