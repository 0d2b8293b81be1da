/*
 * tokenizer — the deterministic tokenizer shared by engine-sim and the gateway.
 *
 * It is not a real model's BPE; it is a fixed, documented rule that gives
 * about 4 characters per token on English prose (as GPT/Llama tokenizers do),
 * so token counts, KV-cache blocks and prefix hashes computed by the gateway
 * and by the engine always agree. Text is UTF-8; it is split left to right
 * into pre-tokens and each piece becomes one token:
 *
 *  1. special tokens: "<|" + 1..32 chars of [a-z0-9_] + "|>" is one token
 *     (so chat-template markers like <|eot_id|> are single tokens); a special
 *     token never takes a leading space;
 *  2. words: a run of ASCII letters, with at most one leading space attached,
 *     cut into pieces of at most BRIX_TOK_WORD_PIECE (8) bytes, the leading
 *     space counting toward the first piece;
 *  3. numbers: a run of ASCII digits, cut into groups of at most 3;
 *  4. line breaks: "\r\n", "\n" or "\r" ("\r\n" is one break, never split);
 *     a run of up to 2 line breaks is one token ("\r\n\r\n" is one token);
 *  5. spaces and tabs: a run cut into pieces of at most 4 bytes from the left,
 *     except that the run's last byte, if it is a space directly before a
 *     letter or a rule-6 byte (that does not start a special token), belongs
 *     to that word or punctuation token (rules 2 and 6) and is not part of the
 *     run: "a   b" is "a", "  ", " b". A space before a digit, a line break,
 *     a non-ASCII byte or a special token stays in the whitespace run;
 *  6. any other ASCII byte (punctuation, control, NUL, DEL) is one token,
 *     with at most one leading space attached;
 *  7. anything else: one token per well-formed UTF-8 code point (RFC 3629: no
 *     overlongs, surrogates or values above U+10FFFF); a byte that does not
 *     start one (stray continuation, truncated sequence, C0/C1/F5..FF) is one
 *     token by itself.
 *
 * Token ids (seed "brix" is 0x62726978):
 *  - the special tokens below have fixed ids 1..5;
 *  - any other special token: 6 + xxh64(piece, seed) mod 250, in [6, 256)
 *    (two unknown names may share an id);
 *  - every other piece: 256 + xxh64(piece, seed) mod (BRIX_TOK_VOCAB - 256);
 *  - id 0 is never produced, so it can mean "no token".
 * Ids are stable across versions: changing this rule changes every prefix
 * hash, so it is pinned by unit tests.
 */
#ifndef BRIX_CORE_TOKENIZER_H
#define BRIX_CORE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define BRIX_TOK_VOCAB      128256u /* Llama-3's vocabulary size */
#define BRIX_TOK_WORD_PIECE 8

/* Fixed ids of special tokens (Llama-3 numbering is not reproduced; these
 * are brix's own). */
#define BRIX_TOK_BOS          1 /* <|begin_of_text|> */
#define BRIX_TOK_EOS          2 /* <|end_of_text|> */
#define BRIX_TOK_EOT          3 /* <|eot_id|> */
#define BRIX_TOK_START_HEADER 4 /* <|start_header_id|> */
#define BRIX_TOK_END_HEADER   5 /* <|end_header_id|> */

typedef struct brix_tok_iter {
    const char *s;
    size_t len;
    size_t pos;
} brix_tok_iter_t;

void brix_tok_iter_init(brix_tok_iter_t *it, const char *s, size_t len);
/* Produces the next token: its id and the byte range [*start, *start+*tlen).
 * Any of id, start, tlen may be NULL. Returns false at the end of input.
 * O(1) per token, no allocation; the iterator borrows s, which must outlive it. */
bool brix_tok_next(brix_tok_iter_t *it, uint32_t *id, size_t *start, size_t *tlen);

/* Number of tokens in s. */
size_t brix_tok_count(const char *s, size_t len);
/* Appends the token ids of s to *ids (grown with brix_realloc; *n and *cap
 * track it; start from NULL/0/0; the caller frees *ids with brix_free).
 * Returns 0 or -ENOMEM; on -ENOMEM nothing is changed. */
int brix_tokenize(const char *s, size_t len, uint32_t **ids, size_t *n, size_t *cap);
/* Id of one piece of text as the tokenizer would assign it (for vocabularies):
 * the special id if piece is exactly one special token, else the hashed id.
 * The piece is not checked to be a single token. */
uint32_t brix_tok_piece_id(const char *piece, size_t len);

/*
 * Chat template: renders OpenAI chat messages into the text the engine
 * tokenizes, in Llama-3 style:
 *   <|begin_of_text|> then for each message
 *   <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
 *   and, with add_generation_prompt, <|start_header_id|>assistant<|end_header_id|>\n\n
 * brix_chat_render_* are called in that order by the caller. role is a
 * NUL-terminated string; content may be NULL when content_len is 0. Nothing
 * is escaped: special-token text inside content tokenizes as special tokens,
 * as with Llama-3's own template. Each call returns 0 or -ENOMEM and, on
 * -ENOMEM, leaves out unchanged.
 */
int brix_chat_render_begin(brix_buf_t *out);
int brix_chat_render_message(brix_buf_t *out, const char *role, const char *content,
                             size_t content_len);
int brix_chat_render_end(brix_buf_t *out, bool add_generation_prompt);

/*
 * The output vocabulary of the simulated engine: BRIX_TOK_OUT_VOCAB common
 * English pieces (" the", " model", ",", ".", "\n\n" ...), each exactly one token
 * under the rules above, so generated text re-tokenizes to the same count:
 * any concatenation of pieces splits back exactly at the piece boundaries.
 * Pieces are at most 8 bytes, distinct, have distinct ids, and are ordered
 * roughly most frequent first. brix_tok_out_piece returns a static string
 * (its length in *len if len is not NULL), or NULL if idx is out of range.
 */
#define BRIX_TOK_OUT_VOCAB 512
const char *brix_tok_out_piece(uint32_t idx, size_t *len); /* idx < BRIX_TOK_OUT_VOCAB */
uint32_t brix_tok_out_id(uint32_t idx);                    /* token id of that piece */
/* Index of an output-vocabulary token id, or -1 when id is not one. O(1). */
int brix_tok_out_index(uint32_t id);

#endif
