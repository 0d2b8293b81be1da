/*
 * The report of `brix bench`: one row per strategy (percentiles in simulated
 * seconds), ratios against random and least-request, results.json with every
 * number, and TTFT / end-to-end latency CDF plots through gnuplot.
 */
#include "bench/bench.h"

#include "core/alloc.h"
#include "core/buf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_pct(double *v, size_t n, double p)
{
    if (!n)
        return NAN;
    qsort(v, n, sizeof *v, cmp_d);
    double k = (double)(n - 1) * p / 100.0;
    size_t f = (size_t)k;
    size_t c = f + 1 < n ? f + 1 : f;
    return v[f] + (v[c] - v[f]) * (k - (double)f);
}

typedef struct summary {
    size_t ok, failed;
    double ttft[3], itl[2], e2e[3]; /* p50 p90 p99 / p50 p99 / p50 p90 p99 */
    double tok_s, goodput, hit, spread, decision_us, preempt;
    double ttft_mean, req_s, ext_hit; /* ext_hit: the KV store's share of looked-up tokens */
    double *ttft_v, *e2e_v;
    size_t nv;
} summary_t;

static void summarize(const bench_cfg_t *c, bench_run_t *r, summary_t *s)
{
    memset(s, 0, sizeof *s);
    double ts = c->time_scale;
    s->ttft_v = brix_calloc(r->n + 1, sizeof *s->ttft_v);
    s->e2e_v = brix_calloc(r->n + 1, sizeof *s->e2e_v);
    double *itl = brix_calloc(r->nitl + 1, sizeof *itl);
    if (!s->ttft_v || !s->e2e_v || !itl) {
        brix_free(itl);
        return;
    }
    double tokens = 0, good = 0, first = INFINITY, last = 0, ttft_sum = 0;
    for (size_t i = 0; i < r->n; i++) {
        bench_res_t *x = &r->res[i];
        first = x->sent < first ? x->sent : first;
        if (!x->ok || !x->events) {
            s->failed++;
            continue;
        }
        s->ok++;
        last = x->done > last ? x->done : last;
        double ttft = (x->first - x->sent) / ts, e2e = (x->done - x->sent) / ts;
        s->ttft_v[s->nv] = ttft;
        ttft_sum += ttft;
        s->e2e_v[s->nv] = e2e;
        s->nv++;
        tokens += x->out_tokens ? x->out_tokens : x->events;
        double tpot = x->events > 1 ? x->itl_sum / (x->events - 1) / ts : 0;
        if (ttft <= c->slo_ttft && tpot <= c->slo_tpot)
            good++;
    }
    for (size_t i = 0; i < r->nitl; i++)
        itl[i] = r->itl[i] / ts;
    double span = last > first ? (last - first) / ts : 1;
    s->tok_s = tokens / span;
    s->goodput = good / span;
    s->req_s = (double)s->ok / span;
    s->ttft_mean = s->nv ? ttft_sum / (double)s->nv : NAN;
    s->ext_hit = r->ext_queries > 0 ? r->ext_hits / r->ext_queries : 0;
    double *tmp = brix_calloc(s->nv + 1, sizeof *tmp);
    if (tmp) {
        memcpy(tmp, s->ttft_v, s->nv * sizeof *tmp);
        s->ttft[0] = bench_pct(tmp, s->nv, 50);
        s->ttft[1] = bench_pct(tmp, s->nv, 90);
        s->ttft[2] = bench_pct(tmp, s->nv, 99);
        memcpy(tmp, s->e2e_v, s->nv * sizeof *tmp);
        s->e2e[0] = bench_pct(tmp, s->nv, 50);
        s->e2e[1] = bench_pct(tmp, s->nv, 90);
        s->e2e[2] = bench_pct(tmp, s->nv, 99);
        brix_free(tmp);
    }
    s->itl[0] = bench_pct(itl, r->nitl, 50);
    s->itl[1] = bench_pct(itl, r->nitl, 99);
    brix_free(itl);
    s->hit = r->prefix_queries > 0 ? r->prefix_hits / r->prefix_queries : 0;
    double sum = 0, mx = 0;
    for (int i = 0; i < r->npods; i++) {
        sum += r->pod_requests[i];
        mx = r->pod_requests[i] > mx ? r->pod_requests[i] : mx;
    }
    s->spread = sum > 0 ? mx / (sum / r->npods) : 0;
    s->decision_us = r->gw_decision_us;
    s->preempt = r->preemptions;
}

static const summary_t *find(const summary_t *s, bench_run_t *runs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(runs[i].strategy, name))
            return &s[i];
    return NULL;
}

