/*
 * admin — the gateway's user-management API, on the gateway's own port.
 *
 * Enabled only with --admin-key (or BRIX_ADMIN_KEY); every call must carry
 * `Authorization: Bearer <admin key>` (compared in constant time), else 401.
 *
 *   brix REST                               AIBrix metadata service (POST, JSON body)
 *   POST   /admin/users          create     /CreateUser {"name","rpm","tpm"}
 *   GET    /admin/users          list       /ReadUser   {"name"}
 *   GET    /admin/users/NAME     read       /UpdateUser {"name","rpm","tpm"}
 *   PATCH  /admin/users/NAME     update     /DeleteUser {"name"}
 *   DELETE /admin/users/NAME     delete
 *   POST   /admin/users/NAME/rotate-key
 *
 * brix's create and rotate-key answer the user's new API key — the only time
 * it is shown; the store keeps its SHA-256. AIBrix's calls answer
 * {"message", "user"} and apply AIBrix's defaults (rpm 0 or absent -> 100,
 * tpm 0 or absent -> rpm x 1000); CreateUser keeps an existing user as is.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/secret.h"
#include "core/buf.h"
#include "core/json.h"
#include "gateway/gateway.h"

typedef enum { A_BRIX, A_AIBRIX } api_t;

typedef struct admin_req {
    brix_http_req_t *h;
    brix_tn_op_t *op;
    api_t api;
    brix_tn_admin_op_t what;
    char key[64]; /* the new key to show (create, rotate) */
    int ok_status;
} admin_req_t;

static void append_user(brix_buf_t *b, const brix_tn_user_t *u)
{
    brix_buf_append_str(b, "{\"name\":");
    brix_buf_append_json_str(b, u->name, strlen(u->name));
    brix_buf_printf(b, ",\"rpm\":%lld,\"tpm\":%lld,\"models\":[", (long long)u->rpm,
                    (long long)u->tpm);
    const char *p = u->models;
    bool first = true;
    while (*p) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n) {
            if (!first)
                brix_buf_append_char(b, ',');
            brix_buf_append_json_str(b, p, n);
            first = false;
        }
        if (!c)
            break;
        p = c + 1;
    }
    brix_buf_printf(b, "],\"priority\":%lld}", (long long)u->priority);
}

static void respond_json(brix_http_req_t *h, int status, brix_buf_t *b)
{
    brix_http_respond(h, status, "application/json", b->data ? b->data : "", b->len);
    brix_buf_free(b);
}

static void on_abort(brix_http_req_t *h, void *ud)
{
    admin_req_t *a = ud;
    brix_tn_cancel(a->op);
    brix_free(a);
}

static void on_done(void *ud, brix_tn_admin_rc_t rc, const brix_tn_user_t *users, size_t n,
                    const char *detail)
{
    admin_req_t *a = ud;
    brix_http_req_t *h = a->h;
    h->on_abort = NULL;
    h->ud = NULL;
    brix_buf_t b = BRIX_BUF_INIT;
    const char *name = n ? users[0].name : "";
    if (rc == BRIX_TN_ADMIN_FAILED) {
        brix_http_respond_error(h, 503, "overloaded_error", "service_unavailable", NULL,
                                "the user store is unavailable (%s); retry later",
                                detail ? detail : "?");
    } else if (a->api == A_AIBRIX) {
        const char *verb = a->what == BRIX_TN_CREATE_KEEP ? "Created"
                           : a->what == BRIX_TN_UPDATE    ? "Updated"
                           : a->what == BRIX_TN_DELETE    ? "Deleted"
                                                          : "Read";
        int status = 200;
        brix_buf_append_str(&b, "{\"message\":");
        char msg[160];
        if (rc == BRIX_TN_ADMIN_NOT_FOUND) {
            status = 404;
            snprintf(msg, sizeof msg, "User does not exist");
        } else if (rc == BRIX_TN_ADMIN_EXISTS) {
            snprintf(msg, sizeof msg, "User: %s exists", name);
        } else {
            snprintf(msg, sizeof msg, "%s User: %s", verb, name);
        }
        brix_buf_append_json_str(&b, msg, strlen(msg));
        brix_buf_append_str(&b, ",\"user\":");
        if (n)
            append_user(&b, &users[0]);
        else
            brix_buf_append_str(&b, "null");
        brix_buf_append_char(&b, '}');
        respond_json(h, status, &b);
    } else if (rc == BRIX_TN_ADMIN_NOT_FOUND) {
        brix_http_respond_error(h, 404, "invalid_request_error", "user_not_found", NULL,
                                "no such user");
    } else if (rc == BRIX_TN_ADMIN_EXISTS) {
        brix_http_respond_error(h, 409, "invalid_request_error", "user_exists", "name",
                                "the user already exists (PATCH /admin/users/NAME changes it)");
    } else if (a->what == BRIX_TN_LIST) {
        brix_buf_append_str(&b, "{\"object\":\"list\",\"data\":[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                brix_buf_append_char(&b, ',');
            append_user(&b, &users[i]);
        }
        brix_buf_append_str(&b, "]}");
        respond_json(h, 200, &b);
    } else if (!n) {
        brix_http_respond_error(h, 500, "api_error", NULL, NULL, "out of memory");
    } else {
        append_user(&b, &users[0]);
        if (a->key[0]) {
            b.len--; /* reopen the object */
            brix_buf_append_str(&b, ",\"api_key\":");
            brix_buf_append_json_str(&b, a->key, strlen(a->key));
            brix_buf_append_char(&b, '}');
        }
        if (a->what == BRIX_TN_DELETE) {
            b.len--;
            brix_buf_append_str(&b, ",\"deleted\":true}");
        }
        respond_json(h, a->ok_status, &b);
    }
    brix_free(a);
}

