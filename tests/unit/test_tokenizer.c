/*
 * Unit tests for core/tokenizer: every rule of tokenizer.h with exact piece
 * boundaries, pinned ids (a rule change must fail here, since ids feed the
 * prefix-cache hashes), the output vocabulary's one-token-per-piece property
 * under concatenation, the chat template, ENOMEM and leaks.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/tokenizer.h"

/* Ids computed by the implementation when the rule was fixed; see test_ids_pinned. */
#define PIN_HELLO      95120u /* "Hello" */
#define PIN_WORLD      51499u /* " world" */
#define PIN_COMMA      18019u /* "," */
#define PIN_BANG       79881u /* "!" */
#define PIN_NLNL       22169u /* "\n\n" */
#define PIN_THE        8658u  /* " the" */
#define PIN_PYTHON_TAG 32u    /* "<|python_tag|>" (hashed special) */

#include "leak_check.h"

/*
 * Checks that s[0..len) splits into exactly the NULL-terminated list of
 * pieces, that the pieces tile the input, and that count/tokenize agree.
 */
static void check_pieces_n(const char *s, size_t len, const char *const *want)
{
    brix_tok_iter_t it;
    brix_tok_iter_init(&it, s, len);
    uint32_t id;
    size_t start, tlen, i = 0, end = 0;
    while (brix_tok_next(&it, &id, &start, &tlen)) {
        if (!want[i])
            fail_msg("input %zu bytes: extra piece at %zu: \"%.*s\"", len, start, (int)tlen,
                     s + start);
        assert_int_equal(start, end);
        if (tlen != strlen(want[i]) || memcmp(s + start, want[i], tlen) != 0)
            fail_msg("piece %zu: got \"%.*s\" (%zu bytes), want \"%s\"", i, (int)tlen, s + start,
                     tlen, want[i]);
        assert_int_equal(id, brix_tok_piece_id(s + start, tlen));
        end = start + tlen;
        i++;
    }
    if (want[i])
        fail_msg("missing piece %zu: \"%s\"", i, want[i]);
    assert_int_equal(end, len);
    assert_int_equal(brix_tok_count(s, len), i);
}

#define CHECK(s, ...)                                                                              \
    do {                                                                                           \
        const char *const want_[] = { __VA_ARGS__, NULL };                                         \
        check_pieces_n(s, sizeof(s) - 1, want_);                                                   \
    } while (0)

static void test_words(void **state)
{
    (void)state;
    CHECK("Hello, world!", "Hello", ",", " world", "!");
    CHECK(" Hello", " Hello");
    CHECK("HeLLo World", "HeLLo", " World");
    /* 8-byte pieces; the leading space counts toward the first one. */
    CHECK("internationalization", "internat", "ionaliza", "tion");
    CHECK(" internationalization", " interna", "tionaliz", "ation");
    CHECK("abcdefgh", "abcdefgh");
    CHECK(" abcdefg", " abcdefg");
    CHECK(" abcdefgh", " abcdefg", "h");
    CHECK("don't", "don", "'", "t");
    CHECK("snake_case", "snake", "_", "case");
    CHECK("abc123def", "abc", "123", "def");
}

static void test_numbers(void **state)
{
    (void)state;
    CHECK("12345678", "123", "456", "78");
    CHECK("1", "1");
    CHECK("999", "999");
    CHECK("3.14159", "3", ".", "141", "59");
    /* A space attaches to letters and punctuation only, not to digits. */
    CHECK(" 42", " ", "42");
    CHECK("x 2024-01-02", "x", " ", "202", "4", "-", "01", "-", "02");
}

static void test_line_breaks(void **state)
{
    (void)state;
    CHECK("\n", "\n");
    CHECK("\n\n", "\n\n");
    CHECK("\n\n\n", "\n\n", "\n");
    CHECK("\r\n", "\r\n");
    CHECK("\r\n\r\n", "\r\n\r\n"); /* two CRLFs are two breaks: one token */
    CHECK("\r\n\r\n\r\n", "\r\n\r\n", "\r\n");
    CHECK("\r\r", "\r\r");
    CHECK("\n\r\n", "\n\r\n"); /* "\r\n" is never split */
    CHECK("\r\n\n\r", "\r\n\n", "\r");
    CHECK("a\r\nb", "a", "\r\n", "b");
    CHECK("end.\n\nNext", "end", ".", "\n\n", "Next");
    /* Line breaks take no leading space. */
    CHECK("a \n", "a", " ", "\n");
}

