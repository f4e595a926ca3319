/* spec_bench: decode throughput of speculative decoding on mdl_engine, in one run. For each model and batch size:
 * greedy decoding without speculation (k = 0), then for k = 1..max_k: 100% acceptance (the known-drafts hook
 * replays the k = 0 continuation) once with the MTP layer running (its cost in the figure) and once alone (an
 * n-gram engine whose lookup the hook replaces: the verify pass by itself), then the real acceptance of the MTP
 * layer's own drafts and of prompt lookup's. Then the decode step time on captured plans against the general path.
 * Throughput = decode tokens / seconds of decode-step compute (prefill excluded), from mdl_engine_stats.
 * --pairs R: instead, R back-to-back rounds of (k = 0, k = max_k known with MTP, k = max_k known verify-only) per
 * batch size; prints medians and the median per-round speed-ups (the figures to quote on a shared machine).
 * Usage: spec_bench --model DIR [--model DIR]... [--tokens N] [--batches 1,4,16] [--max-k 3]
 *                   [--plan-batches 1,2,4] [--tokenizer DIR] [--pairs R] [--draft-vocab N] [--draft-head int8]
 *                   [--logprobs N]
 * --draft-vocab N: MTP drafts score token ids [0, N) only (the pruned draft head, draft_vocab_size).
 * --draft-head int8: MTP drafts score with an int8 copy of the MTP head (draft_head_dtype "int8").
 * --logprobs N: the requests' top_logprobs; default -1, none, as the router asks for a request without logprobs
 * (0: the sampled token's logprob, which costs a copy and a log-sum-exp over the vocabulary per row). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <math.h>
#include <sys/stat.h>

#include "benchmarks/kernel_bench_peak.h"
#include "model/mdl_engine.h"
#include "text/txt_tokenizer.h"

#define MAXREQ 64
#define MAXTOK 512

/* Plain English in the style of the demo model's training text; any DeepSeek-V3-vocabulary model can take it. */
static const char *const PROMPTS[] = {
    "Phil shrugged. He stepped into the dugout, wondering why Deegan was",
    "The committee met on Tuesday to discuss the new budget for the county schools, and",
    "She had never seen the house so quiet. The children were asleep upstairs, and",
    "In the spring of that year the farmers of the valley began to plant",
    "It was a long time before he answered. When he did, his voice was",
    "The president said that the government would not accept",
    "After the war, the family moved to a small town in the north where",
    "Most of the students who came to the university that fall were",
    "The jury found that the evidence presented by the state",
    "He looked at the letter again and then put it back in his pocket. There was",
    "Scientists have long believed that the surface of the moon",
    "The old man walked slowly down the road toward the church, where",
    "According to the report, the number of workers in the industry",
    "When the music stopped, everyone in the room turned to look at",
    "There is no doubt that the problem of the cities will",
    "The ship left the harbor early in the morning and by noon",
};
#define NPROMPTS ((int)(sizeof PROMPTS / sizeof PROMPTS[0]))

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t out[MAXREQ][MAXTOK];
    int n_out[MAXREQ];
    int n_done;
} sink;

