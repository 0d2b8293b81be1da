/*
 * The model catalogue with vLLM's checks and messages (adapter errors are
 * of type InvalidUserInput, successes are plain text). The load time is
 * simulated with a libuv timer, not a sleep, so the engine keeps serving
 * while an adapter "loads".
 */
#include "engine_sim/api_models.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/time.h"
#include "engine_sim/api_request.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>
#include <xxhash.h>

/* ------------------------------------------------------------ /v1/models -- */

static void models_entry(brix_buf_t *b, const char *id, const char *root, const char *parent,
                         long long max_len, int64_t created)
{
    brix_buf_append_str(b, "{\"id\":");
    brix_buf_append_json_str(b, id, strlen(id));
    brix_buf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"vllm\",\"root\":",
                    (long long)created);
    brix_buf_append_json_str(b, root, strlen(root));
    brix_buf_append_str(b, ",\"parent\":");
    if (parent)
        brix_buf_append_json_str(b, parent, strlen(parent));
    else
        brix_buf_append_str(b, "null");
    if (max_len > 0)
        brix_buf_printf(b, ",\"max_model_len\":%lld", max_len);
    else
        brix_buf_append_str(b, ",\"max_model_len\":null");
    brix_buf_printf(
        b,
        ",\"permission\":[{\"id\":\"modelperm-%016llx\",\"object\":\"model_permission\","
        "\"created\":%lld,\"allow_create_engine\":false,\"allow_sampling\":true,"
        "\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,"
        "\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,"
        "\"is_blocking\":false}]}",
        (unsigned long long)XXH64(id, strlen(id), 0), (long long)created);
}

void brix_api_models_list(brix_engine_t *e, brix_http_req_t *h)
{
    brix_buf_t b = BRIX_BUF_INIT;
    int64_t now = brix_wall_s();
    brix_buf_append_str(&b, "{\"object\":\"list\",\"data\":[");
    bool first = true;
    if (e->cfg.served_model_name.n) {
        for (size_t i = 0; i < e->cfg.served_model_name.n; i++) {
            if (!first)
                brix_buf_append_char(&b, ',');
            models_entry(&b, e->cfg.served_model_name.v[i], e->cfg.model, NULL,
                         e->cfg.max_model_len, now);
            first = false;
        }
    } else {
        models_entry(&b, e->cfg.model, e->cfg.model, NULL, e->cfg.max_model_len, now);
        first = false;
    }
    for (size_t i = 0; i < e->loras.n; i++) {
        brix_buf_append_char(&b, ',');
        models_entry(&b, e->loras.v[i]->name, e->loras.v[i]->path, e->served, 0, now);
    }
    brix_buf_append_str(&b, "]}");
    brix_api_respond_buf(h, 200, &b);
    brix_buf_free(&b);
}

/* ----- runtime LoRA loading: the reply comes after the simulated load time */

typedef struct lora_load {
    uv_timer_t timer;
    brix_engine_t *e;
    brix_http_req_t *h; /* NULL once the client is gone */
    char *name, *path;
} lora_load_t;

static void lora_load_closed(uv_handle_t *t)
{
    lora_load_t *ll = t->data;
    brix_free(ll->name);
    brix_free(ll->path);
    brix_free(ll);
}

static void on_lora_load_abort(brix_http_req_t *h, void *ud)
{
    lora_load_t *ll = ud;
    ll->h = NULL;
    ll->e->requests_inflight--;
    uv_close((uv_handle_t *)&ll->timer, lora_load_closed);
}

static void on_lora_loaded(uv_timer_t *t)
{
    lora_load_t *ll = t->data;
    brix_engine_t *e = ll->e;
    brix_http_req_t *h = ll->h;
    char msg[512];
    h->on_abort = NULL;
    e->requests_inflight--;
    if (brix_lora_find(&e->loras, ll->name)) {
        brix_api_respond_err(h, 400, "InvalidUserInput",
                             "The lora adapter '%s' has already been loaded.", ll->name);
    } else {
        brix_lora_t *l = brix_lora_add(&e->loras, ll->name, ll->path);
        if (!l) {
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
        } else {
            brix_lora_ensure_cpu(&e->loras, l, 0);
            BRIX_INFO("loaded LoRA adapter '%s' from %s (id %lld)", l->name, l->path,
                      (long long)l->id);
            snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' added successfully.", ll->name);
            brix_api_respond_plain(h, 200, msg);
        }
    }
    uv_close((uv_handle_t *)&ll->timer, lora_load_closed);
}

