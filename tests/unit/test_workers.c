/*
 * Multi-worker listener: N loops on N threads, each with its own HTTP server
 * bound to one port with SO_REUSEPORT. Checks that port 0 is shared (worker 0
 * binds, the others reuse its port), that the kernel spreads connections over
 * more than one worker, that an init failure stops the ones already started,
 * that stop + join leave nothing allocated, and that the open-file soft
 * limit is raised to the hard limit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/http_server.h"
#include "core/workers.h"

typedef struct shared {
    atomic_int port;
    atomic_int hits[4];
    int fail_idx; /* worker whose init fails, -1 none */
} shared_t;

typedef struct wctx {
    brix_http_server_t *srv;
    int idx;
    shared_t *sh;
} wctx_t;

static void handler(brix_http_req_t *req, void *ud)
{
    wctx_t *w = ud;
    atomic_fetch_add(&w->sh->hits[w->idx], 1);
    char body[16];
    int n = snprintf(body, sizeof body, "%d", w->idx);
    brix_http_respond(req, 200, "text/plain", body, (size_t)n);
}

static int init(uv_loop_t *loop, int idx, void *ud, void **out)
{
    shared_t *sh = ud;
    wctx_t *w = brix_calloc(1, sizeof *w);
    w->idx = idx;
    w->sh = sh;
    *out = w;
    if (idx == sh->fail_idx)
        return -EADDRINUSE;
    brix_http_limits_t lim;
    brix_http_limits_default(&lim);
    w->srv = brix_http_server_new(loop, &lim, handler, w);
    int bound = 0;
    int rc = brix_http_server_listen(w->srv, "127.0.0.1", atomic_load(&sh->port), true, &bound);
    if (rc == 0 && idx == 0)
        atomic_store(&sh->port, bound);
    return rc;
}

static void closed(void *arg)
{
    brix_free(arg);
}

static void stop(uv_loop_t *loop, int idx, void *ud, void *wctx)
{
    wctx_t *w = wctx;
    if (w->srv)
        brix_http_server_close(w->srv, closed, w);
    else
        brix_free(w);
}

static int get_once(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return -1;
    }
    char buf[1024];
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)r;
    close(fd);
    buf[got] = '\0';
    if (strncmp(buf, "HTTP/1.1 200", 12))
        return -1;
    const char *body = strstr(buf, "\r\n\r\n");
    return body ? atoi(body + 4) : -1;
}

static void test_reuseport_spreads(void **state)
{
    int64_t live = brix_alloc_live();
    shared_t sh = { .fail_idx = -1 };
    atomic_store(&sh.port, 0);
    int err = 0;
    brix_workers_t *w = brix_workers_start(2, init, stop, &sh, &err);
    assert_non_null(w);
    assert_int_equal(err, 0);
    int port = atomic_load(&sh.port);
    assert_true(port > 0);
    int seen[2] = { 0, 0 };
    for (int i = 0; i < 400 && !(seen[0] && seen[1]); i++) {
        int who = get_once(port);
        assert_true(who == 0 || who == 1);
        seen[who]++;
    }
    /* SO_REUSEPORT hashes connections by source port: both workers serve. */
    assert_true(seen[0] > 0);
    assert_true(seen[1] > 0);
    brix_workers_stop(w);
    brix_workers_join(w);
    assert_int_equal(brix_alloc_live(), live);
}

static void test_init_failure_unwinds(void **state)
{
    int64_t live = brix_alloc_live();
    shared_t sh = { .fail_idx = 1 };
    atomic_store(&sh.port, 0);
    int err = 0;
    brix_workers_t *w = brix_workers_start(3, init, stop, &sh, &err);
    assert_null(w);
    assert_int_equal(err, -EADDRINUSE);
    /* worker 0 was listening and must be gone again */
    assert_int_equal(get_once(atomic_load(&sh.port)), -1);
    assert_int_equal(brix_alloc_live(), live);
}

/* A server holding thousands of slow clients needs one descriptor each: the
 * soft limit (often 1024) is raised to the hard one. */
static void test_raise_nofile(void **state)
{
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max < 64)
        skip();
    struct rlimit low = { .rlim_cur = 32, .rlim_max = rl.rlim_max };
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    long now = brix_workers_raise_nofile();
    struct rlimit after;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &after), 0);
    assert_true(after.rlim_cur == rl.rlim_max);
    assert_int_equal(now, (long)rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &rl);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reuseport_spreads),
        cmocka_unit_test(test_init_failure_unwinds),
        cmocka_unit_test(test_raise_nofile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
