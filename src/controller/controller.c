/*
 * controller — `brix controller`: options, start-up, timers and shutdown.
 *
 * Start-up takes an exclusive lock on the state directory (two controllers on
 * one state would fight over the same replicas), reads the state file, adopts
 * replicas that outlived the previous controller, and only then opens the API
 * and starts reconciling. On SIGTERM/SIGINT it stops its replicas (unless
 * --keep-replicas, for upgrading the controller under a running fleet), saves
 * the state and exits 0.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controller/controller_main.h"
#include "controller/ctl.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/http_host.h"
#include "core/log.h"
#include "core/time.h"

#include <openssl/crypto.h>

#define O(f) offsetof(brix_ctl_cfg_t, f)

static const brix_opt_t ctl_opts[] = {
    { "host", BRIX_OPT_STRING, O(host), "127.0.0.1", 1, 0, "ADDR", "API listen address" },
    { "port", BRIX_OPT_INT, O(port), "8081", 0, 65535, NULL, "API port (0 = any free port)" },
    { "state-dir", BRIX_OPT_STRING, O(state_dir), ".brix", 1, 0, "DIR",
      "objects, replica records, logs/ and artifacts/ live here" },
    { "adapter-idle-ttl", BRIX_OPT_DURATION, O(adapter_idle_ttl), "10m", 0, 604800000, NULL,
      "unload an adapter with no requests for this long (0 = never; per adapter: spec.idleTTL)" },
    { "reconcile-interval", BRIX_OPT_DURATION, O(reconcile_interval), "500ms", 10, 600000, NULL,
      "full reconcile pass every (events also trigger one at once)" },
    { "health-interval", BRIX_OPT_DURATION, O(health_interval), "1s", 50, 600000, NULL,
      "replica /health and /v1/models checked every" },
    { "health-timeout", BRIX_OPT_DURATION, O(health_timeout), "2s", 50, 600000, NULL,
      "replica /health and /v1/models timeout" },
    { "restart-backoff-max", BRIX_OPT_DURATION, O(restart_backoff_max), "30s", 1000, 3600000, NULL,
      "a crashing replica restarts after 1 s, 2 s, 4 s … up to this" },
    { "load-retries", BRIX_OPT_INT, O(load_retries), "5", 1, 100, NULL,
      "tries of one LoRA load on one replica before trying another replica" },
    { "load-timeout", BRIX_OPT_DURATION, O(load_timeout), "60s", 100, 3600000, NULL,
      "one /v1/load_lora_adapter call may take this long" },
    { "artifact-max-size", BRIX_OPT_SIZE, O(artifact_max_bytes), "10g", 1024, 1099511627776.0, NULL,
      "largest adapter artifact downloaded" },
    { "artifact-timeout", BRIX_OPT_DURATION, O(artifact_timeout), "10m", 1000, 86400000, NULL,
      "one artifact download may take this long" },
    { "artifact-max-unpacked", BRIX_OPT_SIZE, O(artifact_max_unpacked), "20g", 1024,
      1099511627776.0, NULL,
      "an artifact .tar.gz may unpack to at most this (sum of its members; a gzip bomb fails "
      "with TooLarge before it is written)" },
    { "artifact-max-files", BRIX_OPT_INT, O(artifact_max_files), "10000", 1, 10000000, NULL,
      "an artifact .tar.gz (or a file:// directory) may hold at most this many entries" },
    { "artifact-cache-max", BRIX_OPT_SIZE, O(artifact_cache_max), "20g", 0, 1099511627776.0 * 64,
      NULL,
      "STATE/artifacts is cleaned above this: least recently used artifacts that no "
      "ModelAdapter references and no replica loaded go first" },
    { "artifact-root", BRIX_OPT_STRLIST, O(artifact_roots), NULL, 1, 0, "DIR",
      "file:// artifacts are read only under these directories and the state dir (repeatable; "
      "default: the directory of the file each adapter was applied from)" },
    { "stop-grace", BRIX_OPT_DURATION, O(stop_grace), "10s", 0, 600000, NULL,
      "a stopping replica gets SIGTERM, then SIGKILL after this" },
    { "unload-drain", BRIX_OPT_DURATION, O(unload_drain), "1s", 0, 600000, NULL,
      "gateways stop routing an adapter to a replica this long before it is unloaded there" },
    { "evict-idle-min", BRIX_OPT_DURATION, O(evict_idle_min), "10s", 0, 604800000, NULL,
      "an adapter needing room may evict (scale to zero) the least recently used adapter idle "
      "this long (0 = never evict; it waits for an idle TTL)" },
    { "keep-replicas", BRIX_OPT_BOOL, O(keep_replicas), "false", 1, 0, NULL,
      "leave replicas running on exit; the next controller adopts them" },
    { "max-watchers", BRIX_OPT_INT, O(max_watchers), "256", 1, 100000, NULL,
      "concurrent GET /v1/watch streams" },
    { "log-level", BRIX_OPT_STRING, O(log_level), "info", 1, 0, "LEVEL",
      "debug | info | warn | error" },
    { "config", BRIX_OPT_STRING, O(config), NULL, 1, 0, "FILE",
      "YAML file with any of these options" },
    { "token-file", BRIX_OPT_STRING, O(token_file), NULL, 1, 0, "FILE",
      "the API's bearer token is read from FILE (default: STATE_DIR/token, created with a random "
      "256-bit token, mode 0600)" },
    { "engine-key-file", BRIX_OPT_STRING, O(engine_key_file), NULL, 1, 0, "FILE",
      "the key engine replicas require on their /v1 routes is read from FILE (default: "
      "STATE_DIR/engine-key, created with a random 256-bit key, mode 0600); replicas get it in "
      "the environment (VLLM_API_KEY), never in argv" },
    { "no-engine-key", BRIX_OPT_BOOL, O(no_engine_key), "false", 1, 0, NULL,
      "start replicas without an engine key: any local process can then load, unload and run "
      "inference on them directly" },
    { "allowed-host", BRIX_OPT_STRLIST, O(allowed_hosts), NULL, 0, 0, "NAME",
      "a Host name the API answers besides IP addresses and localhost (repeatable; NAME:PORT "
      "for one port only); other names get 403 (DNS rebinding)" },
    { "allow-engine-commands", BRIX_OPT_BOOL, O(allow_engine_commands), "false", 1, 0, NULL,
      "accept ModelDeployments whose spec.engine.command runs a program other than the built-in "
      "engine-sim (it runs as this user)" },
    { "status-page-open", BRIX_OPT_BOOL, O(status_page_open), "false", 1, 0, NULL,
      "serve the status page / without the token (loopback --host only)" },
    { "insecure-no-auth", BRIX_OPT_BOOL, O(insecure_no_auth), "false", 1, 0, NULL,
      "no API token at all (loopback --host only; every local user and process is trusted)" },
    { "autoscale-interval", BRIX_OPT_DURATION, O(autoscale_interval), "1s", 50, 600000, NULL,
      "PodAutoscalers: replicas' /metrics and external sources read, and a decision made, every" },
    { "drain-timeout", BRIX_OPT_DURATION, O(drain_timeout), "120s", 0, 86400000, NULL,
      "a replica drained for a scale-down is stopped after this even with requests running" },
    { "drain-grace", BRIX_OPT_DURATION, O(drain_grace), "2s", 0, 600000, NULL,
      "a draining replica is kept at least this long (requests routed just before the gateways "
      "saw the drain arrive)" },
    { "gateway-load-stale", BRIX_OPT_DURATION, O(gateway_stale), "5s", 500, 600000, NULL,
      "gateway load reports older than this count as missing (autoscaler metrics)" },
    { "kvcache-servers", BRIX_OPT_STRING, O(kvcache_servers), NULL, 1, 0, "HOST:PORT[,...]",
      "brix kvcache members: replicas of deployments with kvCache load and save prefix blocks "
      "there (engine-sim gets --kv-transfer-config; a command template uses {kvcache})" },
    { "kvcache-token-file", BRIX_OPT_STRING, O(kvcache_token_file), NULL, 1, 0, "FILE",
      "the kvcache members' token: engine-sim replicas get its path (token_file), never the "
      "token" },
    BRIX_HTTP_LIMIT_OPTIONS(brix_ctl_cfg_t, http, "1000"),
    BRIX_OPT_END,
};

static const char usage_line[] = "usage: brix controller [--port 8081] [--state-dir DIR] [options]";
static const char about[] =
    "Runs model deployments as local engine replicas (brix engine-sim by default, or any engine\n"
    "command with --allow-engine-commands) and places ModelAdapters (LoRA) on them, loading and\n"
    "unloading through vLLM's API. Objects are managed with `brix apply -f`, `brix get` and\n"
    "`brix delete`; gateways follow the fleet through GET /v1/watch (brix gateway --controller\n"
    "URL --controller-token-file STATE_DIR/token). Every API path but /healthz and /readyz needs\n"
    "`Authorization: Bearer <token>` (STATE_DIR/token unless --token-file).";

static int load_cfg(brix_ctl_cfg_t *c, int argc, char **argv, char *err, size_t errlen)
{
    if (brix_config_defaults(ctl_opts, c, err, errlen) ||
        brix_config_parse_args(ctl_opts, c, argc, argv, 1, err, errlen))
        return -1;
    if (c->config) {
        char *path = brix_strdup(c->config);
        int rc = path ? brix_config_load_file(ctl_opts, c, path, err, errlen) : -1;
        brix_free(path);
        if (rc || brix_config_parse_args(ctl_opts, c, argc, argv, 1, err, errlen))
            return -1;
    }
    if (brix_log_level_parse(c->log_level) < 0) {
        snprintf(err, errlen, "log-level: unknown level '%s'", c->log_level);
        return -1;
    }
    bool loopback = brix_http_host_is_loopback(c->host);
    if (c->insecure_no_auth && (!loopback || c->token_file)) {
        snprintf(err, errlen,
                 c->token_file ? "--insecure-no-auth and --token-file exclude each other"
                               : "refusing to listen on %s without a token: --insecure-no-auth "
                                 "is for a loopback --host only",
                 c->host);
        return -1;
    }
    if (c->kvcache_servers) {
        /* HOST:PORT items only: the list goes into replicas' JSON flags */
        for (const char *p = c->kvcache_servers; *p; p++)
            if (!(isalnum((unsigned char)*p) || strchr(".:-,[]_", *p))) {
                snprintf(err, errlen,
                         "kvcache-servers: '%c' is not allowed (HOST:PORT[,HOST:PORT...])", *p);
                return -1;
            }
        if (!strchr(c->kvcache_servers, ':')) {
            snprintf(err, errlen, "kvcache-servers: expected HOST:PORT[,HOST:PORT...]");
            return -1;
        }
    }
    if (c->no_engine_key && c->engine_key_file) {
        snprintf(err, errlen, "--no-engine-key and --engine-key-file exclude each other");
        return -1;
    }
    if (c->status_page_open && !loopback) {
        snprintf(err, errlen,
                 "--status-page-open serves the page without the token, so it needs a loopback "
                 "--host (not %s)",
                 c->host);
        return -1;
    }
    return 0;
}

