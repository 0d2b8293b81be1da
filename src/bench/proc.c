/*
 * proc — what `brix bench` needs to run the processes it measures: a free
 * loopback port, child processes with their output in a log file, a stop
 * that escalates to SIGKILL, and one blocking HTTP/1.1 request on a fresh
 * connection (bench is a client and sleeps between calls; no loop needed).
 * Shared by the routing fleets (fleet.c) and the autoscaling clusters
 * (autoscale.c).
 */
#include "bench/bench.h"

#include "core/buf.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int bench_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t l = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

pid_t bench_spawn(const char *const *argv, const char *log)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = -1;
    if (posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ) != 0)
        pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

void bench_stop(pid_t pid, double grace_s)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (double waited = 0; waited < grace_s; waited += 0.05) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        struct timespec ts = { 0, 50 * 1000000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Decodes a chunked body in place. */
static void dechunk(brix_buf_t *b)
{
    brix_buf_t o = BRIX_BUF_INIT;
    const char *p = b->data, *end = b->data + b->len;
    while (p && p < end) {
        char *e;
        unsigned long n = strtoul(p, &e, 16);
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl || n == 0 || nl + 1 + n > end)
            break;
        brix_buf_append(&o, nl + 1, n);
        p = nl + 1 + n + 2;
    }
    brix_buf_free(b);
    *b = o;
}

int bench_http(int port, const char *token, const char *method, const char *path, const char *ctype,
               const char *body, size_t blen, brix_buf_t *out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    brix_buf_t req = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
    brix_buf_printf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n", method,
                    path, port);
    if (token)
        brix_buf_printf(&req, "Authorization: Bearer %s\r\n", token);
    if (body)
        brix_buf_printf(&req, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, blen);
    brix_buf_append_str(&req, "\r\n");
    if (body)
        brix_buf_append(&req, body, blen);
    int status = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, req.data, req.len) == (ssize_t)req.len) {
        char buf[65536];
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0)
            brix_buf_append(&b, buf, (size_t)r);
        if (b.len > 12 && !strncmp(b.data, "HTTP/1.1 ", 9))
            status = atoi(b.data + 9);
        const char *s = b.data ? memmem(b.data, b.len, "\r\n\r\n", 4) : NULL;
        if (out) {
            brix_buf_reset(out);
            if (s) {
                brix_buf_append(out, s + 4, b.len - (size_t)(s + 4 - b.data));
                bool chunked = false;
                for (const char *h = b.data; h && h < s; h = memchr(h, '\n', (size_t)(s - h))) {
                    h++;
                    chunked |= !strncasecmp(h, "transfer-encoding: chunked", 26);
                }
                if (chunked)
                    dechunk(out);
            }
            brix_buf_append_char(out, '\0');
            out->len--;
        }
    }
    close(fd);
    brix_buf_free(&req);
    brix_buf_free(&b);
    return status;
}

void bench_write_results_md(const bench_cfg_t *c, const brix_buf_t *md)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%.3000s/results.md", c->out);
    FILE *f = fopen(path, "w");
    if (f) {
        fwrite(md->data, 1, md->len, f);
        fclose(f);
    }
    fwrite(md->data, 1, md->len, stdout);
}
