/*
 * tokenizer — the deterministic pre-tokenizer rule of tokenizer.h, plus the
 * Llama-3 style chat template and the engine's output vocabulary.
 *
 * Design: brix_tok_next() classifies the byte at the cursor and returns the
 * piece that starts there. Every piece is at most 36 bytes long (a special
 * token) and every decision reads at most 40 bytes ahead, so the iterator is
 * O(1) per token with no allocation and no state beyond the cursor. Whitespace
 * runs are the one place where a greedy cut seems to need the end of the run
 * (its last space may belong to the next word); peeking one byte past a
 * 4-byte piece turns out to be enough (see whitespace_len).
 *
 * Ids are a pure function of the piece bytes (xxh64, seed "brix"), so the
 * gateway and the engine need no shared vocabulary file to agree on them.
 */
#include "core/tokenizer.h"

#include "core/alloc.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <xxhash.h>

#define TOK_SEED            0x62726978u /* "brix" */
#define TOK_SPECIAL_MAX     32          /* longest special-token name */
#define TOK_SPECIAL_HASHED  6           /* first id given to unnamed special tokens */
#define TOK_FIRST_ORDINARY  256         /* ids below are reserved for special tokens */
#define TOK_DIGIT_GROUP     3
#define TOK_BLANK_PIECE     4
#define TOK_MAX_LINE_BREAKS 2

/*
 * Special tokens with fixed ids. Any other well-formed "<|name|>" gets a
 * hashed id in [TOK_SPECIAL_HASHED, TOK_FIRST_ORDINARY); id 0 is never
 * produced, so callers may use it as "no token". Append only: an id, once
 * given, is part of every stored prefix hash.
 */
static const struct {
    const char *text;
    uint32_t id;
} special_tokens[] = {
    { "<|begin_of_text|>", BRIX_TOK_BOS },
    { "<|end_of_text|>", BRIX_TOK_EOS },
    { "<|eot_id|>", BRIX_TOK_EOT },
    { "<|start_header_id|>", BRIX_TOK_START_HEADER },
    { "<|end_header_id|>", BRIX_TOK_END_HEADER },
};

/* ---- byte classes ------------------------------------------------------ */

static inline bool is_letter(unsigned char c)
{
    return (unsigned char)((c | 0x20) - 'a') < 26;
}

static inline bool is_digit(unsigned char c)
{
    return (unsigned char)(c - '0') < 10;
}

static inline bool is_blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static inline bool is_line_break(unsigned char c)
{
    return c == '\n' || c == '\r';
}

static inline bool is_special_name_char(unsigned char c)
{
    return (unsigned char)(c - 'a') < 26 || is_digit(c) || c == '_';
}

/* Rule 6: the ASCII bytes no other rule claims (punctuation and controls). */
static inline bool is_other_ascii(unsigned char c)
{
    return c < 0x80 && !is_letter(c) && !is_digit(c) && !is_blank(c) && !is_line_break(c);
}

/* ---- piece boundaries -------------------------------------------------- */

/* Length of the special token at s, or 0 if s does not start with one. */
static size_t special_len(const unsigned char *s, size_t n)
{
    if (n < 5 || s[0] != '<' || s[1] != '|')
        return 0;
    size_t i = 2;
    while (i < n && i - 2 < TOK_SPECIAL_MAX && is_special_name_char(s[i]))
        i++;
    /* A 33rd name char leaves s[i] != '|', so over-long names are rejected. */
    if (i == 2 || n - i < 2 || s[i] != '|' || s[i + 1] != '>')
        return 0;
    return i + 2;
}

/*
 * Whether a space just before s is taken by the token at s (rules 2, 5, 6).
 * A special token never takes one: it must stay byte-identical to its
 * name so that template markers always get their fixed ids.
 */
static bool takes_leading_space(const unsigned char *s, size_t n)
{
    if (is_letter(s[0]))
        return true;
    return is_other_ascii(s[0]) && special_len(s, n) == 0;
}

static size_t letters_len(const unsigned char *s, size_t n, size_t max)
{
    size_t i = 0;
    while (i < n && i < max && is_letter(s[i]))
        i++;
    return i;
}

