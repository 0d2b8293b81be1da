/*
 * http_host — the Host header check against DNS rebinding (see http_host.h).
 *
 * A Host is split into name and port ("[v6]:port" or "name:port"); a bare
 * IPv6 address, an empty or over-long value and a malformed port are
 * refused outright, since no browser sends them.
 */
#include "core/http_host.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static bool ip_literal(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

bool brix_http_host_is_loopback(const char *host)
{
    unsigned char a[16];
    if (!strcasecmp(host, "localhost"))
        return true;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    return inet_pton(AF_INET6, host, a) == 1 && !memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16);
}

/* Decimal 1..65535 spanning all of s[0..n), else -1. */
static long parse_port(const char *s, size_t n)
{
    long v = 0;
    if (!n || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

/* Runs on every request of a loopback gateway, so no formatting or copying
 * beyond the name itself; the common Hosts (127.0.0.1, localhost) are
 * recognised before inet_pton is asked. */
bool brix_http_host_ok(const char *host, int port, const brix_strlist_t *allowed)
{
    if (!host)
        return true;
    size_t hl = strlen(host), nl;
    const char *nb, *ps = NULL;
    if (!hl || hl >= 256)
        return false;
    if (host[0] == '[') { /* [v6]:port */
        const char *rb = memchr(host, ']', hl);
        if (!rb || (rb[1] && rb[1] != ':'))
            return false;
        nb = host + 1;
        nl = (size_t)(rb - nb);
        ps = rb[1] ? rb + 2 : NULL;
    } else {
        const char *colon = memchr(host, ':', hl);
        if (colon && memchr(colon + 1, ':', hl - (size_t)(colon + 1 - host)))
            return false; /* a bare v6 address is not a valid Host */
        nb = host;
        nl = colon ? (size_t)(colon - host) : hl;
        ps = colon ? colon + 1 : NULL;
    }
    long hp = -1;
    if (ps && (hp = parse_port(ps, hl - (size_t)(ps - host))) < 0)
        return false;
    char name[256];
    memcpy(name, nb, nl);
    name[nl] = '\0';
    for (size_t i = 0; allowed && i < allowed->n; i++) {
        const char *a = allowed->v[i];
        if (!strcasecmp(a, name) || !strcasecmp(a, host))
            return true;
    }
    /* an address or localhost cannot be an attacker's DNS name */
    bool local = (nl == 9 && !memcmp(name, "127.0.0.1", 9)) || !strcasecmp(name, "localhost") ||
                 ip_literal(name);
    return local && (hp < 0 || hp == port);
}
