/* pdserve-model: the model tool. Dispatches to the subcommands in tools/cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "tools/commands.h"

int cmd_version(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_chat_template(int argc, char **argv);

const tool_command tool_commands[] = {
    {"generate", cmd_generate, "write a random-weight checkpoint of a preset shape (official layout)"},
    {"inspect", cmd_inspect, "architecture, parameter counts, KV bytes per token, dtypes"},
    {"logits", cmd_logits, "logits at every prompt position (prefill or decode path, MTP) as JSON"},
    {"run", cmd_run, "offline generation from token ids or text"},
    {"version", cmd_version, "print version and CPU features"},
    {"tokenize", cmd_tokenize, "text -> token ids with the checkpoint's tokenizer"},
    {"detokenize", cmd_detokenize, "token ids -> text"},
    {"chat-template", cmd_chat_template, "render messages with the checkpoint's chat template"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: pdserve-model <command> [options]\n\ncommands:\n");
    for (const tool_command *c = tool_commands; c->name; c++) fprintf(f, "  %-14s %s\n", c->name, c->summary);
    fprintf(f, "\nRun 'pdserve-model <command> --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const tool_command *c = tool_commands; c->name; c++)
        if (!strcmp(c->name, argv[1])) return c->main(argc - 1, argv + 1);
    fprintf(stderr, "pdserve-model: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
