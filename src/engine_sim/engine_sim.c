/*
 * `brix engine-sim`: flags, start-up, the step loop and shutdown.
 *
 * The step loop: when the scheduler has work, plan a step, arm a timer for its
 * simulated duration times --time-scale, and commit it when the timer fires.
 * Steps run back to back on the simulated clock; each timer is armed for the
 * step's ideal wall deadline (epoch + end * scale), so libuv's millisecond
 * timer granularity and loop latency do not accumulate into drift.
 */
#include "engine_sim/engine_sim.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/time.h"
#include "core/workers.h"
#include "engine_sim/engine.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define O(f) offsetof(brix_engine_cfg_t, f)
static const brix_opt_t engine_opts[] = {
    { "config", BRIX_OPT_STRING, O(config), NULL, 1, 0, "FILE",
      "YAML file of flag: value pairs (flags on the command line win)" },
    { "host", BRIX_OPT_STRING, O(host), "127.0.0.1", 1, 0, "ADDR", "address to listen on" },
    { "port", BRIX_OPT_INT, O(port), "8000", 0, 65535, "PORT", "port to listen on (0 = any free)" },
    { "model", BRIX_OPT_STRING, O(model), "llama-3-8b", 1, 0, "NAME",
      "model path or name; shown as `root` in /v1/models" },
    { "served-model-name", BRIX_OPT_STRLIST, O(served_model_name), NULL, 1, 0, "NAME [NAME ...]",
      "names the API accepts for the base model (default: --model); the first is reported in "
      "metrics" },
    { "api-key", BRIX_OPT_STRING, O(api_key), NULL, 1, 0, "KEY",
      "as vLLM: requests to /v1 routes need `Authorization: Bearer KEY` (401 otherwise); "
      "default: the environment variable VLLM_API_KEY, as vLLM" },
    { "max-model-len", BRIX_OPT_INT, O(max_model_len), "8192", 16, 1 << 24, NULL,
      "context length: prompt + output tokens" },
    { "max-num-seqs", BRIX_OPT_INT, O(max_num_seqs), "0", 0, 1 << 20, NULL,
      "sequences per batch (0 = the GPU profile's vLLM default)" },
    { "max-num-batched-tokens", BRIX_OPT_INT, O(max_num_batched_tokens), "0", 0, 1 << 24, NULL,
      "tokens per step (0 = the GPU profile's vLLM default)" },
    { "block-size", BRIX_OPT_INT, O(block_size), "16", 1, 256, NULL, "tokens per KV block" },
    { "num-gpu-blocks-override", BRIX_OPT_INT, O(num_gpu_blocks_override), "0", 0, 1 << 24, NULL,
      "KV blocks (0 = the profile's kv_cache_tokens / block-size)" },
    { "enable-prefix-caching", BRIX_OPT_BOOL, O(enable_prefix_caching), "true", 1, 0, NULL,
      "automatic prefix caching" },
    { "enable-chunked-prefill", BRIX_OPT_BOOL, O(enable_chunked_prefill), "true", 1, 0, NULL,
      "split long prefills across steps" },
    { "enable-lora", BRIX_OPT_BOOL, O(enable_lora), "false", 1, 0, NULL,
      "serve LoRA adapters (and the runtime load/unload endpoints)" },
    { "max-loras", BRIX_OPT_INT, O(max_loras), "1", 1, 1024, NULL,
      "adapters active in one batch (GPU slots)" },
    { "max-cpu-loras", BRIX_OPT_INT, O(max_cpu_loras), "0", 0, 65536, NULL,
      "adapters kept in host memory (0 = max-loras)" },
    { "max-lora-rank", BRIX_OPT_INT, O(max_lora_rank), "16", 1, 512, NULL,
      "largest adapter rank accepted (8,16,32,64,128,256,320,512)" },
    { "lora-modules", BRIX_OPT_STRLIST, O(lora_modules), NULL, 1, 0, "NAME=PATH [NAME=PATH ...]",
      "adapters to register at start" },
    { "lora-path-check", BRIX_OPT_BOOL, O(lora_path_check), "false", 1, 0, NULL,
      "require adapter paths to exist on disk, as a real engine does" },
    { "kv-events-config", BRIX_OPT_STRING, O(kv_events_config), NULL, 1, 0, "JSON",
      "vLLM KV-event publisher config, e.g. '{\"enable_kv_cache_events\":true,"
      "\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:5557\"}'" },
    { "kv-transfer-config", BRIX_OPT_STRING, O(kv_transfer_config), NULL, 1, 0, "JSON",
      "vLLM KV connector config for brix's KV store: '{\"kv_connector\":\"BrixConnector\","
      "\"kv_role\":\"kv_both\",\"kv_connector_extra_config\":{\"servers\":\"HOST:PORT\"}}' "
      "(kv_producer only saves, kv_consumer only loads; optional extra keys timeout_ms, "
      "block_bytes, transfer_gbps, max_inflight, no_shm, token_file)" },
    { "gpu", BRIX_OPT_STRING, O(gpu), "a100", 1, 0, "PROFILE",
      "hardware profile: step latency, KV capacity, price (h100, a100, l40s, cpu, ...)" },
    { "gpu-profiles", BRIX_OPT_STRING, O(gpu_profiles), NULL, 1, 0, "FILE",
      "profiles file to use instead of the built-in data/gpu_profiles.yaml" },
    { "time-scale", BRIX_OPT_DOUBLE, O(time_scale), "1.0", 0.0001, 1000, NULL,
      "wall seconds per simulated second (0.1 = ten times faster); metrics report simulated "
      "seconds" },
    { "seed", BRIX_OPT_INT, O(seed), "0", 0, 9.2e18, NULL,
      "seed of generated text and lengths (output depends only on seed and prompt)" },
    { "output-len-dist", BRIX_OPT_STRING, O(output_len_dist), "lognormal:415:0.38", 1, 0, "DIST",
      "when end-of-sequence is drawn: none | fixed:N | geometric:MEAN | uniform:MIN:MAX | "
      "lognormal:MEDIAN:SIGMA (default fits ShareGPT reply lengths)" },
    { "startup-delay", BRIX_OPT_STRING, O(startup_delay_arg), "0", 1, 0, "SECONDS|auto",
      "simulated model-load time before /health turns 200, in simulated seconds (so scaled by "
      "--time-scale like every other duration); auto = the GPU profile's engine_init_seconds + "
      "the weights (--model-weights-gib) / its load_gib_per_s: ~82 s for an 8B model, ~3.7 min "
      "for a 70B" },
    { "model-weights-gib", BRIX_OPT_DOUBLE, O(model_weights_gib), "0", 0, 1e6, "GIB",
      "weights loaded at start-up, for --startup-delay auto (0 = from the model name's size "
      "tag, 2 bytes per parameter, e.g. llama-3-70b = 130 GiB; without a tag 15 GiB, the 8B "
      "model the GPU profiles describe)" },
    { "failure-rate", BRIX_OPT_DOUBLE, O(failure_rate), "0", 0, 1, "F",
      "fraction of requests answered with 500 (deterministic in --seed)" },
    { "embedding-dim", BRIX_OPT_INT, O(embedding_dim), "4096", 1, 65536, NULL,
      "length of /v1/embeddings vectors" },
    { "show-hidden-metrics-for-version", BRIX_OPT_STRING, O(show_hidden_metrics_for_version), NULL,
      1, 0, "VERSION",
      "also expose metrics vLLM hid after VERSION (0.10: gpu_cache_usage_perc...)" },
    { "log-level", BRIX_OPT_STRING, O(log_level), "info", 1, 0, "LEVEL",
      "debug | info | warn | error" },
    BRIX_HTTP_LIMIT_OPTIONS(brix_engine_cfg_t, http, "16384"),
    { "shutdown-timeout", BRIX_OPT_DURATION, O(shutdown_timeout), "30s", 0, 3600000, NULL,
      "on SIGTERM, how long in-flight requests may finish" },
    BRIX_OPT_END,
};
#undef O