static void test_whitespace(void **state)
{
    (void)state;
    CHECK("a b", "a", " b");
    CHECK("a  b", "a", " ", " b");
    CHECK("a   b", "a", "  ", " b"); /* the example in tokenizer.h */
    CHECK("a    b", "a", "   ", " b");
    CHECK("a     b", "a", "    ", " b");
    CHECK("a      b", "a", "    ", " ", " b");
    CHECK("a         b", "a", "    ", "    ", " b");
    CHECK("          ", "    ", "    ", "  ");
    CHECK("a ", "a", " ");
    CHECK("\tx", "\t", "x"); /* only a space attaches, not a tab */
    CHECK(" \tx", " \t", "x");
    CHECK("\t x", "\t", " x");
    CHECK("\t\t\t\t\t", "\t\t\t\t", "\t");
    CHECK("x  ,", "x", " ", " ,");
    CHECK("  1", "  ", "1");
    /* A space before a special token stays a whitespace token of its own. */
    CHECK(" <|eot_id|>", " ", "<|eot_id|>");
    CHECK("a   <|eot_id|>", "a", "   ", "<|eot_id|>");
    CHECK("a  <b", "a", " ", " <", "b");

    /* A long run: 999 blanks in 4-byte pieces, then the last space joins the word. */
    char big[1002];
    memset(big, ' ', 1000);
    big[1000] = 'b';
    big[1001] = '\0';
    assert_int_equal(brix_tok_count(big, 1001), 249 + 1 + 1);
}

static void test_punctuation_and_controls(void **state)
{
    (void)state;
    CHECK(" (a)", " (", "a", ")");
    CHECK("...", ".", ".", ".");
    CHECK("a, b; c.", "a", ",", " b", ";", " c", ".");
    CHECK("\x01\x7f", "\x01", "\x7f");
    CHECK(" \x7f", " \x7f");
    CHECK("\f\v", "\f", "\v");
    /* NUL is an ordinary control byte: input is counted, not NUL-terminated. */
    static const char nul[] = { 'a', '\0', 'b' };
    assert_int_equal(brix_tok_count(nul, 3), 3);
}

static void test_special_tokens(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint32_t id;
    } fixed[] = {
        { "<|begin_of_text|>", BRIX_TOK_BOS },
        { "<|end_of_text|>", BRIX_TOK_EOS },
        { "<|eot_id|>", BRIX_TOK_EOT },
        { "<|start_header_id|>", BRIX_TOK_START_HEADER },
        { "<|end_header_id|>", BRIX_TOK_END_HEADER },
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        size_t len = strlen(fixed[i].s);
        assert_int_equal(brix_tok_count(fixed[i].s, len), 1);
        assert_int_equal(brix_tok_piece_id(fixed[i].s, len), fixed[i].id);
        brix_tok_iter_t it;
        uint32_t id;
        brix_tok_iter_init(&it, fixed[i].s, len);
        assert_true(brix_tok_next(&it, &id, NULL, NULL));
        assert_int_equal(id, fixed[i].id);
        assert_false(brix_tok_next(&it, &id, NULL, NULL));
    }
    assert_int_equal(BRIX_TOK_BOS, 1);
    assert_int_equal(BRIX_TOK_EOS, 2);
    assert_int_equal(BRIX_TOK_EOT, 3);
    assert_int_equal(BRIX_TOK_START_HEADER, 4);
    assert_int_equal(BRIX_TOK_END_HEADER, 5);

    CHECK("x<|eot_id|>y", "x", "<|eot_id|>", "y");
    CHECK("<|eot_id|><|eot_id|>", "<|eot_id|>", "<|eot_id|>");
    CHECK("<|python_tag|>", "<|python_tag|>");
    CHECK("<|a|>", "<|a|>");
    CHECK("<|reserved_special_token_0|>", "<|reserved_special_token_0|>");
    /* Unknown names hash into [6, 256). */
    uint32_t other = brix_tok_piece_id("<|python_tag|>", 14);
    assert_true(other >= 6 && other < 256);

    /* Not special: empty name, uppercase, unterminated, name too long. */
    CHECK("<||>", "<", "|", "|", ">");
    CHECK("<|Eot|>", "<", "|", "Eot", "|", ">");
    CHECK("<|eot_id|", "<", "|", "eot", "_", "id", "|");
    CHECK("<|eot id|>", "<", "|", "eot", " id", "|", ">");
    CHECK("<|abcdefghijklmnopqrstuvwxyz012345|>", "<|abcdefghijklmnopqrstuvwxyz012345|>");
    CHECK("<|abcdefghijklmnopqrstuvwxyz0123456|>", "<", "|", "abcdefgh", "ijklmnop", "qrstuvwx",
          "yz", "012", "345", "6", "|", ">");
    /* An ordinary piece is never given a special id. */
    assert_true(brix_tok_piece_id("<", 1) >= 256);
}

