/*
 * Workloads for `brix bench`. Generated scenarios draw everything from one
 * seeded generator, so a (scenario, flags, seed) triple always gives the
 * same requests; prompt text is made of the core tokenizer's output pieces,
 * one token each, so token counts are exact and identical text (a shared
 * system prompt, a Mooncake block id) gives identical tokens and KV blocks.
 *
 *  shared-prefix  groups of users share a long system prompt; every user has
 *                 a multi-turn conversation whose context grows by the user
 *                 message and a reply each turn (chat completions);
 *  sharegpt       unique prompts, lognormal input/output lengths (defaults
 *                 fitted to the ShareGPT lengths in shared/traces; with
 *                 --trace that CSV is sampled directly);
 *  lora-mix       sharegpt-like prompts for --adapters LoRA adapters whose
 *                 popularity is Zipf(--zipf);
 *  trace          a JSONL file of {"timestamp": s, "model", "prompt" |
 *                 "prompt_tokens", "max_tokens"} (your own traffic);
 *  mooncake       the Mooncake FAST'25 JSONL (timestamp ms, input_length,
 *                 output_length, hash_ids of 512-token shared blocks);
 *  azure          the Azure LLM inference 2023 CSV (TIMESTAMP,
 *                 ContextTokens, GeneratedTokens), or a slice of it
 *                 (--trace-start, --trace-length);
 *  autoscale      the same Azure slice, replayed by autoscale.c against one
 *                 `brix up` cluster per scaling policy; with --envelope, a
 *                 ServeGen rate envelope with the Azure trace's lengths.
 * Arrivals of generated scenarios are Poisson at --rate, or bursty: Poisson
 * at --rate during --burst-on seconds, silent for --burst-off.
 */
#include "bench/bench.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unit(uint64_t *s)
{
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

static double lognormal(uint64_t *s, double median, double sigma)
{
    double z = sqrt(-2.0 * log(unit(s))) * cos(2 * M_PI * unit(s));
    return median * exp(sigma * z);
}

/* ntokens tokens of deterministic text for `seed`. */
static void text(brix_buf_t *b, int ntokens, uint64_t seed)
{
    uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
    for (int i = 0; i < ntokens; i++) {
        size_t len;
        /* skip the "\n\n" piece and punctuation right after punctuation so
         * the text stays one token per piece */
        const char *p = brix_tok_out_piece((uint32_t)(rng_next(&s) % BRIX_TOK_OUT_VOCAB), &len);
        if (!p || len < 2 || p[0] != ' ') {
            i--;
            continue;
        }
        brix_buf_append(b, p, len);
    }
}

static int add_req(bench_workload_t *w, size_t *cap, double t, const char *model, brix_buf_t *body,
                   int prompt_tokens, int max_tokens)
{
    bool chat =
        body->data && memmem(body->data, body->len < 64 ? body->len : 64, "\"messages\"", 10);
    if (w->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        bench_req_t *v = brix_realloc(w->v, nc * sizeof *v);
        if (!v)
            return -ENOMEM;
        w->v = v;
        *cap = nc;
    }
    bench_req_t *r = &w->v[w->n];
    memset(r, 0, sizeof *r);
    r->t = t;
    r->model = brix_strdup(model);
    r->body = brix_buf_detach(body, &r->body_len);
    r->prompt_tokens = prompt_tokens;
    r->max_tokens = max_tokens;
    r->chat = chat;
    if (!r->model || !r->body) {
        brix_free(r->model);
        brix_free(r->body);
        return -ENOMEM;
    }
    w->n++;
    return 0;
}

static void body_tail(brix_buf_t *b, int max_tokens)
{
    brix_buf_printf(b,
                    ",\"max_tokens\":%d,\"ignore_eos\":true,\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":true}}",
                    max_tokens);
}

