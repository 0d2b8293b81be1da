/*
 * kvcache_main — `brix kvcache`: flags (one declarative table), the token,
 * the loop and clean stops on SIGTERM/SIGINT.
 */
#include "kvcache/kvcache_main.h"

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/config.h"
#include "core/log.h"
#include "core/yaml.h"
#include "kvcache/server.h"

#define O(f) offsetof(brix_kvsrv_cfg_t, f)

static const brix_opt_t kv_opts[] = {
    { "listen", BRIX_OPT_STRING, O(listen), "127.0.0.1:8300", 1, 0, "HOST:PORT",
      "TCP address of the brixkv protocol (other hosts' clients)" },
    { "unix", BRIX_OPT_STRING, O(unix_path), NULL, 1, 0, "PATH",
      "UNIX socket for same-host clients, which may map the arena (socket mode 0660: the owner "
      "and group may connect)" },
    { "http-port", BRIX_OPT_INT, O(http_port), "8301", -1, 65535, "PORT",
      "HTTP port of /metrics and /healthz (-1 = none; /metrics is read-only counters, open)" },
    { "http-host", BRIX_OPT_STRING, O(http_host), NULL, 1, 0, "ADDR",
      "address of the HTTP listener (default: the --listen host)" },
    { "capacity", BRIX_OPT_SIZE, O(capacity), "1GiB", 1048576, 1099511627776.0 * 16, "SIZE",
      "bytes of values the node holds, preallocated at start (4GiB, 512MiB, bytes)" },
    { "max-value", BRIX_OPT_SIZE, O(max_value), "0", 0, 1073741824.0, "SIZE",
      "largest value a PUT may carry; 0 = the largest size class (64 MiB, less for a capacity "
      "under 512 MiB: an eighth of it)" },
    { "high-watermark", BRIX_OPT_DOUBLE, O(high_watermark), "0.95", 0.01, 1, "F",
      "evict when slots in use pass this fraction of the capacity..." },
    { "low-watermark", BRIX_OPT_DOUBLE, O(low_watermark), "0.90", 0.01, 1, "F",
      "...down to this fraction" },
    { "eviction", BRIX_OPT_STRING, O(eviction), "lru", 1, 0, "lru|s3fifo",
      "eviction policy (per size class)" },
    { "eviction-order", BRIX_OPT_STRING, O(eviction_order), "prefix", 1, 0, "prefix|request",
      "order a batch's keys are touched in: prefix = last key first, so a chain's root stays "
      "longest (a block is useless without its parent); request = as sent (plain LRU)" },
    { "lease-ms", BRIX_OPT_DURATION, O(lease_ms), "5000", 10, 600000, NULL,
      "how long a same-host GET's lease blocks eviction of the object (released earlier by the "
      "client, or when its connection closes)" },
    { "max-leases", BRIX_OPT_INT, O(max_leases), "65536", 1, 100000000, "N",
      "leases one connection may hold (more: those keys answer BUSY)" },
    { "max-pin-ttl", BRIX_OPT_DURATION, O(max_pin_ms), "1h", 1000, 2592000000.0, NULL,
      "longest pin a client may ask for" },
    { "max-pinned", BRIX_OPT_DOUBLE, O(max_pinned_fraction), "0.5", 0, 1, "F",
      "fraction of the capacity pinned objects may hold (more: PIN answers NO_SPACE)" },
    { "max-batch", BRIX_OPT_INT, O(max_batch), "4096", 1, 1048576, "N", "keys per request" },
    { "max-frame", BRIX_OPT_SIZE, O(max_frame), "128MiB", 4096, 68719476736.0, "SIZE",
      "bytes of one request's body, PUT values included; at least --max-value + 24 (told to "
      "clients in the HELLO reply: they split PUTs to fit)" },
    { "max-put-reserved", BRIX_OPT_SIZE, O(max_put_reserved), "0", 0, 1099511627776.0 * 16, "SIZE",
      "slot bytes all PUTs in flight may hold (a value's slot is taken when its first byte "
      "arrives); past it a value answers NO_SPACE and nothing is evicted for it. 0 = half of "
      "--capacity, at least --max-frame" },
    { "min-rate", BRIX_OPT_SIZE, O(min_rate), "1MiB", 1, 68719476736.0, "SIZE",
      "bytes per second: a request must end within --frame-timeout plus its body at this rate "
      "(a client trickling bytes cannot hold a PUT's slots open)" },
    { "hello-timeout", BRIX_OPT_DURATION, O(hello_timeout_ms), "5s", 100, 600000, NULL,
      "a connection that has not sent its HELLO (with the token) this long after accept is "
      "closed" },
    { "max-unauth-per-ip", BRIX_OPT_INT, O(max_unauth_per_ip), "64", 0, 1000000, "N",
      "TCP connections one address may hold before their HELLO (0 = no cap); more are closed at "
      "accept, so clients without the token cannot take every --max-connections place" },
    { "idle-timeout", BRIX_OPT_DURATION, O(idle_timeout_ms), "0", 0, 2592000000.0, NULL,
      "a connection without a request this long is closed (0 = never; clients reconnect)" },
    { "max-connections", BRIX_OPT_INT, O(max_connections), "4096", 1, 1000000, "N",
      "open brixkv connections (TCP and UNIX); more are closed at accept" },
    { "max-pending", BRIX_OPT_SIZE, O(max_pending), "256MiB", 65536, 68719476736.0, "SIZE",
      "unsent reply bytes per connection before its reading pauses" },
    { "frame-timeout", BRIX_OPT_DURATION, O(frame_timeout_ms), "30s", 100, 3600000, NULL,
      "a connection that stops sending in the middle of a request (a PUT holding reserved "
      "slots), or stops reading replies (a GET's objects stay referenced), for this long is "
      "closed" },
    { "max-namespaces", BRIX_OPT_INT, O(max_namespaces), "1024", 1, 1000000, "N",
      "distinct (model, dtype, layout, tp, seed) namespaces" },
    { "hash-seed", BRIX_OPT_STRING, O(hash_seed), NULL, 1, 0, "N",
      "clients must declare this block-hash seed (a number; 'random' is refused: keys made with "
      "a random seed never match another process's). Default: any fixed seed" },
    { "token-file", BRIX_OPT_STRING, O(token_file), NULL, 1, 0, "FILE",
      "clients' HELLO must carry the token in FILE (surrounding whitespace trimmed); default: no "
      "token (a trusted network, or loopback)" },
    { "no-hugepages", BRIX_OPT_BOOL, O(no_hugepages), "false", 1, 0, NULL,
      "do not try MFD_HUGETLB (transparent huge pages are still advised)" },
    { "log-level", BRIX_OPT_STRING, O(log_level), "info", 1, 0, "LEVEL", "debug|info|warn|error" },
    BRIX_OPT_END,
};

