/*
 * PodAutoscaler objects (controller/objects): AIBrix's own samples parse
 * unchanged but for the target's name, and every annotation lands in
 * brix_as_params_t with AIBrix's defaults and units (facts: AIBrix
 * api/autoscaling/v1alpha1/podautoscaler_types.go, samples/autoscaling/,
 * docs/source/features/autoscaling/metric-based-autoscaling.rst). Each
 * refusal is pinned to its exact file:line:col and field path, each accepted
 * object survives its canonical JSON (the state file) unchanged, and a
 * failed allocation anywhere in the parse leaks nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controller/ctl.h"
#include "controller/objects.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/yaml.h"
#include "leak_check.h"

#define HDR                                                                                        \
    "apiVersion: autoscaling.aibrix.ai/v1alpha1\n"                                                 \
    "kind: PodAutoscaler\n"

/* The APA sample of shared/reference/aibrix.md §3 (AIBrix's samples/autoscaling/apa.yaml). */
static const char apa_sample[] =
    HDR "metadata: {name: qwen-7b-apa}\n"
        "spec:\n"
        "  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: qwen-7b}\n"
        "  minReplicas: 1\n"
        "  maxReplicas: 6\n"
        "  scalingStrategy: APA\n"
        "  metricsSources:\n"
        "  - {metricSourceType: pod, protocolType: http, port: \"8000\", path: metrics,\n"
        "     targetMetric: gpu_cache_usage_perc, targetValue: \"0.5\"}\n";

/* Field by field: padding bytes of brix_as_params_t are not part of it. */
static bool params_equal(const brix_as_params_t *a, const brix_as_params_t *b)
{
    bool same = a->strategy == b->strategy && a->min_replicas == b->min_replicas &&
                a->max_replicas == b->max_replicas && a->nmetrics == b->nmetrics &&
                a->stable_window_ms == b->stable_window_ms &&
                a->panic_window_ms == b->panic_window_ms &&
                a->panic_threshold == b->panic_threshold && a->max_up_rate == b->max_up_rate &&
                a->max_down_rate == b->max_down_rate && a->up_tolerance == b->up_tolerance &&
                a->down_tolerance == b->down_tolerance &&
                a->up_stabilization_ms == b->up_stabilization_ms &&
                a->down_stabilization_ms == b->down_stabilization_ms &&
                a->scale_to_zero == b->scale_to_zero && a->zero_grace_ms == b->zero_grace_ms &&
                a->slo_ttft_s == b->slo_ttft_s && a->slo_itl_s == b->slo_itl_s &&
                a->slo_headroom == b->slo_headroom;
    for (int i = 0; same && i < a->nmetrics && i < BRIX_AS_MAX_METRICS; i++)
        same = a->target[i] == b->target[i];
    return same;
}

static int parse(const char *text, brix_obj_t **o, char *err, size_t errlen)
{
    brix_yaml_node_t *doc = NULL;
    *o = NULL;
    int rc = brix_yaml_parse("pa.yaml", text, strlen(text), &doc, err, errlen);
    if (!rc)
        rc = brix_obj_parse(doc, "pa.yaml", NULL, o, err, errlen);
    brix_yaml_free(doc);
    return rc;
}

static brix_obj_t *parse_ok(const char *text)
{
    char err[512] = "";
    brix_obj_t *o;
    if (parse(text, &o, err, sizeof err))
        fail_msg("refused: %s\n%s", err, text);
    assert_int_equal(o->kind, BRIX_KIND_AUTOSCALER);
    return o;
}

/* The state file's round trip: canonical JSON → parse → the same object, and
 * the same canonical JSON again. */
static void round_trip(const brix_obj_t *o)
{
    brix_buf_t a = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
    assert_int_equal(brix_obj_json_open(&a, o), 0);
    assert_int_equal(brix_buf_append_char(&a, '}'), 0);
    brix_obj_t *back = parse_ok(a.data);
    assert_true(brix_obj_same(o, back));
    assert_int_equal(brix_obj_json_open(&b, back), 0);
    assert_int_equal(brix_buf_append_char(&b, '}'), 0);
    assert_string_equal(a.data, b.data);
    assert_true(params_equal(&o->pa.params, &back->pa.params));
    brix_obj_free(back);
    brix_buf_free(&a);
    brix_buf_free(&b);
}

/* Refused with exactly "pa.yaml:LINE:COL: PATH: " and a reason containing want. */
static void refuse(const char *text, const char *where, const char *want)
{
    char err[1024] = "";
    brix_obj_t *o;
    if (!parse(text, &o, err, sizeof err))
        fail_msg("accepted, expected %s %s\n%s", where, want, text);
    assert_null(o);
    if (strncmp(err, where, strlen(where)) || !strstr(err + strlen(where), want))
        fail_msg("got    %s\nwanted %s…%s", err, where, want);
}

