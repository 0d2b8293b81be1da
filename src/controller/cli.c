/*
 * cli — `brix apply -f FILE`, `brix get KIND [NAME] [-o json|yaml|wide]` and
 * `brix delete KIND NAME`: thin clients of the controller's HTTP API, in the
 * manner of kubectl. The controller validates (so there is one validator, and
 * errors name the file and line exactly as written); the CLI renders tables.
 * Blocking libcurl is fine here: one request per command.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>

#include <cjson/cJSON.h>

#include <openssl/crypto.h>

#include "controller/auth.h"
#include "controller/cli.h"
#include "controller/controller_main.h"
#include "controller/objects.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/time.h"
#include "core/yaml.h"

/* --------------------------------------------------------------- HTTP -- */

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    brix_buf_t *b = ud;
    return brix_buf_append(b, p, sz * n) ? 0 : sz * n;
}

const char *brix_cli_server(const char *flag)
{
    if (flag && *flag)
        return flag;
    const char *e = getenv("BRIX_SERVER");
    return e && *e ? e : "http://127.0.0.1:8081";
}

long brix_cli_call(const char *server, const char *token, const char *method, const char *path,
                   const char *body, size_t len, const char *const *headers, brix_buf_t *out,
                   char *err, size_t errlen)
{
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char url[2048];
    snprintf(url, sizeof url, "%s%s", server, path);
    struct curl_slist *hl = NULL;
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    if (body)
        hl = curl_slist_append(hl, "content-type: application/yaml");
    char auth[BRIX_AUTH_TOKEN_MAX + 32];
    if (token && *token) {
        snprintf(auth, sizeof auth, "authorization: Bearer %s", token);
        hl = curl_slist_append(hl, auth);
    }
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    CURLcode rc = curl_easy_perform(h);
    long status = -1;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(err, errlen,
                 "cannot reach the controller at %s: %s (is `brix up` or `brix controller` "
                 "running? set --server or BRIX_SERVER)",
                 server, ebuf[0] ? ebuf : curl_easy_strerror(rc));
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    if (token && *token)
        OPENSSL_cleanse(auth, sizeof auth);
    return status;
}

/* The "message" of an OpenAI-style error body, or the body itself. */
static const char *error_message(const brix_buf_t *b, char *out, size_t outlen)
{
    cJSON *j = b->data ? cJSON_Parse(b->data) : NULL;
    const cJSON *m =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
    snprintf(out, outlen, "%s", cJSON_IsString(m) ? m->valuestring : b->data ? b->data : "");
    cJSON_Delete(j);
    return out;
}

/* Where the controller is and the token it wants. */
typedef struct conn {
    const char *server;
    char token[BRIX_AUTH_TOKEN_MAX];
    char from[4200]; /* where the token came from, for error messages */
} conn_t;

#define CONN_FLAGS "[--server URL] [--state-dir DIR | --token TOKEN]"
#define CONN_HELP                                                                                  \
    "--server defaults to $BRIX_SERVER or http://127.0.0.1:8081. The API token is --token,\n"      \
    "else $BRIX_TOKEN, else read from DIR/token (--state-dir, default .brix: the controller's\n"   \
    "state directory, as for brix up). --token is visible to other users in ps: prefer the\n"      \
    "others.\n"

static bool flag_val(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t l = strlen(name);
    if (!strcmp(argv[*i], name) && *i + 1 < argc) {
        *out = argv[++*i];
        return true;
    }
    if (!strncmp(argv[*i], name, l) && argv[*i][l] == '=') {
        *out = argv[*i] + l + 1;
        return true;
    }
    return false;
}

/* Takes --server, --token and --state-dir out of argv and finds the token.
 * 0, or -1 after printing why (a named state dir without a token). */