static void on_event(const mdl_event *ev, void *arg)
{
    sink *k = arg;
    pthread_mutex_lock(&k->mu);
    if (ev->type == MDL_EV_TOKEN && k->n_out[ev->id] < MAXTOK) k->out[ev->id][k->n_out[ev->id]++] = ev->token;
    if (ev->type == MDL_EV_DONE) k->n_done++;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

typedef struct {
    int32_t *ids[NPROMPTS];
    int n[NPROMPTS];
    const sink *ref; /* known continuation */
} prompts;

static int known_cb(uint64_t id, void *user, const int32_t *tokens, int n_tokens, int32_t *drafts, int k, void *arg)
{
    (void)user;
    (void)tokens;
    const prompts *p = arg;
    int g = n_tokens - p->n[id % NPROMPTS], n = 0;
    for (; n < k && g + n < p->ref->n_out[id]; n++) drafts[n] = p->ref->out[id][g + n];
    return n;
}

typedef struct {
    double tok_s, step_ms, accept, mean_len;
    int equal;
} result;

/* One run: batch requests of max_tokens greedy tokens; known: replay ref as drafts; sizes: -1 general path only;
 * meth: MDL_SPEC_MTP (known drafts replace the MTP layer's, which still runs) or MDL_SPEC_NGRAM (known drafts replace
 * prompt lookup's: the step is verification alone). */
static int g_draft_vocab; /* --draft-vocab: the MTP runs' pruned draft head (0: whole vocabulary) */
static int g_draft_int8;  /* --draft-head int8: the MTP runs' drafts score with an int8 copy of the head */
static int g_logprobs = -1; /* --logprobs: the requests' top_logprobs */
static int g_full_logits;   /* the engines' full_logits (no lm_head screen for greedy rows) */
static int g_screen_ab;     /* --screen-ab 1: each pair also runs with every logit computed */

static result run_m(mdl_model *m, prompts *pr, int batch, int max_tokens, int k, int known, int sizes,
                    mdl_spec_method meth, sink *out)
{
    result r = {0};
    memset(out->n_out, 0, sizeof out->n_out);
    out->n_done = 0;
    mdl_engine_opts o = {.max_num_seqs = PD_MAX(batch, 1), .max_num_batched_tokens = 2048, .max_model_len = 1024,
                         .block_size = 16, .n_blocks = batch * (1024 / 16) + 16, .num_speculative_tokens = k,
                         .spec_method = meth, .ngram_min = 2, .ngram_max = 4, .n_graph_batch_sizes = sizes,
                         .draft_vocab_size = meth == MDL_SPEC_MTP && k > 0 ? g_draft_vocab : 0,
                         .draft_head_int8 = meth == MDL_SPEC_MTP && k > 0 ? g_draft_int8 : 0,
                         .full_logits = g_full_logits};
    mdl_engine *e = NULL;
    pd_status st = mdl_engine_create(m, &o, on_event, out, &e);
    if (st != PD_OK) {
        fprintf(stderr, "engine: %s\n", pd_status_str(st));
        exit(1);
    }
    if (known) mdl_engine_set_draft_hook(e, known_cb, pr);
    for (int i = 0; i < batch; i++) {
        mdl_gen_params p = {0};
        p.sampling = krn_sampling_defaults();
        p.sampling.temperature = 0;
        p.max_tokens = max_tokens;
        p.ignore_eos = 1;
        p.top_logprobs = g_logprobs;
        st = mdl_engine_submit(e, (uint64_t)i, NULL, pr->ids[i % NPROMPTS], pr->n[i % NPROMPTS], &p, MDL_REQ_LOCAL);
        if (st != PD_OK) {
            fprintf(stderr, "submit: %s\n", pd_status_str(st));
            exit(1);
        }
    }
    pthread_mutex_lock(&out->mu);
    while (out->n_done < batch) pthread_cond_wait(&out->cv, &out->mu);
    pthread_mutex_unlock(&out->mu);
    mdl_engine_stats s;
    mdl_engine_get_stats(e, &s);
    mdl_engine_destroy(e);
    r.tok_s = s.decode_tokens / s.decode_seconds;
    r.step_ms = 1e3 * s.decode_seconds / (double)s.decode_steps;
    r.accept = s.spec_drafted ? (double)s.spec_accepted / (double)s.spec_drafted : 0;
    r.mean_len = s.spec_mean_accepted_len;
    r.equal = 1;
    for (int i = 0; pr->ref && i < batch; i++) { /* the first differing token of each request that differs */
        int j = 0;
        while (j < out->n_out[i] && j < pr->ref->n_out[i] && out->out[i][j] == pr->ref->out[i][j]) j++;
        if (j < out->n_out[i] || j < pr->ref->n_out[i]) {
            r.equal = 0;
            fprintf(stderr, "spec_bench: batch %d k=%d %s: request %d differs from k=0 at token %d\n", batch, k,
                    meth == MDL_SPEC_NGRAM ? "verify-only" : "MTP", i, j);
        }
    }
    return r;
}

static result run(mdl_model *m, prompts *pr, int batch, int max_tokens, int k, int known, int sizes, sink *out)
{
    return run_m(m, pr, batch, max_tokens, k, known, sizes, MDL_SPEC_MTP, out);
}

static int parse_list(const char *s, int *v, int cap)
{
    int n = 0;
    for (const char *p = s; *p && n < cap;) {
        v[n++] = (int)strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
    }
    return n;
}

static volatile float g_sink;

typedef struct {
    const float *buf;
    size_t n;
} stream_job;

static void stream_task(void *p, int ith, int nth)
{
    const stream_job *j = p;
    const size_t per = (j->n / (size_t)nth) & ~(size_t)127;
    g_sink += bench_stream_sum(j->buf + per * (size_t)ith, per);
}

/* One streaming read over n floats on every pool thread (the kernel table's own loads): GB/s. */
static double stream_gbs(const float *buf, size_t n)
{
    if (!buf) return 0;
    const int nth = krn_threads_get();
    stream_job j = {buf, n};
    double t = pd_time_now();
    krn_parallel(stream_task, &j, nth);
    t = pd_time_now() - t;
    return (double)((n / (size_t)nth) & ~(size_t)127) * nth * 4 / t / 1e9;
}

static double mat_bytes(const krn_mat *w)
{
    return w->rows > 0 ? (double)w->rows * w->cols * krn_type_size(w->type) : 0;
}

/* Weight bytes a forward pass over r rows of one sequence reads from one layer: attention and shared parts once,
 * routed experts once per distinct expert, here the expected count when routing is uniform,
 * E * (1 - (1 - K/E)^r) (shared = 1 gives the best case, every row on the same K experts). */
static double layer_bytes(const mdl_model *m, const mdl_layer *L, int r, int shared)
{
    const mdl_config *c = &m->cfg;
    double b = mat_bytes(&L->q_a) + mat_bytes(&L->q_b) + mat_bytes(&L->q) + mat_bytes(&L->kv_a) + mat_bytes(&L->kv_b) +
               mat_bytes(&L->o);
    if (!L->is_moe) return b + mat_bytes(&L->gate) + mat_bytes(&L->up) + mat_bytes(&L->down);
    const double E = c->n_routed_experts, K = c->num_experts_per_tok;
    const double distinct = shared ? K : E * (1.0 - pow(1.0 - K / E, r));
    b += mat_bytes(&L->router) + mat_bytes(&L->sh_gate) + mat_bytes(&L->sh_up) + mat_bytes(&L->sh_down);
    return b + distinct * (mat_bytes(&L->exp_gate[0]) + mat_bytes(&L->exp_up[0]) + mat_bytes(&L->exp_down[0]));
}

/* Weight bytes of one main-model decode step over one row (every layer, the lm_head; the embedding row is
 * negligible). */
static double main_step_bytes(const mdl_model *m)
{
    double b = mat_bytes(&m->lm_head);
    for (int l = 0; l < m->n_layers; l++) b += layer_bytes(m, &m->layers[l], 1, 1);
    return b;
}

/* The bandwidth bound on speculation at batch 1: bytes of weights per step for k = 0 (one main pass) and for k
 * (verify over k+1 rows, one MTP pass over k+1 pending rows, k-1 MTP passes over one row, each MTP pass reading
 * its own full-vocabulary head), and the speed-up a purely bandwidth-bound step would give at 100% acceptance. */
static void bytes_bound(const mdl_model *m, int k)
{
    if (m->n_mtp < 1 || k < 1) return;
    double main1 = mat_bytes(&m->lm_head), main_k[2], mtp1, mtp_k[2];
    const mdl_layer *T = &m->layers[m->n_layers];
    const double head = (g_draft_int8 ? (double)T->head.rows * T->head.cols : mat_bytes(&T->head)) *
        (g_draft_vocab > 0 && g_draft_vocab < m->cfg.vocab_size ? (double)g_draft_vocab / m->cfg.vocab_size : 1);
    const double mtp_fixed = mat_bytes(&T->eh_proj) + head;
    for (int l = 0; l < m->n_layers; l++) main1 += layer_bytes(m, &m->layers[l], 1, 1);
    mtp1 = mtp_fixed + layer_bytes(m, T, 1, 1);
    for (int sh = 0; sh < 2; sh++) {
        main_k[sh] = mat_bytes(&m->lm_head);
        for (int l = 0; l < m->n_layers; l++) main_k[sh] += layer_bytes(m, &m->layers[l], k + 1, sh);
        mtp_k[sh] = mtp_fixed + layer_bytes(m, T, k + 1, sh) + (k - 1) * mtp1;
    }
    printf("\nWeight bytes per decode step at batch 1 (bandwidth bound): k=0 %.0f MB/token; k=%d %.0f MB/step "
           "(verify %.0f + MTP %.0f, of which %d x %.0f MB MTP head) with uniform routing, %.0f MB if all rows share "
           "experts. Bound on the k=%d speed-up at 100%% acceptance: %.2fx (uniform) .. %.2fx (shared).\n",
           main1 / 1e6, k, (main_k[0] + mtp_k[0]) / 1e6, main_k[0] / 1e6, mtp_k[0] / 1e6, k, head / 1e6,
           (main_k[1] + mtp_k[1]) / 1e6, k, (k + 1) * main1 / (main_k[0] + mtp_k[0]),
           (k + 1) * main1 / (main_k[1] + mtp_k[1]));
    printf(
        "Verify alone (drafts from prompt lookup or known, no draft model): k=%d reads %.0f MB/step (uniform) .. %.0f "
        "MB (shared); bound on the speed-up at 100%% acceptance: %.2fx .. %.2fx.\n",
        k, main_k[0] / 1e6, main_k[1] / 1e6, (k + 1) * main1 / main_k[0], (k + 1) * main1 / main_k[1]);
}

/* R rounds of back-to-back runs: k = 0, then k = max_k with known drafts twice: with the MTP layer running (its
 * cost in the figure: what MTP decoding costs at 100% acceptance) and with drafts replacing prompt lookup (the
 * step is the verify pass alone: the verification machinery by itself). Medians and median speed-ups. */
static void pairs(mdl_model *m, prompts *pr, const int *batches, int nb, int tokens, int max_k, int reps, sink *ref,
                  sink *out)
{
    enum { MAXP = 64 };
    const size_t sn = (size_t)128 << 20; /* 512 MB of floats for the streaming read */
    float *sbuf = pd_aligned_alloc(sn * sizeof(float));
    if (sbuf)
        for (size_t i = 0; i < sn; i++) sbuf[i] = 1.0f;
    const int mtp = m->n_mtp > 0;
    printf(
        "| batch | k | k=0 tok/s | k=%d MTP tok/s | k=%d verify-only tok/s | k=0 ms/step | MTP ms/step | verify-only "
        "ms/step | MTP speed-up (min-max) | verify-only speed-up (min-max) | output == k=0 | k=0 step GB/s of "
        "weights / stream GB/s (ratio) |\n",
        max_k, max_k);
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    double allv[8][MAXP]; /* each pair's verify-only speed-up, in run order, per batch size */
    double ab[8][6];      /* --screen-ab: medians of k=0 / MTP / verify-only ms per step, screen then every logit */
    int ab_equal[8];
    for (int bi = 0; bi < nb; bi++) {
        const int b = batches[bi];
        if (b > MAXREQ) continue;
        double t0[MAXP], tk[MAXP], tv[MAXP], s0[MAXP], sk[MAXP], sv[MAXP], sp[MAXP], spv[MAXP], bw[MAXP], st[MAXP];
        double fs0[MAXP], fsk[MAXP], fsv[MAXP];
        int equal = 1, ab_eq = 1;
        for (int r = 0; r < reps; r++) {
            st[r] = stream_gbs(sbuf, sn);
            pr->ref = NULL;
            result r0 = run(m, pr, b, tokens, 0, 0, 0, ref);
            bw[r] = st[r] > 0 ? main_step_bytes(m) / (r0.step_ms * 1e-3) / 1e9 / st[r] : 0;
            pr->ref = ref;
            result rk = mtp ? run(m, pr, b, tokens, max_k, 1, 0, out) : (result){0};
            result rv = run_m(m, pr, b, tokens, max_k, 1, 0, MDL_SPEC_NGRAM, out);
            t0[r] = r0.tok_s;
            tk[r] = rk.tok_s;
            tv[r] = rv.tok_s;
            s0[r] = r0.step_ms;
            sk[r] = rk.step_ms;
            sv[r] = rv.step_ms;
            sp[r] = rk.tok_s / r0.tok_s;
            spv[r] = allv[bi][r] = rv.tok_s / r0.tok_s;
            equal &= (!mtp || rk.equal) && rv.equal;
            if (g_screen_ab) { /* the same three runs with every logit computed, right after (same outputs) */
                g_full_logits = 1;
                result f0 = run(m, pr, b, tokens, 0, 0, 0, out);
                result fk = mtp ? run(m, pr, b, tokens, max_k, 1, 0, out) : (result){0};
                result fv = run_m(m, pr, b, tokens, max_k, 1, 0, MDL_SPEC_NGRAM, out);
                g_full_logits = 0;
                fs0[r] = f0.step_ms;
                fsk[r] = fk.step_ms;
                fsv[r] = fv.step_ms;
                ab_eq &= f0.equal && (!mtp || fk.equal) && fv.equal;
            }
        }
        if (g_screen_ab) {
            double c0[MAXP], ck[MAXP], cv[MAXP];
            memcpy(c0, s0, sizeof c0);
            memcpy(ck, sk, sizeof ck);
            memcpy(cv, sv, sizeof cv);
            ab[bi][0] = bench_median(c0, reps);
            ab[bi][1] = bench_median(ck, reps);
            ab[bi][2] = bench_median(cv, reps);
            ab[bi][3] = bench_median(fs0, reps);
            ab[bi][4] = bench_median(fsk, reps);
            ab[bi][5] = bench_median(fsv, reps);
            ab_equal[bi] = ab_eq;
        }
        double lo = sp[0], hi = sp[0], lov = spv[0], hiv = spv[0];
        for (int r = 1; r < reps; r++) {
            lo = PD_MIN(lo, sp[r]);
            hi = PD_MAX(hi, sp[r]);
            lov = PD_MIN(lov, spv[r]);
            hiv = PD_MAX(hiv, spv[r]);
        }
        const double ms0 = bench_median(s0, reps);
        printf("| %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2fx (%.2f-%.2f) | %.2fx (%.2f-%.2f) | %s | ", b,
               max_k, bench_median(t0, reps), bench_median(tk, reps), bench_median(tv, reps), ms0,
               bench_median(sk, reps), bench_median(sv, reps), bench_median(sp, reps), lo, hi, bench_median(spv, reps),
               lov, hiv, equal ? "yes" : "NO");
        if (b == 1 && sbuf && st[0] > 0)
            printf("%.1f / %.1f (%.2f) |\n", main_step_bytes(m) / (ms0 * 1e-3) / 1e9, bench_median(st, reps),
                   bench_median(bw, reps));
        else
            printf("- |\n");
        fflush(stdout);
    }
    if (g_screen_ab) {
        printf("\nThe lm_head screen against every logit computed (greedy rows; each pair's runs repeated with "
               "mdl_engine_opts.full_logits right after), medians of ms per step:\n\n"
               "| batch | k=0 screen / every logit | k=%d MTP screen / every logit | k=%d verify-only screen / every "
               "logit | outputs equal |\n|---|---|---|---|---|\n",
               max_k, max_k);
        for (int bi = 0; bi < nb; bi++) {
            if (batches[bi] > MAXREQ) continue;
            printf("| %d | %.1f / %.1f (%.2fx) | %.1f / %.1f (%.2fx) | %.1f / %.1f (%.2fx) | %s |\n", batches[bi],
                   ab[bi][0], ab[bi][3], ab[bi][3] / ab[bi][0], ab[bi][1], ab[bi][4],
                   ab[bi][1] > 0 ? ab[bi][4] / ab[bi][1] : 0, ab[bi][2], ab[bi][5], ab[bi][5] / ab[bi][2],
                   ab_equal[bi] ? "yes" : "NO");
        }
    }
    printf("\nVerify-only speed-up of each pair, in run order (to pool runs):\n");
    for (int bi = 0; bi < nb; bi++) {
        if (batches[bi] > MAXREQ) continue;
        printf("- batch %d:", batches[bi]);
        for (int r = 0; r < reps; r++) printf(" %.2f", allv[bi][r]);
        printf("\n");
    }
    free(sbuf);
}

/* The command line: models, sizes and the switches main passes on (the rest land in the g_ globals above). */
typedef struct {
    const char *models[4];
    int n_models, tokens, max_k, n_pairs;
    int batches[8], nb, plan_b[8], npb;
    const char *tok_dir;
} bench_args;

/* Fills a from argv; returns 0, or the exit status after printing why not. */
static int args_parse(int argc, char **argv, bench_args *a)
{
    *a = (bench_args){.tokens = 64, .max_k = 3, .batches = {1, 4, 16}, .nb = 3, .plan_b = {1, 2, 4}, .npb = 3};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "%s needs a value\n", o);
            return 2;
        }
        i++;
        if (!strcmp(o, "--model") && a->n_models < 4) a->models[a->n_models++] = v;
        else if (!strcmp(o, "--tokens")) a->tokens = atoi(v);
        else if (!strcmp(o, "--max-k")) a->max_k = atoi(v);
        else if (!strcmp(o, "--batches")) a->nb = parse_list(v, a->batches, 8);
        else if (!strcmp(o, "--plan-batches")) a->npb = parse_list(v, a->plan_b, 8);
        else if (!strcmp(o, "--tokenizer")) a->tok_dir = v;
        else if (!strcmp(o, "--pairs")) a->n_pairs = PD_MIN(64, atoi(v));
        else if (!strcmp(o, "--draft-vocab")) g_draft_vocab = atoi(v);
        else if (!strcmp(o, "--draft-head")) {
            if (strcmp(v, "int8") && strcmp(v, "auto")) {
                fprintf(stderr, "--draft-head: auto or int8\n");
                return 2;
            }
            g_draft_int8 = !strcmp(v, "int8");
        }
        else if (!strcmp(o, "--screen-ab")) g_screen_ab = atoi(v) != 0;
        else if (!strcmp(o, "--logprobs")) {
            g_logprobs = atoi(v);
            g_logprobs = PD_MAX(-1, PD_MIN(MDL_MAX_TOP_LOGPROBS, g_logprobs));
        }
        else {
            fprintf(stderr, "usage: spec_bench --model DIR [--model DIR]... [--tokens N] [--batches 1,4,16] "
                            "[--max-k 3] [--plan-batches 1,2,4] [--tokenizer DIR] [--pairs R] [--draft-vocab N] "
                            "[--logprobs -1] [--screen-ab 0|1]\n");
            return 2;
        }
    }
    if (!a->n_models || a->tokens < 2 || a->tokens > MAXTOK || a->max_k < 0 || a->max_k > MDL_MAX_SPEC_TOKENS) {
        fprintf(stderr, "spec_bench: --model is required; --tokens 2..%d; --max-k 0..%d\n", MAXTOK,
                MDL_MAX_SPEC_TOKENS);
        return 2;
    }
    return 0;
}