static const char usage_line[] = "brix engine-sim [options]";
static const char about[] =
    "A simulated vLLM engine: vLLM's OpenAI-compatible API, metrics and flags, with continuous\n"
    "batching, a paged KV cache with prefix caching, LoRA slots and a GPU latency model.";

/* ------------------------------------------------------- output lengths -- */

int brix_outlen_parse(const char *s, brix_outlen_t *out, char *err, size_t errlen)
{
    double a = 0, b = 0;
    char tail;
    memset(out, 0, sizeof *out);
    if (!strcmp(s, "none")) {
        out->kind = BRIX_OUTLEN_NONE;
        return 0;
    }
    if (sscanf(s, "fixed:%lf%c", &a, &tail) == 1 && a >= 1) {
        *out = (brix_outlen_t){ BRIX_OUTLEN_FIXED, floor(a), 0 };
        return 0;
    }
    if (sscanf(s, "geometric:%lf%c", &a, &tail) == 1 && a >= 1) {
        *out = (brix_outlen_t){ BRIX_OUTLEN_GEOMETRIC, a, 0 };
        return 0;
    }
    if (sscanf(s, "uniform:%lf:%lf%c", &a, &b, &tail) == 2 && a >= 1 && b >= a) {
        *out = (brix_outlen_t){ BRIX_OUTLEN_UNIFORM, floor(a), floor(b) };
        return 0;
    }
    if (sscanf(s, "lognormal:%lf:%lf%c", &a, &b, &tail) == 2 && a >= 1 && b >= 0) {
        *out = (brix_outlen_t){ BRIX_OUTLEN_LOGNORMAL, a, b };
        return 0;
    }
    snprintf(err, errlen,
             "output-len-dist: expected none | fixed:N | geometric:MEAN | uniform:MIN:MAX | "
             "lognormal:MEDIAN:SIGMA with values >= 1, got '%s'",
             s);
    return -1;
}

