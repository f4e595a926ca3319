/* pdserve-model tokenize / detokenize / chat-template: the checkpoint's tokenizer and chat template from the
 * command line. Text comes from --text or --file, ids from --ids; results go to stdout (ids as a JSON array). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat_template.h"
#include "model/tokenizer.h"

static int load(const char *dir, mdl_tokenizer *t)
{
    char err[512];
    if (!dir) {
        fprintf(stderr, "missing --tokenizer DIR (a directory with tokenizer.json)\n");
        return 2;
    }
    if (mdl_tokenizer_load(dir, t, err, sizeof err) != PD_OK) {
        fprintf(stderr, "cannot load the tokenizer from %s: %s\n", dir, err);
        return 1;
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL, *text = NULL, *file = NULL;
    int bos = -1, no_special = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--text") && i + 1 < argc) text = argv[++i];
        else if (!strcmp(argv[i], "--file") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--add-bos")) bos = 1;
        else if (!strcmp(argv[i], "--no-bos")) bos = 0;
        else if (!strcmp(argv[i], "--no-special")) no_special = 1;
        else {
            int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr,
                    "usage: pdserve-model tokenize --tokenizer DIR (--text TEXT | --file FILE) [--add-bos | --no-bos]"
                    " [--no-special]\n"
                    "  prints the ids as a JSON array. BOS follows add_bos_token of tokenizer_config.json unless\n"
                    "  --add-bos/--no-bos says otherwise; --no-special reads special tokens' text as plain text.\n");
            return help ? 0 : 2;
        }
    }
    if (!text == !file) {
        fprintf(stderr, "tokenize: give exactly one of --text and --file\n");
        return 2;
    }
    mdl_tokenizer t = NULL;
    int rc = load(dir, &t);
    if (rc) return rc;
    char *buf = NULL;
    size_t len = 0;
    if (file) {
        pd_status st = pd_file_read(file, &buf, &len);
        if (st != PD_OK) {
            fprintf(stderr, "tokenize: cannot read %s: %s\n", file, pd_status_str(st));
            mdl_tokenizer_destroy(t);
            return 1;
        }
        text = buf;
    } else len = strlen(text);
    unsigned flags = (no_special ? MDL_ENCODE_SPLIT_SPECIAL : 0) |
                     ((bos < 0 ? mdl_tokenizer_add_bos_default(t) : bos) ? MDL_ENCODE_ADD_BOS : 0);
    int32_t *ids = NULL;
    size_t n = 0;
    pd_status st = mdl_tokenizer_encode(t, text, len, flags, &ids, &n);
    if (st != PD_OK) {
        fprintf(stderr, "tokenize: %s\n", pd_status_str(st));
        rc = 1;
    } else {
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
        puts("]");
    }
    free(ids);
    free(buf);
    mdl_tokenizer_destroy(t);
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *dir = NULL, *list = NULL;
    int skip = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--ids") && i + 1 < argc) list = argv[++i];
        else if (!strcmp(argv[i], "--skip-special")) skip = 1;
        else {
            int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr,
                    "usage: pdserve-model detokenize --tokenizer DIR --ids 1,2,3 [--skip-special]\n"
                    "  prints the decoded text (ids may also be given as a JSON array).\n");
            return help ? 0 : 2;
        }
    }
    if (!list) {
        fprintf(stderr, "detokenize: missing --ids\n");
        return 2;
    }
    size_t cap = strlen(list) / 2 + 1, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return 1;
    for (const char *p = list; *p;) {
        while (*p == '[' || *p == ']' || *p == ',' || *p == ' ') p++;
        if (!*p) break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "detokenize: '%s' is not a list of ids\n", list);
            free(ids);
            return 2;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    mdl_tokenizer t = NULL;
    int rc = load(dir, &t);
    if (rc) {
        free(ids);
        return rc;
    }
    char *text = NULL;
    size_t len = 0;
    pd_status st = mdl_tokenizer_decode(t, ids, n, skip, &text, &len);
    if (st != PD_OK) {
        fprintf(stderr, "detokenize: %s\n", pd_status_str(st));
        rc = 1;
    } else fwrite(text, 1, len, stdout);
    free(text);
    free(ids);
    mdl_tokenizer_destroy(t);
    return rc;
}
