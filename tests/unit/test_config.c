/*
 * Unit tests for the declarative option table (core/config.h) and the YAML
 * tree it reads files through (core/yaml.h): defaults, every command-line
 * form, nargs='+' lists, error texts, size and duration suffixes, YAML keys
 * with '-' or '_', YAML errors with file:line:col, usage text, and that
 * brix_config_free / brix_yaml_free release everything.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/config.h"
#include "core/yaml.h"

#include "leak_check.h"

/* ------------------------------------------------------------- table -- */

typedef struct tcfg {
    bool enable_thing;
    bool verbose;
    int64_t max_num_seqs;
    int64_t port;
    double ratio;
    char *served_model_name;
    char *config;
    brix_strlist_t lora_modules;
    brix_strlist_t stop;
    uint64_t max_body;
    uint64_t timeout;
} tcfg_t;

#define O(name, type, field, def, lo, hi, help)                                                    \
    {                                                                                              \
        name, type, offsetof(tcfg_t, field), def, lo, hi, NULL, help                               \
    }

static const brix_opt_t tbl[] = {
    O("enable-thing", BRIX_OPT_BOOL, enable_thing, "false", 0, -1, "enable the thing"),
    O("verbose", BRIX_OPT_BOOL, verbose, "true", 0, -1, "log more"),
    O("max-num-seqs", BRIX_OPT_INT, max_num_seqs, "256", 1, 65536, "sequences per step"),
    O("port", BRIX_OPT_INT, port, "8000", 1, 65535, "TCP port"),
    O("ratio", BRIX_OPT_DOUBLE, ratio, "0.9", 0, 1, "a fraction"),
    O("served-model-name", BRIX_OPT_STRING, served_model_name, "llama", 0, -1, "model name"),
    O("config", BRIX_OPT_STRING, config, NULL, 0, -1, "YAML file"),
    O("lora-modules", BRIX_OPT_STRLIST, lora_modules, NULL, 0, -1, "NAME=PATH adapters"),
    O("stop", BRIX_OPT_STRLIST, stop, "a", 0, -1, "stop strings"),
    O("max-body", BRIX_OPT_SIZE, max_body, "32m", 1, 1e12, "largest request body"),
    O("timeout", BRIX_OPT_DURATION, timeout, "30s", 0, -1, "request timeout"),
    BRIX_OPT_END,
};

static void cfg_init(tcfg_t *c)
{
    char err[256] = "";
    memset(c, 0, sizeof *c);
    if (brix_config_defaults(tbl, c, err, sizeof err))
        fail_msg("defaults: %s", err);
}

/* Parses a NULL-terminated argument list (argv[0] is the program). */
static int parse(tcfg_t *c, char *err, size_t errlen, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, errlen);
    argv[argc++] = "brix";
    for (char *a; (a = va_arg(ap, char *)) != NULL;) {
        assert_true(argc < 31);
        argv[argc++] = a;
    }
    va_end(ap);
    argv[argc] = NULL;
    err[0] = '\0';
    return brix_config_parse_args(tbl, c, argc, argv, 1, err, errlen);
}

#define PARSE_OK(c, ...)                                                                           \
    do {                                                                                           \
        char e_[256];                                                                              \
        if (parse(c, e_, sizeof e_, __VA_ARGS__, (char *)NULL) != 0)                               \
            fail_msg("parse failed: %s", e_);                                                      \
    } while (0)

#define PARSE_ERR(c, want, ...)                                                                    \
    do {                                                                                           \
        char e_[256];                                                                              \
        assert_int_equal(parse(c, e_, sizeof e_, __VA_ARGS__, (char *)NULL), -1);                  \
        if (strcmp(e_, want))                                                                      \
            fail_msg("error text \"%s\", want \"%s\"", e_, want);                                  \
    } while (0)

/* ----------------------------------------------------------- defaults -- */

