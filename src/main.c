/*
 * brix — one multi-call binary; each component is a subcommand.
 * `brix <component> [flags]`, `brix --help`, `brix --version`.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "bench/bench_main.h"
#include "controller/controller_main.h"
#include "engine_sim/engine_sim.h"
#include "gateway/gateway_main.h"
#include "kvcache/kvcache_main.h"

typedef struct component {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
} component_t;

static const component_t components[] = {
    { "bench", brix_bench_main,
      "benchmark: workloads and traces against a fleet, strategies compared side by side" },
    { "up", brix_up_main,
      "local cluster from one file: controller, engine replicas, adapters and a gateway" },
    { "apply", brix_apply_main, "create or update deployments and adapters: brix apply -f FILE" },
    { "get", brix_get_main,
      "list deployments, adapters, replicas or podautoscalers: brix get KIND [NAME]" },
    { "delete", brix_delete_main, "delete a deployment or adapter: brix delete KIND NAME" },
    { "controller", brix_controller_main,
      "controller: model deployments, LoRA adapter placement, local replicas, watch API" },
    { "gateway", brix_gateway_main,
      "OpenAI-compatible gateway: routes requests to engine replicas by model and load" },
    { "kvcache", brix_kvcache_main,
      "distributed KV-block store node: engines share prefill work (libbrixkv clients)" },
    { "engine-sim", brix_engine_sim_main,
      "simulated vLLM engine: OpenAI API, continuous batching, paged KV cache, LoRA" },
};

static void usage(FILE *out)
{
    fprintf(out, "usage: brix <component> [options]\n       brix --help | --version\n\n"
                 "brix is a control plane for fleets of LLM inference engines.\n\ncomponents:\n");
    for (size_t i = 0; i < sizeof components / sizeof *components; i++)
        fprintf(out, "  %-12s %s\n", components[i].name, components[i].summary);
    fprintf(out, "\nRun 'brix <component> --help' for a component's flags.\n");
}

int main(int argc, char **argv)
{
    brix_alloc_init();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V") || !strcmp(cmd, "version")) {
        printf("brix %s\n", BRIX_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof components / sizeof *components; i++) {
        if (!strcmp(cmd, components[i].name))
            return components[i].main(argc - 1, argv + 1);
    }
    fprintf(stderr, "brix: unknown component '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
