/*
 * up — `brix up -c FILE`: the embedded local cluster in one command.
 *
 * A small supervisor, not an event loop: it validates FILE (a Cluster
 * settings document plus ModelDeployment / ModelAdapter objects), starts
 * `brix controller` and applies the objects, starts `brix gateway
 * --controller …`, waits until the fleet serves, prints where everything is,
 * then sleeps in sigtimedwait until Ctrl-C / SIGTERM or a child's death, and
 * stops the gateway first (it drains) and the controller last (it stops the
 * replicas). Children get PR_SET_PDEATHSIG so a killed `brix up` leaves no
 * gateway or controller behind; the controller's replicas then follow it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>

#include "controller/auth.h"

#include "controller/cli.h"
#include "controller/controller_main.h"
#include "controller/objects.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/time.h"
#include "core/yaml.h"

typedef struct up_cfg {
    int gw_port, api_port;
    char state_dir[PATH_MAX];
    const char *token_file; /* NULL: STATE_DIR/token */
    bool allow_engine_commands;
    brix_strlist_t gw_args, ctl_args;
    int ready_timeout_s;
    /* spec.kvcache: one brix kvcache node the deployments share */
    bool kv_enabled;
    int kv_port, kv_http_port;
    char kv_capacity[32];
    char kv_block[32]; /* spec.kvcache.blockBytes: engine-sim's stored block */
    brix_strlist_t kv_args;
} up_cfg_t;

typedef struct child {
    const char *what;
    pid_t pid;
    char log[PATH_MAX + 64];
} child_t;

static int errat(const char *file, const brix_yaml_node_t *n, const char *msg)
{
    fprintf(stderr, "brix up: %s:%d:%d: %s\n", file, n ? n->line : 1, n ? n->col : 1, msg);
    return -1;
}

static int yint(const char *file, const brix_yaml_node_t *n, int min, int max, int *out)
{
    char *end;
    long v = n && n->type == BRIX_YAML_SCALAR ? strtol(n->scalar, &end, 10) : 0;
    if (!n || n->type != BRIX_YAML_SCALAR || *end || !n->scalar[0] || v < min || v > max) {
        char m[96];
        snprintf(m, sizeof m, "expected an integer from %d to %d", min, max);
        return errat(file, n, m);
    }
    *out = (int)v;
    return 0;
}

static int ylist(const char *file, const brix_yaml_node_t *n, brix_strlist_t *out)
{
    if (!n || n->type != BRIX_YAML_SEQ)
        return errat(file, n, "expected a list of strings");
    for (size_t i = 0; i < n->n; i++) {
        if (n->items[i]->type != BRIX_YAML_SCALAR)
            return errat(file, n->items[i], "expected a string");
        brix_strlist_push(out, n->items[i]->scalar);
    }
    return 0;
}

/* spec.kvcache: {enabled, port, httpPort, capacity, blockBytes, args} */
static int parse_kvcache(const char *file, const brix_yaml_node_t *v, up_cfg_t *u)
{
    if (v->type != BRIX_YAML_MAP)
        return errat(file, v, "kvcache: expected a mapping");
    u->kv_enabled = true;
    for (size_t j = 0; j < v->n; j++) {
        const brix_yaml_node_t *kk = v->items[2 * j], *vv = v->items[2 * j + 1];
        const char *k = kk->type == BRIX_YAML_SCALAR ? kk->scalar : "";
        if (!strcmp(k, "enabled")) {
            if (vv->type != BRIX_YAML_SCALAR ||
                (strcmp(vv->scalar, "true") && strcmp(vv->scalar, "false")))
                return errat(file, vv, "kvcache.enabled: expected true or false");
            u->kv_enabled = !strcmp(vv->scalar, "true");
        } else if (!strcmp(k, "port")) {
            if (yint(file, vv, 1, 65535, &u->kv_port))
                return -1;
        } else if (!strcmp(k, "httpPort")) {
            if (yint(file, vv, 1, 65535, &u->kv_http_port))
                return -1;
        } else if (!strcmp(k, "capacity")) {
            uint64_t bytes;
            if (vv->type != BRIX_YAML_SCALAR || brix_parse_size(vv->scalar, &bytes) ||
                bytes < (1u << 20) || strlen(vv->scalar) >= sizeof u->kv_capacity)
                return errat(file, vv,
                             "kvcache.capacity: expected a size of at least 1MiB "
                             "(e.g. 1GiB, 512MiB)");
            snprintf(u->kv_capacity, sizeof u->kv_capacity, "%s", vv->scalar);
        } else if (!strcmp(k, "blockBytes")) {
            uint64_t bytes;
            if (vv->type != BRIX_YAML_SCALAR || brix_parse_size(vv->scalar, &bytes) || bytes < 16 ||
                bytes > (256u << 20) || strlen(vv->scalar) >= sizeof u->kv_block)
                return errat(file, vv,
                             "kvcache.blockBytes: expected a size from 16 bytes to 256MiB");
            snprintf(u->kv_block, sizeof u->kv_block, "%s", vv->scalar);
        } else if (!strcmp(k, "args")) {
            if (ylist(file, vv, &u->kv_args))
                return -1;
        } else {
            return errat(file, kk,
                         "kvcache: unknown field (known: enabled, port, httpPort, capacity, "
                         "blockBytes, args)");
        }
    }
    return 0;
}

