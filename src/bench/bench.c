/*
 * `brix bench`: flags, then for each strategy a fresh fleet, the workload
 * replayed against it, the engines' counters, and finally one report with
 * every strategy side by side. See bench.h for the design.
 */
#include "bench/bench_main.h"

#include "bench/bench.h"
#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define O(f) offsetof(bench_cfg_t, f)
static const brix_opt_t bench_opts[] = {
    { "config", BRIX_OPT_STRING, O(config), NULL, 1, 0, "FILE", "YAML file of flag: value pairs" },
    { "scenario", BRIX_OPT_STRING, O(scenario), "shared-prefix", 1, 0, "NAME",
      "shared-prefix | sharegpt | lora-mix | trace | mooncake | azure | autoscale | kvstore | "
      "kvevict" },
    { "trace", BRIX_OPT_STRING, O(trace), NULL, 1, 0, "FILE",
      "trace/mooncake/azure input (sharegpt: the ShareGPT lengths CSV to sample)" },
    { "strategies", BRIX_OPT_STRING, O(strategies),
      "random,least-request,weighted,prefix-cache-precise,sglang-cache-aware,gie-default,"
      "nginx-least-conn",
      1, 0, "LIST", "strategies compared, each on a fresh fleet (nginx-least-conn: nginx peer)" },
    { "target", BRIX_OPT_STRING, O(target), NULL, 1, 0, "URL",
      "drive an existing gateway instead of starting a fleet (strategies sent as header)" },
    { "replicas", BRIX_OPT_INT, O(replicas), "8", 1, 64, "N", "engine-sims in the fleet" },
    { "gpu", BRIX_OPT_STRING, O(gpu), "h100", 1, 0, "PROFILE", "engine GPU profile" },
    { "time-scale", BRIX_OPT_DOUBLE, O(time_scale), "0.5", 0.001, 100, "F",
      "engines' --time-scale; arrivals are scaled alike" },
    { "duration", BRIX_OPT_DOUBLE, O(duration), "40", 0.1, 86400, "SECONDS",
      "simulated seconds of arrivals (generated scenarios)" },
    { "speed", BRIX_OPT_DOUBLE, O(speed), "1", 0.001, 1e6, "X",
      "trace scenarios: replay X times faster (sets the offered load)" },
    { "max-requests", BRIX_OPT_INT, O(max_requests), "0", 0, 10000000, "N",
      "stop after N requests (0 = no limit)" },
    { "rate", BRIX_OPT_DOUBLE, O(rate), "72", 0.001, 1e6, "R",
      "arrivals per simulated second (generated scenarios)" },
    { "arrival", BRIX_OPT_STRING, O(arrival), "poisson", 1, 0, "KIND", "poisson | bursty" },
    { "burst-on", BRIX_OPT_DOUBLE, O(burst_on), "5", 0, 1e6, "SECONDS", "bursty: on period" },
    { "burst-off", BRIX_OPT_DOUBLE, O(burst_off), "5", 0, 1e6, "SECONDS", "bursty: off period" },
    { "seed", BRIX_OPT_INT, O(seed), "1", 0, 1e15, "N", "workload seed" },
    { "out", BRIX_OPT_STRING, O(out), NULL, 1, 0, "DIR",
      "results directory (default bench/results/bench-SCENARIO)" },
    { "slo-ttft", BRIX_OPT_DOUBLE, O(slo_ttft), "2", 0, 1e6, "SECONDS", "goodput SLO on TTFT" },
    { "slo-tpot", BRIX_OPT_DOUBLE, O(slo_tpot), "0.1", 0, 1e6, "SECONDS",
      "goodput SLO on time per output token" },
    { "groups", BRIX_OPT_INT, O(groups), "128", 1, 1000000, "N",
      "shared-prefix: system-prompt groups" },
    { "users-per-group", BRIX_OPT_INT, O(users_per_group), "8", 1, 1000000, "N",
      "shared-prefix: conversations per group" },
    { "turns", BRIX_OPT_INT, O(turns), "3", 1, 1000, "N", "shared-prefix: turns per conversation" },
    { "system-tokens", BRIX_OPT_INT, O(system_tokens), "6000", 1, 1000000, "N",
      "shared-prefix: system prompt length" },
    { "user-tokens", BRIX_OPT_INT, O(user_tokens), "256", 1, 1000000, "N",
      "shared-prefix: user message length" },
    { "reply-tokens", BRIX_OPT_INT, O(reply_tokens), "32", 1, 1000000, "N",
      "shared-prefix: reply length (max_tokens)" },
    { "input-median", BRIX_OPT_DOUBLE, O(in_median), "1730", 1, 1e6, "N",
      "sharegpt/lora-mix: input length median (ShareGPT: 1730)" },
    { "input-sigma", BRIX_OPT_DOUBLE, O(in_sigma), "0.9", 0, 10, "S",
      "input length lognormal sigma" },
    { "output-median", BRIX_OPT_DOUBLE, O(out_median), "415", 1, 1e6, "N",
      "output length median (ShareGPT: 415)" },
    { "output-sigma", BRIX_OPT_DOUBLE, O(out_sigma), "0.38", 0, 10, "S",
      "output length lognormal sigma" },
    { "max-prompt", BRIX_OPT_INT, O(max_prompt), "7000", 1, 10000000, "N", "longest prompt" },
    { "max-output", BRIX_OPT_INT, O(max_output), "1024", 1, 10000000, "N", "longest output" },
    { "adapters", BRIX_OPT_INT, O(adapters), "16", 1, 4096, "N", "lora-mix: adapters" },
    { "zipf", BRIX_OPT_DOUBLE, O(zipf), "1.1", 0, 10, "S", "lora-mix: Zipf exponent" },
    { "max-model-len", BRIX_OPT_INT, O(max_model_len), "8192", 64, 1 << 24, "N",
      "engines' --max-model-len" },
    { "kv-blocks", BRIX_OPT_INT, O(kv_blocks), "0", 0, 1 << 24, "N",
      "engines' --num-gpu-blocks-override (0 = the profile's)" },
    { "block-size", BRIX_OPT_INT, O(block_size), "16", 1, 256, "N", "engines' --block-size" },
    { "brix", BRIX_OPT_STRING, O(brix_bin), NULL, 1, 0, "PATH",
      "brix binary for the fleet (default: this one)" },
    { "nginx", BRIX_OPT_STRING, O(nginx_bin), "nginx", 1, 0, "PATH", "nginx binary for the peer" },
    { "progress", BRIX_OPT_BOOL, O(progress), "true", 1, 0, NULL, "progress line while running" },
    { "gateway-args", BRIX_OPT_STRING, O(gateway_args), NULL, 1, 0, "\"FLAGS\"",
      "extra gateway flags, space separated" },
    { "trace-start", BRIX_OPT_DOUBLE, O(trace_start), "0", 0, 1e9, "SECONDS",
      "azure/autoscale: replay the trace from this many seconds after its first arrival" },
    { "trace-length", BRIX_OPT_DOUBLE, O(trace_length), "0", 0, 1e9, "SECONDS",
      "azure/autoscale: seconds of trace replayed (0 = to the end; autoscale: 1800)" },
    { "policies", BRIX_OPT_STRING, O(policies), "static,hpa,kpa,apa,slo", 1, 0, "LIST",
      "autoscale: scaling policies compared, each on a fresh `brix up` cluster; kvevict: "
      "eviction policies of the kvcache node (prefix, request, s3fifo; default all three)" },
    { "static-replicas", BRIX_OPT_INT, O(static_replicas), "0", 0, 256, "N",
      "autoscale: the static policy's replicas (0 = what the slice's busiest 10 s need)" },
    { "static-utilization", BRIX_OPT_DOUBLE, O(static_util), "0.8", 0.05, 1, "U",
      "autoscale: the static replicas run at this utilization in the busiest 10 s" },
    { "min-replicas", BRIX_OPT_INT, O(min_replicas), "1", 0, 256, "N",
      "autoscale: PodAutoscaler minReplicas" },
    { "max-replicas", BRIX_OPT_INT, O(max_replicas), "0", 0, 256, "N",
      "autoscale: PodAutoscaler maxReplicas (0 = 1.5 x the static replicas)" },
    { "startup-delay", BRIX_OPT_STRING, O(startup_delay), "auto", 1, 0, "SECONDS|auto",
      "autoscale: engines' --startup-delay (model loading, simulated seconds)" },
    { "autoscale-metric", BRIX_OPT_STRING, O(as_metric), "num_requests_waiting", 1, 0, "NAME",
      "autoscale: HPA/KPA/APA targetMetric (AIBrix's names)" },
    { "autoscale-target", BRIX_OPT_STRING, O(as_target), "2", 1, 0, "VALUE",
      "autoscale: HPA/KPA/APA targetValue per replica" },
    { "sample-interval", BRIX_OPT_DOUBLE, O(sample_interval), "0.25", 0.05, 60, "SECONDS",
      "autoscale: wall seconds between samples of the controller's replicas" },
    { "flap-window", BRIX_OPT_DOUBLE, O(flap_window), "300", 0, 1e6, "SECONDS",
      "autoscale: a scale change undone within this many simulated seconds is a flap "
      "(AIBrix's default scale-down cooldown)" },
    { "envelope", BRIX_OPT_STRING, O(envelope), NULL, 1, 0, "FILE",
      "autoscale: arrivals from a ServeGen aggregate-rate CSV instead of the trace's timestamps "
      "(lengths still drawn from --trace)" },
    { "envelope-start", BRIX_OPT_DOUBLE, O(envelope_start), "0", 0, 1e9, "SECONDS",
      "autoscale --envelope: first envelope second replayed" },
    { "envelope-speed", BRIX_OPT_DOUBLE, O(envelope_speed), "48", 1, 1e6, "X",
      "autoscale --envelope: envelope seconds per simulated second (48: a day in 30 min)" },
    { "envelope-rate", BRIX_OPT_DOUBLE, O(envelope_rate), "5", 0.001, 1e6, "R",
      "autoscale --envelope: mean requests per simulated second the envelope is scaled to" },
    { "controller-args", BRIX_OPT_STRING, O(controller_args), NULL, 1, 0, "\"FLAGS\"",
      "autoscale: extra controller flags in each cluster, space separated" },
    { "routing", BRIX_OPT_STRING, O(routing), "least-request", 1, 0, "STRATEGY",
      "autoscale: the clusters' gateway routing strategy" },
    { "sizes", BRIX_OPT_STRING, O(kv_sizes), "2MiB,4KiB", 1, 0, "LIST",
      "kvstore: value sizes (each gets fresh servers)" },
    { "threads", BRIX_OPT_STRING, O(kv_threads), "1,4", 1, 0, "LIST",
      "kvstore: client thread counts (one connection each)" },
    { "paths", BRIX_OPT_STRING, O(kv_paths), "redis-tcp,redis-unix,brixkv-tcp,brixkv-shm", 1, 0,
      "LIST", "kvstore: the store paths compared" },
    { "ops", BRIX_OPT_STRING, O(kv_ops), "get,put", 1, 0, "LIST", "kvstore: get and/or put" },
    { "repeat", BRIX_OPT_INT, O(repeat), "3", 1, 16, "N",
      "kvstore: runs of every cell (median and spread reported)" },
    { "batch", BRIX_OPT_INT, O(kv_batch), "1", 1, 256, "N",
      "kvstore: keys per request (redis MGET / pipelined SETs, brixkv mget / mput)" },
    { "cold-set", BRIX_OPT_SIZE, O(kv_cold_set), "512MiB", 1, 64.0 * (1ull << 30), "SIZE",
      "kvstore: bytes of values preloaded per size (larger than the CPU caches)" },
    { "redis-server", BRIX_OPT_STRING, O(redis_server), "redis-server", 1, 0, "PATH",
      "kvstore: the redis-server binary compared against" },
    { "traces", BRIX_OPT_STRING, O(kv_traces),
      "../shared/traces/mooncake-fast25/conversation_trace.jsonl,"
      "../shared/traces/mooncake-fast25/synthetic_trace.jsonl",
      1, 0, "LIST", "kvevict: Mooncake-format JSONL traces (hash_ids) replayed" },
    { "capacities", BRIX_OPT_STRING, O(kv_capacities), "0.05,0.1,0.2,0.4", 1, 0, "LIST",
      "kvevict: node capacities as fractions of each trace's unique blocks" },
    { "value-size", BRIX_OPT_SIZE, O(kv_value), "4KiB", 16, 64.0 * (1 << 20), "SIZE",
      "kvevict: bytes stored per block" },
    { "kvcache-args", BRIX_OPT_STRING, O(kvcache_args), NULL, 1, 0, "\"FLAGS\"",
      "extra `brix kvcache` flags for the nodes bench starts, space separated" },
    { "kvcache", BRIX_OPT_BOOL, O(kvcache), "false", 1, 0, NULL,
      "fleets: run every strategy twice, without and with a kvcache node (label S+kvcache; "
      "an S+kvcache entry in --strategies does one)" },
    { "kvcache-capacity", BRIX_OPT_SIZE, O(kvcache_capacity), "2GiB", 1, 1e15, "SIZE",
      "fleets: the kvcache node's --capacity" },
    { "kvcache-block-bytes", BRIX_OPT_SIZE, O(kvcache_block), "0", 0, 64.0 * (1 << 20), "SIZE",
      "fleets: bytes the engines store per block (0 = the real 128 KiB per token); smaller "
      "blocks keep a long trace within the node, and the transfer rate is scaled so the "
      "simulated load time stays that of real-size blocks at --kvcache-gbps" },
    { "kvcache-gbps", BRIX_OPT_DOUBLE, O(kvcache_gbps), "100", 0, 1e6, "GBIT",
      "fleets: simulated store-to-GPU bandwidth for real-size blocks (0 = real I/O time only)" },
    BRIX_OPT_END,
};
#undef O