static void test_utf8(void **state)
{
    (void)state;
    CHECK("\xc3\xa9", "\xc3\xa9");                                     /* é, 2 bytes */
    CHECK("\xe2\x82\xac", "\xe2\x82\xac");                             /* €, 3 bytes */
    CHECK("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");                     /* 😀, 4 bytes */
    CHECK("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf");                     /* U+10FFFF */
    CHECK("\xe6\x97\xa5\xe6\x9c\xac", "\xe6\x97\xa5", "\xe6\x9c\xac"); /* 日本 */
    CHECK("caf\xc3\xa9", "caf", "\xc3\xa9");
    CHECK(" \xc3\xa9", " ", "\xc3\xa9"); /* no space attached to non-ASCII */

    /* Invalid bytes are one token each. */
    CHECK("\xff", "\xff");
    CHECK("\x80\x80", "\x80", "\x80");                         /* stray continuations */
    CHECK("\xc3", "\xc3");                                     /* truncated at the end */
    CHECK("\xc3(", "\xc3", "(");                               /* bad continuation */
    CHECK("\xe2\x82", "\xe2", "\x82");                         /* truncated 3-byte */
    CHECK("\xc0\xaf", "\xc0", "\xaf");                         /* overlong '/' */
    CHECK("\xe0\x80\xaf", "\xe0", "\x80", "\xaf");             /* overlong 3-byte */
    CHECK("\xed\xa0\x80", "\xed", "\xa0", "\x80");             /* surrogate U+D800 */
    CHECK("\xf4\x90\x80\x80", "\xf4", "\x90", "\x80", "\x80"); /* > U+10FFFF */
    CHECK("\xf5\x80", "\xf5", "\x80");
    CHECK("a\xff"
          "b",
          "a", "\xff", "b");
}

static void test_ids_pinned(void **state)
{
    (void)state;
    /* The formula of tokenizer.h, recomputed independently. */
    const char *hello = "Hello";
    uint32_t want = 256 + (uint32_t)(XXH64(hello, 5, 0x62726978u) % (BRIX_TOK_VOCAB - 256));
    assert_int_equal(brix_tok_piece_id(hello, 5), want);
    uint32_t want_special = 6 + (uint32_t)(XXH64("<|python_tag|>", 14, 0x62726978u) % 250);
    assert_int_equal(brix_tok_piece_id("<|python_tag|>", 14), want_special);

    /* Exact values, so a change of seed, modulus or rule is caught. */
    assert_int_equal(brix_tok_piece_id("Hello", 5), PIN_HELLO);
    assert_int_equal(brix_tok_piece_id(" world", 6), PIN_WORLD);
    assert_int_equal(brix_tok_piece_id(",", 1), PIN_COMMA);
    assert_int_equal(brix_tok_piece_id("\n\n", 2), PIN_NLNL);
    assert_int_equal(brix_tok_piece_id(" the", 4), PIN_THE);
    assert_int_equal(brix_tok_piece_id("<|python_tag|>", 14), PIN_PYTHON_TAG);

    static const char text[] = "Hello, world!\n\n";
    static const uint32_t ids_want[] = { PIN_HELLO, PIN_COMMA, PIN_WORLD, PIN_BANG, PIN_NLNL };
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(brix_tokenize(text, sizeof text - 1, &ids, &n, &cap), 0);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], ids_want[i]);
    brix_free(ids);
}