/* A completions body whose prompt is `prompt` (already text). */
static void completion_body(brix_buf_t *b, const char *model, const brix_buf_t *prompt,
                            int max_tokens)
{
    brix_buf_append_str(b, "{\"model\":");
    brix_buf_append_json_str(b, model, strlen(model));
    brix_buf_append_str(b, ",\"prompt\":");
    brix_buf_append_json_str(b, prompt->data ? prompt->data : "", prompt->len);
    body_tail(b, max_tokens);
}

/* Next arrival time after t, or a negative number past the duration. */
static double next_arrival(const bench_cfg_t *c, uint64_t *rng, double t)
{
    double dt = -log(unit(rng)) / c->rate;
    t += dt;
    if (!strcmp(c->arrival, "bursty") && c->burst_on > 0) {
        double period = c->burst_on + c->burst_off;
        double in = fmod(t, period);
        if (in >= c->burst_on)
            t += period - in; /* skip the silent part */
    }
    return t <= c->duration ? t : -1;
}

static int clamp_len(double v, int lo, int hi)
{
    if (!(v >= lo))
        return lo;
    if (v > hi)
        return hi;
    return (int)v;
}

/* ----------------------------------------------------------- shared-prefix -- */

static int build_shared_prefix(const bench_cfg_t *c, bench_workload_t *w, uint64_t rng)
{
    size_t cap = 0;
    int64_t users = c->groups * c->users_per_group;
    int *turn = brix_calloc((size_t)users, sizeof *turn);
    if (!turn)
        return -ENOMEM;
    int64_t open_users = users;
    double t = 0;
    int rc = 0;
    while (rc == 0 && open_users > 0 && (t = next_arrival(c, &rng, t)) >= 0 &&
           (c->max_requests <= 0 || (int64_t)w->n < c->max_requests)) {
        /* a random user with turns left */
        int64_t u = (int64_t)(rng_next(&rng) % (uint64_t)users);
        while (turn[u] >= c->turns)
            u = (u + 1) % users;
        int k = turn[u]++;
        if (turn[u] == c->turns)
            open_users--;
        int64_t g = u % c->groups;
        brix_buf_t b = BRIX_BUF_INIT, s = BRIX_BUF_INIT;
        int tokens = 0;
        brix_buf_append_str(&b, "{\"model\":\"llama-3-8b\",\"messages\":[{\"role\":\"system\","
                                "\"content\":");
        text(&s, (int)c->system_tokens, 0x5157ull << 32 | (uint64_t)g);
        brix_buf_append_json_str(&b, s.data, s.len);
        tokens += (int)c->system_tokens;
        brix_buf_append_char(&b, '}');
        for (int j = 0; j <= k; j++) {
            brix_buf_reset(&s);
            text(&s, (int)c->user_tokens, (uint64_t)u << 20 | (uint64_t)j << 1);
            brix_buf_append_str(&b, ",{\"role\":\"user\",\"content\":");
            brix_buf_append_json_str(&b, s.data, s.len);
            brix_buf_append_char(&b, '}');
            tokens += (int)c->user_tokens;
            if (j < k) {
                brix_buf_reset(&s);
                text(&s, (int)c->reply_tokens, (uint64_t)u << 20 | (uint64_t)j << 1 | 1);
                brix_buf_append_str(&b, ",{\"role\":\"assistant\",\"content\":");
                brix_buf_append_json_str(&b, s.data, s.len);
                brix_buf_append_char(&b, '}');
                tokens += (int)c->reply_tokens;
            }
        }
        brix_buf_append_char(&b, ']');
        body_tail(&b, (int)c->reply_tokens);
        brix_buf_free(&s);
        rc = add_req(w, &cap, t, "llama-3-8b", &b, tokens, (int)c->reply_tokens);
        brix_buf_free(&b);
    }
    brix_free(turn);
    snprintf(w->about, sizeof w->about,
             "shared-prefix: %lld groups x %lld users, %lld-token system prompts, %lld turns of "
             "%lld-token messages and %lld-token replies, %s arrivals at %.3g req/s",
             (long long)c->groups, (long long)c->users_per_group, (long long)c->system_tokens,
             (long long)c->turns, (long long)c->user_tokens, (long long)c->reply_tokens, c->arrival,
             c->rate);
    return rc;
}