/* The API token: --token-file, else STATE_DIR/token (made on first start).
 * 0, or -errno with err. */
static int load_token(brix_ctl_t *c, char *err, size_t errlen)
{
    if (c->cfg.insecure_no_auth) {
        BRIX_WARN("--insecure-no-auth: the API on %s takes requests from every local process",
                  c->cfg.host);
        return 0;
    }
    char path[4200];
    bool created = false;
    snprintf(path, sizeof path, "%s", c->cfg.token_file ? c->cfg.token_file : "");
    if (!c->cfg.token_file)
        snprintf(path, sizeof path, "%s/token", c->cfg.state_dir);
    int rc = brix_auth_token_load(path, !c->cfg.token_file, c->token, sizeof c->token, &created,
                                  err, errlen);
    if (rc)
        return rc;
    if (brix_auth_cookie_value(c->token, c->cookie)) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct stat st;
    if (!stat(path, &st) && (st.st_mode & 077))
        BRIX_WARN("%s can be read by other users (mode %03o): chmod 600 it", path,
                  (unsigned)(st.st_mode & 0777));
    BRIX_INFO("API token %s %s", created ? "created in" : "from", path);
    return 0;
}

/* The replicas' key: --engine-key-file, else STATE_DIR/engine-key (made on
 * first start, reused after: replicas adopted from an earlier controller keep
 * the key they were started with). Read with the API token's code. 0, or
 * -errno with err. */