/* The ~4 chars/token property that token budgets and KV sizing assume. */
static void test_prose_ratio(void **state)
{
    (void)state;
    static const char prose[] =
        "The history of the city begins with a small settlement on the northern bank of the "
        "river, where fishermen and traders gathered each spring to exchange goods. Over the "
        "following centuries, the village grew into a busy market town, and its merchants built "
        "warehouses, bridges and a stone church that still stands near the old harbour. During "
        "the industrial period, factories replaced many of the workshops, and the population "
        "doubled within a single generation. Today, visitors walk through narrow streets lined "
        "with cafes and bookshops, while students from the university fill the parks in the "
        "afternoon. Local historians argue that the character of the place comes not from any "
        "single building, but from the way ordinary people have adapted their homes, their "
        "trades and their habits to a changing world.";
    size_t len = sizeof prose - 1;
    size_t n = brix_tok_count(prose, len);
    double ratio = (double)len / (double)n;
    print_message("prose: %zu bytes, %zu tokens, %.2f chars/token\n", len, n, ratio);
    assert_true(ratio >= 3.5);
    assert_true(ratio <= 5.0);
}

static void test_out_vocab(void **state)
{
    (void)state;
    static uint32_t ids[BRIX_TOK_OUT_VOCAB];
    for (uint32_t i = 0; i < BRIX_TOK_OUT_VOCAB; i++) {
        size_t len = 0;
        const char *p = brix_tok_out_piece(i, &len);
        assert_non_null(p);
        assert_true(len > 0 && len <= BRIX_TOK_WORD_PIECE);
        assert_int_equal(len, strlen(p));
        if (brix_tok_count(p, len) != 1)
            fail_msg("out piece %u \"%s\" is %zu tokens", i, p, brix_tok_count(p, len));
        ids[i] = brix_tok_out_id(i);
        assert_int_equal(ids[i], brix_tok_piece_id(p, len));
        assert_true(ids[i] >= 256 && ids[i] < BRIX_TOK_VOCAB);
        for (uint32_t j = 0; j < i; j++) {
            size_t lj;
            const char *q = brix_tok_out_piece(j, &lj);
            if (lj == len && memcmp(p, q, len) == 0)
                fail_msg("duplicate out pieces %u and %u: \"%s\"", j, i, p);
            if (ids[j] == ids[i])
                fail_msg("out pieces %u \"%s\" and %u \"%s\" share id %u", j, q, i, p, ids[i]);
        }
    }
    /* Pieces the engine relies on. */
    size_t len;
    assert_string_equal(brix_tok_out_piece(0, &len), " the");
    int have_comma = 0, have_period = 0, have_nlnl = 0;
    for (uint32_t i = 0; i < BRIX_TOK_OUT_VOCAB; i++) {
        const char *p = brix_tok_out_piece(i, NULL);
        have_comma += strcmp(p, ",") == 0;
        have_period += strcmp(p, ".") == 0;
        have_nlnl += strcmp(p, "\n\n") == 0;
    }
    assert_int_equal(have_comma, 1);
    assert_int_equal(have_period, 1);
    assert_int_equal(have_nlnl, 1);
    assert_null(brix_tok_out_piece(BRIX_TOK_OUT_VOCAB, &len));
}

/*
 * The engine emits text built from out pieces and the gateway re-tokenizes
 * it: every concatenation must split back at the piece boundaries. All pairs
 * cover every adjacency; a long pseudo-random run covers longer contexts
 * (e.g. "\n\n" repeated).
 */
