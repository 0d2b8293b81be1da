/*
 * Tests for core/metrics: number formatting, the exposition writer (golden
 * text, promtool lint, concurrency, ENOMEM), and the resumable parser (vLLM
 * golden, chunking invariance, malformed and over-long lines, round trip).
 * Every test checks that brix_alloc_live() returns to where it started.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/metrics.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ---- */

static int64_t g_live0;

static int setup(void **state)
{
    g_live0 = brix_alloc_live();
    return 0;
}

static int teardown(void **state)
{
    brix_alloc_fail_after(-1);
    assert_int_equal(brix_alloc_live(), g_live0);
    return 0;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void append_escaped(brix_buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            brix_buf_append_str(b, "\\\\");
        else if (*s == '"')
            brix_buf_append_str(b, "\\\"");
        else if (*s == '\n')
            brix_buf_append_str(b, "\\n");
        else
            brix_buf_append_char(b, *s);
    }
}

/* Serialises each sample as `name{k="v",...} value[ ts]\n`. */
static void collect_sample(const brix_prom_sample_t *s, void *ud)
{
    brix_buf_t *b = ud;
    char num[32];
    brix_buf_append_str(b, s->name);
    if (s->nlabels) {
        brix_buf_append_char(b, '{');
        for (size_t i = 0; i < s->nlabels; i++) {
            brix_buf_printf(b, "%s%s=\"", i ? "," : "", s->labels[i].name);
            append_escaped(b, s->labels[i].value);
            brix_buf_append_char(b, '"');
        }
        brix_buf_append_char(b, '}');
    }
    brix_metrics_format_double(num, s->value);
    brix_buf_printf(b, " %s", num);
    if (s->has_timestamp)
        brix_buf_printf(b, " %lld", (long long)s->timestamp_ms);
    brix_buf_append_char(b, '\n');
}

typedef struct parse_result {
    brix_buf_t text;
    uint64_t samples;
    uint64_t errors;
} parse_result_t;

/* Parses `in` in chunks of random size (1..maxchunk; 0 = all at once). */
static void parse_chunked(const char *in, size_t len, size_t max_line, size_t maxchunk,
                          uint64_t seed, parse_result_t *res)
{
    brix_prom_parser_t p;
    memset(res, 0, sizeof *res);
    brix_prom_parser_init(&p, max_line, collect_sample, &res->text);
    size_t off = 0;
    while (off < len) {
        size_t n = maxchunk ? 1 + (size_t)(rng_next(&seed) % maxchunk) : len;
        if (n > len - off)
            n = len - off;
        assert_int_equal(brix_prom_parser_feed(&p, in + off, n), 0);
        off += n;
    }
    assert_int_equal(brix_prom_parser_finish(&p), 0);
    res->samples = p.samples;
    res->errors = p.errors;
    brix_prom_parser_free(&p);
}

static void parse_all(const char *in, size_t max_line, parse_result_t *res)
{
    parse_chunked(in, strlen(in), max_line, 0, 1, res);
}

/* ---- number formatting ---- */

/* The process gauges follow the counted allocator and /proc at each scrape:
 * 1 MiB more held shows as at least 1 MiB more live heap and one more
 * allocation; the resident size and open descriptors are real readings. */
static double sample(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    while (p && (p != text && p[-1] != '\n'))
        p = strstr(p + 1, name);
    assert_non_null(p);
    return strtod(p + strlen(name) + 1, NULL);
}

static void test_process_gauges(void **state)
{
    (void)state;
    brix_metrics_t *r = brix_metrics_new();
    brix_process_metrics_t pm;
    assert_int_equal(brix_metrics_add_process(r, &pm), 0);
    brix_buf_t a = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
    assert_int_equal(brix_metrics_write(r, &a), 0);
    void *held = brix_malloc(1 << 20);
    assert_non_null(held);
    assert_int_equal(brix_metrics_write(r, &b), 0);
    assert_true(sample(b.data, "brix_heap_live_bytes") - sample(a.data, "brix_heap_live_bytes") >=
                (double)(1 << 20));
    assert_true(sample(b.data, "brix_heap_live_allocations") >
                sample(a.data, "brix_heap_live_allocations"));
    assert_true(sample(b.data, "process_resident_memory_bytes") > 1e6);
    assert_true(sample(b.data, "process_open_fds") >= 3);
    assert_non_null(strstr(b.data, "# TYPE process_open_fds gauge\n"));
    brix_free(held);
    brix_buf_free(&a);
    brix_buf_free(&b);
    brix_metrics_free(r);
}

static void test_format_double(void **state)
{
    static const struct {
        double v;
        const char *s;
    } cases[] = {
        { 0.0, "0.0" },
        { -0.0, "-0.0" },
        { 1.0, "1.0" },
        { -3.0, "-3.0" },
        { 0.25, "0.25" },
        { 0.005, "0.005" },
        { 0.1, "0.1" },
        { 2.5, "2.5" },
        { 1e-05, "1e-05" },
        { 0.0001, "0.0001" },
        { 1.5e-7, "1.5e-07" },
        { 12345.0, "12345.0" },
        { 1e15, "1000000000000000.0" },
        { 1e16, "1e+16" },
        { 1.5e16, "1.5e+16" },
        { 9999999999999998.0, "9999999999999998.0" },
        { 123456789.125, "123456789.125" },
        { 1.7976931348623157e308, "1.7976931348623157e+308" },
        { 5e-324, "5e-324" },
        { 0.1 + 0.2, "0.30000000000000004" },
        { 1.0 / 3.0, "0.3333333333333333" },
        { INFINITY, "+Inf" },
        { -INFINITY, "-Inf" },
        { NAN, "NaN" },
    };
    char out[32];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        brix_metrics_format_double(out, cases[i].v);
        assert_string_equal(out, cases[i].s);
    }
    /* Everything reads back exactly. */
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 100000; i++) {
        uint64_t bits = rng_next(&seed);
        double v;
        memcpy(&v, &bits, sizeof v);
        if (isnan(v))
            continue;
        brix_metrics_format_double(out, v);
        assert_true(strlen(out) < 32);
        assert_true(strtod(out, NULL) == v);
    }
}