static int load_engine_key(brix_ctl_t *c, char *err, size_t errlen)
{
    if (c->cfg.no_engine_key) {
        BRIX_WARN("--no-engine-key: replicas' /v1 routes take requests from every local process");
        return 0;
    }
    char path[4200];
    bool created = false;
    if (c->cfg.engine_key_file)
        snprintf(path, sizeof path, "%s", c->cfg.engine_key_file);
    else
        snprintf(path, sizeof path, "%s/engine-key", c->cfg.state_dir);
    int rc = brix_auth_token_load(path, !c->cfg.engine_key_file, c->engine_key,
                                  sizeof c->engine_key, &created, err, errlen);
    if (rc)
        return rc;
    struct stat st;
    if (!stat(path, &st) && (st.st_mode & 077))
        BRIX_WARN("%s can be read by other users (mode %03o): chmod 600 it", path,
                  (unsigned)(st.st_mode & 0777));
    BRIX_INFO("engine key %s %s", created ? "created in" : "from", path);
    return 0;
}

static int mkdir_p(const char *path, char *err, size_t errlen)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) && errno != EEXIST)
                goto fail;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) && errno != EEXIST)
        goto fail;
    return 0;
fail:
    snprintf(err, errlen, "cannot create %.900s: %s", tmp, strerror(errno));
    return -1;
}

