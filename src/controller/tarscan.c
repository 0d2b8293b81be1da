/*
 * tarscan — the tar stream check (see tarscan.h). Understood: ustar and GNU
 * headers (octal or base-256 sizes, the ustar prefix), GNU long names (L, K)
 * and pax headers (x, g: path, linkpath, size). Members may be files,
 * directories and symlinks whose target is relative without '..'; hard links,
 * devices, FIFOs and anything else (sparse, multi-volume) are refused.
 */
#include "controller/tarscan.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define TARSCAN_MAX_META (64u << 10) /* a GNU long name or one pax header's records */

__attribute__((format(printf, 3, 4))) static void
refuse(brix_tarscan_t *t, brix_tarscan_verdict_t v, const char *fmt, ...)
{
    if (t->verdict != BRIX_TARSCAN_OK)
        return; /* keep the first cause */
    t->verdict = v;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof t->why, fmt, ap);
    va_end(ap);
}

void brix_tarscan_init(brix_tarscan_t *t, uint64_t max_bytes, uint64_t max_files)
{
    memset(t, 0, sizeof *t);
    t->max_bytes = max_bytes;
    t->max_files = max_files;
}

bool brix_tarscan_pending(const brix_tarscan_t *t)
{
    return t->left > 0 || t->meta_type;
}

bool brix_tarscan_unsafe_name(const char *s, size_t n)
{
    if (n > 0 && s[0] == '/')
        return 1;
    for (size_t i = 0; i < n;) {
        size_t c = i;
        while (c < n && s[c] != '/')
            c++;
        if (c - i == 2 && s[i] == '.' && s[i + 1] == '.')
            return 1;
        i = c + 1;
    }
    return 0;
}

static uint64_t tar_num(const unsigned char *f, size_t n, int *bad)
{
    uint64_t v = 0;
    if (f[0] & 0x80) { /* GNU base-256, big-endian; only non-negative values under 2^56 */
        if (f[0] != 0x80)
            *bad = 1;
        for (size_t i = 1; i < n && !*bad; i++) {
            if (v >> 48)
                *bad = 1;
            v = v << 8 | f[i];
        }
        return *bad ? 0 : v;
    }
    size_t i = 0;
    while (i < n && f[i] == ' ')
        i++;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60)
            *bad = 1;
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0')
            *bad = 1;
    return v;
}

static char *field_dup(const unsigned char *f, size_t n)
{
    size_t len = strnlen((const char *)f, n);
    return brix_strndup((const char *)f, len);
}

static void scan_reset_next(brix_tarscan_t *t)
{
    brix_free(t->name);
    brix_free(t->link);
    t->name = t->link = NULL;
    t->has_size = 0;
}

/* pax records "LEN key=value\n"; for x the overrides of the next member, for g
 * (a global header, `git archive` writes one) path/linkpath are refused. */
static int scan_pax(brix_tarscan_t *t, int global)
{
    const char *p = t->meta.data ? t->meta.data : "", *end = p + t->meta.len;
    while (p < end) {
        char *e;
        unsigned long long len = strtoull(p, &e, 10);
        if (e == p || *e != ' ' || len < 5 || len > (size_t)(end - p) || p[len - 1] != '\n') {
            refuse(t, BRIX_TARSCAN_UNSAFE, "malformed pax header in the archive");
            return -1;
        }
        const char *kv = e + 1, *rec_end = p + len - 1,
                   *eq = memchr(kv, '=', (size_t)(rec_end - kv));
        if (!eq) {
            refuse(t, BRIX_TARSCAN_UNSAFE, "malformed pax header in the archive");
            return -1;
        }
        size_t kl = (size_t)(eq - kv);
        char *val = brix_strndup(eq + 1, (size_t)(rec_end - eq - 1));
        if (!val) {
            refuse(t, BRIX_TARSCAN_NOMEM, "out of memory");
            return -1;
        }
        int is_path = kl == 4 && !memcmp(kv, "path", 4);
        int is_link = kl == 8 && !memcmp(kv, "linkpath", 8);
        if (global && (is_path || is_link)) {
            brix_free(val);
            refuse(t, BRIX_TARSCAN_UNSAFE, "a global pax header sets a member path; refusing");
            return -1;
        }
        if (is_path) {
            brix_free(t->name);
            t->name = val;
        } else if (is_link) {
            brix_free(t->link);
            t->link = val;
        } else {
            if (!global && kl == 4 && !memcmp(kv, "size", 4)) {
                char *se;
                errno = 0;
                t->size = strtoull(val, &se, 10);
                if (errno || se == val || *se) {
                    brix_free(val);
                    refuse(t, BRIX_TARSCAN_UNSAFE, "bad pax size in the archive");
                    return -1;
                }
                t->has_size = 1;
            }
            brix_free(val);
        }
        p += len;
    }
    return 0;
}

static int scan_meta_done(brix_tarscan_t *t)
{
    char type = t->meta_type;
    t->meta_type = 0;
    if (type == 'x' || type == 'g')
        return scan_pax(t, type == 'g');
    char *v = brix_strndup(t->meta.data ? t->meta.data : "",
                           strnlen(t->meta.data ? t->meta.data : "", t->meta.len));
    if (!v) {
        refuse(t, BRIX_TARSCAN_NOMEM, "out of memory");
        return -1;
    }
    char **slot = type == 'L' ? &t->name : &t->link;
    brix_free(*slot);
    *slot = v;
    return 0;
}