static const char usage_line[] = "brix kvcache --listen HOST:PORT --http-port PORT --capacity SIZE "
                                 "[--unix PATH] [options]";
static const char about[] =
    "One node of brix's distributed KV-block store: immutable blocks keyed by namespace and\n"
    "chained block hash, in a preallocated arena of fixed-size slots, served over the brixkv\n"
    "protocol (TCP; UNIX with the arena mapped by same-host clients). Engines reach it with\n"
    "libbrixkv (src/kvcache/brixkv.h).";

typedef struct kv_main {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    brix_kvsrv_t *srv;
} kv_main_t;

static void on_signal(uv_signal_t *sg, int signum)
{
    kv_main_t *m = sg->data;
    BRIX_INFO("received %s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    brix_kvsrv_stop(m->srv);
}

static char *read_token(const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    if (brix_file_read(path, &text, &len, err, errlen))
        return NULL;
    char *s = text, *e = text + len;
    while (s < e && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        e--;
    char *tok = NULL;
    if (e - s > 255)
        snprintf(err, errlen, "%s: the token is over 255 bytes", path);
    else if (e == s)
        snprintf(err, errlen, "%s: no token in the file", path);
    else
        tok = brix_strndup(s, (size_t)(e - s));
    memset(text, 0, len);
    brix_free(text);
    return tok;
}

static int check_cfg(brix_kvsrv_cfg_t *c, char *err, size_t errlen)
{
    if (c->hash_seed && !strcmp(c->hash_seed, "random")) {
        snprintf(err, errlen,
                 "--hash-seed random: refusing to start with a non-deterministic hash seed (block "
                 "keys would differ between processes and never match); give a number");
        return -1;
    }
    if (strcmp(c->eviction, "lru") && strcmp(c->eviction, "s3fifo")) {
        snprintf(err, errlen, "--eviction %s: want lru or s3fifo", c->eviction);
        return -1;
    }
    if (strcmp(c->eviction_order, "prefix") && strcmp(c->eviction_order, "request")) {
        snprintf(err, errlen, "--eviction-order %s: want prefix or request", c->eviction_order);
        return -1;
    }
    if (c->low_watermark > c->high_watermark) {
        snprintf(err, errlen, "--low-watermark must not be above --high-watermark");
        return -1;
    }
    if (c->unix_path && *c->unix_path && c->unix_path[0] != '/') {
        /* the path is advertised to clients, whose cwd is not ours */
        snprintf(err, errlen, "--unix %s: give an absolute path", c->unix_path);
        return -1;
    }
    if (c->unix_path && strlen(c->unix_path) >= 108) {
        snprintf(err, errlen, "--unix %s: path too long for a UNIX socket", c->unix_path);
        return -1;
    }
    if (!c->http_host && c->listen) { /* the --listen host */
        const char *colon = strrchr(c->listen, ':');
        if (colon) {
            const char *h = c->listen;
            size_t hl = (size_t)(colon - h);
            if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
                h++;
                hl -= 2;
            }
            c->http_host = brix_strndup(h, hl);
        }
    }
    return 0;
}

int brix_kvcache_main(int argc, char **argv)
{
    static kv_main_t m;
    memset(&m, 0, sizeof m);
    brix_kvsrv_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    char err[1024] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            brix_config_usage(stdout, kv_opts, usage_line, about);
            return 0;
        }
    }
    if (brix_config_defaults(kv_opts, &cfg, err, sizeof err) ||
        brix_config_parse_args(kv_opts, &cfg, argc, argv, 1, err, sizeof err) ||
        check_cfg(&cfg, err, sizeof err)) {
        fprintf(stderr, "brix kvcache: %s\n", err);
        brix_config_free(kv_opts, &cfg);
        return 2;
    }
    int lvl = brix_log_level_parse(cfg.log_level);
    brix_log_init("kvcache", lvl < 0 ? BRIX_LOG_INFO : (brix_log_level_t)lvl);
    char *token = NULL;
    if (cfg.token_file && !(token = read_token(cfg.token_file, err, sizeof err))) {
        fprintf(stderr, "brix kvcache: --token-file %s\n", err);
        brix_config_free(kv_opts, &cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&m.loop);
    int rc = brix_kvsrv_start(&m.loop, &cfg, token, &m.srv, err, sizeof err);
    if (token) {
        memset(token, 0, strlen(token));
        brix_free(token);
    }
    if (rc) {
        BRIX_ERROR("cannot start: %s", err);
        uv_loop_close(&m.loop);
        brix_config_free(kv_opts, &cfg);
        return 1;
    }
    if (!cfg.token_file && cfg.listen && strncmp(cfg.listen, "127.", 4) &&
        strncmp(cfg.listen, "[::1]:", 6) && strncmp(cfg.listen, "localhost:", 10))
        BRIX_WARN("--listen %s is not loopback and no --token-file is set: any host that reaches "
                  "it may read and write blocks",
                  cfg.listen);
    uv_signal_init(&m.loop, &m.sigterm);
    uv_signal_init(&m.loop, &m.sigint);
    m.sigterm.data = m.sigint.data = &m;
    uv_signal_start(&m.sigterm, on_signal, SIGTERM);
    uv_signal_start(&m.sigint, on_signal, SIGINT);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    brix_kvsrv_free(m.srv);
    uv_loop_close(&m.loop);
    BRIX_INFO("stopped");
    brix_config_free(kv_opts, &cfg);
    return 0;
}
