/*
 * provider_local — replicas as child processes (cf. a kubelet without pods).
 *
 * Each replica runs in its own session (UV_PROCESS_DETACHED) with stdout and
 * stderr appended to its log file, so a controller restart neither kills it
 * nor loses its output; the next controller adopts it by pid after checking
 * /proc/PID/cmdline is still the same command. Our own children are reaped
 * through libuv's exit callback; adopted ones (no longer our children) are
 * polled with kill(pid, 0). Stopping sends SIGTERM to the replica's process
 * group, then SIGKILL after the grace period.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "controller/auth.h"
#include "controller/provider.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/time.h"

typedef struct lp {
    brix_provider_t base;
    char *self_exe;
    char *log_dir;
} lp_t;

/* Per-replica state; freed when its handles are closed and the record let go. */
typedef struct lp_rep {
    lp_t *lp;
    brix_replica_t *r; /* NULL once released */
    uv_process_t proc;
    uv_timer_t kill_timer, poll_timer;
    bool proc_open, timers_open;
    int open_handles;
    bool exited;
} lp_rep_t;

/* State letter and start time (clock ticks since boot) of a process: with the
 * pid, its identity — a reused pid has another start time. 0 or -1. */
static int proc_stat(int pid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p)
        return -1;
    p++;
    unsigned long long v = 0;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return -1;
        if (field == 3)
            *state = *p;
        if (field == 22)
            v = strtoull(p, NULL, 10);
        while (*p && *p != ' ')
            p++;
    }
    *start = v;
    return 0;
}

const char *brix_replica_phase_name(brix_replica_phase_t p)
{
    static const char *n[] = { "Pending", "Starting", "Running", "Failed", "Terminating" };
    return (unsigned)p < 5 ? n[p] : "Unknown";
}

static void rep_handle_closed(uv_handle_t *h)
{
    lp_rep_t *s = h->data;
    if (--s->open_handles == 0 && !s->r)
        brix_free(s);
}

static void rep_close_timers(lp_rep_t *s)
{
    if (!s->timers_open)
        return;
    s->timers_open = false;
    uv_close((uv_handle_t *)&s->kill_timer, rep_handle_closed);
    uv_close((uv_handle_t *)&s->poll_timer, rep_handle_closed);
}

static lp_rep_t *rep_state(lp_t *lp, brix_replica_t *r)
{
    if (r->prov)
        return r->prov;
    lp_rep_t *s = brix_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->lp = lp;
    s->r = r;
    uv_timer_init(lp->base.loop, &s->kill_timer);
    uv_timer_init(lp->base.loop, &s->poll_timer);
    s->kill_timer.data = s->poll_timer.data = s;
    s->timers_open = true;
    s->open_handles = 2;
    r->prov = s;
    return s;
}

/* The process is gone: tell the controller once. */
static void gone(lp_rep_t *s, const char *why)
{
    if (s->exited)
        return;
    s->exited = true;
    uv_timer_stop(&s->kill_timer);
    uv_timer_stop(&s->poll_timer);
    if (s->r) {
        s->r->pid = 0;
        s->lp->base.on_exit(s->lp->base.ud, s->r, why);
    }
}

static void on_proc_exit(uv_process_t *p, int64_t status, int sig)
{
    lp_rep_t *s = p->data;
    char why[96];
    if (sig)
        snprintf(why, sizeof why, "killed by signal %d (%s)", sig, strsignal(sig));
    else
        snprintf(why, sizeof why, "exited with status %lld", (long long)status);
    s->proc_open = false;
    uv_close((uv_handle_t *)p, rep_handle_closed);
    gone(s, why);
}

static void on_poll(uv_timer_t *t)
{
    lp_rep_t *s = t->data;
    char st = 0;
    uint64_t start = 0;
    if (s->r && s->r->pid > 0 &&
        (proc_stat(s->r->pid, &st, &start) || st == 'Z' || start != s->r->start_ticks))
        gone(s, "process disappeared");
}

static void on_kill_timer(uv_timer_t *t)
{
    lp_rep_t *s = t->data;
    if (s->r && s->r->pid > 0) {
        BRIX_WARN("replica %s (pid %d) did not stop in time; sending SIGKILL", s->r->name,
                  s->r->pid);
        if (kill(-s->r->pid, SIGKILL) != 0)
            kill(s->r->pid, SIGKILL);
    }
}