/* ---------------------------------------------------------- sharegpt, lora -- */

typedef struct lens {
    int *in, *out;
    size_t n;
} lens_t;

/* Reads num_prefill_tokens,num_decode_tokens pairs from the ShareGPT CSV. */
static int read_sharegpt(const char *path, lens_t *l, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[256];
    size_t cap = 0;
    while (fgets(line, sizeof line, f)) {
        int a, b;
        if (sscanf(line, "%d,%d", &a, &b) != 2)
            continue; /* the header */
        if (l->n == cap) {
            cap = cap ? cap * 2 : 4096;
            int *ni = brix_realloc(l->in, cap * sizeof *ni);
            if (ni)
                l->in = ni;
            int *no = brix_realloc(l->out, cap * sizeof *no);
            if (no)
                l->out = no;
            if (!ni || !no)
                break;
        }
        l->in[l->n] = a;
        l->out[l->n] = b;
        l->n++;
    }
    fclose(f);
    if (!l->n) {
        snprintf(err, errlen, "%s: no num_prefill_tokens,num_decode_tokens rows", path);
        return -1;
    }
    return 0;
}

static int build_unique(const bench_cfg_t *c, bench_workload_t *w, uint64_t rng, bool lora,
                        char *err, size_t errlen)
{
    lens_t l = { 0 };
    if (c->trace && !lora && read_sharegpt(c->trace, &l, err, errlen))
        return -1;
    /* Zipf popularity over adapters: cumulative weights 1/k^s */
    double *cdf = NULL;
    if (lora) {
        cdf = brix_calloc((size_t)c->adapters, sizeof *cdf);
        if (!cdf)
            return -ENOMEM;
        double sum = 0;
        for (int64_t k = 0; k < c->adapters; k++)
            cdf[k] = (sum += 1.0 / pow((double)(k + 1), c->zipf));
        for (int64_t k = 0; k < c->adapters; k++)
            cdf[k] /= sum;
        w->nadapters = (int)c->adapters;
    }
    size_t cap = 0;
    double t = 0;
    int rc = 0, limit = (int)(c->max_model_len - 16);
    while (rc == 0 && (t = next_arrival(c, &rng, t)) >= 0 &&
           (c->max_requests <= 0 || (int64_t)w->n < c->max_requests)) {
        int in, out;
        if (l.n) {
            size_t k = (size_t)(rng_next(&rng) % l.n);
            in = l.in[k];
            out = l.out[k];
        } else {
            in = (int)lognormal(&rng, c->in_median, c->in_sigma);
            out = (int)lognormal(&rng, c->out_median, c->out_sigma);
        }
        in = clamp_len(in, 4, (int)c->max_prompt);
        out = clamp_len(out, 1, (int)c->max_output);
        if (in + out > limit)
            in = limit - out > 4 ? limit - out : 4;
        char model[32] = "llama-3-8b";
        if (lora) {
            double u = unit(&rng);
            int64_t k = 0;
            while (k < c->adapters - 1 && cdf[k] < u)
                k++;
            snprintf(model, sizeof model, "lora-%lld", (long long)k);
        }
        brix_buf_t p = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
        text(&p, in - 1, rng_next(&rng)); /* + BOS */
        completion_body(&b, model, &p, out);
        brix_buf_free(&p);
        rc = add_req(w, &cap, t, model, &b, in, out);
        brix_buf_free(&b);
    }
    brix_free(l.in);
    brix_free(l.out);
    brix_free(cdf);
    if (lora)
        snprintf(w->about, sizeof w->about,
                 "lora-mix: %lld adapters with Zipf(%.2g) popularity, lognormal lengths (input "
                 "median %.0f, output median %.0f), %s arrivals at %.3g req/s",
                 (long long)c->adapters, c->zipf, c->in_median, c->out_median, c->arrival, c->rate);
    else if (c->trace)
        snprintf(w->about, sizeof w->about,
                 "sharegpt: lengths sampled from %s, %s arrivals at %.3g req/s", c->trace,
                 c->arrival, c->rate);
    else
        snprintf(w->about, sizeof w->about,
                 "sharegpt-like: lognormal input (median %.0f, sigma %.2f) and output (median "
                 "%.0f, sigma %.2f), %s arrivals at %.3g req/s",
                 c->in_median, c->in_sigma, c->out_median, c->out_sigma, c->arrival, c->rate);
    return rc;
}