/* Up to TOK_MAX_LINE_BREAKS breaks; "\r\n" is tested first so it is never split. */
static size_t line_breaks_len(const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (int breaks = 0; breaks < TOK_MAX_LINE_BREAKS && i < n; breaks++) {
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i += 2;
        else if (is_line_break(s[i]))
            i++;
        else
            break;
    }
    return i;
}

/*
 * A run of spaces/tabs is cut into TOK_BLANK_PIECE-byte pieces from the left,
 * after removing its last byte if that is a space the following token takes.
 * Looking at one piece and the byte after it is enough to cut as if the whole
 * run had been measured: if the run goes on past this piece, that byte is a
 * blank, which takes no space, so the piece is full length whatever follows
 * later. Measuring the run instead would make long runs quadratic.
 */
static size_t whitespace_len(const unsigned char *s, size_t n)
{
    size_t r = 0;
    while (r < n && r < TOK_BLANK_PIECE && is_blank(s[r]))
        r++;
    /* r == 1 with an attaching space never gets here: the caller took it. */
    if (r > 1 && s[r - 1] == ' ' && r < n && takes_leading_space(s + r, n - r))
        return r - 1;
    return r;
}

/*
 * Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 1 if it is not one, so an invalid
 * or truncated sequence yields one token per byte.
 */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t k;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 1; /* continuation byte, C0/C1, F5..FF */
    }
    if (n < k || s[1] < lo || s[1] > hi)
        return 1;
    for (size_t i = 2; i < k; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 1;
    return k;
}

/* Length of the piece starting at s (n >= 1): the rules of tokenizer.h in order. */
static size_t piece_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c == '<') {
        size_t k = special_len(s, n);
        return k ? k : 1; /* a lone '<' is rule 6 */
    }
    if (c == ' ' && n > 1 && takes_leading_space(s + 1, n - 1)) {
        if (is_letter(s[1])) /* the space counts toward the 8-byte piece */
            return 1 + letters_len(s + 1, n - 1, BRIX_TOK_WORD_PIECE - 1);
        return 2;
    }
    if (is_letter(c))
        return letters_len(s, n, BRIX_TOK_WORD_PIECE);
    if (is_digit(c)) {
        size_t i = 1;
        while (i < n && i < TOK_DIGIT_GROUP && is_digit(s[i]))
            i++;
        return i;
    }
    if (is_line_break(c))
        return line_breaks_len(s, n);
    if (is_blank(c))
        return whitespace_len(s, n);
    if (c < 0x80)
        return 1;
    return utf8_len(s, n);
}

/* ---- ids --------------------------------------------------------------- */

uint32_t brix_tok_piece_id(const char *piece, size_t len)
{
    const unsigned char *p = (const unsigned char *)piece;
    if (len >= 5 && special_len(p, len) == len) {
        for (size_t i = 0; i < sizeof special_tokens / sizeof special_tokens[0]; i++)
            if (strlen(special_tokens[i].text) == len &&
                memcmp(special_tokens[i].text, piece, len) == 0)
                return special_tokens[i].id;
        return TOK_SPECIAL_HASHED +
               (uint32_t)(XXH64(piece, len, TOK_SEED) % (TOK_FIRST_ORDINARY - TOK_SPECIAL_HASHED));
    }
    return TOK_FIRST_ORDINARY +
           (uint32_t)(XXH64(piece, len, TOK_SEED) % (BRIX_TOK_VOCAB - TOK_FIRST_ORDINARY));
}

/* ---- iteration --------------------------------------------------------- */

void brix_tok_iter_init(brix_tok_iter_t *it, const char *s, size_t len)
{
    it->s = s;
    it->len = len;
    it->pos = 0;
}

/*
 * Ids of short pieces through a per-thread direct-mapped cache: natural
 * text repeats its words, and a hit (a multiply and a compare) costs a few
 * nanoseconds where hashing the piece costs tens. The ids are those of
 * brix_tok_piece_id, so caching changes nothing but speed.
 */
#define ID_CACHE 4096
typedef struct id_slot {
    uint64_t key; /* the piece's bytes, zero-padded; 0 = empty (no piece is 8 NULs) */
    uint32_t len;
    uint32_t id;
} id_slot_t;

