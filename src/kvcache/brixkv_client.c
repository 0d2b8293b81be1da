/* Placeholder until the client lands (issue 14). */
#include "kvcache/brixkv.h"

const char *brixkv_status_str(brixkv_status_t st)
{
    (void)st;
    return "unknown";
}