static int take_conn(const char *cmd, int *argc, char **argv, conn_t *c)
{
    const char *s = NULL, *tok = NULL, *dir = NULL;
    int j = 0;
    for (int i = 0; i < *argc; i++) {
        if (flag_val(*argc, argv, &i, "--server", &s) || flag_val(*argc, argv, &i, "-s", &s) ||
            flag_val(*argc, argv, &i, "--token", &tok) ||
            flag_val(*argc, argv, &i, "--state-dir", &dir))
            continue;
        argv[j++] = argv[i];
    }
    *argc = j;
    c->server = brix_cli_server(s);
    c->token[0] = '\0';
    const char *env = getenv("BRIX_TOKEN");
    if (tok && *tok) {
        snprintf(c->token, sizeof c->token, "%s", tok);
        snprintf(c->from, sizeof c->from, "--token");
        return 0;
    }
    if (env && *env) {
        snprintf(c->token, sizeof c->token, "%s", env);
        snprintf(c->from, sizeof c->from, "$BRIX_TOKEN");
        return 0;
    }
    char path[4200], err[4400];
    snprintf(path, sizeof path, "%s/token", dir && *dir ? dir : ".brix");
    snprintf(c->from, sizeof c->from, "%s", path);
    int rc = brix_auth_token_load(path, false, c->token, sizeof c->token, NULL, err, sizeof err);
    if (rc == -ENOENT && !dir) {
        snprintf(c->from, sizeof c->from, "no token (no .brix/token here)");
        return 0; /* maybe a controller with --insecure-no-auth: it will say */
    }
    if (rc) {
        fprintf(stderr, "brix %s: cannot read the controller token: %s\n", cmd, err);
        return -1;
    }
    return 0;
}

/* Prints a failed call's reason; a 401 says where the token came from. */
static void call_failed(const char *cmd, const conn_t *c, long st, const brix_buf_t *body,
                        const char *err)
{
    char m[1024];
    if (st < 0)
        fprintf(stderr, "brix %s: %s\n", cmd, err);
    else if (st == 401 && !c->token[0])
        fprintf(stderr,
                "brix %s: the controller at %s needs its API token and none was found (no "
                "--token, $BRIX_TOKEN or .brix/token here): pass --state-dir DIR, the "
                "controller's state directory (DIR/token), or set BRIX_TOKEN\n",
                cmd, c->server);
    else if (st == 401)
        fprintf(stderr,
                "brix %s: the controller at %s refused the token (%s): %s. The token is "
                "--token, $BRIX_TOKEN or STATE_DIR/token (--state-dir, default .brix)\n",
                cmd, c->server, c->from, error_message(body, m, sizeof m));
    else
        fprintf(stderr, "brix %s: %s\n", cmd, error_message(body, m, sizeof m));
}

static const char *lower_kind(const char *kind)
{
    return !strcmp(kind, "ModelDeployment") ? "modeldeployment"
           : !strcmp(kind, "ModelAdapter")  ? "modeladapter"
           : !strcmp(kind, "PodAutoscaler") ? "podautoscaler"
                                            : "replica";
}

/* -------------------------------------------------------------- apply -- */

int brix_apply_main(int argc, char **argv)
{
    static conn_t cn;
    if (take_conn("apply", &argc, argv, &cn))
        return 2;
    const char *files[64];
    int nfiles = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: brix apply -f FILE [-f FILE ...] " CONN_FLAGS "\n\n"
                   "Creates or updates the ModelDeployment, ModelAdapter and PodAutoscaler\n"
                   "objects in FILE\n"
                   "(YAML, several documents separated by ---; '-' reads stdin). Each file is\n"
                   "applied all or nothing: one invalid document and none is applied.\n"
                   "Relative file:// artifact paths are taken relative to the file.\n"
                   "A spec.engine.command needs a controller started with\n"
                   "--allow-engine-commands.\n" CONN_HELP);
            return 0;
        }
        if ((!strcmp(argv[i], "-f") || !strcmp(argv[i], "--filename")) && i + 1 < argc &&
            nfiles < 64) {
            files[nfiles++] = argv[++i];
            continue;
        }
        fprintf(stderr, "brix apply: unexpected argument '%s' (see brix apply --help)\n", argv[i]);
        return 2;
    }
    if (!nfiles) {
        fprintf(stderr, "brix apply: -f FILE is required\n");
        return 2;
    }
    int rc = 0;
    for (int f = 0; f < nfiles && !rc; f++) {
        char err[2048] = "", *text = NULL;
        size_t len = 0;
        char base[PATH_MAX] = "";
        if (!strcmp(files[f], "-")) {
            brix_buf_t in = BRIX_BUF_INIT;
            char chunk[65536];
            size_t r;
            while ((r = fread(chunk, 1, sizeof chunk, stdin)) > 0)
                brix_buf_append(&in, chunk, r);
            text = in.data;
            len = in.len;
            if (!getcwd(base, sizeof base))
                base[0] = '\0';
        } else {
            if (brix_file_read(files[f], &text, &len, err, sizeof err)) {
                fprintf(stderr, "brix apply: %s\n", err);
                return 1;
            }
            char real[PATH_MAX];
            if (realpath(files[f], real))
                snprintf(base, sizeof base, "%s", dirname(real));
        }
        char h1[PATH_MAX + 32], h2[PATH_MAX + 32];
        snprintf(h1, sizeof h1, "x-brix-source: %s", strcmp(files[f], "-") ? files[f] : "stdin");
        snprintf(h2, sizeof h2, "x-brix-base-dir: %s", base);
        const char *hdrs[] = { h1, base[0] ? h2 : NULL, NULL };
        brix_buf_t out = BRIX_BUF_INIT;
        long st = brix_cli_call(cn.server, cn.token, "POST", "/v1/apply", text ? text : "", len,
                                hdrs, &out, err, sizeof err);
        brix_free(text);
        if (st != 200) {
            call_failed("apply", &cn, st, &out, err);
            rc = 1;
        } else {
            cJSON *j = cJSON_Parse(out.data ? out.data : "");
            cJSON *it;
            cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "items"))
            {
                const cJSON *k = cJSON_GetObjectItemCaseSensitive(it, "kind");
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
                const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "result");
                if (cJSON_IsString(k) && cJSON_IsString(n) && cJSON_IsString(r))
                    printf("%s/%s %s\n", lower_kind(k->valuestring), n->valuestring,
                           r->valuestring);
            }
            cJSON_Delete(j);
        }
        brix_buf_free(&out);
    }
    return rc;
}