static void test_defaults(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    assert_false(c.enable_thing);
    assert_true(c.verbose);
    assert_int_equal(c.max_num_seqs, 256);
    assert_int_equal(c.port, 8000);
    assert_true(c.ratio == 0.9);
    assert_string_equal(c.served_model_name, "llama");
    assert_null(c.config);
    assert_int_equal(c.lora_modules.n, 0);
    assert_int_equal(c.stop.n, 1);
    assert_string_equal(c.stop.v[0], "a");
    assert_int_equal(c.max_body, 32u << 20);
    assert_int_equal(c.timeout, 30000);
    brix_config_free(tbl, &c);
    assert_null(c.served_model_name);
    assert_int_equal(c.stop.n, 0);
    assert_null(c.stop.v);

    /* A bad default is reported (it is a bug in the table). */
    static const brix_opt_t bad[] = {
        O("port", BRIX_OPT_INT, port, "99999", 1, 65535, "TCP port"),
        BRIX_OPT_END,
    };
    char err[256];
    memset(&c, 0, sizeof c);
    assert_int_equal(brix_config_defaults(bad, &c, err, sizeof err), -1);
    assert_string_equal(err, "port: 99999 is out of range [1, 65535]");
}

/* --------------------------------------------------------------- CLI -- */

static void test_cli_value_forms(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    PARSE_OK(&c, "--port", "9000", "--max-num-seqs=7", "--served-model-name", "m1", "--ratio=0.5",
             "--max-body", "64k", "--timeout=500ms");
    assert_int_equal(c.port, 9000);
    assert_int_equal(c.max_num_seqs, 7);
    assert_string_equal(c.served_model_name, "m1");
    assert_true(c.ratio == 0.5);
    assert_int_equal(c.max_body, 65536);
    assert_int_equal(c.timeout, 500);
    /* Underscores are accepted for dashes, and the last value wins. */
    PARSE_OK(&c, "--max_num_seqs", "8", "--served_model_name=m2", "--served-model-name=m3");
    assert_int_equal(c.max_num_seqs, 8);
    assert_string_equal(c.served_model_name, "m3");
    /* A value may contain '=' and may be empty. */
    PARSE_OK(&c, "--served-model-name=a=b");
    assert_string_equal(c.served_model_name, "a=b");
    PARSE_OK(&c, "--served-model-name=");
    assert_string_equal(c.served_model_name, "");
    /* A value that looks like a flag is still the value of a scalar option. */
    PARSE_OK(&c, "--served-model-name", "--port");
    assert_string_equal(c.served_model_name, "--port");
    /* No arguments: nothing changes. */
    PARSE_OK(&c, (char *)NULL);
    assert_int_equal(c.port, 9000);
    brix_config_free(tbl, &c);
}

static void test_cli_bool_forms(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    PARSE_OK(&c, "--enable-thing");
    assert_true(c.enable_thing);
    PARSE_OK(&c, "--no-enable-thing");
    assert_false(c.enable_thing);
    PARSE_OK(&c, "--enable-thing=true");
    assert_true(c.enable_thing);
    PARSE_OK(&c, "--enable-thing=false");
    assert_false(c.enable_thing);
    /* A bare flag followed by an explicit value takes it. */
    PARSE_OK(&c, "--enable-thing", "true", "--port", "1");
    assert_true(c.enable_thing);
    assert_int_equal(c.port, 1);
    PARSE_OK(&c, "--enable-thing", "false");
    assert_false(c.enable_thing);
    PARSE_OK(&c, "--verbose", "no", "--enable-thing", "yes");
    assert_false(c.verbose);
    assert_true(c.enable_thing);
    PARSE_OK(&c, "--verbose", "ON", "--enable-thing", "0");
    assert_true(c.verbose);
    assert_false(c.enable_thing);
    /* A bare flag followed by another flag. */
    PARSE_OK(&c, "--enable-thing", "--no-verbose");
    assert_true(c.enable_thing);
    assert_false(c.verbose);
    /* Underscores work with --no- too. */
    PARSE_OK(&c, "--no-enable_thing");
    assert_false(c.enable_thing);
    /* Bad values. */
    PARSE_ERR(&c, "enable-thing: expected true or false, got 'maybe'", "--enable-thing=maybe");
    PARSE_ERR(&c, "--no-verbose takes no value", "--no-verbose=true");
    /* A bare bool followed by a non-boolean word leaves it as a positional. */
    PARSE_ERR(&c, "unexpected argument 'maybe'", "--enable-thing", "maybe");
    /* --no- exists only for booleans. */
    PARSE_ERR(&c, "unknown option '--no-port' (see --help)", "--no-port");
    brix_config_free(tbl, &c);
}