static void test_apa_sample(void **state)
{
    (void)state;
    brix_obj_t *o = parse_ok(apa_sample);
    const brix_pa_spec_t *p = &o->pa;
    assert_string_equal(o->api_version, "autoscaling.aibrix.ai/v1alpha1");
    assert_string_equal(p->target_kind, "Deployment");
    assert_string_equal(p->target_api_version, "apps/v1");
    assert_string_equal(p->target_name, "qwen-7b");
    assert_int_equal(p->min_replicas, 1);
    assert_int_equal(p->max_replicas, 6);
    assert_int_equal(p->strategy, BRIX_AS_APA);
    assert_int_equal(p->nmetrics, 1);
    assert_int_equal(p->metrics[0].type, BRIX_PA_SRC_POD);
    assert_string_equal(p->metrics[0].protocol, "http");
    assert_string_equal(p->metrics[0].port, "8000");
    assert_string_equal(p->metrics[0].path, "metrics");
    assert_string_equal(p->metrics[0].target_metric, "gpu_cache_usage_perc");
    assert_string_equal(p->metrics[0].target_value, "0.5");
    assert_true(p->metrics[0].target == 0.5);
    assert_int_equal(p->nschedules, 0);
    assert_null(p->predictive_mode);
    /* AIBrix's defaults, all filled in for the runtime */
    const brix_as_params_t *q = &p->params;
    assert_int_equal(q->strategy, BRIX_AS_APA);
    assert_int_equal(q->min_replicas, 1);
    assert_int_equal(q->max_replicas, 6);
    assert_int_equal(q->nmetrics, 1);
    assert_true(q->target[0] == 0.5);
    assert_int_equal(q->stable_window_ms, 180000);
    assert_int_equal(q->panic_window_ms, 60000);
    assert_true(q->panic_threshold == 2.0);
    assert_true(q->max_up_rate == 2.0 && q->max_down_rate == 2.0);
    assert_true(q->up_tolerance == 0.1 && q->down_tolerance == 0.1);
    assert_int_equal(q->up_stabilization_ms, 0);
    assert_int_equal(q->down_stabilization_ms, 300000);
    assert_false(q->scale_to_zero);
    assert_int_equal(q->zero_grace_ms, 180000);
    assert_true(q->slo_ttft_s == 0 && q->slo_itl_s == 0);
    /* canonical JSON: the fields as given, in AIBrix's names */
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_obj_json_open(&b, o), 0);
    assert_non_null(
        strstr(b.data, "\"kind\":\"PodAutoscaler\",\"metadata\":{\"name\":\"qwen-7b-apa\""));
    assert_non_null(strstr(
        b.data,
        "\"spec\":{\"scaleTargetRef\":{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\","
        "\"name\":\"qwen-7b\"},\"minReplicas\":1,\"maxReplicas\":6,\"scalingStrategy\":\"APA\","
        "\"metricsSources\":[{\"metricSourceType\":\"pod\",\"protocolType\":\"http\","
        "\"path\":\"metrics\",\"port\":\"8000\",\"targetMetric\":\"gpu_cache_usage_perc\","
        "\"targetValue\":\"0.5\"}]}"));
    brix_buf_free(&b);
    round_trip(o);
    brix_obj_free(o);
}

/* The annotated KPA example of AIBrix's metric-based-autoscaling docs, with
 * the spec of samples/autoscaling/kpa.yaml, plus keys brix does not read. */
static const char kpa_annotated[] =
    HDR "metadata:\n"
        "  name: example-kpa\n"
        "  annotations:\n"
        "    autoscaling.aibrix.ai/max-scale-up-rate: \"3.0\"\n"
        "    autoscaling.aibrix.ai/max-scale-down-rate: \"2.0\"\n"
        "    autoscaling.aibrix.ai/scale-up-tolerance: \"0.2\"\n"
        "    autoscaling.aibrix.ai/scale-down-tolerance: \"0.1\"\n"
        "    autoscaling.aibrix.ai/panic-threshold: \"2.5\"\n"
        "    autoscaling.aibrix.ai/scale-up-cooldown-window: \"30s\"\n"
        "    autoscaling.aibrix.ai/scale-down-cooldown-window: \"5m\"\n"
        "    autoscaling.aibrix.ai/scale-to-zero: \"false\"\n"
        "    autoscaling.aibrix.ai/some-future-knob: \"7\"\n"
        "    kpa.autoscaling.aibrix.ai/scale-down-delay: 0s\n"
        "    example.com/owner: team-a\n"
        "spec:\n"
        "  scalingStrategy: KPA\n"
        "  minReplicas: 1\n"
        "  maxReplicas: 8\n"
        "  observeWindowSeconds: 180\n"
        "  panicWindowSeconds: 30\n"
        "  predictive: {mode: Auto, horizonSeconds: 120}\n"
        "  metricsSources:\n"
        "    - metricSourceType: pod\n"
        "      protocolType: http\n"
        "      port: '8000'\n"
        "      path: metrics\n"
        "      targetMetric: gpu_cache_usage_perc\n"
        "      targetValue: '0.5'\n"
        "  scaleTargetRef:\n"
        "    apiVersion: apps/v1\n"
        "    kind: Deployment\n"
        "    name: llama-3-8b\n";

