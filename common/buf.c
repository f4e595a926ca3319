/* pd_buf: the one growable byte buffer of the code base (text being built up, a rendered page). Appends either
 * succeed whole or fail with PD_ERR_NOMEM and leave the contents as they were; nothing here aborts. */
#include <stdarg.h>
#include <string.h>

#include "common/pd_common.h"

/* Room for n more bytes and the NUL after them. */
static pd_status buf_reserve(pd_buf *b, size_t n)
{
    size_t need;
    if (!pd_add_ok(b->len, n, &need) || !pd_add_ok(need, 1, &need)) goto fail_nomem;
    if (need <= b->cap) return PD_OK;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < need) {
        if (!pd_mul_ok(nc, 2, &nc)) goto fail_nomem;
    }
    char *d = realloc(b->data, nc);
    if (!d) goto fail_nomem;
    b->data = d;
    b->cap = nc;
    return PD_OK;
fail_nomem:
    b->failed = 1;
    return PD_ERR_NOMEM;
}

pd_status pd_buf_append(pd_buf *b, const void *s, size_t n)
{
    if (b->failed) return PD_ERR_NOMEM;
    if (buf_reserve(b, n) != PD_OK) return PD_ERR_NOMEM;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return PD_OK;
}

pd_status pd_buf_printf(pd_buf *b, const char *fmt, ...)
{
    if (b->failed) return PD_ERR_NOMEM;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        if (b->data) b->data[b->len] = '\0';
        b->failed = 1;
        return PD_ERR_NOMEM;
    }
    if (b->data && (size_t)n < b->cap - b->len) {
        b->len += (size_t)n;
        return PD_OK;
    }
    if (b->data) b->data[b->len] = '\0'; /* the cut-short attempt wrote past len */
    if (buf_reserve(b, (size_t)n) != PD_OK) return PD_ERR_NOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return PD_OK;
}

void pd_buf_reset(pd_buf *b)
{
    b->len = 0;
    b->failed = 0;
    if (b->data) b->data[0] = '\0';
}

void pd_buf_free(pd_buf *b)
{
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}
