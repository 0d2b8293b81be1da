/*
 * metrics — Prometheus exposition (text format 0.0.4) and a resumable parser.
 *
 * Writer: a registry of metric families (counter, gauge, histogram), each with
 * fixed label names; a child per distinct label-value tuple. Updates are
 * lock-free atomics so any thread may update; creating a child takes the
 * family's mutex. Names are written as given: counters are registered with
 * their full sample name (e.g. "vllm:prompt_tokens_total"), which is also what
 * HELP and TYPE lines carry, as prometheus_client does for format 0.0.4.
 * Every family gets HELP and TYPE lines. An unlabelled family has its one
 * child from registration on, so it always prints a sample (0 until updated);
 * a labelled family with no children yet prints HELP/TYPE only.
 * Collect hooks run before each write so owners can refresh gauges.
 *
 * Parser: feeds on arbitrary chunks (byte-at-a-time gives the same result as
 * all-at-once), calls back once per sample with name, labels and value; never
 * allocates per sample beyond its line buffer (bounded by max_line); tolerant
 * of comments, timestamps, escapes, NaN/+Inf; errors are counted, not fatal.
 */
#ifndef BRIX_CORE_METRICS_H
#define BRIX_CORE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef enum brix_metric_type {
    BRIX_METRIC_COUNTER,
    BRIX_METRIC_GAUGE,
    BRIX_METRIC_HISTOGRAM,
} brix_metric_type_t;

typedef struct brix_metrics brix_metrics_t;
typedef struct brix_metric_family brix_metric_family_t;
typedef struct brix_metric brix_metric_t;

brix_metrics_t *brix_metrics_new(void);
void brix_metrics_free(brix_metrics_t *r);

/* Children per labelled family (the default cap). Past the cap a lookup of a
 * new label set gets the family's overflow child, whose label values are all
 * "other", and counts a drop: the registry then also exposes
 * brix_metrics_dropped_children_total{family}. 0 = no cap. Existing children
 * stay; a lower cap only stops new ones. */
#define BRIX_METRICS_MAX_CHILDREN 10000
#define BRIX_METRICS_DROPPED      "brix_metrics_dropped_children_total"
void brix_metrics_set_max_children(brix_metrics_t *r, size_t max);

/* Registers a family. label_names is NULL-terminated (or NULL for none).
 * buckets (histograms only) are the finite upper bounds, strictly ascending;
 * +Inf is implied (a trailing +Inf is accepted and ignored). Returns NULL on
 * ENOMEM, a duplicate name, or an invalid metric/label name or bucket list. */
brix_metric_family_t *brix_metrics_family(brix_metrics_t *r, brix_metric_type_t type,
                                          const char *name, const char *help,
                                          const char *const *label_names, const double *buckets,
                                          size_t nbuckets);
/* Gets or creates the child for these label values (as many as label names;
 * NULL when the family has no labels). Children live as long as the registry
 * (or until brix_metric_family_clear). */
brix_metric_t *brix_metric_child(brix_metric_family_t *f, const char *const *label_values);

/* Updates are lock-free and accept m == NULL (a child that failed with ENOMEM)
 * as a no-op. Counters ignore negative and NaN increments; set also works on
 * a counter, to mirror a total that is kept elsewhere. */
void brix_metric_add(brix_metric_t *m, double v);     /* counter, gauge */
void brix_metric_set(brix_metric_t *m, double v);     /* gauge (counter: mirror) */
void brix_metric_observe(brix_metric_t *m, double v); /* histogram */
double brix_metric_get(const brix_metric_t *m);       /* counter/gauge value; histogram sum */
uint64_t brix_metric_count(const brix_metric_t *m);   /* histogram count */

/* Removes every child (for info-style gauges whose label values change).
 * Safe against concurrent writes and lookups, but only safe when no other
 * thread holds a child pointer of this family (typically: call it from a
 * collect hook, and never cache that family's children). */
void brix_metric_family_clear(brix_metric_family_t *f);
/* Lookups that went to the overflow child since registration. */
uint64_t brix_metric_family_dropped(const brix_metric_family_t *f);

/* Hooks run in the order added, at the start of every brix_metrics_write,
 * never two at once (writes are serialised). A hook may update metrics,
 * create or clear children, and register families. The hook is silently not
 * added on ENOMEM. */
typedef void (*brix_metrics_collect_fn)(brix_metrics_t *r, void *ud);
void brix_metrics_on_collect(brix_metrics_t *r, brix_metrics_collect_fn fn, void *ud);

/* Registers the process gauges brix's own components export (not engine-sim,
 * whose exposition is vLLM's): process_resident_memory_bytes and
 * process_open_fds (the Prometheus client conventions, read from /proc at
 * each scrape), and brix_heap_live_bytes / brix_heap_live_allocations (what
 * the counted allocator holds: a leak shows there exactly, where RSS is
 * blurred by the allocator). pm is the caller's and lives as long as the
 * registry. 0, or -ENOMEM. */
typedef struct brix_process_metrics {
    brix_metric_t *rss, *fds, *heap_bytes, *heap_allocs;
} brix_process_metrics_t;
int brix_metrics_add_process(brix_metrics_t *r, brix_process_metrics_t *pm);

/* Appends the exposition text of every family, in registration order, and
 * returns 0; on -ENOMEM out is left as it was. May run while other threads
 * update values (a scrape may then be slightly inconsistent). */
int brix_metrics_write(brix_metrics_t *r, brix_buf_t *out);

/* Formats a double the way Prometheus clients do: "1.0", "0.25", "1e-05",
 * "+Inf", "-Inf", "NaN". out must hold 32 bytes. */
void brix_metrics_format_double(char out[32], double v);

/* ---- parser ---- */

typedef struct brix_prom_label {
    const char *name;
    const char *value; /* unescaped */
} brix_prom_label_t;

#define BRIX_PROM_MAX_LABELS 32

typedef struct brix_prom_sample {
    const char *name;
    brix_prom_label_t labels[BRIX_PROM_MAX_LABELS];
    size_t nlabels;
    double value;
    bool has_timestamp;
    int64_t timestamp_ms;
} brix_prom_sample_t;

typedef void (*brix_prom_sample_fn)(const brix_prom_sample_t *s, void *ud);

typedef struct brix_prom_parser {
    brix_buf_t line;  /* current partial line */
    size_t max_line;  /* longer lines are skipped and counted as errors */
    bool skipping;    /* inside an over-long line */
    uint64_t samples; /* samples delivered */
    uint64_t errors;  /* malformed lines skipped */
    brix_prom_sample_fn fn;
    void *ud;
} brix_prom_parser_t;

/* max_line counts the bytes of a line without its "\r\n" or "\n"; 0 selects
 * a default of 16 KiB. */
void brix_prom_parser_init(brix_prom_parser_t *p, size_t max_line, brix_prom_sample_fn fn,
                           void *ud);
/* Feeds a chunk; complete lines are parsed and delivered. Returns 0 or
 * -ENOMEM; on -ENOMEM only the line being buffered is lost (counted as an
 * error) and the rest of the chunk is still parsed. */
int brix_prom_parser_feed(brix_prom_parser_t *p, const char *data, size_t len);
/* Parses a final line without a trailing newline; the parser is then ready
 * for a new stream. */
int brix_prom_parser_finish(brix_prom_parser_t *p);
void brix_prom_parser_free(brix_prom_parser_t *p);

/* Label lookup helper; NULL when absent. */
const char *brix_prom_label(const brix_prom_sample_t *s, const char *name);

#endif
