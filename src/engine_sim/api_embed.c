/*
 * Embeddings: the vectors need no model, only determinism (the same input
 * always gets the same vector) and unit length, which clients and
 * similarity code rely on; the work is charged through the scheduler like
 * a prompt of the same length.
 */
#include "engine_sim/api_embed.h"

#include "core/alloc.h"
#include "core/json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#define MAX_EMBED_IN 2048 /* inputs per embeddings request */

void brix_api_embed_write(brix_api_req_t *r)
{
    brix_buf_t *b = &r->out;
    brix_buf_reset(b);
    brix_buf_append_str(b, "{\"id\":");
    brix_buf_append_json_str(b, r->id, strlen(r->id));
    brix_buf_printf(b, ",\"object\":\"list\",\"created\":%lld,\"model\":", (long long)r->created);
    brix_buf_append_json_str(b, r->model, strlen(r->model));
    brix_buf_append_str(b, ",\"data\":[");
    for (size_t i = 0; i < r->n; i++) {
        const brix_seq_t *q = &r->seqs[i].seq;
        uint64_t rng =
            XXH64(q->tokens, q->prompt_len * sizeof *q->tokens, (uint64_t)r->e->cfg.seed);
        /* Deterministic unit vector: Gaussian-ish components, L2-normalised. */
        size_t d = (size_t)r->dims;
        float *v = brix_malloc(d * sizeof *v);
        if (!v)
            break;
        double norm = 0;
        for (size_t k = 0; k < d; k++) {
            double x = 0;
            for (int j = 0; j < 4; j++)
                x += (double)(brix_sched_rng_next(&rng) >> 11) / 9007199254740992.0 - 0.5;
            v[k] = (float)x;
            norm += x * x;
        }
        norm = norm > 0 ? sqrt(norm) : 1;
        brix_buf_printf(b, "%s{\"index\":%zu,\"object\":\"embedding\",\"embedding\":", i ? "," : "",
                        i);
        if (r->b64) {
            static const char tbl[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            unsigned char *raw = (unsigned char *)v;
            for (size_t k = 0; k < d; k++)
                v[k] = (float)(v[k] / norm);
            size_t nb = d * sizeof *v;
            brix_buf_append_char(b, '"');
            for (size_t k = 0; k < nb; k += 3) {
                uint32_t w = (uint32_t)raw[k] << 16;
                if (k + 1 < nb)
                    w |= (uint32_t)raw[k + 1] << 8;
                if (k + 2 < nb)
                    w |= raw[k + 2];
                char o[4] = { tbl[(w >> 18) & 63], tbl[(w >> 12) & 63],
                              k + 1 < nb ? tbl[(w >> 6) & 63] : '=',
                              k + 2 < nb ? tbl[w & 63] : '=' };
                brix_buf_append(b, o, 4);
            }
            brix_buf_append_char(b, '"');
        } else {
            brix_buf_append_char(b, '[');
            for (size_t k = 0; k < d; k++)
                brix_buf_printf(b, "%s%.8g", k ? "," : "", (double)v[k] / norm);
            brix_buf_append_char(b, ']');
        }
        brix_buf_append_char(b, '}');
        brix_free(v);
    }
    brix_buf_append_str(b, "],\"usage\":");
    brix_api_append_usage(b, r->prompt_tokens, 0, false, 0);
    brix_buf_append_char(b, '}');
    brix_api_respond_buf(r->http, 200, b);
}

void brix_api_embed_handle(brix_engine_t *e, brix_http_req_t *h)
{
    brix_json_err_t je;
    cJSON *body = brix_api_parse_body(h);
    if (!body)
        return;
    const char *model, *fmt = "float";
    brix_lora_t *lora;
    int64_t dims = e->cfg.embedding_dim;
    bool has_dims = false;
    brix_api_req_t *r = NULL;
    if (brix_api_resolve_model(e, h, body, &model, &lora))
        goto out;
    if (brix_json_get_string(body, "encoding_format", NULL, &fmt, &je) ||
        brix_json_get_int(body, "dimensions", 1, e->cfg.embedding_dim, &has_dims, &dims, &je)) {
        brix_api_respond_json_err(h, &je);
        goto out;
    }
    if (strcmp(fmt, "float") && strcmp(fmt, "base64")) {
        brix_api_respond_err(h, 400, "BadRequestError",
                             "'encoding_format' must be 'float' or 'base64'");
        goto out;
    }
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(body, "input");
    if (!in) {
        brix_api_respond_err(h, 400, "BadRequestError", "'input' is required");
        goto out;
    }
    /* input: string | [string] | [int] | [[int]] */
    size_t count = 1;
    bool list = cJSON_IsArray(in) && cJSON_GetArraySize(in) > 0 &&
                (cJSON_IsString(in->child) || cJSON_IsArray(in->child));
    if (list)
        count = (size_t)cJSON_GetArraySize(in);
    if (count > MAX_EMBED_IN) {
        brix_api_respond_err(h, 400, "BadRequestError", "at most %d inputs per request",
                             MAX_EMBED_IN);
        goto out;
    }
    if (!brix_api_ready(e)) {
        brix_api_respond_err(h, 503, "ServiceUnavailableError", "the model is still loading");
        goto out;
    }
    if (!(r = brix_api_req_new(e, h, BRIX_API_EMBEDDING, count, model, lora)))
        goto out;
    r->b64 = !strcmp(fmt, "base64");
    r->dims = dims;
    snprintf(r->id, sizeof r->id, "embd-%s", h->id);
    const cJSON *item = list ? in->child : in;
    for (size_t i = 0; i < count; i++, item = item->next) {
        uint32_t *ids = NULL;
        size_t nids = 0, cap = 0;
        brix_api_seq_t *s = &r->seqs[i];
        if (brix_api_input_tokens(h, item, "'input'", true, &ids, &nids, &cap)) {
            brix_free(ids);
            brix_api_req_free(r);
            r = NULL;
            goto out;
        }
        if (nids > (size_t)e->cfg.max_model_len) {
            brix_api_respond_err(
                h, 400, "BadRequestError",
                "This model's maximum context length is %lld tokens. However, input %zu "
                "has %zu tokens. Please reduce the length of the input.",
                (long long)e->cfg.max_model_len, i, nids);
            brix_free(ids);
            brix_api_req_free(r);
            r = NULL;
            goto out;
        }
        int rc = brix_seq_init(&s->seq, ids, nids, 0);
        brix_free(ids);
        r->n = i + 1;
        if (rc) {
            brix_api_respond_err(h, 500, "InternalServerError", "out of memory");
            brix_api_req_free(r);
            r = NULL;
            goto out;
        }
        s->r = r;
        s->index = (uint32_t)i;
        s->stop_idx = -1;
        s->seq.ud = s;
        s->seq.lora = lora;
        s->seq.prefill_only = true;
        r->prompt_tokens += nids;
    }
    r->pending = r->n;
    h->ud = r;
    h->on_abort = brix_api_req_on_abort;
    double now = brix_engine_now(e);
    for (size_t i = 0; i < r->n; i++)
        if (brix_sched_add(&e->sched, &r->seqs[i].seq, now) == 0)
            r->seqs[i].added = true;
    brix_engine_kick(e);
out:
    cJSON_Delete(body);
}
