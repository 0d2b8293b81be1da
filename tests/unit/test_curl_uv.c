/*
 * core/curl_uv streaming (brix_curl_stream): a chunked NDJSON body arrives
 * through on_data in pieces and in order, then done with the status; a
 * transfer cancelled from its own on_data gets no done and its connection
 * is closed; a non-2xx answer is not streamed (its body comes with done); a
 * stream cut short ends in an error; closing the client from on_data is
 * safe. Served by a tiny blocking server on a thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "core/curl_uv.h"
#include "leak_check.h"
#include "stub_server.h"

static struct {
    stub_server_t srv;
    atomic_int peer_closed; /* /forever: the client hung up */
} g;

static void send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static const char HEAD[] = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n";

static void serve_one(int fd, const char *path)
{
    if (!strcmp(path, "/stream")) {
        send_all(fd, HEAD);
        /* pieces that split lines and chunks anywhere */
        const char *parts[] = { "8\r\n{\"a\":1}\n\r\n", "8\r\n{\"b\"", ":2}\n\r\n", "1\r\n\n\r\n",
                                "0\r\n\r\n" };
        for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
            send_all(fd, parts[i]);
            usleep(20 * 1000);
        }
    } else if (!strcmp(path, "/forever")) {
        send_all(fd, HEAD);
        send_all(fd, "6\r\nhello\n\r\n");
        char b[64];
        while (recv(fd, b, sizeof b, 0) > 0) /* until the client hangs up */
            ;
        atomic_store(&g.peer_closed, 1);
    } else if (!strcmp(path, "/cut")) {
        send_all(fd, HEAD);
        send_all(fd, "6\r\nhello\n\r\n"); /* and no end */
    } else {
        send_all(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
                     "not found");
    }
}

static int group_setup(void **state)
{
    (void)state;
    return stub_server_start(&g.srv, serve_one);
}

static int group_teardown(void **state)
{
    (void)state;
    stub_server_stop(&g.srv);
    return 0;
}

typedef struct run {
    uv_loop_t loop;
    brix_curl_t *c;
    brix_curl_xfer_t *x;
    brix_buf_t data;
    int deliveries, dones;
    long status;
    char error[256];
    brix_buf_t body;
    int on_data_action; /* 1: cancel, 2: close the client */
} run_t;

static void on_data(const char *d, size_t n, void *ud)
{
    run_t *r = ud;
    brix_buf_append(&r->data, d, n);
    r->deliveries++;
    if (r->on_data_action == 1)
        brix_curl_cancel(r->c, r->x);
    else if (r->on_data_action == 2)
        brix_curl_close(r->c);
}

static void on_done(const brix_curl_result_t *res, void *ud)
{
    run_t *r = ud;
    r->dones++;
    r->status = res->status;
    snprintf(r->error, sizeof r->error, "%s", res->error ? res->error : "");
    brix_buf_append(&r->body, res->body, res->body_len);
}

static void go(run_t *r, const char *path, int action)
{
    memset(r, 0, sizeof *r);
    uv_loop_init(&r->loop);
    r->c = brix_curl_new(&r->loop);
    assert_non_null(r->c);
    r->on_data_action = action;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g.srv.port, path);
    r->x = brix_curl_stream(r->c, url, 2000, 1 << 20, on_data, on_done, r);
    assert_non_null(r->x);
    uv_run(&r->loop, UV_RUN_DEFAULT); /* returns once curl has nothing left to do */
}

static void finish(run_t *r, bool closed)
{
    if (!closed)
        brix_curl_close(r->c);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&r->loop), 0);
    brix_buf_free(&r->data);
    brix_buf_free(&r->body);
}

static void test_stream(void **state)
{
    (void)state;
    run_t r;
    go(&r, "/stream", 0);
    assert_int_equal(r.dones, 1);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.error, "");
    assert_non_null(r.data.data);
    assert_string_equal(r.data.data, "{\"a\":1}\n{\"b\":2}\n\n");
    assert_true(r.deliveries >= 2); /* as it arrived, not at the end */
    assert_int_equal(brix_curl_active(r.c), 0);
    finish(&r, false);
}

static void test_cancel_from_on_data(void **state)
{
    (void)state;
    atomic_store(&g.peer_closed, 0);
    run_t r;
    go(&r, "/forever", 1);
    assert_int_equal(r.deliveries, 1);
    assert_int_equal(r.dones, 0);
    assert_int_equal(brix_curl_active(r.c), 0);
    for (int i = 0; i < 200 && !atomic_load(&g.peer_closed); i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&g.peer_closed), 1);
    finish(&r, false);
}

static void test_not_2xx(void **state)
{
    (void)state;
    run_t r;
    go(&r, "/missing", 0);
    assert_int_equal(r.deliveries, 0);
    assert_int_equal(r.dones, 1);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.body.data, "not found");
    finish(&r, false);
}

static void test_cut(void **state)
{
    (void)state;
    run_t r;
    go(&r, "/cut", 0);
    assert_int_equal(r.deliveries, 1);
    assert_int_equal(r.dones, 1);
    assert_true(r.error[0] != '\0');
    finish(&r, false);
}

static void test_close_from_on_data(void **state)
{
    (void)state;
    atomic_store(&g.peer_closed, 0);
    run_t r;
    go(&r, "/forever", 2);
    assert_int_equal(r.deliveries, 1);
    assert_int_equal(r.dones, 0);
    for (int i = 0; i < 200 && !atomic_load(&g.peer_closed); i++)
        usleep(10 * 1000);
    finish(&r, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_on_data, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_not_2xx, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cut, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_close_from_on_data, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
