/* cli — shared by the object commands and `brix up`: one blocking call to the
 * controller's HTTP API. */
#ifndef BRIX_CONTROLLER_CLI_H
#define BRIX_CONTROLLER_CLI_H

#include <stddef.h>

#include "core/buf.h"

/* --server flag, else $BRIX_SERVER, else http://127.0.0.1:8081. */
const char *brix_cli_server(const char *flag);
/* The HTTP status, or -1 with err when the controller cannot be reached.
 * token: sent as `Authorization: Bearer` (NULL or "" = none).
 * headers: NULL-terminated "name: value" lines (NULL entries end the list). */
long brix_cli_call(const char *server, const char *token, const char *method, const char *path,
                   const char *body, size_t len, const char *const *headers, brix_buf_t *out,
                   char *err, size_t errlen);

#endif