static uint32_t cached_piece_id(const char *p, size_t k)
{
    static _Thread_local id_slot_t cache[ID_CACHE];
    if (k > 8)
        return brix_tok_piece_id(p, k);
    uint64_t key = 0;
    memcpy(&key, p, k);
    uint32_t slot = (uint32_t)(((key ^ k) * 0x9e3779b97f4a7c15ull) >> 52) & (ID_CACHE - 1);
    id_slot_t *s = &cache[slot];
    if (s->key == key && s->len == k && key)
        return s->id;
    uint32_t id = brix_tok_piece_id(p, k);
    s->key = key;
    s->len = (uint32_t)k;
    s->id = id;
    return id;
}

bool brix_tok_next(brix_tok_iter_t *it, uint32_t *id, size_t *start, size_t *tlen)
{
    if (it->pos >= it->len)
        return false;
    const char *p = it->s + it->pos;
    size_t k = piece_len((const unsigned char *)p, it->len - it->pos);
    if (id)
        *id = cached_piece_id(p, k);
    if (start)
        *start = it->pos;
    if (tlen)
        *tlen = k;
    it->pos += k;
    return true;
}

size_t brix_tok_count(const char *s, size_t len)
{
    /* Boundaries only: counting needs no hashing. */
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    for (size_t pos = 0; pos < len; n++)
        pos += piece_len(p + pos, len - pos);
    return n;
}

int brix_tokenize(const char *s, size_t len, uint32_t **ids, size_t *n, size_t *cap)
{
    /*
     * Count first and grow once: the counting pass is cheap next to hashing,
     * and it makes failure atomic (nothing is appended on -ENOMEM). The
     * capacity at least doubles so that repeated appends stay amortised O(1).
     */
    const size_t max_ids = SIZE_MAX / sizeof(uint32_t);
    size_t count = brix_tok_count(s, len);
    if (*n > max_ids || count > max_ids - *n)
        return -ENOMEM;
    size_t need = *n + count;
    if (need > *cap) {
        size_t ncap = *cap <= max_ids / 2 ? *cap * 2 : need;
        if (ncap < need)
            ncap = need;
        uint32_t *grown = brix_realloc(*ids, ncap * sizeof(uint32_t));
        if (!grown)
            return -ENOMEM;
        *ids = grown;
        *cap = ncap;
    }
    brix_tok_iter_t it;
    brix_tok_iter_init(&it, s, len);
    uint32_t id;
    while (brix_tok_next(&it, &id, NULL, NULL))
        (*ids)[(*n)++] = id;
    return 0;
}

/* ---- chat template ----------------------------------------------------- */

#define LIT(s) s, sizeof(s) - 1

static const char TPL_BOS[] = "<|begin_of_text|>";
static const char TPL_START[] = "<|start_header_id|>";
static const char TPL_END[] = "<|end_header_id|>\n\n";
static const char TPL_EOT[] = "<|eot_id|>";
static const char TPL_ASSISTANT[] = "assistant";

/*
 * Each function reserves its whole output first, so the appends after it
 * cannot fail and a -ENOMEM leaves the buffer as it was: a half-rendered
 * message would tokenize to a different prompt.
 */
int brix_chat_render_begin(brix_buf_t *out)
{
    return brix_buf_append(out, LIT(TPL_BOS));
}

int brix_chat_render_message(brix_buf_t *out, const char *role, const char *content,
                             size_t content_len)
{
    size_t role_len = strlen(role);
    size_t fixed = sizeof TPL_START - 1 + sizeof TPL_END - 1 + sizeof TPL_EOT - 1;
    if (content_len > SIZE_MAX - fixed - role_len)
        return -ENOMEM;
    if (brix_buf_reserve(out, fixed + role_len + content_len))
        return -ENOMEM;
    (void)brix_buf_append(out, LIT(TPL_START));
    (void)brix_buf_append(out, role, role_len);
    (void)brix_buf_append(out, LIT(TPL_END));
    (void)brix_buf_append(out, content, content_len);
    (void)brix_buf_append(out, LIT(TPL_EOT));
    return 0;
}

