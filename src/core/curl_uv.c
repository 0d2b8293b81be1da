/*
 * libcurl multi + libuv glue. curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION) and when to time out (CURLMOPT_TIMERFUNCTION); we
 * tell curl when a socket is ready (curl_multi_socket_action) and collect
 * finished transfers with curl_multi_info_read.
 */
#include "core/curl_uv.h"

#include "core/alloc.h"
#include "core/buf.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct brix_curl_xfer {
    CURL *easy;
    brix_curl_t *c;
    brix_buf_t body;
    size_t max_body;
    bool truncated;
    struct curl_slist *hdrs;
    brix_curl_done_fn done;
    void *ud;
    char err[CURL_ERROR_SIZE];
    struct brix_curl_xfer *next, *prev;
    /* streaming (brix_curl_stream) */
    brix_curl_data_fn on_data; /* NULL: a plain request */
    bool decided;              /* the status was looked at (first body bytes) */
    bool pass;                 /* 2xx: the body is streamed to on_data */
    bool delivering;           /* inside on_data: a cancel is deferred */
    bool cancelled;
} xfer_t;

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    brix_curl_t *c;
} sock_ctx_t;

struct brix_curl {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    xfer_t *xfers;
    size_t active;
    bool closing;
    bool dispatching;    /* inside a completion callback */
    bool stream_pending; /* some stream has bytes not yet delivered */
    int handles;         /* our uv handles still open (timer + polls) */
    char *auth;          /* "Authorization: Bearer ..." on every request, or NULL */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void maybe_free(brix_curl_t *c)
{
    if (c->closing && c->handles == 0) {
        curl_multi_cleanup(c->multi);
        brix_free(c->auth);
        brix_free(c);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    brix_curl_t *c = h->data;
    if (h->type == UV_POLL)
        brix_free(h); /* sock_ctx_t starts with its uv_poll_t */
    c->handles--;
    maybe_free(c);
}

static void xfer_free(xfer_t *x)
{
    brix_curl_t *c = x->c;
    if (x->prev)
        x->prev->next = x->next;
    else
        c->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    curl_multi_remove_handle(c->multi, x->easy);
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    brix_buf_free(&x->body);
    brix_free(x);
    c->active--;
}

static void close_now(brix_curl_t *c);

/* Hands buffered stream bytes to their owners, outside libcurl's callbacks.
 * A callback may cancel transfers or close c: the scan restarts after each
 * delivery. */
static void deliver_streams(brix_curl_t *c)
{
    while (c->stream_pending && !c->closing) {
        c->stream_pending = false;
        xfer_t *x = c->xfers;
        while (x && !(x->pass && x->body.len && !x->cancelled))
            x = x->next;
        if (!x)
            return;
        c->stream_pending = true; /* others may still hold bytes */
        x->delivering = true;
        c->dispatching = true;
        x->on_data(x->body.data, x->body.len, x->ud);
        c->dispatching = false;
        x->delivering = false;
        if (c->closing) {
            close_now(c);
            return;
        }
        if (x->cancelled)
            xfer_free(x);
        else
            brix_buf_reset(&x->body);
    }
}

static void check_done(brix_curl_t *c)
{
    deliver_streams(c);
    if (c->closing)
        return;
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        xfer_t *x = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        brix_curl_result_t r = { 0 };
        if (m->data.result == CURLE_OK) {
            curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r.status);
        } else {
            r.error = x->err[0] ? x->err : curl_easy_strerror(m->data.result);
        }
        if (x->truncated && !r.error)
            r.error = x->pass ? "stream data not consumed in time"
                              : "response body larger than the limit";
        curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &r.total_s);
        r.body = x->body.data ? x->body.data : "";
        r.body_len = x->body.len;
        brix_curl_done_fn done = x->done;
        void *ud = x->ud;
        /* Run the callback first: it may start new transfers, or close c. */
        c->dispatching = true;
        done(&r, ud);
        c->dispatching = false;
        xfer_free(x);
        if (c->closing) {
            close_now(c);
            return;
        }
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_ctx_t *s = (sock_ctx_t *)p;
    brix_curl_t *c = s->c;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    check_done(c);
}