static void test_cli_strlist(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    PARSE_OK(&c, "--lora-modules", "sql=/a", "chat=/b", "x=-y", "--port", "9");
    assert_int_equal(c.lora_modules.n, 3);
    assert_string_equal(c.lora_modules.v[0], "sql=/a");
    assert_string_equal(c.lora_modules.v[1], "chat=/b");
    assert_string_equal(c.lora_modules.v[2], "x=-y");
    assert_int_equal(c.port, 9);
    /* Given again, the list is replaced (argparse nargs='+'). */
    PARSE_OK(&c, "--lora-modules", "only=/c");
    assert_int_equal(c.lora_modules.n, 1);
    assert_string_equal(c.lora_modules.v[0], "only=/c");
    /* Values that start with a single '-' are values. */
    PARSE_OK(&c, "--stop", "-", "-x", "--enable-thing");
    assert_int_equal(c.stop.n, 2);
    assert_string_equal(c.stop.v[0], "-");
    assert_string_equal(c.stop.v[1], "-x");
    assert_true(c.enable_thing);
    /* --name=value gives exactly one value. */
    PARSE_OK(&c, "--stop=one");
    assert_int_equal(c.stop.n, 1);
    assert_string_equal(c.stop.v[0], "one");
    PARSE_ERR(&c, "unexpected argument 'two'", "--stop=one", "two");
    /* "" clears. */
    PARSE_OK(&c, "--stop", "");
    assert_int_equal(c.stop.n, 0);
    PARSE_ERR(&c, "--lora-modules needs a value", "--lora-modules");
    brix_config_free(tbl, &c);
}

static void test_cli_errors(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    PARSE_ERR(&c, "unknown option '--bogus' (see --help)", "--bogus");
    PARSE_ERR(&c, "unknown option '--bogus' (see --help)", "--bogus=1");
    PARSE_ERR(&c, "unknown option '--portx' (see --help)", "--portx", "1");
    PARSE_ERR(&c, "unexpected argument 'positional'", "positional");
    PARSE_ERR(&c, "unexpected argument '-p'", "-p", "1");
    PARSE_ERR(&c, "unexpected argument '--'", "--");
    PARSE_ERR(&c, "--port needs a value", "--port");
    PARSE_ERR(&c, "port: 70000 is out of range [1, 65535]", "--port", "70000");
    PARSE_ERR(&c, "port: 0 is out of range [1, 65535]", "--port=0");
    PARSE_ERR(&c, "port: expected an integer, got '12x'", "--port", "12x");
    PARSE_ERR(&c, "port: expected an integer, got ''", "--port=");
    PARSE_ERR(&c, "ratio: 1.5 is out of range [0, 1]", "--ratio", "1.5");
    PARSE_ERR(&c, "ratio: -0.1 is out of range [0, 1]", "--ratio=-0.1");
    PARSE_ERR(&c, "ratio: expected a number, got 'half'", "--ratio", "half");
    PARSE_ERR(&c, "ratio: expected a number, got 'nan'", "--ratio", "nan");
    PARSE_ERR(&c, "max-body: expected a size like 64k, 16m, 1g, got '12q'", "--max-body", "12q");
    PARSE_ERR(&c, "max-body: 0 is out of range [1, 1e+12]", "--max-body", "0");
    PARSE_ERR(&c, "timeout: expected a duration like 500ms, 30s, 5m, got '5x'", "--timeout", "5x");
    PARSE_ERR(&c, "timeout: expected a duration like 500ms, 30s, 5m, got '-1s'", "--timeout",
              "-1s");
    /* Values before the error were applied; the rest were not. */
    PARSE_ERR(&c, "unknown option '--bogus' (see --help)", "--port", "1234", "--bogus", "--port",
              "4321");
    assert_int_equal(c.port, 1234);
    /* --help / -h anywhere. */
    char err[256];
    assert_int_equal(parse(&c, err, sizeof err, "--port", "1", "--help", (char *)NULL), 1);
    assert_int_equal(parse(&c, err, sizeof err, "-h", (char *)NULL), 1);
    brix_config_free(tbl, &c);
}

