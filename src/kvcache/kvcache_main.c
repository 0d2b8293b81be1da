/* Placeholder until the server lands (issue 14). */
#include "kvcache/kvcache_main.h"

#include <stdio.h>

int brix_kvcache_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "brix kvcache: not built yet\n");
    return 2;
}
