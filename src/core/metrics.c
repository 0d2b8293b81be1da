/*
 * metrics — Prometheus registry/writer and a resumable text-format parser.
 *
 * Values live in C11 atomics: counters, gauges and histogram sums are doubles
 * stored as their bit pattern in an _Atomic uint64_t and updated with a CAS
 * loop; histogram buckets are per-bucket (non-cumulative) atomic counts, so an
 * observation touches one bucket and the sum; the writer accumulates them and
 * derives _count from the buckets, so +Inf always equals _count in one scrape.
 *
 * Children are found through a per-family chained hash table keyed by an
 * FNV-1a hash of the label values (load factor <= 1, doubled on growth), so
 * brix_metric_child is O(total label length) amortised plus one uncontended
 * mutex; callers on hot paths cache the child pointer anyway. Children also
 * form an append-only list in creation order, which is the exposition order.
 *
 * Locks: the registry mutex guards the family and hook lists; each family's
 * mutex guards its children (creation, clear, and the writer while it prints
 * that family). Order is registry -> family. A separate write mutex
 * serialises brix_metrics_write so collect hooks never run concurrently.
 *
 * The parser copies each line into its buffer (bounded by max_line), then
 * parses it in place: names and unescaped label values are NUL-terminated
 * inside the buffer, so no per-sample allocation. Numbers go through strtod,
 * which assumes the "C" numeric locale (brix never calls setlocale).
 */
#include "core/metrics.h"

#include "core/alloc.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MAX_LINE 16384

struct brix_metric {
    brix_metric_t *next;  /* creation order; written under the family mutex */
    brix_metric_t *hnext; /* hash chain */
    uint64_t hash;
    brix_metric_family_t *family;
    char **values;              /* family->nlabels label values, in this allocation */
    _Atomic uint64_t bits;      /* double: counter/gauge value, histogram sum */
    _Atomic uint64_t buckets[]; /* histogram: nbuckets + 1 (last is +Inf) */
};

struct brix_metric_family {
    brix_metric_family_t *next; /* registration order */
    brix_metric_type_t type;
    char *name;
    char *help;
    char **label_names;
    size_t nlabels;
    double *bounds; /* finite bucket bounds, ascending */
    size_t nbuckets;
    pthread_mutex_t mu;
    brix_metric_t *head, *tail;
    size_t nchildren;
    brix_metric_t **table; /* tcap slots, power of two; NULL until needed */
    size_t tcap;
    brix_metrics_t *reg;      /* for its child cap */
    brix_metric_t *other;     /* the overflow child (every label "other"), once made */
    _Atomic uint64_t dropped; /* lookups of new label sets past the cap */
};

typedef struct hook {
    struct hook *next;
    brix_metrics_collect_fn fn;
    void *ud;
} hook_t;

struct brix_metrics {
    _Atomic size_t max_children; /* per labelled family; 0 = no cap */
    pthread_mutex_t mu;          /* families, hooks */
    pthread_mutex_t write_mu;    /* one brix_metrics_write at a time */
    brix_metric_family_t *families, *families_tail;
    hook_t *hooks, *hooks_tail;
};

/* ---- atomics on doubles ---- */

