/*
 * The engine's HTTP API: the router (vLLM's routes and methods, and the
 * --api-key check on /v1), the endpoints that need no model (/health,
 * /ping, /version, /metrics) and the tokenizer's, /tokenize and
 * /detokenize. Generation, embeddings and the model catalogue have their
 * own modules (listed in api_request.h); statuses, messages and response
 * shapes are vLLM v0.11's.
 */
#include "core/json.h"
#include "core/secret.h"
#include "core/time.h"
#include "core/tokenizer.h"
#include "engine_sim/api_embed.h"
#include "engine_sim/api_generate.h"
#include "engine_sim/api_models.h"
#include "engine_sim/api_request.h"
#include "engine_sim/engine.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

/* ---------------------------------------------------- tokenize / detokenize -- */

static void handle_tokenize(brix_engine_t *e, brix_http_req_t *h)
{
    brix_json_err_t je;
    cJSON *body = brix_api_parse_body(h);
    if (!body)
        return;
    const char *model;
    brix_lora_t *lora;
    bool strs = false, add_special = true, gen_prompt = true;
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    brix_buf_t text = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
    if (brix_api_resolve_model(e, h, body, &model, &lora))
        goto out;
    bool chat = cJSON_GetObjectItemCaseSensitive(body, "messages") != NULL;
    if (chat)
        add_special = false;
    if (brix_json_get_bool(body, "return_token_strs", NULL, &strs, &je) ||
        brix_json_get_bool(body, "add_special_tokens", NULL, &add_special, &je) ||
        brix_json_get_bool(body, "add_generation_prompt", NULL, &gen_prompt, &je)) {
        brix_api_respond_json_err(h, &je);
        goto out;
    }
    if (chat) {
        if (brix_api_render_chat(h, body, &text, gen_prompt))
            goto out;
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
        if (!cJSON_IsString(p)) {
            brix_api_respond_err(h, 400, "BadRequestError",
                                 "'prompt' (a string) or 'messages' is required");
            goto out;
        }
        if (add_special && brix_api_push_bos(&ids, &n, &cap)) {
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
            goto out;
        }
        brix_buf_append_str(&text, p->valuestring);
    }
    if (brix_tokenize(text.data ? text.data : "", text.len, &ids, &n, &cap)) {
        brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
        goto out;
    }
    brix_buf_printf(&b, "{\"count\":%zu,\"max_model_len\":%lld,\"tokens\":[", n,
                    (long long)e->cfg.max_model_len);
    for (size_t i = 0; i < n; i++)
        brix_buf_printf(&b, "%s%u", i ? "," : "", ids[i]);
    brix_buf_append_str(&b, "],\"token_strs\":");
    if (strs) {
        brix_buf_append_char(&b, '[');
        brix_tok_iter_t it;
        uint32_t id;
        size_t st, tl, k = 0;
        if (!chat && add_special) {
            brix_buf_append_str(&b, "\"<|begin_of_text|>\"");
            k++;
        }
        brix_tok_iter_init(&it, text.data ? text.data : "", text.len);
        while (brix_tok_next(&it, &id, &st, &tl)) {
            if (k++)
                brix_buf_append_char(&b, ',');
            brix_buf_append_json_str(&b, text.data + st, tl);
        }
        brix_buf_append_char(&b, ']');
    } else {
        brix_buf_append_str(&b, "null");
    }
    brix_buf_append_char(&b, '}');
    brix_api_respond_buf(h, 200, &b);
out:
    brix_free(ids);
    brix_buf_free(&text);
    brix_buf_free(&b);
    cJSON_Delete(body);
}

static void handle_detokenize(brix_engine_t *e, brix_http_req_t *h)
{
    cJSON *body = brix_api_parse_body(h);
    if (!body)
        return;
    const char *model;
    brix_lora_t *lora;
    brix_buf_t b = BRIX_BUF_INIT, text = BRIX_BUF_INIT;
    if (brix_api_resolve_model(e, h, body, &model, &lora))
        goto out;
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(body, "tokens");
    if (!cJSON_IsArray(toks)) {
        brix_api_respond_err(h, 400, "BadRequestError", "'tokens' must be an array of token ids");
        goto out;
    }
    static const char *special[] = { NULL,         "<|begin_of_text|>",   "<|end_of_text|>",
                                     "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>" };
    const cJSON *t;
    cJSON_ArrayForEach(t, toks)
    {
        /* 1.5 is refused as vLLM's list[int] refuses it, not truncated to 1 */
        if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble >= BRIX_TOK_VOCAB ||
            floor(t->valuedouble) != t->valuedouble) {
            brix_api_respond_err(h, 400, "BadRequestError", "token ids must be integers in [0, %u)",
                                 BRIX_TOK_VOCAB);
            goto out;
        }
        uint32_t id = (uint32_t)t->valuedouble;
        if (id > 0 && id < sizeof special / sizeof *special) {
            brix_buf_append_str(&text, special[id]);
            continue;
        }
        /* Only generated (output-vocabulary) ids can be mapped back to text:
         * prompt ids are hashes of their text. */
        int vi = brix_tok_out_index(id);
        if (vi >= 0) {
            size_t pl;
            const char *p = brix_tok_out_piece((uint32_t)vi, &pl);
            brix_buf_append(&text, p, pl);
        }
    }
    brix_buf_append_str(&b, "{\"prompt\":");
    brix_buf_append_json_str(&b, text.data ? text.data : "", text.len);
    brix_buf_append_char(&b, '}');
    brix_api_respond_buf(h, 200, &b);
