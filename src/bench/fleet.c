/*
 * Fleets for `brix bench`: N engine-sims and the gateway (or nginx with
 * least_conn for the nginx peer) as child processes with their logs in the
 * results directory, on free loopback ports; blocking HTTP for readiness
 * and for reading the engines' counters (bench is a client, not a server).
 */
#include "bench/bench.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/metrics.h"
#include "core/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PODS 64

struct bench_fleet {
    pid_t engines[MAX_PODS];
    int ports[MAX_PODS];
    int n;
    pid_t front; /* gateway or nginx */
    int front_port;
    bool gateway;
    double before_q[MAX_PODS], before_h[MAX_PODS], before_p[MAX_PODS], before_r[MAX_PODS];
    double before_xq[MAX_PODS], before_xh[MAX_PODS], before_xs[MAX_PODS], before_xl[MAX_PODS];
    double before_xw[MAX_PODS];
    char dir[512];
    bench_kvnode_t kv; /* a "+kvcache" strategy's store node (pid 0: none) */
};

static bool wait_status(int port, const char *path, int want, double timeout_s)
{
    uint64_t end = brix_now_ms() + (uint64_t)(timeout_s * 1000);
    while (brix_now_ms() < end) {
        if (bench_http(port, NULL, "GET", path, NULL, NULL, 0, NULL) == want)
            return true;
        struct timespec ts = { 0, 50 * 1000000 };
        nanosleep(&ts, NULL);
    }
    return false;
}

void bench_fleet_stop(bench_fleet_t *f)
{
    if (!f)
        return;
    bench_stop(f->front, 10);
    for (int i = 0; i < f->n; i++)
        bench_stop(f->engines[i], 10);
    bench_kvnode_stop(&f->kv);
    brix_free(f);
}

static int write_nginx_conf(bench_fleet_t *f, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/nginx.conf", f->dir);
    FILE *o = fopen(path, "w");
    if (!o)
        return -1;
    fprintf(o,
            "# nginx least_conn in front of the same engines (brix bench peer)\n"
            "worker_processes 1;\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/nginx-error.log "
            "warn;\nevents { worker_connections 16384; }\nhttp {\n  access_log off;\n"
            "  client_body_temp_path %s/nginx-body;\n  proxy_temp_path %s/nginx-proxy;\n"
            "  fastcgi_temp_path %s/nginx-fcgi;\n  uwsgi_temp_path %s/nginx-uwsgi;\n"
            "  scgi_temp_path %s/nginx-scgi;\n  client_max_body_size 64m;\n"
            "  upstream engines {\n    least_conn;\n",
            f->dir, f->dir, f->dir, f->dir, f->dir, f->dir, f->dir);
    for (int i = 0; i < f->n; i++)
        fprintf(o, "    server 127.0.0.1:%d;\n", f->ports[i]);
    fprintf(o,
            "    keepalive 1024;\n  }\n  server {\n    listen 127.0.0.1:%d backlog=4096;\n"
            "    location / {\n      proxy_pass http://engines;\n      proxy_http_version 1.1;\n"
            "      proxy_set_header Connection \"\";\n      proxy_buffering off;\n"
            "      proxy_read_timeout 3600s;\n      add_header target-pod $upstream_addr;\n"
            "    }\n  }\n}\n",
            f->front_port);
    fclose(o);
    return 0;
}

