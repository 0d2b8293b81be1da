/*
 * prompt — a request's prompt as the chain of block hashes prefix-aware
 * routing matches on.
 *
 * The prompt is tokenized the way engine-sim (and the precise index) sees
 * it: chat messages rendered with the core chat template, completions and
 * embeddings with a BOS token first, token-id prompts as given. Tokens are
 * cut into blocks of block_size (the engines' --block-size) and each full
 * block hashed, chained on its parent: h_i = xxh64(LE32 tokens, seed h_{i-1}),
 * h_{-1} = xxh64(model name) — so adapters and base models never share
 * entries. Walking the prompt is O(length) and allocates only from the
 * request's arena.
 */
#ifndef BRIX_GATEWAY_PROMPT_H
#define BRIX_GATEWAY_PROMPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/alloc.h"
#include "core/json_scan.h"

/* The fields of a request body the gateway looks at, pointing into the body
 * (which stays unchanged and is forwarded as received). */
typedef struct brix_req_fields {
    const char *model; /* unescaped, NUL-terminated */
    bool stream;
    brix_json_val_t messages;       /* chat; kind NULL when absent */
    brix_json_val_t prompt;         /* completions */
    brix_json_val_t input;          /* embeddings */
    bool no_generation_prompt;      /* chat "add_generation_prompt": false */
    brix_json_val_t stream_options; /* kind NULL when absent */
    int64_t max_tokens;             /* max_tokens / max_completion_tokens, 0 when absent */
} brix_req_fields_t;

typedef struct brix_prompt {
    uint64_t *hashes; /* full blocks, in order */
    size_t nhashes;
    size_t ntokens; /* all prompt tokens, including a trailing partial block */
    bool known;     /* false when the body carries no prompt we can read */
} brix_prompt_t;

/* The prompt's token estimate without tokenizing: ceil(characters of the
 * prompt fields as sent / 4), as AIBrix estimates (rate limits, VTC). */
static inline int64_t brix_prompt_estimate(const brix_req_fields_t *f)
{
    return f ? (int64_t)((f->messages.n + f->prompt.n + f->input.n + 3) / 4) : 0;
}

/* Hashes at most max_blocks blocks (longer prompts still count ntokens). */
int brix_prompt_hash(const brix_req_fields_t *f, const char *model, uint32_t block_size,
                     size_t max_blocks, brix_arena_t *arena, brix_prompt_t *out);

uint64_t brix_prompt_root(const char *model);
uint64_t brix_prompt_block_hash(uint64_t parent, const uint32_t *tokens, uint32_t n);

#endif
