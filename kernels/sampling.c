/* Token sampling: penalties (repetition over prompt+output, frequency/presence over output), temperature,
 * top-k, top-p, min-p, then a draw from the request's own generator. Scratch is per sampler; a step never
 * allocates. Processing order follows vLLM: penalties, temperature, top-k, top-p, min-p. */
#include "kernels/krn.h"

struct krn_sampler_s {
    int vocab;
    int32_t *counts;  /* [vocab] occurrences in output, zeroed after each use */
    uint8_t *seen;    /* [vocab] present in prompt or output */
    int32_t *order;   /* [vocab] candidate indices */
    float *probs;     /* [vocab] */
};

pd_status krn_sampler_create(int vocab, krn_sampler *out)
{
    struct krn_sampler_s *s = calloc(1, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    s->vocab = vocab;
    s->counts = calloc((size_t)vocab, sizeof *s->counts);
    s->seen = calloc((size_t)vocab, 1);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    if (!s->counts || !s->seen || !s->order || !s->probs) {
        krn_sampler_destroy(s);
        return PD_ERR_NOMEM;
    }
    *out = s;
    return PD_OK;
}

void krn_sampler_destroy(krn_sampler s)
{
    if (!s) return;
    free(s->counts);
    free(s->seen);
    free(s->order);
    free(s->probs);
    free(s);
}

/* The first index holding the largest value, as one scan with `>` gives (NaN is never larger; a NaN at index 0
 * makes it 0). Two passes: 16 running maxima (no compare chain, vectorisable), then the first index equal to
 * their maximum. A full-vocabulary argmax runs for every draft and verified row of speculative decoding. */
int32_t krn_argmax(const float *x, int n)
{
    if (n <= 0) return 0;
    float lane[16];
    for (int j = 0; j < 16; j++) lane[j] = x[0];
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float mx = x[0];
    for (int j = 0; j < 16; j++) mx = lane[j] > mx ? lane[j] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (i = 0; i < n; i++)
        if (x[i] == mx) return i;
    return 0;
}

static void apply_penalties(krn_sampler s, float *logits, const krn_sampling_params *p, const int32_t *prompt,
                            int n_prompt, const int32_t *output, int n_output)
{
    int rep = p->repetition_penalty != 1.0f && p->repetition_penalty > 0;
    int fp = p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
    if (!rep && !fp) return;
    for (int i = 0; i < n_output; i++)
        if (output[i] >= 0 && output[i] < s->vocab) s->counts[output[i]]++;
    if (rep) {
        for (int i = 0; i < n_prompt; i++)
            if (prompt[i] >= 0 && prompt[i] < s->vocab) s->seen[prompt[i]] = 1;
        for (int i = 0; i < n_output; i++)
            if (output[i] >= 0 && output[i] < s->vocab) s->seen[output[i]] = 1;
        /* each distinct token once */
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *t = pass ? output : prompt;
            int n = pass ? n_output : n_prompt;
            for (int i = 0; i < n; i++) {
                int32_t id = t[i];
                if (id < 0 || id >= s->vocab || !s->seen[id]) continue;
                s->seen[id] = 0;
                float l = logits[id];
                logits[id] = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
            }
        }
    }
    for (int i = 0; i < n_output; i++) {
        int32_t id = output[i];
        if (id < 0 || id >= s->vocab || s->counts[id] == 0) continue;
        if (fp) logits[id] -= p->frequency_penalty * (float)s->counts[id] + p->presence_penalty;
        s->counts[id] = 0;
    }
}

/* Sort candidates by probability, descending (indices in order[0..n)). */
static void sort_desc(int32_t *idx, const float *v, int n)
{
    /* heap sort: no recursion, O(n log n), no allocation */
    for (int start = n / 2 - 1; start >= 0; start--) {
        int root = start;
        for (;;) {
            int child = 2 * root + 1;
            if (child >= n) break;
            if (child + 1 < n && v[idx[child + 1]] < v[idx[child]]) child++;
            if (v[idx[child]] < v[idx[root]]) {
                int32_t t = idx[root];
                idx[root] = idx[child];
                idx[child] = t;
                root = child;
            } else break;
        }
    }
    for (int end = n - 1; end > 0; end--) {
        int32_t t = idx[0];
        idx[0] = idx[end];
        idx[end] = t;
        int root = 0;
        for (;;) {
            int child = 2 * root + 1;
            if (child >= end) break;
            if (child + 1 < end && v[idx[child + 1]] < v[idx[child]]) child++;
            if (v[idx[child]] < v[idx[root]]) {
                int32_t tt = idx[root];
                idx[root] = idx[child];
                idx[child] = tt;
                root = child;
            } else break;
        }
    }
}

