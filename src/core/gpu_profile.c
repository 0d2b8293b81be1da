/*
 * Profiles loader: a YAML map `profiles: {name: {field: number...}}` read
 * through core/yaml with a field table, so every field is checked for
 * presence, type and sign with file:line:col errors.
 */
#include "core/gpu_profile.h"

#include "core/alloc.h"
#include "core/yaml.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char brix_gpu_profiles_yaml[];
extern const size_t brix_gpu_profiles_yaml_len;

typedef struct field {
    const char *name;
    size_t off;
    int is_int;    /* int64_t, else double */
    double optdef; /* < 0: required; else the default when absent */
} field_t;

#define D(f)                                                                                       \
    {                                                                                              \
#f, offsetof(brix_gpu_profile_t, f), 0, -1                                                 \
    }
#define OPT(f, def)                                                                                \
    {                                                                                              \
#f, offsetof(brix_gpu_profile_t, f), 0, def                                                \
    }
#define I(f)                                                                                       \
    {                                                                                              \
#f, offsetof(brix_gpu_profile_t, f), 1, -1                                                 \
    }
static const field_t fields[] = {
    D(memory_gib),
    D(price_per_hour),
    D(prefill_per_token),
    D(prefill_base),
    D(prefill_min),
    D(decode_per_ctx_token),
    D(decode_base),
    D(decode_per_seq),
    I(kv_cache_tokens),
    D(lora_load_seconds),
    D(lora_swap_seconds),
    I(max_num_seqs),
    I(max_num_batched_tokens),
    /* optional, so profile files written before the start-up model still load
     * (a typo is still refused: unknown fields are errors) */
    OPT(load_gib_per_s, BRIX_GPU_DEFAULT_LOAD_GIB_PER_S),
    OPT(engine_init_seconds, BRIX_GPU_DEFAULT_ENGINE_INIT_S),
};
#undef D
#undef OPT
#undef I

void brix_gpu_profiles_free(brix_gpu_profiles_t *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        brix_free(ps->v[i].name);
        brix_free(ps->v[i].description);
    }
    brix_free(ps->v);
    ps->v = NULL;
    ps->n = 0;
}

static int parse_profile(const char *file, const brix_yaml_node_t *k, const brix_yaml_node_t *v,
                         brix_gpu_profile_t *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    if (v->type != BRIX_YAML_MAP) {
        snprintf(err, errlen, "%s:%d:%d: profile '%s' must be a mapping", file, v->line, v->col,
                 k->scalar);
        return -1;
    }
    if (!(p->name = brix_strdup(k->scalar)))
        return -1;
    for (size_t i = 0; i < v->n; i++) {
        const brix_yaml_node_t *fk = v->items[2 * i], *fv = v->items[2 * i + 1];
        if (fk->type != BRIX_YAML_SCALAR || fv->type != BRIX_YAML_SCALAR) {
            snprintf(err, errlen, "%s:%d:%d: expected 'field: value'", file, fk->line, fk->col);
            return -1;
        }
        if (!strcmp(fk->scalar, "description")) {
            brix_free(p->description);
            if (!(p->description = brix_strdup(fv->scalar)))
                return -1;
            continue;
        }
        size_t f;
        for (f = 0; f < sizeof fields / sizeof *fields; f++)
            if (!strcmp(fields[f].name, fk->scalar))
                break;
        if (f == sizeof fields / sizeof *fields) {
            snprintf(err, errlen, "%s:%d:%d: unknown profile field '%s'", file, fk->line, fk->col,
                     fk->scalar);
            return -1;
        }
        char *end;
        errno = 0;
        double d = strtod(fv->scalar, &end);
        if (errno || end == fv->scalar || *end || !isfinite(d) || d < 0) {
            snprintf(err, errlen, "%s:%d:%d: %s must be a non-negative number, got '%s'", file,
                     fv->line, fv->col, fk->scalar, fv->scalar);
            return -1;
        }
        char *dst = (char *)p + fields[f].off;
        if (fields[f].is_int) {
            if (floor(d) != d) {
                snprintf(err, errlen, "%s:%d:%d: %s must be an integer", file, fv->line, fv->col,
                         fk->scalar);
                return -1;
            }
            *(int64_t *)dst = (int64_t)d;
        } else {
            *(double *)dst = d;
        }
    }
    /* Every numeric field is required but the optional ones: check by
     * re-walking the keys. */
    for (size_t f = 0; f < sizeof fields / sizeof *fields; f++) {
        if (!brix_yaml_get(v, fields[f].name) && fields[f].optdef >= 0) {
            *(double *)((char *)p + fields[f].off) = fields[f].optdef;
        } else if (!brix_yaml_get(v, fields[f].name)) {
            snprintf(err, errlen, "%s:%d:%d: profile '%s' lacks '%s'", file, v->line, v->col,
                     p->name, fields[f].name);
            return -1;
        }
    }
    if (p->load_gib_per_s <= 0) {
        snprintf(err, errlen, "%s:%d:%d: profile '%s': load_gib_per_s must be positive", file,
                 v->line, v->col, p->name);
        return -1;
    }
    if (p->kv_cache_tokens < 1 || p->max_num_seqs < 1 || p->max_num_batched_tokens < 1) {
        snprintf(err, errlen,
                 "%s:%d:%d: profile '%s': kv_cache_tokens, max_num_seqs and "
                 "max_num_batched_tokens must be positive",
                 file, v->line, v->col, p->name);
        return -1;
    }
    return 0;
}