static uint64_t d2bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits2d(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, d2bits(bits2d(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- names ---- */

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (const char *c = s; *c; c++) {
        bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' || *c == ':';
        if (!alpha && !(c > s && *c >= '0' && *c <= '9'))
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    /* Names starting with "__" are reserved for Prometheus itself. */
    if (!valid_metric_name(s) || strchr(s, ':') || (s[0] == '_' && s[1] == '_'))
        return false;
    return true;
}

/* ---- registry ---- */

brix_metrics_t *brix_metrics_new(void)
{
    brix_metrics_t *r = brix_calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (pthread_mutex_init(&r->mu, NULL)) {
        brix_free(r);
        return NULL;
    }
    if (pthread_mutex_init(&r->write_mu, NULL)) {
        pthread_mutex_destroy(&r->mu);
        brix_free(r);
        return NULL;
    }
    atomic_init(&r->max_children, BRIX_METRICS_MAX_CHILDREN);
    return r;
}

void brix_metrics_set_max_children(brix_metrics_t *r, size_t max)
{
    atomic_store_explicit(&r->max_children, max, memory_order_relaxed);
}

static void free_children(brix_metric_family_t *f)
{
    brix_metric_t *m = f->head;
    while (m) {
        brix_metric_t *next = m->next;
        brix_free(m);
        m = next;
    }
    f->head = f->tail = NULL;
    f->other = NULL;
    f->nchildren = 0;
    if (f->table)
        memset(f->table, 0, f->tcap * sizeof *f->table);
}

static void family_free(brix_metric_family_t *f)
{
    if (!f)
        return;
    free_children(f);
    brix_free(f->table);
    for (size_t i = 0; f->label_names && i < f->nlabels; i++)
        brix_free(f->label_names[i]);
    brix_free(f->label_names);
    brix_free(f->bounds);
    brix_free(f->name);
    brix_free(f->help);
    brix_free(f);
}

void brix_metrics_free(brix_metrics_t *r)
{
    if (!r)
        return;
    brix_metric_family_t *f = r->families;
    while (f) {
        brix_metric_family_t *next = f->next;
        pthread_mutex_destroy(&f->mu);
        family_free(f);
        f = next;
    }
    hook_t *h = r->hooks;
    while (h) {
        hook_t *next = h->next;
        brix_free(h);
        h = next;
    }
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->write_mu);
    brix_free(r);
}

/* Validates and copies everything but the mutex; NULL on ENOMEM or bad input. */
static brix_metric_family_t *family_build(brix_metric_type_t type, const char *name,
                                          const char *help, const char *const *label_names,
                                          const double *buckets, size_t nbuckets)
{
    if (!valid_metric_name(name) || (int)type < (int)BRIX_METRIC_COUNTER ||
        (int)type > (int)BRIX_METRIC_HISTOGRAM)
        return NULL;
    size_t nlabels = 0;
    if (label_names) {
        for (; label_names[nlabels]; nlabels++) {
            if (!valid_label_name(label_names[nlabels]))
                return NULL;
            if (type == BRIX_METRIC_HISTOGRAM && !strcmp(label_names[nlabels], "le"))
                return NULL;
            for (size_t j = 0; j < nlabels; j++)
                if (!strcmp(label_names[j], label_names[nlabels]))
                    return NULL;
        }
    }
    if (type != BRIX_METRIC_HISTOGRAM)
        nbuckets = 0;
    /* A trailing +Inf is implied; accept it if the caller spelled it out. */
    if (nbuckets && buckets[nbuckets - 1] == INFINITY)
        nbuckets--;
    for (size_t i = 0; i < nbuckets; i++) {
        if (!isfinite(buckets[i]) || (i && !(buckets[i] > buckets[i - 1])))
            return NULL;
    }

    brix_metric_family_t *f = brix_calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->type = type;
    f->nlabels = nlabels;
    f->nbuckets = nbuckets;
    if (!(f->name = brix_strdup(name)) || !(f->help = brix_strdup(help ? help : "")))
        goto fail;
    if (nlabels) {
        if (!(f->label_names = brix_calloc(nlabels, sizeof *f->label_names)))
            goto fail;
        for (size_t i = 0; i < nlabels; i++)
            if (!(f->label_names[i] = brix_strdup(label_names[i])))
                goto fail;
    }
    if (nbuckets) {
        if (!(f->bounds = brix_malloc(nbuckets * sizeof *f->bounds)))
            goto fail;
        memcpy(f->bounds, buckets, nbuckets * sizeof *f->bounds);
    }
    return f;
fail:
    family_free(f);
    return NULL;
}

brix_metric_family_t *brix_metrics_family(brix_metrics_t *r, brix_metric_type_t type,
                                          const char *name, const char *help,
                                          const char *const *label_names, const double *buckets,
                                          size_t nbuckets)
{
    brix_metric_family_t *f = family_build(type, name, help, label_names, buckets, nbuckets);
    if (!f)
        return NULL;
    if (pthread_mutex_init(&f->mu, NULL)) {
        family_free(f);
        return NULL;
    }
    f->reg = r;
    /* An unlabelled family always exposes its one child, zero until updated
     * (as prometheus_client does), so create it now. */
    if (f->nlabels == 0 && !brix_metric_child(f, NULL))
        goto fail;

    pthread_mutex_lock(&r->mu);
    for (brix_metric_family_t *g = r->families; g; g = g->next) {
        if (!strcmp(g->name, f->name)) {
            pthread_mutex_unlock(&r->mu);
            goto fail;
        }
    }
    if (r->families_tail)
        r->families_tail->next = f;
    else
        r->families = f;
    r->families_tail = f;
    pthread_mutex_unlock(&r->mu);
    return f;
fail:
    pthread_mutex_destroy(&f->mu);
    family_free(f);
    return NULL;
}

/* ---- children ---- */

static uint64_t hash_values(const char *const *values, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *c = (const unsigned char *)values[i]; *c; c++) {
            h ^= *c;
            h *= 0x100000001b3ULL;
        }
        /* 0xff never occurs in a NUL-terminated UTF-8 string: a separator so
         * ("ab","c") and ("a","bc") differ. */
        h ^= 0xff;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static bool values_equal(const brix_metric_t *m, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(m->values[i], values[i]))
            return false;
    return true;
}

/* Doubles the table; on ENOMEM keeps the old one (chains just get longer). */
static void table_grow(brix_metric_family_t *f)
{
    size_t ncap = f->tcap ? f->tcap * 2 : 8;
    brix_metric_t **nt = brix_calloc(ncap, sizeof *nt);
    if (!nt)
        return;
    for (brix_metric_t *m = f->head; m; m = m->next) {
        size_t i = (size_t)(m->hash & (ncap - 1));
        m->hnext = nt[i];
        nt[i] = m;
    }
    brix_free(f->table);
    f->table = nt;
    f->tcap = ncap;
}

static brix_metric_t *child_new(brix_metric_family_t *f, size_t nl, const char *const *values,
                                uint64_t h)
{
    /* One block: struct, buckets, value pointers, then the value strings. */
    size_t nb = f->type == BRIX_METRIC_HISTOGRAM ? f->nbuckets + 1 : 0;
    size_t off_ptrs = sizeof(brix_metric_t) + nb * sizeof(_Atomic uint64_t);
    off_ptrs = (off_ptrs + sizeof(char *) - 1) & ~(sizeof(char *) - 1);
    size_t off_str = off_ptrs + nl * sizeof(char *);
    size_t total = off_str;
    for (size_t i = 0; i < nl; i++)
        total += strlen(values[i]) + 1;
    unsigned char *blk = brix_calloc(1, total);
    if (!blk)
        return NULL;
    brix_metric_t *m = (brix_metric_t *)blk;
    m->family = f;
    m->hash = h;
    m->values = (char **)(blk + off_ptrs);
    char *s = (char *)blk + off_str;
    for (size_t i = 0; i < nl; i++) {
        size_t n = strlen(values[i]) + 1;
        memcpy(s, values[i], n);
        m->values[i] = s;
        s += n;
    }
    atomic_init(&m->bits, d2bits(0.0));
    for (size_t i = 0; i < nb; i++)
        atomic_init(&m->buckets[i], 0);
    return m;
}

static brix_metric_t *find_child(const brix_metric_family_t *f, const char *const *values,
                                 size_t nl, uint64_t h)
{
    if (!f->table)
        return NULL;
    brix_metric_t *m = f->table[h & (f->tcap - 1)];
    while (m && !(m->hash == h && values_equal(m, values, nl)))
        m = m->hnext;
    return m;
}

/* The overflow child: an existing all-"other" child, or a new one (one past
 * the cap). Called with the family mutex held. */
static brix_metric_t *other_child(brix_metric_family_t *f, size_t nl)
{
    const char *ov[BRIX_PROM_MAX_LABELS];
    if (nl > BRIX_PROM_MAX_LABELS)
        return NULL;
    for (size_t i = 0; i < nl; i++)
        ov[i] = "other";
    uint64_t h = hash_values(ov, nl);
    brix_metric_t *m = find_child(f, ov, nl, h);
    if (m)
        return m;
    if (f->nchildren >= f->tcap)
        table_grow(f);
    if (!f->table || !(m = child_new(f, nl, ov, h)))
        return NULL;
    size_t i = (size_t)(h & (f->tcap - 1));
    m->hnext = f->table[i];
    f->table[i] = m;
    f->tail->next = m; /* the family has children: it is full */
    f->tail = m;
    f->nchildren++;
    return m;
}

uint64_t brix_metric_family_dropped(const brix_metric_family_t *f)
{
    return f ? atomic_load_explicit(&((brix_metric_family_t *)f)->dropped, memory_order_relaxed)
             : 0;
}

brix_metric_t *brix_metric_child(brix_metric_family_t *f, const char *const *label_values)
{
    if (!f)
        return NULL;
    const size_t nl = f->nlabels; /* immutable after registration */
    if (nl) {
        if (!label_values)
            return NULL;
        for (size_t i = 0; i < nl; i++)
            if (!label_values[i])
                return NULL;
    }
    uint64_t h = nl ? hash_values(label_values, nl) : 0;

    pthread_mutex_lock(&f->mu);
    brix_metric_t *m = NULL;
    if (nl == 0)
        m = f->head;
    else
        m = find_child(f, label_values, nl, h);
    if (m)
        goto out;
    size_t cap = atomic_load_explicit(&f->reg->max_children, memory_order_relaxed);
    if (nl && cap && f->nchildren >= cap) {
        /* Label values often come from outside (model names, pods): past the
         * cap every new set shares one child whose values are all "other",
         * so memory and the exposition stay bounded; the drops are counted. */
        atomic_fetch_add_explicit(&f->dropped, 1, memory_order_relaxed);
        if (!f->other)
            f->other = other_child(f, nl);
        m = f->other;
        goto out;
    }
    if (nl && f->nchildren >= f->tcap) {
        table_grow(f);
        if (!f->table)
            goto out;
    }
    if (!(m = child_new(f, nl, label_values, h)))
        goto out;
    if (nl) {
        size_t i = (size_t)(h & (f->tcap - 1));
        m->hnext = f->table[i];
        f->table[i] = m;
    }
    if (f->tail)
        f->tail->next = m;
    else
        f->head = m;
    f->tail = m;
    f->nchildren++;
out:
    pthread_mutex_unlock(&f->mu);
    return m;
}

void brix_metric_family_clear(brix_metric_family_t *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    free_children(f);
    pthread_mutex_unlock(&f->mu);
}

/* ---- updates ---- */

void brix_metric_add(brix_metric_t *m, double v)
{
    if (!m || m->family->type == BRIX_METRIC_HISTOGRAM)
        return;
    /* Counters only go up: negative or NaN increments are dropped. */
    if (m->family->type == BRIX_METRIC_COUNTER && !(v >= 0))
        return;
    atomic_add_double(&m->bits, v);
}

void brix_metric_set(brix_metric_t *m, double v)
{
    if (!m || m->family->type == BRIX_METRIC_HISTOGRAM)
        return;
    atomic_store_explicit(&m->bits, d2bits(v), memory_order_relaxed);
}

void brix_metric_observe(brix_metric_t *m, double v)
{
    if (!m || m->family->type != BRIX_METRIC_HISTOGRAM)
        return;
    const brix_metric_family_t *f = m->family;
    /* First bucket whose bound is >= v; NaN falls through to +Inf. */
    size_t lo = 0, hi = f->nbuckets;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&m->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&m->bits, v);
}

