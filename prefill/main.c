/* pdserve-prefill: parse options (YAML + flags), start the prefill instance, run the event loop until SIGINT
 * or SIGTERM, then stop cleanly. */
#include <string.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "prefill/server.h"

int main(int argc, char **argv)
{
    pf_opts o;
    memset(&o, 0, sizeof o);
    mdl_serve_defaults(&o.serve);
    o.drain_timeout = 120;
    o.port = 8100;
    o.kv_xfer_timeout = 30;
    pd_opt table[MDL_SERVE_NOPTS + 7];
    mdl_serve_options(&o.serve, table);
    pd_opt mine[] = {
        {"host", PD_OPT_STR, &o.host, "address to listen on (default 127.0.0.1)", 0, 0},
        {"router-url", PD_OPT_STR, &o.router_url, "register with this router, e.g. http://10.0.0.5:8000", 0, 0},
        {"advertise-host", PD_OPT_STR, &o.advertise_host, "address the router reaches this instance at", 0, 0},
        {"drain-timeout", PD_OPT_DOUBLE, &o.drain_timeout, "seconds a drain (SIGTERM) waits for requests in flight (120)", 0, 86400},
        {"port", PD_OPT_INT, &o.port, "port (default 8100; 0 picks a free one)", 0, 65535},
        {"kv-proto", PD_OPT_STR, &o.kv_proto, "KV transfer protocol: auto|put|am (default auto)", 0, 0},
        {"kv-xfer-timeout", PD_OPT_DOUBLE, &o.kv_xfer_timeout, "seconds a KV transfer may take (default 30)", 0.1, 3600},
    };
    memcpy(table + MDL_SERVE_NOPTS, mine, sizeof mine);
    const int n = MDL_SERVE_NOPTS + (int)PD_ARRAY_LEN(mine);
    char err[512];
    pd_status st = pd_opts_parse(table, n, argc, argv, "usage: pdserve-prefill --model DIR [options]", err, sizeof err);
    if (st == PD_ERR_NOT_FOUND) return 0;
    if (st != PD_OK) {
        fprintf(stderr, "pdserve-prefill: %s\n", err);
        return 2;
    }
    if (!o.host) o.host = strdup("127.0.0.1");
    struct event_base *base = event_base_new();
    pf_server *s = NULL;
    int port = 0, rc = 1;
    if (!base) goto free_opts;
    if (pf_server_create(base, &o, &s, &port) != PD_OK) goto free_base;
    pd_info("prefill: serving %s on http://%s:%d", o.serve.served_model_name, o.host, port);
    fprintf(stdout, "READY %d\n", port);
    fflush(stdout);
    pd_run_until_signal(base, "prefill", pf_server_drain, s);
    pf_server_destroy(s);
    rc = 0;
free_base:
    pd_http_calls_release(); /* connections cancelled during shutdown */
    event_base_free(base);
free_opts:
    pd_opts_free(table, n);
    return rc;
}