/* ------------------------------------------------------------------ traces -- */

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    brix_buf_t b = BRIX_BUF_INIT;
    char chunk[65536];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (brix_buf_append(&b, chunk, r)) {
            fclose(f);
            brix_buf_free(&b);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
    fclose(f);
    if (!b.data && brix_buf_append(&b, "", 0) == 0 && !b.data) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return brix_buf_detach(&b, len);
}

/* JSONL traces: brix's own format and Mooncake's. */
static int build_jsonl(const bench_cfg_t *c, bench_workload_t *w, bool mooncake, char *err,
                       size_t errlen)
{
    size_t len;
    char *data = read_file(c->trace, &len, err, errlen);
    if (!data)
        return -1;
    size_t cap = 0;
    int rc = 0, lineno = 0, limit = (int)(c->max_model_len - 16);
    double t_first = -1;
    for (char *line = data; rc == 0 && line < data + len;) {
        char *nl = memchr(line, '\n', (size_t)(data + len - line));
        size_t ll = nl ? (size_t)(nl - line) : (size_t)(data + len - line);
        lineno++;
        if (c->max_requests > 0 && (int64_t)w->n >= c->max_requests)
            break;
        cJSON *j = ll ? cJSON_ParseWithLength(line, ll) : NULL;
        line = nl ? nl + 1 : data + len;
        if (!ll)
            continue;
        if (!cJSON_IsObject(j)) {
            snprintf(err, errlen, "%s:%d: not a JSON object", c->trace, lineno);
            cJSON_Delete(j);
            rc = -1;
            break;
        }
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "timestamp");
        if (!cJSON_IsNumber(ts)) {
            snprintf(err, errlen, "%s:%d: 'timestamp' (a number) is required", c->trace, lineno);
            cJSON_Delete(j);
            rc = -1;
            break;
        }
        double t = ts->valuedouble / (mooncake ? 1000.0 : 1.0);
        if (t_first < 0)
            t_first = t;
        t = (t - t_first) / c->speed;
        brix_buf_t p = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
        int in = 0, out = 0;
        const char *model = "llama-3-8b";
        if (mooncake) {
            const cJSON *il = cJSON_GetObjectItemCaseSensitive(j, "input_length");
            const cJSON *ol = cJSON_GetObjectItemCaseSensitive(j, "output_length");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "hash_ids");
            if (!cJSON_IsNumber(il) || !cJSON_IsNumber(ol) || !cJSON_IsArray(ids)) {
                snprintf(err, errlen,
                         "%s:%d: expected input_length, output_length and hash_ids (Mooncake)",
                         c->trace, lineno);
                cJSON_Delete(j);
                rc = -1;
                break;
            }
            out = clamp_len(ol->valuedouble, 1, (int)c->max_output);
            int want = clamp_len(il->valuedouble, 1, limit - out - 1);
            /* each id is a 512-token block of text seeded by the id, so equal
             * leading ids are an equal prefix; the last block is partial */
            const cJSON *id;
            int left = want - 1; /* + BOS */
            cJSON_ArrayForEach(id, ids)
            {
                if (left <= 0)
                    break;
                int n = left < 512 ? left : 512;
                text(&p, n, 0x6d6f6f6eull << 32 ^ (uint64_t)id->valuedouble);
                left -= n;
            }
            in = want - left;
        } else {
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
            const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
            const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "prompt_tokens");
            const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "max_tokens");
            if (cJSON_IsString(m))
                model = m->valuestring;
            out = cJSON_IsNumber(mt) ? clamp_len(mt->valuedouble, 1, (int)c->max_output)
                                     : (int)c->out_median;
            if (cJSON_IsString(pr)) {
                brix_buf_append_str(&p, pr->valuestring);
                in = (int)brix_tok_count(p.data, p.len) + 1;
            } else if (cJSON_IsNumber(pt)) {
                in = clamp_len(pt->valuedouble, 2, limit - out);
                text(&p, in - 1, (uint64_t)lineno * 7919);
            } else {
                snprintf(err, errlen, "%s:%d: 'prompt' or 'prompt_tokens' is required", c->trace,
                         lineno);
                cJSON_Delete(j);
                rc = -1;
                break;
            }
        }
        completion_body(&b, model, &p, out);
        rc = add_req(w, &cap, t, model, &b, in, out);
        brix_buf_free(&p);
        brix_buf_free(&b);
        cJSON_Delete(j);
    }
    brix_free(data);
    if (rc == 0 && !w->n) {
        snprintf(err, errlen, "%s: no requests", c->trace);
        rc = -1;
    }
    snprintf(w->about, sizeof w->about, "%s trace %s, %zu requests, arrivals sped up %gx",
             mooncake ? "Mooncake" : "JSONL", c->trace, w->n, c->speed);
    return rc;
}

