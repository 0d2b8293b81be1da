/*
 * http_host — which Host header values a listener answers (DNS rebinding).
 *
 * A web page the user opens can make the browser reach a port on loopback
 * under the attacker's own DNS name (rebound to 127.0.0.1), sending that
 * name in Host. A listener that refuses unknown names closes this path:
 * the controller's API always, the gateway on a loopback address or when the
 * operator lists names. Pure functions of their inputs: nothing is
 * allocated or logged.
 */
#ifndef BRIX_CORE_HTTP_HOST_H
#define BRIX_CORE_HTTP_HOST_H

#include <stdbool.h>

#include "core/config.h"

/* host is a loopback address or "localhost" (what a local-only listener binds). */
bool brix_http_host_is_loopback(const char *host);
/*
 * DNS rebinding: a browser tricked into reaching this port sends the
 * attacker's host name in Host. Accepted: IP literals and "localhost" (with no
 * port or the listener's port), and the operator's allowed names (a bare name
 * matches any port; "name:port" exactly). NULL host (HTTP/1.0) is accepted:
 * every browser sends one.
 */
bool brix_http_host_ok(const char *host, int port, const brix_strlist_t *allowed);

#endif