/* ---------------------------------------------------------------- get -- */

static void age(const char *iso, char out[32])
{
    strcpy(out, "-");
    if (!iso)
        return;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm))
        return;
    long s = (long)(time(NULL) - timegm(&tm));
    if (s < 0)
        s = 0;
    if (s < 120)
        snprintf(out, 32, "%lds", s);
    else if (s < 7200)
        snprintf(out, 32, "%ldm", s / 60);
    else if (s < 172800)
        snprintf(out, 32, "%ldh", s / 3600);
    else
        snprintf(out, 32, "%ldd", s / 86400);
}

static const char *jstr(const cJSON *o, const char *path)
{
    char key[128];
    const cJSON *cur = o;
    const char *p = path;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        snprintf(key, sizeof key, "%.*s", (int)l, p);
        cur = cJSON_GetObjectItemCaseSensitive(cur, key);
        p += l + (dot ? 1 : 0);
    }
    return cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static long jnum(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b);
    return cJSON_IsNumber(x) ? (long)x->valuedouble : 0;
}

static void join(const cJSON *arr, char *out, size_t outlen)
{
    out[0] = '\0';
    const cJSON *it;
    size_t l = 0;
    cJSON_ArrayForEach(it, arr)
    {
        if (cJSON_IsString(it) && l < outlen)
            l += (size_t)snprintf(out + l, outlen - l, "%s%s", l ? "," : "", it->valuestring);
    }
    if (!out[0])
        snprintf(out, outlen, "<none>");
}

typedef struct table {
    size_t ncols, nrows;
    char *cells[512][12];
} table_t;

static void cell(table_t *t, size_t col, const char *s)
{
    if (t->nrows < 512 && col < 12)
        t->cells[t->nrows][col] = brix_strdup(s ? s : "");
}

static void table_print(table_t *t)
{
    size_t w[12] = { 0 };
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++)
            if (t->cells[r][c] && strlen(t->cells[r][c]) > w[c])
                w[c] = strlen(t->cells[r][c]);
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r][c] ? t->cells[r][c] : "";
            if (c + 1 < t->ncols)
                printf("%-*s   ", (int)w[c], s);
            else
                printf("%s\n", s);
            brix_free(t->cells[r][c]);
        }
    }
}

static void table_row(table_t *t, const char *const *vals, size_t n)
{
    t->ncols = n;
    for (size_t i = 0; i < n; i++)
        cell(t, i, vals[i]);
    if (t->nrows < 512)
        t->nrows++;
}

static const cJSON *jget(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    return b ? cJSON_GetObjectItemCaseSensitive(x, b) : x;
}