static void test_config_set(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    char err[256];
    assert_int_equal(brix_config_set(tbl, &c, "max_num_seqs", "12", err, sizeof err), 0);
    assert_int_equal(c.max_num_seqs, 12);
    assert_int_equal(brix_config_set(tbl, &c, "lora-modules", "a=/b", err, sizeof err), 0);
    assert_int_equal(c.lora_modules.n, 1);
    assert_int_equal(brix_config_set(tbl, &c, "nope", "1", err, sizeof err), -1);
    assert_string_equal(err, "unknown option 'nope'");
    assert_int_equal(brix_config_set(tbl, &c, "port", "65536", err, sizeof err), -1);
    assert_string_equal(err, "port: 65536 is out of range [1, 65535]");
    brix_config_free(tbl, &c);
}

/* ------------------------------------------------- sizes and durations -- */

static void test_size_suffixes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        uint64_t want;
    } ok[] = {
        { "0", 0 },
        { "100", 100 },
        { "100b", 100 },
        { "64k", 64 * 1024 },
        { "64K", 64 * 1024 },
        { "64kb", 64 * 1024 },
        { "64KiB", 64 * 1024 },
        { "16m", 16u << 20 },
        { "16MB", 16u << 20 },
        { "16mib", 16u << 20 },
        { "1g", 1u << 30 },
        { "2GiB", 2ull << 30 },
        { "1.5k", 1536 },
        { "0.5m", 512 * 1024 },
        { "3 MB", 3u << 20 },
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        uint64_t v = 12345;
        if (brix_parse_size(ok[i].in, &v) != 0 || v != ok[i].want)
            fail_msg("size '%s': got %llu, want %llu", ok[i].in, (unsigned long long)v,
                     (unsigned long long)ok[i].want);
    }
    static const char *const bad[] = { "",      "k",     "-1",  "-1k", "12q", "1kk",
                                       "1 k b", "1e30g", "inf", "nan", "1t" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t v = 777;
        if (brix_parse_size(bad[i], &v) == 0)
            fail_msg("size '%s' accepted as %llu", bad[i], (unsigned long long)v);
        assert_int_equal(v, 777);
    }
}

static void test_duration_suffixes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        uint64_t want;
    } ok[] = {
        { "0", 0 },          { "250", 250 },    { "250ms", 250 }, { "30s", 30000 },
        { "30S", 30000 },    { "1.5s", 1500 },  { "5m", 300000 }, { "2h", 7200000 },
        { "0.5h", 1800000 }, { "10 s", 10000 },
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        uint64_t v = 12345;
        if (brix_parse_duration_ms(ok[i].in, &v) != 0 || v != ok[i].want)
            fail_msg("duration '%s': got %llu, want %llu", ok[i].in, (unsigned long long)v,
                     (unsigned long long)ok[i].want);
    }
    static const char *const bad[] = { "", "s", "-1", "-5s", "5x", "5sec", "5 m s", "1d" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t v = 777;
        if (brix_parse_duration_ms(bad[i], &v) == 0)
            fail_msg("duration '%s' accepted as %llu", bad[i], (unsigned long long)v);
    }
}

static void test_parse_bool(void **state)
{
    (void)state;
    static const char *const t[] = { "true", "TRUE", "True", "yes", "on", "1" };
    static const char *const f[] = { "false", "FALSE", "no", "off", "0" };
    static const char *const bad[] = { "", "2", "tru", "y", "n", "truee" };
    bool b;
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        b = false;
        assert_int_equal(brix_parse_bool(t[i], &b), 0);
        assert_true(b);
    }
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        b = true;
        assert_int_equal(brix_parse_bool(f[i], &b), 0);
        assert_false(b);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(brix_parse_bool(bad[i], &b), -1);
}

/* -------------------------------------------------------------- YAML -- */

