/*
 * auth — the controller API's token, its comparison, the Host and
 * Content-Type guards, and argv redaction (see auth.h).
 *
 * Redaction errs on the side of hiding: a harmless value after a flag named
 * like a secret is hidden too, while a flag merely mentioning tokens
 * (--max-num-batched-tokens) is not treated as a secret because its name does
 * not end in one.
 */
#include "controller/auth.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/alloc.h"
#include "core/secret.h"

/* -------------------------------------------------------------- token -- */

#define TOKEN_MIN 16 /* an operator's token shorter than this is refused */

static int read_token(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    char *tok;
    int rc = brix_secret_read_file(path, &tok, err, errlen);
    if (rc)
        return rc;
    size_t len = strlen(tok);
    if (len < TOKEN_MIN || len + 1 > outlen || len + 1 > BRIX_AUTH_TOKEN_MAX) {
        snprintf(err, errlen, "%s: the token must be %d to %d characters (it has %zu)", path,
                 TOKEN_MIN, BRIX_AUTH_TOKEN_MAX - 1, len);
        rc = -EINVAL;
    } else {
        memcpy(out, tok, len + 1);
    }
    OPENSSL_cleanse(tok, len);
    brix_free(tok);
    return rc;
}

/* A fresh token written to a private temp file, then linked to path: link
 * fails with EEXIST if another starter won the race, and then both use that
 * one. Never a half-written file under the final name. */
static int make_token(const char *path, char *err, size_t errlen)
{
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        snprintf(err, errlen, "no random bytes for a token");
        return -EIO;
    }
    char hex[sizeof raw * 2 + 2];
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    hex[sizeof raw * 2] = '\n';
    OPENSSL_cleanse(raw, sizeof raw);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(e));
        return -e;
    }
    size_t len = sizeof raw * 2 + 1;
    int rc = 0;
    if (write(fd, hex, len) != (ssize_t)len || fsync(fd))
        rc = errno ? -errno : -EIO;
    close(fd);
    OPENSSL_cleanse(hex, sizeof hex);
    if (!rc && link(tmp, path) && errno != EEXIST)
        rc = -errno;
    unlink(tmp);
    if (rc)
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
    return rc;
}

int brix_auth_token_load(const char *path, bool create, char *out, size_t outlen, bool *created,
                         char *err, size_t errlen)
{
    if (created)
        *created = false;
    int rc = read_token(path, out, outlen, err, errlen);
    if (rc != -ENOENT || !create)
        return rc;
    if ((rc = make_token(path, err, errlen)))
        return rc;
    rc = read_token(path, out, outlen, err, errlen);
    if (!rc && created)
        *created = true;
    return rc;
}

int brix_auth_cookie_value(const char *token, char out[65])
{
    static const char label[] = "brix controller status page v1";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!HMAC(EVP_sha256(), token, (int)strlen(token), (const unsigned char *)label,
              sizeof label - 1, mac, &n) ||
        n != 32)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
    return 0;
}

bool brix_auth_cookie_get(const char *header, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    for (const char *p = header; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l > nl && !strncmp(p, name, nl) && p[nl] == '=') {
            size_t vl = l - nl - 1;
            while (vl && (p[nl + 1 + vl - 1] == ' ' || p[nl + 1 + vl - 1] == '\t'))
                vl--;
            if (vl + 1 > outlen)
                return false;
            memcpy(out, p + nl + 1, vl);
            out[vl] = '\0';
            return true;
        }
        p = end;
    }
    return false;
}

/* -------------------------------------------------------------- types -- */

bool brix_auth_write_type_ok(const char *ct)
{
    static const char *const ok[] = { "application/json", "application/yaml", "application/x-yaml",
                                      "text/yaml", NULL };
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t l = strcspn(ct, ";");
    while (l && (ct[l - 1] == ' ' || ct[l - 1] == '\t'))
        l--;
    for (size_t i = 0; ok[i]; i++)
        if (strlen(ok[i]) == l && !strncasecmp(ct, ok[i], l))
            return true;
    return false;
}

/* ---------------------------------------------------------- redaction -- */

static bool ends_with(const char *s, size_t l, const char *suf)
{
    size_t n = strlen(suf);
    return l >= n && !strncmp(s + l - n, suf, n);
}