static void test_kpa_annotations(void **state)
{
    (void)state;
    brix_obj_t *o = parse_ok(kpa_annotated);
    const brix_as_params_t *q = &o->pa.params;
    assert_int_equal(q->strategy, BRIX_AS_KPA);
    assert_true(q->max_up_rate == 3.0);
    assert_true(q->max_down_rate == 2.0);
    assert_true(q->up_tolerance == 0.2);
    assert_true(q->down_tolerance == 0.1);
    assert_true(q->panic_threshold == 2.5);
    assert_int_equal(q->up_stabilization_ms, 30000);
    assert_int_equal(q->down_stabilization_ms, 300000); /* "5m" */
    assert_false(q->scale_to_zero);
    assert_int_equal(q->stable_window_ms, 180000);
    assert_int_equal(q->panic_window_ms, 30000);
    assert_int_equal(o->pa.observe_window_ms, 180000);
    assert_int_equal(o->pa.panic_window_ms, 30000);
    assert_string_equal(o->pa.predictive_mode, "Auto");
    assert_int_equal(o->pa.predictive_horizon_ms, 120000);
    /* unknown keys of AIBrix's namespaces are kept (the controller warns) */
    assert_string_equal(
        brix_labels_get(&o->meta.annotations, "autoscaling.aibrix.ai/some-future-knob"), "7");
    assert_true(brix_pa_annotation_unknown("autoscaling.aibrix.ai/some-future-knob"));
    assert_true(brix_pa_annotation_unknown("kpa.autoscaling.aibrix.ai/scale-down-delay"));
    assert_false(brix_pa_annotation_unknown("autoscaling.aibrix.ai/max-scale-up-rate"));
    assert_false(brix_pa_annotation_unknown("apa.autoscaling.aibrix.ai/window"));
    assert_false(brix_pa_annotation_unknown("example.com/owner"));
    assert_false(brix_pa_annotation_unknown("notautoscaling.aibrix.ai/x"));
    round_trip(o);

    /* annotations alone: the same spec (no new generation), not the same object */
    const char *from = "\"2.5\"";
    char *alt = brix_strdup(kpa_annotated);
    memcpy(strstr(alt, from), "\"3.5\"", strlen(from));
    brix_obj_t *o2 = parse_ok(alt);
    assert_true(o2->pa.params.panic_threshold == 3.5);
    assert_true(brix_obj_spec_same(o, o2));
    assert_false(brix_obj_same(o, o2));
    brix_free(alt);
    brix_obj_free(o2);
    brix_obj_free(o);
}

static void test_scale_to_zero_and_apa_window(void **state)
{
    (void)state;
    brix_obj_t *o = parse_ok(
        HDR "metadata:\n"
            "  name: zero\n"
            "  annotations:\n"
            "    autoscaling.aibrix.ai/scale-to-zero: \"true\"\n"
            "    apa.autoscaling.aibrix.ai/window: 20s\n"
            "    autoscaling.aibrix.ai/scale-down-cooldown-window: 1h30m\n"
            "    autoscaling.aibrix.ai/scale-up-cooldown-window: \"0\"\n"
            "spec:\n"
            "  scaleTargetRef: {kind: ModelDeployment, name: llama-3-8b}\n"
            "  minReplicas: 0\n"
            "  maxReplicas: 4\n"
            "  scalingStrategy: APA\n"
            "  metricsSources:\n"
            "  - {metricSourceType: pod, targetMetric: num_requests_waiting, targetValue: 4}\n");
    const brix_as_params_t *q = &o->pa.params;
    assert_true(q->scale_to_zero);
    assert_int_equal(q->min_replicas, 0);
    assert_int_equal(q->stable_window_ms, 20000); /* APA's window annotation */
    assert_int_equal(q->panic_window_ms, 20000);  /* never longer than the stable window */
    assert_int_equal(q->zero_grace_ms, 20000);
    assert_int_equal(q->down_stabilization_ms, 5400000);
    assert_int_equal(q->up_stabilization_ms, 0);
    assert_null(o->pa.target_api_version);
    assert_string_equal(o->pa.metrics[0].target_value, "4"); /* a YAML number is taken too */
    assert_true(q->target[0] == 4);
    assert_string_equal(o->pa.metrics[0].protocol, "http"); /* default for pod */
    round_trip(o);
    brix_obj_free(o);
}

