/* An instance process: the option table (the model's and engine's, the shared instance options, the role's),
 * the event loop, SIGINT/SIGTERM (drain), and a clean stop. */
#include <string.h>

#include "common/pd_http.h"
#include "instance/inst.h"

/* The options every instance has, pointing into o. port_help is the caller's buffer for the port's text. */
static int shared_options(inst_opts *o, int default_port, char *port_help, size_t n, pd_opt *t)
{
    snprintf(port_help, n, "port (default %d; 0 picks a free one)", default_port);
    const pd_opt mine[] = {
        {"host", PD_OPT_STR, &o->host, "address to listen on (default 127.0.0.1)", 0, 0},
        {"router-url", PD_OPT_STR, &o->router_url, "register with this router, e.g. http://10.0.0.5:8000", 0, 0},
        {"advertise-host", PD_OPT_STR, &o->advertise_host, "address the router reaches this instance at", 0, 0},
        {"drain-timeout", PD_OPT_DOUBLE, &o->drain_timeout,
         "seconds a drain (SIGTERM) waits for requests in flight (120)", 0, 86400},
        {"port", PD_OPT_INT, &o->port, port_help, 0, 65535},
        {"kv-proto", PD_OPT_STR, &o->kv_proto, "KV transfer protocol: auto|put|am (default auto)", 0, 0},
    };
    if (t) memcpy(t, mine, sizeof mine);
    return (int)PD_ARRAY_LEN(mine);
}

/* Starts the role on a new loop and serves until a signal (SIGTERM drains). */
static int serve(const inst_program *p)
{
    struct event_base *base = event_base_new();
    if (!base) return 1;
    inst *in = NULL;
    int port = 0, rc = 1;
    if (p->start(base, p->arg, &in, &port) == PD_OK) {
        pd_info("%s: serving %s on http://%s:%d (%s)", p->name, p->opts->serve.served_model_name, p->opts->host,
                port, in->role.kind);
        pd_serve_until_signal(base, p->name, port, inst_drain, in);
        inst_destroy(in);
        rc = 0;
    }
    pd_http_calls_release(); /* connections cancelled during shutdown */
    event_base_free(base);
    return rc;
}

int inst_main(int argc, char **argv, const inst_program *p)
{
    inst_opts *o = p->opts;
    mdl_serve_defaults(&o->serve);
    o->drain_timeout = 120;
    o->port = p->default_port;
    char port_help[64], usage[128], err[512];
    int n_shared = shared_options(o, p->default_port, port_help, sizeof port_help, NULL);
    int n = MDL_SERVE_NOPTS + n_shared + p->n_role_opts;
    pd_opt *table = calloc((size_t)n, sizeof *table);
    if (!table) {
        fprintf(stderr, "pdserve-%s: out of memory\n", p->name);
        return 1;
    }
    mdl_serve_options(&o->serve, table);
    shared_options(o, p->default_port, port_help, sizeof port_help, table + MDL_SERVE_NOPTS);
    memcpy(table + MDL_SERVE_NOPTS + n_shared, p->role_opts, (size_t)p->n_role_opts * sizeof *table);
    snprintf(usage, sizeof usage, "usage: pdserve-%s --model DIR [options]", p->name);
    int rc = 1;
    pd_status st = pd_opts_parse(table, n, argc, argv, usage, err, sizeof err);
    if (st == PD_ERR_NOT_FOUND) {
        rc = 0; /* --help */
        goto free_opts;
    }
    if (st != PD_OK) {
        fprintf(stderr, "pdserve-%s: %s\n", p->name, err);
        rc = 2;
        goto free_opts;
    }
    if (!o->host && !(o->host = strdup("127.0.0.1"))) goto free_opts;
    rc = serve(p);
free_opts:
    pd_opts_free(table, n);
    free(table);
    return rc;
}