/* A flag name (dashes stripped) that holds a secret value. */
static bool secret_flag(const char *s, size_t l)
{
    static const char *const exact[] = { "key",    "token", "password", "passwd", "pass",
                                         "secret", "auth",  "apikey",   NULL };
    static const char *const suffix[] = { "-key",    "-token",  "-password", "-passwd",
                                          "-secret", "-apikey", "-auth",     NULL };
    char n[64];
    if (!l || l >= sizeof n)
        return false;
    for (size_t i = 0; i < l; i++)
        n[i] = s[i] == '_' ? '-' : (char)tolower((unsigned char)s[i]);
    n[l] = '\0';
    for (size_t i = 0; exact[i]; i++)
        if (!strcmp(n, exact[i]))
            return true;
    for (size_t i = 0; suffix[i]; i++)
        if (ends_with(n, l, suffix[i]))
            return true;
    return false;
}

/* KEY of a KEY=VALUE word names a secret (HF_TOKEN, OPENAI_API_KEY, …). */
static bool secret_env(const char *s, size_t l)
{
    static const char *const words[] = { "TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", NULL };
    if (!l || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    char u[128];
    if (l >= sizeof u)
        return false;
    for (size_t i = 0; i < l; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '_')
            return false;
        u[i] = (char)toupper((unsigned char)s[i]);
    }
    u[l] = '\0';
    for (size_t i = 0; words[i]; i++)
        if (strstr(u, words[i]))
            return true;
    return false;
}

/* Appends w, with the password of a scheme://user:password@ URL hidden. */
static int put_url(brix_buf_t *b, const char *w, size_t l)
{
    const char *sep = memmem(w, l, "://", 3);
    if (sep) {
        const char *host = sep + 3, *end = w + l;
        size_t auth_len = strcspn(host, "/?#");
        if (host + auth_len > end)
            auth_len = (size_t)(end - host);
        const char *at = memchr(host, '@', auth_len);
        const char *colon = at ? memchr(host, ':', (size_t)(at - host)) : NULL;
        if (colon)
            return brix_buf_append(b, w, (size_t)(colon + 1 - w)) |
                   brix_buf_append_str(b, BRIX_AUTH_REDACTED) |
                   brix_buf_append(b, at, (size_t)(end - at));
    }
    return brix_buf_append(b, w, l);
}

static int redact_word(brix_buf_t *b, const char *w, size_t l, bool *pending)
{
    bool flag = l > 1 && w[0] == '-';
    if (*pending) {
        *pending = false;
        if (!flag) /* --api-key --port: the flag had no value here */
            return brix_buf_append_str(b, BRIX_AUTH_REDACTED);
    }
    const char *eq = memchr(w, '=', l);
    if (flag) {
        const char *n = w;
        while (n < w + l && *n == '-')
            n++;
        size_t nl = (size_t)((eq ? eq : w + l) - n);
        if (secret_flag(n, nl)) {
            if (!eq) {
                *pending = true;
                return brix_buf_append(b, w, l);
            }
            return brix_buf_append(b, w, (size_t)(eq + 1 - w)) |
                   brix_buf_append_str(b, BRIX_AUTH_REDACTED);
        }
        return put_url(b, w, l);
    }
    if (eq && secret_env(w, (size_t)(eq - w)))
        return brix_buf_append(b, w, (size_t)(eq + 1 - w)) |
               brix_buf_append_str(b, BRIX_AUTH_REDACTED);
    return put_url(b, w, l);
}

int brix_auth_redact_str(brix_buf_t *b, const char *s, bool *pending)
{
    int rc = 0;
    while (*s) {
        size_t sp = strspn(s, " \t\n");
        rc |= brix_buf_append(b, s, sp);
        s += sp;
        size_t wl = strcspn(s, " \t\n");
        if (wl)
            rc |= redact_word(b, s, wl, pending);
        s += wl;
    }
    return rc ? -ENOMEM : 0;
}

int brix_auth_redact_json(brix_buf_t *b, const brix_strlist_t *argv)
{
    bool pending = false;
    brix_buf_t one = BRIX_BUF_INIT;
    int rc = brix_buf_append_char(b, '[');
    for (size_t i = 0; i < argv->n; i++) {
        one.len = 0;
        rc |= brix_auth_redact_str(&one, argv->v[i], &pending);
        rc |= i ? brix_buf_append_char(b, ',') : 0;
        rc |= brix_buf_append_json_str(b, one.data ? one.data : "", one.len);
    }
    brix_buf_free(&one);
    rc |= brix_buf_append_char(b, ']');
    return rc ? -ENOMEM : 0;
}