/* Parses text as "cfg.yaml" and applies it; returns the rc and fills err. */
static int apply_yaml(tcfg_t *c, const char *text, char *err, size_t errlen)
{
    brix_yaml_node_t *root = NULL;
    err[0] = '\0';
    if (brix_yaml_parse("cfg.yaml", text, strlen(text), &root, err, errlen))
        return -2;
    assert_non_null(root);
    int rc = brix_config_apply_yaml(tbl, c, "cfg.yaml", root, err, errlen);
    brix_yaml_free(root);
    return rc;
}

static void test_yaml_apply(void **state)
{
    (void)state;
    tcfg_t c;
    cfg_init(&c);
    char err[256];
    const char *y = "# a comment\n"
                    "max-num-seqs: 7\n"
                    "served_model_name: \"my model\"\n"
                    "enable_thing: yes\n"
                    "verbose: false\n"
                    "max-body: 1m\n"
                    "timeout: 2s\n"
                    "ratio: 0.25\n"
                    "lora-modules:\n"
                    "  - sql=/a\n"
                    "  - chat=/b\n"
                    "stop: [x, \"y z\"]\n";
    if (apply_yaml(&c, y, err, sizeof err))
        fail_msg("apply: %s", err);
    assert_int_equal(c.max_num_seqs, 7);
    assert_string_equal(c.served_model_name, "my model");
    assert_true(c.enable_thing);
    assert_false(c.verbose);
    assert_int_equal(c.max_body, 1u << 20);
    assert_int_equal(c.timeout, 2000);
    assert_true(c.ratio == 0.25);
    assert_int_equal(c.lora_modules.n, 2);
    assert_string_equal(c.lora_modules.v[0], "sql=/a");
    assert_string_equal(c.lora_modules.v[1], "chat=/b");
    assert_int_equal(c.stop.n, 2);
    assert_string_equal(c.stop.v[1], "y z");
    /* A scalar for a list makes a one-item list; [] empties it. */
    assert_int_equal(apply_yaml(&c, "lora-modules: one=/x\nstop: []\n", err, sizeof err), 0);
    assert_int_equal(c.lora_modules.n, 1);
    assert_string_equal(c.lora_modules.v[0], "one=/x");
    assert_int_equal(c.stop.n, 0);
    /* A null value (`key:` or `~`) means the default, never the text "~". */
    assert_int_equal(apply_yaml(&c,
                                "served-model-name: ~\nconfig: null\nlora-modules:\n"
                                "stop: ~\nport: ~\n",
                                err, sizeof err),
                     0);
    assert_string_equal(c.served_model_name, "llama");
    assert_null(c.config);
    assert_int_equal(c.lora_modules.n, 0);
    assert_int_equal(c.stop.n, 1);
    assert_string_equal(c.stop.v[0], "a");
    assert_int_equal(c.port, 8000);
    /* quoted, it is a string */
    assert_int_equal(apply_yaml(&c, "served-model-name: \"~\"\n", err, sizeof err), 0);
    assert_string_equal(c.served_model_name, "~");
    /* An empty document changes nothing. */
    assert_int_equal(apply_yaml(&c, "", err, sizeof err), 0);
    assert_int_equal(apply_yaml(&c, "# only a comment\n", err, sizeof err), 0);
    assert_int_equal(c.max_num_seqs, 7);
    brix_config_free(tbl, &c);
}

static void expect_yaml_err(const char *text, int rc_want, const char *want)
{
    tcfg_t c;
    cfg_init(&c);
    char err[256];
    int rc = apply_yaml(&c, text, err, sizeof err);
    brix_config_free(tbl, &c);
    if (rc != rc_want)
        fail_msg("yaml \"%s\": rc %d, want %d (err \"%s\")", text, rc, rc_want, err);
    if (strcmp(err, want))
        fail_msg("yaml \"%s\": error \"%s\", want \"%s\"", text, err, want);
}

