/*
 * Unit tests for core/gpu_profile's start-up model (engine-sim
 * --startup-delay auto): the model-size tag read from a model name, the
 * optional start-up fields with their defaults, and the formula.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/gpu_profile.h"

#define GIB_OF_B(b) ((b)*1e9 * 2 / (1024.0 * 1024 * 1024))

static void size_from_name(void **st)
{
    (void)st;
    assert_float_equal(brix_gpu_weights_gib_from_name("llama-3-8b"), GIB_OF_B(8), 1e-9);
    /* the version number "3.1" is not the size */
    assert_float_equal(brix_gpu_weights_gib_from_name("meta-llama/Meta-Llama-3.1-70B-Instruct"),
                       GIB_OF_B(70), 1e-9);
    assert_float_equal(brix_gpu_weights_gib_from_name("Qwen2.5-0.5B"), GIB_OF_B(0.5), 1e-9);
    /* a "b" inside a word is no size; no tag at all gives 0 */
    assert_float_equal(brix_gpu_weights_gib_from_name("gpt2-8bit"), 0, 1e-9);
    assert_float_equal(brix_gpu_weights_gib_from_name("my-model"), 0, 1e-9);
    assert_float_equal(brix_gpu_weights_gib_from_name(""), 0, 1e-9);
}

static const char base[] =
    "    memory_gib: 80\n    price_per_hour: 1\n    prefill_per_token: 1e-5\n"
    "    prefill_base: 0.001\n    prefill_min: 0.001\n"
    "    decode_per_ctx_token: 1e-7\n    decode_base: 0.001\n"
    "    decode_per_seq: 1e-5\n    kv_cache_tokens: 65536\n"
    "    lora_load_seconds: 0.01\n    lora_swap_seconds: 0.001\n"
    "    max_num_seqs: 64\n    max_num_batched_tokens: 2048\n";

static void optional_fields(void **st)
{
    (void)st;
    char yaml[2048], err[256];
    brix_gpu_profiles_t ps;
    snprintf(yaml, sizeof yaml,
             "profiles:\n  old:\n%s  new:\n%s    load_gib_per_s: 2\n    engine_init_seconds: 10\n",
             base, base);
    assert_int_equal(brix_gpu_profiles_parse("t.yaml", yaml, strlen(yaml), &ps, err, sizeof err),
                     0);
    const brix_gpu_profile_t *o = brix_gpu_profiles_find(&ps, "old");
    const brix_gpu_profile_t *n = brix_gpu_profiles_find(&ps, "new");
    assert_non_null(o);
    assert_non_null(n);
    assert_float_equal(o->load_gib_per_s, BRIX_GPU_DEFAULT_LOAD_GIB_PER_S, 1e-12);
    assert_float_equal(o->engine_init_seconds, BRIX_GPU_DEFAULT_ENGINE_INIT_S, 1e-12);
    assert_float_equal(brix_gpu_startup_seconds(n, 40), 10 + 40 / 2.0, 1e-9);
    assert_float_equal(brix_gpu_startup_seconds(o, 0), BRIX_GPU_DEFAULT_ENGINE_INIT_S, 1e-9);
    brix_gpu_profiles_free(&ps);
    /* a zero bandwidth would divide by zero: refused with the position */
    snprintf(yaml, sizeof yaml, "profiles:\n  z:\n%s    load_gib_per_s: 0\n", base);
    assert_int_equal(brix_gpu_profiles_parse("t.yaml", yaml, strlen(yaml), &ps, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "load_gib_per_s"));
    /* a misspelt optional field is still an unknown field */
    snprintf(yaml, sizeof yaml, "profiles:\n  z:\n%s    load_gib_per_sec: 2\n", base);
    assert_int_equal(brix_gpu_profiles_parse("t.yaml", yaml, strlen(yaml), &ps, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "unknown profile field"));
}

/* The built-in profiles: an 8B starts in tens of seconds, a 70B in minutes. */
static void builtin_numbers(void **st)
{
    (void)st;
    char err[256];
    brix_gpu_profiles_t ps;
    assert_int_equal(brix_gpu_profiles_builtin(&ps, err, sizeof err), 0);
    for (size_t i = 0; i < ps.n; i++) {
        double s8 = brix_gpu_startup_seconds(&ps.v[i], GIB_OF_B(8));
        double s70 = brix_gpu_startup_seconds(&ps.v[i], GIB_OF_B(70));
        assert_true(s8 >= 30 && s8 <= 120);
        assert_true(s70 >= 120 && s70 <= 600);
    }
    brix_gpu_profiles_free(&ps);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(size_from_name),
        cmocka_unit_test(optional_fields),
        cmocka_unit_test(builtin_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