/* A status number, or "-" before the controller has computed it. */
static void jnum_or_dash(const cJSON *o, const char *a, const char *b, char *out, size_t outlen)
{
    const cJSON *x = jget(o, a, b);
    if (cJSON_IsNumber(x))
        snprintf(out, outlen, "%g", x->valuedouble);
    else
        snprintf(out, outlen, "-");
}

/* Columns as AIBrix's printer columns (MINPODS, MAXPODS, REPLICAS, STRATEGY,
 * AGE) plus what the runtime computed: the status fields of
 * status.desiredScale / actualScale / metrics[0] / panic; -o wide adds the
 * active schedule and the last entry of status.scalingHistory. */
static void pa_table(table_t *t, const cJSON *items, bool wide)
{
    const char *h[] = { "NAME",   "TARGET", "STRATEGY", "MIN", "MAX",      "DESIRED",
                        "ACTUAL", "METRIC", "PANIC",    "AGE", "SCHEDULE", "LAST-DECISION" };
    size_t nc = wide ? 12 : 10;
    table_row(t, h, nc);
    const cJSON *it;
    cJSON_ArrayForEach(it, items)
    {
        char a1[32], mn[24], mx[24], des[24], act[24], metric[256], sched[128], last[512];
        const char *target = jstr(it, "spec.scaleTargetRef.name");
        const cJSON *st = jget(it, "status", NULL);
        age(jstr(it, "metadata.creationTimestamp"), a1);
        jnum_or_dash(it, "spec", "minReplicas", mn, sizeof mn);
        jnum_or_dash(it, "spec", "maxReplicas", mx, sizeof mx);
        jnum_or_dash(st, "desiredScale", NULL, des, sizeof des);
        jnum_or_dash(st, "actualScale", NULL, act, sizeof act);
        /* "name value/target" of the first metric */
        const cJSON *m0 = cJSON_GetArrayItem(jget(st, "metrics", NULL), 0);
        const cJSON *mv = jget(m0, "value", NULL), *mt = jget(m0, "target", NULL);
        if (jstr(m0, "name")) {
            char v[32] = "-", tg[32] = "-";
            if (cJSON_IsNumber(mv))
                snprintf(v, sizeof v, "%.4g", mv->valuedouble);
            if (cJSON_IsNumber(mt))
                snprintf(tg, sizeof tg, "%.4g", mt->valuedouble);
            else if (cJSON_IsString(mt))
                snprintf(tg, sizeof tg, "%s", mt->valuestring);
            snprintf(metric, sizeof metric, "%s %s/%s", jstr(m0, "name"), v, tg);
        } else {
            snprintf(metric, sizeof metric, "<none>");
        }
        const cJSON *pn = jget(st, "panic", NULL);
        const char *panic = cJSON_IsBool(pn) ? (cJSON_IsTrue(pn) ? "true" : "false") : "-";
        /* the schedule in force and its bounds */
        const cJSON *sb = jget(st, "scheduledBounds", NULL);
        if (jstr(sb, "activeSchedule"))
            snprintf(sched, sizeof sched, "%s %ld-%ld", jstr(sb, "activeSchedule"),
                     jnum(st, "scheduledBounds", "effectiveMinReplicas"),
                     jnum(st, "scheduledBounds", "effectiveMaxReplicas"));
        else
            snprintf(sched, sizeof sched, "<none>");
        const cJSON *hist = jget(st, "scalingHistory", NULL);
        const cJSON *ld = cJSON_GetArrayItem(hist, cJSON_GetArraySize(hist) - 1);
        if (ld) {
            const cJSON *pv = jget(ld, "previousScale", NULL), *nv = jget(ld, "newScale", NULL);
            const char *why = jstr(ld, "reason"), *err = jstr(ld, "error");
            bool failed = cJSON_IsFalse(jget(ld, "success", NULL));
            snprintf(
                last, sizeof last, "%g->%g %s%s%s%s%s", cJSON_IsNumber(pv) ? pv->valuedouble : 0,
                cJSON_IsNumber(nv) ? nv->valuedouble : 0, why ? why : "", failed ? " (failed" : "",
                failed && err ? ": " : "", failed && err ? err : "", failed ? ")" : "");
        } else {
            snprintf(last, sizeof last, "<none>");
        }
        const char *v[] = { jstr(it, "metadata.name"),
                            target,
                            jstr(it, "spec.scalingStrategy"),
                            mn,
                            mx,
                            des,
                            act,
                            metric,
                            panic,
                            a1,
                            sched,
                            last };
        table_row(t, v, nc);
    }
}

