/* pdserve-model run: offline generation for one prompt — prefill in chunks, then decode token by token with
 * the request's sampling parameters. Prints the generated ids as JSON on stdout and timings on stderr. */
#include <stdio.h>
#include <string.h>

#include "model/mdl_runner.h"
#include "text/txt_tokenizer.h"
#include "tools/tool_util.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: pdserve-model run --model DIR (--prompt TEXT | --tokens 1,2,3) [options]\n"
        "  --prompt TEXT                tokenized with the checkpoint's tokenizer; prints the output as text\n"
        "  --max-tokens N               tokens to generate (default 16)\n"
        "  --temperature T --top-p P --top-k K --min-p P\n"
        "  --repetition-penalty R --frequency-penalty F --presence-penalty P\n"
        "  --seed N                     per-request seed (reproducible sampling)\n"
        "  --ignore-eos                 keep going past the end-of-sequence token\n"
        "  --max-num-batched-tokens N   prefill chunk (default 512)\n"
        "  --no-prefill-bf16            exact f32 activations in the prompt prefill (default: bf16 activations in\n"
        "                               the BF16-weight GEMMs where the CPU has AVX512-BF16; decode is always exact)\n"
        "  --prefill-reps N             prefill the prompt N times, report the median time (default 1)\n"
        "  --prefill-ab N               before generating, N back-to-back pairs of prefills (exact, then bf16\n"
        "                               activations): medians and the median of the per-pair speed-ups\n"
        "  --dtype float32|bfloat16     weights (default bfloat16)\n");
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* After a warm-up, n pairs of the same prefill, exact then with bf16 activations, back to back (both see the same
 * load from other processes); prints the median tok/s of each and the median of the per-pair ratios. */
static pd_status prefill_ab_run(mdl_runner *r, const int32_t *prompt, int n, float *lg, int pairs)
{
    double t[2][100], ratio[100];
    pd_status st = mdl_runner_feed(r, prompt, n, 0, MDL_ATTN_PREFILL, 0, lg, NULL); /* warm-up (first touch) */
    if (st != PD_OK) return st;
    for (int i = 0; i < pairs; i++) {
        for (int a = 0; a < 2; a++) {
            r->act_bf16 = a;
            const double t0 = pd_time_now();
            st = mdl_runner_feed(r, prompt, n, 0, MDL_ATTN_PREFILL, 0, lg, NULL);
            if (st != PD_OK) return st;
            t[a][i] = pd_time_now() - t0;
        }
        ratio[i] = t[0][i] / t[1][i];
    }
    qsort(t[0], (size_t)pairs, sizeof(double), cmp_double);
    qsort(t[1], (size_t)pairs, sizeof(double), cmp_double);
    qsort(ratio, (size_t)pairs, sizeof(double), cmp_double);
    fprintf(stderr, "prefill A/B, %d pairs of %d tokens: exact %.1f tok/s, bf16 activations %.1f tok/s (medians); "
            "speed-up median %.2fx (min %.2f, max %.2f)\n", pairs, n, n / t[0][(pairs - 1) / 2],
            n / t[1][(pairs - 1) / 2], ratio[(pairs - 1) / 2], ratio[0], ratio[pairs - 1]);
    return PD_OK;
}