double brix_metric_get(const brix_metric_t *m)
{
    if (!m)
        return 0;
    return bits2d(atomic_load_explicit(&((brix_metric_t *)m)->bits, memory_order_relaxed));
}

uint64_t brix_metric_count(const brix_metric_t *m)
{
    if (!m || m->family->type != BRIX_METRIC_HISTOGRAM)
        return 0;
    uint64_t n = 0;
    for (size_t i = 0; i <= m->family->nbuckets; i++)
        n += atomic_load_explicit(&((brix_metric_t *)m)->buckets[i], memory_order_relaxed);
    return n;
}

void brix_metrics_on_collect(brix_metrics_t *r, brix_metrics_collect_fn fn, void *ud)
{
    hook_t *h = brix_malloc(sizeof *h);
    if (!h)
        return;
    h->next = NULL;
    h->fn = fn;
    h->ud = ud;
    pthread_mutex_lock(&r->mu);
    if (r->hooks_tail)
        r->hooks_tail->next = h;
    else
        r->hooks = h;
    r->hooks_tail = h;
    pthread_mutex_unlock(&r->mu);
}

/* ---- writer ---- */

void brix_metrics_format_double(char out[32], double v)
{
    if (isnan(v)) {
        memcpy(out, "NaN", 4);
        return;
    }
    if (isinf(v)) {
        memcpy(out, v > 0 ? "+Inf" : "-Inf", 5);
        return;
    }
    if (v == 0) {
        memcpy(out, signbit(v) ? "-0.0" : "0.0", signbit(v) ? 5 : 4);
        return;
    }
    /* Shortest %.Ne that reads back as v (17 significant digits always do);
     * then lay the digits out as Python's repr does: fixed notation when the
     * decimal exponent is in [-4, 16), else d.ddde+XX. */
    char tmp[48];
    for (int prec = 0; prec <= 16; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    char digits[24] = { 0 };
    size_t nd = 0;
    const char *c = tmp;
    bool neg = *c == '-';
    if (neg)
        c++;
    for (; *c && *c != 'e'; c++)
        if (*c >= '0' && *c <= '9' && nd < sizeof digits - 1)
            digits[nd++] = *c;
    int exp10 = *c == 'e' ? atoi(c + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';

    char *o = out;
    if (neg)
        *o++ = '-';
    int decpt = exp10 + 1; /* digits are 0.d1d2... * 10^decpt */
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -decpt; i++)
                *o++ = '0';
            memcpy(o, digits, nd);
            o += nd;
        } else if ((size_t)decpt >= nd) {
            memcpy(o, digits, nd);
            o += nd;
            for (size_t i = nd; i < (size_t)decpt; i++)
                *o++ = '0';
            *o++ = '.';
            *o++ = '0';
        } else {
            memcpy(o, digits, (size_t)decpt);
            o += decpt;
            *o++ = '.';
            memcpy(o, digits + decpt, nd - (size_t)decpt);
            o += nd - (size_t)decpt;
        }
        *o = '\0';
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, nd - 1);
            o += nd - 1;
        }
        snprintf(o, 32 - (size_t)(o - out), "e%c%02d", exp10 < 0 ? '-' : '+',
                 exp10 < 0 ? -exp10 : exp10);
    }
}