static const char usage_line[] = "brix bench [--scenario NAME] [--replicas N] [options]";
static const char about[] =
    "Workload generator, load driver and report: replays a scenario or trace against a fresh\n"
    "fleet of engine-sims behind the gateway once per routing strategy (plus nginx least_conn),\n"
    "and writes results.md, results.json and latency CDF plots.\n"
    "--scenario autoscale instead compares scaling policies: for each of --policies a fresh\n"
    "`brix up` cluster (static peak provisioning, or a PodAutoscaler of that strategy) serves a\n"
    "slice of the Azure 2023 code trace; its defaults are --gpu a100, --time-scale 0.0667,\n"
    "--trace-length 1800 and the trace under ../shared/traces when those are not given.";

/* Whether argv sets --name (scenario defaults yield to the user's flags). */
static bool given(int argc, char **argv, const char *name)
{
    size_t n = strlen(name);
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], "--", 2) && !strncmp(argv[i] + 2, name, n) &&
            (argv[i][2 + n] == '\0' || argv[i][2 + n] == '='))
            return true;
    return false;
}

/* The autoscale scenario's own defaults: ~2 min of wall per policy for a
 * 30-minute slice (1800 x 0.0667 = 120 s), on A100s, where the code trace's
 * peak needs several replicas and its mean about one. */
