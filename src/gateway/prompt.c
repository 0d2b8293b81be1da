/* Prompt hashing for prefix-aware routing; see prompt.h. */
#include "gateway/prompt.h"

#include "core/buf.h"
#include "core/tokenizer.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

uint64_t brix_prompt_root(const char *model)
{
    return XXH64(model, strlen(model), 0x70726566697821ull);
}

uint64_t brix_prompt_block_hash(uint64_t parent, const uint32_t *tokens, uint32_t n)
{
    /* The parent is the seed: no copy of the block is needed. Token ids are
     * hashed as little-endian u32s; on a big-endian host they are swapped
     * first, so the chain is the same everywhere. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t le[256];
    if (n > 256)
        n = 256;
    for (uint32_t i = 0; i < n; i++)
        le[i] = __builtin_bswap32(tokens[i]);
    return XXH64(le, (size_t)n * 4, parent);
#else
    return XXH64(tokens, (size_t)n * 4, parent);
#endif
}

/* Accumulates tokens into blocks and hashes every full one. */
typedef struct hasher {
    brix_prompt_t *out;
    size_t cap;
    uint32_t bs;
    uint32_t blk[256];
    uint32_t nblk;
    uint64_t parent;
} hasher_t;

static void push_token(hasher_t *h, uint32_t id)
{
    h->out->ntokens++;
    if (h->out->nhashes >= h->cap)
        return; /* past max_blocks: only counting */
    h->blk[h->nblk++] = id;
    if (h->nblk == h->bs) {
        h->parent = brix_prompt_block_hash(h->parent, h->blk, h->bs);
        h->out->hashes[h->out->nhashes++] = h->parent;
        h->nblk = 0;
    }
}

static void push_text(hasher_t *h, const char *s, size_t n)
{
    brix_tok_iter_t it;
    brix_tok_iter_init(&it, s, n);
    uint32_t id;
    while (brix_tok_next(&it, &id, NULL, NULL))
        push_token(h, id);
}

typedef struct chat_ctx {
    brix_buf_t *text;
    const char *role;
    size_t role_len;
    brix_json_val_t content;
    bool ok;
    brix_buf_t part;
} chat_ctx_t;

static int on_part_member(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    chat_ctx_t *c = ud;
    if (brix_json_key_is(k, kl, "text") && v->kind == BRIX_JSON_STRING) {
        size_t at = c->part.len;
        if (brix_buf_reserve(&c->part, v->n + 1)) {
            c->ok = false;
            return 1;
        }
        c->part.len = at + brix_json_unescape(v->p, v->n, c->part.data + at);
    }
    return 0;
}

static int on_part(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    if (v->kind == BRIX_JSON_OBJECT)
        brix_json_each(v, on_part_member, ud);
    return 0;
}

static int on_msg_member(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    chat_ctx_t *c = ud;
    if (brix_json_key_is(k, kl, "role") && v->kind == BRIX_JSON_STRING) {
        c->role = v->p;
        c->role_len = v->n;
    } else if (brix_json_key_is(k, kl, "content")) {
        c->content = *v;
    }
    return 0;
}

static int on_message(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    chat_ctx_t *c = ud;
    if (v->kind != BRIX_JSON_OBJECT)
        return 0;
    c->role = NULL;
    c->content.kind = BRIX_JSON_NULL;
    brix_json_each(v, on_msg_member, c);
    if (!c->role)
        return 0;
    char role[32];
    size_t rl = c->role_len < sizeof role - 1 ? c->role_len : sizeof role - 1;
    memcpy(role, c->role, rl);
    role[rl] = '\0';
    brix_buf_reset(&c->part);
    if (c->content.kind == BRIX_JSON_STRING) {
        if (brix_buf_reserve(&c->part, c->content.n + 1)) {
            c->ok = false;
            return 1;
        }
        c->part.len = brix_json_unescape(c->content.p, c->content.n, c->part.data);
    } else if (c->content.kind == BRIX_JSON_ARRAY) {
        brix_json_each(&c->content, on_part, c);
    }
    if (brix_chat_render_message(c->text, role, c->part.data ? c->part.data : "", c->part.len))
        c->ok = false;
    return !c->ok;
}

static int on_token_id(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    hasher_t *h = ud;
    if (v->kind != BRIX_JSON_NUMBER)
        return 1;
    uint64_t x = 0;
    for (size_t i = 0; i < v->n; i++) {
        char ch = v->p[i];
        if (ch < '0' || ch > '9')
            return 1;
        x = x * 10 + (uint64_t)(ch - '0');
        if (x > UINT32_MAX)
            return 1;
    }
    push_token(h, (uint32_t)x);
    return 0;
}

static int take_first(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    *(brix_json_val_t *)ud = *v;
    return 1; /* stop after the first element */
}

/* A completion prompt or embedding input: string, [ids], [string, ...] or
 * [[ids], ...]; of a batch only the first prompt is hashed. */
static bool hash_input(hasher_t *h, const brix_json_val_t *v, brix_buf_t *tmp)
{
    if (v->kind == BRIX_JSON_STRING) {
        if (brix_buf_reserve(tmp, v->n + 1))
            return false;
        tmp->len = brix_json_unescape(v->p, v->n, tmp->data);
        push_token(h, BRIX_TOK_BOS);
        push_text(h, tmp->data, tmp->len);
        return true;
    }
    if (v->kind != BRIX_JSON_ARRAY)
        return false;
    brix_json_val_t first = { BRIX_JSON_NULL, NULL, 0 };
    brix_json_each(v, take_first, &first);
    if (first.kind == BRIX_JSON_STRING)
        return hash_input(h, &first, tmp);
    if (first.kind == BRIX_JSON_ARRAY) {
        brix_json_each(&first, on_token_id, h);
        return true;
    }
    if (first.kind == BRIX_JSON_NUMBER) {
        brix_json_each(v, on_token_id, h);
        return true;
    }
    return false;
}

int brix_prompt_hash(const brix_req_fields_t *f, const char *model, uint32_t block_size,
                     size_t max_blocks, brix_arena_t *arena, brix_prompt_t *out)
{
    memset(out, 0, sizeof *out);
    if (block_size == 0 || block_size > 256)
        return -EINVAL;
    size_t body_bytes = f->messages.n + f->prompt.n + f->input.n;
    size_t cap = body_bytes / block_size + 2;
    if (cap > max_blocks)
        cap = max_blocks;
    out->hashes = brix_arena_alloc(arena, cap * sizeof *out->hashes + 1);
    if (!out->hashes)
        return -ENOMEM;
    hasher_t h = { .out = out, .cap = cap, .bs = block_size, .parent = brix_prompt_root(model) };
    brix_buf_t text = BRIX_BUF_INIT;
    int rc = 0;
    if (f->messages.kind == BRIX_JSON_ARRAY) {
        chat_ctx_t c = { .text = &text, .ok = true };
        brix_chat_render_begin(&text);
        brix_json_each(&f->messages, on_message, &c);
        brix_chat_render_end(&text, !f->no_generation_prompt);
        brix_buf_free(&c.part);
        if (!c.ok) {
            rc = -ENOMEM;
        } else {
            push_text(&h, text.data, text.len);
            out->known = true;
        }
    } else if (f->prompt.kind != BRIX_JSON_NULL && f->prompt.p) {
        out->known = hash_input(&h, &f->prompt, &text);
    } else if (f->input.kind != BRIX_JSON_NULL && f->input.p) {
        out->known = hash_input(&h, &f->input, &text);
    }
    brix_buf_free(&text);
    return rc;
}