static void test_out_vocab_concat(void **state)
{
    (void)state;
    char buf[2 * BRIX_TOK_WORD_PIECE];
    for (uint32_t i = 0; i < BRIX_TOK_OUT_VOCAB; i++) {
        size_t li;
        const char *pi = brix_tok_out_piece(i, &li);
        memcpy(buf, pi, li);
        for (uint32_t j = 0; j < BRIX_TOK_OUT_VOCAB; j++) {
            size_t lj;
            const char *pj = brix_tok_out_piece(j, &lj);
            memcpy(buf + li, pj, lj);
            brix_tok_iter_t it;
            size_t start, tlen;
            brix_tok_iter_init(&it, buf, li + lj);
            assert_true(brix_tok_next(&it, NULL, &start, &tlen));
            if (tlen != li)
                fail_msg("\"%s\" + \"%s\" does not split between them", pi, pj);
            assert_true(brix_tok_next(&it, NULL, &start, &tlen));
            assert_int_equal(tlen, lj);
            assert_false(brix_tok_next(&it, NULL, &start, &tlen));
        }
    }

    enum { N = 20000 };
    brix_buf_t text = BRIX_BUF_INIT;
    uint32_t *want = brix_malloc(N * sizeof *want);
    assert_non_null(want);
    uint64_t x = 88172645463325252ull;
    for (size_t k = 0; k < N; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint32_t idx = (uint32_t)(x % BRIX_TOK_OUT_VOCAB);
        if (k % 50 < 5)
            idx = 40; /* runs of "\n\n" */
        size_t len;
        const char *p = brix_tok_out_piece(idx, &len);
        assert_int_equal(brix_buf_append(&text, p, len), 0);
        want[k] = brix_tok_out_id(idx);
    }
    assert_string_equal(brix_tok_out_piece(40, NULL), "\n\n");
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(brix_tokenize(text.data, text.len, &ids, &n, &cap), 0);
    assert_int_equal(n, N);
    assert_memory_equal(ids, want, N * sizeof *want);
    brix_free(ids);
    brix_free(want);
    brix_buf_free(&text);
}

/*
 * Random bytes drawn from an alphabet that hits every rule and boundary:
 * pieces tile the input, are at most 36 bytes, re-tokenize alone as one
 * token with the same id, never get id 0, and count == tokenize length.
 */
static void test_fuzz_invariants(void **state)
{
    (void)state;
    static const char alphabet[] =
        "aZ q9 0\t\r\n<|>_e,.!\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xff\x80";
    char s[512];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(round % 300);
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s[i] = alphabet[x % (sizeof alphabet - 1)];
        }
        /* Sprinkle well-formed special tokens in. */
        if (round % 3 == 0 && len > 20)
            memcpy(s + len / 2, "<|eot_id|>", 10);

        uint32_t *ids = NULL;
        size_t n = 0, cap = 0;
        assert_int_equal(brix_tokenize(s, len, &ids, &n, &cap), 0);
        assert_int_equal(n, brix_tok_count(s, len));

        brix_tok_iter_t it;
        uint32_t id;
        size_t start, tlen, end = 0, k = 0;
        brix_tok_iter_init(&it, s, len);
        while (brix_tok_next(&it, &id, &start, &tlen)) {
            assert_int_equal(start, end);
            assert_true(tlen >= 1 && tlen <= 36);
            assert_int_not_equal(id, 0);
            assert_true(id < BRIX_TOK_VOCAB);
            assert_int_equal(id, ids[k]);
            assert_int_equal(brix_tok_count(s + start, tlen), 1);
            end = start + tlen;
            k++;
        }
        assert_int_equal(end, len);
        assert_int_equal(k, n);

        /* Appending a second time doubles the array and repeats the ids. */
        assert_int_equal(brix_tokenize(s, len, &ids, &n, &cap), 0);
        assert_int_equal(n, 2 * k);
        if (k)
            assert_memory_equal(ids, ids + k, k * sizeof *ids);
        brix_free(ids);
    }
}

static void test_iter_optional_outputs_and_empty(void **state)
{
    (void)state;
    brix_tok_iter_t it;
    brix_tok_iter_init(&it, "", 0);
    assert_false(brix_tok_next(&it, NULL, NULL, NULL));
    assert_int_equal(brix_tok_count("", 0), 0);
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(brix_tokenize("", 0, &ids, &n, &cap), 0);
    assert_null(ids);
    assert_int_equal(n, 0);

    brix_tok_iter_init(&it, "a b", 3);
    size_t k = 0;
    while (brix_tok_next(&it, NULL, NULL, NULL))
        k++;
    assert_int_equal(k, 2);
}