/* AIBrix's scheduled replica bounds (types.go PodAutoscalerSchedule). */
static void test_scheduled_apa(void **state)
{
    (void)state;
    brix_obj_t *o = parse_ok(HDR "metadata:\n"
                                 "  name: llama-3-8b-scheduled-apa\n"
                                 "  namespace: default\n"
                                 "  labels: {app.kubernetes.io/name: aibrix}\n"
                                 "spec:\n"
                                 "  scalingStrategy: APA\n"
                                 "  minReplicas: 1\n"
                                 "  maxReplicas: 10\n"
                                 "  schedules:\n"
                                 "    - name: weekday-business-hours\n"
                                 "      timezone: America/Los_Angeles\n"
                                 "      daysOfWeek: [Fri, mon, TUE, Wed, Thu]\n"
                                 "      startTime: \"09:00\"\n"
                                 "      endTime: \"18:00\"\n"
                                 "      minReplicas: 4\n"
                                 "      maxReplicas: 12\n"
                                 "    - name: nights\n"
                                 "      startTime: \"00:00\"\n"
                                 "      endTime: \"06:00\"\n"
                                 "      maxReplicas: 2\n"
                                 "  metricsSources:\n"
                                 "    - metricSourceType: pod\n"
                                 "      protocolType: http\n"
                                 "      port: \"8000\"\n"
                                 "      path: metrics\n"
                                 "      targetMetric: gpu_cache_usage_perc\n"
                                 "      targetValue: \"0.5\"\n"
                                 "  scaleTargetRef:\n"
                                 "    apiVersion: apps/v1\n"
                                 "    kind: Deployment\n"
                                 "    name: llama-3-8b\n");
    const brix_pa_spec_t *p = &o->pa;
    assert_int_equal(p->nschedules, 2);
    const brix_as_schedule_t *s = &p->schedules[0];
    assert_string_equal(s->name, "weekday-business-hours");
    assert_string_equal(s->timezone, "America/Los_Angeles");
    assert_int_equal(s->days, 0x3e); /* Mon..Fri: bits 1..5 */
    assert_int_equal(s->start_min, 9 * 60);
    assert_int_equal(s->end_min, 18 * 60);
    assert_int_equal(s->min_replicas, 4);
    assert_int_equal(s->max_replicas, 12);
    s = &p->schedules[1];
    assert_string_equal(s->timezone, "");
    assert_int_equal(s->days, 0);
    assert_int_equal(s->min_replicas, -1);
    assert_int_equal(s->max_replicas, 2);
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_obj_json_open(&b, o), 0);
    assert_non_null(strstr(b.data, "\"schedules\":[{\"name\":\"weekday-business-hours\","
                                   "\"timezone\":\"America/Los_Angeles\",\"daysOfWeek\":"
                                   "[\"Mon\",\"Tue\",\"Wed\",\"Thu\",\"Fri\"],\"startTime\":"
                                   "\"09:00\",\"endTime\":\"18:00\",\"minReplicas\":4,"
                                   "\"maxReplicas\":12},{\"name\":\"nights\",\"startTime\":"
                                   "\"00:00\",\"endTime\":\"06:00\",\"maxReplicas\":2}]"));
    brix_buf_free(&b);
    round_trip(o);
    brix_obj_free(o);
}

/* samples/autoscaling/optimizer-kpa.yaml: the GPU optimizer as an external
 * source (deprecated "domain" spelling), one replica per unit of its metric. */
static void test_optimizer_external(void **state)
{
    (void)state;
    brix_obj_t *o = parse_ok(HDR "metadata:\n"
                                 "  name: llama-3-8b-optimizer-scaling\n"
                                 "  annotations:\n"
                                 "    autoscaling.aibrix.ai/scale-down-cooldown-window: 0s\n"
                                 "spec:\n"
                                 "  scalingStrategy: KPA \n"
                                 "  minReplicas: 1\n"
                                 "  maxReplicas: 8\n"
                                 "  metricsSources:\n"
                                 "  - endpoint: 127.0.0.1:8090\n"
                                 "    metricSourceType: domain\n"
                                 "    path: metrics/default/llama-3-8b\n"
                                 "    protocolType: http\n"
                                 "    targetMetric: vllm:deployment_replicas\n"
                                 "    targetValue: \"1\"\n"
                                 "  scaleTargetRef:\n"
                                 "    apiVersion: apps/v1\n"
                                 "    kind: Deployment\n"
                                 "    name: llama-3-8b\n");
    const brix_pa_metric_t *m = &o->pa.metrics[0];
    assert_int_equal(m->type, BRIX_PA_SRC_EXTERNAL);
    assert_string_equal(m->endpoint, "127.0.0.1:8090");
    assert_string_equal(m->path, "metrics/default/llama-3-8b");
    assert_string_equal(m->target_metric, "vllm:deployment_replicas");
    assert_true(m->target == 1);
    assert_null(m->port);
    assert_int_equal(o->pa.params.down_stabilization_ms, 0);
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_obj_json_open(&b, o), 0);
    assert_non_null(strstr(b.data, "{\"metricSourceType\":\"external\",\"protocolType\":"
                                   "\"http\",\"endpoint\":\"127.0.0.1:8090\",\"path\":"
                                   "\"metrics/default/llama-3-8b\",\"targetMetric\":"
                                   "\"vllm:deployment_replicas\",\"targetValue\":\"1\"}"));
    brix_buf_free(&b);
    round_trip(o);
    brix_obj_free(o);
}