/* ---- writer ---- */

/* A small registry: counter with a ':' name, labelled gauge with awkward
 * label values, labelled and unlabelled histograms, a labelled gauge with no
 * children. */
static brix_metrics_t *small_registry(void)
{
    brix_metrics_t *r = brix_metrics_new();
    assert_non_null(r);
    brix_metric_family_t *c =
        brix_metrics_family(r, BRIX_METRIC_COUNTER, "vllm:prompt_tokens_total",
                            "Number of prefill tokens processed.", NULL, NULL, 0);
    assert_non_null(c);
    brix_metric_add(brix_metric_child(c, NULL), 40);
    brix_metric_add(brix_metric_child(c, NULL), 2);

    const char *gl[] = { "model_name", "state", NULL };
    brix_metric_family_t *g =
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "brix_replicas",
                            "Replicas by state.\nSecond line with \\ backslash.", gl, NULL, 0);
    assert_non_null(g);
    const char *v1[] = { "llama", "ready" };
    const char *v2[] = { "we\"ird\\name\n", "draining" };
    brix_metric_set(brix_metric_child(g, v1), 2);
    brix_metric_set(brix_metric_child(g, v2), 0.5);

    const char *hl[] = { "model_name", NULL };
    const double b[] = { 0.005, 0.1, 1 };
    brix_metric_family_t *h = brix_metrics_family(
        r, BRIX_METRIC_HISTOGRAM, "brix_request_latency_seconds", "Request latency.", hl, b, 3);
    assert_non_null(h);
    const char *hv[] = { "llama" };
    brix_metric_t *hm = brix_metric_child(h, hv);
    brix_metric_observe(hm, 0.00390625);
    brix_metric_observe(hm, 0.0625);
    brix_metric_observe(hm, 0.0625);
    brix_metric_observe(hm, 2);

    const double qb[] = { 1, INFINITY };
    assert_non_null(brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "brix_queue_wait_seconds",
                                        "Queue wait.", NULL, qb, 2));
    const char *il[] = { "version", NULL };
    assert_non_null(
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "brix_info", "Build info.", il, NULL, 0));
    return r;
}

static const char small_golden[] =
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_total counter\n"
    "vllm:prompt_tokens_total 42.0\n"
    "# HELP brix_replicas Replicas by state.\\nSecond line with \\\\ backslash.\n"
    "# TYPE brix_replicas gauge\n"
    "brix_replicas{model_name=\"llama\",state=\"ready\"} 2.0\n"
    "brix_replicas{model_name=\"we\\\"ird\\\\name\\n\",state=\"draining\"} 0.5\n"
    "# HELP brix_request_latency_seconds Request latency.\n"
    "# TYPE brix_request_latency_seconds histogram\n"
    "brix_request_latency_seconds_bucket{le=\"0.005\",model_name=\"llama\"} 1.0\n"
    "brix_request_latency_seconds_bucket{le=\"0.1\",model_name=\"llama\"} 3.0\n"
    "brix_request_latency_seconds_bucket{le=\"1.0\",model_name=\"llama\"} 3.0\n"
    "brix_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"llama\"} 4.0\n"
    "brix_request_latency_seconds_count{model_name=\"llama\"} 4.0\n"
    "brix_request_latency_seconds_sum{model_name=\"llama\"} 2.12890625\n"
    "# HELP brix_queue_wait_seconds Queue wait.\n"
    "# TYPE brix_queue_wait_seconds histogram\n"
    "brix_queue_wait_seconds_bucket{le=\"1.0\"} 0.0\n"
    "brix_queue_wait_seconds_bucket{le=\"+Inf\"} 0.0\n"
    "brix_queue_wait_seconds_count 0.0\n"
    "brix_queue_wait_seconds_sum 0.0\n"
    "# HELP brix_info Build info.\n"
    "# TYPE brix_info gauge\n";

static void test_writer_golden(void **state)
{
    brix_metrics_t *r = small_registry();
    brix_buf_t out = BRIX_BUF_INIT;
    brix_buf_append_str(&out, "prefix\n"); /* write appends */
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_string_equal(out.data + 7, small_golden);
    brix_buf_free(&out);
    brix_metrics_free(r);
}

static void test_writer_promtool(void **state)
{
    brix_metrics_t *r = small_registry();
    brix_buf_t out = BRIX_BUF_INIT;
    assert_int_equal(brix_metrics_write(r, &out), 0);
    brix_metrics_free(r);

    char path[] = "/tmp/brix_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, out.data, out.len), (ssize_t)out.len);
    close(fd);
    brix_buf_free(&out);

    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        unlink(path);
        skip();
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[1024];
    int complaints = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '\n')
            continue;
        print_message("promtool: %s", line);
        /* vLLM-style names with ':' are expected to be linted; nothing else. */
        assert_non_null(strstr(line, "should not contain ':'"));
        complaints++;
    }
    int st = pclose(f);
    unlink(path);
    /* Exit 0 when clean, 3 when only lint problems were found. */
    assert_true(st == 0 || (complaints > 0 && WEXITSTATUS(st) == 3));
}