int brix_gpu_profiles_parse(const char *name, const char *yaml, size_t len,
                            brix_gpu_profiles_t *out, char *err, size_t errlen)
{
    brix_yaml_node_t *root;
    memset(out, 0, sizeof *out);
    if (brix_yaml_parse(name, yaml, len, &root, err, errlen))
        return -1;
    int rc = -1;
    const brix_yaml_node_t *ps = brix_yaml_get(root, "profiles");
    if (!ps || ps->type != BRIX_YAML_MAP || !ps->n) {
        snprintf(err, errlen, "%s:%d:%d: expected a non-empty 'profiles:' mapping", name,
                 ps ? ps->line : root->line, ps ? ps->col : root->col);
        goto out;
    }
    if (!(out->v = brix_calloc(ps->n, sizeof *out->v))) {
        snprintf(err, errlen, "%s: out of memory", name);
        goto out;
    }
    for (size_t i = 0; i < ps->n; i++) {
        const brix_yaml_node_t *k = ps->items[2 * i];
        if (k->type != BRIX_YAML_SCALAR) {
            snprintf(err, errlen, "%s:%d:%d: profile names must be strings", name, k->line, k->col);
            goto out;
        }
        out->n = i + 1;
        if (parse_profile(name, k, ps->items[2 * i + 1], &out->v[i], err, errlen))
            goto out;
    }
    rc = 0;
out:
    if (rc)
        brix_gpu_profiles_free(out);
    brix_yaml_free(root);
    return rc;
}

int brix_gpu_profiles_builtin(brix_gpu_profiles_t *out, char *err, size_t errlen)
{
    return brix_gpu_profiles_parse("data/gpu_profiles.yaml", brix_gpu_profiles_yaml,
                                   brix_gpu_profiles_yaml_len, out, err, errlen);
}

int brix_gpu_profiles_load_file(const char *path, brix_gpu_profiles_t *out, char *err,
                                size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    int big = !feof(f);
    fclose(f);
    if (big) {
        snprintf(err, errlen, "%s: larger than 64 KiB", path);
        return -1;
    }
    return brix_gpu_profiles_parse(path, buf, n, out, err, errlen);
}

const brix_gpu_profile_t *brix_gpu_profiles_find(const brix_gpu_profiles_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->n; i++)
        if (!strcmp(ps->v[i].name, name))
            return &ps->v[i];
    return NULL;
}

double brix_gpu_prefill_seconds(const brix_gpu_profile_t *p, uint64_t prefill_tokens)
{
    if (!prefill_tokens)
        return 0;
    double t = p->prefill_per_token * (double)prefill_tokens + p->prefill_base;
    return t > p->prefill_min ? t : p->prefill_min;
}

double brix_gpu_decode_seconds(const brix_gpu_profile_t *p, uint64_t ctx_tokens, uint64_t seqs)
{
    if (!seqs)
        return 0;
    return p->decode_per_ctx_token * (double)ctx_tokens + p->decode_base +
           p->decode_per_seq * (double)seqs;
}

double brix_gpu_step_seconds(const brix_gpu_profile_t *p, uint64_t prefill_tokens,
                             uint64_t decode_ctx_tokens, uint64_t decode_seqs)
{
    return brix_gpu_prefill_seconds(p, prefill_tokens) +
           brix_gpu_decode_seconds(p, decode_ctx_tokens, decode_seqs);
}

double brix_gpu_startup_seconds(const brix_gpu_profile_t *p, double weights_gib)
{
    double bw = p->load_gib_per_s > 0 ? p->load_gib_per_s : BRIX_GPU_DEFAULT_LOAD_GIB_PER_S;
    return p->engine_init_seconds + (weights_gib > 0 ? weights_gib : 0) / bw;
}

double brix_gpu_weights_gib_from_name(const char *model)
{
    /* the last "<digits>[.<digits>]b" whose number does not continue a word
     * ("3.1-8b" gives 8, not 1) and whose 'b' ends the token */
    double params = 0;
    for (const char *s = model; s && *s; s++) {
        if (!isdigit((unsigned char)*s) ||
            (s > model && (isalnum((unsigned char)s[-1]) || s[-1] == '.')))
            continue;
        char *end;
        double v = strtod(s, &end);
        if (end > s && (*end == 'b' || *end == 'B') && !isalnum((unsigned char)end[1]) && v > 0)
            params = v;
    }
    /* bf16: two bytes per parameter */
    return params * 1e9 * 2 / (1024.0 * 1024 * 1024);
}