static void print_table(brix_kind_t kind, const cJSON *items, bool wide)
{
    static table_t t;
    memset(&t, 0, sizeof t);
    const cJSON *it;
    char a1[32], buf[1024], n1[24], n2[24], n3[24], n4[24];
    if (kind == BRIX_KIND_DEPLOYMENT) {
        const char *h[] = { "NAME", "MODEL", "GPU", "REPLICAS", "READY", "PHASE", "AGE" };
        table_row(&t, h, 7);
        cJSON_ArrayForEach(it, items)
        {
            age(jstr(it, "metadata.creationTimestamp"), a1);
            /* the scale it runs: an autoscaler's when one manages it (older
             * controllers report no desiredReplicas: the spec's) */
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
            long want = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(st, "desiredReplicas"))
                            ? jnum(it, "status", "desiredReplicas")
                            : jnum(it, "spec", "replicas");
            snprintf(n1, sizeof n1, "%ld", want);
            snprintf(n2, sizeof n2, "%ld/%ld", jnum(it, "status", "readyReplicas"), want);
            const char *v[] = { jstr(it, "metadata.name"),
                                jstr(it, "spec.model"),
                                jstr(it, "spec.gpu"),
                                n1,
                                n2,
                                jstr(it, "status.phase"),
                                a1 };
            table_row(&t, v, 7);
        }
    } else if (kind == BRIX_KIND_ADAPTER) {
        const char *h[] = { "NAME",       "BASE",      "PHASE", "DESIRED",  "READY",
                            "CANDIDATES", "INSTANCES", "AGE",   "ARTIFACT", "REASON" };
        table_row(&t, h, wide ? 10 : 8);
        cJSON_ArrayForEach(it, items)
        {
            age(jstr(it, "metadata.creationTimestamp"), a1);
            snprintf(n1, sizeof n1, "%ld", jnum(it, "status", "desiredReplicas"));
            snprintf(n2, sizeof n2, "%ld", jnum(it, "status", "readyReplicas"));
            snprintf(n3, sizeof n3, "%ld", jnum(it, "status", "candidates"));
            join(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(it, "status"),
                                                  "instances"),
                 buf, sizeof buf);
            const char *reason = "";
            const cJSON *cd;
            cJSON_ArrayForEach(
                cd, cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(it, "status"),
                                                     "conditions"))
            {
                if (jstr(cd, "type") && !strcmp(jstr(cd, "type"), "Ready") && jstr(cd, "message"))
                    reason = jstr(cd, "message");
            }
            const char *v[] = { jstr(it, "metadata.name"),
                                jstr(it, "spec.baseModel"),
                                jstr(it, "status.phase"),
                                n1,
                                n2,
                                n3,
                                buf,
                                a1,
                                jstr(it, "spec.artifactURL"),
                                reason };
            table_row(&t, v, wide ? 10 : 8);
        }
    } else if (kind == BRIX_KIND_AUTOSCALER) {
        pa_table(&t, items, wide);
    } else {
        const char *h[] = { "NAME", "DEPLOYMENT", "PHASE",    "READY", "URL",
                            "PID",  "RESTARTS",   "ADAPTERS", "AGE",   "LAST-EXIT" };
        table_row(&t, h, wide ? 10 : 9);
        cJSON_ArrayForEach(it, items)
        {
            age(jstr(it, "status.startTime"), a1);
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
            snprintf(n1, sizeof n1, "%ld", jnum(it, "status", "pid"));
            snprintf(n2, sizeof n2, "%ld", jnum(it, "status", "restarts"));
            snprintf(n4, sizeof n4, "%s",
                     cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "ready")) ? "true"
                                                                                 : "false");
            join(cJSON_GetObjectItemCaseSensitive(st, "adapters"), buf, sizeof buf);
            const char *v[] = { jstr(it, "metadata.name"),
                                jstr(it, "spec.deployment"),
                                jstr(it, "status.phase"),
                                n4,
                                jstr(it, "status.url"),
                                n1,
                                n2,
                                buf,
                                a1,
                                jstr(it, "status.lastExit") };
            table_row(&t, v, wide ? 10 : 9);
        }
    }
    table_print(&t);
}