bench_fleet_t *bench_fleet_start(const bench_cfg_t *c, const char *strategy, int nadapters,
                                 int *port, char *err, size_t errlen)
{
    if (c->replicas < 1 || c->replicas > MAX_PODS) {
        snprintf(err, errlen, "--replicas must be 1..%d", MAX_PODS);
        return NULL;
    }
    bench_fleet_t *f = brix_calloc(1, sizeof *f);
    if (!f)
        return NULL;
    snprintf(f->dir, sizeof f->dir, "%s/logs-%s", c->out, strategy);
    mkdir(f->dir, 0755);
    /* "S+kvcache": strategy S with every engine a client of one kvcache node */
    char base[64], kvcfg[512] = "";
    snprintf(base, sizeof base, "%s", strategy);
    char *plus = strstr(base, "+kvcache");
    if (plus) {
        *plus = '\0';
        char log[640];
        snprintf(log, sizeof log, "%s/kvcache.log", f->dir);
        if (bench_kvnode_start(c, c->kvcache_capacity, NULL, log, &f->kv, err, errlen)) {
            brix_free(f);
            return NULL;
        }
        /* Small stored blocks are stand-ins: the engine charges a load the
         * modelled block's transfer time (its sim_block_bytes, 128 KiB per
         * token), so the rate stays the real one. */
        uint64_t real = 128u * 1024u * (uint64_t)c->block_size;
        uint64_t bb = c->kvcache_block ? c->kvcache_block : real;
        double gbps = c->kvcache_gbps;
        snprintf(kvcfg, sizeof kvcfg,
                 "{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
                 "\"kv_connector_extra_config\":{\"servers\":\"%s\",\"block_bytes\":%" PRIu64
                 ",\"transfer_gbps\":%.6g}}",
                 f->kv.addr, bb, gbps);
    }
    strategy = base;
    /* absolute: nginx resolves relative paths against its -p prefix */
    char abs[PATH_MAX];
    if (realpath(f->dir, abs) && strlen(abs) < sizeof f->dir)
        memcpy(f->dir, abs, strlen(abs) + 1);
    f->n = (int)c->replicas;
    char ts[32], mml[32], blocks[32], bs[32], seed[32], ev[1024], log[640], loras[16];
    snprintf(ts, sizeof ts, "%g", c->time_scale);
    snprintf(mml, sizeof mml, "%lld", (long long)c->max_model_len);
    snprintf(blocks, sizeof blocks, "%lld", (long long)c->kv_blocks);
    snprintf(bs, sizeof bs, "%lld", (long long)c->block_size);
    snprintf(loras, sizeof loras, "%d", nadapters);
    brix_buf_t kv = BRIX_BUF_INIT, urls = BRIX_BUF_INIT;
    for (int i = 0; i < f->n; i++) {
        f->ports[i] = bench_free_port();
        char port_s[16], sock[256], rsock[256];
        snprintf(port_s, sizeof port_s, "%d", f->ports[i]);
        snprintf(sock, sizeof sock, "ipc:///tmp/brix-bench-%d-%d.sock", (int)getpid(), i);
        snprintf(rsock, sizeof rsock, "ipc:///tmp/brix-bench-%d-%d-r.sock", (int)getpid(), i);
        snprintf(ev, sizeof ev,
                 "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"%s\","
                 "\"replay_endpoint\":\"%s\"}",
                 sock, rsock);
        snprintf(seed, sizeof seed, "%d", i + 1);
        const char *argv[64];
        int a = 0;
        argv[a++] = c->brix_bin;
        argv[a++] = "engine-sim";
        argv[a++] = "--port";
        argv[a++] = port_s;
        argv[a++] = "--served-model-name";
        argv[a++] = "llama-3-8b";
        argv[a++] = "--gpu";
        argv[a++] = c->gpu;
        argv[a++] = "--time-scale";
        argv[a++] = ts;
        argv[a++] = "--max-model-len";
        argv[a++] = mml;
        argv[a++] = "--block-size";
        argv[a++] = bs;
        argv[a++] = "--seed";
        argv[a++] = seed;
        argv[a++] = "--log-level";
        argv[a++] = "warn";
        argv[a++] = "--kv-events-config";
        argv[a++] = ev;
        if (c->kv_blocks) {
            argv[a++] = "--num-gpu-blocks-override";
            argv[a++] = blocks;
        }
        if (kvcfg[0]) {
            argv[a++] = "--kv-transfer-config";
            argv[a++] = kvcfg;
        }
        brix_buf_t lm = BRIX_BUF_INIT;
        if (nadapters) {
            argv[a++] = "--enable-lora";
            argv[a++] = "--max-loras";
            argv[a++] = "4";
            argv[a++] = "--max-cpu-loras";
            argv[a++] = loras;
            argv[a++] = "--lora-modules";
            /* one argv entry per adapter: built in lm, split below */
            for (int k = 0; k < nadapters && a < 60; k++) {
                size_t at = lm.len;
                brix_buf_printf(&lm, "lora-%d=/adapters/lora-%d", k, k);
                brix_buf_append_char(&lm, '\0');
                (void)at;
            }
            const char *p = lm.data;
            for (int k = 0; k < nadapters && a < 62; k++) {
                argv[a++] = p;
                p += strlen(p) + 1;
            }
        }
        argv[a] = NULL;
        snprintf(log, sizeof log, "%s/engine-%d.log", f->dir, i);
        f->engines[i] = bench_spawn(argv, log);
        brix_buf_free(&lm);
        brix_buf_printf(&urls, "%shttp://127.0.0.1:%d", i ? "," : "", f->ports[i]);
        brix_buf_printf(&kv, "http://127.0.0.1:%d=%s;%s%c", f->ports[i], sock, rsock, '\0');
        if (f->engines[i] < 0) {
            snprintf(err, errlen, "cannot start %s: %s", c->brix_bin, strerror(errno));
            goto fail;
        }
    }
    for (int i = 0; i < f->n; i++) {
        if (!wait_status(f->ports[i], "/health", 200, 30)) {
            snprintf(err, errlen, "engine %d did not become ready (see %s/engine-%d.log)", i,
                     f->dir, i);
            goto fail;
        }
    }
    f->front_port = bench_free_port();
    char fp[16];
    snprintf(fp, sizeof fp, "%d", f->front_port);
    if (!strcmp(strategy, "nginx-least-conn")) {
        char conf[600];
        if (write_nginx_conf(f, conf, sizeof conf)) {
            snprintf(err, errlen, "cannot write %s/nginx.conf", f->dir);
            goto fail;
        }
        const char *argv[] = { c->nginx_bin, "-p", f->dir, "-c", conf, NULL };
        snprintf(log, sizeof log, "%s/nginx.log", f->dir);
        f->front = bench_spawn(argv, log);
        if (f->front < 0 || !wait_status(f->front_port, "/health", 200, 15)) {
            snprintf(err, errlen, "nginx did not start (see %s)", log);
            goto fail;
        }
    } else {
        f->gateway = true;
        const char *argv[128];
        int a = 0;
        argv[a++] = c->brix_bin;
        argv[a++] = "gateway";
        argv[a++] = "--port";
        argv[a++] = fp;
        argv[a++] = "--worker-urls";
        argv[a++] = urls.data;
        argv[a++] = "--routing-strategy";
        argv[a++] = strategy;
        argv[a++] = "--prefix-block-size";
        argv[a++] = bs;
        argv[a++] = "--no-access-log";
        argv[a++] = "--log-level";
        argv[a++] = "warn";
        argv[a++] = "--health-interval";
        argv[a++] = "200ms";
        if (kvcfg[0])
            argv[a++] = "--kv-store"; /* store-resident blocks count as cheaper than a miss */
        argv[a++] = "--kv-events";
        const char *p = kv.data;
        for (int i = 0; i < f->n; i++) {
            argv[a++] = p;
            p += strlen(p) + 1;
        }
        /* extra flags, space separated */
        char *extra = c->gateway_args ? brix_strdup(c->gateway_args) : NULL;
        for (char *tok = extra ? strtok(extra, " ") : NULL; tok && a < 126; tok = strtok(NULL, " "))
            argv[a++] = tok;
        argv[a] = NULL;
        snprintf(log, sizeof log, "%s/gateway.log", f->dir);
        f->front = bench_spawn(argv, log);
        brix_free(extra);
        if (f->front < 0 || !wait_status(f->front_port, "/readyz", 200, 15)) {
            snprintf(err, errlen, "the gateway did not become ready (see %s)", log);
            goto fail;
        }
        /* every pod healthy and, with events, subscribed */
        struct timespec ts2 = { 0, 600 * 1000000 };
        nanosleep(&ts2, NULL);
    }
    brix_buf_free(&kv);
    brix_buf_free(&urls);
    *port = f->front_port;
    return f;
fail:
    brix_buf_free(&kv);
    brix_buf_free(&urls);
    bench_fleet_stop(f);
    return NULL;
}