/* Reads a user's fields from a JSON body; returns -1 after answering 400.
 * *set gets the fields present. */
static int parse_user(brix_http_req_t *h, const char *path_name, brix_tn_user_t *u, unsigned *set)
{
    memset(u, 0, sizeof *u);
    *set = 0;
    cJSON *j = NULL;
    brix_json_err_t e;
    memset(&e, 0, sizeof e);
    if (h->body.len && brix_json_parse(h->body.data, h->body.len, &j, &e)) {
        brix_http_respond_error(h, 400, "invalid_request_error", "invalid_json", NULL, "%s", e.msg);
        return -1;
    }
    if (j && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        brix_http_respond_error(h, 400, "invalid_request_error", "invalid_request_body", NULL,
                                "the request body must be a JSON object");
        return -1;
    }
    bool present;
    const char *name = NULL;
    int64_t v;
    int rc = 0;
    if (brix_json_get_string(j, "name", &present, &name, &e))
        goto bad;
    if (path_name)
        name = path_name;
    if (!name || !*name) {
        brix_json_errf(&e, "name", "name is required");
        goto bad;
    }
    char err[256];
    if (brix_tn_parse_user(name, u, err, sizeof err) || strchr(name, ':')) {
        brix_json_errf(&e, "name", "%s", strchr(name, ':') ? "a name cannot contain ':'" : err);
        goto bad;
    }
    if (brix_json_get_int(j, "rpm", 0, 1000000000, &present, &v, &e))
        goto bad;
    if (present) {
        u->rpm = v;
        *set |= BRIX_TN_SET_RPM;
    }
    if (brix_json_get_int(j, "tpm", 0, 1000000000000ll, &present, &v, &e))
        goto bad;
    if (present) {
        u->tpm = v;
        *set |= BRIX_TN_SET_TPM;
    }
    if (brix_json_get_int(j, "priority", 0, 1000000, &present, &v, &e))
        goto bad;
    if (present) {
        u->priority = v;
        *set |= BRIX_TN_SET_PRIO;
    }
    const cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "models") : NULL;
    if (m && !cJSON_IsNull(m)) {
        if (!cJSON_IsArray(m)) {
            brix_json_errf(&e, "models", "models must be an array of model names");
            goto bad;
        }
        size_t off = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, m)
        {
            if (!cJSON_IsString(it) || !*it->valuestring || strchr(it->valuestring, ',')) {
                brix_json_errf(&e, "models", "models must be non-empty names without ','");
                goto bad;
            }
            size_t n = strlen(it->valuestring);
            if (off + n + 2 > sizeof u->models) {
                brix_json_errf(&e, "models", "models list too long");
                goto bad;
            }
            if (off)
                u->models[off++] = ',';
            memcpy(u->models + off, it->valuestring, n + 1);
            off += n;
        }
        *set |= BRIX_TN_SET_MODELS;
    }
    cJSON_Delete(j);
    return 0;
bad:
    rc = -1;
    cJSON_Delete(j);
    brix_http_respond_error(h, 400, "invalid_request_error", NULL, e.param[0] ? e.param : NULL,
                            "%s", e.msg);
    return rc;
}

static bool authorized(brix_gw_t *gw, brix_http_req_t *h)
{
    const char *k = brix_http_req_bearer(h);
    if (!k) {
        brix_http_respond_error(h, 401, "invalid_request_error", "invalid_api_key", NULL,
                                "the admin API needs `Authorization: Bearer <admin key>`");
        return false;
    }
    if (!brix_secret_equal(k, gw->fixed.admin_key)) {
        brix_http_respond_error(h, 401, "invalid_request_error", "invalid_api_key", NULL,
                                "incorrect admin key");
        return false;
    }
    return true;
}