int cmd_run(int argc, char **argv)
{
    const char *model = NULL, *toks = NULL, *text = NULL, *v;
    int max_tokens = 16, ignore_eos = 0, chunk = 512, block = 16, prefill_bf16 = 1, prefill_reps = 1, prefill_ab = 0;
    uint64_t seed = 0;
    int has_seed = 0;
    krn_sampling_params sp = krn_sampling_defaults();
    sp.temperature = 0;
    mdl_load_opts lo = mdl_load_defaults();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--ignore-eos")) { ignore_eos = 1; continue; }
        if (!strcmp(a, "--no-prefill-bf16")) { prefill_bf16 = 0; continue; }
        if (!(v = tool_arg(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--tokens")) toks = v;
        else if (!strcmp(a, "--prompt")) text = v;
        else if (!strcmp(a, "--max-tokens")) max_tokens = atoi(v);
        else if (!strcmp(a, "--temperature")) sp.temperature = strtof(v, NULL);
        else if (!strcmp(a, "--top-p")) sp.top_p = strtof(v, NULL);
        else if (!strcmp(a, "--top-k")) sp.top_k = atoi(v);
        else if (!strcmp(a, "--min-p")) sp.min_p = strtof(v, NULL);
        else if (!strcmp(a, "--repetition-penalty")) sp.repetition_penalty = strtof(v, NULL);
        else if (!strcmp(a, "--frequency-penalty")) sp.frequency_penalty = strtof(v, NULL);
        else if (!strcmp(a, "--presence-penalty")) sp.presence_penalty = strtof(v, NULL);
        else if (!strcmp(a, "--seed")) { seed = strtoull(v, NULL, 10); has_seed = 1; }
        else if (!strcmp(a, "--max-num-batched-tokens")) chunk = atoi(v);
        else if (!strcmp(a, "--block-size")) block = atoi(v);
        else if (!strcmp(a, "--prefill-reps")) prefill_reps = atoi(v);
        else if (!strcmp(a, "--prefill-ab")) prefill_ab = atoi(v);
        else if (!strcmp(a, "--dtype")) {
            if (tool_parse_type(v, &lo.weight_type) != PD_OK) {
                fprintf(stderr, "--dtype: float32 or bfloat16\n");
                return 2;
            }
        }
        else { fprintf(stderr, "run: unknown option '%s'\n", a); usage(stderr); return 2; }
    }
    if (!model || (!toks == !text)) { usage(stderr); return 2; }
    if (max_tokens < 0 || chunk < 1 || block < 1 || prefill_reps < 1 || prefill_reps > 100 || prefill_ab < 0 ||
        prefill_ab > 100) {
        fprintf(stderr, "run: bad --max-tokens/--max-num-batched-tokens/--block-size/--prefill-reps/--prefill-ab\n");
        return 2;
    }
    int32_t *prompt = NULL;
    int n = 0;
    char err[1024];
    txt_tokenizer tok = NULL;
    if (text) {
        size_t nid = 0;
        if (txt_tokenizer_load(model, &tok, err, sizeof err) != PD_OK) { fprintf(stderr, "run: %s\n", err); return 1; }
        unsigned flags = txt_tokenizer_add_bos_default(tok) ? TXT_ENCODE_ADD_BOS : 0;
        if (txt_tokenizer_encode(tok, text, strlen(text), flags, &prompt, &nid) != PD_OK || nid == 0) {
            fprintf(stderr, "run: --prompt is not valid UTF-8 text\n");
            txt_tokenizer_destroy(tok);
            return 2;
        }
        n = (int)nid;
    } else if (tool_parse_ids(toks, &prompt, &n) != PD_OK) {
        fprintf(stderr, "run: --tokens must be comma-separated ids\n");
        return 2;
    }
    mdl_model *m = NULL;
    double t0 = pd_time_now();
    if (mdl_model_load(model, &lo, &m, err, sizeof err) != PD_OK) {
        fprintf(stderr, "run: %s\n", err);
        free(prompt);
        txt_tokenizer_destroy(tok);
        return 1;
    }
    double t_load = pd_time_now() - t0;
    int rc = 1;
    const int V = m->cfg.vocab_size;
    mdl_runner r = {0};
    krn_sampler smp = NULL;
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t *out = malloc((size_t)(max_tokens + 1) * sizeof(int32_t));
    int n_out = 0;
    for (int i = 0; i < n; i++)
        if (prompt[i] >= V) {
            fprintf(stderr, "run: token %d is outside the vocabulary (%d)\n", prompt[i], V);
            goto done;
        }
    if (!lg || !out || mdl_runner_open(&r, m, n + max_tokens, PD_MIN(chunk, n), block) != PD_OK ||
        krn_sampler_create(V, &smp) != PD_OK) {
        fprintf(stderr, "run: out of memory\n");
        goto done;
    }
    pd_rng rng;
    pd_rng_seed(&rng, has_seed ? seed : pd_time_ns());
    if (prefill_ab > 0 && prefill_ab_run(&r, prompt, n, lg, prefill_ab) != PD_OK) goto done;
    r.act_bf16 = prefill_bf16;
    /* each repetition rewrites the same cache positions with the same values; the median time is reported */
    double reps[100], t_prefill;
    pd_status st = PD_OK;
    for (int i = 0; i < prefill_reps && st == PD_OK; i++) {
        double t1 = pd_time_now();
        st = mdl_runner_feed(&r, prompt, n, 0, MDL_ATTN_PREFILL, 0, lg, NULL);
        reps[i] = pd_time_now() - t1;
        for (int j = i; j > 0 && reps[j] < reps[j - 1]; j--) {
            double t = reps[j];
            reps[j] = reps[j - 1];
            reps[j - 1] = t;
        }
    }
    t_prefill = reps[(prefill_reps - 1) / 2];
    double t2 = pd_time_now();
    while (st == PD_OK && n_out < max_tokens) {
        int32_t tok = krn_sample(smp, lg, &sp, prompt, n, out, n_out, &rng, NULL, NULL);
        out[n_out++] = tok;
        if (tok == m->cfg.eos_token_id && !ignore_eos) break;
        if (n_out == max_tokens) break;
        st = mdl_runner_feed(&r, &tok, 1, n + n_out - 1, MDL_ATTN_DECODE, 0, lg, NULL);
    }
    double t_decode = pd_time_now() - t2;
    if (st != PD_OK) { fprintf(stderr, "run: forward failed: %s\n", pd_status_str(st)); goto done; }
    if (tok) {
        char *txt = NULL;
        size_t tl = 0;
        if (txt_tokenizer_decode(tok, out, (size_t)n_out, 1, &txt, &tl) == PD_OK) printf("%s%s\n", text, txt);
        free(txt);
    } else {
        printf("[");
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? "," : "", out[i]);
        printf("]\n");
    }
    fprintf(stderr, "load %.2f s; prefill %d tokens in %.3f s (%.1f tok/s); decode %d tokens in %.3f s (%.1f tok/s)\n",
            t_load, n, t_prefill, n / t_prefill, n_out, t_decode, n_out > 1 ? (n_out - 1) / t_decode : 0.0);
    rc = 0;
done:
    krn_sampler_destroy(smp);
    mdl_runner_close(&r);
    free(lg);
    free(out);
    mdl_model_destroy(m);
    txt_tokenizer_destroy(tok);
    free(prompt);
    return rc;
}
