/*
 * Request parsing on top of http_parser. Callbacks append into growable
 * buffers owned by the parser (never pointers into the input), so partial
 * input of any granularity is handled; on headers-complete the URL and
 * headers are copied into the request arena in one pass.
 */
#include "core/http.h"

#include <string.h>
#include <strings.h>

void brix_http_limits_default(brix_http_limits_t *l)
{
    l->max_header_bytes = 64 * 1024;
    l->max_body_bytes = 32 * 1024 * 1024;
    l->header_timeout_ms = 30000;
    l->body_timeout_ms = 60000;
    l->idle_timeout_ms = 75000;
    l->max_connections = 10000;
    l->write_timeout_ms = 30000;
    l->max_conns_per_ip = 0;
    l->max_buffered_bytes = 1024ull * 1024 * 1024;
}

static brix_http_reqparser_t *RP(http_parser *p)
{
    return (brix_http_reqparser_t *)p->data;
}

static int fail(brix_http_reqparser_t *rp, int status, const char *msg)
{
    rp->err_status = status;
    rp->err_msg = msg;
    return -1;
}

static int on_message_begin(http_parser *p)
{
    RP(p)->started = true;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    brix_http_reqparser_t *rp = RP(p);
    return brix_buf_append(&rp->url, at, len) ? fail(rp, 500, "out of memory") : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    brix_http_reqparser_t *rp = RP(p);
    if (rp->last_cb == 2 || rp->last_cb == 0) {
        /* A new header: close the previous value. */
        if (rp->last_cb == 2 && brix_buf_append_char(&rp->hdr, '\0'))
            return fail(rp, 500, "out of memory");
        rp->nhdr++;
    }
    rp->last_cb = 1;
    return brix_buf_append(&rp->hdr, at, len) ? fail(rp, 500, "out of memory") : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    brix_http_reqparser_t *rp = RP(p);
    if (rp->last_cb == 1 && brix_buf_append_char(&rp->hdr, '\0'))
        return fail(rp, 500, "out of memory");
    rp->last_cb = 2;
    return brix_buf_append(&rp->hdr, at, len) ? fail(rp, 500, "out of memory") : 0;
}

static int on_headers_complete(http_parser *p)
{
    brix_http_reqparser_t *rp = RP(p);
    brix_http_req_t *req = rp->req;
    if (rp->last_cb == 1 && brix_buf_append_char(&rp->hdr, '\0'))
        return fail(rp, 500, "out of memory");
    if (rp->last_cb && brix_buf_append_char(&rp->hdr, '\0'))
        return fail(rp, 500, "out of memory");
    if (p->upgrade || p->method == HTTP_CONNECT)
        return fail(rp, 501, "protocol upgrades and CONNECT are not supported");
    /* Debian's http_parser is built without HTTP_PARSER_STRICT and accepts
     * any letters where "HTTP" belongs; check the version token ourselves. */
    {
        const char *t = rp->line_tail;
        size_t n = strlen(t);
        while (n && (t[n - 1] == '\r' || t[n - 1] == '\n'))
            n--;
        if (n < 8 || memcmp(t + n - 8, "HTTP/", 5) || t[n - 3] < '0' || t[n - 3] > '9' ||
            t[n - 2] != '.' || t[n - 1] < '0' || t[n - 1] > '9' || (n > 8 && t[n - 9] != ' '))
            return fail(rp, 400, "malformed request line: expected HTTP/x.y");
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > rp->lim->max_body_bytes)
        return fail(rp, 413, "request body too large");

    req->method = (enum http_method)p->method;
    req->method_name = http_method_str((enum http_method)p->method);
    req->http_major = p->http_major;
    req->http_minor = p->http_minor;
    req->keep_alive = http_should_keep_alive(p) != 0;

    req->url = brix_arena_strndup(&req->arena, rp->url.data ? rp->url.data : "", rp->url.len);
    char *hcopy = rp->hdr.len ? brix_arena_alloc(&req->arena, rp->hdr.len) : NULL;
    req->headers = rp->nhdr ? brix_arena_alloc(&req->arena, rp->nhdr * sizeof *req->headers) : NULL;
    if (!req->url || (rp->hdr.len && !hcopy) || (rp->nhdr && !req->headers))
        return fail(rp, 500, "out of memory");
    char *q = strchr(req->url, '?');
    if (q) {
        req->path = brix_arena_strndup(&req->arena, req->url, (size_t)(q - req->url));
        req->query = q + 1;
    } else {
        req->path = req->url;
        req->query = "";
    }
    if (!req->path)
        return fail(rp, 500, "out of memory");
    if (rp->hdr.len)
        memcpy(hcopy, rp->hdr.data, rp->hdr.len);
    char *c = hcopy;
    for (size_t i = 0; i < rp->nhdr; i++) {
        brix_http_header_t *h = &req->headers[i];
        h->name = c;
        h->name_len = strlen(c);
        c += h->name_len + 1;
        h->value = c;
        h->value_len = strlen(c);
        c += h->value_len + 1;
    }
    req->nheaders = rp->nhdr;
    const char *ex = brix_http_req_header(req, "expect");
    req->expect_continue = ex && !strcasecmp(ex, "100-continue");
    rp->headers_done = true;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    brix_http_reqparser_t *rp = RP(p);
    brix_http_req_t *req = rp->req;
    if (req->body.len + len > rp->lim->max_body_bytes)
        return fail(rp, 413, "request body too large");
    return brix_buf_append(&req->body, at, len) ? fail(rp, 500, "out of memory") : 0;
}

