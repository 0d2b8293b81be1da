/*
 * Worker threads: start-up is serialised with a semaphore per worker so
 * init errors are reported to the caller and port 0 can be shared.
 */
#include "core/workers.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdbool.h>
#include <sys/resource.h>

typedef struct worker {
    uv_thread_t tid;
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_sem_t ready;
    int idx;
    int init_rc;
    bool started;
    void *wctx;
    brix_workers_t *w;
} worker_t;

struct brix_workers {
    int n;
    brix_worker_init_fn init;
    brix_worker_stop_fn stop;
    void *ud;
    worker_t *ws;
    bool stop_sent;
};

static void on_stop(uv_async_t *a)
{
    worker_t *wk = a->data;
    if (wk->w->stop)
        wk->w->stop(&wk->loop, wk->idx, wk->w->ud, wk->wctx);
    uv_close((uv_handle_t *)&wk->stop_async, NULL);
}

static void worker_main(void *arg)
{
    worker_t *wk = arg;
    wk->init_rc = wk->w->init(&wk->loop, wk->idx, wk->w->ud, &wk->wctx);
    uv_sem_post(&wk->ready);
    if (wk->init_rc == 0)
        uv_run(&wk->loop, UV_RUN_DEFAULT);
}

long brix_workers_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return -errno;
    }
    return rl.rlim_cur == RLIM_INFINITY ? (long)1 << 30 : (long)rl.rlim_cur;
}

brix_workers_t *brix_workers_start(int n, brix_worker_init_fn init, brix_worker_stop_fn stop,
                                   void *ud, int *err)
{
    *err = 0;
    (void)brix_workers_raise_nofile(); /* best effort: the old limit still works */
    brix_workers_t *w = brix_calloc(1, sizeof *w);
    if (!w || !(w->ws = brix_calloc((size_t)n, sizeof *w->ws))) {
        brix_free(w);
        *err = -ENOMEM;
        return NULL;
    }
    w->n = n;
    w->init = init;
    w->stop = stop;
    w->ud = ud;
    for (int i = 0; i < n; i++) {
        worker_t *wk = &w->ws[i];
        wk->idx = i;
        wk->w = w;
        uv_loop_init(&wk->loop);
        uv_async_init(&wk->loop, &wk->stop_async, on_stop);
        wk->stop_async.data = wk;
        uv_sem_init(&wk->ready, 0);
        int rc = uv_thread_create(&wk->tid, worker_main, wk);
        if (rc == 0) {
            wk->started = true;
            uv_sem_wait(&wk->ready);
            rc = wk->init_rc;
        }
        if (rc) {
            *err = rc;
            if (!wk->started) {
                uv_close((uv_handle_t *)&wk->stop_async, NULL);
                uv_run(&wk->loop, UV_RUN_DEFAULT);
            } else {
                /* init failed: the thread exits without running the loop;
                 * run it here once to close what init opened. */
                uv_thread_join(&wk->tid);
                wk->started = false;
                uv_close((uv_handle_t *)&wk->stop_async, NULL);
                if (w->stop)
                    w->stop(&wk->loop, i, ud, wk->wctx);
                uv_run(&wk->loop, UV_RUN_DEFAULT);
            }
            uv_loop_close(&wk->loop);
            uv_sem_destroy(&wk->ready);
            w->n = i; /* only the first i are running */
            brix_workers_stop(w);
            brix_workers_join(w);
            return NULL;
        }
    }
    return w;
}

void brix_workers_stop(brix_workers_t *w)
{
    if (w->stop_sent)
        return;
    w->stop_sent = true;
    for (int i = 0; i < w->n; i++)
        uv_async_send(&w->ws[i].stop_async);
}

void brix_workers_join(brix_workers_t *w)
{
    for (int i = 0; i < w->n; i++) {
        worker_t *wk = &w->ws[i];
        if (wk->started)
            uv_thread_join(&wk->tid);
        uv_loop_close(&wk->loop);
        uv_sem_destroy(&wk->ready);
    }
    brix_free(w->ws);
    brix_free(w);
}

int brix_workers_count(const brix_workers_t *w)
{
    return w->n;
}
