/* `brix gateway` entry point (called by src/main.c). */
#ifndef BRIX_GATEWAY_GATEWAY_MAIN_H
#define BRIX_GATEWAY_GATEWAY_MAIN_H

int brix_gateway_main(int argc, char **argv);

#endif