/* spec: {gateway: {port, args}, controller: {port, stateDir, args}, kvcache, readyTimeout} */
static int parse_cluster(const char *file, const brix_yaml_node_t *doc, up_cfg_t *u, bool port_set,
                         bool api_set, bool dir_set)
{
    const brix_yaml_node_t *spec = brix_yaml_get(doc, "spec");
    if (!spec || brix_yaml_is_null(spec))
        return 0;
    if (spec->type != BRIX_YAML_MAP)
        return errat(file, spec, "spec: expected a mapping");
    for (size_t i = 0; i < spec->n; i++) {
        const brix_yaml_node_t *k = spec->items[2 * i], *v = spec->items[2 * i + 1];
        if (k->type != BRIX_YAML_SCALAR)
            return errat(file, k, "spec: keys must be strings");
        bool gw = !strcmp(k->scalar, "gateway"), ctl = !strcmp(k->scalar, "controller");
        if (!strcmp(k->scalar, "kvcache")) {
            if (parse_kvcache(file, v, u))
                return -1;
            continue;
        }
        if (!strcmp(k->scalar, "readyTimeout")) {
            if (yint(file, v, 1, 3600, &u->ready_timeout_s))
                return -1;
            continue;
        }
        if (!gw && !ctl)
            return errat(file, k,
                         "spec: unknown field (known: gateway, controller, kvcache, readyTimeout)");
        if (v->type != BRIX_YAML_MAP)
            return errat(file, v, "expected a mapping");
        for (size_t j = 0; j < v->n; j++) {
            const brix_yaml_node_t *kk = v->items[2 * j], *vv = v->items[2 * j + 1];
            if (kk->type != BRIX_YAML_SCALAR)
                return errat(file, kk, "keys must be strings");
            if (!strcmp(kk->scalar, "port")) {
                int p;
                if (yint(file, vv, 0, 65535, &p))
                    return -1;
                if (gw && !port_set)
                    u->gw_port = p;
                if (ctl && !api_set)
                    u->api_port = p;
            } else if (!strcmp(kk->scalar, "args")) {
                if (ylist(file, vv, gw ? &u->gw_args : &u->ctl_args))
                    return -1;
            } else if (ctl && !strcmp(kk->scalar, "stateDir")) {
                if (vv->type != BRIX_YAML_SCALAR || !vv->scalar[0])
                    return errat(file, vv, "stateDir: expected a path");
                if (!dir_set)
                    snprintf(u->state_dir, sizeof u->state_dir, "%s", vv->scalar);
            } else {
                return errat(file, kk,
                             gw ? "gateway: unknown field (known: port, args)"
                                : "controller: unknown field (known: port, stateDir, args)");
            }
        }
    }
    return 0;
}