typedef struct scrape {
    double q, h, p, r, dsum, dcount, xq, xh, xs, xl, xw;
} scrape_t;

static void on_sample(const brix_prom_sample_t *s, void *ud)
{
    scrape_t *x = ud;
    if (!strcmp(s->name, "vllm:prefix_cache_queries_total"))
        x->q += s->value;
    else if (!strcmp(s->name, "vllm:prefix_cache_hits_total"))
        x->h += s->value;
    else if (!strcmp(s->name, "vllm:external_prefix_cache_queries_total"))
        x->xq += s->value;
    else if (!strcmp(s->name, "vllm:external_prefix_cache_hits_total"))
        x->xh += s->value;
    else if (!strcmp(s->name, "brix_engine_kv_saved_blocks_total"))
        x->xs += s->value;
    else if (!strcmp(s->name, "brix_engine_kv_loaded_blocks_total"))
        x->xl += s->value;
    else if (!strcmp(s->name, "brix_engine_kv_remote_wait_seconds_total"))
        x->xw += s->value;
    else if (!strcmp(s->name, "vllm:num_preemptions_total"))
        x->p += s->value;
    else if (!strcmp(s->name, "vllm:request_success_total"))
        x->r += s->value;
    else if (!strcmp(s->name, "brix_gateway_routing_decision_seconds_sum"))
        x->dsum += s->value;
    else if (!strcmp(s->name, "brix_gateway_routing_decision_seconds_count"))
        x->dcount += s->value;
}