static void test_slo(void **state)
{
    (void)state;
    brix_obj_t *o = parse_ok(HDR "metadata: {name: llama-slo}\n"
                                 "spec:\n"
                                 "  scaleTargetRef: {kind: Deployment, name: llama-3-8b}\n"
                                 "  maxReplicas: 8\n"
                                 "  scalingStrategy: SLO\n"
                                 "  slo: {ttft: 500ms, itl: \"0.05s\"}\n");
    const brix_as_params_t *q = &o->pa.params;
    assert_int_equal(q->strategy, BRIX_AS_SLO);
    assert_int_equal(q->nmetrics, 0);
    assert_true(q->slo_ttft_s == 0.5);
    assert_true(q->slo_itl_s == 0.05);
    assert_true(q->slo_headroom == 0.8);
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_obj_json_open(&b, o), 0);
    assert_non_null(strstr(b.data, "\"metricsSources\":[],\"slo\":{\"ttft\":\"0.5s\","
                                   "\"itl\":\"0.05s\",\"headroom\":0.8}}"));
    brix_buf_free(&b);
    round_trip(o);
    brix_obj_free(o);

    o = parse_ok(HDR "metadata: {name: llama-slo}\n"
                     "spec:\n"
                     "  scaleTargetRef: {kind: Deployment, name: llama-3-8b}\n"
                     "  maxReplicas: 8\n"
                     "  scalingStrategy: SLO\n"
                     "  slo: {itl: 30ms, headroom: 0.7}\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: gateway, targetMetric: inflight, targetValue: 16}\n");
    assert_true(o->pa.params.slo_ttft_s == 0);
    assert_true(o->pa.params.slo_itl_s == 0.03);
    assert_true(o->pa.params.slo_headroom == 0.7);
    assert_int_equal(o->pa.metrics[0].type, BRIX_PA_SRC_GATEWAY);
    round_trip(o);
    brix_obj_free(o);
}

static void test_kinds(void **state)
{
    (void)state;
    const char *aliases[] = { "podautoscalers", "PodAutoscaler", "pa", "autoscalers",
                              "autoscaler" };
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        assert_int_equal(brix_kind_parse(aliases[i]), BRIX_KIND_AUTOSCALER);
    assert_int_equal(brix_kind_parse("hpa"), BRIX_KIND_NONE);
    assert_string_equal(brix_kind_name(BRIX_KIND_AUTOSCALER), "PodAutoscaler");
    assert_string_equal(brix_kind_plural(BRIX_KIND_AUTOSCALER), "podautoscalers");
    assert_string_equal(brix_pa_source_name(BRIX_PA_SRC_EXTERNAL), "external");
}

/* A base the refusals edit: line 3 metadata, 4 spec, 5 scaleTargetRef,
 * 6 minReplicas, 7 maxReplicas, 8 scalingStrategy, 9 metricsSources. */
#define BASE_META HDR "metadata: {name: p}\n"
#define TARGET    "  scaleTargetRef: {kind: Deployment, name: llama-3-8b}\n"
#define POD_SRC                                                                                    \
    "  - {metricSourceType: pod, targetMetric: num_requests_waiting, targetValue: \"4\"}\n"

static void test_refusals_spec(void **state)
{
    (void)state;
    refuse(BASE_META "spec:\n" TARGET "  minReplicas: 1\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:5:3: spec.maxReplicas: ", "missing (required");
    refuse(BASE_META "spec:\n" TARGET "  minReplicas: 5\n"
                     "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:7:16: spec.maxReplicas: ", "3 is below minReplicas 5");
    refuse(
        BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                  "  scalingStrategy: Knative\n"
                  "  metricsSources:\n" POD_SRC,
        "pa.yaml:7:20: spec.scalingStrategy: ", "unknown strategy 'Knative' (HPA, KPA, APA, SLO)");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  replcas: 2\n"
                     "  scalingStrategy: APA\n",
           "pa.yaml:7:3: spec: ", "unknown field 'replcas'");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: SLO\n",
           "pa.yaml:7:20: spec.slo: ", "scalingStrategy SLO needs spec.slo");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  slo: {ttft: 1s}\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:8:8: spec.slo: ", "needs scalingStrategy: SLO");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: SLO\n"
                     "  slo: {headroom: 0.5}\n",
           "pa.yaml:8:8: spec.slo: ", "neither ttft nor itl");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: SLO\n"
                     "  slo: {ttft: 1s, headroom: 1.5}\n",
           "pa.yaml:8:29: spec.slo.headroom: ", "at most 1");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: SLO\n"
                     "  slo: {ttft: 0.5}\n",
           "pa.yaml:8:15: spec.slo.ttft: ", "expected a duration");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: KPA\n",
           "pa.yaml:5:3: spec.metricsSources: ", "KPA needs at least one metric source");
    refuse(BASE_META "spec:\n"
                     "  scaleTargetRef: {kind: StatefulSet, name: x}\n"
                     "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:5:26: spec.scaleTargetRef.kind: ", "'StatefulSet' cannot be scaled here");
    refuse(BASE_META "spec:\n"
                     "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n",
           "pa.yaml:1:1: spec.scaleTargetRef: ", "missing");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  observeWindowSeconds: 30\n"
                     "  scalingStrategy: KPA\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:7:25: spec.observeWindowSeconds: ", "panic window (60s) is longer");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  observeWindowSeconds: 3601\n"
                     "  scalingStrategy: KPA\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:7:25: spec.observeWindowSeconds: ", "out of range [1, 3600]");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: KPA\n"
                     "  predictive: {mode: Always}\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:8:22: spec.predictive.mode: ", "expected Preview or Auto");
}