static pid_t spawn(const char *self, const char *const *argv0, const brix_strlist_t *extra,
                   const char *log)
{
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "brix up: %s: %s\n", log, strerror(errno));
        return -1;
    }
    size_t n0 = 0;
    while (argv0[n0])
        n0++;
    char **argv = brix_calloc(n0 + extra->n + 2, sizeof *argv);
    if (!argv) {
        close(fd);
        return -1;
    }
    argv[0] = (char *)self;
    for (size_t i = 0; i < n0; i++)
        argv[i + 1] = (char *)argv0[i];
    for (size_t i = 0; i < extra->n; i++)
        argv[n0 + 1 + i] = extra->v[i];
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* its own process group: Ctrl-C reaches only brix up, which stops the
         * gateway first (it drains) and the controller last */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(fd, 1);
        dup2(fd, 2);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        execv(self, argv);
        fprintf(stderr, "exec %s: %s\n", self, strerror(errno));
        _exit(127);
    }
    brix_free(argv);
    close(fd);
    return pid;
}

static void tail_log(const char *path)
{
    char *text;
    size_t len;
    char err[256];
    if (brix_file_read(path, &text, &len, err, sizeof err))
        return;
    size_t start = len, lines = 0;
    while (start > 0 && lines < 12)
        if (text[--start] == '\n' && start + 1 < len)
            lines++;
    fprintf(stderr, "---- last lines of %s ----\n%s", path, text + start + (start > 0));
    brix_free(text);
}

/* The controller's API token (brix up is one process: one token). */
static char up_token[BRIX_AUTH_TOKEN_MAX];

static bool http_ok(const char *base, const char *path, brix_buf_t *out)
{
    char err[512];
    brix_buf_t tmp = BRIX_BUF_INIT;
    long st = brix_cli_call(base, up_token, "GET", path, NULL, 0, NULL, out ? out : &tmp, err,
                            sizeof err);
    brix_buf_free(&tmp);
    return st == 200;
}

static volatile int stop_sig;

static bool alive(child_t *c)
{
    if (c->pid <= 0)
        return false;
    int st;
    pid_t r = waitpid(c->pid, &st, WNOHANG);
    if (r == c->pid) {
        fprintf(stderr, "brix up: the %s exited (%s %d)\n", c->what,
                WIFSIGNALED(st) ? "signal" : "status",
                WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        c->pid = 0;
        tail_log(c->log);
        return false;
    }
    return true;
}

/* Waits (up to ms) until path answers 200, the child dies, or a signal. */
static bool wait_http(child_t *c, const char *base, const char *path, int ms, const sigset_t *set)
{
    struct timespec ts = { 0, 50 * 1000000L };
    for (int waited = 0; waited < ms; waited += 50) {
        if (http_ok(base, path, NULL))
            return true;
        if (!alive(c))
            return false;
        int s = sigtimedwait(set, NULL, &ts);
        if (s == SIGINT || s == SIGTERM) {
            stop_sig = s;
            return false;
        }
    }
    fprintf(stderr, "brix up: the %s did not answer %s%s within %d s\n", c->what, base, path,
            ms / 1000);
    tail_log(c->log);
    return false;
}

/* Replicas are the controller's children in their own sessions; if the
 * controller died, they were re-parented to us (PR_SET_CHILD_SUBREAPER):
 * stop every child of ours that is still there. */
static void stop_orphans(void)
{
    pid_t me = getpid();
    for (int round = 0; round < 2; round++) {
        int found = 0;
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            char path[64], buf[512];
            if (pid <= 0)
                continue;
            snprintf(path, sizeof path, "/proc/%d/stat", pid);
            FILE *f = fopen(path, "r");
            if (!f)
                continue;
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = '\0';
            char *p = strrchr(buf, ')');
            char st;
            int ppid;
            if (!p || sscanf(p + 1, " %c %d", &st, &ppid) != 2 || ppid != me)
                continue;
            found++;
            if (st != 'Z')
                kill(pid, round ? SIGKILL : SIGTERM);
        }
        if (d)
            closedir(d);
        if (!found)
            return;
        if (!round)
            fprintf(stderr, "brix up: stopping %d replica process(es) the controller left\n",
                    found);
        for (int waited = 0; waited < 5000; waited += 50) {
            while (waitpid(-1, NULL, WNOHANG) > 0)
                found--;
            if (found <= 0)
                return;
            struct timespec ts = { 0, 50 * 1000000L };
            nanosleep(&ts, NULL);
        }
    }
}

