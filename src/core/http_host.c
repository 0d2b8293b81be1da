/*
 * http_host — the Host header check against DNS rebinding (see http_host.h).
 *
 * A Host is split into name and port ("[v6]:port" or "name:port"); a bare
 * IPv6 address, an empty or over-long value and a malformed port are
 * refused outright, since no browser sends them.
 */
#include "core/http_host.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
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

bool brix_http_host_ok(const char *host, int port, const brix_strlist_t *allowed)
{
    if (!host)
        return true;
    char name[256];
    const char *ps = NULL;
    size_t hl = strlen(host);
    if (!hl || hl >= sizeof name)
        return false;
    if (host[0] == '[') { /* [v6]:port */
        const char *rb = strchr(host, ']');
        if (!rb || (rb[1] && rb[1] != ':'))
            return false;
        snprintf(name, sizeof name, "%.*s", (int)(rb - host - 1), host + 1);
        ps = rb[1] ? rb + 2 : NULL;
    } else {
        const char *colon = strchr(host, ':');
        if (colon && strchr(colon + 1, ':'))
            return false; /* a bare v6 address is not a valid Host */
        snprintf(name, sizeof name, "%.*s", (int)(colon ? colon - host : (long)hl), host);
        ps = colon ? colon + 1 : NULL;
    }
    long hp = -1;
    if (ps) {
        char *end;
        hp = strtol(ps, &end, 10);
        if (!*ps || *end || hp < 1 || hp > 65535)
            return false;
    }
    for (size_t i = 0; allowed && i < allowed->n; i++) {
        const char *a = allowed->v[i];
        if (!strcasecmp(a, name) || !strcasecmp(a, host))
            return true;
    }
    /* an address or localhost cannot be an attacker's DNS name */
    if (ip_literal(name) || !strcasecmp(name, "localhost"))
        return hp < 0 || hp == port;
    return false;
}
