/* Subcommands of pdserve-model. Each takes the arguments after its name (argv[0] is the subcommand) and
 * returns the process exit code: 0 success, 1 failure (after printing why), 2 usage error. */
#ifndef TOOLS_COMMANDS_H
#define TOOLS_COMMANDS_H

typedef struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
} tool_command;

/* The table lives in pdserve_model.c; each command is defined in its own cmd_*.c file. */
extern const tool_command tool_commands[];

#endif