/* Escapes for HELP text (backslash, newline) or label values (plus '"'). */
static int append_escaped(brix_buf_t *b, const char *s, bool quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = NULL;
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '\n')
            rep = "\\n";
        else if (quote && *s == '"')
            rep = "\\\"";
        if (!rep)
            continue;
        if (brix_buf_append(b, run, (size_t)(s - run)) || brix_buf_append(b, rep, 2))
            return -ENOMEM;
        run = s + 1;
    }
    return brix_buf_append(b, run, (size_t)(s - run));
}

static int append_double(brix_buf_t *b, double v)
{
    char tmp[32];
    brix_metrics_format_double(tmp, v);
    return brix_buf_append_str(b, tmp);
}

/* `name[suffix]{labels} value\n`; labels is the pre-escaped `a="x",b="y"`
 * text of the child (may be empty). A histogram's le label is inserted at
 * byte offset le_at, where it falls in alphabetical order among label names
 * (prometheus_client sorts labels; vLLM's output reads
 * {engine="0",le="0.3",model_name="m"}). */
static int append_sample(brix_buf_t *b, const char *name, const char *suffix,
                         const brix_buf_t *labels, const char *le, size_t le_at, double v)
{
    int rc = brix_buf_append_str(b, name);
    rc = rc ? rc : brix_buf_append_str(b, suffix);
    if (labels->len || le) {
        rc = rc ? rc : brix_buf_append_char(b, '{');
        if (le) {
            rc = rc ? rc : brix_buf_append(b, labels->data, le_at);
            rc = rc ? rc : brix_buf_append_str(b, le_at ? ",le=\"" : "le=\"");
            rc = rc ? rc : brix_buf_append_str(b, le);
            rc = rc ? rc : brix_buf_append_char(b, '"');
            if (le_at < labels->len) {
                /* the rest starts with its comma, except when le comes first */
                if (!le_at)
                    rc = rc ? rc : brix_buf_append_char(b, ',');
                rc = rc ? rc : brix_buf_append(b, labels->data + le_at, labels->len - le_at);
            }
        } else {
            rc = rc ? rc : brix_buf_append(b, labels->data, labels->len);
        }
        rc = rc ? rc : brix_buf_append_char(b, '}');
    }
    rc = rc ? rc : brix_buf_append_char(b, ' ');
    rc = rc ? rc : append_double(b, v);
    rc = rc ? rc : brix_buf_append_char(b, '\n');
    return rc;
}