static double unit(uint64_t *rng)
{
    return ((double)(brix_sched_rng_next(rng) >> 11) + 0.5) / 9007199254740992.0;
}

size_t brix_outlen_draw(const brix_outlen_t *d, uint64_t *rng)
{
    double v;
    switch (d->kind) {
    case BRIX_OUTLEN_FIXED:
        return (size_t)d->a;
    case BRIX_OUTLEN_GEOMETRIC:
        /* tokens until the first EOS with per-token probability 1/mean */
        v = ceil(log(unit(rng)) / log(1.0 - 1.0 / (d->a + 1.0)));
        break;
    case BRIX_OUTLEN_UNIFORM:
        v = d->a + floor(unit(rng) * (d->b - d->a + 1));
        break;
    case BRIX_OUTLEN_LOGNORMAL: {
        double u1 = unit(rng), u2 = unit(rng);
        double z = sqrt(-2.0 * log(u1)) * cos(2 * M_PI * u2);
        v = round(d->a * exp(d->b * z));
        break;
    }
    default:
        return SIZE_MAX;
    }
    if (!(v >= 1))
        v = 1;
    if (v > 1e9)
        v = 1e9;
    return (size_t)v;
}

/* ------------------------------------------------------------ the loop -- */

double brix_engine_now(const brix_engine_t *e)
{
    return (double)(brix_now_ns() - e->epoch_ns) / 1e9 / e->cfg.time_scale;
}

static void start_step(brix_engine_t *e, double at);

static void on_step_timer(uv_timer_t *t)
{
    brix_engine_t *e = t->data;
    double end = e->step_end;
    e->in_commit = true;
    brix_sched_commit(&e->sched, end);
    e->in_commit = false;
    brix_engine_reap(e);
    if (e->events)
        brix_kv_events_flush(e->events);
    e->step_active = false;
    /* back to back on the simulated clock while there is work */
    start_step(e, end);
}

static void start_step(brix_engine_t *e, double at)
{
    if (e->step_active || !brix_sched_busy(&e->sched))
        return;
    if (at > e->sched.now)
        e->sched.now = at;
    double dur;
    if (!brix_sched_plan(&e->sched, &dur)) {
        /* Work exists but nothing fits (cannot happen with sane limits since
         * max_model_len <= KV capacity); retry on the next arrival or finish. */
        if (e->events)
            brix_kv_events_flush(e->events);
        return;
    }
    e->step_active = true;
    e->step_end = e->sched.now + dur;
    double deadline_ns = (double)e->epoch_ns + e->step_end * e->cfg.time_scale * 1e9;
    double now_ns = (double)brix_now_ns();
    uint64_t wait_ms = deadline_ns > now_ns ? (uint64_t)ceil((deadline_ns - now_ns) / 1e6) : 0;
    uv_timer_start(&e->step_timer, on_step_timer, wait_ms, 0);
}

