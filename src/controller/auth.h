/*
 * auth — the controller API's credential and the checks every request passes
 * before a handler sees it (src/controller, shared by the controller, `brix
 * up` and the object CLI).
 *
 * The credential is one bearer token: 256 random bits as 64 hex characters in
 * STATE_DIR/token (mode 0600), or an operator's --token-file. The status page
 * takes a cookie instead, whose value is an HMAC of the token (a browser never
 * holds the token itself). Everything here is a pure function of its inputs
 * except the token file helpers; none of it logs.
 */
#ifndef BRIX_CONTROLLER_AUTH_H
#define BRIX_CONTROLLER_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "core/config.h"

#define BRIX_AUTH_TOKEN_MAX 512 /* bytes of a token, NUL included */
#define BRIX_AUTH_COOKIE    "brix_ctl_session"
#define BRIX_AUTH_REDACTED  "<redacted>"

/*
 * Reads the token in path (surrounding whitespace trimmed). With create, a
 * missing file is first made with a fresh random token: written to a private
 * temp file and linked into place, so concurrent starters agree on one token
 * and nobody reads a half-written file; *created says whether this call made
 * it. 0, or -errno with err: -ENOENT (missing, no create), -EINVAL (empty,
 * too long or not printable), others from the file system.
 */
int brix_auth_token_load(const char *path, bool create, char *out, size_t outlen, bool *created,
                         char *err, size_t errlen);
/* The status-page cookie value for token (hex HMAC-SHA256); 0 or -ENOMEM. */
int brix_auth_cookie_value(const char *token, char out[65]);
/* The value of cookie `name` in a Cookie header, copied to out; false if absent. */
bool brix_auth_cookie_get(const char *header, const char *name, char *out, size_t outlen);

/* A write's Content-Type is JSON or YAML (what no-cors cross-origin requests
 * cannot send: they are limited to text/plain and form types). */
bool brix_auth_write_type_ok(const char *content_type);

/*
 * Secrets in an engine argv rendered for API output: the value after a
 * secret-named flag (--api-key V, --hf-token V, --password V …), the value of
 * --flag=V forms, KEY=V words whose KEY names a token, key, secret or password,
 * and the password of a URL's user info. Words inside one element (a shell
 * `sh -c "…"` string) are treated like separate elements. Appends the JSON
 * array of the redacted list to b; 0 or -ENOMEM.
 */
int brix_auth_redact_json(brix_buf_t *b, const brix_strlist_t *argv);
/* One string redacted as above (pending: a secret flag ended the previous
 * string, so its first word is a value); appends to b. 0 or -ENOMEM. */
int brix_auth_redact_str(brix_buf_t *b, const char *s, bool *pending);

#endif