/* Expands {port} {model} {name} {gpu} {host} {brix} {kvcache} in one
 * template word ({kvcache}: the store members, "" without any). */
static char *expand(const char *tpl, const brix_replica_t *r, const brix_obj_t *d, const char *self,
                    const char *kvcache)
{
    brix_buf_t b = BRIX_BUF_INIT;
    int rc = 0;
    for (const char *p = tpl; *p && !rc;) {
        const char *o = strchr(p, '{');
        const char *c = o ? strchr(o, '}') : NULL;
        if (!o || !c) {
            rc = brix_buf_append_str(&b, p);
            break;
        }
        /* the innermost braces: a placeholder inside a JSON argument
         * ('{"servers":"{kvcache}"}') is still one */
        for (const char *q = o + 1; q < c; q++)
            if (*q == '{')
                o = q;
        rc = brix_buf_append(&b, p, (size_t)(o - p));
        size_t n = (size_t)(c - o - 1);
        const char *val = NULL;
        char port[16];
        snprintf(port, sizeof port, "%d", r->port);
        if (n == 4 && !memcmp(o + 1, "port", 4))
            val = port;
        else if (n == 5 && !memcmp(o + 1, "model", 5))
            val = r->model;
        else if (n == 4 && !memcmp(o + 1, "name", 4))
            val = r->name;
        else if (n == 3 && !memcmp(o + 1, "gpu", 3))
            val = d->d.gpu;
        else if (n == 4 && !memcmp(o + 1, "host", 4))
            val = "127.0.0.1";
        else if (n == 4 && !memcmp(o + 1, "brix", 4))
            val = self;
        else if (n == 7 && !memcmp(o + 1, "kvcache", 7))
            val = kvcache ? kvcache : "";
        if (val) {
            rc |= brix_buf_append_str(&b, val);
        } else {
            rc |= brix_buf_append(&b, o, (size_t)(c - o + 1)); /* not ours: keep as written */
        }
        p = c + 1;
    }
    if (rc) {
        brix_buf_free(&b);
        return NULL;
    }
    return b.data ? b.data : brix_strdup("");
}

static int push_expanded(brix_strlist_t *l, const char *tpl, const brix_replica_t *r,
                         const brix_obj_t *d, const char *self, const char *kvcache)
{
    char *s = expand(tpl, r, d, self, kvcache);
    int rc = s ? brix_strlist_push(l, s) : -ENOMEM;
    brix_free(s);
    return rc;
}

static int build_argv(lp_t *lp, const brix_replica_t *r, const brix_obj_t *d, brix_strlist_t *out)
{
    const brix_deploy_spec_t *ds = &d->d;
    int rc = 0;
    const char *kv = ds->kv_cache && lp->base.kvcache_servers && lp->base.kvcache_servers[0]
                         ? lp->base.kvcache_servers
                         : NULL;
    if (ds->command.n) {
        for (size_t i = 0; i < ds->command.n; i++)
            rc |= push_expanded(out, ds->command.v[i], r, d, lp->self_exe, kv);
    } else {
        char port[16], ml[24], mcl[24];
        snprintf(port, sizeof port, "%d", r->port);
        snprintf(ml, sizeof ml, "%lld", (long long)ds->max_loras);
        snprintf(mcl, sizeof mcl, "%lld", (long long)ds->max_cpu_loras);
        const char *base[] = {
            lp->self_exe, "engine-sim",          "--host", "127.0.0.1", "--port",
            port,         "--served-model-name", r->model, "--gpu",     ds->gpu
        };
        for (size_t i = 0; i < sizeof base / sizeof *base; i++)
            rc |= brix_strlist_push(out, base[i]);
        if (ds->lora) {
            const char *lora[] = { "--enable-lora",   "--max-loras", ml,
                                   "--max-cpu-loras", mcl,           "--lora-path-check" };
            for (size_t i = 0; i < sizeof lora / sizeof *lora; i++)
                rc |= brix_strlist_push(out, lora[i]);
        }
        /* the shared KV store, unless the args configure a connector */
        bool own = false;
        for (size_t i = 0; i < ds->args.n; i++)
            own |= !strncmp(ds->args.v[i], "--kv-transfer-config", 20);
        if (kv && !own) {
            brix_buf_t j = BRIX_BUF_INIT;
            rc |= brix_buf_printf(&j,
                                  "{\"kv_connector\":\"BrixConnector\",\"kv_role\":\"kv_both\","
                                  "\"kv_connector_extra_config\":{\"servers\":\"%s\"",
                                  kv);
            if (lp->base.kvcache_token_file) {
                rc |= brix_buf_append_str(&j, ",\"token_file\":");
                rc |= brix_buf_append_json_str(&j, lp->base.kvcache_token_file,
                                               strlen(lp->base.kvcache_token_file));
            }
            rc |= brix_buf_append_str(&j, "}}");
            rc |= brix_strlist_push(out, "--kv-transfer-config");
            rc |= j.data ? brix_strlist_push(out, j.data) : -ENOMEM;
            brix_buf_free(&j);
        }
    }
    for (size_t i = 0; i < ds->args.n; i++)
        rc |= push_expanded(out, ds->args.v[i], r, d, lp->self_exe, kv);
    return rc ? -ENOMEM : 0;
}

