/*
 * tenancy — the gateway's tenant settings (from flags and the config file)
 * and bounded per-user metric labels.
 */
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "gateway/gateway.h"

int brix_gw_tenant_cfg(const brix_gw_cfg_t *c, brix_tn_cfg_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->enabled =
        c->redis_url || c->users.n || c->require_key || c->admin_key || c->default_rpm >= 0;
    out->require_key = c->require_key;
    out->default_rpm = c->default_rpm;
    out->default_tpm = c->default_rpm >= 0 ? c->default_tpm : 0;
    out->max_implicit = c->max_implicit_users;
    out->redis_timeout_ms = c->redis_timeout;
    if (strcmp(c->redis_failure, "open") && strcmp(c->redis_failure, "closed")) {
        snprintf(err, errlen, "redis-failure: expected open or closed, got '%s'", c->redis_failure);
        return -1;
    }
    out->fail_open = !strcmp(c->redis_failure, "open");
    if (c->redis_url && brix_tn_parse_redis_url(c->redis_url, out, err, errlen)) {
        brix_tn_cfg_free(out);
        return -1;
    }
    if (c->redis_password) {
        brix_free(out->redis_password);
        out->redis_password = brix_strdup(c->redis_password);
    }
    out->prefix = brix_strdup(c->redis_prefix ? c->redis_prefix : "brix:");
    if (c->users.n) {
        out->users = brix_calloc(c->users.n, sizeof *out->users);
        if (!out->users) {
            brix_tn_cfg_free(out);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    for (size_t i = 0; i < c->users.n; i++) {
        char e[256];
        if (brix_tn_parse_user(c->users.v[i], &out->users[out->nusers], e, sizeof e)) {
            snprintf(err, errlen, "user: %s", e);
            brix_tn_cfg_free(out);
            return -1;
        }
        for (size_t k = 0; k < out->nusers; k++) {
            if (!strcmp(out->users[k].name, out->users[out->nusers].name)) {
                snprintf(err, errlen, "user: '%s' is configured twice", out->users[k].name);
                brix_tn_cfg_free(out);
                return -1;
            }
        }
        out->nusers++;
    }
    return 0;
}

const char *brix_gw_user_label(brix_gw_t *gw, const char *user)
{
    if (!user || !*user)
        return "";
    const char *label = "other";
    uv_mutex_lock(&gw->label_mu);
    for (size_t i = 0; i < gw->nlabel_users; i++) {
        if (!strcmp(gw->label_users[i], user)) {
            label = gw->label_users[i];
            goto out;
        }
    }
    if ((int64_t)gw->nlabel_users < gw->fixed.tenant_metrics_max) {
        char **nl = brix_realloc(gw->label_users, (gw->nlabel_users + 1) * sizeof *nl);
        if (nl) {
            gw->label_users = nl;
            char *d = brix_strdup(user);
            if (d) {
                nl[gw->nlabel_users++] = d;
                label = d;
            }
        }
    }
out:
    uv_mutex_unlock(&gw->label_mu);
    return label;
}