int brix_tarscan_block(brix_tarscan_t *t, const unsigned char *b)
{
    if (t->verdict != BRIX_TARSCAN_OK)
        return -1;     /* refused once: nothing after it is judged */
    if (t->left > 0) { /* member or metadata data */
        size_t n = t->left < 512 ? (size_t)t->left : 512;
        t->left -= n;
        if (t->meta_type) {
            if (brix_buf_append(&t->meta, b, n) != 0) {
                refuse(t, BRIX_TARSCAN_NOMEM, "out of memory");
                return -1;
            }
            if (t->left == 0)
                return scan_meta_done(t);
        }
        return 0;
    }
    size_t z = 0;
    while (z < 512 && b[z] == 0)
        z++;
    if (z == 512) {
        t->done = ++t->zeros >= 2;
        return 0;
    }
    t->zeros = 0;
    /* metadata headers are bounded too: endless pax headers must not spin forever */
    if (++t->headers > 4 * t->max_files + 4) {
        refuse(t, BRIX_TARSCAN_TOO_LARGE, "more than %llu archive headers",
               (unsigned long long)(4 * t->max_files + 4));
        return -1;
    }
    int bad = 0;
    unsigned sum = 0;
    for (size_t i = 0; i < 512; i++)
        sum += i >= 148 && i < 156 ? ' ' : b[i];
    if (tar_num(b + 148, 8, &bad) != sum || bad) {
        refuse(t, BRIX_TARSCAN_BAD, "not a tar archive (bad header checksum)");
        return -1;
    }
    char type = (char)b[156];
    uint64_t size = tar_num(b + 124, 12, &bad);
    if (bad) {
        refuse(t, BRIX_TARSCAN_BAD, "not a tar archive (bad member size)");
        return -1;
    }
    if (strchr("LKxg", type) && type) {
        if (size > TARSCAN_MAX_META) {
            refuse(t, BRIX_TARSCAN_UNSAFE, "archive metadata of %llu bytes (over %u)",
                   (unsigned long long)size, TARSCAN_MAX_META);
            return -1;
        }
        t->meta_type = type;
        t->left = size;
        brix_buf_reset(&t->meta);
        return size == 0 ? scan_meta_done(t) : 0;
    }
    if (t->has_size)
        size = t->size;
    char *name = t->name;
    char *own = NULL;
    if (!name) {
        own = field_dup(b, 100);
        if (own && !memcmp(b + 257, "ustar\0", 6) && b[345]) { /* POSIX prefix */
            char *pre = field_dup(b + 345, 155);
            brix_buf_t nb = BRIX_BUF_INIT;
            if (pre && brix_buf_printf(&nb, "%s/%s", pre, own) == 0) {
                brix_free(own);
                own = nb.data;
            } else {
                brix_buf_free(&nb);
                brix_free(own);
                own = NULL;
            }
            brix_free(pre);
        }
        name = own;
    }
    char *link = t->link ? t->link : NULL, *own_link = NULL;
    if (!link)
        link = own_link = field_dup(b + 157, 100);
    int rc = -1;
    if (!name || !link) {
        refuse(t, BRIX_TARSCAN_NOMEM, "out of memory");
    } else if (!name[0]) {
        refuse(t, BRIX_TARSCAN_UNSAFE, "archive member with an empty name");
    } else if (brix_tarscan_unsafe_name(name, strlen(name))) {
        refuse(t, BRIX_TARSCAN_UNSAFE,
               "archive member '%.200s' has an absolute path or a '..' component; "
               "refusing to unpack",
               name);
    } else if (type == '1') {
        refuse(t, BRIX_TARSCAN_UNSAFE, "archive member '%.200s' is a hard link; refusing to unpack",
               name);
    } else if (type == '2' && (!link[0] || brix_tarscan_unsafe_name(link, strlen(link)))) {
        refuse(t, BRIX_TARSCAN_UNSAFE,
               "archive member '%.200s' is a symlink to '%.200s', outside the archive; "
               "refusing to unpack",
               name, link);
    } else if (type == '3' || type == '4' || type == '6') {
        refuse(t, BRIX_TARSCAN_UNSAFE,
               "archive member '%.200s' is a device file or a FIFO; refusing to unpack", name);
    } else if (!strchr("0725", type)) { /* '\0' (old tar) is a file too: strchr finds the NUL */
        refuse(t, BRIX_TARSCAN_UNSAFE,
               "archive member '%.200s' has unsupported type '%c'; refusing to unpack", name,
               isprint((unsigned char)type) ? type : '?');
    } else if (size && (type == '2' || type == '5' || name[strlen(name) - 1] == '/')) {
        /* tar may or may not skip data after a directory or a symlink; either
         * way it would read blocks this scan did not judge as headers */
        refuse(t, BRIX_TARSCAN_UNSAFE,
               "archive member '%.200s' is a directory or a symlink with %llu bytes of data; "
               "refusing to unpack",
               name, (unsigned long long)size);
    } else if (++t->files > t->max_files) {
        refuse(t, BRIX_TARSCAN_TOO_LARGE, "the archive holds more than %llu files",
               (unsigned long long)t->max_files);
    } else if (size > t->max_bytes - t->bytes) {
        refuse(t, BRIX_TARSCAN_TOO_LARGE, "unpacked size over %llu bytes",
               (unsigned long long)t->max_bytes);
    } else {
        t->bytes += size;
        t->left = size;
        rc = 0;
    }
    brix_free(own);
    brix_free(own_link);
    scan_reset_next(t);
    return rc;
}

void brix_tarscan_free(brix_tarscan_t *t)
{
    brix_buf_free(&t->meta);
    scan_reset_next(t);
}
