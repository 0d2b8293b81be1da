/*
 * engine-sim's shared request plumbing (src/engine_sim/api_request.c) on a
 * real HTTP server: a helper that fails must have answered the client, since
 * its callers only clean up. Checked with allocation-failure injection, the
 * one way these helpers fail after validation.
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
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/http_server.h"
#include "core/workers.h"
#include "engine_sim/api_request.h"

#include "leak_check.h"

static atomic_int g_port;

/* What the generate and embeddings handlers do with a text prompt: take its
 * tokens, BOS first, and on failure only clean up. The first allocation is
 * the one for BOS. */
static void handler(brix_http_req_t *h, void *ud)
{
    (void)ud;
    cJSON *in = cJSON_CreateString("The quick brown fox");
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    brix_alloc_fail_after(0);
    int rc = brix_api_input_tokens(h, in, "'prompt'", true, &ids, &n, &cap);
    brix_alloc_fail_after(-1);
    brix_free(ids);
    cJSON_Delete(in);
    if (rc == 0)
        brix_http_respond(h, 200, "text/plain", "tokenized", 9);
}

static int init(uv_loop_t *loop, int idx, void *ud, void **out)
{
    (void)idx;
    (void)ud;
    brix_http_limits_t lim;
    brix_http_limits_default(&lim);
    brix_http_server_t *srv = brix_http_server_new(loop, &lim, handler, NULL);
    *out = srv;
    int bound = 0;
    int rc = brix_http_server_listen(srv, "127.0.0.1", 0, false, &bound);
    atomic_store(&g_port, bound);
    return rc;
}

static void stop(uv_loop_t *loop, int idx, void *ud, void *wctx)
{
    (void)loop;
    (void)idx;
    (void)ud;
    brix_http_server_close(wctx, NULL, NULL);
}

/* The status line's code, or -1 when nothing came within 3 seconds. */
static int post_status(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = { .tv_sec = 3 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int status = -1;
    static const char req[] = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        char buf[256] = { 0 };
        ssize_t r = read(fd, buf, sizeof buf - 1);
        if (r > 12 && !strncmp(buf, "HTTP/1.1 ", 9))
            status = atoi(buf + 9);
    }
    close(fd);
    return status;
}

/* Out of memory for BOS: the client gets a 500, not silence (before the fix
 * input_tokens returned -1 without answering and the request hung). */
static void test_input_tokens_answers_when_bos_fails(void **state)
{
    (void)state;
    atomic_store(&g_port, 0);
    int err = 0;
    brix_workers_t *w = brix_workers_start(1, init, stop, NULL, &err);
    assert_non_null(w);
    assert_int_equal(err, 0);
    assert_int_equal(post_status(atomic_load(&g_port)), 500);
    brix_workers_stop(w);
    brix_workers_join(w);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_input_tokens_answers_when_bos_fails, leak_setup,
                                        leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