static void test_refusals_metrics(void **state)
{
    (void)state;
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n" POD_SRC POD_SRC POD_SRC POD_SRC POD_SRC POD_SRC,
           "pa.yaml:13:5: spec.metricsSources[4]: ", "at most 4 metric sources");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: custom, targetMetric: q, targetValue: \"1\"}\n",
           "pa.yaml:9:24: spec.metricsSources[0].metricSourceType: ",
           "custom reads the Kubernetes custom metrics API");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n" POD_SRC
                     "  - {metricSourceType: external, targetMetric: q, targetValue: \"100\"}\n",
           "pa.yaml:10:24: spec.metricsSources[1].metricSourceType: ",
           "external without endpoint reads the Kubernetes external metrics API");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: external, endpoint: 'h:1', protocolType: http,\n"
                     "     targetMetric: q, targetValue: \"100\"}\n",
           "pa.yaml:9:5: spec.metricsSources[0].path: ", "missing (an external source");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: prometheus, targetMetric: q, targetValue: \"1\"}\n",
           "pa.yaml:9:24: spec.metricsSources[0].metricSourceType: ",
           "unknown source type 'prometheus'");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: pod, targetMetric: q, targetValue: \"-1\"}\n",
           "pa.yaml:9:59: spec.metricsSources[0].targetValue: ", "must be greater than 0");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: pod, targetMetric: q, targetValue: \"half\"}\n",
           "pa.yaml:9:59: spec.metricsSources[0].targetValue: ", "expected a number, got 'half'");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: pod, targetMetric: q}\n",
           "pa.yaml:9:5: spec.metricsSources[0].targetValue: ", "missing");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 3\n"
                     "  scalingStrategy: APA\n"
                     "  metricsSources:\n"
                     "  - {metricSourceType: pod, port: \"80000\", targetMetric: q, "
                     "targetValue: 1}\n",
           "pa.yaml:9:35: spec.metricsSources[0].port: ", "expected a port number");
}

/* Annotations: line 5 is the first annotation; values start at column 53
 * for "autoscaling.aibrix.ai/scale-down-cooldown-window: ". */
#define ANNOT(k, v)                                                                                \
    HDR "metadata:\n"                                                                              \
        "  name: p\n"                                                                              \
        "  annotations:\n"                                                                         \
        "    " k ": " v "\n"                                                                       \
        "spec:\n" TARGET "  maxReplicas: 3\n"                                                      \
        "  scalingStrategy: KPA\n"                                                                 \
        "  metricsSources:\n" POD_SRC

static void test_refusals_annotations(void **state)
{
    (void)state;
    refuse(ANNOT("autoscaling.aibrix.ai/scale-down-cooldown-window", "5 minutes"),
           "pa.yaml:6:55: metadata.annotations[\"autoscaling.aibrix.ai/scale-down-cooldown-"
           "window\"]: ",
           "expected a duration such as \"30s\", \"5m\" or \"1h30m\" (Go syntax, at most 168h), "
           "got '5 minutes'");
    refuse(ANNOT("autoscaling.aibrix.ai/scale-up-cooldown-window", "\"-30s\""),
           "pa.yaml:6:53: metadata.annotations[\"autoscaling.aibrix.ai/scale-up-cooldown-window"
           "\"]: ",
           "got '-30s'");
    refuse(ANNOT("autoscaling.aibrix.ai/max-scale-up-rate", "fast"),
           "pa.yaml:6:46: metadata.annotations[\"autoscaling.aibrix.ai/max-scale-up-rate\"]: ",
           "expected a factor above 1 such as \"2.0\"");
    /* 1 would forbid every scale-down: refused (Knative requires > 1 too) */
    refuse(ANNOT("autoscaling.aibrix.ai/max-scale-down-rate", "\"1\""),
           "pa.yaml:6:48: metadata.annotations[\"autoscaling.aibrix.ai/max-scale-down-rate\"]: ",
           "got '1'");
    refuse(ANNOT("autoscaling.aibrix.ai/max-scale-down-rate", "\"0.5\""),
           "pa.yaml:6:48: metadata.annotations[\"autoscaling.aibrix.ai/max-scale-down-rate\"]: ",
           "got '0.5'");
    refuse(ANNOT("autoscaling.aibrix.ai/scale-up-tolerance", "\"1.5\""),
           "pa.yaml:6:47: metadata.annotations[\"autoscaling.aibrix.ai/scale-up-tolerance\"]: ",
           "expected a fraction from 0 to 1");
    refuse(ANNOT("autoscaling.aibrix.ai/panic-threshold", "\"1\""),
           "pa.yaml:6:44: metadata.annotations[\"autoscaling.aibrix.ai/panic-threshold\"]: ",
           "expected a factor greater than 1");
    refuse(ANNOT("autoscaling.aibrix.ai/scale-to-zero", "\"yes\""),
           "pa.yaml:6:42: metadata.annotations[\"autoscaling.aibrix.ai/scale-to-zero\"]: ",
           "expected \"true\" or \"false\", got 'yes'");
    refuse(ANNOT("apa.autoscaling.aibrix.ai/window", "500ms"),
           "pa.yaml:6:39: metadata.annotations[\"apa.autoscaling.aibrix.ai/window\"]: ",
           "from 1s to 1h");
}