static void plot(const bench_cfg_t *c, bench_run_t *runs, summary_t *s, size_t n, const char *what,
                 int which)
{
    char gp[1024];
    snprintf(gp, sizeof gp, "%s/%s_cdf.gp", c->out, what);
    FILE *g = fopen(gp, "w");
    if (!g)
        return;
    fprintf(g,
            "set terminal svg size 720,420 dynamic\nset output '%s/%s_cdf.svg'\n"
            "set title '%s CDF (%s)'\nset xlabel '%s (simulated seconds)'\nset ylabel "
            "'fraction of requests'\nset logscale x\nset key right bottom\nset grid\nplot ",
            c->out, what, what, c->scenario, what);
    for (size_t i = 0; i < n; i++) {
        char dat[1024];
        snprintf(dat, sizeof dat, "%s/%s_%s.dat", c->out, what, runs[i].strategy);
        FILE *d = fopen(dat, "w");
        if (!d)
            continue;
        double *v = which ? s[i].e2e_v : s[i].ttft_v;
        qsort(v, s[i].nv, sizeof *v, cmp_d);
        for (size_t k = 0; k < s[i].nv; k++)
            fprintf(d, "%.6f %.6f\n", v[k] > 1e-6 ? v[k] : 1e-6, (double)(k + 1) / s[i].nv);
        fclose(d);
        fprintf(g, "%s'%s' using 1:2 with lines lw 2 title '%s'", i ? ", " : "", dat,
                runs[i].strategy);
    }
    fprintf(g, "\n");
    fclose(g);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>/dev/null", gp);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: gnuplot failed for %s (plots skipped)\n", gp);
}

