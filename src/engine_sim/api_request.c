/*
 * Request plumbing shared by the API modules (api_request.h says who owns
 * what). Errors carry vLLM's statuses and messages, since clients and the
 * gateway's tests match on them; parsing refuses what vLLM refuses, and a
 * repeated key too, because vLLM and this engine would read different
 * copies of it.
 */
#include "engine_sim/api_request.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/time.h"
#include "core/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------ helpers -- */

int brix_api_respond_err(brix_http_req_t *h, int status, const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    BRIX_DEBUG("%s %s -> %d: %s", h->method_name, h->path, status, msg);
    return brix_http_respond_error(h, status, type, NULL, NULL, "%s", msg);
}

int brix_api_respond_json_err(brix_http_req_t *h, const brix_json_err_t *je)
{
    return brix_http_respond_error(h, 400, "BadRequestError", NULL, je->param[0] ? je->param : NULL,
                                   "%s", je->msg);
}

void brix_api_access_log(brix_http_req_t *h, int status)
{
    /* GETs are mostly control-plane polling (/v1/models): debug level */
    double ms = (double)(brix_now_ns() - h->start_ns) / 1e6;
    brix_log(h->method == HTTP_GET ? BRIX_LOG_DEBUG : BRIX_LOG_INFO, h->id, "\"%s %s\" %d %.1fms",
             h->method_name, h->path, status, ms);
}

void brix_api_respond_plain(brix_http_req_t *h, int status, const char *body)
{
    brix_api_access_log(h, status);
    brix_http_respond(h, status, "text/plain; charset=utf-8", body, strlen(body));
}

void brix_api_respond_buf(brix_http_req_t *h, int status, brix_buf_t *b)
{
    brix_api_access_log(h, status);
    brix_http_respond(h, status, "application/json", b->data, b->len);
}

bool brix_api_ready(brix_engine_t *e)
{
    return brix_engine_now(e) >= e->ready_at;
}

bool brix_api_is_served_name(const brix_engine_t *e, const char *name)
{
    if (!e->cfg.served_model_name.n)
        return !strcmp(name, e->cfg.model);
    for (size_t i = 0; i < e->cfg.served_model_name.n; i++)
        if (!strcmp(name, e->cfg.served_model_name.v[i]))
            return true;
    return false;
}

int brix_api_resolve_model(brix_engine_t *e, brix_http_req_t *h, const cJSON *body,
                           const char **name, brix_lora_t **lora)
{
    brix_json_err_t je;
    bool present = false;
    *name = e->served;
    *lora = NULL;
    if (brix_json_get_string(body, "model", &present, name, &je)) {
        brix_api_respond_json_err(h, &je);
        return -1;
    }
    if (!present || brix_api_is_served_name(e, *name)) {
        if (!present)
            *name = e->served;
        return 0;
    }
    if (e->cfg.enable_lora && (*lora = brix_lora_find(&e->loras, *name)))
        return 0;
    brix_api_respond_err(h, 404, "NotFoundError", "The model `%s` does not exist.", *name);
    return -1;
}

/* vLLM's validate_json_request: the media type (before any ';'), without
 * case, must be exactly application/json; a missing header fails too. */