#define SCHED(body)                                                                                \
    BASE_META "spec:\n" TARGET "  maxReplicas: 6\n"                                                \
              "  scalingStrategy: APA\n"                                                           \
              "  metricsSources:\n" POD_SRC "  schedules:\n" body

static void test_refusals_schedules(void **state)
{
    (void)state;
    refuse(SCHED("  - {name: day, startTime: \"9:00\", endTime: \"17:00\", minReplicas: 2}\n"),
           "pa.yaml:11:28: spec.schedules[0].startTime: ", "expected HH:MM");
    refuse(SCHED("  - {name: day, startTime: \"09:00\", endTime: \"09:00\", minReplicas: 2}\n"),
           "pa.yaml:11:46: spec.schedules[0].endTime: ", "equals startTime 09:00");
    /* over midnight is a window (22:00 → 06:00) */
    brix_obj_t *night =
        parse_ok(SCHED("  - {name: night, startTime: \"22:00\", endTime: \"06:00\", "
                       "minReplicas: 2}\n"));
    assert_int_equal(night->pa.schedules[0].start_min, 22 * 60);
    assert_int_equal(night->pa.schedules[0].end_min, 6 * 60);
    brix_obj_free(night);
    /* … and it overlaps a morning one */
    refuse(SCHED("  - {name: night, startTime: \"22:00\", endTime: \"06:00\", minReplicas: 2}\n"
                 "  - {name: early, startTime: \"05:00\", endTime: \"07:00\", minReplicas: 2}\n"),
           "pa.yaml:12:5: spec.schedules[1]: ", "overlaps schedule 'night'");
    refuse(SCHED("  - name: day\n"
                 "    daysOfWeek: [Mon, Funday]\n"
                 "    startTime: \"09:00\"\n"
                 "    endTime: \"17:00\"\n"
                 "    minReplicas: 2\n"),
           "pa.yaml:12:23: spec.schedules[0].daysOfWeek: ", "'Funday' is not a day");
    refuse(SCHED("  - {name: day, startTime: \"09:00\", endTime: \"17:00\"}\n"),
           "pa.yaml:11:5: spec.schedules[0]: ", "sets neither minReplicas nor maxReplicas");
    refuse(SCHED("  - {name: day, startTime: \"09:00\", endTime: \"17:00\", minReplicas: 8}\n"),
           "pa.yaml:11:68: spec.schedules[0].minReplicas: ",
           "effective minReplicas 8 is above effective "
           "maxReplicas 6");
    refuse(SCHED("  - {name: Day, startTime: \"09:00\", endTime: \"17:00\", minReplicas: 2}\n"),
           "pa.yaml:11:12: spec.schedules[0].name: ", "expected a DNS label");
    refuse(SCHED("  - {name: day, startTime: \"09:00\", endTime: \"17:00\", minReplicas: 2}\n"
                 "  - {name: day, startTime: \"18:00\", endTime: \"19:00\", minReplicas: 2}\n"),
           "pa.yaml:12:12: spec.schedules[1].name: ", "'day' is already the name of schedule 0");
    refuse(SCHED("  - {name: a, daysOfWeek: [Mon], startTime: \"09:00\", endTime: \"17:00\", "
                 "minReplicas: 2}\n"
                 "  - {name: b, startTime: \"16:00\", endTime: \"19:00\", minReplicas: 3}\n"),
           "pa.yaml:12:5: spec.schedules[1]: ", "overlaps schedule 'a'");
    refuse(SCHED("  - {name: a, timezone: Mars/Olympus_Mons, startTime: \"09:00\", endTime: "
                 "\"17:00\", minReplicas: 2}\n"),
           "pa.yaml:11:25: spec.schedules[0].timezone: ", "'Mars/Olympus_Mons' is not a time zone");
    refuse(BASE_META "spec:\n" TARGET "  maxReplicas: 6\n"
                     "  scalingStrategy: APA\n"
                     "  schedules: []\n"
                     "  metricsSources:\n" POD_SRC,
           "pa.yaml:8:14: spec.schedules: ", "expected a non-empty list");
}

static void test_accepts_adjacent_schedules(void **state)
{
    (void)state;
    /* [start, end): 09:00-17:00 then 17:00-19:00 touch but do not overlap;
     * different days never overlap */
    brix_obj_t *o =
        parse_ok(SCHED("  - {name: a, startTime: \"09:00\", endTime: \"17:00\", minReplicas: 2}\n"
                       "  - {name: b, startTime: \"17:00\", endTime: \"19:00\", minReplicas: 3}\n"
                       "  - {name: c, daysOfWeek: [sat], startTime: \"20:00\", endTime: \"21:00\", "
                       "maxReplicas: 0, minReplicas: 0}\n"
                       "  - {name: d, daysOfWeek: [Sun], startTime: \"20:00\", endTime: \"21:00\", "
                       "maxReplicas: 1}\n"));
    assert_int_equal(o->pa.nschedules, 4);
    assert_int_equal(o->pa.schedules[2].days, 1u << 6);
    assert_int_equal(o->pa.schedules[3].days, 1u << 0);
    round_trip(o);
    brix_obj_free(o);
}

