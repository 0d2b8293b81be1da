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
} brix_gpu_profile_t;

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

#endif