static bool json_content_type_ok(brix_http_req_t *h)
{
    const char *ct = brix_http_req_header(h, "content-type");
    if (!ct)
        return false;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return n == 16 && !strncasecmp(ct, "application/json", 16);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first top-level key that occurs twice, or NULL. Keys are compared as
 * cJSON decoded them (escapes resolved, cut at a \u0000), which is what
 * the handlers' lookups see: {"model":"a","mod\u0065l":"b"} has "model" twice.
 * vLLM would take the last copy and cJSON takes the first, so a gateway in
 * front could check one while this engine serves the other: refused, as
 * the gateway refuses it. *oom is set when the check could not run. */
static const char *duplicate_key(const cJSON *obj, bool *oom)
{
    size_t n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        n++;
    *oom = false;
    if (n < 2)
        return NULL;
    const char **keys = brix_malloc(n * sizeof *keys);
    if (!keys) {
        *oom = true;
        return NULL;
    }
    size_t i = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        keys[i++] = c->string ? c->string : "";
    qsort(keys, n, sizeof *keys, cmp_key); /* n log n: bodies may have many keys */
    const char *dup = NULL;
    for (i = 1; i < n && !dup; i++)
        if (!strcmp(keys[i - 1], keys[i]))
            dup = keys[i];
    brix_free(keys);
    return dup;
}

/* Parses the body as a JSON object, answering 400 when it is not. */
cJSON *brix_api_parse_body(brix_http_req_t *h)
{
    brix_json_err_t je;
    if (!json_content_type_ok(h)) {
        brix_api_respond_err(h, 400, "BadRequestError",
                             "Unsupported Media Type: Only 'application/json' is allowed");
        return NULL;
    }
    cJSON *j;
    if (brix_json_parse(h->body.data, h->body.len, &j, &je)) {
        brix_api_respond_json_err(h, &je);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        brix_api_respond_err(h, 400, "BadRequestError", "request body must be a JSON object");
        cJSON_Delete(j);
        return NULL;
    }
    bool oom;
    const char *dup = duplicate_key(j, &oom);
    if (dup || oom) {
        if (oom)
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
        else
            brix_http_respond_error(h, 400, "BadRequestError", NULL, dup,
                                    "the request body has the key '%.64s' more than once", dup);
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

void brix_api_append_usage(brix_buf_t *b, size_t prompt, size_t completion, bool details,
                           size_t cached)
{
    brix_buf_printf(b, "{\"prompt_tokens\":%zu,\"total_tokens\":%zu,\"completion_tokens\":%zu",
                    prompt, prompt + completion, completion);
    if (details)
        brix_buf_printf(b, ",\"prompt_tokens_details\":{\"cached_tokens\":%zu}}", cached);
    else
        brix_buf_append_str(b, ",\"prompt_tokens_details\":null}");
}

/* ------------------------------------------------------ request state -- */

void brix_api_req_free(brix_api_req_t *r)
{
    brix_engine_t *e = r->e;
    for (size_t i = 0; i < r->n; i++) {
        brix_api_seq_t *s = &r->seqs[i];
        if (s->added && s->seq.state != BRIX_SEQ_FINISHED)
            brix_sched_abort(&e->sched, &s->seq);
        brix_seq_free(&s->seq);
        brix_buf_free(&s->text);
    }
    for (size_t i = 0; i < r->nstops; i++)
        brix_free(r->stops[i]);
    if (r->lora)
        brix_lora_unref(&e->loras, r->lora);
    brix_free(r->model);
    brix_free(r->seqs);
    brix_buf_free(&r->out);
    brix_free(r);
    e->requests_inflight--;
}

/*
 * Requests are released while the scheduler may be in the middle of a step
 * that still points at their sequences (a write fails inside on_token, or
 * the last sequence finishes): during a commit they go to a graveyard that
 * brix_engine_reap() empties after the step.
 */
void brix_api_req_release(brix_api_req_t *r)
{
    brix_engine_t *e = r->e;
    r->dead = true;
    r->http = NULL;
    if (e->in_commit) {
        r->next_dead = e->graveyard;
        e->graveyard = r;
        /* take the sequences out of the scheduler now */
        for (size_t i = 0; i < r->n; i++) {
            brix_api_seq_t *s = &r->seqs[i];
            if (s->added && s->seq.state != BRIX_SEQ_FINISHED)
                brix_sched_abort(&e->sched, &s->seq);
        }
    } else {
        brix_api_req_free(r);
    }
}

void brix_engine_reap(brix_engine_t *e)
{
    while (e->graveyard) {
        brix_api_req_t *r = e->graveyard;
        e->graveyard = r->next_dead;
        brix_api_req_free(r);
    }
}

void brix_api_req_on_abort(brix_http_req_t *h, void *ud)
{
    brix_api_req_t *r = ud;
    brix_log(BRIX_LOG_INFO, h->id, "\"%s %s\" client disconnected", h->method_name, h->path);
    brix_api_req_release(r);
}

/* A request of nseqs sequences for `model` (lora may be NULL, then the base
 * model). Answers 500 itself on ENOMEM. The caller sets seqs and handlers. */
brix_api_req_t *brix_api_req_new(brix_engine_t *e, brix_http_req_t *h, brix_api_kind_t kind,
                                 size_t nseqs, const char *model, brix_lora_t *lora)
{
    brix_api_req_t *r = brix_calloc(1, sizeof *r);
    if (!r || !(r->seqs = brix_calloc(nseqs, sizeof *r->seqs)) ||
        !(r->model = brix_strdup(model))) {
        brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
        if (r)
            brix_free(r->seqs);
        brix_free(r);
        return NULL;
    }
    e->requests_inflight++;
    r->e = e;
    r->http = h;
    r->kind = kind;
    r->created = brix_wall_s();
    if (lora) {
        r->lora = lora;
        brix_lora_ref(lora);
    }
    return r;
}

/* ------------------------------------------------------ prompt building -- */

int brix_api_render_chat(brix_http_req_t *h, const cJSON *body, brix_buf_t *text, bool gen_prompt)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!msgs) {
        brix_api_respond_err(h, 400, "BadRequestError", "'messages' is required");
        return -1;
    }
    if (!cJSON_IsArray(msgs) || !cJSON_GetArraySize(msgs)) {
        brix_api_respond_err(h, 400, "BadRequestError", "'messages' must be a non-empty array");
        return -1;
    }
    brix_chat_render_begin(text);
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            brix_api_respond_err(h, 400, "BadRequestError",
                                 "messages[%d] must be an object with a string 'role'", i);
            return -1;
        }
        static const char *roles[] = { "system", "user",      "assistant",
                                       "tool",   "developer", "function" };
        bool ok = false;
        for (size_t k = 0; k < sizeof roles / sizeof *roles; k++)
            ok |= !strcmp(role->valuestring, roles[k]);
        if (!ok) {
            brix_api_respond_err(h, 400, "BadRequestError", "messages[%d].role: unknown role '%s'",
                                 i, role->valuestring);
            return -1;
        }
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        brix_buf_t c = BRIX_BUF_INIT;
        if (cJSON_IsString(content)) {
            brix_buf_append_str(&c, content->valuestring);
        } else if (cJSON_IsArray(content)) {
            const cJSON *part;
            int j = 0;
            cJSON_ArrayForEach(part, content)
            {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsString(type)) {
                    brix_api_respond_err(h, 400, "BadRequestError",
                                         "messages[%d].content[%d] needs a string 'type'", i, j);
                    brix_buf_free(&c);
                    return -1;
                }
                if (strcmp(type->valuestring, "text")) {
                    brix_api_respond_err(
                        h, 400, "BadRequestError",
                        "messages[%d].content[%d]: content type '%s' is not supported: "
                        "engine-sim serves a text-only model",
                        i, j, type->valuestring);
                    brix_buf_free(&c);
                    return -1;
                }
                if (!cJSON_IsString(t)) {
                    brix_api_respond_err(h, 400, "BadRequestError",
                                         "messages[%d].content[%d].text must be a string", i, j);
                    brix_buf_free(&c);
                    return -1;
                }
                brix_buf_append_str(&c, t->valuestring);
                j++;
            }
        } else if (content && !cJSON_IsNull(content)) {
            brix_api_respond_err(h, 400, "BadRequestError",
                                 "messages[%d].content must be a string, an array of parts or null",
                                 i);
            return -1;
        }
        brix_chat_render_message(text, role->valuestring, c.data ? c.data : "", c.len);
        brix_buf_free(&c);
        i++;
    }
    brix_chat_render_end(text, gen_prompt);
    return 0;
}

