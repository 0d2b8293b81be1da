/*
 * gpu_profile — hardware profiles: step-latency model, KV capacity, price.
 *
 * The profiles live in one documented data file, data/gpu_profiles.yaml,
 * compiled into the binary (brix_gpu_profiles_builtin) and replaceable with a
 * user file of the same shape. engine-sim uses them to time its steps; the
 * optimizer and autoscaler use the prices. The latency formulas are documented
 * in the data file and implemented by brix_gpu_step_seconds.
 */
#ifndef BRIX_CORE_GPU_PROFILE_H
#define BRIX_CORE_GPU_PROFILE_H

#include <stddef.h>
#include <stdint.h>

typedef struct brix_gpu_profile {
    char *name;
    char *description;
    double memory_gib;
    double price_per_hour;
    double prefill_per_token, prefill_base, prefill_min;
    double decode_per_ctx_token, decode_base, decode_per_seq;
    int64_t kv_cache_tokens;
    double lora_load_seconds, lora_swap_seconds;
    int64_t max_num_seqs, max_num_batched_tokens;
    /* Start-up model (engine-sim --startup-delay auto); optional in the file,
     * defaults BRIX_GPU_DEFAULT_LOAD_GIB_PER_S / _ENGINE_INIT_S. */
    double load_gib_per_s;      /* effective weight-loading bandwidth, GiB/s */
    double engine_init_seconds; /* everything but the weights: imports, compile, graphs */
} brix_gpu_profile_t;

/* Defaults of the optional start-up fields: measured vLLM start-up of
 * Llama-3.1-8B (15 GiB) with warm caches, see data/gpu_profiles.yaml. */
#define BRIX_GPU_DEFAULT_LOAD_GIB_PER_S 0.83
#define BRIX_GPU_DEFAULT_ENGINE_INIT_S  64.0

typedef struct brix_gpu_profiles {
    size_t n;
    brix_gpu_profile_t *v;
} brix_gpu_profiles_t;

/* Parses a profiles YAML document; errors are "name:line:col: ...". Every
 * field is required, so a typo cannot silently become zero. */
int brix_gpu_profiles_parse(const char *name, const char *yaml, size_t len,
                            brix_gpu_profiles_t *out, char *err, size_t errlen);
/* The built-in data/gpu_profiles.yaml. */
int brix_gpu_profiles_builtin(brix_gpu_profiles_t *out, char *err, size_t errlen);
int brix_gpu_profiles_load_file(const char *path, brix_gpu_profiles_t *out, char *err,
                                size_t errlen);
const brix_gpu_profile_t *brix_gpu_profiles_find(const brix_gpu_profiles_t *ps, const char *name);
void brix_gpu_profiles_free(brix_gpu_profiles_t *ps);

/* Latency of one prefill-only part of a step. 0 when tokens == 0. */
double brix_gpu_prefill_seconds(const brix_gpu_profile_t *p, uint64_t prefill_tokens);
/* Latency of the decode part of a step. 0 when seqs == 0. */
double brix_gpu_decode_seconds(const brix_gpu_profile_t *p, uint64_t ctx_tokens, uint64_t seqs);
/* One engine step: prefill part + decode part (mixed steps sum). */
double brix_gpu_step_seconds(const brix_gpu_profile_t *p, uint64_t prefill_tokens,
                             uint64_t decode_ctx_tokens, uint64_t decode_seqs);

/* Simulated start-up of an engine serving weights_gib of weights on p:
 * engine_init_seconds + weights_gib / load_gib_per_s. */
double brix_gpu_startup_seconds(const brix_gpu_profile_t *p, double weights_gib);
/* GiB of bf16 weights implied by a model name's size tag ("llama-3-70b",
 * "Meta-Llama-3.1-8B-Instruct", "qwen2.5-0.5b": the last <number>b/B not
 * inside a word); 0 when the name has none. */
double brix_gpu_weights_gib_from_name(const char *model);

#endif