static int write_child(brix_buf_t *out, brix_buf_t *labels, const brix_metric_family_t *f,
                       brix_metric_t *m)
{
    brix_buf_reset(labels);
    size_t le_at = SIZE_MAX;
    for (size_t i = 0; i < f->nlabels; i++) {
        if (le_at == SIZE_MAX && strcmp(f->label_names[i], "le") > 0)
            le_at = labels->len; /* before this label's comma */
        if ((i && brix_buf_append_char(labels, ',')) ||
            brix_buf_append_str(labels, f->label_names[i]) || brix_buf_append(labels, "=\"", 2) ||
            append_escaped(labels, m->values[i], true) || brix_buf_append_char(labels, '"'))
            return -ENOMEM;
    }
    if (le_at == SIZE_MAX)
        le_at = labels->len;
    double v = bits2d(atomic_load_explicit(&m->bits, memory_order_relaxed));
    if (f->type != BRIX_METRIC_HISTOGRAM)
        return append_sample(out, f->name, "", labels, NULL, 0, v);

    uint64_t cum = 0;
    char le[32];
    for (size_t i = 0; i <= f->nbuckets; i++) {
        cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        if (i < f->nbuckets)
            brix_metrics_format_double(le, f->bounds[i]);
        else
            memcpy(le, "+Inf", 5);
        if (append_sample(out, f->name, "_bucket", labels, le, le_at, (double)cum))
            return -ENOMEM;
    }
    /* _count before _sum, as prometheus_client writes them */
    if (append_sample(out, f->name, "_count", labels, NULL, 0, (double)cum) ||
        append_sample(out, f->name, "_sum", labels, NULL, 0, v))
        return -ENOMEM;
    return 0;
}