/* Azure LLM inference trace 2023: TIMESTAMP,ContextTokens,GeneratedTokens */
static int build_azure(const bench_cfg_t *c, bench_workload_t *w, uint64_t rng, char *err,
                       size_t errlen)
{
    FILE *f = fopen(c->trace, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", c->trace, strerror(errno));
        return -1;
    }
    char line[256];
    size_t cap = 0;
    double t0 = -1;
    int rc = 0, limit = (int)(c->max_model_len - 16);
    while (rc == 0 && fgets(line, sizeof line, f)) {
        if (c->max_requests > 0 && (int64_t)w->n >= c->max_requests)
            break;
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        double frac = 0;
        int ctx, gen;
        char *p = strptime(line, "%Y-%m-%d %H:%M:%S", &tm);
        if (!p || sscanf(p, "%lf,%d,%d", &frac, &ctx, &gen) != 3)
            continue; /* header */
        double t = (double)timegm(&tm) + (frac < 1 ? frac : 0);
        if (t0 < 0)
            t0 = t;
        /* the slice [start, start + length) of the trace's own time line;
         * arrivals keep their offsets from the slice start (quiet included) */
        t = t - t0 - c->trace_start;
        if (t < 0)
            continue;
        if (c->trace_length > 0 && t >= c->trace_length)
            break;
        t /= c->speed;
        int out = clamp_len(gen, 1, (int)c->max_output);
        int in = clamp_len(ctx, 2, limit - out);
        brix_buf_t pr = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
        text(&pr, in - 1, rng_next(&rng));
        completion_body(&b, "llama-3-8b", &pr, out);
        rc = add_req(w, &cap, t, "llama-3-8b", &b, in, out);
        brix_buf_free(&pr);
        brix_buf_free(&b);
    }
    fclose(f);
    if (rc == 0 && !w->n) {
        snprintf(err, errlen, "%s: no TIMESTAMP,ContextTokens,GeneratedTokens rows", c->trace);
        rc = -1;
    }
    if (c->trace_start > 0 || c->trace_length > 0)
        snprintf(w->about, sizeof w->about,
                 "Azure LLM trace %s, seconds %g to %g after its first arrival, %zu requests, "
                 "arrivals sped up %gx",
                 c->trace, c->trace_start,
                 c->trace_length > 0 ? c->trace_start + c->trace_length : INFINITY, w->n, c->speed);
    else
        snprintf(w->about, sizeof w->about,
                 "Azure LLM trace %s, %zu requests, arrivals sped up %gx", c->trace, w->n,
                 c->speed);
    return rc;
}