static char *path_join(const char *a, const char *b)
{
    brix_buf_t x = BRIX_BUF_INIT;
    if (brix_buf_printf(&x, "%s/%s", a, b)) {
        brix_buf_free(&x);
        return NULL;
    }
    return x.data;
}

static int metrics_init(brix_ctl_t *c)
{
    static const double load_b[] = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
    static const double rec_b[] = { 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05 };
    static const char *const ph[] = { "phase", NULL }, *const res[] = { "result", NULL };
    const brix_metric_type_t C = BRIX_METRIC_COUNTER, G = BRIX_METRIC_GAUGE,
                             H = BRIX_METRIC_HISTOGRAM;
    brix_ctl_metrics_t *m = &c->m;
    if (!(m->reg = brix_metrics_new()) || brix_metrics_add_process(m->reg, &m->process))
        return -1;
    m->replicas = brix_metrics_family(m->reg, G, "brix_controller_replicas", "replicas by phase",
                                      ph, NULL, 0);
    m->adapters = brix_metrics_family(m->reg, G, "brix_controller_adapters",
                                      "ModelAdapters by phase", ph, NULL, 0);
    brix_metric_family_t *loads = brix_metrics_family(
        m->reg, C, "brix_controller_adapter_loads_total", "LoRA loads by result", res, NULL, 0);
    brix_metric_family_t *unloads = brix_metrics_family(
        m->reg, C, "brix_controller_adapter_unloads_total", "LoRA unloads by result", res, NULL, 0);
    brix_metric_family_t *fetch =
        brix_metrics_family(m->reg, C, "brix_controller_artifact_fetches_total",
                            "adapter artifact fetches by result", res, NULL, 0);
    brix_metric_family_t *f;
    if (!m->replicas || !m->adapters || !loads || !unloads || !fetch)
        return -1;
    const char *ok[] = { "ok" }, *bad[] = { "failed" };
    m->loads_ok = brix_metric_child(loads, ok);
    m->loads_failed = brix_metric_child(loads, bad);
    m->unloads_ok = brix_metric_child(unloads, ok);
    m->unloads_failed = brix_metric_child(unloads, bad);
    m->fetch_ok = brix_metric_child(fetch, ok);
    m->fetch_failed = brix_metric_child(fetch, bad);
#define ONE(field, type, name, help, b, nb)                                                        \
    if (!(f = brix_metrics_family(m->reg, type, name, help, NULL, b, nb)))                         \
        return -1;                                                                                 \
    m->field = brix_metric_child(f, NULL);
    ONE(restarts, C, "brix_controller_replica_restarts_total",
        "replica processes that died and were restarted", NULL, 0);
    ONE(watchers, G, "brix_controller_watchers", "open GET /v1/watch streams", NULL, 0);
    ONE(wakes, C, "brix_controller_adapter_wakes_total",
        "scaled-to-zero adapters woken by a waiting request", NULL, 0);
    ONE(scaled_down, C, "brix_controller_adapter_scale_to_zero_total",
        "adapters unloaded everywhere after their idle TTL", NULL, 0);
    ONE(evictions, C, "brix_controller_adapter_evictions_total",
        "adapters scaled to zero early (LRU) to make room for a requested one", NULL, 0);
    ONE(cache_bytes, G, "brix_controller_artifact_cache_bytes",
        "bytes in the artifact cache (STATE/artifacts) after the last cleanup", NULL, 0);
    ONE(cache_evictions, C, "brix_controller_artifact_cache_evictions_total",
        "artifacts removed from the cache by the LRU cleanup", NULL, 0);
    ONE(load_seconds, H, "brix_controller_adapter_load_seconds",
        "time from placing an adapter on a replica to the engine's 200", load_b,
        sizeof load_b / sizeof *load_b);
    ONE(reconcile_seconds, H, "brix_controller_reconcile_seconds", "one reconcile pass", rec_b,
        sizeof rec_b / sizeof *rec_b);
#undef ONE
    brix_ctl_as_metrics_init(c);
    return 0;
}