out:
    brix_buf_free(&b);
    brix_buf_free(&text);
    cJSON_Delete(body);
}

static void handle_metrics(brix_engine_t *e, brix_http_req_t *h)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_metrics_write(e->m.reg, &b);
    brix_http_respond(h, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "",
                      b.len);
    brix_buf_free(&b);
}

/* -------------------------------------------------------------- router -- */

typedef struct route {
    const char *path;
    enum http_method method;
} route_t;

static const route_t routes[] = {
    { "/health", HTTP_GET },
    { "/ping", HTTP_GET },
    { "/version", HTTP_GET },
    { "/metrics", HTTP_GET },
    { "/v1/models", HTTP_GET },
    { "/v1/chat/completions", HTTP_POST },
    { "/v1/completions", HTTP_POST },
    { "/v1/embeddings", HTTP_POST },
    { "/tokenize", HTTP_POST },
    { "/detokenize", HTTP_POST },
    { "/v1/load_lora_adapter", HTTP_POST },
    { "/v1/unload_lora_adapter", HTTP_POST },
};

void brix_engine_handle(brix_http_req_t *h, void *ud)
{
    brix_engine_t *e = ud;
    const char *p = h->path;
    enum http_method m = h->method == HTTP_HEAD ? HTTP_GET : h->method;
    const route_t *rt = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        if (!strcmp(p, routes[i].path)) {
            rt = &routes[i];
            break;
        }
    }
    if (!rt) {
        brix_api_respond_err(h, 404, "NotFoundError", "no route for %s %s", h->method_name, p);
        return;
    }
    if (rt->method != m && !(m == HTTP_POST && !strcmp(p, "/ping"))) {
        brix_http_add_header(h, "allow", rt->method == HTTP_GET ? "GET, HEAD" : "POST");
        brix_api_respond_err(h, 405, "MethodNotAllowedError", "method %s is not allowed on %s",
                             h->method_name, p);
        return;
    }
    if (e->cfg.api_key && !strncmp(p, "/v1", 3)) {
        /* vLLM's API-key middleware: exact "Bearer KEY", else 401 {"error":"Unauthorized"};
         * compared in constant time (vLLM compares plainly) */
        const char *auth = brix_http_req_header(h, "authorization");
        if (!auth || strncmp(auth, "Bearer ", 7) || !brix_secret_equal(auth + 7, e->cfg.api_key)) {
            static const char unauth[] = "{\"error\":\"Unauthorized\"}";
            brix_http_respond(h, 401, "application/json", unauth, sizeof unauth - 1);
            return;
        }
    }
    if (!strcmp(p, "/health") || !strcmp(p, "/ping")) {
        brix_http_respond(h, brix_api_ready(e) && !e->draining ? 200 : 503, NULL, NULL, 0);
    } else if (!strcmp(p, "/version")) {
        static const char v[] =
            "{\"version\":\"" BRIX_VLLM_VERSION "\",\"brix\":\"" BRIX_VERSION "\"}";
        brix_http_respond(h, 200, "application/json", v, sizeof v - 1);
    } else if (!strcmp(p, "/metrics")) {
        handle_metrics(e, h);
    } else if (!strcmp(p, "/v1/models")) {
        brix_api_models_list(e, h);
    } else if (!strcmp(p, "/v1/chat/completions")) {
        brix_api_generate_handle(e, h, BRIX_API_CHAT);
    } else if (!strcmp(p, "/v1/completions")) {
        brix_api_generate_handle(e, h, BRIX_API_COMPLETION);
    } else if (!strcmp(p, "/v1/embeddings")) {
        brix_api_embed_handle(e, h);
    } else if (!strcmp(p, "/tokenize")) {
        handle_tokenize(e, h);
    } else if (!strcmp(p, "/detokenize")) {
        handle_detokenize(e, h);
    } else if (!strcmp(p, "/v1/load_lora_adapter")) {
        brix_api_models_load_lora(e, h);
    } else if (!strcmp(p, "/v1/unload_lora_adapter")) {
        brix_api_models_unload_lora(e, h);
    }
}