/* A rate envelope (ServeGen's aggregate-rate CSV: window_start_s,
 * active_clients,total_rate_rps,...; 600-s windows) turned into arrivals:
 * the windows from --envelope-start for --trace-length x --envelope-speed
 * envelope seconds, each compressed --envelope-speed times, the rates scaled
 * so their mean is --envelope-rate requests per simulated second, Poisson
 * arrivals within a window (the aggregate of many clients; ServeGen's
 * per-client laws are burstier). Each request's (input, output) lengths are a
 * row of the Azure trace (--trace) drawn at random, so the per-request work
 * is the code trace's. A zero-rate window (a collection gap, says the
 * traces' README) keeps the previous rate. */
static int build_envelope(const bench_cfg_t *c, bench_workload_t *w, uint64_t rng, char *err,
                          size_t errlen)
{
    lens_t l = { 0 };
    FILE *f = fopen(c->trace, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", c->trace, strerror(errno));
        return -1;
    }
    char line[512];
    size_t cap = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strchr(line, ',');
        int a, b;
        if (!p || sscanf(p + 1, "%d,%d", &a, &b) != 2)
            continue; /* the header */
        if (l.n == cap) {
            cap = cap ? cap * 2 : 4096;
            int *ni = brix_realloc(l.in, cap * sizeof *ni);
            if (ni)
                l.in = ni;
            int *no = brix_realloc(l.out, cap * sizeof *no);
            if (no)
                l.out = no;
            if (!ni || !no)
                break;
        }
        l.in[l.n] = a;
        l.out[l.n] = b;
        l.n++;
    }
    fclose(f);
    double *ws = NULL, *rate = NULL;
    size_t nw = 0, wcap = 0;
    int rc = -1;
    if (!l.n) {
        snprintf(err, errlen, "%s: no TIMESTAMP,ContextTokens,GeneratedTokens rows", c->trace);
        goto out;
    }
    if (!(f = fopen(c->envelope, "r"))) {
        snprintf(err, errlen, "%s: %s", c->envelope, strerror(errno));
        goto out;
    }
    double end = c->envelope_start + c->trace_length * c->envelope_speed, last = 0;
    while (fgets(line, sizeof line, f)) {
        double t, r;
        int clients;
        if (sscanf(line, "%lf,%d,%lf", &t, &clients, &r) != 3)
            continue; /* the header */
        if (r <= 0)
            r = last;
        last = r;
        if (t < c->envelope_start || (c->trace_length > 0 && t >= end))
            continue;
        if (nw == wcap) {
            wcap = wcap ? wcap * 2 : 256;
            double *a = brix_realloc(ws, wcap * sizeof *a);
            if (a)
                ws = a;
            double *b = brix_realloc(rate, wcap * sizeof *b);
            if (b)
                rate = b;
            if (!a || !b)
                break;
        }
        ws[nw] = t;
        rate[nw++] = r;
    }
    fclose(f);
    if (nw < 1) {
        snprintf(err, errlen, "%s: no window_start_s,active_clients,total_rate_rps rows from %g s",
                 c->envelope, c->envelope_start);
        goto out;
    }
    double mean = 0, peak = 0;
    for (size_t i = 0; i < nw; i++) {
        mean += rate[i] / (double)nw;
        peak = rate[i] > peak ? rate[i] : peak;
    }
    double k = c->envelope_rate / mean;
    double win = (nw > 1 ? ws[1] - ws[0] : 600) / c->envelope_speed; /* simulated s */
    int limit = (int)(c->max_model_len - 16);
    size_t rcap = 0;
    rc = 0;
    for (size_t i = 0; rc == 0 && i < nw; i++) {
        double t0 = (ws[i] - c->envelope_start) / c->envelope_speed, t = t0;
        double r = rate[i] * k;
        while (rc == 0 && r > 0 && (t += -log(unit(&rng)) / r) < t0 + win) {
            if (c->max_requests > 0 && (int64_t)w->n >= c->max_requests)
                break;
            size_t j = (size_t)(rng_next(&rng) % l.n);
            int out = clamp_len(l.out[j], 1, (int)c->max_output);
            int in = clamp_len(l.in[j], 2, limit - out);
            brix_buf_t pr = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
            text(&pr, in - 1, rng_next(&rng));
            completion_body(&b, "llama-3-8b", &pr, out);
            rc = add_req(w, &rcap, t, "llama-3-8b", &b, in, out);
            brix_buf_free(&pr);
            brix_buf_free(&b);
        }
    }
    snprintf(w->about, sizeof w->about,
             "ServeGen rate envelope %s (Xiang et al., \"ServeGen\", arXiv 2505.09999; "
             "Apache-2.0), envelope seconds %g to %g compressed %gx (600-s windows of %.1f "
             "simulated s), rates scaled to a mean of %g req/s (peak/mean %.2f), Poisson within "
             "windows, lengths drawn from %s; %zu requests",
             c->envelope, c->envelope_start,
             c->envelope_start + (double)nw * win * c->envelope_speed, c->envelope_speed, win,
             c->envelope_rate, peak / mean, c->trace, w->n);