static void on_timeout(uv_timer_t *t)
{
    brix_curl_t *c = t->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    brix_curl_t *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    brix_curl_t *c = userp;
    sock_ctx_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            curl_multi_assign(c->multi, fd, NULL);
            uv_close((uv_handle_t *)&s->poll, on_handle_closed);
        }
        return 0;
    }
    if (!s) {
        s = brix_calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->fd = fd;
        s->c = c;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            brix_free(s);
            return -1;
        }
        s->poll.data = c;
        c->handles++;
        curl_multi_assign(c->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    xfer_t *x = ud;
    size_t n = size * nmemb;
    if (x->on_data && !x->decided) {
        long st = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &st);
        x->decided = true;
        x->pass = st >= 200 && st < 300;
    }
    if (x->cancelled)
        return 0;
    if (x->body.len + n > x->max_body) {
        x->truncated = true;
        return 0; /* makes curl abort the transfer */
    }
    if (brix_buf_append(&x->body, ptr, n))
        return 0;
    if (x->pass)
        x->c->stream_pending = true; /* delivered once curl returns to us */
    return n;
}

brix_curl_t *brix_curl_new(uv_loop_t *loop)
{
    pthread_once(&global_once, global_init);
    brix_curl_t *c = brix_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->multi = curl_multi_init();
    if (!c->multi) {
        brix_free(c);
        return NULL;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles = 1;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return c;
}

static xfer_t *xfer_new(brix_curl_t *c, const char *url, size_t max_body, brix_curl_done_fn done,
                        void *ud)
{
    xfer_t *x = brix_calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->easy = curl_easy_init();
    if (!x->easy) {
        brix_free(x);
        return NULL;
    }
    x->c = c;
    x->done = done;
    x->ud = ud;
    x->max_body = max_body ? max_body : (16u << 20);
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->err);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "brix/" BRIX_VERSION);
    return x;
}

/* Links x in and hands it to curl; frees it on failure. */
static int xfer_add(brix_curl_t *c, xfer_t *x)
{
    if (c->auth)
        x->hdrs = curl_slist_append(x->hdrs, c->auth);
    if (x->hdrs)
        curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->hdrs);
    x->next = c->xfers;
    if (c->xfers)
        c->xfers->prev = x;
    c->xfers = x;
    c->active++;
    if (curl_multi_add_handle(c->multi, x->easy) != CURLM_OK) {
        xfer_free(x);
        return -ENOMEM;
    }
    return 0;
}

int brix_curl_request(brix_curl_t *c, const char *method, const char *url, const char *body,
                      size_t body_len, const char *content_type, uint64_t timeout_ms,
                      size_t max_body, brix_curl_done_fn done, void *ud)
{
    xfer_t *x = xfer_new(c, url, max_body, done, ud);
    if (!x)
        return -ENOMEM;
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 5000 ? timeout_ms : 5000));
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "brix/" BRIX_VERSION);
    if (strcmp(method, "GET"))
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
        char h[160];
        snprintf(h, sizeof h, "Content-Type: %s", content_type ? content_type : "application/json");
        x->hdrs = curl_slist_append(x->hdrs, h);
        x->hdrs = curl_slist_append(x->hdrs, "Expect:");
    }
    return xfer_add(c, x);
}

brix_curl_xfer_t *brix_curl_stream(brix_curl_t *c, const char *url, uint64_t connect_timeout_ms,
                                   size_t max_pending, brix_curl_data_fn on_data,
                                   brix_curl_done_fn done, void *ud)
{
    xfer_t *x = xfer_new(c, url, max_pending, done, ud);
    if (!x)
        return NULL;
    x->on_data = on_data;
    curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_timeout_ms);
    /* a dead peer without a FIN is the caller's silence timer's to notice;
     * keepalive probes only help it along on long quiet streams */
    curl_easy_setopt(x->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    return xfer_add(c, x) ? NULL : x;
}

void brix_curl_cancel(brix_curl_t *c, brix_curl_xfer_t *x)
{
    if (x->cancelled)
        return;
    x->cancelled = true;
    if (!x->delivering)
        xfer_free(x);
    (void)c;
}

size_t brix_curl_active(const brix_curl_t *c)
{
    return c->active;
}

static void close_now(brix_curl_t *c)
{
    while (c->xfers)
        xfer_free(c->xfers); /* removing handles makes curl call socket_cb(REMOVE) */
    uv_timer_stop(&c->timer);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

int brix_curl_set_bearer(brix_curl_t *c, const char *token)
{
    brix_free(c->auth);
    c->auth = NULL;
    if (!token || !*token)
        return 0;
    size_t n = strlen(token) + 32;
    if (!(c->auth = brix_malloc(n)))
        return -ENOMEM;
    snprintf(c->auth, n, "Authorization: Bearer %s", token);
    return 0;
}

void brix_curl_close(brix_curl_t *c)
{
    c->closing = true;
    if (!c->dispatching)
        close_now(c);
}
