/*
 * Generation in vLLM v0.11's shapes. Output text comes from the scheduler
 * one token at a time; stop strings are matched as it grows and, when
 * streaming, the tail that could still become a stop string is held back,
 * as vLLM does, so a stop string never reaches the client. The token that
 * ends a sequence travels in the chunk that carries finish_reason.
 */
#include "engine_sim/api_generate.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/tokenizer.h"
#include "engine_sim/api_embed.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#define MAX_N 128 /* choices per request */

static const char *finish_str(brix_finish_t f)
{
    switch (f) {
    case BRIX_FINISH_STOP:
        return "stop";
    case BRIX_FINISH_LENGTH:
        return "length";
    case BRIX_FINISH_ABORT:
        return "abort";
    default:
        return NULL;
    }
}

/* Sequences' output-token streams depend only on (seed, prompt, request
 * seed, choice index), so a repeated request gets the same text. */
static uint64_t seq_seed(const brix_engine_t *e, const uint32_t *toks, size_t n, int64_t req_seed,
                         uint32_t index)
{
    uint64_t h = XXH64(toks, n * sizeof *toks, (uint64_t)e->cfg.seed);
    return h ^ ((uint64_t)req_seed * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)index << 48);
}

/* ------------------------------------------------------------ streaming -- */

static void chunk_head(brix_api_req_t *r, brix_buf_t *b)
{
    brix_buf_reset(b);
    brix_buf_append_str(b, "{\"id\":");
    brix_buf_append_json_str(b, r->id, strlen(r->id));
    brix_buf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                    r->kind == BRIX_API_CHAT ? "chat.completion.chunk" : "text_completion",
                    (long long)r->created);
    brix_buf_append_json_str(b, r->model, strlen(r->model));
}

static size_t total_generated(const brix_api_req_t *r)
{
    size_t g = 0;
    for (size_t i = 0; i < r->n; i++)
        g += r->seqs[i].seq.generated;
    return g;
}

/* Sends one chunk for sequence s with `text` (may be empty) and finish. */
static int send_chunk(brix_api_req_t *r, brix_api_seq_t *s, const char *text, size_t len,
                      const char *finish, bool role)
{
    /* continuous_usage_stats: the choice's own count, 0 on the role chunk */
    size_t generated = role ? 0 : s->seq.generated;
    brix_buf_t *b = &r->out;
    chunk_head(r, b);
    if (r->kind == BRIX_API_CHAT) {
        brix_buf_printf(b, ",\"choices\":[{\"index\":%u,\"delta\":{", s->index);
        if (role)
            brix_buf_append_str(b, "\"role\":\"assistant\",");
        brix_buf_append_str(b, "\"content\":");
        brix_buf_append_json_str(b, text, len);
        brix_buf_append_str(b, "},\"logprobs\":null,\"finish_reason\":");
        if (finish) {
            brix_buf_printf(b, "\"%s\",\"stop_reason\":", finish);
            if (s->stop_idx >= 0)
                brix_buf_append_json_str(b, r->stops[s->stop_idx], strlen(r->stops[s->stop_idx]));
            else
                brix_buf_append_str(b, "null");
        } else {
            brix_buf_append_str(b, "null");
        }
        brix_buf_append_str(b, role ? "}]" : ",\"token_ids\":null}]");
        if (role)
            brix_buf_append_str(b, ",\"prompt_token_ids\":null");
    } else {
        brix_buf_printf(b, ",\"choices\":[{\"index\":%u,\"text\":", s->index);
        brix_buf_append_json_str(b, text, len);
        brix_buf_append_str(b, ",\"logprobs\":null,\"finish_reason\":");
        if (finish)
            brix_buf_printf(b, "\"%s\"", finish);
        else
            brix_buf_append_str(b, "null");
        brix_buf_append_str(b, ",\"stop_reason\":");
        if (finish && s->stop_idx >= 0)
            brix_buf_append_json_str(b, r->stops[s->stop_idx], strlen(r->stops[s->stop_idx]));
        else
            brix_buf_append_str(b, "null");
        brix_buf_append_str(b, ",\"prompt_token_ids\":null,\"token_ids\":null}]");
    }
    if (r->continuous_usage) {
        brix_buf_printf(b,
                        ",\"usage\":{\"prompt_tokens\":%zu,\"total_tokens\":%zu,"
                        "\"completion_tokens\":%zu}",
                        r->prompt_tokens, r->prompt_tokens + generated, generated);
    } else if (r->kind == BRIX_API_COMPLETION) {
        brix_buf_append_str(b, ",\"usage\":null");
    }
    brix_buf_append_char(b, '}');
    r->chunks_sent++;
    return brix_http_sse_data(r->http, b->data, b->len);
}