static int autoscale_defaults(bench_cfg_t *c, int argc, char **argv)
{
    char err[256];
    static const char default_trace[] =
        "../shared/traces/azure-llm-2023/AzureLLMInferenceTrace_code.csv";
    if (!given(argc, argv, "time-scale"))
        c->time_scale = 1.0 / 15;
    if (!given(argc, argv, "trace-length"))
        c->trace_length = 1800;
    if (!given(argc, argv, "gpu") && brix_config_set(bench_opts, c, "gpu", "a100", err, sizeof err))
        return -1;
    if (!c->trace && access(default_trace, R_OK) == 0 &&
        brix_config_set(bench_opts, c, "trace", default_trace, err, sizeof err))
        return -1;
    return 0;
}

static int mkdirs(const char *path)
{
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) == 0 || errno == EEXIST ? 0 : -1;
}

static int parse_target(const char *url, char *host, size_t hl, int *port)
{
    const char *p = strncmp(url, "http://", 7) ? url : url + 7;
    const char *colon = strrchr(p, ':');
    if (!colon)
        return -1;
    snprintf(host, hl, "%.*s", (int)(colon - p), p);
    if (!strcmp(host, "localhost"))
        snprintf(host, hl, "127.0.0.1");
    *port = atoi(colon + 1);
    return *port > 0 ? 0 : -1;
}