/* Appends a JSON token-id array to ids; answers 400 on bad ids. */
static int take_token_array(brix_http_req_t *h, const cJSON *arr, const char *what, uint32_t **ids,
                            size_t *n, size_t *cap)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, arr)
    {
        if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble >= BRIX_TOK_VOCAB ||
            floor(t->valuedouble) != t->valuedouble) {
            brix_api_respond_err(h, 400, "BadRequestError",
                                 "%s: token ids must be integers in [0, %u)", what, BRIX_TOK_VOCAB);
            return -1;
        }
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 64;
            uint32_t *p = brix_realloc(*ids, nc * sizeof *p);
            if (!p) {
                brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
                return -1;
            }
            *ids = p;
            *cap = nc;
        }
        (*ids)[(*n)++] = (uint32_t)t->valuedouble;
    }
    return 0;
}

int brix_api_push_bos(uint32_t **ids, size_t *n, size_t *cap)
{
    uint32_t bos = BRIX_TOK_BOS;
    if (*n == *cap) {
        uint32_t *p = brix_realloc(*ids, 64 * sizeof *p);
        if (!p)
            return -ENOMEM;
        *ids = p;
        *cap = 64;
    }
    (*ids)[(*n)++] = bos;
    return 0;
}

/* A completion or embedding input: string | [int] -> tokens (BOS first for text). */
int brix_api_input_tokens(brix_http_req_t *h, const cJSON *in, const char *what, bool bos,
                          uint32_t **ids, size_t *n, size_t *cap)
{
    if (cJSON_IsString(in)) {
        if ((bos && brix_api_push_bos(ids, n, cap)) ||
            brix_tokenize(in->valuestring, strlen(in->valuestring), ids, n, cap)) {
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
            return -1;
        }
        return 0;
    }
    if (cJSON_IsArray(in) && cJSON_GetArraySize(in) > 0)
        return take_token_array(h, in, what, ids, n, cap);
    brix_api_respond_err(h, 400, "BadRequestError",
                         "%s must be a string, or a non-empty array of token ids", what);
    return -1;
}