out:
    brix_free(l.in);
    brix_free(l.out);
    brix_free(ws);
    brix_free(rate);
    return rc;
}

int bench_workload_build(const bench_cfg_t *c, bench_workload_t *w, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    uint64_t rng = (uint64_t)c->seed * 0x9e3779b97f4a7c15ull + 12345;
    const char *s = c->scenario;
    bool needs_trace = !strcmp(s, "trace") || !strcmp(s, "mooncake") || !strcmp(s, "azure") ||
                       !strcmp(s, "autoscale");
    if (needs_trace && !c->trace) {
        snprintf(err, errlen, "--scenario %s needs --trace FILE", s);
        return -1;
    }
    int rc;
    if (!strcmp(s, "shared-prefix"))
        rc = build_shared_prefix(c, w, rng);
    else if (!strcmp(s, "sharegpt"))
        rc = build_unique(c, w, rng, false, err, errlen);
    else if (!strcmp(s, "lora-mix"))
        rc = build_unique(c, w, rng, true, err, errlen);
    else if (!strcmp(s, "trace"))
        rc = build_jsonl(c, w, false, err, errlen);
    else if (!strcmp(s, "mooncake"))
        rc = build_jsonl(c, w, true, err, errlen);
    else if (!strcmp(s, "autoscale") && c->envelope)
        rc = build_envelope(c, w, rng, err, errlen);
    else if (!strcmp(s, "azure") || !strcmp(s, "autoscale"))
        rc = build_azure(c, w, rng, err, errlen);
    else {
        snprintf(err, errlen,
                 "unknown scenario '%s' (shared-prefix, sharegpt, lora-mix, trace, mooncake, "
                 "azure, autoscale)",
                 s);
        return -1;
    }
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    if (rc == 0 && !w->n) {
        snprintf(err, errlen, "the workload has no requests (raise --rate or --duration)");
        rc = -1;
    }
    if (rc)
        bench_workload_free(w);
    return rc ? -1 : 0;
}

void bench_workload_free(bench_workload_t *w)
{
    for (size_t i = 0; i < w->n; i++) {
        brix_free(w->v[i].model);
        brix_free(w->v[i].body);
    }
    brix_free(w->v);
    w->v = NULL;
    w->n = 0;
}