static int write_family(brix_buf_t *out, brix_buf_t *labels, brix_metric_family_t *f)
{
    static const char *const type_names[] = { "counter", "gauge", "histogram" };
    if (brix_buf_append_str(out, "# HELP ") || brix_buf_append_str(out, f->name) ||
        brix_buf_append_char(out, ' ') || append_escaped(out, f->help, false) ||
        brix_buf_printf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]))
        return -ENOMEM;
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    for (brix_metric_t *m = f->head; m && !rc; m = m->next)
        rc = write_child(out, labels, f, m);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

int brix_metrics_write(brix_metrics_t *r, brix_buf_t *out)
{
    size_t start = out->len;
    brix_buf_t labels = BRIX_BUF_INIT;
    int rc = 0;

    pthread_mutex_lock(&r->write_mu);
    /* Hooks run without the registry mutex so they may register families or
     * hooks; the list only grows, so its head is stable. */
    pthread_mutex_lock(&r->mu);
    hook_t *h = r->hooks;
    pthread_mutex_unlock(&r->mu);
    while (h) {
        h->fn(r, h->ud);
        pthread_mutex_lock(&r->mu);
        h = h->next;
        pthread_mutex_unlock(&r->mu);
    }

    pthread_mutex_lock(&r->mu);
    for (brix_metric_family_t *f = r->families; f && !rc; f = f->next)
        rc = write_family(out, &labels, f);
    /* the drops past each family's child cap, only once there are any (an
     * engine-sim's exposition stays exactly vLLM's until then) */
    bool head = false;
    for (brix_metric_family_t *f = r->families; f && !rc; f = f->next) {
        uint64_t d = atomic_load_explicit(&f->dropped, memory_order_relaxed);
        if (!d)
            continue;
        if (!head)
            rc =
                brix_buf_append_str(out, "# HELP " BRIX_METRICS_DROPPED " Label sets counted under "
                                         "the child \"other\" because their family reached its "
                                         "child cap.\n# TYPE " BRIX_METRICS_DROPPED " counter\n");
        head = true;
        rc = rc ? rc
                : brix_buf_printf(out, BRIX_METRICS_DROPPED "{family=\"%s\"} %llu.0\n", f->name,
                                  (unsigned long long)d);
    }
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&r->write_mu);

    brix_buf_free(&labels);
    if (rc) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}

/* ---- parser ---- */