static void test_yaml_errors(void **state)
{
    (void)state;
    expect_yaml_err("port: 1\n\nbogus: 2\n", -1, "cfg.yaml:3:1: unknown option 'bogus'");
    expect_yaml_err("{port: 1,  max_num-seqz: 2}\n", -1,
                    "cfg.yaml:1:12: unknown option 'max_num-seqz'");
    expect_yaml_err("port: 1\nmax-num-seqs: [1, 2]\n", -1,
                    "cfg.yaml:2:15: max-num-seqs takes a single value, not a list");
    expect_yaml_err("port:\n  - 1\n", -1, "cfg.yaml:2:3: port takes a single value, not a list");
    expect_yaml_err("port:\n  a: 1\n", -1, "cfg.yaml:2:3: port: expected a value, not a mapping");
    expect_yaml_err("served-model-name: {a: 1}\n", -1,
                    "cfg.yaml:1:20: served-model-name: expected a value, not a mapping");
    expect_yaml_err("port: 99999\n", -1, "cfg.yaml:1:7: port: 99999 is out of range [1, 65535]");
    expect_yaml_err("ratio: 0.5\ntimeout: soon\n", -1,
                    "cfg.yaml:2:10: timeout: expected a duration like 500ms, 30s, 5m, got 'soon'");
    expect_yaml_err("stop:\n  - ok\n  - [nested]\n", -1,
                    "cfg.yaml:3:5: stop: list items must be strings");
    expect_yaml_err("- a\n- b\n", -1, "cfg.yaml:1:1: expected a mapping of option: value");
    expect_yaml_err("[a]: 1\n", -1, "cfg.yaml:1:1: option names must be plain strings");
    expect_yaml_err("x: &a 1\ny: *a\n", -2, "cfg.yaml:2:4: YAML aliases are not supported");
    expect_yaml_err("a: 1\n---\nb: 2\n", -2, "cfg.yaml:2:1: only one YAML document is allowed");
}

/* Syntax errors come from libyaml; check the "file:line:col: " form and the line. */
static void expect_syntax_err(const char *text, int line)
{
    brix_yaml_node_t *root = (brix_yaml_node_t *)1;
    char err[256] = "";
    assert_int_equal(brix_yaml_parse("cfg.yaml", text, strlen(text), &root, err, sizeof err), -1);
    assert_null(root);
    int l = 0, col = 0, n = 0;
    if (sscanf(err, "cfg.yaml:%d:%d: %n", &l, &col, &n) != 2 || n == 0 || !err[n])
        fail_msg("syntax error text \"%s\" is not file:line:col: message", err);
    if (l != line || col < 1)
        fail_msg("syntax error \"%s\": want line %d", err, line);
}

static void test_yaml_syntax_errors(void **state)
{
    (void)state;
    expect_syntax_err("port: 1\nstop: [a, b\n", 3);
    expect_syntax_err("port: 1\n\tstop: x\n", 2);
    expect_syntax_err("port: 1\n  bad: indent\n", 2);
    expect_syntax_err("port: 1\nx: \"open\n", 3);
    expect_syntax_err("a: b: c\n", 1);
}

static void test_yaml_tree(void **state)
{
    (void)state;
    brix_yaml_node_t *root;
    char err[256];
    const char *y = "a: 1\nb:\n  - x\n  - 'null'\n  - ~\nc: {d: e}\nf:\n";
    assert_int_equal(brix_yaml_parse("t", y, strlen(y), &root, err, sizeof err), 0);
    assert_int_equal(root->type, BRIX_YAML_MAP);
    assert_int_equal(root->n, 4);
    assert_int_equal(root->line, 1);
    assert_int_equal(root->col, 1);
    brix_yaml_node_t *a = brix_yaml_get(root, "a");
    assert_non_null(a);
    assert_int_equal(a->type, BRIX_YAML_SCALAR);
    assert_string_equal(a->scalar, "1");
    assert_int_equal(a->line, 1);
    assert_int_equal(a->col, 4);
    brix_yaml_node_t *b = brix_yaml_get(root, "b");
    assert_int_equal(b->type, BRIX_YAML_SEQ);
    assert_int_equal(b->n, 3);
    assert_false(brix_yaml_is_null(b->items[0]));
    assert_false(brix_yaml_is_null(b->items[1])); /* quoted */
    assert_true(b->items[1]->quoted);
    assert_true(brix_yaml_is_null(b->items[2]));
    assert_int_equal(b->items[2]->line, 5);
    brix_yaml_node_t *c = brix_yaml_get(root, "c");
    assert_int_equal(c->type, BRIX_YAML_MAP);
    assert_string_equal(brix_yaml_get(c, "d")->scalar, "e");
    assert_true(brix_yaml_is_null(brix_yaml_get(root, "f")));
    assert_null(brix_yaml_get(root, "zz"));
    assert_null(brix_yaml_get(a, "a"));
    brix_yaml_free(root);
    brix_yaml_free(NULL);
}