/* Encodes the prompts with the first tokenizer found (all DeepSeek-V3-vocabulary models share it) into pr, each
 * after the BOS id; returns 0 or the exit status. */
static int prompts_load(const bench_args *a, prompts *pr)
{
    char err[1024], path[1200];
    struct stat sb;
    const char *tok_dir = a->tok_dir;
    for (int i = 0; i < a->n_models && !tok_dir; i++) {
        snprintf(path, sizeof path, "%s/tokenizer.json", a->models[i]);
        if (stat(path, &sb) == 0) tok_dir = a->models[i];
    }
    if (!tok_dir) {
        fprintf(stderr, "spec_bench: no tokenizer.json in the model directories; pass --tokenizer DIR\n");
        return 2;
    }
    txt_tokenizer tk;
    if (txt_tokenizer_load(tok_dir, &tk, err, sizeof err) != PD_OK) {
        fprintf(stderr, "tokenizer: %s\n", err);
        return 1;
    }
    for (int i = 0; i < NPROMPTS; i++) {
        int32_t *ids;
        size_t n;
        if (txt_tokenizer_encode(tk, PROMPTS[i], strlen(PROMPTS[i]), 0, &ids, &n) != PD_OK) return 1;
        pr->ids[i] = malloc((n + 1) * sizeof(int32_t));
        pr->ids[i][0] = txt_tokenizer_bos(tk) >= 0 ? txt_tokenizer_bos(tk) : 0;
        memcpy(pr->ids[i] + 1, ids, n * sizeof(int32_t));
        pr->n[i] = (int)n + 1;
        free(ids);
    }
    txt_tokenizer_destroy(tk);
    return 0;
}