int bench_report(const bench_cfg_t *c, const bench_workload_t *w, bench_run_t *runs, size_t n)
{
    summary_t *s = brix_calloc(n, sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < n; i++)
        summarize(c, &runs[i], &s[i]);
    brix_buf_t md = BRIX_BUF_INIT;
    brix_buf_printf(&md,
                    "Workload: %s; %zu requests; %lld x %s replicas at --time-scale %g; latencies "
                    "in simulated seconds; SLO TTFT <= %gs and TPOT <= %gs.\n\n",
                    w->about, w->n, (long long)c->replicas, c->gpu, c->time_scale, c->slo_ttft,
                    c->slo_tpot);
    brix_buf_append_str(&md, "| strategy | ok / failed | TTFT p50 | p90 | p99 | ITL p50 | p99 | "
                             "e2e p50 | p99 | output tok/s | goodput req/s | prefix hit | "
                             "load max/mean | preemptions | decision µs |\n"
                             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n; i++) {
        summary_t *x = &s[i];
        brix_buf_printf(&md,
                        "| %s | %zu / %zu | %.3f | %.3f | %.3f | %.4f | %.4f | %.2f | %.2f | "
                        "%.0f | %.2f | %.1f%% | %.2f | %.0f | %s |\n",
                        runs[i].strategy, x->ok, x->failed, x->ttft[0], x->ttft[1], x->ttft[2],
                        x->itl[0], x->itl[1], x->e2e[0], x->e2e[2], x->tok_s, x->goodput,
                        x->hit * 100, x->spread, x->preempt, "-");
        if (x->decision_us > 0) {
            /* replace the trailing "- |" with the number */
            md.len -= 4;
            brix_buf_printf(&md, " %.1f |\n", x->decision_us);
        }
    }
    const summary_t *rnd = find(s, runs, n, "random"), *lr = find(s, runs, n, "least-request");
    brix_buf_append_str(&md, "\n");
    for (size_t i = 0; i < n; i++) {
        if (rnd && &s[i] != rnd) {
            brix_buf_printf(&md, "- %s vs random: P99 TTFT %.2fx, output tokens/s %.2fx",
                            runs[i].strategy, s[i].ttft[2] / rnd->ttft[2], s[i].tok_s / rnd->tok_s);
            if (rnd->goodput > 0)
                brix_buf_printf(&md, ", goodput %.2fx\n", s[i].goodput / rnd->goodput);
            else
                brix_buf_printf(&md, ", goodput %.2f vs 0 req/s\n", s[i].goodput);
        }
        if (lr && &s[i] != lr)
            brix_buf_printf(&md, "- %s vs least-request: P99 TTFT %.2fx, output tokens/s %.2fx\n",
                            runs[i].strategy, s[i].ttft[2] / lr->ttft[2], s[i].tok_s / lr->tok_s);
    }
    /* the KV store: each "S+kvcache" run beside its "S" run */
    for (size_t i = 0; i < n; i++) {
        const char *plus = strstr(runs[i].strategy, "+kvcache");
        if (!plus)
            continue;
        char base[64];
        snprintf(base, sizeof base, "%.*s", (int)(plus - runs[i].strategy), runs[i].strategy);
        const summary_t *b = find(s, runs, n, base), *k = &s[i];
        if (!b)
            continue;
        brix_buf_printf(
            &md,
            "\n| %s | TTFT mean | p50 | p99 | output tok/s | req/s | local prefix hit | "
            "store hit (tokens) |\n|---|---|---|---|---|---|---|---|\n",
            base);
        const summary_t *row[2] = { b, k };
        for (int r = 0; r < 2; r++)
            brix_buf_printf(&md, "| %s | %.3f | %.3f | %.3f | %.0f | %.3f | %.1f%% | %.1f%% |\n",
                            r ? "with the store" : "without", row[r]->ttft_mean, row[r]->ttft[0],
                            row[r]->ttft[2], row[r]->tok_s, row[r]->req_s, row[r]->hit * 100,
                            row[r]->ext_hit * 100);
        brix_buf_printf(&md, "| with / without | %.2fx | %.2fx | %.2fx | %.2fx | %.2fx | | |\n",
                        k->ttft_mean / b->ttft_mean, k->ttft[0] / b->ttft[0],
                        k->ttft[2] / b->ttft[2], k->tok_s / b->tok_s, k->req_s / b->req_s);
        brix_buf_printf(&md,
                        "\nWith the store: %.0f blocks saved and %.0f loaded by the engines; "
                        "%.0f of %.0f looked-up prompt tokens came from the store; requests "
                        "waited %.1f simulated s in all for their loads (%.1f ms per 1,000 "
                        "loaded tokens).\n",
                        runs[i].kv_saved, runs[i].kv_loaded, runs[i].ext_hits, runs[i].ext_queries,
                        runs[i].kv_wait,
                        runs[i].ext_hits > 0 ? runs[i].kv_wait / runs[i].ext_hits * 1e6 : 0.0);
    }
    bench_write_results_md(c, &md);
    /* results.json */
    char path[1024];
    snprintf(path, sizeof path, "%s/results.json", c->out);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f,
                "{\"scenario\":\"%s\",\"requests\":%zu,\"replicas\":%lld,\"gpu\":\"%s\","
                "\"time_scale\":%g,\"slo_ttft\":%g,\"slo_tpot\":%g,\"runs\":[",
                c->scenario, w->n, (long long)c->replicas, c->gpu, c->time_scale, c->slo_ttft,
                c->slo_tpot);
        for (size_t i = 0; i < n; i++) {
            summary_t *x = &s[i];
            fprintf(
                f,
                "%s{\"strategy\":\"%s\",\"ok\":%zu,\"failed\":%zu,\"ttft_p50\":%.6f,"
                "\"ttft_p90\":%.6f,\"ttft_p99\":%.6f,\"itl_p50\":%.6f,\"itl_p99\":%.6f,"
                "\"e2e_p50\":%.6f,\"e2e_p90\":%.6f,\"e2e_p99\":%.6f,\"output_tokens_per_s\":%.3f,"
                "\"goodput_rps\":%.4f,\"prefix_hit_rate\":%.5f,\"load_max_over_mean\":%.4f,"
                "\"preemptions\":%.0f,\"decision_us\":%.3f,\"ttft_mean\":%.6f,\"req_per_s\":%.4f,"
                "\"kvcache\":%s,\"store_queries_tokens\":%.0f,\"store_hits_tokens\":%.0f,"
                "\"store_hit_rate\":%.5f,\"store_saved_blocks\":%.0f,\"store_loaded_blocks\":%.0f,"
                "\"pod_requests\":[",
                i ? "," : "", runs[i].strategy, x->ok, x->failed, x->ttft[0], x->ttft[1],
                x->ttft[2], x->itl[0], x->itl[1], x->e2e[0], x->e2e[1], x->e2e[2], x->tok_s,
                x->goodput, x->hit, x->spread, x->preempt, x->decision_us, x->ttft_mean, x->req_s,
                runs[i].kvcache ? "true" : "false", runs[i].ext_queries, runs[i].ext_hits,
                x->ext_hit, runs[i].kv_saved, runs[i].kv_loaded);
            for (int k = 0; k < runs[i].npods; k++)
                fprintf(f, "%s%.0f", k ? "," : "", runs[i].pod_requests[k]);
            fprintf(f, "]}");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    plot(c, runs, s, n, "ttft", 0);
    plot(c, runs, s, n, "e2e", 1);
    for (size_t i = 0; i < n; i++) {
        brix_free(s[i].ttft_v);
        brix_free(s[i].e2e_v);
    }
    brix_free(s);
    brix_buf_free(&md);
    fprintf(stderr, "bench: wrote %s/results.md, results.json and ttft_cdf.svg, e2e_cdf.svg\n",
            c->out);
    return 0;
}