static void test_children(void **state)
{
    brix_metrics_t *r = brix_metrics_new();
    const char *ln[] = { "a", "b", NULL };
    brix_metric_family_t *f =
        brix_metrics_family(r, BRIX_METRIC_COUNTER, "c_total", "C.", ln, NULL, 0);
    assert_non_null(f);
    /* Many children: the table must grow and keep finding old ones. */
    brix_metric_t *kids[500];
    char a[16], b[16];
    for (int i = 0; i < 500; i++) {
        snprintf(a, sizeof a, "x%d", i);
        snprintf(b, sizeof b, "%d", i % 7);
        const char *v[] = { a, b };
        kids[i] = brix_metric_child(f, v);
        assert_non_null(kids[i]);
        brix_metric_add(kids[i], i);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(a, sizeof a, "x%d", i);
        snprintf(b, sizeof b, "%d", i % 7);
        const char *v[] = { a, b };
        assert_ptr_equal(brix_metric_child(f, v), kids[i]);
        assert_true(brix_metric_get(kids[i]) == i);
    }
    /* ("ab","c") and ("a","bc") are different children. */
    const char *p1[] = { "ab", "c" }, *p2[] = { "a", "bc" };
    assert_ptr_not_equal(brix_metric_child(f, p1), brix_metric_child(f, p2));
    assert_null(brix_metric_child(f, NULL));
    const char *pn[] = { "a", NULL };
    assert_null(brix_metric_child(f, pn));

    /* Counters only go up; set mirrors an external total. */
    brix_metric_add(kids[1], -5);
    brix_metric_add(kids[1], NAN);
    assert_true(brix_metric_get(kids[1]) == 1);
    brix_metric_set(kids[1], 77);
    assert_true(brix_metric_get(kids[1]) == 77);

    brix_metric_family_clear(f);
    brix_buf_t out = BRIX_BUF_INIT;
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_string_equal(out.data, "# HELP c_total C.\n# TYPE c_total counter\n");
    brix_buf_free(&out);
    const char *v0[] = { "x0", "0" };
    brix_metric_t *again = brix_metric_child(f, v0);
    assert_non_null(again);
    assert_true(brix_metric_get(again) == 0);

    /* Gauges, histograms, NULL children. */
    brix_metric_family_t *g = brix_metrics_family(r, BRIX_METRIC_GAUGE, "g", "G.", NULL, NULL, 0);
    brix_metric_t *gm = brix_metric_child(g, NULL);
    brix_metric_add(gm, 3);
    brix_metric_add(gm, -1.5);
    assert_true(brix_metric_get(gm) == 1.5);
    brix_metric_observe(gm, 1); /* wrong type: ignored */
    assert_true(brix_metric_get(gm) == 1.5);
    brix_metric_add(NULL, 1);
    brix_metric_set(NULL, 1);
    brix_metric_observe(NULL, 1);
    assert_true(brix_metric_get(NULL) == 0);
    assert_int_equal(brix_metric_count(NULL), 0);

    const double bk[] = { 1, 2 };
    brix_metric_family_t *h = brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "h", "H.", NULL, bk, 2);
    brix_metric_t *hm = brix_metric_child(h, NULL);
    brix_metric_observe(hm, 1);   /* le=1 is inclusive */
    brix_metric_observe(hm, 1.5); /* le=2 */
    brix_metric_observe(hm, 9);   /* +Inf */
    brix_metric_add(hm, 5);       /* wrong type: ignored */
    assert_int_equal(brix_metric_count(hm), 3);
    assert_true(brix_metric_get(hm) == 11.5);
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_non_null(strstr(out.data, "h_bucket{le=\"1.0\"} 1.0\n"
                                     "h_bucket{le=\"2.0\"} 2.0\n"
                                     "h_bucket{le=\"+Inf\"} 3.0\n"
                                     "h_count 3.0\n"
                                     "h_sum 11.5\n"));
    brix_buf_free(&out);
    brix_metrics_free(r);
}

/* Past the cap new label sets share the all-"other" child and are counted;
 * old children are still found; the drop counter appears in the exposition
 * only once something was dropped, per family. */
