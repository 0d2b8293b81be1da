/*
 * workers — N threads, each running its own libuv loop.
 *
 * The multi-worker listener of the data path: each worker's init callback
 * typically creates an HTTP server on its loop listening on the same port with
 * SO_REUSEPORT, so the kernel spreads connections across workers and nothing
 * is shared on the hot path. Inits run one after another (worker 0 first), so
 * worker 0 can bind port 0 and publish the port the others then bind.
 * Stop asks every loop (through a uv_async) to run its stop callback, which
 * should close its handles; the thread ends when its loop has nothing left.
 */
#ifndef BRIX_CORE_WORKERS_H
#define BRIX_CORE_WORKERS_H

#include <uv.h>

typedef struct brix_workers brix_workers_t;

/* Runs on the worker thread before its loop; returns 0 or a negative errno.
 * *wctx is the worker's own context, passed back to stop_fn. */
typedef int (*brix_worker_init_fn)(uv_loop_t *loop, int idx, void *ud, void **wctx);
/* Runs on the worker thread when stop is requested. */
typedef void (*brix_worker_stop_fn)(uv_loop_t *loop, int idx, void *ud, void *wctx);

/* Raises the soft RLIMIT_NOFILE to the hard limit (a server holding many
 * slow clients needs one descriptor each); returns the soft limit now in
 * force, or a negative errno. brix_workers_start calls it. */
long brix_workers_raise_nofile(void);

/* Starts n workers; returns NULL (and *err set to the first init error) when
 * any init fails, after stopping the ones already running. */
brix_workers_t *brix_workers_start(int n, brix_worker_init_fn init, brix_worker_stop_fn stop,
                                   void *ud, int *err);
/* Requests stop on every worker (thread-safe, idempotent). */
void brix_workers_stop(brix_workers_t *w);
/* Joins all threads and frees. Call after brix_workers_stop. */
void brix_workers_join(brix_workers_t *w);
int brix_workers_count(const brix_workers_t *w);

#endif