/* JSON → YAML through libyaml's emitter (it decides quoting and escapes). */
static int emit_scalar(yaml_emitter_t *e, const char *s, bool plain_ok)
{
    yaml_event_t ev;
    yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), plain_ok, 1,
                                 plain_ok ? YAML_ANY_SCALAR_STYLE
                                          : YAML_DOUBLE_QUOTED_SCALAR_STYLE);
    return yaml_emitter_emit(e, &ev);
}

static bool looks_typed(const char *s)
{
    static const char *const words[] = {
        "true", "false", "null", "yes", "no", "on", "off", "~", ""
    };
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        if (!strcasecmp(s, words[i]))
            return true;
    char *end;
    strtod(s, &end);
    if (*end == '\0')
        return true;
    /* YAML 1.1 readers take 2026-11-25… for a timestamp: keep it a string */
    return strlen(s) >= 10 && isdigit((unsigned char)s[0]) && isdigit((unsigned char)s[3]) &&
           s[4] == '-' && s[7] == '-';
}

static int emit_json(yaml_emitter_t *e, const cJSON *j)
{
    yaml_event_t ev;
    if (cJSON_IsObject(j)) {
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
        if (!yaml_emitter_emit(e, &ev))
            return 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, j)
        {
            if (!emit_scalar(e, it->string, !looks_typed(it->string)) || !emit_json(e, it))
                return 0;
        }
        yaml_mapping_end_event_initialize(&ev);
        return yaml_emitter_emit(e, &ev);
    }
    if (cJSON_IsArray(j)) {
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
        if (!yaml_emitter_emit(e, &ev))
            return 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, j)
        {
            if (!emit_json(e, it))
                return 0;
        }
        yaml_sequence_end_event_initialize(&ev);
        return yaml_emitter_emit(e, &ev);
    }
    if (cJSON_IsString(j))
        return emit_scalar(e, j->valuestring, !looks_typed(j->valuestring));
    char num[64];
    if (cJSON_IsNumber(j)) {
        if (j->valuedouble == (double)(long long)j->valuedouble)
            snprintf(num, sizeof num, "%lld", (long long)j->valuedouble);
        else
            snprintf(num, sizeof num, "%.17g", j->valuedouble);
        return emit_scalar(e, num, true);
    }
    return emit_scalar(e, cJSON_IsTrue(j) ? "true" : cJSON_IsFalse(j) ? "false" : "null", true);
}

static int write_out(void *ud, unsigned char *buf, size_t size)
{
    (void)ud;
    return fwrite(buf, 1, size, stdout) == size;
}

static int print_yaml(const cJSON *j)
{
    yaml_emitter_t e;
    yaml_event_t ev;
    if (!yaml_emitter_initialize(&e))
        return -1;
    yaml_emitter_set_output(&e, write_out, NULL);
    yaml_emitter_set_unicode(&e, 1);
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    int ok = yaml_emitter_emit(&e, &ev);
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    ok = ok && yaml_emitter_emit(&e, &ev) && emit_json(&e, j);
    yaml_document_end_event_initialize(&ev, 1);
    ok = ok && yaml_emitter_emit(&e, &ev);
    yaml_stream_end_event_initialize(&ev);
    ok = ok && yaml_emitter_emit(&e, &ev);
    yaml_emitter_delete(&e);
    return ok ? 0 : -1;
}