/* ------------------------------------------------------------- timers -- */

static void on_reconcile_timer(uv_timer_t *t)
{
    brix_ctl_reconcile(t->data);
}

static void on_health_timer(uv_timer_t *t)
{
    brix_ctl_t *c = t->data;
    if (!c->stopping)
        brix_ctl_health_tick(c);
}

static void on_autoscale_timer(uv_timer_t *t)
{
    brix_ctl_as_tick(t->data);
}

static void on_heartbeat(uv_timer_t *t)
{
    brix_ctl_heartbeat(t->data);
}

static void server_closed(void *arg)
{
    (void)arg;
}

static void finish(brix_ctl_t *c)
{
    uv_timer_stop(&c->stop_timer);
    if (c->dirty || c->cfg.keep_replicas)
        brix_ctl_save(c);
    /* let go of replicas still running (--keep-replicas, or ones that would
     * not die): their handles must not keep this loop alive */
    for (size_t i = 0; i < c->nreps; i++)
        c->prov->ops->release(c->prov, c->reps[i]);
    if (c->curl) {
        brix_curl_close(c->curl);
        c->curl = NULL;
    }
    if (c->health_curl) {
        brix_curl_close(c->health_curl);
        c->health_curl = NULL;
    }
    uv_handle_t *hs[] = { (uv_handle_t *)&c->reconcile_timer, (uv_handle_t *)&c->health_timer,
                          (uv_handle_t *)&c->heartbeat_timer, (uv_handle_t *)&c->save_timer,
                          (uv_handle_t *)&c->kick_timer,      (uv_handle_t *)&c->stop_timer,
                          (uv_handle_t *)&c->notify_timer,    (uv_handle_t *)&c->autoscale_timer,
                          (uv_handle_t *)&c->sigterm,         (uv_handle_t *)&c->sigint };
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++)
        if (!uv_is_closing(hs[i]))
            uv_close(hs[i], NULL);
    if (c->srv) {
        brix_http_server_close(c->srv, server_closed, c);
        c->srv = NULL;
    }
    BRIX_INFO("controller stopped");
}