static void test_child_cap(void **state)
{
    (void)state;
    brix_metrics_t *r = brix_metrics_new();
    brix_metrics_set_max_children(r, 3);
    const char *ln[] = { "model", "kind", NULL };
    const double b[] = { 1 };
    brix_metric_family_t *c =
        brix_metrics_family(r, BRIX_METRIC_COUNTER, "c_total", "C.", ln, NULL, 0);
    brix_metric_family_t *h =
        brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "h_seconds", "H.", ln, b, 1);
    brix_metric_family_t *u = brix_metrics_family(r, BRIX_METRIC_GAUGE, "u", "U.", ln, NULL, 0);
    assert_non_null(c);
    assert_non_null(h);
    assert_non_null(u);
    brix_buf_t out = BRIX_BUF_INIT;
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_null(strstr(out.data, BRIX_METRICS_DROPPED));
    brix_buf_reset(&out);
    brix_metric_t *first[3], *other = NULL;
    char a[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(a, sizeof a, "x%d", i);
        const char *v[] = { a, "k" };
        brix_metric_t *m = brix_metric_child(c, v);
        assert_non_null(m);
        brix_metric_add(m, 1);
        brix_metric_observe(brix_metric_child(h, v), 0.5);
        if (i < 3) {
            first[i] = m;
        } else if (!other) {
            other = m;
        } else {
            assert_ptr_equal(m, other);
        }
    }
    for (int i = 0; i < 3; i++) {
        snprintf(a, sizeof a, "x%d", i);
        const char *v[] = { a, "k" };
        assert_ptr_equal(brix_metric_child(c, v), first[i]);
    }
    const char *ov[] = { "other", "other" };
    assert_ptr_equal(brix_metric_child(c, ov), other);
    assert_true(brix_metric_family_dropped(c) == 997);
    assert_true(brix_metric_family_dropped(u) == 0);
    assert_true(brix_metric_get(other) == 997);
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_non_null(strstr(out.data, "c_total{model=\"other\",kind=\"other\"} 997.0\n"));
    assert_non_null(strstr(out.data, "h_seconds_count{model=\"other\",kind=\"other\"} 997.0\n"));
    assert_null(strstr(out.data, "x3\""));
    assert_non_null(strstr(out.data, "# TYPE " BRIX_METRICS_DROPPED " counter\n"));
    assert_non_null(strstr(out.data, BRIX_METRICS_DROPPED "{family=\"c_total\"} 997.0\n"));
    assert_non_null(strstr(out.data, BRIX_METRICS_DROPPED "{family=\"h_seconds\"} 997.0\n"));
    assert_null(strstr(out.data, BRIX_METRICS_DROPPED "{family=\"u\"}"));
    /* a raised cap lets new children in again; 0 lifts it */
    brix_metrics_set_max_children(r, 0);
    const char *nv[] = { "fresh", "k" };
    brix_metric_t *fresh = brix_metric_child(c, nv);
    assert_non_null(fresh);
    assert_ptr_not_equal(fresh, other);
    brix_buf_free(&out);
    brix_metrics_free(r);
}

static void test_invalid_families(void **state)
{
    brix_metrics_t *r = brix_metrics_new();
    const double asc[] = { 1, 2 }, desc[] = { 2, 1 }, dupb[] = { 1, 1 }, nanb[] = { NAN };
    const char *le[] = { "le", NULL }, *bad[] = { "a-b", NULL }, *res[] = { "__x", NULL },
               *twice[] = { "a", "a", NULL }, *colon[] = { "a:b", NULL };
    assert_non_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "x", "X.", NULL, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_COUNTER, "x", "dup", NULL, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "", "X.", NULL, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, NULL, "X.", NULL, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "1x", "X.", NULL, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "x y", "X.", NULL, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "y", "Y.", bad, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "y", "Y.", res, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "y", "Y.", twice, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "y", "Y.", colon, NULL, 0));
    assert_null(brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "y", "Y.", le, asc, 2));
    assert_null(brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "y", "Y.", NULL, desc, 2));
    assert_null(brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "y", "Y.", NULL, dupb, 2));
    assert_null(brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "y", "Y.", NULL, nanb, 1));
    /* "le" is an ordinary label for gauges; histograms may have no buckets. */
    assert_non_null(brix_metrics_family(r, BRIX_METRIC_GAUGE, "y", NULL, le, NULL, 0));
    assert_non_null(brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "z", "Z.", NULL, NULL, 0));
    brix_metrics_free(r);
    brix_metrics_free(NULL);
}

static void hook_set(brix_metrics_t *r, void *ud)
{
    brix_metric_t **m = ud;
    brix_metric_set(m[0], brix_metric_get(m[0]) + 1);
}

static void hook_info(brix_metrics_t *r, void *ud)
{
    /* An info gauge rebuilt on every scrape; it must run after hook_set. */
    brix_metric_family_t *f = ud;
    brix_metric_family_clear(f);
    static int n;
    char v[16];
    snprintf(v, sizeof v, "v%d", ++n);
    const char *lv[] = { v };
    brix_metric_set(brix_metric_child(f, lv), 1);
}

static void test_collect_hooks(void **state)
{
    brix_metrics_t *r = brix_metrics_new();
    brix_metric_family_t *g =
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "scrapes", "Scrapes.", NULL, NULL, 0);
    const char *il[] = { "version", NULL };
    brix_metric_family_t *info =
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "info", "Info.", il, NULL, 0);
    brix_metric_t *gm = brix_metric_child(g, NULL);
    brix_metrics_on_collect(r, hook_set, &gm);
    brix_metrics_on_collect(r, hook_info, info);
    brix_buf_t out = BRIX_BUF_INIT;
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_non_null(strstr(out.data, "\nscrapes 1.0\n"));
    assert_non_null(strstr(out.data, "\ninfo{version=\"v1\"} 1.0\n"));
    brix_buf_reset(&out);
    assert_int_equal(brix_metrics_write(r, &out), 0);
    assert_non_null(strstr(out.data, "\nscrapes 2.0\n"));
    assert_non_null(strstr(out.data, "\ninfo{version=\"v2\"} 1.0\n"));
    assert_null(strstr(out.data, "v1"));
    brix_buf_free(&out);
    brix_metrics_free(r);
}

/* ---- concurrency ---- */

#define NTHREADS 4
#define NITERS   20000

