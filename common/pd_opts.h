/* Options of an executable: one table, filled from a YAML config file (--config FILE) and then from
 * command-line flags that override it. Names follow vLLM where the meaning is the same; in YAML a key may be
 * written with dashes or underscores (max-num-seqs or max_num_seqs). */
#ifndef PD_OPTS_H
#define PD_OPTS_H

#include "common/pd_common.h"

typedef enum {
    PD_OPT_STR,    /* char *: strdup'd, owned by the caller after parsing (free with pd_opts_free) */
    PD_OPT_INT,    /* int */
    PD_OPT_DOUBLE, /* double */
    PD_OPT_BOOL,   /* int 0/1; a flag without value means true; --no-NAME means false */
    PD_OPT_SIZE,   /* uint64_t bytes; accepts 512M, 4G, 1.5GiB */
} pd_opt_type;

typedef struct {
    const char *name; /* without dashes, e.g. "max-num-seqs" */
    pd_opt_type type;
    void *dst;
    const char *help;
    double min, max;  /* numeric bounds (ignored when min == max) */
} pd_opt;

/* Parses argv (argv[0] is the program) with an optional --config FILE read first. Returns PD_OK,
 * PD_ERR_INVALID with a message naming the option in err, or PD_ERR_NOT_FOUND for --help (usage printed). */
pd_status pd_opts_parse(const pd_opt *opts, int n, int argc, char **argv, const char *usage, char *err,
                        size_t errlen);
/* Loads a YAML mapping into the table (used by pd_opts_parse; exposed for tests). */
pd_status pd_opts_load_yaml(const pd_opt *opts, int n, const char *path, char *err, size_t errlen);
/* Applies one name=value (used by both sources). */
pd_status pd_opts_set(const pd_opt *opts, int n, const char *name, const char *value, char *err, size_t errlen);
void pd_opts_print_usage(const pd_opt *opts, int n, const char *usage, FILE *f);
void pd_opts_free(const pd_opt *opts, int n);
pd_status pd_parse_size(const char *s, uint64_t *out);

#endif