static void on_stop_poll(uv_timer_t *t)
{
    brix_ctl_t *c = t->data;
    bool alive = false;
    for (size_t i = 0; i < c->nreps && !alive; i++)
        alive = c->reps[i]->pid > 0;
    if (!alive || brix_now_ms() > c->stop_deadline) {
        if (alive)
            BRIX_WARN("some replicas did not exit in time");
        finish(c);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    brix_ctl_t *c = s->data;
    if (c->stopping) {
        BRIX_WARN("second signal: not waiting for replicas any longer");
        c->stop_deadline = 0;
        return;
    }
    c->stopping = true;
    BRIX_INFO("received %s: %s", signum == SIGTERM ? "SIGTERM" : "SIGINT",
              c->cfg.keep_replicas ? "leaving replicas running (--keep-replicas)"
                                   : "stopping replicas");
    uv_timer_stop(&c->reconcile_timer);
    uv_timer_stop(&c->health_timer);
    uv_timer_stop(&c->heartbeat_timer);
    uv_timer_stop(&c->kick_timer);
    uv_timer_stop(&c->autoscale_timer);
    brix_ctl_close_watchers(c);
    if (!c->cfg.keep_replicas) {
        for (size_t i = 0; i < c->nreps; i++) {
            brix_replica_t *r = c->reps[i];
            if (r->pid > 0) {
                r->phase = BRIX_RP_TERMINATING;
                r->recycle = false;
                c->prov->ops->stop(c->prov, r, (uint64_t)c->cfg.stop_grace);
            }
        }
    }
    c->stop_deadline = brix_now_ms() + (uint64_t)c->cfg.stop_grace + 2000;
    if (c->cfg.keep_replicas)
        finish(c);
    else
        uv_timer_start(&c->stop_timer, on_stop_poll, 0, 50);
}

/* ---------------------------------------------------------------- main -- */

int brix_controller_main(int argc, char **argv)
{
    static brix_ctl_t ctl;
    brix_ctl_t *c = &ctl;
    memset(c, 0, sizeof *c);
    char err[1024] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            brix_config_usage(stdout, ctl_opts, usage_line, about);
            return 0;
        }
    }
    if (load_cfg(&c->cfg, argc, argv, err, sizeof err)) {
        fprintf(stderr, "brix controller: %s\n", err);
        brix_config_free(ctl_opts, &c->cfg);
        return 2;
    }
    brix_log_init("controller", (brix_log_level_t)brix_log_level_parse(c->cfg.log_level));
    signal(SIGPIPE, SIG_IGN);
    int rc = 1, lockfd = -1;
    uv_loop_t loop;
    uv_loop_init(&loop);
    c->loop = &loop;
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        fprintf(stderr, "brix controller: cannot find its own executable: %s\n", strerror(errno));
        goto out;
    }
    self[sl] = '\0';
    c->self_exe = brix_strdup(self);
    c->state_path = path_join(c->cfg.state_dir, "state.json");
    c->log_dir = path_join(c->cfg.state_dir, "logs");
    c->artifact_dir = path_join(c->cfg.state_dir, "artifacts");
    if (!c->self_exe || !c->state_path || !c->log_dir || !c->artifact_dir)
        goto out;
    if (mkdir_p(c->cfg.state_dir, err, sizeof err) || mkdir_p(c->log_dir, err, sizeof err)) {
        fprintf(stderr, "brix controller: %s\n", err);
        goto out;
    }
    char lockpath[4200];
    snprintf(lockpath, sizeof lockpath, "%s/lock", c->cfg.state_dir);
    lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB)) {
        fprintf(stderr, "brix controller: %s is in use by another controller (%s)\n",
                c->cfg.state_dir, lockfd < 0 ? strerror(errno) : "locked");
        goto out;
    }
    if (load_token(c, err, sizeof err) || load_engine_key(c, err, sizeof err)) {
        fprintf(stderr, "brix controller: %s\n", err);
        goto out;
    }
    if (brix_ctl_as_init(c) || metrics_init(c) || !(c->curl = brix_curl_new(&loop)) ||
        !(c->health_curl = brix_curl_new(&loop)) || brix_curl_set_bearer(c->curl, c->engine_key) ||
        !(c->prov = brix_provider_local_new(&loop, c->self_exe, c->log_dir, brix_ctl_on_exit, c))) {
        fprintf(stderr, "brix controller: out of memory\n");
        goto out;
    }
    c->prov->engine_key = c->engine_key[0] ? c->engine_key : NULL;
    c->prov->kvcache_servers = c->cfg.kvcache_servers;
    c->prov->kvcache_token_file = c->cfg.kvcache_token_file;
    if (brix_ctl_load(c, err, sizeof err)) {
        fprintf(stderr, "brix controller: %s\n", err);
        goto out;
    }
    uv_timer_t *ts[] = { &c->reconcile_timer, &c->health_timer,   &c->heartbeat_timer,
                         &c->save_timer,      &c->kick_timer,     &c->stop_timer,
                         &c->notify_timer,    &c->autoscale_timer };
    c->rng = brix_now_ns() | 1;
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
        uv_timer_init(&loop, ts[i]);
        ts[i]->data = c;
    }
    uv_signal_init(&loop, &c->sigterm);
    uv_signal_init(&loop, &c->sigint);
    c->sigterm.data = c->sigint.data = c;
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    if (!(c->srv = brix_http_server_new(&loop, &c->cfg.http, brix_ctl_http, c))) {
        fprintf(stderr, "brix controller: out of memory\n");
        goto out_loop;
    }
    int lrc = brix_http_server_listen(c->srv, c->cfg.host, (int)c->cfg.port, false, &c->port);
    if (lrc) {
        BRIX_ERROR("cannot listen on %s:%lld: %s", c->cfg.host, (long long)c->cfg.port,
                   uv_strerror(lrc));
        c->stopping = true;
        finish(c);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out;
    }
    c->ready = true;
    BRIX_INFO("controller listening on http://%s:%d (state %s, %zu deployment(s), %zu "
              "adapter(s))",
              c->cfg.host, c->port, c->cfg.state_dir, c->ndeploys, c->nadapters);
    uv_timer_start(&c->reconcile_timer, on_reconcile_timer, 0, (uint64_t)c->cfg.reconcile_interval);
    uv_timer_start(&c->health_timer, on_health_timer, 0, (uint64_t)c->cfg.health_interval);
    uv_timer_start(&c->heartbeat_timer, on_heartbeat, 5000, 5000);
    uv_timer_start(&c->autoscale_timer, on_autoscale_timer, (uint64_t)c->cfg.autoscale_interval,
                   (uint64_t)c->cfg.autoscale_interval);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = 0;
    goto out;