/* The main table: per batch size, k = 0 and then per k each kind of drafts against it. */
static void speed_table(mdl_model *m, prompts *pr, const bench_args *a, sink *ref, sink *out)
{
    printf("| batch | k | drafts | decode tok/s | vs k=0 | ms/step | accepted | mean accepted len | output == k=0 |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (int bi = 0; bi < a->nb; bi++) {
        int b = a->batches[bi];
        if (b > MAXREQ) continue;
        pr->ref = NULL;
        result r0 = run(m, pr, b, a->tokens, 0, 0, 0, ref);
        pr->ref = ref;
        printf("| %d | 0 | - | %.1f | 1.00x | %.1f | - | - | - |\n", b, r0.tok_s, r0.step_ms);
        fflush(stdout);
        /* per k: known drafts with the MTP layer running, known drafts alone (verify only), the MTP layer's
         * own drafts, prompt lookup's own drafts (n = 2..4) */
        static const char *const what[4] = {"known (100%), MTP runs", "known (100%), verify only", "MTP (real)",
                                            "n-gram (real)"};
        for (int k = 1; k <= a->max_k; k++)
            for (int v = 0; v < 4; v++) {
                const int mtp = v == 0 || v == 2;
                if (mtp && m->n_mtp < 1) continue;
                result r = run_m(m, pr, b, a->tokens, k, v < 2, 0, mtp ? MDL_SPEC_MTP : MDL_SPEC_NGRAM, out);
                printf("| %d | %d | %s | %.1f | %.2fx | %.1f | %.0f%% | %.2f | %s |\n", b, k, what[v], r.tok_s,
                       r.tok_s / r0.tok_s, r.step_ms, 100 * r.accept, r.mean_len, r.equal ? "yes" : "NO");
                fflush(stdout);
            }
    }
}

