/* placeholder until the controller lands (replaced in this change) */
#include <stdio.h>

#include "controller/controller_main.h"

int brix_controller_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "brix controller: not built yet\n");
    return 2;
}