static void stop_child(child_t *c, int grace_ms)
{
    if (c->pid <= 0)
        return;
    kill(c->pid, SIGTERM);
    for (int waited = 0; waited < grace_ms; waited += 20) {
        int st;
        if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
            c->pid = 0;
            return;
        }
        struct timespec ts = { 0, 20 * 1000000L };
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "brix up: the %s did not stop in %d s; killing it\n", c->what, grace_ms / 1000);
    kill(c->pid, SIGKILL);
    waitpid(c->pid, NULL, 0);
    c->pid = 0;
}

/* True when the gateway's /v1/models lists every name in want (a JSON array
 * of strings): the controller may call a replica ready a moment before the
 * gateway has read that replica's models, and "brix is up" must mean that a
 * request for any model of the file is routed. No token: the gateway's API is
 * not the controller's. */
static bool gateway_lists(const char *gwurl, const cJSON *want)
{
    char err[512];
    brix_buf_t b = BRIX_BUF_INIT;
    long st = brix_cli_call(gwurl, NULL, "GET", "/v1/models", NULL, 0, NULL, &b, err, sizeof err);
    cJSON *j = st == 200 && b.data ? cJSON_Parse(b.data) : NULL;
    brix_buf_free(&b);
    bool all = j != NULL;
    const cJSON *w, *m;
    cJSON_ArrayForEach(w, want)
    {
        bool found = false;
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(j, "data"))
        {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
            found |= cJSON_IsString(id) && !strcmp(id->valuestring, w->valuestring);
        }
        all &= found;
    }
    cJSON_Delete(j);
    return all;
}

/* Prints progress until every deployment is ready, every adapter is Running
 * (or Scaled) and the gateway lists every served model, or the time is up;
 * true when all is ready. */
static bool wait_fleet(const char *api, const char *gwurl, child_t *ch, size_t nch, int timeout_s,
                       const sigset_t *set)
{
    char last[512] = "";
    int fleet_ticks = 0; /* 200 ms ticks since the controller reported all ready */
    for (int t = 0; t < timeout_s * 5; t++) {
        brix_buf_t d = BRIX_BUF_INIT, a = BRIX_BUF_INIT;
        bool ok = http_ok(api, "/v1/deployments", &d) && http_ok(api, "/v1/adapters", &a);
        cJSON *dj = ok ? cJSON_Parse(d.data) : NULL, *aj = ok ? cJSON_Parse(a.data) : NULL;
        brix_buf_free(&d);
        brix_buf_free(&a);
        int want = 0, ready = 0, adapters = 0, running = 0;
        const cJSON *it;
        cJSON *names = cJSON_CreateArray();
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(dj, "items"))
        {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "spec");
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
            const cJSON *model = cJSON_GetObjectItemCaseSensitive(sp, "model");
            if (cJSON_IsString(model) &&
                cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(sp, "replicas")) > 0)
                cJSON_AddItemToArray(names, cJSON_CreateString(model->valuestring));
            want += (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(sp, "replicas"));
            ready +=
                (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(st, "readyReplicas"));
        }
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(aj, "items"))
        {
            const cJSON *ph = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(it, "status"), "phase");
            adapters++;
            running += cJSON_IsString(ph) &&
                       (!strcmp(ph->valuestring, "Running") || !strcmp(ph->valuestring, "Scaled"));
        }
        cJSON_Delete(dj);
        cJSON_Delete(aj);
        char now[512];
        snprintf(now, sizeof now, "  replicas ready %d/%d, adapters loaded %d/%d", ready, want,
                 running, adapters);
        if (strcmp(now, last)) {
            printf("%s\n", now);
            fflush(stdout);
            snprintf(last, sizeof last, "%s", now);
        }
        bool fleet = ok && ready >= want && running >= adapters;
        bool listed = fleet && gateway_lists(gwurl, names);
        cJSON_Delete(names);
        if (listed)
            return true;
        /* the gateway may be unable to read a replica's models (an engine
         * started with its own --api-key, say): say so instead of waiting on */
        fleet_ticks = fleet ? fleet_ticks + 1 : 0;
        if (fleet_ticks > 50) {
            fprintf(stderr,
                    "brix up: the replicas are ready but the gateway does not list every "
                    "model yet (see %s/v1/models and the gateway log)\n",
                    gwurl);
            return true;
        }
        for (size_t i = 0; i < nch; i++)
            if (!alive(&ch[i]))
                return false;
        struct timespec ts = { 0, 200 * 1000000L };
        int s = sigtimedwait(set, NULL, &ts);
        if (s == SIGINT || s == SIGTERM) {
            stop_sig = s;
            return false;
        }
    }
    fprintf(stderr,
            "brix up: the fleet was not ready within %d s; it keeps trying (see "
            "`brix get replicas` and the logs)\n",
            timeout_s);
    return true;
}