static int on_message_complete(http_parser *p)
{
    brix_http_reqparser_t *rp = RP(p);
    rp->done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void brix_http_reqparser_init(brix_http_reqparser_t *rp, const brix_http_limits_t *lim)
{
    memset(rp, 0, sizeof *rp);
    rp->lim = lim;
}

void brix_http_reqparser_begin(brix_http_reqparser_t *rp, brix_http_req_t *req)
{
    http_parser_init(&rp->p, HTTP_REQUEST);
    rp->p.data = rp;
    rp->req = req;
    rp->header_bytes = 0;
    rp->last_cb = 0;
    brix_buf_reset(&rp->url);
    brix_buf_reset(&rp->hdr);
    rp->nhdr = 0;
    rp->started = rp->headers_done = rp->done = false;
    rp->line_len = 0;
    rp->line_tail[0] = '\0';
    rp->err_status = 0;
    rp->err_msg = NULL;
}

bool brix_http_reqparser_started(const brix_http_reqparser_t *rp)
{
    return rp->started;
}

/* Keeps the last bytes of the request line (blank lines before a request
 * are skipped, as http_parser does) for the version check. */
static void line_track(brix_http_reqparser_t *rp, const char *d, size_t n)
{
    if (rp->line_len == SIZE_MAX)
        return;
    size_t i = 0;
    if (rp->line_len == 0) {
        while (i < n && (d[i] == '\r' || d[i] == '\n'))
            i++;
        if (i == n)
            return;
    }
    const char *lf = memchr(d + i, '\n', n - i);
    size_t end = lf ? (size_t)(lf - d) : n;
    /* keep the last (cap) bytes of the line seen so far */
    const size_t cap = sizeof rp->line_tail - 1;
    size_t add = end - i;
    size_t have = rp->line_len < cap ? rp->line_len : cap;
    if (add >= cap) {
        memcpy(rp->line_tail, d + end - cap, cap);
        have = cap;
    } else {
        size_t keep = have + add > cap ? cap - add : have;
        memmove(rp->line_tail, rp->line_tail + have - keep, keep);
        memcpy(rp->line_tail + keep, d + i, add);
        have = keep + add;
    }
    rp->line_tail[have] = '\0';
    rp->line_len = lf ? SIZE_MAX : rp->line_len + add;
}

brix_http_parse_rc_t brix_http_reqparser_feed(brix_http_reqparser_t *rp, const char *data,
                                              size_t len, size_t *consumed)
{
    *consumed = 0;
    if (rp->done)
        return BRIX_HTTP_PARSE_DONE;
    if (rp->err_status)
        return BRIX_HTTP_PARSE_ERROR;
    size_t off = 0;
    while (off < len) {
        /* While the header block is arriving, never hand http_parser more
         * than the header limit allows: the raw bytes of the request line
         * and headers are counted, so the verdict (431, or 400 for a bad
         * byte within the limit) is the same however the input is split. */
        size_t n = len - off;
        bool limited = false;
        if (!rp->headers_done) {
            uint64_t room = rp->lim->max_header_bytes - rp->header_bytes;
            if (n > room) {
                n = (size_t)room;
                limited = true;
            }
        }
        line_track(rp, data + off, n);
        size_t got = n ? http_parser_execute(&rp->p, &settings, data + off, n) : 0;
        if (!rp->headers_done)
            rp->header_bytes += got;
        off += got;
        *consumed = off;
        enum http_errno e = HTTP_PARSER_ERRNO(&rp->p);
        if (rp->done) {
            /* Paused right after the message; it stays paused so a second
             * feed without begin() does not run into the next one. */
            return BRIX_HTTP_PARSE_DONE;
        }
        if (e != HPE_OK) {
            if (!rp->err_status) {
                if (e == HPE_HEADER_OVERFLOW) {
                    fail(rp, 431, "request header fields too large");
                } else if (e == HPE_INVALID_METHOD) {
                    fail(rp, 400, "malformed request: invalid method");
                } else {
                    rp->err_status = 400;
                    rp->err_msg = http_errno_description(e);
                }
            }
            return BRIX_HTTP_PARSE_ERROR;
        }
        if (rp->err_status)
            return BRIX_HTTP_PARSE_ERROR;
        if (limited && !rp->headers_done) {
            fail(rp, 431, "request header fields too large");
            return BRIX_HTTP_PARSE_ERROR;
        }
        if (!limited)
            break;
    }
    return BRIX_HTTP_PARSE_MORE;
}

void brix_http_reqparser_free(brix_http_reqparser_t *rp)
{
    brix_buf_free(&rp->url);
    brix_buf_free(&rp->hdr);
}

const char *brix_http_req_header(const brix_http_req_t *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        if (req->headers[i].name_len == n && !strncasecmp(req->headers[i].name, name, n))
            return req->headers[i].value;
    }
    return NULL;
}

const char *brix_http_req_bearer(const brix_http_req_t *req)
{
    const char *auth = brix_http_req_header(req, "authorization");
    if (!auth || strncasecmp(auth, "bearer ", 7))
        return NULL;
    auth += 7;
    while (*auth == ' ')
        auth++;
    return auth;
}

const char *brix_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 300 ? "OK" : status < 500 ? "Bad Request" : "Error";
    }
}