int32_t krn_sample(krn_sampler s, float *logits, const krn_sampling_params *p, const int32_t *prompt,
                   int n_prompt, const int32_t *output, int n_output, pd_rng *rng, float *logprob,
                   float *probs_out)
{
    const int V = s->vocab;
    apply_penalties(s, logits, p, prompt, n_prompt, output, n_output);

    if (p->temperature <= 1e-6f) {
        int32_t best = krn_argmax(logits, V);
        if (logprob) { /* only the log-probability needs the normaliser: a speculative draft asks just for q */
            float mx = logits[best];
            double sum = 0;
            for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
            *logprob = (float)-log(sum);
        }
        if (probs_out) {
            memset(probs_out, 0, (size_t)V * sizeof(float));
            probs_out[best] = 1.0f;
        }
        return best;
    }

    /* temperature softmax over all tokens */
    float *pr = s->probs;
    float inv_t = 1.0f / p->temperature;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) {
        pr[i] = expf((logits[i] - mx) * inv_t);
        sum += pr[i];
    }
    for (int i = 0; i < V; i++) pr[i] = (float)(pr[i] / sum);

    int filtered = (p->top_k > 0 && p->top_k < V) || (p->top_p > 0 && p->top_p < 1.0f) || p->min_p > 0;
    int n = V;
    int32_t *ord = s->order;
    if (filtered) {
        float pmax = 0;
        for (int i = 0; i < V; i++) pmax = pr[i] > pmax ? pr[i] : pmax;
        /* min-p and a generous pre-cut keep the sort small */
        float floor_p = p->min_p > 0 ? p->min_p * pmax : 0.0f;
        n = 0;
        for (int i = 0; i < V; i++)
            if (pr[i] >= floor_p && pr[i] > 0) ord[n++] = i;
        sort_desc(ord, pr, n);
        if (p->top_k > 0 && p->top_k < n) n = p->top_k;
        if (p->top_p > 0 && p->top_p < 1.0f) {
            double c = 0, tot = 0;
            for (int i = 0; i < n; i++) tot += pr[ord[i]];
            int keep = n;
            for (int i = 0; i < n; i++) {
                c += pr[ord[i]] / tot;
                if (c >= p->top_p) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
        }
        if (n < 1) n = 1;
        double tot = 0;
        for (int i = 0; i < n; i++) tot += pr[ord[i]];
        /* renormalise the kept set; everything else has probability 0 */
        float kept_inv = (float)(1.0 / tot);
        if (probs_out) memset(probs_out, 0, (size_t)V * sizeof(float));
        double u = pd_rng_uniform(rng), c = 0;
        int32_t pick = ord[n - 1];
        for (int i = 0; i < n; i++) {
            c += pr[ord[i]] * kept_inv;
            if (u < c) {
                pick = ord[i];
                break;
            }
        }
        if (probs_out)
            for (int i = 0; i < n; i++) probs_out[ord[i]] = pr[ord[i]] * kept_inv;
        if (logprob) *logprob = logf(pr[pick] * kept_inv);
        return pick;
    }

    double u = pd_rng_uniform(rng), c = 0;
    int32_t pick = V - 1;
    for (int i = 0; i < V; i++) {
        c += pr[i];
        if (u < c) {
            pick = i;
            break;
        }
    }
    while (pr[pick] == 0 && pick > 0) pick--; /* rounding at the tail must not pick an impossible token */
    if (probs_out) memcpy(probs_out, pr, (size_t)V * sizeof(float));
    if (logprob) *logprob = logf(pr[pick]);
    return pick;
}