static void run(brix_gw_worker_t *w, brix_http_req_t *h, api_t api, brix_tn_admin_op_t what,
                brix_tn_user_t *u, unsigned set, int ok_status)
{
    admin_req_t *a = brix_calloc(1, sizeof *a);
    if (!a) {
        brix_http_respond_error(h, 500, "api_error", NULL, NULL, "out of memory");
        return;
    }
    a->h = h;
    a->api = api;
    a->what = what;
    a->ok_status = ok_status;
    if (what == BRIX_TN_CREATE || what == BRIX_TN_ROTATE) {
        if (brix_tn_new_key(a->key, sizeof a->key)) {
            brix_free(a);
            brix_http_respond_error(h, 500, "api_error", NULL, NULL, "no random bytes for a key");
            return;
        }
        brix_tn_key_hash(a->key, strlen(a->key), u->key_sha256);
    }
    h->ud = a;
    h->on_abort = on_abort;
    /* on_done may run (and free a) before this returns */
    brix_tn_op_t *op = brix_tn_admin(w->tn, what, u, set, on_done, a);
    if (op)
        a->op = op;
}

static void method_not_allowed(brix_http_req_t *h, const char *allow)
{
    brix_http_add_header(h, "allow", allow);
    brix_http_respond_error(h, 405, "invalid_request_error", "method_not_allowed", NULL,
                            "method %s is not allowed on %s", h->method_name, h->path);
}

bool brix_gw_admin_handle(brix_gw_worker_t *w, brix_http_req_t *h)
{
    const char *p = h->path;
    static const char *const aibrix[] = { "/CreateUser", "/ReadUser", "/UpdateUser",
                                          "/DeleteUser" };
    int ai = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(p, aibrix[i]))
            ai = i;
    bool brix = !strcmp(p, "/admin/users") || !strncmp(p, "/admin/users/", 13);
    if (ai < 0 && !brix)
        return false;
    brix_gw_t *gw = w->gw;
    if (!gw->fixed.admin_key || !w->tn) {
        brix_http_respond_error(h, 403, "permission_error", "admin_disabled", NULL,
                                "the admin API is disabled: start the gateway with --admin-key "
                                "KEY or BRIX_ADMIN_KEY");
        return true;
    }
    if (!authorized(gw, h))
        return true;
    brix_tn_user_t u;
    unsigned set;
    if (ai >= 0) {
        if (h->method != HTTP_POST) {
            method_not_allowed(h, "POST");
            return true;
        }
        if (parse_user(h, NULL, &u, &set))
            return true;
        static const brix_tn_admin_op_t ops[] = { BRIX_TN_CREATE_KEEP, BRIX_TN_GET, BRIX_TN_UPDATE,
                                                  BRIX_TN_DELETE };
        if (ai == 0 || ai == 2) {
            /* AIBrix: 0 or absent means the default */
            if (!u.rpm)
                u.rpm = 100;
            if (!u.tpm)
                u.tpm = u.rpm * 1000;
            set |= BRIX_TN_SET_RPM | BRIX_TN_SET_TPM;
        }
        run(w, h, A_AIBRIX, ops[ai], &u, set, 200);
        return true;
    }
    if (!strcmp(p, "/admin/users")) {
        if (h->method == HTTP_GET) {
            memset(&u, 0, sizeof u);
            run(w, h, A_BRIX, BRIX_TN_LIST, &u, 0, 200);
        } else if (h->method == HTTP_POST) {
            if (!parse_user(h, NULL, &u, &set))
                run(w, h, A_BRIX, BRIX_TN_CREATE, &u, set, 201);
        } else {
            method_not_allowed(h, "GET, POST");
        }
        return true;
    }
    char name[BRIX_TN_NAME_MAX];
    const char *rest = p + 13;
    const char *slash = strchr(rest, '/');
    size_t nl = slash ? (size_t)(slash - rest) : strlen(rest);
    if (!nl || nl >= BRIX_TN_NAME_MAX) {
        brix_http_respond_error(h, 404, "invalid_request_error", "not_found", NULL,
                                "no route for %s %s", h->method_name, p);
        return true;
    }
    memcpy(name, rest, nl);
    name[nl] = '\0';
    if (slash) {
        if (strcmp(slash, "/rotate-key")) {
            brix_http_respond_error(h, 404, "invalid_request_error", "not_found", NULL,
                                    "no route for %s %s", h->method_name, p);
        } else if (h->method != HTTP_POST) {
            method_not_allowed(h, "POST");
        } else {
            memset(&u, 0, sizeof u);
            snprintf(u.name, sizeof u.name, "%s", name);
            run(w, h, A_BRIX, BRIX_TN_ROTATE, &u, 0, 200);
        }
        return true;
    }
    if (h->method == HTTP_GET || h->method == HTTP_DELETE) {
        memset(&u, 0, sizeof u);
        snprintf(u.name, sizeof u.name, "%s", name);
        run(w, h, A_BRIX, h->method == HTTP_GET ? BRIX_TN_GET : BRIX_TN_DELETE, &u, 0, 200);
    } else if (h->method == HTTP_PATCH) {
        if (!parse_user(h, name, &u, &set)) {
            if (!set)
                brix_http_respond_error(h, 400, "invalid_request_error", NULL, NULL,
                                        "nothing to change: send rpm, tpm, models or priority");
            else
                run(w, h, A_BRIX, BRIX_TN_UPDATE, &u, set, 200);
        }
    } else {
        method_not_allowed(h, "GET, PATCH, DELETE");
    }
    return true;
}