int brix_chat_render_end(brix_buf_t *out, bool add_generation_prompt)
{
    if (!add_generation_prompt)
        return 0;
    size_t total = sizeof TPL_START - 1 + sizeof TPL_ASSISTANT - 1 + sizeof TPL_END - 1;
    if (brix_buf_reserve(out, total))
        return -ENOMEM;
    (void)brix_buf_append(out, LIT(TPL_START));
    (void)brix_buf_append(out, LIT(TPL_ASSISTANT));
    (void)brix_buf_append(out, LIT(TPL_END));
    return 0;
}

/* ---- output vocabulary ------------------------------------------------- */

/*
 * Common English pieces, roughly most frequent first so that a caller may
 * sample a Zipf-like distribution by index. Each word has a leading space
 * and at most 7 letters (8 bytes with the space, BRIX_TOK_WORD_PIECE), so it
 * is one token; every piece starts with a space, is a lone punctuation byte
 * or is "\n\n", so no two pieces merge when concatenated. The ids are all
 * distinct too (tested). Edit with care: changing an entry changes the text
 * the engine generates for a given seed.
 */
static const char *const out_pieces[BRIX_TOK_OUT_VOCAB] = {
    " the",     ",",        ".",        " of",      " and",     " to",      " a",       " in",
    " is",      " that",    " for",     " it",      " as",      " with",    " was",     " on",
    " be",      " by",      " this",    " are",     " or",      " from",    " I",       " at",
    " an",      " which",   " can",     " not",     " have",    " but",     " also",    " has",
    " more",    " its",     " their",   " these",   " they",    " will",    " other",   " such",
    "\n\n",     " one",     " all",     " been",    " than",    " were",    " may",     " use",
    " used",    " some",    " most",    " into",    " when",    " each",    " two",     " only",
    " there",   " we",      " what",    " how",     " you",     " your",    " data",    " model",
    " system",  " time",    " first",   " new",     " many",    " would",   " about",   " so",
    " if",      " then",    " them",    " any",     " our",     " out",     " up",      " like",
    " make",    " way",     " well",    " just",    " over",    " both",    " where",   " between",
    " through", " after",   ":",        " very",    " he",      " she",     " his",     " her",
    " who",     " do",      " does",    " did",     " could",   " should",  " because", " while",
    " same",    " those",   " must",    " here",    " even",    " much",    " work",    " number",
    " part",    " being",   " high",    " three",   " within",  " however", " without", " during",
    " under",   " good",    " before",  " own",     " large",   " example", " since",   " process",
    " set",     " order",   " form",    " point",   " case",    " help",    " take",    " provide",
    " often",   " based",   " small",   " long",    "?",        " world",   " life",    " people",
    " year",    " need",    " known",   " results", " group",   " using",   " general", " given",
    " allow",   " value",   " state",   " level",   " type",    " include", " end",     " user",
    " users",   " power",   " several", " change",  " control", " local",   " area",    " support",
    " early",   " right",   " term",    " common",  " second",  " short",   " access",  " single",
    " fact",    " low",     " certain", " total",   " further", " real",    " free",    " full",
    " current", " key",     " place",   " human",   " range",   " rate",    " best",    " less",
    " open",    " public",  " found",   " run",     " design",  " code",    " source",  " simple",
    ";",        " test",    " problem", " text",    " input",   " output",  " memory",  " request",
    " cost",    " load",    " server",  " client",  " token",   " tokens",  " cache",   " batch",
    " queue",   " table",   " file",    " files",   " list",    " line",    " lines",   " word",
    " words",   " answer",  " thing",   " things",  " idea",    " ideas",   " reason",  " result",
    " method",  " methods", " step",    " steps",   " task",    " tasks",   " goal",    " goals",
    " class",   " types",   " field",   " values",  " store",   " read",    " write",   " send",
    " receive", " check",   " build",   " start",   " stop",    " keep",    " add",     " remove",
    " create",  " delete",  " update",  " find",    "!",        " show",    " give",    " look",
    " seem",    " feel",    " try",     " call",    " ask",     " tell",    " think",   " know",
    " want",    " mean",    " become",  " leave",   " put",     " bring",   " begin",   " turn",
    " move",    " live",    " hold",    " stand",   " meet",    " learn",   " lead",    " follow",
    " act",     " play",    " hear",    " let",     " offer",   " grow",    " walk",    " win",
    " spend",   " talk",    " serve",   " expect",  " stay",    " reach",   " pass",    " decide",
    " return",  " explain", " hope",    " develop", " carry",   " break",   " agree",   " produce",
    " cover",   " draw",    " choose",  " cause",   " listen",  " realize", " close",   " involve",
    " wait",    " remain",  " sign",    " report",  " apply",   " save",    " plan",    " finish",
    " share",   " compare", " accept",  " prepare", " protect", " measure", " enter",   " fill",
    " join",    " focus",   " note",    " age",     " ago",     " air",     " back",    " bad",
    " base",    " bit",     " body",    " book",    " city",    " day",     " eye",     " face",
    " us",      " game",    " hand",    " head",    " home",    " hour",    " job",     " kind",
    " land",    " law",     " man",     " mind",    " moment",  " money",   " month",   " name",
    " night",   " office",  " others",  " past",    " person",  " picture", " price",   " program",
    " room",    " school",  " side",    " sound",   " story",   " student", " study",   " team",
    " water",   " week",    " paper",   " health",  " history", " family",  " friend",  " force",
    " issue",   " market",  " member",  " service", " society", " country", " company", " course",
    " effect",  " energy",  " policy",  " voice",   " account", " action",  " amount",  " art",
    " black",   " blue",    " board",   " card",    " care",    " center",  " chance",  " choice",
    " color",   " red",     " green",   " white",   " young",   " old",     " great",   " little",
    " big",     " next",    " late",    " able",    " last",    " hard",    " major",   " better",
    " sure",    " clear",   " whole",   " recent",  " strong",  " true",    " special", " main",
    " final",   " nice",    " social",  " left",    " wrong",   " fine",    " deep",    " happy",
    " easy",    " basic",   " wide",    " safe",    " quick",   " slow",    " quiet",   " ready",
    " fast",    " near",    " far",     " above",   " below",   " across",  " again",   " against",
    " almost",  " already", " always",  " among",   " around",  " away",    " behind",  " beyond",
    " down",    " else",    " enough",  " ever",    " forward", " inside",  " instead", " later",
    " likely",  " maybe",   " never",   " now",     " once",    " perhaps", " quite",   " rather",
    " really",  " soon",    " still",   " though",  " thus",    " today",   " too",     " until",
    " usually", " whether", " yet",     " yes",     " no",      " nor",     " why",     " whose",
    " another", " anyone",  " either",  " every",   " none",    " my",      " me",      " him",
};