int brix_bench_main(int argc, char **argv)
{
    bench_cfg_t c;
    memset(&c, 0, sizeof c);
    char err[512];
    int rc = 2;
    if (brix_config_defaults(bench_opts, &c, err, sizeof err) ||
        (rc = brix_config_parse_args(bench_opts, &c, argc, argv, 1, err, sizeof err)) < 0) {
        fprintf(stderr, "brix bench: %s\n", err);
        brix_config_free(bench_opts, &c);
        return 2;
    }
    if (rc == 1) {
        brix_config_usage(stdout, bench_opts, usage_line, about);
        brix_config_free(bench_opts, &c);
        return 0;
    }
    if (c.config && (brix_config_load_file(bench_opts, &c, c.config, err, sizeof err) ||
                     brix_config_parse_args(bench_opts, &c, argc, argv, 1, err, sizeof err))) {
        fprintf(stderr, "brix bench: %s\n", err);
        brix_config_free(bench_opts, &c);
        return 2;
    }
    brix_log_init("bench", BRIX_LOG_WARN);
    bool kvstore = !strcmp(c.scenario, "kvstore"), kvevict = !strcmp(c.scenario, "kvevict");
    if (kvstore || kvevict) {
        /* seconds per cell, not of simulated arrivals */
        if (kvstore && !given(argc, argv, "duration"))
            c.duration = 2;
        if (kvevict && !given(argc, argv, "policies") &&
            brix_config_set(bench_opts, &c, "policies", "prefix,request,s3fifo", err, sizeof err)) {
            brix_config_free(bench_opts, &c);
            return 2;
        }
    }
    bool autoscale = !strcmp(c.scenario, "autoscale");
    if (autoscale && autoscale_defaults(&c, argc, argv)) {
        brix_config_free(bench_opts, &c);
        return 2;
    }
    char self[PATH_MAX];
    if (!c.brix_bin) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        self[n > 0 ? n : 0] = '\0';
        c.brix_bin = brix_strdup(n > 0 ? self : "brix");
    }
    if (!c.out) {
        char d[256];
        if (kvstore || kvevict)
            snprintf(d, sizeof d, "bench/results/%s", c.scenario);
        else
            snprintf(d, sizeof d, "bench/results/bench-%s", c.scenario);
        c.out = brix_strdup(d);
    }
    if (mkdirs(c.out)) {
        fprintf(stderr, "brix bench: cannot create %s: %s\n", c.out, strerror(errno));
        brix_config_free(bench_opts, &c);
        return 2;
    }
    if (kvstore || kvevict) {
        rc = kvstore ? bench_kvstore(&c) : bench_kvevict(&c);
        brix_config_free(bench_opts, &c);
        return rc;
    }
    bench_workload_t w;
    if (bench_workload_build(&c, &w, err, sizeof err)) {
        fprintf(stderr, "brix bench: %s\n", err);
        brix_config_free(bench_opts, &c);
        return 2;
    }
    fprintf(stderr,
            "bench: %s\nbench: %zu requests over %.1f simulated s; %lld x %s at "
            "time-scale %g\n",
            w.about, w.n, w.v[w.n - 1].t, (long long)c.replicas, c.gpu, c.time_scale);
    if (autoscale) {
        rc = bench_autoscale(&c, &w) ? 1 : 0;
        bench_workload_free(&w);
        brix_config_free(bench_opts, &c);
        return rc;
    }
    /* the strategies */
    char *list = brix_strdup(c.strategies);
    if (c.kvcache) {
        /* every strategy without, then with the store */
        brix_buf_t l = BRIX_BUF_INIT;
        for (char *s = strtok(list, ","); s; s = strtok(NULL, ",")) {
            while (*s == ' ')
                s++;
            bool has = strstr(s, "+kvcache") != NULL;
            brix_buf_printf(&l, "%s%s", l.len ? "," : "", s);
            if (!has)
                brix_buf_printf(&l, ",%s+kvcache", s);
        }
        brix_free(list);
        list = l.data ? l.data : brix_strdup("");
    }
    bench_run_t runs[32];
    size_t nruns = 0;
    memset(runs, 0, sizeof runs);
    rc = 0;
    for (char *s = strtok(list, ","); s && nruns < 32; s = strtok(NULL, ",")) {
        while (*s == ' ')
            s++;
        bench_run_t *run = &runs[nruns];
        snprintf(run->strategy, sizeof run->strategy, "%s", s);
        bench_fleet_t *f = NULL;
        char host[64] = "127.0.0.1";
        int port = 0;
        if (c.target) {
            if (!strcmp(s, "nginx-least-conn") || strstr(s, "+kvcache") ||
                parse_target(c.target, host, sizeof host, &port)) {
                fprintf(stderr, "bench: skipping %s with --target %s\n", s, c.target);
                continue;
            }
        } else {
            f = bench_fleet_start(&c, s, w.nadapters, &port, err, sizeof err);
            if (!f) {
                fprintf(stderr, "bench: %s: %s\n", s, err);
                rc = 1;
                continue;
            }
            bench_fleet_sample(f, run, false);
        }
        fprintf(stderr, "bench: running %s\n", s);
        if (bench_drive(&c, &w, host, port, c.target ? s : NULL, run)) {
            fprintf(stderr, "bench: %s: the driver failed\n", s);
            rc = 1;
        } else {
            nruns++;
        }
        if (f) {
            bench_fleet_sample(f, run, true);
            bench_fleet_stop(f);
        }
    }
    brix_free(list);
    if (nruns)
        bench_report(&c, &w, runs, nruns);
    for (size_t i = 0; i < nruns; i++) {
        brix_free(runs[i].res);
        brix_free(runs[i].itl);
    }
    bench_workload_free(&w);
    brix_config_free(bench_opts, &c);
    return rc;
}