/* Decode step time on captured plans against the general path, k = 0 and k = max_k with known drafts. */
static void plan_table(mdl_model *m, prompts *pr, const bench_args *a, sink *ref, sink *out)
{
    const int max_k = a->max_k;
    printf("\nDecode step time, captured plan vs general path (k=0 and k=%d with known drafts):\n\n", max_k);
    printf("| batch | k | plan ms/step | general ms/step | plan / general |\n|---|---|---|---|---|\n");
    for (int bi = 0; bi < a->npb; bi++) {
        int b = a->plan_b[bi];
        pr->ref = NULL;
        (void)run(m, pr, b, a->tokens, 0, 0, 0, ref);
        pr->ref = ref;
        for (int k = 0; k <= max_k; k += max_k > 0 ? max_k : 1) {
            result rp = run(m, pr, b, a->tokens, k, k > 0, 0, out);
            result rg = run(m, pr, b, a->tokens, k, k > 0, -1, out);
            printf("| %d | %d | %.2f | %.2f | %.3f |\n", b, k, rp.step_ms, rg.step_ms, rp.step_ms / rg.step_ms);
            fflush(stdout);
            if (max_k == 0) break;
        }
    }
}

/* What the lm_head costs for m rows: every logit, and greedy rows' argmax through the screen. */
static void lm_head_table(mdl_model *m)
{
    printf("\nlm_head [%d x %d] by rows m: every logit (krn_linear), and greedy rows' argmax through the screen "
           "(krn_linear_argmax, the same tokens; - where this CPU has none):\n\n"
           "| m | krn_linear ms | ms / row | vs m=1 | screen ms | vs m=1 |\n|---|---|---|---|---|---|\n",
           m->cfg.vocab_size, m->cfg.hidden_size);
    const int D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    float *x = malloc((size_t)64 * D * sizeof(float)), *y = malloc((size_t)64 * V * sizeof(float));
    float *scr = malloc(krn_linear_scratch(D) * sizeof(float));
    void *ws = malloc(krn_linear_argmax_scratch(D, 64));
    int32_t amax[64];
    for (int i = 0; i < 64 * D; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    double t1 = 0, s1 = 0;
    const int rows[] = {1, 2, 3, 4, 8, 16, 64};
    for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
        const int reps = 5;
        krn_linear(&m->lm_head, x, rows[ri], y, V, scr);
        double t0 = pd_time_now();
        for (int r = 0; r < reps; r++) krn_linear(&m->lm_head, x, rows[ri], y, V, scr);
        const double ms = 1e3 * (pd_time_now() - t0) / reps;
        double sms = -1;
        if (krn_linear_argmax(&m->lm_head, m->lm_head_norms, V, x, rows[ri], y, V, amax, ws)) {
            t0 = pd_time_now();
            for (int r = 0; r < reps; r++)
                krn_linear_argmax(&m->lm_head, m->lm_head_norms, V, x, rows[ri], y, V, amax, ws);
            sms = 1e3 * (pd_time_now() - t0) / reps;
        }
        if (ri == 0) t1 = ms, s1 = sms;
        if (sms >= 0)
            printf("| %d | %.2f | %.2f | %.2fx | %.2f | %.2fx |\n", rows[ri], ms, ms / rows[ri], ms / t1, sms,
                   sms / s1);
        else
            printf("| %d | %.2f | %.2f | %.2fx | - | - |\n", rows[ri], ms, ms / rows[ri], ms / t1);
    }
    free(x);
    free(y);
    free(scr);
    free(ws);
}

