/* `brix bench` entry point (called by src/main.c). */
#ifndef BRIX_BENCH_BENCH_MAIN_H
#define BRIX_BENCH_BENCH_MAIN_H

int brix_bench_main(int argc, char **argv);

#endif