void brix_engine_kick(brix_engine_t *e)
{
    if (!e->step_active)
        start_step(e, brix_engine_now(e));
}

/* ------------------------------------------------------------ shutdown -- */

static void close_connector(brix_engine_t *e)
{
    if (e->kvc) {
        e->sched.kv = NULL;
        brix_kvc_close(e->kvc);
        e->kvc = NULL;
    }
}

static void on_server_closed(void *arg)
{
    brix_engine_t *e = arg;
    e->http = NULL;
    uv_close((uv_handle_t *)&e->step_timer, NULL);
    uv_close((uv_handle_t *)&e->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&e->sigterm, NULL);
    uv_close((uv_handle_t *)&e->sigint, NULL);
    if (e->events) {
        brix_kv_events_close(e->events);
        e->events = NULL;
    }
    close_connector(e);
}

static void on_shutdown_check(uv_timer_t *t)
{
    brix_engine_t *e = t->data;
    brix_http_server_stats_t st;
    brix_http_server_stats(e->http, &st);
    uint64_t elapsed_ms = (brix_now_ns() - e->drain_start_ns) / 1000000u;
    bool forced = e->force_close || elapsed_ms >= e->cfg.shutdown_timeout;
    if (st.requests_active == 0 || forced) {
        if (st.requests_active)
            BRIX_WARN("shutdown: closing with %llu requests still in flight",
                      (unsigned long long)st.requests_active);
        uv_timer_stop(t);
        brix_http_server_close(e->http, on_server_closed, e);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    brix_engine_t *e = s->data;
    if (!e->http)
        return;
    if (e->draining) {
        BRIX_WARN("second signal: closing now");
        e->force_close = true;
        on_shutdown_check(&e->shutdown_timer);
        return;
    }
    e->draining = true;
    e->drain_start_ns = brix_now_ns();
    BRIX_INFO("received %s: draining (up to %llu ms)", signum == SIGTERM ? "SIGTERM" : "SIGINT",
              (unsigned long long)e->cfg.shutdown_timeout);
    brix_http_server_drain(e->http);
    /* Check every 20 ms whether in-flight requests are done or time is up. */
    uv_timer_start(&e->shutdown_timer, on_shutdown_check, 0, 20);
}

/* ------------------------------------------------------------- set-up -- */

/* The block pool reports cache changes; they become vLLM KV events. */
static void sink_stored(void *ud, const uint64_t *hashes, size_t n, bool has_parent,
                        uint64_t parent, const uint32_t *tokens, size_t ntokens, int64_t lora_id)
{
    brix_engine_t *e = ud;
    const brix_lora_t *l = lora_id >= 0 ? brix_lora_by_id(&e->loras, lora_id) : NULL;
    brix_kv_events_block_stored(e->events, hashes, n, has_parent, parent, tokens, ntokens,
                                (int)e->cfg.block_size, lora_id, l ? l->name : NULL);
}

static void sink_removed(void *ud, uint64_t hash)
{
    brix_engine_t *e = ud;
    brix_kv_events_block_removed(e->events, &hash, 1);
}

static void kvc_kick(void *ud)
{
    brix_engine_kick(ud);
}

static int check_lora_path(const brix_engine_t *e, const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (e->cfg.lora_path_check && stat(path, &st) != 0) {
        snprintf(err, errlen, "No adapter found for %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* --startup-delay SECONDS | auto. ready_at is on the simulated clock, so the
 * wall time until /health turns 200 is the delay times --time-scale. */
static int resolve_startup_delay(brix_engine_t *e, char *err, size_t errlen)
{
    brix_engine_cfg_t *c = &e->cfg;
    const char *arg = c->startup_delay_arg ? c->startup_delay_arg : "0";
    if (!strcmp(arg, "auto")) {
        double gib = c->model_weights_gib;
        const char *from = "--model-weights-gib";
        if (gib <= 0) {
            gib = brix_gpu_weights_gib_from_name(c->model);
            from = "the model name";
        }
        if (gib <= 0) {
            gib = 15.0; /* the ~8B model every built-in profile is calibrated for */
            from = "the profiles' 8B model";
        }
        c->startup_delay = brix_gpu_startup_seconds(e->profile, gib);
        BRIX_INFO("startup-delay auto: %.1f simulated s (%.1f GiB of weights from %s at %.2f "
                  "GiB/s + %.0f s engine init, profile %s), %.2f s of wall time",
                  c->startup_delay, gib, from, e->profile->load_gib_per_s,
                  e->profile->engine_init_seconds, e->profile->name,
                  c->startup_delay * c->time_scale);
    } else {
        char *end;
        errno = 0;
        double d = strtod(arg, &end);
        if (errno || end == arg || *end || !(d >= 0) || d > 86400) {
            snprintf(err, errlen,
                     "--startup-delay: expected seconds (0..86400) or 'auto', got '%s'", arg);
            return -1;
        }
        c->startup_delay = d;
    }
    e->ready_at = c->startup_delay;
    return 0;
}

static int setup(brix_engine_t *e, char *err, size_t errlen)
{
    brix_engine_cfg_t *c = &e->cfg;
    int rc = c->gpu_profiles
                 ? brix_gpu_profiles_load_file(c->gpu_profiles, &e->profiles, err, errlen)
                 : brix_gpu_profiles_builtin(&e->profiles, err, errlen);
    if (rc)
        return -1;
    if (!(e->profile = brix_gpu_profiles_find(&e->profiles, c->gpu))) {
        int n = snprintf(err, errlen, "--gpu: unknown profile '%s' (known:", c->gpu);
        for (size_t i = 0; i < e->profiles.n && n > 0 && (size_t)n < errlen; i++)
            n += snprintf(err + n, errlen - (size_t)n, " %s", e->profiles.v[i].name);
        if (n > 0 && (size_t)n < errlen)
            snprintf(err + n, errlen - (size_t)n, ")");
        return -1;
    }
    if (brix_outlen_parse(c->output_len_dist, &e->outlen, err, errlen))
        return -1;
    if (resolve_startup_delay(e, err, errlen))
        return -1;
    if (!c->max_num_seqs)
        c->max_num_seqs = e->profile->max_num_seqs;
    if (!c->max_num_batched_tokens)
        c->max_num_batched_tokens = e->profile->max_num_batched_tokens;
    if (!c->enable_chunked_prefill && c->max_num_batched_tokens < c->max_model_len)
        c->max_num_batched_tokens = c->max_model_len; /* as vLLM does without chunking */
    if (c->max_num_seqs > c->max_num_batched_tokens)
        c->max_num_seqs = c->max_num_batched_tokens;
    int64_t nblocks = c->num_gpu_blocks_override ? c->num_gpu_blocks_override
                                                 : e->profile->kv_cache_tokens / c->block_size;
    /* one block is vLLM's reserved null block */
    if ((nblocks - 1) * c->block_size < c->max_model_len) {
        snprintf(err, errlen,
                 "the KV cache holds %lld tokens (%lld usable blocks of %lld), fewer than "
                 "max-model-len %lld: one request at full length could never run; raise "
                 "--num-gpu-blocks-override or lower --max-model-len",
                 (long long)((nblocks - 1) * c->block_size), (long long)(nblocks - 1),
                 (long long)c->block_size, (long long)c->max_model_len);
        return -1;
    }
    if (c->max_cpu_loras && c->max_cpu_loras < c->max_loras) {
        snprintf(err, errlen, "--max-cpu-loras (%lld) must be >= --max-loras (%lld)",
                 (long long)c->max_cpu_loras, (long long)c->max_loras);
        return -1;
    }
    static const int ranks[] = { 8, 16, 32, 64, 128, 256, 320, 512 };
    bool rank_ok = false;
    for (size_t i = 0; i < sizeof ranks / sizeof *ranks; i++)
        rank_ok |= c->max_lora_rank == ranks[i];
    if (!rank_ok) {
        snprintf(err, errlen, "--max-lora-rank must be one of 8,16,32,64,128,256,320,512");
        return -1;
    }
    if (brix_kv_pool_init(&e->pool, (uint32_t)nblocks, (uint32_t)c->block_size,
                          c->enable_prefix_caching)) {
        snprintf(err, errlen, "out of memory for %lld KV blocks", (long long)nblocks);
        return -1;
    }
    brix_lora_reg_init(&e->loras, (uint32_t)c->max_loras,
                       (uint32_t)(c->max_cpu_loras ? c->max_cpu_loras : c->max_loras));
    if (c->lora_modules.n && !c->enable_lora) {
        snprintf(err, errlen, "--lora-modules needs --enable-lora");
        return -1;
    }
    for (size_t i = 0; i < c->lora_modules.n; i++) {
        const char *m = c->lora_modules.v[i];
        const char *eq = strchr(m, '=');
        if (!eq || eq == m || !eq[1]) {
            snprintf(err, errlen, "--lora-modules: expected NAME=PATH, got '%s'", m);
            return -1;
        }
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(eq - m), m);
        if (brix_lora_find(&e->loras, name)) {
            snprintf(err, errlen, "--lora-modules: '%s' given twice", name);
            return -1;
        }
        if (check_lora_path(e, eq + 1, err, errlen))
            return -1;
        brix_lora_t *l = brix_lora_add(&e->loras, name, eq + 1);
        if (!l) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        brix_lora_ensure_cpu(&e->loras, l, 0); /* loaded at start-up, as vLLM does */
    }
    brix_sched_cfg_t sc = {
        .max_num_seqs = (size_t)c->max_num_seqs,
        .max_num_batched_tokens = (size_t)c->max_num_batched_tokens,
        .max_model_len = (size_t)c->max_model_len,
        .chunked_prefill = c->enable_chunked_prefill,
        .profile = e->profile,
    };
    brix_sched_cb_t cb = { brix_engine_on_token, brix_engine_on_finish, brix_engine_on_step, e };
    if (brix_sched_init(&e->sched, &sc, &e->pool, &e->loras, &cb)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (c->kv_events_config) {
        brix_kv_events_cfg_t kc;
        if (brix_kv_events_cfg_parse(c->kv_events_config, &kc, err, errlen))
            return -1;
        if (kc.enabled) {
            if (!c->enable_prefix_caching) {
                brix_kv_events_cfg_free(&kc);
                snprintf(err, errlen, "KV cache events need prefix caching enabled");
                return -1;
            }
            e->events = brix_kv_events_new(e->loop, &kc, err, errlen);
            if (!e->events) {
                brix_kv_events_cfg_free(&kc);
                return -1;
            }
            e->pool.sink = (brix_kv_sink_t){ sink_stored, sink_removed, e };
        }
        brix_kv_events_cfg_free(&kc);
    }
    if (c->kv_transfer_config) {
        brix_kvc_cfg_t kc;
        if (brix_kvc_cfg_parse(c->kv_transfer_config, &kc, err, errlen))
            return -1;
        brix_kvc_env_t env = {
            .loop = e->loop,
            .model = e->served,
            .block_size = (uint32_t)c->block_size,
            .time_scale = c->time_scale,
            .sched = &e->sched,
            .kick = kvc_kick,
            .ud = e,
        };
        e->kvc = brix_kvc_new(&kc, &env, err, errlen);
        if (e->kvc) {
            static const char *const roles[] = { "kv_both", "kv_producer", "kv_consumer" };
            BRIX_INFO("KV connector: BrixConnector %s, servers %s, blocks of %llu bytes, "
                      "timeout %lld ms, %g Gbit/s simulated",
                      roles[kc.role], kc.servers, (unsigned long long)brix_kvc_block_bytes(e->kvc),
                      (long long)kc.timeout_ms, kc.transfer_gbps);
            e->sched.kv = brix_kvc_sched_hooks(e->kvc);
        }
        brix_kvc_cfg_free(&kc);
        if (!e->kvc)
            return -1;
    }
    if (brix_engine_metrics_init(e)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void teardown(brix_engine_t *e)
{
    brix_engine_metrics_free(e);
    brix_sched_free(&e->sched);
    brix_lora_reg_free(&e->loras);
    brix_kv_pool_free(&e->pool);
    brix_gpu_profiles_free(&e->profiles);
    brix_config_free(engine_opts, &e->cfg);
}

static int parse_config(brix_engine_t *e, int argc, char **argv)
{
    char err[512];
    brix_engine_cfg_t *c = &e->cfg;
    if (brix_config_defaults(engine_opts, c, err, sizeof err)) {
        fprintf(stderr, "brix engine-sim: bad default: %s\n", err);
        return 1;
    }
    int rc = brix_config_parse_args(engine_opts, c, argc, argv, 1, err, sizeof err);
    if (rc == 1) {
        brix_config_usage(stdout, engine_opts, usage_line, about);
        return -1;
    }
    if (rc == 0 && c->config) {
        /* file first, then the command line again so flags win */
        char *path = brix_strdup(c->config);
        rc = path ? brix_config_load_file(engine_opts, c, path, err, sizeof err) : -1;
        brix_free(path);
        if (rc == 0)
            rc = brix_config_parse_args(engine_opts, c, argc, argv, 1, err, sizeof err);
    }
    /* as vLLM: --api-key wins, else VLLM_API_KEY (how `brix controller` hands
     * its replicas the engine key without putting it in argv) */
    const char *ek = getenv("VLLM_API_KEY");
    if (rc == 0 && !c->api_key && ek && *ek && !(c->api_key = brix_strdup(ek))) {
        snprintf(err, sizeof err, "out of memory");
        rc = -1;
    }
    if (rc) {
        fprintf(stderr, "brix engine-sim: %s\n", err);
        return 2;
    }
    int lvl = brix_log_level_parse(c->log_level);
    if (lvl < 0) {
        fprintf(stderr, "brix engine-sim: --log-level: unknown level '%s'\n", c->log_level);
        return 2;
    }
    brix_log_init("engine-sim", (brix_log_level_t)lvl);
    return 0;
}

int brix_engine_sim_main(int argc, char **argv)
{
    static brix_engine_t engine; /* one per process; static keeps it off the stack */
    brix_engine_t *e = &engine;
    memset(e, 0, sizeof *e);
    int prc = parse_config(e, argc, argv);
    if (prc) {
        brix_config_free(engine_opts, &e->cfg);
        return prc < 0 ? 0 : prc;
    }
    char err[512];
    uv_loop_t loop;
    uv_loop_init(&loop);
    e->loop = &loop;
    e->served = e->cfg.served_model_name.n ? e->cfg.served_model_name.v[0] : e->cfg.model;
    e->epoch_ns = brix_now_ns();
    e->created = brix_wall_s();
    e->rng = (uint64_t)e->cfg.seed ^ 0x5eed5eed5eedull;
    if (setup(e, err, sizeof err)) {
        fprintf(stderr, "brix engine-sim: %s\n", err);
        if (e->events)
            brix_kv_events_close(e->events);
        close_connector(e);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        teardown(e);
        return 2;
    }
    uv_timer_init(&loop, &e->step_timer);
    e->step_timer.data = e;
    uv_timer_init(&loop, &e->shutdown_timer);
    e->shutdown_timer.data = e;

    (void)brix_workers_raise_nofile(); /* one descriptor per client connection */
    e->http = brix_http_server_new(&loop, &e->cfg.http, brix_engine_handle, e);
    int rc = e->http
                 ? brix_http_server_listen(e->http, e->cfg.host, (int)e->cfg.port, false, &e->port)
                 : UV_ENOMEM;
    if (rc) {
        BRIX_ERROR("cannot listen on %s:%lld: %s", e->cfg.host, (long long)e->cfg.port,
                   uv_strerror(rc));
        if (e->http)
            brix_http_server_close(e->http, NULL, NULL);
        uv_close((uv_handle_t *)&e->step_timer, NULL);
        uv_close((uv_handle_t *)&e->shutdown_timer, NULL);
        if (e->events)
            brix_kv_events_close(e->events);
        close_connector(e);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        teardown(e);
        return 1;
    }
    uv_signal_init(&loop, &e->sigterm);
    uv_signal_init(&loop, &e->sigint);
    e->sigterm.data = e->sigint.data = e;
    uv_signal_start(&e->sigterm, on_signal, SIGTERM);
    uv_signal_start(&e->sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);

    BRIX_INFO("serving model '%s' on http://%s:%d (gpu %s, %u KV blocks of %lld tokens, "
              "max-num-seqs %lld, max-num-batched-tokens %lld, time-scale %g%s)",
              e->served, e->cfg.host, e->port, e->profile->name, e->pool.nblocks,
              (long long)e->cfg.block_size, (long long)e->cfg.max_num_seqs,
              (long long)e->cfg.max_num_batched_tokens, e->cfg.time_scale,
              e->cfg.enable_lora ? ", LoRA on" : "");
    uv_run(&loop, UV_RUN_DEFAULT);
    BRIX_INFO("stopped");
    uv_loop_close(&loop);
    teardown(e);
    return 0;
}