void brix_prom_parser_init(brix_prom_parser_t *p, size_t max_line, brix_prom_sample_fn fn, void *ud)
{
    memset(p, 0, sizeof *p);
    p->max_line = max_line ? max_line : DEFAULT_MAX_LINE;
    p->fn = fn;
    p->ud = ud;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static char *skip_blanks(char *c, const char *e)
{
    while (c < e && is_blank(*c))
        c++;
    return c;
}

static bool name_char(char c, bool first, bool colon)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':'))
        return true;
    return !first && c >= '0' && c <= '9';
}

/* Returns the end of the identifier starting at c (== c when there is none). */
static char *scan_name(char *c, const char *e, bool colon)
{
    char *s = c;
    while (c < e && name_char(*c, c == s, colon))
        c++;
    return c;
}

/* Parses the label set after '{'; returns the position after '}' or NULL. */
static char *parse_labels(char *c, const char *e, brix_prom_sample_t *s)
{
    for (;;) {
        c = skip_blanks(c, e);
        if (c < e && *c == '}')
            return c + 1;
        if (s->nlabels == BRIX_PROM_MAX_LABELS)
            return NULL;
        char *name = c, *name_end = scan_name(c, e, false);
        if (name_end == name)
            return NULL;
        c = skip_blanks(name_end, e);
        if (c >= e || *c != '=')
            return NULL;
        *name_end = '\0'; /* a blank or the '=' just consumed */
        c = skip_blanks(c + 1, e);
        if (c >= e || *c != '"')
            return NULL;
        char *val = ++c, *w = c;
        for (;;) {
            if (c >= e)
                return NULL;
            if (*c == '"')
                break;
            if (*c == '\0')
                return NULL; /* would silently truncate the value */
            if (*c == '\\') {
                if (++c >= e)
                    return NULL;
                if (*c == 'n')
                    *w++ = '\n';
                else if (*c == '\\' || *c == '"')
                    *w++ = *c;
                else
                    return NULL;
                c++;
            } else {
                *w++ = *c++;
            }
        }
        *w = '\0'; /* w <= c, the closing quote */
        c++;
        for (size_t i = 0; i < s->nlabels; i++)
            if (!strcmp(s->labels[i].name, name))
                return NULL;
        s->labels[s->nlabels].name = name;
        s->labels[s->nlabels].value = val;
        s->nlabels++;
        c = skip_blanks(c, e);
        if (c < e && *c == ',') {
            c++;
        } else if (c < e && *c == '}') {
            return c + 1;
        } else {
            return NULL;
        }
    }
}

static bool parse_value(const char *tok, const char *end, double *v)
{
    char first = *tok;
    if (!((first >= '0' && first <= '9') || first == '+' || first == '-' || first == '.' ||
          first == 'N' || first == 'n' || first == 'I' || first == 'i'))
        return false;
    char *stop;
    *v = strtod(tok, &stop);
    return stop == end;
}

static bool parse_timestamp(const char *tok, const char *end, int64_t *ts)
{
    char first = *tok;
    if (!((first >= '0' && first <= '9') || first == '+' || first == '-'))
        return false;
    char *stop;
    errno = 0;
    long long t = strtoll(tok, &stop, 10);
    if (stop != end || errno == ERANGE)
        return false;
    *ts = (int64_t)t;
    return true;
}

/* Parses one line (without '\n', NUL-terminated at len) in place. Returns
 * false when it is malformed. */
static bool parse_line(brix_prom_parser_t *p, char *line, size_t len)
{
    if (len && line[len - 1] == '\r')
        line[--len] = '\0';
    if (len > p->max_line)
        return false;
    char *c = skip_blanks(line, line + len), *e = line + len;
    if (c == e || *c == '#')
        return true;

    brix_prom_sample_t s;
    s.nlabels = 0;
    s.has_timestamp = false;
    s.timestamp_ms = 0;
    s.name = c;
    char *name_end = scan_name(c, e, true);
    if (name_end == c || name_end == e)
        return false;
    c = skip_blanks(name_end, e);
    if (c < e && *c == '{') {
        *name_end = '\0';
        if (!(c = parse_labels(c + 1, e, &s)))
            return false;
        c = skip_blanks(c, e);
    } else if (c == name_end) {
        return false; /* name runs into something that is neither blank nor '{' */
    } else {
        *name_end = '\0';
    }

    /* Value token, then an optional timestamp token. Each is terminated in
     * place: the byte after a token is a blank or line[len], which is NUL. */
    char *tok = c;
    while (c < e && !is_blank(*c))
        c++;
    if (c == tok)
        return false;
    *c = '\0';
    if (!parse_value(tok, c, &s.value))
        return false;
    c = skip_blanks(c < e ? c + 1 : c, e);
    if (c < e) {
        tok = c;
        while (c < e && !is_blank(*c))
            c++;
        *c = '\0';
        if (!parse_timestamp(tok, c, &s.timestamp_ms))
            return false;
        s.has_timestamp = true;
        c = skip_blanks(c < e ? c + 1 : c, e);
        if (c < e)
            return false;
    }
    p->samples++;
    if (p->fn)
        p->fn(&s, p->ud);
    return true;
}