/* examples/autoscaler-*.yaml, found from this file's path (CMake compiles
 * sources by absolute path). */
static brix_obj_t *parse_example(const char *name)
{
    char path[1024], err[512] = "";
    const char *here = __FILE__, *cut = strstr(here, "tests/unit/");
    assert_non_null(cut);
    snprintf(path, sizeof path, "%.*sexamples/%s", (int)(cut - here), here, name);
    brix_yaml_node_t *doc = NULL;
    brix_obj_t *o = NULL;
    if (brix_yaml_load_file(path, &doc, err, sizeof err) ||
        brix_obj_parse(doc, path, NULL, &o, err, sizeof err))
        fail_msg("%s", err);
    brix_yaml_free(doc);
    assert_int_equal(o->kind, BRIX_KIND_AUTOSCALER);
    return o;
}

static void test_examples(void **state)
{
    (void)state;
    brix_obj_t *o = parse_example("autoscaler-apa.yaml");
    assert_string_equal(o->pa.target_name, "llama-3-8b"); /* examples/local.yaml's */
    assert_int_equal(o->pa.params.strategy, BRIX_AS_APA);
    assert_int_equal(o->pa.params.stable_window_ms, 30000); /* apa.autoscaling.aibrix.ai/window */
    assert_true(o->pa.params.up_tolerance == 0.1 && o->pa.params.down_tolerance == 0.1);
    assert_true(brix_pa_annotation_unknown("autoscaling.aibrix.ai/down-fluctuation-tolerance"));
    assert_string_equal(o->pa.metrics[0].target_metric, "kv_cache_usage_perc");
    round_trip(o);
    brix_obj_free(o);
    o = parse_example("autoscaler-slo.yaml");
    assert_string_equal(o->pa.target_name, "llama-3-8b");
    const brix_as_params_t *q = &o->pa.params;
    assert_int_equal(q->strategy, BRIX_AS_SLO);
    assert_true(q->scale_to_zero);
    assert_int_equal(q->min_replicas, 0);
    assert_true(q->slo_ttft_s == 0.5 && q->slo_itl_s == 0.05 && q->slo_headroom == 0.8);
    assert_int_equal(q->stable_window_ms, 120000);
    assert_int_equal(q->zero_grace_ms, 120000);
    assert_int_equal(q->down_stabilization_ms, 120000);
    round_trip(o);
    brix_obj_free(o);
}

/* The controller's state file keeps PodAutoscalers: saved with the other
 * kinds and loaded back through the same validating parser. */
static void test_state_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/brix-pa-state-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/state.json", dir);
    brix_ctl_t a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.state_path = b.state_path = path;
    a.cfg.state_dir = b.cfg.state_dir = dir;
    assert_int_equal(brix_ctl_add(&a, parse_ok(kpa_annotated), NULL), 0);
    assert_int_equal(brix_ctl_add(&a, parse_ok(apa_sample), NULL), 0);
    assert_int_equal(a.npas, 2);
    assert_int_equal(a.ndeploys + a.nadapters, 0);
    a.pas[0]->scale = 3; /* the scale an autoscaler set survives a restart */
    assert_int_equal(brix_ctl_save(&a), 0);
    char err[512] = "";
    if (brix_ctl_load(&b, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(b.npas, 2);
    assert_int_equal(b.ndeploys + b.nadapters + b.nreps, 0);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(a.pas[i]->o->meta.name, b.pas[i]->o->meta.name);
        assert_true(brix_obj_same(a.pas[i]->o, b.pas[i]->o));
        assert_true(params_equal(&a.pas[i]->o->pa.params, &b.pas[i]->o->pa.params));
    }
    assert_true(b.pas[0]->o->pa.params.max_up_rate == 3.0);
    assert_int_equal(b.pas[0]->scale, 3);
    assert_int_equal(b.pas[1]->scale, -1);
    for (size_t i = 0; i < 2; i++) {
        brix_ctl_pa_free(a.pas[i]);
        brix_ctl_pa_free(b.pas[i]);
    }
    brix_free(a.pas);
    brix_free(b.pas);
    unlink(path);
    rmdir(dir);
}

/* Every allocation of a full parse failing in turn: a clean refusal, no leak. */
static void test_enomem(void **state)
{
    (void)state;
    int refused = 0;
    for (long n = 0; n < 400; n++) {
        char err[512];
        brix_obj_t *o;
        brix_alloc_fail_after(n);
        int rc = parse(kpa_annotated, &o, err, sizeof err);
        brix_alloc_fail_after(-1);
        if (rc) {
            assert_null(o);
            refused++;
        } else {
            brix_obj_free(o);
            if (refused)
                break; /* past the last allocation */
        }
    }
    assert_true(refused > 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_apa_sample, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_kpa_annotations, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_scale_to_zero_and_apa_window, leak_setup,
                                        leak_teardown),
        cmocka_unit_test_setup_teardown(test_scheduled_apa, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_optimizer_external, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_slo, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_kinds, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_refusals_spec, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_refusals_metrics, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_refusals_annotations, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_refusals_schedules, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_accepts_adjacent_schedules, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_examples, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_state_file, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_enomem, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
