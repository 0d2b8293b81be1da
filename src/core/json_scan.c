/*
 * Recursive-descent validator over a byte span. Depth is bounded, so the
 * recursion is too; every function returns the offset just past the value
 * it read, or SIZE_MAX with the error position recorded in the scanner.
 */
#include "core/json_scan.h"

#include <stdint.h>
#include <string.h>

typedef struct scanner {
    const char *s;
    size_t len;
    size_t err_off;
    const char *err_what;
    int depth;
} scanner_t;

#define BAD SIZE_MAX

static size_t fail(scanner_t *sc, size_t at, const char *what)
{
    sc->err_off = at;
    sc->err_what = what;
    return BAD;
}

static size_t ws(const scanner_t *sc, size_t i)
{
    while (i < sc->len) {
        char c = sc->s[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        i++;
    }
    return i;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs,
 * no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const char *p, size_t avail)
{
    const unsigned char *u = (const unsigned char *)p;
    unsigned char c = u[0];
    size_t n;
    uint32_t min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    uint32_t cp = c & (0x7f >> n);
    for (size_t k = 1; k < n; k++) {
        if ((u[k] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (u[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
        return 0;
    return n;
}

/* i is at the opening quote; returns the offset past the closing quote. */
static size_t scan_string(scanner_t *sc, size_t i)
{
    const char *s = sc->s;
    i++;
    for (;;) {
        /* fast path over plain ASCII */
        while (i < sc->len) {
            unsigned char c = (unsigned char)s[i];
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80)
                break;
            i++;
        }
        if (i >= sc->len)
            return fail(sc, sc->len, "unterminated string");
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            return i + 1;
        if (c >= 0x80) {
            size_t n = utf8_len(s + i, sc->len - i);
            if (!n)
                return fail(sc, i, "invalid UTF-8 in string");
            i += n;
            continue;
        }
        if (c < 0x20)
            return fail(sc, i, "control character in string");
        /* escape */
        if (i + 1 >= sc->len)
            return fail(sc, sc->len, "unterminated string");
        char e = s[i + 1];
        if (e == 'u') {
            if (i + 6 > sc->len)
                return fail(sc, sc->len, "unterminated \\u escape");
            for (size_t k = 2; k < 6; k++)
                if (hexval(s[i + k]) < 0)
                    return fail(sc, i + k, "bad \\u escape");
            i += 6;
        } else if (strchr("\"\\/bfnrt", e) && e) {
            i += 2;
        } else {
            return fail(sc, i + 1, "bad escape in string");
        }
    }
}

static size_t scan_number(scanner_t *sc, size_t i)
{
    const char *s = sc->s;
    size_t start = i;
    if (i < sc->len && s[i] == '-')
        i++;
    if (i >= sc->len)
        return fail(sc, i, "bad number");
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < sc->len && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return fail(sc, i, i == start ? "unexpected character" : "bad number");
    }
    if (i < sc->len && s[i] == '.') {
        i++;
        if (i >= sc->len || s[i] < '0' || s[i] > '9')
            return fail(sc, i, "bad number");
        while (i < sc->len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < sc->len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < sc->len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= sc->len || s[i] < '0' || s[i] > '9')
            return fail(sc, i, "bad number");
        while (i < sc->len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    return i;
}

static size_t scan_value(scanner_t *sc, size_t i, brix_json_val_t *v);

static size_t scan_literal(scanner_t *sc, size_t i, const char *lit, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        if (i + k >= sc->len || sc->s[i + k] != lit[k])
            return fail(sc, i + k, "unexpected character");
    }
    return i + n;
}

static size_t scan_array(scanner_t *sc, size_t i)
{
    i = ws(sc, i + 1);
    if (i < sc->len && sc->s[i] == ']')
        return i + 1;
    for (;;) {
        brix_json_val_t v;
        i = scan_value(sc, i, &v);
        if (i == BAD)
            return BAD;
        i = ws(sc, i);
        if (i >= sc->len)
            return fail(sc, i, "unterminated array");
        if (sc->s[i] == ']')
            return i + 1;
        if (sc->s[i] != ',')
            return fail(sc, i, "expected ',' or ']'");
        i = ws(sc, i + 1);
    }
}

/* Scans an object; for the top level (fn != NULL) reports each member. */
static size_t scan_object(scanner_t *sc, size_t i, brix_json_member_fn fn, void *ud, bool *stopped)
{
    i = ws(sc, i + 1);
    if (i < sc->len && sc->s[i] == '}')
        return i + 1;
    for (;;) {
        if (i >= sc->len)
            return fail(sc, i, "unterminated object");
        if (sc->s[i] != '"')
            return fail(sc, i, "expected a string key");
        size_t kstart = i + 1;
        i = scan_string(sc, i);
        if (i == BAD)
            return BAD;
        size_t kend = i - 1;
        i = ws(sc, i);
        if (i >= sc->len || sc->s[i] != ':')
            return fail(sc, i, "expected ':'");
        i = ws(sc, i + 1);
        brix_json_val_t v;
        i = scan_value(sc, i, &v);
        if (i == BAD)
            return BAD;
        if (fn && fn(sc->s + kstart, kend - kstart, &v, ud)) {
            *stopped = true;
            return i;
        }
        i = ws(sc, i);
        if (i >= sc->len)
            return fail(sc, i, "unterminated object");
        if (sc->s[i] == '}')
            return i + 1;
        if (sc->s[i] != ',')
            return fail(sc, i, "expected ',' or '}'");
        i = ws(sc, i + 1);
    }
}

static size_t scan_value(scanner_t *sc, size_t i, brix_json_val_t *v)
{
    if (i >= sc->len)
        return fail(sc, i, "unexpected end of input");
    size_t start = i, end;
    switch (sc->s[i]) {
    case '"':
        end = scan_string(sc, i);
        if (end != BAD) {
            v->kind = BRIX_JSON_STRING;
            v->p = sc->s + start + 1;
            v->n = end - start - 2;
        }
        return end;
    case '{':
    case '[': {
        if (++sc->depth > BRIX_JSON_SCAN_MAX_DEPTH)
            return fail(sc, i, "nesting too deep");
        bool st = false;
        end = sc->s[i] == '{' ? scan_object(sc, i, NULL, NULL, &st) : scan_array(sc, i);
        sc->depth--;
        v->kind = sc->s[start] == '{' ? BRIX_JSON_OBJECT : BRIX_JSON_ARRAY;
        break;
    }
    case 't':
        end = scan_literal(sc, i, "true", 4);
        v->kind = BRIX_JSON_TRUE;
        break;
    case 'f':
        end = scan_literal(sc, i, "false", 5);
        v->kind = BRIX_JSON_FALSE;
        break;
    case 'n':
        end = scan_literal(sc, i, "null", 4);
        v->kind = BRIX_JSON_NULL;
        break;
    default:
        end = scan_number(sc, i);
        v->kind = BRIX_JSON_NUMBER;
        break;
    }
    if (end != BAD) {
        v->p = sc->s + start;
        v->n = end - start;
    }
    return end;
}

brix_json_scan_rc_t brix_json_scan(const char *s, size_t len, brix_json_member_fn fn, void *ud,
                                   size_t *err_off, const char **err_what)
{
    scanner_t sc = { s, len, 0, NULL, 0 };
    size_t i = ws(&sc, 0);
    brix_json_scan_rc_t rc = BRIX_JSON_SCAN_OK;
    size_t end;
    if (i < len && s[i] == '{') {
        bool stopped = false;
        sc.depth = 1;
        end = scan_object(&sc, i, fn, ud, &stopped);
        if (stopped)
            return BRIX_JSON_SCAN_STOPPED;
    } else {
        brix_json_val_t v;
        end = scan_value(&sc, i, &v);
        rc = BRIX_JSON_SCAN_NOT_OBJECT;
    }
    if (end != BAD) {
        end = ws(&sc, end);
        if (end < len)
            end = fail(&sc, end, "unexpected data after the JSON value");
    }
    if (end == BAD) {
        if (err_off)
            *err_off = sc.err_off;
        if (err_what)
            *err_what = sc.err_what;
        return BRIX_JSON_SCAN_INVALID;
    }
    return rc;
}

static void put_utf8(char **o, uint32_t cp)
{
    char *p = *o;
    if (cp < 0x80) {
        *p++ = (char)cp;
    } else if (cp < 0x800) {
        *p++ = (char)(0xc0 | (cp >> 6));
        *p++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *p++ = (char)(0xe0 | (cp >> 12));
        *p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *p++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *p++ = (char)(0xf0 | (cp >> 18));
        *p++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *p++ = (char)(0x80 | (cp & 0x3f));
    }
    *o = p;
}

static uint32_t hex4(const char *p)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++)
        v = v * 16 + (uint32_t)hexval(p[k]);
    return v;
}

/* Decodes the escape at p[*i] (a backslash) into out (at most 4 bytes),
 * advancing *i past it; returns the bytes written. The span was validated
 * by the scanner, so every escape is complete. */
static size_t decode_escape(const char *p, size_t n, size_t *i, char *out)
{
    char e = p[*i + 1];
    *i += 2;
    switch (e) {
    case 'b':
        *out = '\b';
        return 1;
    case 'f':
        *out = '\f';
        return 1;
    case 'n':
        *out = '\n';
        return 1;
    case 'r':
        *out = '\r';
        return 1;
    case 't':
        *out = '\t';
        return 1;
    case 'u': {
        uint32_t cp = hex4(p + *i);
        *i += 4;
        if (cp >= 0xd800 && cp < 0xdc00 && *i + 6 <= n && p[*i] == '\\' && p[*i + 1] == 'u') {
            uint32_t lo = hex4(p + *i + 2);
            if (lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                *i += 6;
            }
        }
        /* \u escapes take 6 bytes and decode to at most 4 (a lone
         * surrogate becomes U+FFFD, 3 bytes) */
        if (cp >= 0xd800 && cp < 0xe000)
            cp = 0xfffd;
        char *o = out;
        put_utf8(&o, cp);
        return (size_t)(o - out);
    }
    default:
        *out = e; /* \" \\ \/ */
        return 1;
    }
}

size_t brix_json_unescape(const char *p, size_t n, char *out)
{
    char *o = out;
    for (size_t i = 0; i < n;) {
        /* copy the run up to the next escape in one go */
        const char *bs = memchr(p + i, '\\', n - i);
        size_t run = bs ? (size_t)(bs - (p + i)) : n - i;
        memcpy(o, p + i, run);
        o += run;
        i += run;
        if (i >= n)
            break;
        o += decode_escape(p, n, &i, o);
    }
    *o = '\0';
    return (size_t)(o - out);
}

size_t brix_json_key_decode(const char *key, size_t klen, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < klen;) {
        char tmp[4];
        size_t n = 1;
        if (key[i] == '\\')
            n = decode_escape(key, klen, &i, tmp);
        else
            tmp[0] = key[i++];
        if (o + n > cap)
            return SIZE_MAX; /* longer than any key the caller looks for */
        memcpy(out + o, tmp, n);
        o += n;
    }
    return o;
}

bool brix_json_key_is(const char *key, size_t klen, const char *want)
{
    size_t wl = strlen(want);
    if (!memchr(key, '\\', klen))
        return wl == klen && !memcmp(key, want, klen);
    /* an escaped spelling ("mod\u0065l") is the same key to every JSON
     * parser downstream, so it must be the same key here */
    char buf[64];
    if (wl > sizeof buf)
        return false;
    size_t n = brix_json_key_decode(key, klen, buf, sizeof buf);
    return n == wl && !memcmp(buf, want, wl);
}

void brix_json_each(const brix_json_val_t *v, brix_json_member_fn fn, void *ud)
{
    scanner_t sc = { v->p, v->n, 0, NULL, 1 };
    if (v->kind == BRIX_JSON_OBJECT) {
        bool stopped = false;
        scan_object(&sc, 0, fn, ud, &stopped);
        return;
    }
    if (v->kind != BRIX_JSON_ARRAY)
        return;
    size_t i = ws(&sc, 1);
    if (i < sc.len && sc.s[i] == ']')
        return;
    for (;;) {
        brix_json_val_t e;
        i = scan_value(&sc, i, &e);
        if (i == BAD || fn(NULL, 0, &e, ud))
            return;
        i = ws(&sc, i);
        if (i >= sc.len || sc.s[i] != ',')
            return;
        i = ws(&sc, i + 1);
    }
}