static void end_line(brix_prom_parser_t *p)
{
    if (p->skipping) {
        p->skipping = false; /* counted when skipping began */
    } else if (p->line.len && !parse_line(p, p->line.data, p->line.len)) {
        p->errors++;
    }
    brix_buf_reset(&p->line);
}

int brix_prom_parser_feed(brix_prom_parser_t *p, const char *data, size_t len)
{
    /* One byte of slack for a '\r' before the '\n'; parse_line enforces
     * max_line on the rest, so the verdict never depends on chunking. */
    size_t limit = p->max_line < SIZE_MAX ? p->max_line + 1 : SIZE_MAX;
    int rc = 0;
    while (len) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl ? (size_t)(nl - data) : len;
        if (!p->skipping) {
            if (n > limit - p->line.len) {
                p->skipping = true;
                p->errors++;
                brix_buf_reset(&p->line);
            } else if (brix_buf_append(&p->line, data, n)) {
                /* Drop this line only; the parser stays usable. */
                p->skipping = true;
                p->errors++;
                brix_buf_reset(&p->line);
                rc = -ENOMEM;
            }
        }
        if (!nl)
            break;
        end_line(p);
        data += n + 1;
        len -= n + 1;
    }
    return rc;
}

int brix_prom_parser_finish(brix_prom_parser_t *p)
{
    end_line(p);
    return 0;
}

void brix_prom_parser_free(brix_prom_parser_t *p)
{
    brix_buf_free(&p->line);
    p->skipping = false;
}

const char *brix_prom_label(const brix_prom_sample_t *s, const char *name)
{
    for (size_t i = 0; i < s->nlabels; i++)
        if (!strcmp(s->labels[i].name, name))
            return s->labels[i].value;
    return NULL;
}

/* ----------------------------------------------------- process gauges -- */

static double read_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static double count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    double n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

static void on_collect_process(brix_metrics_t *r, void *ud)
{
    (void)r;
    brix_process_metrics_t *g = ud;
    brix_metric_set(g->rss, read_rss_bytes());
    brix_metric_set(g->fds, count_fds());
    brix_metric_set(g->heap_bytes, (double)brix_alloc_live_bytes());
    brix_metric_set(g->heap_allocs, (double)brix_alloc_live());
}

int brix_metrics_add_process(brix_metrics_t *r, brix_process_metrics_t *pm)
{
    static const struct {
        const char *name, *help;
        size_t off;
    } G[] = {
        { "process_resident_memory_bytes", "Resident memory size in bytes.",
          offsetof(brix_process_metrics_t, rss) },
        { "process_open_fds", "Number of open file descriptors.",
          offsetof(brix_process_metrics_t, fds) },
        { "brix_heap_live_bytes", "bytes held by brix's counted allocator (all threads)",
          offsetof(brix_process_metrics_t, heap_bytes) },
        { "brix_heap_live_allocations", "live allocations of brix's counted allocator",
          offsetof(brix_process_metrics_t, heap_allocs) },
    };
    for (size_t i = 0; i < sizeof G / sizeof *G; i++) {
        brix_metric_family_t *f =
            brix_metrics_family(r, BRIX_METRIC_GAUGE, G[i].name, G[i].help, NULL, NULL, 0);
        brix_metric_t *m = f ? brix_metric_child(f, NULL) : NULL;
        if (!m)
            return -ENOMEM;
        *(brix_metric_t **)((char *)pm + G[i].off) = m;
    }
    brix_metrics_on_collect(r, on_collect_process, pm);
    return 0;
}