static bool lora_enabled(brix_engine_t *e, brix_http_req_t *h)
{
    if (!e->cfg.enable_lora) {
        brix_api_respond_err(h, 404, "NotFoundError",
                             "LoRA is not enabled on this engine (start it with --enable-lora)");
        return false;
    }
    return true;
}

void brix_api_models_load_lora(brix_engine_t *e, brix_http_req_t *h)
{
    if (!lora_enabled(e, h))
        return;
    brix_json_err_t je;
    cJSON *body = brix_api_parse_body(h);
    if (!body)
        return;
    const char *name = NULL, *path = NULL;
    if (brix_json_get_string(body, "lora_name", NULL, &name, &je) ||
        brix_json_get_string(body, "lora_path", NULL, &path, &je)) {
        brix_api_respond_json_err(h, &je);
        goto out;
    }
    if (!name || !*name || !path || !*path) {
        brix_api_respond_err(h, 400, "InvalidUserInput",
                             "Both 'lora_name' and 'lora_path' must be provided.");
        goto out;
    }
    if (brix_lora_find(&e->loras, name)) {
        brix_api_respond_err(h, 400, "InvalidUserInput",
                             "The lora adapter '%s' has already been loaded.", name);
        goto out;
    }
    if (brix_api_is_served_name(e, name)) {
        brix_api_respond_err(h, 400, "InvalidUserInput",
                             "The lora adapter name '%s' is the base model's name.", name);
        goto out;
    }
    struct stat st;
    if (e->cfg.lora_path_check && stat(path, &st) != 0) {
        brix_api_respond_err(h, 404, "NotFoundError", "No adapter found for %s", path);
        goto out;
    }
    lora_load_t *ll = brix_calloc(1, sizeof *ll);
    if (!ll || !(ll->name = brix_strdup(name)) || !(ll->path = brix_strdup(path))) {
        if (ll) {
            brix_free(ll->name);
            brix_free(ll);
        }
        brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
        goto out;
    }
    ll->e = e;
    ll->h = h;
    uv_timer_init(e->loop, &ll->timer);
    ll->timer.data = ll;
    h->ud = ll;
    h->on_abort = on_lora_load_abort;
    e->requests_inflight++;
    double wall_s = e->profile->lora_load_seconds * e->cfg.time_scale;
    uv_timer_start(&ll->timer, on_lora_loaded, (uint64_t)ceil(wall_s * 1000), 0);
out:
    cJSON_Delete(body);
}

void brix_api_models_unload_lora(brix_engine_t *e, brix_http_req_t *h)
{
    if (!lora_enabled(e, h))
        return;
    brix_json_err_t je;
    cJSON *body = brix_api_parse_body(h);
    if (!body)
        return;
    const char *name = NULL;
    char msg[512];
    if (brix_json_get_string(body, "lora_name", NULL, &name, &je)) {
        brix_api_respond_json_err(h, &je);
        goto out;
    }
    if (!name || !*name) {
        brix_api_respond_err(h, 400, "InvalidUserInput",
                             "'lora_name' needs to be provided to unload a LoRA adapter.");
        goto out;
    }
    if (brix_lora_remove(&e->loras, name)) {
        brix_api_respond_err(h, 404, "NotFoundError", "The lora adapter '%s' cannot be found.",
                             name);
        goto out;
    }
    BRIX_INFO("unloaded LoRA adapter '%s'", name);
    snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' removed successfully.", name);
    brix_api_respond_plain(h, 200, msg);
out:
    cJSON_Delete(body);
}