static void test_yaml_multi_docs(void **state)
{
    (void)state;
    char err[256];
    brix_yaml_node_t *docs = NULL;
    const char *y = "a: 1\n---\n---\nkind: B\nspec:\n  x: [1, 2]\n---\n";
    assert_int_equal(brix_yaml_parse_docs("m.yaml", y, strlen(y), &docs, err, sizeof err), 0);
    assert_int_equal(docs->type, BRIX_YAML_SEQ);
    assert_int_equal(docs->n, 2); /* the empty document is skipped */
    assert_string_equal(brix_yaml_get(docs->items[0], "a")->scalar, "1");
    brix_yaml_node_t *k = brix_yaml_get(docs->items[1], "kind");
    assert_string_equal(k->scalar, "B");
    assert_int_equal(k->line, 4); /* lines count from the top of the file */
    brix_yaml_free(docs);
    /* the single-document parser still refuses a second document */
    brix_yaml_node_t *root = NULL;
    assert_int_equal(brix_yaml_parse("m.yaml", y, strlen(y), &root, err, sizeof err), -1);
    assert_non_null(strstr(err, "only one YAML document"));
    /* a syntax error in the second document names its line */
    const char *bad = "a: 1\n---\nb: [1, 2\n";
    assert_int_equal(brix_yaml_parse_docs("m.yaml", bad, strlen(bad), &docs, err, sizeof err), -1);
    assert_non_null(strstr(err, "m.yaml:"));
    assert_null(docs);
    /* no documents at all */
    assert_int_equal(brix_yaml_parse_docs("e.yaml", "", 0, &docs, err, sizeof err), 0);
    assert_int_equal(docs->n, 0);
    brix_yaml_free(docs);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/brix_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *y = "port: 1234\nlora_modules: [a=/1, b=/2]\n";
    assert_int_equal(write(fd, y, strlen(y)), (ssize_t)strlen(y));
    close(fd);
    tcfg_t c;
    cfg_init(&c);
    char err[512];
    assert_int_equal(brix_config_load_file(tbl, &c, path, err, sizeof err), 0);
    assert_int_equal(c.port, 1234);
    assert_int_equal(c.lora_modules.n, 2);
    /* Errors name the file. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("port: 1\nnope: 2\n", f);
    fclose(f);
    assert_int_equal(brix_config_load_file(tbl, &c, path, err, sizeof err), -1);
    char want[512];
    snprintf(want, sizeof want, "%s:2:1: unknown option 'nope'", path);
    assert_string_equal(err, want);
    unlink(path);
    assert_int_equal(brix_config_load_file(tbl, &c, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", path);
    assert_string_equal(err, want);
    brix_config_free(tbl, &c);
}

/* ------------------------------------------------------ free and usage -- */

static void test_free_releases_everything(void **state)
{
    (void)state;
    int64_t before = brix_alloc_live();
    tcfg_t c;
    cfg_init(&c);
    PARSE_OK(&c, "--served-model-name", "x", "--served-model-name", "y", "--config", "/c.yaml",
             "--lora-modules", "a", "b", "c", "--lora-modules", "d", "e", "--stop", "s1", "s2");
    char err[256];
    assert_int_equal(apply_yaml(&c, "stop: [p, q, r]\nserved_model_name: z\n", err, sizeof err), 0);
    assert_true(brix_alloc_live() > before);
    brix_config_free(tbl, &c);
    assert_int_equal(brix_alloc_live(), before);
    /* Free twice is harmless (fields are reset). */
    brix_config_free(tbl, &c);
    assert_int_equal(brix_alloc_live(), before);

    /* A failing parse leaves nothing behind once freed. */
    cfg_init(&c);
    PARSE_ERR(&c, "port: expected an integer, got 'x'", "--lora-modules", "a", "b", "--port", "x");
    brix_config_free(tbl, &c);
    assert_int_equal(brix_alloc_live(), before);
    /* Nor does a failing YAML apply. */
    cfg_init(&c);
    assert_int_equal(apply_yaml(&c, "stop: [a, b, [c]]\n", err, sizeof err), -1);
    assert_int_equal(apply_yaml(&c, "stop: [a, b\n", err, sizeof err), -2);
    brix_config_free(tbl, &c);
    assert_int_equal(brix_alloc_live(), before);
}

/* Under allocation failure, parsing either succeeds completely or fails cleanly. */
static void test_yaml_enomem(void **state)
{
    (void)state;
    const char *y = "a: [1, 2, {b: c}]\nd:\n  e: f\n  g: [h]\n";
    for (long k = 0; k < 64; k++) {
        brix_yaml_node_t *root = NULL;
        char err[256];
        brix_alloc_fail_after(k);
        int rc = brix_yaml_parse("t", y, strlen(y), &root, err, sizeof err);
        brix_alloc_fail_after(-1);
        if (rc == 0) {
            /* Success must mean the whole tree. */
            brix_yaml_node_t *a = brix_yaml_get(root, "a");
            brix_yaml_node_t *d = brix_yaml_get(root, "d");
            if (!a || a->type != BRIX_YAML_SEQ || a->n != 3 || !d || d->type != BRIX_YAML_MAP ||
                d->n != 2) {
                brix_yaml_free(root);
                fail_msg("allocation %ld failed but brix_yaml_parse returned 0 with a partial "
                         "tree (and leaked the nodes it dropped)",
                         k);
            }
            brix_yaml_free(root);
        } else {
            assert_null(root);
        }
    }
}

static void test_config_enomem(void **state)
{
    (void)state;
    for (long k = 0; k < 32; k++) {
        tcfg_t c;
        char err[256];
        memset(&c, 0, sizeof c);
        brix_alloc_fail_after(k);
        int rc = brix_config_defaults(tbl, &c, err, sizeof err);
        if (rc == 0)
            rc = parse(&c, err, sizeof err, "--lora-modules", "a", "b", "--served-model-name", "m",
                       (char *)NULL);
        brix_alloc_fail_after(-1);
        brix_config_free(tbl, &c);
    }
}

static void test_usage_lists_every_option(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    brix_config_usage(f, tbl, "brix thing [options]", "Does the thing.");
    fclose(f);
    assert_non_null(strstr(text, "usage: brix thing [options]\n"));
    assert_non_null(strstr(text, "Does the thing."));
    for (const brix_opt_t *o = tbl; o->name; o++) {
        char flag[128];
        if (o->type == BRIX_OPT_BOOL)
            snprintf(flag, sizeof flag, "--[no-]%s", o->name);
        else
            snprintf(flag, sizeof flag, "--%s ", o->name);
        const char *at = strstr(text, flag);
        if (!at)
            fail_msg("usage does not list %s:\n%s", flag, text);
        /* The help text is on the same line. */
        const char *eol = strchr(at, '\n');
        const char *help = strstr(at, o->help);
        assert_non_null(help);
        assert_true(help < eol);
        if (o->defval && *o->defval) {
            char d[128];
            snprintf(d, sizeof d, "(default: %s)", o->defval);
            const char *dp = strstr(at, d);
            assert_non_null(dp);
            assert_true(dp < eol);
        }
    }
    assert_non_null(strstr(text, "-h, --help"));
    assert_non_null(strstr(text, "--lora-modules VALUE [VALUE ...]"));
    assert_non_null(strstr(text, "--max-body SIZE"));
    assert_non_null(strstr(text, "--timeout DURATION"));
    assert_non_null(strstr(text, "--port N"));
    free(text);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cli_value_forms, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cli_bool_forms, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cli_strlist, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cli_errors, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_config_set, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_size_suffixes, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_duration_suffixes, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_parse_bool, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_yaml_apply, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_yaml_errors, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_yaml_syntax_errors, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_yaml_tree, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_yaml_multi_docs, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_load_file, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_free_releases_everything, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_yaml_enomem, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_config_enomem, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_usage_lists_every_option, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
