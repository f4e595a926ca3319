/* An instance process: the option table (the model's and engine's, the shared instance options, the role's),
 * the event loop, SIGINT/SIGTERM (drain), and a clean stop. */
#include <string.h>

#include "common/pd_auth.h"
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
        {"data-parallel-size", PD_OPT_INT, &o->data_parallel_size,
         "MPI ranks of this instance, each with its own sequences and KV (start with mpirun -np N; default 1)", 1,
         4096},
        {"enable-expert-parallel", PD_OPT_BOOL, &o->expert_parallel,
         "split the routed experts over the ranks (each rank loads 1/N of them)", 0, 0},
        {"tensor-parallel-size", PD_OPT_INT, &o->tensor_parallel_size,
         "only 1: attention and dense layers are replicated on every rank (docs/scaling.md)", 1, 4096},
        {"cluster-secret-file", PD_OPT_STR, &o->cluster_secret_file,
         "file with the cluster's shared secret: internal routes and registration are then signed (HMAC)", 0, 0},
        {"collective-timeout", PD_OPT_DOUBLE, &o->collective_timeout,
         "seconds a rank waits for the others inside a step before the whole instance is aborted (60; 0: never)", 0,
         86400},
    };
    if (t) memcpy(t, mine, sizeof mine);
    return (int)PD_ARRAY_LEN(mine) + pd_http_listen_options(&o->listen, 0, t ? t + PD_ARRAY_LEN(mine) : NULL);
}

/* Starts the role on a new loop and serves until a signal (SIGTERM drains). */
static int serve(const inst_program *p)
{
    struct event_base *base = event_base_new();
    if (!base) return 1;
    inst *in = NULL;
    int port = 0, rc = 1;
    if (p->start(base, p->arg, &in, &port) == PD_OK) {
        pd_info("%s: serving %s on http://%s:%d (%s)", p->name, p->opts->serve.served_model_name, p->opts->host, port,
                in->role.kind);
        pd_serve_until_signal(base, p->name, port, inst_drain, in);
        inst_destroy(in);
        rc = 0;
    }
    pd_http_calls_release(); /* connections cancelled during shutdown */
    event_base_free(base);
    return rc;
}

/* --data-parallel-size N: this process is one of N MPI ranks. Rank 0 is the instance: SIGTERM to it drains the
 * instance, and the other ranks leave when its engine stops. */
static int serve_ranks(const inst_program *p, int *argc, char ***argv)
{
    inst_opts *o = p->opts;
    char err[512];
    dst *d = NULL;
    if (dst_init(argc, argv, o->data_parallel_size, o->expert_parallel, o->collective_timeout, &d, err, sizeof err) !=
        PD_OK) {
        if (err[0]) fprintf(stderr, "pdserve-%s: %s\n", p->name, err);
        return 2;
    }
    pd_buf all = {0}; /* every option as given but --model (hosts may mount it elsewhere): the ranks must agree */
    for (int i = 1; i < *argc; i++) {
        const char *a = (*argv)[i];
        if (!strcmp(a, "--model")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--model=", 8)) continue;
        pd_buf_append(&all, a, strlen(a));
        pd_buf_append(&all, "", 1);
    }
    int rc = 2;
    if (!all.failed && dst_agree(d, all.data ? all.data : "", all.len, "options") == PD_OK) {
        o->dist = d;
        dst_ep(d, &o->serve.ep_rank, &o->serve.ep_size);
        if (dst_rank(d) == 0) {
            rc = serve(p);
        } else {
            /* SIGINT and SIGTERM keep their default action here: a signalled rank dies and takes the instance down
             * with it (mpirun's abort of a failed job relies on that). A drain is a SIGTERM to rank 0 alone. */
            rc = inst__serve_worker(p, d);
        }
    }
    pd_buf_free(&all);
    o->dist = NULL;
    dst_finalize(d);
    return rc;
}

int inst_main(int argc, char **argv, const inst_program *p)
{
    inst_opts *o = p->opts;
    mdl_serve_defaults(&o->serve);
    o->drain_timeout = 120;
    o->data_parallel_size = o->tensor_parallel_size = 1;
    o->collective_timeout = 60;
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
    if (o->cluster_secret_file && pd_auth_load_secret(o->cluster_secret_file, err, sizeof err) != PD_OK) {
        fprintf(stderr, "pdserve-%s: %s\n", p->name, err);
        rc = 2;
        goto free_opts;
    }
    if (o->tensor_parallel_size > 1) {
        fprintf(stderr,
                "pdserve-%s: --tensor-parallel-size %d: tensor parallelism is not built; split an instance "
                "with --data-parallel-size N --enable-expert-parallel (docs/scaling.md)\n",
                p->name, o->tensor_parallel_size);
        rc = 2;
        goto free_opts;
    }
    rc = o->data_parallel_size > 1 ? serve_ranks(p, &argc, &argv) : serve(p);
free_opts:
    pd_auth_clear();
    pd_opts_free(table, n);
    free(table);
    return rc;
}
