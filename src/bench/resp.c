/*
 * resp — see resp.h: a blocking RESP2 client whose GET reads bulk values
 * straight into the caller's buffers and whose SET writes them from there.
 */
#include "bench/resp.h"

#include "core/alloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

static void set_timeouts(int fd, int timeout_ms)
{
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void conn_init(resp_conn_t *c)
{
    c->fd = -1;
    c->pos = c->len = 0;
    c->err[0] = '\0';
    c->cmd = (brix_buf_t)BRIX_BUF_INIT;
}

int resp_connect_tcp(resp_conn_t *c, int port, int timeout_ms)
{
    conn_init(c);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    set_timeouts(fd, timeout_ms);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    c->fd = fd;
    return 0;
}

int resp_connect_unix(resp_conn_t *c, const char *path, int timeout_ms)
{
    conn_init(c);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof a.sun_path)
        return -ENAMETOOLONG;
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    set_timeouts(fd, timeout_ms);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    c->fd = fd;
    return 0;
}

void resp_close(resp_conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    brix_buf_free(&c->cmd);
}

/* Writes every iov, resuming after partial writes; MSG_NOSIGNAL so a dead
 * server is an error, not SIGPIPE. */
static int send_iov(int fd, struct iovec *iov, size_t n)
{
    while (n) {
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = n < IOV_MAX ? n : IOV_MAX };
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        }
        size_t left = (size_t)w;
        while (n && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* Reads more into the staging buffer (compacting it first). */
static int fill(resp_conn_t *c)
{
    if (c->pos == c->len) {
        c->pos = c->len = 0;
    } else if (c->len == sizeof c->stage) {
        memmove(c->stage, c->stage + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
        if (c->len == sizeof c->stage)
            return -EPROTO; /* a line longer than the stage */
    }
    for (;;) {
        ssize_t r = read(c->fd, c->stage + c->len, sizeof c->stage - c->len);
        if (r > 0) {
            c->len += (size_t)r;
            return 0;
        }
        if (r == 0)
            return -ECONNRESET;
        if (errno != EINTR)
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
    }
}

/* The next line without its CRLF: [*s, *s + *n). Valid until the next read. */
static int read_line(resp_conn_t *c, const char **s, size_t *n)
{
    for (;;) {
        const char *b = c->stage + c->pos;
        const char *nl = c->len > c->pos ? memchr(b, '\n', c->len - c->pos) : NULL;
        if (nl) {
            if (nl == b || nl[-1] != '\r')
                return -EPROTO;
            *s = b;
            *n = (size_t)(nl - 1 - b);
            c->pos += (size_t)(nl + 1 - b);
            return 0;
        }
        int rc = fill(c);
        if (rc)
            return rc;
    }
}

/* n payload bytes into dst: what is staged is copied, the rest read in place. */
static int read_into(resp_conn_t *c, char *dst, size_t n)
{
    size_t have = c->len - c->pos;
    size_t k = have < n ? have : n;
    memcpy(dst, c->stage + c->pos, k);
    c->pos += k;
    while (k < n) {
        ssize_t r = read(c->fd, dst + k, n - k);
        if (r > 0) {
            k += (size_t)r;
        } else if (r == 0) {
            return -ECONNRESET;
        } else if (errno != EINTR) {
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        }
    }
    return 0;
}

static int skip_crlf(resp_conn_t *c)
{
    while (c->len - c->pos < 2) {
        int rc = fill(c);
        if (rc)
            return rc;
    }
    if (c->stage[c->pos] != '\r' || c->stage[c->pos + 1] != '\n')
        return -EPROTO;
    c->pos += 2;
    return 0;
}

static int parse_len(const char *s, size_t n, long long *v)
{
    char tmp[32];
    if (n == 0 || n >= sizeof tmp)
        return -EPROTO;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *e;
    errno = 0;
    *v = strtoll(tmp, &e, 10);
    return *e || errno ? -EPROTO : 0;
}

static int error_line(resp_conn_t *c, const char *s, size_t n)
{
    snprintf(c->err, sizeof c->err, "%.*s", (int)(n > 150 ? 150 : n), s);
    return -EPROTO;
}

/* One bulk reply into dst (cap bytes); *len = SIZE_MAX for nil. */
static int read_bulk(resp_conn_t *c, char *dst, size_t cap, size_t *len)
{
    const char *s;
    size_t n;
    long long v;
    int rc = read_line(c, &s, &n);
    if (rc)
        return rc;
    if (n && s[0] == '-')
        return error_line(c, s + 1, n - 1);
    if (!n || s[0] != '$' || parse_len(s + 1, n - 1, &v))
        return -EPROTO;
    if (v < 0) {
        *len = SIZE_MAX;
        return 0;
    }
    if ((unsigned long long)v > cap)
        return -EMSGSIZE;
    *len = (size_t)v;
    rc = read_into(c, dst, (size_t)v);
    return rc ? rc : skip_crlf(c);
}

static void arg(brix_buf_t *b, const char *s, size_t n)
{
    brix_buf_printf(b, "$%zu\r\n", n);
    brix_buf_append(b, s, n);
    brix_buf_append_str(b, "\r\n");
}

int resp_get(resp_conn_t *c, const char *const *keys, size_t n, void *const *bufs, size_t cap,
             size_t *lens)
{
    if (!n)
        return 0;
    brix_buf_reset(&c->cmd);
    brix_buf_printf(&c->cmd, "*%zu\r\n", n + 1);
    if (n == 1)
        arg(&c->cmd, "GET", 3);
    else
        arg(&c->cmd, "MGET", 4);
    for (size_t i = 0; i < n; i++)
        arg(&c->cmd, keys[i], strlen(keys[i]));
    if (!c->cmd.data)
        return -ENOMEM;
    struct iovec iov = { c->cmd.data, c->cmd.len };
    int rc = send_iov(c->fd, &iov, 1);
    if (rc)
        return rc;
    if (n > 1) {
        const char *s;
        size_t l;
        long long v;
        if ((rc = read_line(c, &s, &l)))
            return rc;
        if (l && s[0] == '-')
            return error_line(c, s + 1, l - 1);
        if (!l || s[0] != '*' || parse_len(s + 1, l - 1, &v) || v != (long long)n)
            return -EPROTO;
    }
    for (size_t i = 0; i < n; i++)
        if ((rc = read_bulk(c, bufs[i], cap, &lens[i])))
            return rc;
    return 0;
}

int resp_set(resp_conn_t *c, const char *const *keys, size_t n, const void *const *vals, size_t len)
{
    if (!n)
        return 0;
    /* headers first (the buffer may move while it grows), then the iovs */
    size_t *off = brix_malloc(2 * n * sizeof *off);
    struct iovec *iov = brix_malloc(3 * n * sizeof *iov);
    int rc = -ENOMEM;
    if (!off || !iov)
        goto out;
    brix_buf_reset(&c->cmd);
    brix_buf_append_str(&c->cmd, "\r\n");
    for (size_t i = 0; i < n; i++) {
        off[2 * i] = c->cmd.len;
        brix_buf_append_str(&c->cmd, "*3\r\n$3\r\nSET\r\n");
        arg(&c->cmd, keys[i], strlen(keys[i]));
        brix_buf_printf(&c->cmd, "$%zu\r\n", len);
        off[2 * i + 1] = c->cmd.len;
    }
    if (!c->cmd.data)
        goto out;
    for (size_t i = 0; i < n; i++) {
        iov[3 * i] = (struct iovec){ c->cmd.data + off[2 * i], off[2 * i + 1] - off[2 * i] };
        iov[3 * i + 1] = (struct iovec){ (void *)vals[i], len };
        iov[3 * i + 2] = (struct iovec){ c->cmd.data, 2 };
    }
    if ((rc = send_iov(c->fd, iov, 3 * n)))
        goto out;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t l;
        if ((rc = read_line(c, &s, &l)))
            goto out;
        if (l && s[0] == '-') {
            rc = error_line(c, s + 1, l - 1);
            goto out;
        }
        if (l != 3 || memcmp(s, "+OK", 3)) {
            rc = -EPROTO;
            goto out;
        }
    }
    rc = 0;
out:
    brix_free(off);
    brix_free(iov);
    return rc;
}

int resp_command(resp_conn_t *c, char *out, size_t outlen, int argc, const char *const *argv)
{
    brix_buf_reset(&c->cmd);
    brix_buf_printf(&c->cmd, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++)
        arg(&c->cmd, argv[i], strlen(argv[i]));
    if (!c->cmd.data)
        return -ENOMEM;
    struct iovec iov = { c->cmd.data, c->cmd.len };
    int rc = send_iov(c->fd, &iov, 1);
    if (rc)
        return rc;
    const char *s;
    size_t n;
    if ((rc = read_line(c, &s, &n)))
        return rc;
    if (!n)
        return -EPROTO;
    if (s[0] == '-')
        return error_line(c, s + 1, n - 1);
    if (s[0] == '+' || s[0] == ':') {
        snprintf(out, outlen, "%.*s", (int)(n - 1), s + 1);
        return 0;
    }
    long long v;
    if (s[0] != '$' || parse_len(s + 1, n - 1, &v))
        return -EPROTO;
    if (v < 0) {
        snprintf(out, outlen, "%s", "");
        return -ENOENT;
    }
    /* keep what fits, drop the rest */
    size_t want = (size_t)v, keep = outlen ? (want < outlen - 1 ? want : outlen - 1) : 0;
    char *tmp = brix_malloc(want + 1);
    if (!tmp)
        return -ENOMEM;
    rc = read_into(c, tmp, want);
    if (!rc)
        rc = skip_crlf(c);
    if (!rc && outlen) {
        memcpy(out, tmp, keep);
        out[keep] = '\0';
    }
    brix_free(tmp);
    return rc;
}
