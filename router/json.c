/* Out of memory while building JSON, counted: cJSON allocates through json_malloc, which counts the allocations
 * that failed, so a builder can check once at its end whether what it built is whole (rt_req.h). */
#include <stdlib.h>

#include "router/rt_req.h"

static unsigned long json_failures; /* the loop thread is the only one building JSON in the router */

static void *json_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p) json_failures++;
    return p;
}

void rt_json_track(void)
{
    cJSON_Hooks h = {.malloc_fn = json_malloc, .free_fn = free};
    cJSON_InitHooks(&h);
}

unsigned long rt_json_failures(void)
{
    return json_failures;
}
