/* pdserve-router: parse options (YAML + flags), start the OpenAI-compatible front, run the loop until SIGINT
 * or SIGTERM. */
#include <string.h>

#include "common/pd_auth.h"
#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "common/pd_opts.h"
#include "router/router.h"

int main(int argc, char **argv)
{
    rt_opts o;
    memset(&o, 0, sizeof o);
    o.port = 8000;
    o.max_body = 8u << 20;
    o.max_stop = 4;
    o.max_n = 8;
    o.health_interval = 1.0;
    o.request_timeout = 600;
    o.max_queued = 4096;
    pd_opt table[32] = {
        {"host", PD_OPT_STR, &o.host, "address to listen on (default 127.0.0.1)", 0, 0},
        {"port", PD_OPT_INT, &o.port, "port (default 8000; 0 picks a free one)", 0, 65535},
        {"model", PD_OPT_STR, &o.model, "checkpoint directory (tokenizer, chat template, config.json)", 0, 0},
        {"tokenizer", PD_OPT_STR, &o.tokenizer, "tokenizer directory (default: --model)", 0, 0},
        {"served-model-name", PD_OPT_STR, &o.served_model_name, "model name in the API (default: directory name)", 0,
         0},
        {"prefill", PD_OPT_STR, &o.prefill, "prefill instances, host:port[,host:port...]", 0, 0},
        {"decode", PD_OPT_STR, &o.decode, "decode (or --colocated) instances, host:port[,...]", 0, 0},
        {"max-model-len", PD_OPT_INT, &o.max_model_len, "prompt + output limit (default: the decode instances')", 0,
         1 << 24},
        {"max-tokens-limit", PD_OPT_INT, &o.max_tokens_limit, "largest max_tokens accepted (default: max model len)", 0,
         1 << 24},
        {"max-body-size", PD_OPT_SIZE, &o.max_body, "largest request body (default 8M)", 0, 0},
        {"max-stop-strings", PD_OPT_INT, &o.max_stop, "stop strings per request (default 4)", 0, 16},
        {"max-n", PD_OPT_INT, &o.max_n, "largest n (default 8)", 1, 64},
        {"health-interval", PD_OPT_DOUBLE, &o.health_interval, "seconds between health checks (default 1)", 0.05, 60},
        {"max-num-queued-reqs", PD_OPT_INT, &o.max_queued, "requests in flight before new ones get 429 (default 4096)",
         1, 1 << 24},
        {"max-num-queued-tokens", PD_OPT_INT, &o.max_queued_tokens,
         "prompt tokens in flight without a first token before new requests get 429; a longer request still runs when "
         "none wait (default 0: no limit)",
         0, 1 << 30},
        {"policy", PD_OPT_STR, &o.policy,
         "instance choice: least-load (default), round-robin, or bucket (decode: pack into captured batch sizes)", 0,
         0},
        {"api-key", PD_OPT_STR, &o.api_key,
         "require 'Authorization: Bearer KEY' on /v1/..., /tokenize, /detokenize; several: KEY,KEY (default: "
         "PDSERVE_API_KEY, else none)",
         0, 0},
        {"api-key-file", PD_OPT_STR, &o.api_key_file, "file of API keys, one a line (# comments)", 0, 0},
        {"admin-key", PD_OPT_STR, &o.admin_key,
         "require 'Authorization: Bearer KEY' on /admin/...; several: KEY,KEY (default: PDSERVE_ADMIN_KEY, else only "
         "this host may call them)",
         0, 0},
        {"cluster-secret-file", PD_OPT_STR, &o.cluster_secret_file,
         "file with the cluster's shared secret: calls to instances are signed, registrations must be (HMAC)", 0, 0},
        {"generation-config", PD_OPT_STR, &o.generation_config,
         "default sampling for fields a request leaves out: auto (the model's generation_config.json: temperature, "
         "top_p, top_k, min_p, repetition_penalty; default), vllm (the API's defaults) or a directory holding one",
         0, 0},
        {"override-generation-config", PD_OPT_STR, &o.override_generation_config,
         "JSON object of default sampling fields over --generation-config's, e.g. '{\"temperature\": 0.6}'", 0, 0},
        {"request-timeout", PD_OPT_DOUBLE, &o.request_timeout, "seconds without progress before a request fails (600)",
         1, 86400},
    };
    int n = 0;
    while (table[n].name) n++;
    PD_ASSERT(n + pd_http_listen_options(&o.listen, 1, NULL) <= (int)PD_ARRAY_LEN(table));
    n += pd_http_listen_options(&o.listen, 1, table + n);
    char err[512];
    pd_status st = pd_opts_parse(table, n, argc, argv,
                                 "usage: pdserve-router --model DIR --prefill HOST:PORT --decode HOST:PORT [options]",
                                 err, sizeof err);
    if (st == PD_ERR_NOT_FOUND) return 0;
    if (st != PD_OK) {
        fprintf(stderr, "pdserve-router: %s\n", err);
        return 2;
    }
    if (!o.host) o.host = strdup("127.0.0.1");
    if (o.cluster_secret_file && pd_auth_load_secret(o.cluster_secret_file, err, sizeof err) != PD_OK) {
        fprintf(stderr, "pdserve-router: %s\n", err);
        pd_opts_free(table, n);
        return 2;
    }
    if (!o.served_model_name && o.model) {
        const char *p = o.model + strlen(o.model);
        while (p > o.model && p[-1] == '/') p--;
        const char *end = p;
        while (p > o.model && p[-1] != '/') p--;
        o.served_model_name = strndup(p, (size_t)(end - p));
    }
    if (!o.decode && !o.prefill)
        pd_info("router: no instances configured; waiting for instances to register (POST /admin/instances)");
    struct event_base *base = event_base_new();
    rt_router *rt = NULL;
    int port = 0, rc = 1;
    if (!base) goto free_opts;
    if (rt_router_create(base, &o, &rt, &port) != PD_OK) goto free_base;
    pd_info("router: serving %s on http://%s:%d (prefill: %s; decode: %s)", o.served_model_name, o.host, port,
            o.prefill ? o.prefill : "none", o.decode);
    pd_serve_until_signal(base, "router", port, NULL, NULL);
    rt_router_destroy(rt);
    rc = 0;
free_base:
    pd_http_calls_release(); /* connections cancelled during shutdown */
    event_base_free(base);
free_opts:
    pd_auth_clear();
    pd_opts_free(table, n);
    return rc;
}