/* How many trailing bytes of text could still be the start of a stop string:
 * those are held back while streaming, as vLLM does. */
static size_t stop_holdback(const brix_api_req_t *r, const brix_buf_t *t)
{
    size_t hold = 0;
    for (size_t i = 0; i < r->nstops; i++) {
        size_t sl = strlen(r->stops[i]);
        for (size_t k = sl - 1; k > hold && k > 0; k--) {
            if (k <= t->len && !memcmp(t->data + t->len - k, r->stops[i], k)) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}

/* ----------------------------------------------------- engine callbacks -- */

bool brix_engine_on_token(brix_seq_t *q, uint32_t token, void *ud)
{
    brix_engine_t *e = ud;
    brix_api_seq_t *s = q->ud;
    brix_api_req_t *r = s->r;
    double now = e->sched.now;
    if (q->generated == 1)
        brix_metric_observe(e->m.h_ttft, now - q->t_arrival);
    else {
        double itl = now - q->t_last_token;
        brix_metric_observe(e->m.h_itl, itl);
        brix_metric_observe(e->m.h_tpot, itl);
    }
    bool stop = false;
    size_t plen = 0;
    const char *piece = "";
    int vi = token != BRIX_TOK_EOS ? brix_tok_out_index(token) : -1;
    if (vi >= 0) /* output ids come from the output vocabulary */
        piece = brix_tok_out_piece((uint32_t)vi, &plen);
    size_t before = s->text.len;
    brix_buf_append(&s->text, piece, plen);
    /* Stop strings: search only where a new match can start. */
    for (size_t i = 0; i < r->nstops && !stop; i++) {
        size_t sl = strlen(r->stops[i]);
        size_t from = before >= sl ? before - sl + 1 : 0;
        char *hit = memmem(s->text.data + from, s->text.len - from, r->stops[i], sl);
        if (hit) {
            s->text.len = (size_t)(hit - s->text.data);
            s->text.data[s->text.len] = '\0';
            s->stop_idx = (int)i;
            stop = true;
        }
    }
    if (r->stream && r->http) {
        bool first = q->generated == 1;
        if (first && r->kind == BRIX_API_CHAT && send_chunk(r, s, "", 0, NULL, true))
            return stop;
        /* The token that ends the sequence travels in the final chunk with
         * finish_reason (vLLM's framing); the scheduler finishes it right
         * after this callback for these reasons. */
        bool last = stop || token == BRIX_TOK_EOS || q->generated >= q->max_tokens ||
                    q->ntokens >= (size_t)e->cfg.max_model_len;
        size_t safe = last ? s->sent : s->text.len - stop_holdback(r, &s->text);
        if (!r->http)
            return stop;
        if (safe > s->sent) {
            if (send_chunk(r, s, s->text.data + s->sent, safe - s->sent, NULL, false))
                return stop;
            s->sent = safe;
        }
        if (r->abort_after >= 0 && r->http && (int64_t)r->chunks_sent >= r->abort_after) {
            BRIX_INFO("fault injection: resetting the connection after %zu chunks", r->chunks_sent);
            brix_http_abort(r->http); /* on_abort frees r */
        }
    }
    return stop;
}

static void observe_finished(brix_engine_t *e, const brix_api_req_t *r, const brix_seq_t *q)
{
    brix_engine_metrics_t *m = &e->m;
    if (q->finish == BRIX_FINISH_STOP)
        brix_metric_add(m->success_stop, 1);
    else if (q->finish == BRIX_FINISH_LENGTH)
        brix_metric_add(m->success_length, 1);
    else
        brix_metric_add(m->success_abort, 1);
    /* a request ended before it was ever scheduled waited all its life
     * (its first-scheduled time is unset: 0, which gave negative times) */
    double sched = q->t_first_sched > 0 ? q->t_first_sched : q->t_finish;
    double first = q->t_first_token > 0 ? q->t_first_token : q->t_finish;
    double last = q->t_last_token > 0 ? q->t_last_token : first;
    brix_metric_observe(m->h_e2e, q->t_finish - q->t_arrival);
    brix_metric_observe(m->h_queue, sched - q->t_arrival);
    brix_metric_observe(m->h_prefill, first - sched);
    brix_metric_observe(m->h_decode, last - first);
    brix_metric_observe(m->h_inference, last - sched);
    brix_metric_observe(m->h_prompt_tokens, (double)q->prompt_len);
    brix_metric_observe(m->h_generation_tokens, (double)q->generated);
    brix_metric_observe(m->h_max_gen_tokens, (double)q->generated);
    if (r->kind != BRIX_API_EMBEDDING) {
        brix_metric_observe(m->h_params_max_tokens, (double)r->max_tokens);
        brix_metric_observe(m->h_req_tpot,
                            q->generated > 1 ? (last - first) / (double)(q->generated - 1) : 0);
    }
}

static void write_final(brix_api_req_t *r);

void brix_engine_on_finish(brix_seq_t *q, void *ud)
{
    brix_engine_t *e = ud;
    brix_api_seq_t *s = q->ud;
    brix_api_req_t *r = s->r;
    observe_finished(e, r, q);
    r->pending--;
    if (r->http && r->stream && r->kind != BRIX_API_EMBEDDING) {
        const char *fin = finish_str(q->finish);
        if (send_chunk(r, s, s->text.data ? s->text.data + s->sent : "", s->text.len - s->sent, fin,
                       false) == 0)
            s->sent = s->text.len;
    }
    if (r->pending == 0 && r->http) {
        write_final(r); /* a failed write releases r through on_abort */
        if (!r->dead)
            brix_api_req_release(r);
    }
}

/* ----------------------------------------------------- final response -- */

static void write_final(brix_api_req_t *r)
{
    brix_http_req_t *h = r->http;
    if (r->kind == BRIX_API_EMBEDDING) {
        brix_api_embed_write(r);
        return;
    }
    size_t gen = total_generated(r);
    size_t cached = r->seqs[0].seq.cached_tokens;
    if (r->stream) {
        brix_buf_t *b = &r->out;
        if (r->include_usage) {
            chunk_head(r, b);
            brix_buf_append_str(b, ",\"choices\":[],\"usage\":");
            brix_buf_printf(b,
                            "{\"prompt_tokens\":%zu,\"total_tokens\":%zu,\"completion_tokens\":%zu",
                            r->prompt_tokens, r->prompt_tokens + gen, gen);
            if (r->prompt_details)
                brix_buf_printf(b, ",\"prompt_tokens_details\":{\"cached_tokens\":%zu}", cached);
            brix_buf_append_str(b, "}}");
            if (brix_http_sse_data(h, b->data, b->len))
                return;
        }
        if (brix_http_sse_data(h, "[DONE]", 6))
            return;
        brix_api_access_log(h, 200);
        brix_http_stream_end(h);
        return;
    }
    brix_buf_t *b = &r->out;
    brix_buf_reset(b);
    brix_buf_append_str(b, "{\"id\":");
    brix_buf_append_json_str(b, r->id, strlen(r->id));
    brix_buf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                    r->kind == BRIX_API_CHAT ? "chat.completion" : "text_completion",
                    (long long)r->created);
    brix_buf_append_json_str(b, r->model, strlen(r->model));
    brix_buf_append_str(b, ",\"choices\":[");
    for (size_t i = 0; i < r->n; i++) {
        brix_api_seq_t *s = &r->seqs[i];
        const char *txt = s->text.data ? s->text.data : "";
        brix_buf_printf(b, "%s{\"index\":%u,", i ? "," : "", s->index);
        if (r->kind == BRIX_API_CHAT) {
            brix_buf_append_str(b, "\"message\":{\"role\":\"assistant\",\"content\":");
            brix_buf_append_json_str(b, txt, s->text.len);
            brix_buf_append_str(b, ",\"refusal\":null,\"annotations\":null,\"audio\":null,"
                                   "\"function_call\":null,\"tool_calls\":[],"
                                   "\"reasoning_content\":null},\"logprobs\":null,");
        } else {
            brix_buf_append_str(b, "\"text\":");
            brix_buf_append_json_str(b, txt, s->text.len);
            brix_buf_append_str(b, ",\"logprobs\":null,");
        }
        brix_buf_printf(b, "\"finish_reason\":\"%s\",\"stop_reason\":",
                        finish_str(s->seq.finish) ? finish_str(s->seq.finish) : "stop");
        if (s->stop_idx >= 0)
            brix_buf_append_json_str(b, r->stops[s->stop_idx], strlen(r->stops[s->stop_idx]));
        else
            brix_buf_append_str(b, "null");
        brix_buf_append_str(b, r->kind == BRIX_API_CHAT
                                   ? ",\"token_ids\":null}"
                                   : ",\"token_ids\":null,\"prompt_logprobs\":null,"
                                     "\"prompt_token_ids\":null}");
    }
    brix_buf_append_str(b, "],\"service_tier\":null,\"system_fingerprint\":null,\"usage\":");
    brix_api_append_usage(b, r->prompt_tokens, gen, r->prompt_details, cached);
    if (r->kind == BRIX_API_CHAT)
        brix_buf_append_str(b, ",\"prompt_logprobs\":null,\"prompt_token_ids\":null");
    brix_buf_append_str(b, ",\"kv_transfer_params\":null}");
    brix_api_respond_buf(h, 200, b);
}

/* --------------------------------------------------------- fault hooks -- */

typedef struct fault {
    int status;          /* answer at once with this status */
    int64_t abort_after; /* reset the connection after N chunks */
    bool hang;           /* never answer */
} fault_t;

static int parse_fault(brix_http_req_t *h, fault_t *f)
{
    f->status = 0;
    f->abort_after = -1;
    f->hang = false;
    const char *v = brix_http_req_header(h, "x-brix-fault");
    if (!v)
        return 0;
    int x;
    long long y;
    if (sscanf(v, "status=%d", &x) == 1 && x >= 400 && x <= 599)
        f->status = x;
    else if (sscanf(v, "abort-after=%lld", &y) == 1 && y >= 0)
        f->abort_after = y;
    else if (!strcmp(v, "hang"))
        f->hang = true;
    else {
        brix_api_respond_err(
            h, 400, "BadRequestError",
            "x-brix-fault: expected status=CODE (400-599), abort-after=N or hang, got '%s'", v);
        return -1;
    }
    return 0;
}

static void on_hang_abort(brix_http_req_t *h, void *ud)
{
    brix_engine_t *e = ud;
    e->requests_inflight--;
}

/* ------------------------------------------------------- generation API -- */

static int parse_stops(brix_api_req_t *r, brix_http_req_t *h, const cJSON *body)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (!st || cJSON_IsNull(st))
        return 0;
    if (cJSON_IsString(st)) {
        if (!*st->valuestring)
            return 0;
        r->stops[r->nstops++] = brix_strdup(st->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(st)) {
        brix_api_respond_err(h, 400, "BadRequestError",
                             "'stop' must be a string or an array of strings");
        return -1;
    }
    const cJSON *s;
    cJSON_ArrayForEach(s, st)
    {
        if (!cJSON_IsString(s)) {
            brix_api_respond_err(h, 400, "BadRequestError",
                                 "'stop' must be a string or an array of strings");
            return -1;
        }
        if (!*s->valuestring)
            continue;
        if (r->nstops == BRIX_API_MAX_STOPS) {
            brix_api_respond_err(h, 400, "BadRequestError", "at most %d stop strings are supported",
                                 BRIX_API_MAX_STOPS);
            return -1;
        }
        r->stops[r->nstops++] = brix_strdup(s->valuestring);
    }
    return 0;
}

void brix_api_generate_handle(brix_engine_t *e, brix_http_req_t *h, brix_api_kind_t kind)
{
    brix_json_err_t je;
    cJSON *body = brix_api_parse_body(h);
    if (!body)
        return;
    brix_api_req_t *r = NULL;
    uint32_t *ids = NULL;
    size_t nids = 0, cap = 0;
    const char *model;
    brix_lora_t *lora;
    fault_t fault;
    if (brix_api_resolve_model(e, h, body, &model, &lora) || parse_fault(h, &fault))
        goto out;

    /* sampling and output parameters */
    bool stream = false, ignore_eos = false, has_mt = false, has_mct = false, has_n = false;
    bool has_seed = false, present;
    int64_t max_tokens = 0, mct = 0, n = 1, min_tokens = 0, seed = 0;
    double tmp;
    if (brix_json_get_bool(body, "stream", NULL, &stream, &je) ||
        brix_json_get_bool(body, "ignore_eos", NULL, &ignore_eos, &je) ||
        brix_json_get_int(body, "max_tokens", 1, INT32_MAX, &has_mt, &max_tokens, &je) ||
        brix_json_get_int(body, "max_completion_tokens", 1, INT32_MAX, &has_mct, &mct, &je) ||
        brix_json_get_int(body, "n", 1, MAX_N, &has_n, &n, &je) ||
        brix_json_get_int(body, "min_tokens", 0, INT32_MAX, NULL, &min_tokens, &je) ||
        brix_json_get_int(body, "seed", INT64_MIN / 2, INT64_MAX / 2, &has_seed, &seed, &je) ||
        brix_json_get_number(body, "temperature", 0, 2, NULL, &tmp, &je) ||
        brix_json_get_number(body, "top_p", 1e-9, 1, NULL, &tmp, &je) ||
        brix_json_get_number(body, "presence_penalty", -2, 2, NULL, &tmp, &je) ||
        brix_json_get_number(body, "frequency_penalty", -2, 2, NULL, &tmp, &je)) {
        brix_api_respond_json_err(h, &je);
        goto out;
    }
    if (kind == BRIX_API_CHAT && has_mct) {
        max_tokens = mct;
        has_mt = true;
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    bool include_usage = false, continuous = false;
    if (so && !cJSON_IsNull(so)) {
        if (!stream) {
            brix_api_respond_err(h, 400, "BadRequestError",
                                 "Stream options can only be defined when `stream=True`.");
            goto out;
        }
        if (!cJSON_IsObject(so)) {
            brix_api_respond_err(h, 400, "BadRequestError", "'stream_options' must be an object");
            goto out;
        }
        include_usage = true; /* vLLM's StreamOptions.include_usage defaults to true */
        if (brix_json_get_bool(so, "include_usage", &present, &include_usage, &je) ||
            brix_json_get_bool(so, "continuous_usage_stats", NULL, &continuous, &je)) {
            brix_api_respond_json_err(h, &je);
            goto out;
        }
        continuous = continuous && include_usage;
    }

    /* prompt */
    if (kind == BRIX_API_CHAT) {
        brix_buf_t text = BRIX_BUF_INIT;
        bool gen_prompt = true; /* vLLM's ChatCompletionRequest.add_generation_prompt */
        if (brix_json_get_bool(body, "add_generation_prompt", NULL, &gen_prompt, &je)) {
            brix_api_respond_json_err(h, &je);
            goto out;
        }
        int rc = brix_api_render_chat(h, body, &text, gen_prompt);
        if (rc == 0 && brix_tokenize(text.data, text.len, &ids, &nids, &cap)) {
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
            rc = -1;
        }
        brix_buf_free(&text);
        if (rc)
            goto out;
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
        if (!p) {
            brix_api_respond_err(h, 400, "BadRequestError", "'prompt' is required");
            goto out;
        }
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) >= 1 &&
            (cJSON_IsString(p->child) || cJSON_IsArray(p->child))) {
            if (cJSON_GetArraySize(p) > 1) {
                brix_api_respond_err(
                    h, 400, "BadRequestError",
                    "engine-sim takes one prompt per request; send a list of prompts as "
                    "separate requests");
                goto out;
            }
            p = p->child;
        }
        if (brix_api_input_tokens(h, p, "'prompt'", true, &ids, &nids, &cap))
            goto out;
        if (cJSON_GetObjectItemCaseSensitive(body, "suffix") &&
            !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(body, "suffix"))) {
            brix_api_respond_err(h, 400, "BadRequestError", "suffix is not currently supported");
            goto out;
        }
    }
    size_t L = (size_t)e->cfg.max_model_len;
    if (nids >= L) {
        brix_api_respond_err(
            h, 400, "BadRequestError",
            "This model's maximum context length is %zu tokens. However, your request "
            "has %zu input tokens. Please reduce the length of the input messages.",
            L, nids);
        goto out;
    }
    if (!has_mt)
        max_tokens = kind == BRIX_API_CHAT ? (int64_t)(L - nids) : 16; /* vLLM's defaults */
    if ((size_t)max_tokens > L - nids) {
        if (kind == BRIX_API_CHAT || has_mt) {
            brix_api_respond_err(
                h, 400, "BadRequestError",
                "'max_tokens' or 'max_completion_tokens' is too large: %lld. This model's "
                "maximum context length is %zu tokens and your request has %zu input "
                "tokens (%lld > %zu - %zu).",
                (long long)max_tokens, L, nids, (long long)max_tokens, L, nids);
            goto out;
        }
        max_tokens = (int64_t)(L - nids);
    }

    if (min_tokens > max_tokens) {
        brix_api_respond_err(h, 400, "BadRequestError",
                             "min_tokens must be less than or equal to max_tokens=%lld, got %lld.",
                             (long long)max_tokens, (long long)min_tokens);
        goto out;
    }

    /* faults and readiness, after validation like a real server */
    if (!brix_api_ready(e)) {
        brix_api_respond_err(h, 503, "ServiceUnavailableError", "the model is still loading");
        goto out;
    }
    if (fault.status) {
        brix_api_respond_err(h, fault.status, NULL, "fault injected by x-brix-fault: status %d",
                             fault.status);
        goto out;
    }
    if (e->cfg.failure_rate > 0 &&
        (double)(brix_sched_rng_next(&e->rng) >> 11) / 9007199254740992.0 < e->cfg.failure_rate) {
        brix_api_respond_err(h, 500, "InternalServerError",
                             "simulated engine failure (--failure-rate)");
        goto out;
    }
    if (fault.hang) {
        e->requests_inflight++;
        h->ud = e;
        h->on_abort = on_hang_abort;
        goto out;
    }

    if (!(r = brix_api_req_new(e, h, kind, (size_t)n, model, lora)))
        goto out;
    r->stream = stream;
    r->include_usage = include_usage;
    r->continuous_usage = continuous;
    r->abort_after = fault.abort_after;
    r->max_tokens = max_tokens;
    r->prompt_tokens = nids;
    snprintf(r->id, sizeof r->id, "%s%s", kind == BRIX_API_CHAT ? "chatcmpl-" : "cmpl-", h->id);
    if (parse_stops(r, h, body)) {
        brix_api_req_free(r);
        r = NULL;
        goto out;
    }
    h->ud = r;
    h->on_abort = brix_api_req_on_abort;
    r->n = (size_t)n;
    r->pending = r->n;
    brix_metric_observe(e->m.h_params_n, (double)n);
    for (size_t i = 0; i < r->n; i++) {
        brix_api_seq_t *s = &r->seqs[i];
        s->r = r;
        s->index = (uint32_t)i;
        s->stop_idx = -1;
        if (brix_seq_init(&s->seq, ids, nids, (size_t)max_tokens)) {
            r->n = i;
            r->pending = 0;
            /* detach first: a write that fails at once runs on_abort, which
             * would free r before the free below */
            h->on_abort = NULL;
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
            brix_api_req_free(r);
            r = NULL;
            goto out;
        }
        s->seq.ud = s;
        s->seq.lora = lora;
        s->seq.rng = seq_seed(e, ids, nids, has_seed ? seed : 0, (uint32_t)i);
        if (!ignore_eos) {
            uint64_t lr = s->seq.rng ^ 0x1e57ull;
            size_t eos = brix_outlen_draw(&e->outlen, &lr);
            if (eos != SIZE_MAX && eos <= (size_t)min_tokens)
                eos = (size_t)min_tokens + 1;
            s->seq.eos_at = eos;
        }
    }
    if (stream && brix_http_sse_start(h, 200))
        goto out; /* the connection died: on_abort already released r */
    double now = brix_engine_now(e);
    for (size_t i = 0; i < r->n; i++) {
        if (brix_sched_add(&e->sched, &r->seqs[i].seq, now) == 0)
            r->seqs[i].added = true;
    }
    brix_engine_kick(e);
out:
    brix_free(ids);
    cJSON_Delete(body);
}