static void test_chat_template(void **state)
{
    (void)state;
    brix_buf_t b = BRIX_BUF_INIT;
    static const char sys[] = "You are terse.";
    static const char user[] = "Hi!";
    assert_int_equal(brix_chat_render_begin(&b), 0);
    assert_int_equal(brix_chat_render_message(&b, "system", sys, sizeof sys - 1), 0);
    assert_int_equal(brix_chat_render_message(&b, "user", user, sizeof user - 1), 0);
    assert_int_equal(brix_chat_render_end(&b, true), 0);
    static const char want[] =
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(b.data, want, b.len);

    CHECK("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
          "<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\n\n", "Hi",
          "!", "<|eot_id|>");

    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(brix_tokenize(b.data, b.len, &ids, &n, &cap), 0);
    /* BOS; per message start, role, end, "\n\n", content, eot; then start,
     * "assistan" "t" (9 letters is two word pieces), end, "\n\n". */
    assert_int_equal(n, 1 + (5 + 4) + (5 + 2) + 5);
    assert_int_equal(ids[0], BRIX_TOK_BOS);
    assert_int_equal(ids[1], BRIX_TOK_START_HEADER);
    assert_int_equal(ids[3], BRIX_TOK_END_HEADER);
    assert_int_equal(ids[9], BRIX_TOK_EOT);
    assert_int_equal(ids[n - 1], brix_tok_piece_id("\n\n", 2));
    brix_free(ids);

    /* Without a generation prompt nothing is appended; empty content is fine. */
    size_t before = b.len;
    assert_int_equal(brix_chat_render_end(&b, false), 0);
    assert_int_equal(b.len, before);
    assert_int_equal(brix_chat_render_message(&b, "assistant", NULL, 0), 0);
    static const char empty_msg[] = "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>";
    assert_int_equal(b.len, before + sizeof empty_msg - 1);
    assert_memory_equal(b.data + before, empty_msg, sizeof empty_msg - 1);
    brix_buf_free(&b);
}

/* The reverse map the engine uses for every generated token. */
static void test_out_index(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < BRIX_TOK_OUT_VOCAB; i++)
        assert_int_equal(brix_tok_out_index(brix_tok_out_id(i)), (int)i);
    assert_int_equal(brix_tok_out_index(BRIX_TOK_EOS), -1);
    assert_int_equal(brix_tok_out_index(brix_tok_piece_id("Hello", 5)), -1);
    int misses = 0;
    for (uint32_t id = 0; id < 100000; id += 7)
        misses += brix_tok_out_index(id) < 0;
    assert_true(misses > 14000);
    assert_int_equal(brix_tok_out_id(BRIX_TOK_OUT_VOCAB), 0);
}

static void test_enomem(void **state)
{
    (void)state;
    static const char text[] = "Hello, world! This is a test.";
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;

    brix_alloc_fail_after(0);
    assert_int_equal(brix_tokenize(text, sizeof text - 1, &ids, &n, &cap), -ENOMEM);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_int_equal(cap, 0);

    assert_int_equal(brix_tokenize(text, sizeof text - 1, &ids, &n, &cap), 0);
    size_t first = n;
    assert_true(first > 0);
    uint32_t saved[64];
    memcpy(saved, ids, first * sizeof *ids);

    /* A failed append leaves the earlier ids and the count untouched. */
    brix_alloc_fail_after(0);
    assert_int_equal(brix_tokenize(text, sizeof text - 1, &ids, &n, &cap), -ENOMEM);
    assert_int_equal(n, first);
    assert_memory_equal(ids, saved, first * sizeof *ids);
    brix_free(ids);

    /* Chat rendering is all-or-nothing per call. */
    brix_buf_t b = BRIX_BUF_INIT;
    brix_alloc_fail_after(0);
    assert_int_equal(brix_chat_render_begin(&b), -ENOMEM);
    assert_int_equal(b.len, 0);
    assert_int_equal(brix_chat_render_begin(&b), 0);
    size_t len = b.len;
    static char big[4096];
    memset(big, 'x', sizeof big);
    brix_alloc_fail_after(0);
    assert_int_equal(brix_chat_render_message(&b, "user", big, sizeof big), -ENOMEM);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, "<|begin_of_text|>", len);
    /* The generation prompt does not fit in the first 64-byte block. */
    assert_true(b.cap < b.len + 48);
    brix_alloc_fail_after(0);
    assert_int_equal(brix_chat_render_end(&b, true), -ENOMEM);
    assert_int_equal(b.len, len);
    brix_buf_free(&b);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_words, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_out_index, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_numbers, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_line_breaks, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_whitespace, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_punctuation_and_controls, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_special_tokens, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_utf8, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_ids_pinned, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_prose_ratio, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_out_vocab, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_out_vocab_concat, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_fuzz_invariants, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_iter_optional_outputs_and_empty, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_chat_template, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_enomem, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
