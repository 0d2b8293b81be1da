/*
 * kvcache_main — `brix kvcache`: one node of the distributed KV-block store.
 */
#ifndef BRIX_KVCACHE_MAIN_H
#define BRIX_KVCACHE_MAIN_H

int brix_kvcache_main(int argc, char **argv);

#endif