typedef struct conc {
    brix_metric_family_t *c, *h, *g;
} conc_t;

static void *conc_worker(void *arg)
{
    conc_t *cx = arg;
    char lv[16];
    for (int i = 0; i < NITERS; i++) {
        snprintf(lv, sizeof lv, "m%d", i % 37);
        const char *v[] = { lv };
        brix_metric_add(brix_metric_child(cx->c, v), 1);
        brix_metric_observe(brix_metric_child(cx->h, v), (i % 4) * 0.5);
        brix_metric_t *g = brix_metric_child(cx->g, NULL);
        brix_metric_add(g, 1);
        brix_metric_add(g, -1);
    }
    return NULL;
}

static void sum_sample(const brix_prom_sample_t *s, void *ud)
{
    double *acc = ud;
    if (!strcmp(s->name, "req_total"))
        acc[0] += s->value;
    else if (!strcmp(s->name, "lat_seconds_count"))
        acc[1] += s->value;
    else if (!strcmp(s->name, "lat_seconds_sum"))
        acc[2] += s->value;
}

static void test_concurrent(void **state)
{
    brix_metrics_t *r = brix_metrics_new();
    const char *ln[] = { "model", NULL };
    const double b[] = { 0.25, 1 };
    conc_t cx = {
        brix_metrics_family(r, BRIX_METRIC_COUNTER, "req_total", "R.", ln, NULL, 0),
        brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "lat_seconds", "L.", ln, b, 2),
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "inflight", "I.", NULL, NULL, 0),
    };
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, conc_worker, &cx), 0);
    /* Scrape while they run: always parseable. */
    brix_buf_t out = BRIX_BUF_INIT;
    for (int i = 0; i < 50; i++) {
        brix_buf_reset(&out);
        assert_int_equal(brix_metrics_write(r, &out), 0);
        parse_result_t res;
        parse_all(out.data, 0, &res);
        assert_int_equal(res.errors, 0);
        brix_buf_free(&res.text);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);

    brix_buf_reset(&out);
    assert_int_equal(brix_metrics_write(r, &out), 0);
    double acc[3] = { 0, 0, 0 };
    brix_prom_parser_t p;
    brix_prom_parser_init(&p, 0, sum_sample, acc);
    brix_prom_parser_feed(&p, out.data, out.len);
    brix_prom_parser_finish(&p);
    assert_int_equal(p.errors, 0);
    brix_prom_parser_free(&p);
    assert_true(acc[0] == NTHREADS * NITERS);
    assert_true(acc[1] == NTHREADS * NITERS);
    assert_true(acc[2] == NTHREADS * (NITERS / 4) * (0 + 0.5 + 1 + 1.5));
    assert_true(brix_metric_get(brix_metric_child(cx.g, NULL)) == 0);
    brix_buf_free(&out);
    brix_metrics_free(r);
}

/* ---- ENOMEM ---- */

static int build_and_write(brix_buf_t *out)
{
    int rc = -ENOMEM;
    brix_metrics_t *r = brix_metrics_new();
    if (!r)
        return -ENOMEM;
    const char *ln[] = { "model", "kind", NULL };
    const double b[] = { 0.1, 1 };
    brix_metric_family_t *c =
        brix_metrics_family(r, BRIX_METRIC_COUNTER, "a_total", "A.", NULL, NULL, 0);
    brix_metric_family_t *h =
        brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "h_seconds", "H.", ln, b, 2);
    if (!c || !h)
        goto out;
    for (int i = 0; i < 20; i++) {
        char v[16];
        snprintf(v, sizeof v, "m%d", i);
        const char *lv[] = { v, "x" };
        brix_metric_t *m = brix_metric_child(h, lv);
        if (!m)
            goto out;
        brix_metric_observe(m, i * 0.1);
    }
    rc = brix_metrics_write(r, out);
out:
    brix_metrics_free(r);
    return rc;
}

static void test_enomem(void **state)
{
    brix_buf_t ref = BRIX_BUF_INIT;
    assert_int_equal(build_and_write(&ref), 0);
    int failures = 0;
    for (long k = 0;; k++) {
        brix_buf_t out = BRIX_BUF_INIT;
        brix_alloc_fail_after(k);
        int rc = build_and_write(&out);
        brix_alloc_fail_after(-1);
        if (rc == 0) {
            assert_string_equal(out.data, ref.data);
            brix_buf_free(&out);
            break;
        }
        assert_int_equal(rc, -ENOMEM);
        assert_true(out.len == 0); /* nothing half-written */
        brix_buf_free(&out);
        failures++;
    }
    assert_true(failures > 10);
    brix_buf_free(&ref);

    /* Parser: the line being buffered is dropped, the rest still parsed. */
    brix_buf_t got = BRIX_BUF_INIT;
    brix_prom_parser_t p;
    brix_prom_parser_init(&p, 0, collect_sample, &got);
    brix_buf_reserve(&got, 256);
    brix_alloc_fail_after(0);
    assert_int_equal(brix_prom_parser_feed(&p, "a 1\nb 2\n", 8), -ENOMEM);
    assert_int_equal(p.errors, 1);
    assert_int_equal(p.samples, 1);
    assert_string_equal(got.data, "b 2.0\n");
    brix_prom_parser_free(&p);
    brix_buf_free(&got);
}

/* ---- parser ---- */

/* Hand-written from a vLLM 0.6 server's /metrics, plus the awkward cases a
 * parser must cope with (escapes, NaN/Inf, timestamps, CRLF, trailing comma,
 * blanks, non-HELP comments). */