int main(int argc, char **argv)
{
    bench_args a;
    int rc = args_parse(argc, argv, &a);
    if (rc) return rc;
    prompts pr = {0};
    if ((rc = prompts_load(&a, &pr))) return rc;
    char err[1024];
    sink *ref = calloc(1, sizeof *ref), *out = calloc(1, sizeof *out);
    pthread_mutex_init(&ref->mu, NULL);
    pthread_cond_init(&ref->cv, NULL);
    pthread_mutex_init(&out->mu, NULL);
    pthread_cond_init(&out->cv, NULL);
    for (int mi = 0; mi < a.n_models; mi++) {
        mdl_load_opts lo = mdl_load_defaults();
        lo.progress = 0;
        mdl_model *m = NULL;
        if (mdl_model_load(a.models[mi], &lo, &m, err, sizeof err) != PD_OK) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        printf("\n## %s (%d layers, hidden %d, vocab %d), %d greedy tokens per request", a.models[mi], m->n_layers,
               m->cfg.hidden_size, m->cfg.vocab_size, a.tokens);
        if (g_draft_vocab) printf("; MTP draft head pruned to ids [0, %d)", g_draft_vocab);
        if (g_draft_int8) printf("; MTP drafts score with an int8 copy of the head");
        printf("\n\n");
        if (a.n_pairs > 0) {
            pairs(m, &pr, a.batches, a.nb, a.tokens, PD_MAX(a.max_k, 1), a.n_pairs, ref, out);
            bytes_bound(m, PD_MAX(a.max_k, 1));
            mdl_model_destroy(m);
            continue;
        }
        speed_table(m, &pr, &a, ref, out);
        plan_table(m, &pr, &a, ref, out);
        /* why the figures look as they do: what one linear layer costs for m rows (the verify pass runs the
         * model on batch x (k+1) rows; speculation pays only where m rows cost about what one row costs) */
        bytes_bound(m, a.max_k);
        lm_head_table(m);
        mdl_model_destroy(m);
    }
    for (int i = 0; i < NPROMPTS; i++) free(pr.ids[i]);
    free(ref);
    free(out);
    return 0;
}
