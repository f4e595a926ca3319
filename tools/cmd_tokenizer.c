/* pdserve-model tokenize / detokenize / chat-template: the checkpoint's tokenizer and chat template from the
 * command line. Text comes from --text or --file, ids from --ids; results go to stdout (ids as a JSON array). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/txt_chat_template.h"
#include "text/txt_tokenizer.h"

/* An unknown flag or a request for help: prints text to stderr or stdout; returns the exit status (2 or 0). */
static int usage(const char *arg, const char *text)
{
    const int help = !strcmp(arg, "--help") || !strcmp(arg, "-h");
    fputs(text, help ? stdout : stderr);
    return help ? 0 : 2;
}

static int load(const char *dir, txt_tokenizer *t)
{
    char err[512];
    if (!dir) {
        fprintf(stderr, "missing --tokenizer DIR (a directory with tokenizer.json)\n");
        return 2;
    }
    if (txt_tokenizer_load(dir, t, err, sizeof err) != PD_OK) {
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
        else
            return usage(
                argv[i],
                "usage: pdserve-model tokenize --tokenizer DIR (--text TEXT | --file FILE) [--add-bos | --no-bos]"
                " [--no-special]\n"
                "  prints the ids as a JSON array. BOS follows add_bos_token of tokenizer_config.json unless\n"
                "  --add-bos/--no-bos says otherwise; --no-special reads special tokens' text as plain text.\n");
    }
    if (!text == !file) {
        fprintf(stderr, "tokenize: give exactly one of --text and --file\n");
        return 2;
    }
    txt_tokenizer t = NULL;
    int rc = load(dir, &t);
    if (rc) return rc;
    char *buf = NULL;
    size_t len = 0;
    if (file) {
        pd_status st = pd_file_read(file, &buf, &len);
        if (st != PD_OK) {
            fprintf(stderr, "tokenize: cannot read %s: %s\n", file, pd_status_str(st));
            txt_tokenizer_destroy(t);
            return 1;
        }
        text = buf;
    } else len = strlen(text);
    unsigned flags = (no_special ? TXT_ENCODE_SPLIT_SPECIAL : 0) |
                     ((bos < 0 ? txt_tokenizer_add_bos_default(t) : bos) ? TXT_ENCODE_ADD_BOS : 0);
    int32_t *ids = NULL;
    size_t n = 0;
    pd_status st = txt_tokenizer_encode(t, text, len, flags, &ids, &n);
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
    txt_tokenizer_destroy(t);
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
        else
            return usage(argv[i],
                         "usage: pdserve-model detokenize --tokenizer DIR --ids 1,2,3 [--skip-special]\n"
                         "  prints the decoded text (ids may also be given as a JSON array).\n");
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
    txt_tokenizer t = NULL;
    int rc = load(dir, &t);
    if (rc) {
        free(ids);
        return rc;
    }
    char *text = NULL;
    size_t len = 0;
    pd_status st = txt_tokenizer_decode(t, ids, n, skip, &text, &len);
    if (st != PD_OK) {
        fprintf(stderr, "detokenize: %s\n", pd_status_str(st));
        rc = 1;
    } else fwrite(text, 1, len, stdout);
    free(text);
    free(ids);
    txt_tokenizer_destroy(t);
    return rc;
}

int cmd_chat_template(int argc, char **argv)
{
    const char *dir = NULL, *msgs_path = NULL, *tmpl_path = NULL, *vars = NULL;
    int agp = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--messages") && i + 1 < argc) msgs_path = argv[++i];
        else if (!strcmp(argv[i], "--template") && i + 1 < argc) tmpl_path = argv[++i];
        else if (!strcmp(argv[i], "--vars") && i + 1 < argc) vars = argv[++i];
        else if (!strcmp(argv[i], "--add-generation-prompt")) agp = 1;
        else
            return usage(
                argv[i],
                "usage: pdserve-model chat-template --tokenizer DIR --messages messages.json\n"
                "                                   [--add-generation-prompt] [--vars '{\"thinking\": true}']\n"
                "                                   [--template FILE.jinja]\n"
                "  prints the prompt rendered with the checkpoint's chat template (tokenizer_config.json), or\n"
                "  with FILE.jinja (bos/eos tokens still from DIR when given). messages.json is a JSON array of\n"
                "  {\"role\", \"content\", ...} objects; --vars adds template variables such as tools.\n");
    }
    if (!msgs_path || (!dir && !tmpl_path)) {
        fprintf(stderr, "chat-template: --messages and --tokenizer (or --template) are required\n");
        return 2;
    }
    char err[512] = "", *txt = NULL, *src = NULL, *out = NULL;
    size_t n = 0;
    int rc = 1;
    cJSON *msgs = NULL, *extra = NULL;
    txt_chat_template t = NULL;
    txt_tokenizer tok = NULL;
    pd_status st = pd_file_read(msgs_path, &txt, &n);
    if (st != PD_OK) {
        fprintf(stderr, "chat-template: cannot read %s: %s\n", msgs_path, pd_status_str(st));
        goto done;
    }
    if (!cJSON_IsArray(msgs = cJSON_Parse(txt))) {
        fprintf(stderr, "chat-template: %s is not a JSON array of messages\n", msgs_path);
        goto done;
    }
    if (vars && !cJSON_IsObject(extra = cJSON_Parse(vars))) {
        fprintf(stderr, "chat-template: --vars must be a JSON object\n");
        rc = 2;
        goto done;
    }
    if (tmpl_path) {
        if ((st = pd_file_read(tmpl_path, &src, &n)) != PD_OK) {
            fprintf(stderr, "chat-template: cannot read %s: %s\n", tmpl_path, pd_status_str(st));
            goto done;
        }
        if (dir && load(dir, &tok)) goto done;
        st = txt_chat_template_create(src, tok ? txt_tokenizer_bos_str(tok) : "", tok ? txt_tokenizer_eos_str(tok) : "",
                                      &t, err, sizeof err);
    } else st = txt_chat_template_load(dir, &t, err, sizeof err);
    if (st != PD_OK) {
        fprintf(stderr, "chat-template: cannot load the template: %s\n", err);
        goto done;
    }
    if ((st = txt_chat_template_render(t, msgs, agp, extra, &out, &n, err, sizeof err)) != PD_OK) {
        fprintf(stderr, "chat-template: %s\n", err);
        goto done;
    }
    fwrite(out, 1, n, stdout);
    rc = 0;
done:
    free(out);
    txt_chat_template_destroy(t);
    txt_tokenizer_destroy(tok);
    cJSON_Delete(extra);
    cJSON_Delete(msgs);
    free(src);
    free(txt);
    return rc;
}