#define ENGINE_KEY_ENV "VLLM_API_KEY" /* what vLLM reads when --api-key is not given */

extern char **environ;

/* The controller's environment for a replica, with VLLM_API_KEY replaced by
 * the engine key (or removed without one: an inherited key the controller
 * does not know would lock it out of its own replicas). The strings belong to
 * environ except *own, the key's (free both with brix_free, cleansing *own).
 * NULL on ENOMEM. */
static char **replica_env(const char *key, char **own)
{
    *own = NULL;
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = brix_calloc(n + 2, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0, pl = strlen(ENGINE_KEY_ENV "=");
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], ENGINE_KEY_ENV "=", pl))
            env[k++] = environ[i];
    if (key) {
        size_t l = pl + strlen(key) + 1;
        if (!(*own = brix_malloc(l))) {
            brix_free(env);
            return NULL;
        }
        snprintf(*own, l, "%s=%s", ENGINE_KEY_ENV, key);
        env[k] = *own;
    }
    return env;
}

static void free_env(char **env, char *own)
{
    if (own) {
        OPENSSL_cleanse(own, strlen(own));
        brix_free(own);
    }
    brix_free(env);
}

static int lp_start(brix_provider_t *p, brix_replica_t *r, const brix_obj_t *d, char *err,
                    size_t errlen)
{
    lp_t *lp = (lp_t *)p;
    lp_rep_t *s = rep_state(lp, r);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (s->proc_open) {
        snprintf(err, errlen, "replica %s still has a process", r->name);
        return -1;
    }
    brix_strlist_free(&r->argv);
    if (build_argv(lp, r, d, &r->argv)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    brix_buf_t path = BRIX_BUF_INIT;
    if (brix_buf_printf(&path, "%s/%s.log", lp->log_dir, r->name)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    brix_free(r->log_path);
    r->log_path = path.data;
    int fd = open(r->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", r->log_path, strerror(errno));
        return -1;
    }
    brix_buf_t head = BRIX_BUF_INIT;
    char ts[32];
    brix_time_iso8601(ts, brix_wall_ms());
    brix_buf_printf(&head, "==== %s brix controller starts %s:", ts, r->name);
    bool pending = false; /* logs are readable by others: no secrets from argv */
    for (size_t i = 0; i < r->argv.n; i++) {
        brix_buf_append_char(&head, ' ');
        brix_auth_redact_str(&head, r->argv.v[i], &pending);
    }
    brix_buf_append_char(&head, '\n');
    if (head.data && write(fd, head.data, head.len) < 0) {
        /* the log is best effort; the replica still starts */
    }
    brix_buf_free(&head);

    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = fd;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = fd;
    char **args = brix_calloc(r->argv.n + 1, sizeof *args);
    if (!args) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < r->argv.n; i++)
        args[i] = r->argv.v[i];
    char *own = NULL;
    char **env = replica_env(p->engine_key, &own);
    if (!env) {
        brix_free(args);
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    uv_process_options_t o;
    memset(&o, 0, sizeof o);
    o.file = args[0];
    o.args = args;
    o.env = env;
    o.exit_cb = on_proc_exit;
    o.flags = UV_PROCESS_DETACHED;
    o.stdio_count = 3;
    o.stdio = stdio;
    s->proc.data = s;
    int rc = uv_spawn(p->loop, &s->proc, &o);
    brix_free(args);
    free_env(env, own);
    close(fd);
    if (rc) {
        /* libuv requires closing the handle even when spawn fails */
        s->open_handles++;
        uv_close((uv_handle_t *)&s->proc, rep_handle_closed);
        snprintf(err, errlen, "cannot run %s: %s", r->argv.v[0], uv_strerror(rc));
        return -1;
    }
    s->proc_open = true;
    s->open_handles++;
    s->exited = false;
    r->pid = s->proc.pid;
    r->adopted = false;
    char st;
    if (proc_stat(r->pid, &st, &r->start_ticks))
        r->start_ticks = 0;
    return 0;
}

static void lp_stop(brix_provider_t *p, brix_replica_t *r, uint64_t grace_ms)
{
    lp_rep_t *s = rep_state((lp_t *)p, r);
    if (!s || r->pid <= 0 || s->exited)
        return;
    if (kill(-r->pid, SIGTERM) != 0)
        kill(r->pid, SIGTERM);
    uv_timer_start(&s->kill_timer, on_kill_timer, grace_ms, 0);
}

static int lp_adopt(brix_provider_t *p, brix_replica_t *r)
{
    lp_t *lp = (lp_t *)p;
    char st = 0;
    uint64_t start = 0;
    if (r->pid <= 0 || !r->argv.n || proc_stat(r->pid, &st, &start) || st == 'Z')
        return -1;
    if (r->start_ticks) {
        /* pid + start time is the process's identity (an engine may rewrite its
         * command line, as vLLM's workers do) */
        if (start != r->start_ticks)
            return -1;
    } else { /* an older state file: fall back to the command line */
        char path[64], buf[8192];
        snprintf(path, sizeof path, "/proc/%d/cmdline", r->pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        ssize_t n = read(fd, buf, sizeof buf);
        close(fd);
        size_t off = 0;
        for (size_t i = 0; i < r->argv.n; i++) {
            size_t l = strlen(r->argv.v[i]) + 1;
            if (n < 0 || off + l > (size_t)n || memcmp(buf + off, r->argv.v[i], l))
                return -1; /* the pid now belongs to something else */
            off += l;
        }
        r->start_ticks = start;
    }
    lp_rep_t *s = rep_state(lp, r);
    if (!s)
        return -1;
    s->exited = false;
    r->adopted = true;
    uv_timer_start(&s->poll_timer, on_poll, 500, 500);
    return 0;
}

static void lp_release(brix_provider_t *p, brix_replica_t *r)
{
    (void)p;
    lp_rep_t *s = r->prov;
    if (!s)
        return;
    r->prov = NULL;
    s->r = NULL;
    rep_close_timers(s);
    if (s->proc_open) { /* closing the handle does not signal the process */
        s->proc_open = false;
        uv_close((uv_handle_t *)&s->proc, rep_handle_closed);
    }
    if (s->open_handles == 0)
        brix_free(s);
}

static void lp_close(brix_provider_t *p)
{
    lp_t *lp = (lp_t *)p;
    brix_free(lp->self_exe);
    brix_free(lp->log_dir);
    brix_free(lp);
}

static const brix_provider_ops_t local_ops = {
    "local", lp_start, lp_stop, lp_adopt, lp_release, lp_close,
};

brix_provider_t *brix_provider_local_new(uv_loop_t *loop, const char *self_exe, const char *log_dir,
                                         brix_provider_exit_fn on_exit, void *ud)
{
    lp_t *lp = brix_calloc(1, sizeof *lp);
    if (!lp)
        return NULL;
    lp->base.ops = &local_ops;
    lp->base.loop = loop;
    lp->base.on_exit = on_exit;
    lp->base.ud = ud;
    lp->self_exe = brix_strdup(self_exe);
    lp->log_dir = brix_strdup(log_dir);
    if (!lp->self_exe || !lp->log_dir) {
        lp_close(&lp->base);
        return NULL;
    }
    return &lp->base;
}
