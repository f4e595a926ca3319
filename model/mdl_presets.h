/* Named model shapes: the configs `pdserve-model generate` writes and tests build variants from. */
#ifndef MDL_PRESETS_H
#define MDL_PRESETS_H

#include "model/mdl_config.h"

/* tiny (tests; real DeepSeek-V3 vocab), bench (1-2 GB, DeepSeek-V3 proportions), v2-lite and v3 (the published
 * shapes). PD_ERR_NOT_FOUND for an unknown name. */
pd_status mdl_preset_config(const char *name, mdl_config *out);
/* Comma-separated list of preset names, for usage messages. */
const char *mdl_preset_names(void);

#endif