int brix_up_main(int argc, char **argv)
{
    const char *file = NULL;
    up_cfg_t u;
    memset(&u, 0, sizeof u);
    u.gw_port = 8080;
    u.api_port = 8081;
    u.kv_port = 8090;
    u.kv_http_port = 8091;
    snprintf(u.kv_capacity, sizeof u.kv_capacity, "1GiB");
    u.ready_timeout_s = 120;
    snprintf(u.state_dir, sizeof u.state_dir, ".brix");
    bool port_set = false, api_set = false, dir_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: brix up -c FILE [--port 8080] [--api-port 8081] [--state-dir DIR]\n"
                   "               [--token-file FILE] [--allow-engine-commands]\n\n"
                   "Starts the local cluster described by FILE: the controller (API on\n"
                   "--api-port), the ModelDeployments' engine replicas and ModelAdapters it\n"
                   "manages, and a gateway serving the OpenAI API on --port. Ctrl-C stops all.\n"
                   "Logs go to STATE_DIR/logs/. See examples/local.yaml.\n\n"
                   "The controller's API token is STATE_DIR/token (made on first start, mode\n"
                   "0600; brix get/apply/delete read it there) unless --token-file FILE.\n"
                   "The engine replicas' key is STATE_DIR/engine-key (same rules; the gateway\n"
                   "gets --engine-api-key-file to it, the replicas VLLM_API_KEY).\n"
                   "If FILE has a spec.engine.command, the controller is started with\n"
                   "--allow-engine-commands (FILE is the local user's own); otherwise only\n"
                   "engine-sim runs unless --allow-engine-commands is given here.\n");
            return 0;
        }
        if ((!strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "-f")) && more) {
            file = argv[++i];
        } else if (!strcmp(a, "--port") && more) {
            u.gw_port = atoi(argv[++i]);
            port_set = true;
        } else if (!strcmp(a, "--api-port") && more) {
            u.api_port = atoi(argv[++i]);
            api_set = true;
        } else if (!strcmp(a, "--state-dir") && more) {
            snprintf(u.state_dir, sizeof u.state_dir, "%s", argv[++i]);
            dir_set = true;
        } else if (!strcmp(a, "--token-file") && more) {
            u.token_file = argv[++i];
        } else if (!strcmp(a, "--allow-engine-commands")) {
            u.allow_engine_commands = true;
        } else {
            fprintf(stderr, "brix up: unexpected argument '%s' (see brix up --help)\n", a);
            return 2;
        }
    }
    if (!file) {
        fprintf(stderr, "brix up: -c FILE is required (e.g. examples/local.yaml)\n");
        return 2;
    }
    if (u.gw_port <= 0 || u.gw_port > 65535 || u.api_port <= 0 || u.api_port > 65535) {
        fprintf(stderr, "brix up: ports must be 1..65535\n");
        return 2;
    }
    /* validate the whole file before starting anything */
    brix_yaml_node_t *docs;
    char err[2048], real[PATH_MAX], base[PATH_MAX] = "";
    if (brix_yaml_load_file_docs(file, &docs, err, sizeof err)) {
        fprintf(stderr, "brix up: %s\n", err);
        return 1;
    }
    if (realpath(file, real))
        snprintf(base, sizeof base, "%s", dirname(real));
    int nobj = 0, rc = 1;
    bool file_cmds = false; /* the file runs its own engine program */
    for (size_t i = 0; i < docs->n; i++) {
        brix_obj_t *o;
        if (brix_obj_parse(docs->items[i], file, base, &o, err, sizeof err)) {
            fprintf(stderr, "brix up: %s\n", err);
            goto out_docs;
        }
        if (o->kind == BRIX_KIND_CLUSTER &&
            parse_cluster(file, docs->items[i], &u, port_set, api_set, dir_set)) {
            brix_obj_free(o);
            goto out_docs;
        }
        nobj += o->kind != BRIX_KIND_CLUSTER;
        file_cmds |= o->kind == BRIX_KIND_DEPLOYMENT && o->d.command.n;
        brix_obj_free(o);
    }
    if (!nobj) {
        fprintf(stderr, "brix up: %s has no ModelDeployment or ModelAdapter\n", file);
        goto out_docs;
    }
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        fprintf(stderr, "brix up: cannot find its own executable\n");
        goto out_docs;
    }
    self[sl] = '\0';
    char logs[PATH_MAX + 16];
    snprintf(logs, sizeof logs, "%s/logs", u.state_dir);
    mkdir(u.state_dir, 0755);
    if (mkdir(logs, 0755) && errno != EEXIST) {
        fprintf(stderr, "brix up: cannot create %s: %s\n", logs, strerror(errno));
        goto out_docs;
    }
    /* the token exists before the controller starts, so brix up, the
     * controller and the gateway read the same file (no token in any argv) */
    char tokpath[PATH_MAX + 16];
    snprintf(tokpath, sizeof tokpath, "%s", u.token_file ? u.token_file : "");
    if (!u.token_file)
        snprintf(tokpath, sizeof tokpath, "%s/token", u.state_dir);
    if (brix_auth_token_load(tokpath, !u.token_file, up_token, sizeof up_token, NULL, err,
                             sizeof err)) {
        fprintf(stderr, "brix up: the controller token: %s\n", err);
        goto out_docs;
    }
    /* the engine key, made here too so the gateway can read it when it starts:
     * the controller's default file, or what the file's controller args say */
    char ekpath[PATH_MAX + 16];
    bool no_ek = false;
    snprintf(ekpath, sizeof ekpath, "%s/engine-key", u.state_dir);
    bool ek_given = false;
    for (size_t i = 0; i < u.ctl_args.n; i++) {
        const char *a = u.ctl_args.v[i];
        if (!strcmp(a, "--no-engine-key") || !strcmp(a, "--no-engine-key=true"))
            no_ek = true;
        else if (!strcmp(a, "--engine-key-file") && i + 1 < u.ctl_args.n)
            ek_given = snprintf(ekpath, sizeof ekpath, "%s", u.ctl_args.v[++i]) > 0;
        else if (!strncmp(a, "--engine-key-file=", 18))
            ek_given = snprintf(ekpath, sizeof ekpath, "%s", a + 18) > 0;
    }
    if (!no_ek) {
        char ek[BRIX_AUTH_TOKEN_MAX];
        int ekrc = brix_auth_token_load(ekpath, !ek_given, ek, sizeof ek, NULL, err, sizeof err);
        OPENSSL_cleanse(ek, sizeof ek);
        if (ekrc) {
            fprintf(stderr, "brix up: the engine key: %s\n", err);
            goto out_docs;
        }
    }
    if (file_cmds && !u.allow_engine_commands) {
        printf("brix up: %s runs its own engine command (spec.engine.command): the controller "
               "accepts engine commands (--allow-engine-commands)\n",
               file);
        u.allow_engine_commands = true;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);

    child_t ch[3] = { { "controller", 0, "" }, { "gateway", 0, "" }, { "kvcache", 0, "" } };
    snprintf(ch[0].log, sizeof ch[0].log, "%s/controller.log", logs);
    snprintf(ch[1].log, sizeof ch[1].log, "%s/gateway.log", logs);
    snprintf(ch[2].log, sizeof ch[2].log, "%s/kvcache.log", logs);
    size_t nch = u.kv_enabled ? 3 : 2;
    char api[64], gwurl[64], aport[16], gport[16];
    snprintf(api, sizeof api, "http://127.0.0.1:%d", u.api_port);
    snprintf(gwurl, sizeof gwurl, "http://127.0.0.1:%d", u.gw_port);
    snprintf(aport, sizeof aport, "%d", u.api_port);
    snprintf(gport, sizeof gport, "%d", u.gw_port);
    if (http_ok(api, "/healthz", NULL)) {
        fprintf(stderr, "brix up: something already answers on %s (another `brix up`?)\n", api);
        goto out_sig;
    }
    /* the KV store first: the controller gives its address to every replica */
    char kvlisten[64], kvhttp[16], kvurl[64], kvsock[PATH_MAX + 32], kvtok[PATH_MAX + 32];
    snprintf(kvlisten, sizeof kvlisten, "127.0.0.1:%d", u.kv_port);
    snprintf(kvhttp, sizeof kvhttp, "%d", u.kv_http_port);
    snprintf(kvurl, sizeof kvurl, "http://127.0.0.1:%d", u.kv_http_port);
    /* absolute: the node advertises it, and clients refuse a relative path */
    char sdabs[PATH_MAX];
    if (!realpath(u.state_dir, sdabs))
        snprintf(sdabs, sizeof sdabs, "%s", u.state_dir);
    snprintf(kvsock, sizeof kvsock, "%s/kvcache.sock", sdabs);
    snprintf(kvtok, sizeof kvtok, "%s/kvcache-token", u.state_dir);
    if (u.kv_enabled) {
        char kvt[BRIX_AUTH_TOKEN_MAX];
        int kvrc = brix_auth_token_load(kvtok, true, kvt, sizeof kvt, NULL, err, sizeof err);
        OPENSSL_cleanse(kvt, sizeof kvt);
        if (kvrc) {
            fprintf(stderr, "brix up: the kvcache token: %s\n", err);
            goto out_sig;
        }
        /* replicas read it by path, from whatever directory they run in */
        char abs[PATH_MAX];
        if (realpath(kvtok, abs))
            snprintf(kvtok, sizeof kvtok, "%s", abs);
        if (http_ok(kvurl, "/healthz", NULL)) {
            fprintf(stderr, "brix up: something already answers on %s (another `brix up`?)\n",
                    kvurl);
            goto out_sig;
        }
        printf("brix up: starting the KV store (%s, %s)\n", kvlisten, u.kv_capacity);
        fflush(stdout);
        const char *kargs[] = { "kvcache", "--listen",     kvlisten,      "--http-port",
                                kvhttp,    "--capacity",   u.kv_capacity, "--unix",
                                kvsock,    "--token-file", kvtok,         NULL };
        if ((ch[2].pid = spawn(self, kargs, &u.kv_args, ch[2].log)) <= 0 ||
            !wait_http(&ch[2], kvurl, "/healthz", 15000, &set))
            goto stop;
    }
    printf("brix up: starting the controller (state in %s/)\n", u.state_dir);
    fflush(stdout);
    const char *cargs[16] = { "controller",  "--host",    "127.0.0.1",    "--port", aport,
                              "--state-dir", u.state_dir, "--token-file", tokpath };
    size_t nca = 9;
    if (u.kv_enabled) {
        cargs[nca++] = "--kvcache-servers";
        cargs[nca++] = kvlisten;
        cargs[nca++] = "--kvcache-token-file";
        cargs[nca++] = kvtok;
        if (u.kv_block[0]) {
            cargs[nca++] = "--kvcache-block-bytes";
            cargs[nca++] = u.kv_block;
        }
    }
    if (u.allow_engine_commands)
        cargs[nca++] = "--allow-engine-commands";
    cargs[nca] = NULL;
    if ((ch[0].pid = spawn(self, cargs, &u.ctl_args, ch[0].log)) <= 0 ||
        !wait_http(&ch[0], api, "/readyz", 15000, &set))
        goto stop;
    /* apply the objects: the controller validates again and reports positions */
    char *text;
    size_t len;
    if (brix_file_read(file, &text, &len, err, sizeof err)) {
        fprintf(stderr, "brix up: %s\n", err);
        goto stop;
    }
    char h1[PATH_MAX + 32], h2[PATH_MAX + 32];
    snprintf(h1, sizeof h1, "x-brix-source: %s", file);
    snprintf(h2, sizeof h2, "x-brix-base-dir: %s", base);
    const char *hdrs[] = { h1, base[0] ? h2 : NULL, NULL };
    brix_buf_t out = BRIX_BUF_INIT;
    long st =
        brix_cli_call(api, up_token, "POST", "/v1/apply", text, len, hdrs, &out, err, sizeof err);
    brix_free(text);
    if (st != 200) {
        fprintf(stderr, "brix up: applying %s: %s\n", file,
                st < 0     ? err
                : out.data ? out.data
                           : "");
        brix_buf_free(&out);
        goto stop;
    }
    brix_buf_free(&out);
    printf("brix up: applied %d object(s) from %s; starting the gateway\n", nobj, file);
    fflush(stdout);
    const char *gargs[] = { "gateway",   "--host",
                            "127.0.0.1", "--port",
                            gport,       "--controller",
                            api,         "--controller-token-file",
                            tokpath,     no_ek ? NULL : "--engine-api-key-file",
                            ekpath,      NULL };
    if ((ch[1].pid = spawn(self, gargs, &u.gw_args, ch[1].log)) <= 0 ||
        !wait_http(&ch[1], gwurl, "/healthz", 15000, &set))
        goto stop;
    printf("brix up: waiting for the fleet\n");
    fflush(stdout);
    if (!wait_fleet(api, gwurl, ch, nch, u.ready_timeout_s, &set))
        goto stop;
    char login[256] = "";
    brix_buf_t lb = BRIX_BUF_INIT;
    if (brix_cli_call(api, up_token, "POST", "/v1/login", NULL, 0, NULL, &lb, err, sizeof err) ==
        200) {
        cJSON *lj = cJSON_Parse(lb.data ? lb.data : "");
        const cJSON *lp = cJSON_GetObjectItemCaseSensitive(lj, "path");
        if (cJSON_IsString(lp))
            snprintf(login, sizeof login, "%s%s", api, lp->valuestring);
        cJSON_Delete(lj);
    }
    brix_buf_free(&lb);
    printf("\nbrix is up.\n"
           "  OpenAI API     %s/v1      try: curl %s/v1/models\n"
           "  controller     %s         objects: brix get adapters (token in %s)\n"
           "  status page    %s   (one-time login link)\n"
           "  logs           %s/\n"
           "Ctrl-C stops everything.\n\n",
           gwurl, gwurl, api, tokpath, login[0] ? login : "(no login link: see the controller log)",
           logs);
    fflush(stdout);
    for (;;) {
        int s = sigwaitinfo(&set, NULL);
        if (s == SIGINT || s == SIGTERM) {
            stop_sig = s;
            break;
        }
        if (s == SIGCHLD && (!alive(&ch[0]) || !alive(&ch[1]) || (u.kv_enabled && !alive(&ch[2]))))
            break;
    }
stop:
    printf("\nbrix up: stopping\n");
    fflush(stdout);
    stop_child(&ch[1], 35000); /* the gateway drains in-flight requests first */
    stop_child(&ch[0], 30000); /* the controller stops its replicas */
    stop_child(&ch[2], 10000); /* the store outlives the replicas that use it */
    stop_orphans();
    rc = stop_sig ? 0 : 1;
    printf("brix up: stopped\n");
out_sig:
    sigprocmask(SIG_UNBLOCK, &set, NULL);
out_docs:
    brix_yaml_free(docs);
    brix_strlist_free(&u.gw_args);
    brix_strlist_free(&u.ctl_args);
    brix_strlist_free(&u.kv_args);
    OPENSSL_cleanse(up_token, sizeof up_token);
    return rc;
}