int brix_get_main(int argc, char **argv)
{
    static conn_t cn;
    if (take_conn("get", &argc, argv, &cn))
        return 2;
    const char *kind = NULL, *name = NULL, *out = "table";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: brix get KIND [NAME] [-o json|yaml|wide|name] " CONN_FLAGS "\n\n"
                   "KIND: deployments (deployment, deploy, md), adapters (adapter, modeladapter,\n"
                   "ma, lora), replicas (replica, pods, pod), podautoscalers (podautoscaler, pa,\n"
                   "autoscalers). Tables by default; -o json|yaml print the objects with\n"
                   "metadata, spec and status (secrets in engine arguments shown as\n"
                   "<redacted>); -o wide adds columns (a PodAutoscaler's active schedule and\n"
                   "last scaling decision).\n" CONN_HELP);
            return 0;
        }
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "brix get: -o needs a format (json, yaml, wide, name)\n");
                return 2;
            }
            out = argv[++i];
        } else if (!strncmp(argv[i], "-o", 2) && argv[i][2]) {
            out = argv[i] + 2 + (argv[i][2] == '=');
        } else if (!kind) {
            kind = argv[i];
        } else if (!name) {
            name = argv[i];
        } else {
            fprintf(stderr, "brix get: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!kind) {
        fprintf(stderr,
                "brix get: which kind? deployments, adapters, replicas or podautoscalers\n");
        return 2;
    }
    brix_kind_t k = brix_kind_parse(kind);
    if (k == BRIX_KIND_NONE || k == BRIX_KIND_CLUSTER) {
        fprintf(stderr,
                "brix get: unknown kind '%s' (deployments, adapters, replicas, podautoscalers)\n",
                kind);
        return 2;
    }
    if (strcmp(out, "table") && strcmp(out, "json") && strcmp(out, "yaml") && strcmp(out, "wide") &&
        strcmp(out, "name")) {
        fprintf(stderr, "brix get: unknown output format '%s' (json, yaml, wide, name)\n", out);
        return 2;
    }
    char path[512], err[1024];
    snprintf(path, sizeof path, "/v1/%s%s%s", brix_kind_plural(k), name ? "/" : "",
             name ? name : "");
    brix_buf_t body = BRIX_BUF_INIT;
    long st =
        brix_cli_call(cn.server, cn.token, "GET", path, NULL, 0, NULL, &body, err, sizeof err);
    int rc = 0;
    if (st != 200) {
        call_failed("get", &cn, st, &body, err);
        rc = 1;
    } else {
        cJSON *j = cJSON_Parse(body.data ? body.data : "");
        if (!j) {
            fprintf(stderr, "brix get: the controller sent invalid JSON\n");
            rc = 1;
        } else if (!strcmp(out, "json")) {
            char *s = cJSON_Print(j);
            printf("%s\n", s ? s : "");
            cJSON_free(s);
        } else if (!strcmp(out, "yaml")) {
            rc = print_yaml(j) ? 1 : 0;
        } else {
            cJSON *items = name ? NULL : cJSON_GetObjectItemCaseSensitive(j, "items");
            cJSON *one = NULL;
            if (name) {
                one = cJSON_CreateArray();
                cJSON_AddItemReferenceToArray(one, j);
                items = one;
            }
            if (!cJSON_GetArraySize(items)) {
                fprintf(stderr, "No %s found.\n", brix_kind_plural(k));
            } else if (!strcmp(out, "name")) {
                const cJSON *it;
                cJSON_ArrayForEach(it, items)
                {
                    printf("%s/%s\n", lower_kind(brix_kind_name(k)), jstr(it, "metadata.name"));
                }
            } else {
                print_table(k, items, !strcmp(out, "wide"));
            }
            cJSON_Delete(one);
        }
        cJSON_Delete(j);
    }
    brix_buf_free(&body);
    return rc;
}

/* ------------------------------------------------------------- delete -- */

int brix_delete_main(int argc, char **argv)
{
    static conn_t cn;
    if (take_conn("delete", &argc, argv, &cn))
        return 2;
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: brix delete KIND NAME " CONN_FLAGS "\n\n"
               "Deletes a deployment (its replicas stop), an adapter (it is unloaded from\n"
               "every replica first) or a podautoscaler (its target keeps its current scale).\n"
               "Deleting a replica restarts it, as deleting a pod does.\n" CONN_HELP);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: brix delete KIND NAME " CONN_FLAGS "\n");
        return 2;
    }
    brix_kind_t k = brix_kind_parse(argv[1]);
    if (k == BRIX_KIND_NONE || k == BRIX_KIND_CLUSTER) {
        fprintf(stderr,
                "brix delete: unknown kind '%s' (deployments, adapters, replicas, "
                "podautoscalers)\n",
                argv[1]);
        return 2;
    }
    char path[512], err[1024];
    snprintf(path, sizeof path, "/v1/%s/%s", brix_kind_plural(k), argv[2]);
    brix_buf_t body = BRIX_BUF_INIT;
    long st =
        brix_cli_call(cn.server, cn.token, "DELETE", path, NULL, 0, NULL, &body, err, sizeof err);
    int rc = 0;
    if (st != 200) {
        call_failed("delete", &cn, st, &body, err);
        rc = 1;
    } else {
        printf("%s/%s %s\n", lower_kind(brix_kind_name(k)), argv[2],
               k == BRIX_KIND_REPLICA ? "restarting" : "deleted");
    }
    brix_buf_free(&body);
    return rc;
}
