/* pdserve-decode: parse options (YAML + flags), start the decode instance, run the event loop until SIGINT or
 * SIGTERM, then stop cleanly. */
#include <string.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "decode/server.h"

int main(int argc, char **argv)
{
    dec_opts o;
    memset(&o, 0, sizeof o);
    mdl_serve_defaults(&o.serve);
    o.drain_timeout = 120;
    o.port = 8200;
    o.kv_wait_timeout = 40;
    o.kv_transfer_timeout = 300;
    pd_opt table[MDL_SERVE_NOPTS + 9];
    mdl_serve_options(&o.serve, table);
    pd_opt mine[] = {
        {"host", PD_OPT_STR, &o.host, "address to listen on (default 127.0.0.1)", 0, 0},
        {"router-url", PD_OPT_STR, &o.router_url, "register with this router, e.g. http://10.0.0.5:8000", 0, 0},
        {"advertise-host", PD_OPT_STR, &o.advertise_host, "address the router reaches this instance at", 0, 0},
        {"drain-timeout", PD_OPT_DOUBLE, &o.drain_timeout, "seconds a drain (SIGTERM) waits for requests in flight (120)", 0, 86400},
        {"port", PD_OPT_INT, &o.port, "port (default 8200; 0 picks a free one)", 0, 65535},
        {"colocated", PD_OPT_BOOL, &o.colocated, "also prefill here (no transfer): the baseline and the oracle", 0, 0},
        {"kv-proto", PD_OPT_STR, &o.kv_proto, "KV transfer protocol: auto|put|am (default auto)", 0, 0},
        {"kv-wait-timeout", PD_OPT_DOUBLE, &o.kv_wait_timeout, "seconds an aborted request waits for its transfer (40)", 1, 3600},
        {"kv-transfer-timeout", PD_OPT_DOUBLE, &o.kv_transfer_timeout,
         "seconds a reservation waits for its KV (prefill queue + compute + transfer) before the request is "
         "given up and retried elsewhere (300)", 0.5, 86400},
    };
    memcpy(table + MDL_SERVE_NOPTS, mine, sizeof mine);
    const int n = MDL_SERVE_NOPTS + (int)PD_ARRAY_LEN(mine);
    char err[512];
    pd_status st = pd_opts_parse(table, n, argc, argv, "usage: pdserve-decode --model DIR [options]", err, sizeof err);
    if (st == PD_ERR_NOT_FOUND) return 0;
    if (st != PD_OK) {
        fprintf(stderr, "pdserve-decode: %s\n", err);
        return 2;
    }
    if (!o.host) o.host = strdup("127.0.0.1");
    struct event_base *base = event_base_new();
    dec_server *s = NULL;
    int port = 0, rc = 1;
    if (!base) goto free_opts;
    if (dec_server_create(base, &o, &s, &port) != PD_OK) goto free_base;
    pd_info("decode: serving %s on http://%s:%d (%s)", o.serve.served_model_name, o.host, port,
            o.colocated ? "colocated" : "decode");
    fprintf(stdout, "READY %d\n", port);
    fflush(stdout);
    pd_run_until_signal(base, "decode", dec_server_drain, s);
    dec_server_destroy(s);
    rc = 0;
free_base:
    pd_http_calls_release(); /* connections cancelled during shutdown */
    event_base_free(base);
free_opts:
    pd_opts_free(table, n);
    return rc;
}