out_loop:
    c->stopping = true;
    finish(c);
    uv_run(&loop, UV_RUN_DEFAULT);
out:
    brix_ctl_calls_free(c);
    brix_free(c->watchers);
    if (c->curl)
        brix_curl_close(c->curl);
    if (c->health_curl)
        brix_curl_close(c->health_curl);
    for (size_t i = 0; i < c->nreps; i++)
        brix_ctl_replica_free(c, c->reps[i]);
    uv_run(&loop, UV_RUN_DEFAULT); /* provider handles closed by release */
    brix_free(c->reps);
    for (size_t i = 0; i < c->ndeploys; i++)
        brix_obj_free(c->deploys[i]);
    brix_free(c->deploys);
    for (size_t i = 0; i < c->nadapters; i++)
        brix_ctl_adapter_free(c->adapters[i]);
    brix_free(c->adapters);
    for (size_t i = 0; i < c->npas; i++)
        brix_ctl_pa_free(c->pas[i]);
    brix_free(c->pas);
    brix_ctl_as_free(c);
    if (c->prov)
        c->prov->ops->close(c->prov);
    brix_metrics_free(c->m.reg);
    brix_free(c->self_exe);
    brix_free(c->state_path);
    brix_free(c->log_dir);
    brix_free(c->artifact_dir);
    uv_loop_close(&loop);
    if (lockfd >= 0)
        close(lockfd);
    brix_config_free(ctl_opts, &c->cfg);
    OPENSSL_cleanse(c->token, sizeof c->token);
    OPENSSL_cleanse(c->engine_key, sizeof c->engine_key);
    return rc;
}