const char *brix_tok_out_piece(uint32_t idx, size_t *len)
{
    if (idx >= BRIX_TOK_OUT_VOCAB)
        return NULL;
    if (len)
        *len = strlen(out_pieces[idx]);
    return out_pieces[idx];
}

/* Ids of the output pieces and the reverse map id -> index, built once: the
 * engine converts every generated token, so this must not hash per call. */
#define OUT_MAP_SIZE 2048 /* power of two, 4x the vocabulary */
static uint32_t out_ids[BRIX_TOK_OUT_VOCAB];
static int16_t out_map[OUT_MAP_SIZE]; /* index + 1, 0 = empty */
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static void out_init(void)
{
    for (uint32_t i = 0; i < BRIX_TOK_OUT_VOCAB; i++) {
        out_ids[i] = brix_tok_piece_id(out_pieces[i], strlen(out_pieces[i]));
        uint32_t h = (out_ids[i] * 2654435761u) & (OUT_MAP_SIZE - 1);
        while (out_map[h])
            h = (h + 1) & (OUT_MAP_SIZE - 1);
        out_map[h] = (int16_t)(i + 1);
    }
}

uint32_t brix_tok_out_id(uint32_t idx)
{
    if (idx >= BRIX_TOK_OUT_VOCAB)
        return 0;
    pthread_once(&out_once, out_init);
    return out_ids[idx];
}

int brix_tok_out_index(uint32_t id)
{
    pthread_once(&out_once, out_init);
    for (uint32_t h = (id * 2654435761u) & (OUT_MAP_SIZE - 1); out_map[h];
         h = (h + 1) & (OUT_MAP_SIZE - 1)) {
        if (out_ids[out_map[h] - 1] == id)
            return out_map[h] - 1;
    }
    return -1;
}