static scrape_t scrape(int port)
{
    scrape_t x = { 0 };
    brix_buf_t b = BRIX_BUF_INIT;
    if (bench_http(port, NULL, "GET", "/metrics", NULL, NULL, 0, &b) == 200) {
        brix_prom_parser_t p;
        brix_prom_parser_init(&p, 65536, on_sample, &x);
        brix_prom_parser_feed(&p, b.data, b.len);
        brix_prom_parser_finish(&p);
        brix_prom_parser_free(&p);
    }
    brix_buf_free(&b);
    return x;
}

void bench_fleet_sample(bench_fleet_t *f, bench_run_t *run, bool after)
{
    run->npods = f->n;
    run->prefix_queries = run->prefix_hits = run->preemptions = 0;
    run->ext_queries = run->ext_hits = run->kv_saved = run->kv_loaded = run->kv_wait = 0;
    run->kvcache = f->kv.pid > 0;
    for (int i = 0; i < f->n; i++) {
        scrape_t x = scrape(f->ports[i]);
        if (!after) {
            f->before_q[i] = x.q;
            f->before_h[i] = x.h;
            f->before_p[i] = x.p;
            f->before_r[i] = x.r;
            f->before_xq[i] = x.xq;
            f->before_xh[i] = x.xh;
            f->before_xs[i] = x.xs;
            f->before_xl[i] = x.xl;
            f->before_xw[i] = x.xw;
            continue;
        }
        snprintf(run->pods[i], sizeof run->pods[i], "127.0.0.1:%d", f->ports[i]);
        run->prefix_queries += x.q - f->before_q[i];
        run->prefix_hits += x.h - f->before_h[i];
        run->preemptions += x.p - f->before_p[i];
        run->pod_requests[i] = x.r - f->before_r[i];
        run->ext_queries += x.xq - f->before_xq[i];
        run->ext_hits += x.xh - f->before_xh[i];
        run->kv_saved += x.xs - f->before_xs[i];
        run->kv_loaded += x.xl - f->before_xl[i];
        run->kv_wait += x.xw - f->before_xw[i];
    }
    if (after && f->gateway) {
        scrape_t g = scrape(f->front_port);
        run->gw_decision_us = g.dcount > 0 ? g.dsum / g.dcount * 1e6 : 0;
    }
}