static const char vllm_text[] =
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching=\"True\","
    "gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"27153\",num_cpu_blocks=\"2048\"} 1.0\n"
    "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    "vllm:gpu_cache_usage_perc{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0123\n"
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_total counter\n"
    "vllm:prompt_tokens_total{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 123456.0\n"
    "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
    "# TYPE vllm:generation_tokens_total counter\n"
    "vllm:generation_tokens_total{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 7.89e+06\n"
    "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    "vllm:time_to_first_token_seconds_sum{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} "
    "1.2345\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"0.005\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 1.0\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"0.04\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 6.0\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 10.0\n"
    "vllm:time_to_first_token_seconds_count{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} "
    "10.0\n"
    "\n"
    "# HELP vllm:request_success_total Count of successfully processed requests.\n"
    "# TYPE vllm:request_success_total counter\n"
    "vllm:request_success_total{finished_reason=\"stop\",model_name=\"m\"} 9.0\n"
    "vllm:request_success_total{finished_reason=\"length\",model_name=\"m\",} 1.0\n"
    "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
    "# TYPE vllm:lora_requests_info gauge\n"
    "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"\",waiting_lora_adapters="
    "\"\"} 1.7291e+09\n"
    "# a free-form comment\n"
    "#\n"
    "   \t\n"
    "weird{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\"} NaN\n"
    "edge{k=\"v\"} +Inf 1700000000000\r\n"
    "edge{k=\"w\"} -Inf -5\n"
    "tiny 1e-05\n"
    "  indented_total   42   \n"
    "int_value 7\n"
    "no_labels_braces{} 0.5\n"
    "spaced { a = \"1\" , b=\"2\" } 3\n"
    "process_start_time_seconds 1.72e+09";

static const char vllm_golden[] =
    "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching="
    "\"True\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"27153\",num_cpu_blocks=\"2048\"} "
    "1.0\n"
    "vllm:num_requests_running{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0\n"
    "vllm:num_requests_waiting{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:gpu_cache_usage_perc{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0123\n"
    "vllm:prompt_tokens_total{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 123456.0\n"
    "vllm:generation_tokens_total{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 7890000.0\n"
    "vllm:time_to_first_token_seconds_sum{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} "
    "1.2345\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"0.005\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 1.0\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"0.04\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 6.0\n"
    "vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 10.0\n"
    "vllm:time_to_first_token_seconds_count{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} "
    "10.0\n"
    "vllm:request_success_total{finished_reason=\"stop\",model_name=\"m\"} 9.0\n"
    "vllm:request_success_total{finished_reason=\"length\",model_name=\"m\"} 1.0\n"
    "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"\",waiting_lora_adapters="
    "\"\"} 1729100000.0\n"
    "weird{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\"} NaN\n"
    "edge{k=\"v\"} +Inf 1700000000000\n"
    "edge{k=\"w\"} -Inf -5\n"
    "tiny 1e-05\n"
    "indented_total 42.0\n"
    "int_value 7.0\n"
    "no_labels_braces 0.5\n"
    "spaced{a=\"1\",b=\"2\"} 3.0\n"
    "process_start_time_seconds 1720000000.0\n";

static void check_weird(const brix_prom_sample_t *s, void *ud)
{
    int *seen = ud;
    if (strcmp(s->name, "weird"))
        return;
    assert_string_equal(brix_prom_label(s, "path"), "C:\\dir");
    assert_string_equal(brix_prom_label(s, "quote"), "say \"hi\"");
    assert_string_equal(brix_prom_label(s, "nl"), "a\nb");
    assert_null(brix_prom_label(s, "missing"));
    assert_true(isnan(s->value));
    (*seen)++;
}

static void test_parser_vllm_golden(void **state)
{
    parse_result_t res;
    parse_all(vllm_text, 0, &res);
    assert_string_equal(res.text.data, vllm_golden);
    assert_int_equal(res.errors, 0);
    assert_int_equal(res.samples, 24);
    brix_buf_free(&res.text);

    int seen = 0;
    brix_prom_parser_t p;
    brix_prom_parser_init(&p, 0, check_weird, &seen);
    brix_prom_parser_feed(&p, vllm_text, strlen(vllm_text));
    brix_prom_parser_finish(&p);
    brix_prom_parser_free(&p);
    assert_int_equal(seen, 1);
}

static void test_parser_chunking(void **state)
{
    static const char *inputs[3];
    inputs[0] = vllm_text;
    inputs[1] = small_golden;
    inputs[2] = "ok 1\nbad{ 1\n\r\nx{a=\"\\\"\"} 2 3\r\n# c\nlong_line_that_is_way_too_long 1\n"
                "y 2";
    for (size_t k = 0; k < 3; k++) {
        size_t len = strlen(inputs[k]);
        size_t max_line = k == 2 ? 20 : 0;
        parse_result_t all, one;
        parse_chunked(inputs[k], len, max_line, 0, 1, &all);
        parse_chunked(inputs[k], len, max_line, 1, 1, &one); /* byte at a time */
        assert_string_equal(one.text.data, all.text.data);
        assert_int_equal(one.samples, all.samples);
        assert_int_equal(one.errors, all.errors);
        brix_buf_free(&one.text);
        for (uint64_t seed = 1; seed < 200; seed++) {
            parse_result_t rnd;
            parse_chunked(inputs[k], len, max_line, 1 + seed % 50, seed * 7919, &rnd);
            assert_string_equal(rnd.text.data, all.text.data);
            assert_int_equal(rnd.samples, all.samples);
            assert_int_equal(rnd.errors, all.errors);
            brix_buf_free(&rnd.text);
        }
        if (k == 2) {
            assert_int_equal(all.samples, 3);
            assert_int_equal(all.errors, 2);
        }
        brix_buf_free(&all.text);
    }
}

static void test_parser_malformed(void **state)
{
    static const char *bad[] = {
        "no_value",
        "no_value_labels{a=\"b\"}",
        "bad-name 1",
        "1bad 1",
        "{a=\"b\"} 1",
        "m{a=\"b\" 1",
        "m{a=\"b} 1",
        "m{a=b} 1",
        "m{=\"b\"} 1",
        "m{a\"b\"} 1",
        "m{a=\"\\x\"} 1",
        "m{a=\"b\\",
        "m{a=\"1\",a=\"2\"} 1",
        "m{,} 1",
        "m{a=\"b\",,} 1",
        "m{a=\"b\"c=\"d\"} 1",
        "m{9a=\"b\"} 1",
        "m{a:b=\"c\"} 1",
        "m abc",
        "m 1x",
        "m 0x",
        "m - ",
        "m  1 2 3",
        "m 1 1.5",
        "m 1 99999999999999999999",
        "m 1 12abc",
        "m 1\rx",
        "m\xff 1",
        "m{a=\"b\"} 1 2 junk",
    };
    const size_t nbad = sizeof bad / sizeof bad[0];
    brix_buf_t in = BRIX_BUF_INIT;
    for (size_t i = 0; i < nbad; i++)
        brix_buf_printf(&in, "%s\nok{i=\"%zu\"} %zu\n", bad[i], i, i);
    /* An embedded NUL in a label value, a name and a value. */
    static const char nuls[] = "m{a=\"x\0y\"} 1\nm\0 1\nm 1\0\nend 1\n";
    brix_buf_append(&in, nuls, sizeof nuls - 1);
    /* 33 labels is one too many; 32 is fine. */
    brix_buf_append_str(&in, "many{");
    for (int i = 0; i < 33; i++)
        brix_buf_printf(&in, "l%d=\"v\",", i);
    brix_buf_append_str(&in, "} 1\nmax{");
    for (int i = 0; i < 32; i++)
        brix_buf_printf(&in, "l%d=\"v\",", i);
    brix_buf_append_str(&in, "} 1\n");

    parse_result_t res;
    parse_chunked(in.data, in.len, 0, 0, 1, &res);
    assert_int_equal(res.errors, nbad + 3 + 1);
    assert_int_equal(res.samples, nbad + 1 + 1);
    brix_buf_t want = BRIX_BUF_INIT;
    for (size_t i = 0; i < nbad; i++)
        brix_buf_printf(&want, "ok{i=\"%zu\"} %zu.0\n", i, i);
    brix_buf_append_str(&want, "end 1.0\n");
    assert_int_equal(strncmp(res.text.data, want.data, want.len), 0);
    assert_non_null(strstr(res.text.data + want.len, "max{l0=\"v\","));
    brix_buf_free(&want);
    brix_buf_free(&res.text);

    /* Same verdicts when fed a byte at a time. */
    parse_result_t one;
    parse_chunked(in.data, in.len, 0, 1, 3, &one);
    assert_int_equal(one.errors, nbad + 3 + 1);
    assert_int_equal(one.samples, nbad + 1 + 1);
    brix_buf_free(&one.text);
    brix_buf_free(&in);
}

static void test_parser_long_lines(void **state)
{
    enum { MAX = 32 };
    brix_buf_t in = BRIX_BUF_INIT;
    /* Exactly MAX bytes: accepted, with "\n" and with "\r\n". */
    const char *exact = "exact_line_thirty_two_bytes___ 1\n";
    assert_int_equal(strlen(exact) - 1, MAX);
    brix_buf_append_str(&in, exact);
    brix_buf_append_str(&in, "exact_line_thirty_two_bytes___ 2\r\n");
    /* MAX + 1: rejected, with either line ending. */
    brix_buf_append_str(&in, "exact_line_thirty_two_bytes____ 3\n");
    brix_buf_append_str(&in, "exact_line_thirty_two_bytes____ 4\r\n");
    /* A megabyte-long line, then a normal one. */
    brix_buf_append_str(&in, "huge{a=\"");
    for (int i = 0; i < 1 << 20; i++)
        brix_buf_append_char(&in, 'x');
    brix_buf_append_str(&in, "\"} 1\nafter 5\n");
    /* Over-long comments count too: the parser cannot tell before buffering. */
    brix_buf_append_str(&in, "# HELP this comment is longer than thirty-two bytes\n");
    /* And an over-long last line without a newline. */
    brix_buf_append_str(&in, "tail_tail_tail_tail_tail_tail_tail_tail 6");

    for (size_t chunk = 0; chunk <= 1; chunk++) {
        brix_buf_t got = BRIX_BUF_INIT;
        brix_prom_parser_t p;
        brix_prom_parser_init(&p, MAX, collect_sample, &got);
        size_t cap_max = 0;
        for (size_t off = 0; off < in.len;) {
            size_t n = chunk ? 1 : (in.len - off < 4096 ? in.len - off : 4096);
            assert_int_equal(brix_prom_parser_feed(&p, in.data + off, n), 0);
            off += n;
            if (p.line.cap > cap_max)
                cap_max = p.line.cap;
        }
        brix_prom_parser_finish(&p);
        assert_true(cap_max <= 4 * MAX); /* no growth with the long line */
        assert_string_equal(got.data, "exact_line_thirty_two_bytes___ 1.0\n"
                                      "exact_line_thirty_two_bytes___ 2.0\n"
                                      "after 5.0\n");
        assert_int_equal(p.samples, 3);
        assert_int_equal(p.errors, 5);
        assert_false(p.skipping);
        brix_prom_parser_free(&p);
        brix_buf_free(&got);
    }
    brix_buf_free(&in);
}

/* Writer output parsed back gives the same values, bit for bit. */
typedef struct rt {
    double want[300];
    int seen[300];
    const char *weird;
    int weird_seen;
    double buckets[4];
    double sum, count;
} rt_t;

static void rt_sample(const brix_prom_sample_t *s, void *ud)
{
    rt_t *rt = ud;
    if (!strcmp(s->name, "rt_gauge")) {
        const char *i = brix_prom_label(s, "i");
        assert_non_null(i);
        int idx = atoi(i);
        if (idx < 0 || idx >= 300) {
            fail_msg("bad index %d", idx);
            return;
        }
        if (isnan(rt->want[idx]))
            assert_true(isnan(s->value));
        else
            assert_memory_equal(&s->value, &rt->want[idx], sizeof(double));
        rt->seen[idx]++;
    } else if (!strcmp(s->name, "rt_weird")) {
        assert_string_equal(brix_prom_label(s, "v"), rt->weird);
        rt->weird_seen++;
    } else if (!strcmp(s->name, "rt_hist_bucket")) {
        const char *le = brix_prom_label(s, "le");
        static const char *les[] = { "1e-05", "0.5", "1000000000000000.0", "+Inf" };
        for (int i = 0; i < 4; i++)
            if (!strcmp(le, les[i]))
                rt->buckets[i] = s->value;
    } else if (!strcmp(s->name, "rt_hist_sum")) {
        rt->sum = s->value;
    } else if (!strcmp(s->name, "rt_hist_count")) {
        rt->count = s->value;
    }
}

static void test_round_trip(void **state)
{
    static rt_t rt;
    memset(&rt, 0, sizeof rt);
    rt.weird = "tab\there \"quoted\" back\\slash\nnewline {braces}, commas= é";
    brix_metrics_t *r = brix_metrics_new();
    const char *gl[] = { "i", NULL };
    brix_metric_family_t *g =
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "rt_gauge", "G.", gl, NULL, 0);
    uint64_t seed = 42;
    for (int i = 0; i < 300; i++) {
        double v;
        if (i == 0)
            v = NAN;
        else if (i == 1)
            v = INFINITY;
        else if (i == 2)
            v = -INFINITY;
        else if (i == 3)
            v = -0.0;
        else if (i < 100)
            v = (double)(int64_t)rng_next(&seed) / 1e3;
        else {
            uint64_t bits = rng_next(&seed);
            memcpy(&v, &bits, sizeof v);
            if (isnan(v))
                v = 1;
        }
        rt.want[i] = v;
        char lv[16];
        snprintf(lv, sizeof lv, "%d", i);
        const char *vals[] = { lv };
        brix_metric_set(brix_metric_child(g, vals), v);
    }
    const char *wl[] = { "v", NULL };
    brix_metric_family_t *w =
        brix_metrics_family(r, BRIX_METRIC_GAUGE, "rt_weird", "W.", wl, NULL, 0);
    const char *wv[] = { rt.weird };
    brix_metric_set(brix_metric_child(w, wv), 1);
    const double b[] = { 1e-05, 0.5, 1e15 };
    brix_metric_family_t *h =
        brix_metrics_family(r, BRIX_METRIC_HISTOGRAM, "rt_hist", "H.", NULL, b, 3);
    brix_metric_t *hm = brix_metric_child(h, NULL);
    const double obs[] = { 1e-06, 0.25, 0.5, 3, 1e16, 0.125 };
    for (size_t i = 0; i < 6; i++)
        brix_metric_observe(hm, obs[i]);

    brix_buf_t out = BRIX_BUF_INIT;
    assert_int_equal(brix_metrics_write(r, &out), 0);
    brix_prom_parser_t p;
    brix_prom_parser_init(&p, 0, rt_sample, &rt);
    assert_int_equal(brix_prom_parser_feed(&p, out.data, out.len), 0);
    brix_prom_parser_finish(&p);
    assert_int_equal(p.errors, 0);
    assert_int_equal(p.samples, 300 + 1 + 4 + 2);
    brix_prom_parser_free(&p);
    for (int i = 0; i < 300; i++)
        assert_int_equal(rt.seen[i], 1);
    assert_int_equal(rt.weird_seen, 1);
    assert_true(rt.buckets[0] == 1 && rt.buckets[1] == 4 && rt.buckets[2] == 5 &&
                rt.buckets[3] == 6);
    assert_true(rt.count == 6);
    assert_true(rt.sum == brix_metric_get(hm));
    brix_buf_free(&out);
    brix_metrics_free(r);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_format_double, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_golden, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_promtool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_children, setup, teardown),
        cmocka_unit_test_setup_teardown(test_child_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_families, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collect_hooks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enomem, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parser_vllm_golden, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parser_chunking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parser_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parser_long_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_gauges, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
