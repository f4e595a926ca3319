/* Jinja chat templates. Source -> tokens (whitespace control, trim_blocks, lstrip_blocks as transformers sets
 * them) -> AST, once at create; render evaluates the AST over values converted from cJSON, all of them in one
 * arena per render that is freed whole. Errors unwind with longjmp to the entry point, which owns every
 * allocation, so nothing leaks on any path. Python/jinja2 semantics are followed where the output depends on
 * them: truthiness, str() and repr() of values, tojson (ensure_ascii=False), loop scoping, namespace(). This file is
 * the entry points; the steps are template_lex.c, template_parse.c, template_eval.c and template_builtins.c. */
#include "text/template_internal.h"

#include <string.h>

/* A render's default budget beyond its input (see txt_chat_template_set_budget). */
#define JT_MAX_STEPS ((size_t)10 * 1000 * 1000)
#define JT_MAX_BYTES ((size_t)256 << 20)
size_t txt__max_steps = JT_MAX_STEPS, txt__max_bytes = JT_MAX_BYTES;

void txt_chat_template_set_budget(size_t max_steps, size_t max_bytes)
{
    txt__max_steps = max_steps ? max_steps : JT_MAX_STEPS;
    txt__max_bytes = max_bytes ? max_bytes : JT_MAX_BYTES;
}

/* ---- public API ---- */

static pd_status render_impl(txt_chat_template t, const cJSON *messages, int add_generation_prompt,
                             const cJSON *extra, char **out, size_t *len, jctx *jc)
{
    arena ar = {NULL};
    interp in;
    jc->ar = &ar;
    jc->kind = JE_NONE;
    jc->bytes = jc->steps = 0;
    jc->max_bytes = jc->max_steps = SIZE_MAX; /* the input's own values are not the template's work */
    in.c = jc;
    in.out = (sbuf){jc, NULL, 0, 0, 1};
    in.depth = 0;
    if (setjmp(jc->jb)) {
        free(in.out.p);
        txt__arena_free(&ar);
        return PD_ERR_INVALID;
    }
    scope top = {NULL, {.t = V_DICT}};
    txt__dict_set(jc, &top.vars, "messages", 8, txt__from_json(jc, messages));
    txt__dict_set(jc, &top.vars, "add_generation_prompt", 21, txt__v_bool(add_generation_prompt));
    txt__dict_set(jc, &top.vars, "bos_token", 9, txt__v_str(jc, t->bos, strlen(t->bos)));
    txt__dict_set(jc, &top.vars, "eos_token", 9, txt__v_str(jc, t->eos, strlen(t->eos)));
    txt__dict_set(jc, &top.vars, "tools", 5, &txt__none);     /* transformers passes tools=None, documents=None */
    txt__dict_set(jc, &top.vars, "documents", 9, &txt__none);
    const cJSON *x;
    if (cJSON_IsObject(extra))
        cJSON_ArrayForEach(x, extra) txt__dict_set(jc, &top.vars, x->string, strlen(x->string), txt__from_json(jc, x));
    jc->max_bytes = jc->bytes + txt__max_bytes;
    jc->max_steps = txt__max_steps;
    txt__exec_list(&in, &top, &t->body);
    if (!in.out.p) txt__sb_add(&in.out, "", 0);
    *out = in.out.p;
    *len = in.out.n;
    txt__arena_free(&ar);
    return PD_OK;
}

pd_status txt_chat_template_render(txt_chat_template t, const cJSON *messages, int add_generation_prompt,
                                   const cJSON *extra_vars, char **out, size_t *len, char *err, size_t errlen)
{
    jctx jc;
    if (!cJSON_IsArray(messages)) {
        if (err && errlen) snprintf(err, errlen, "messages must be a JSON array");
        return PD_ERR_INVALID;
    }
    pd_status st = render_impl(t, messages, add_generation_prompt, extra_vars, out, len, &jc);
    if (st != PD_OK) {
        if (jc.kind == JE_NOMEM) st = PD_ERR_NOMEM;
        if (err && errlen) snprintf(err, errlen, "%s", jc.msg);
        if (jc.kind != JE_RAISE) pd_error("chat template: %s", jc.msg);
    }
    return st;
}

void txt_chat_template_destroy(txt_chat_template t)
{
    if (!t) return;
    txt__arena_free(&t->ar);
    free(t->bos);
    free(t->eos);
    free(t);
}

pd_status txt_chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                                   txt_chat_template *out, char *err, size_t errlen)
{
    txt_chat_template t = calloc(1, sizeof *t);
    if (!t || !(t->bos = strdup(bos_token ? bos_token : "")) || !(t->eos = strdup(eos_token ? eos_token : ""))) {
        txt_chat_template_destroy(t);
        if (err && errlen) snprintf(err, errlen, "out of memory");
        pd_error("chat template: out of memory");
        return PD_ERR_NOMEM;
    }
    jctx jc;
    jc.ar = &t->ar;
    jc.kind = JE_NONE;
    jc.bytes = jc.steps = 0;
    jc.max_bytes = jc.max_steps = SIZE_MAX;
    if (setjmp(jc.jb)) {
        pd_status st = jc.kind == JE_NOMEM ? PD_ERR_NOMEM : jc.kind == JE_SYNTAX ? PD_ERR_FORMAT : PD_ERR_UNSUPPORTED;
        if (err && errlen) snprintf(err, errlen, "%s", jc.msg);
        pd_error("chat template: %s", jc.msg);
        txt_chat_template_destroy(t);
        return st;
    }
    tokvec tv = {&jc, NULL, 0, 0};
    /* The AST points into the source text: keep a copy for the template's lifetime. */
    txt__lex(&tv, txt__jstrndup(&jc, source, strlen(source)));
    parser p = {&jc, tv.v, 0, 0};
    const char *stopped = NULL;
    txt__parse_body(&p, &t->body, NULL, 0, &stopped);

    /* Test render over a typical conversation: what the interpreter cannot do shows up now, not on a request.
     * raise_exception is the template rejecting the sample, which is not a fault of ours. */
    static const char *const SAMPLES[] = {
        "[{\"role\":\"system\",\"content\":\"You are helpful.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
        "{\"role\":\"assistant\",\"content\":\"Hello!\"},{\"role\":\"user\",\"content\":\"How are you?\"}]",
        "[{\"role\":\"user\",\"content\":\"Hi\"}]"};
    for (size_t i = 0; i < PD_ARRAY_LEN(SAMPLES); i++) {
        cJSON *msgs = cJSON_Parse(SAMPLES[i]);
        char *o = NULL;
        size_t ol;
        jctx rc;
        pd_status st = msgs ? render_impl(t, msgs, 1, NULL, &o, &ol, &rc) : PD_ERR_NOMEM;
        cJSON_Delete(msgs);
        free(o);
        /* Only what the interpreter lacks fails the load: a runtime error over the sample (a field the sample
         * does not have, raise_exception) is about the data, and jinja2 would fail the same way. */
        if (st != PD_OK && (!msgs || rc.kind == JE_UNSUPPORTED || rc.kind == JE_NOMEM)) {
            st = !msgs || rc.kind == JE_NOMEM ? PD_ERR_NOMEM : PD_ERR_UNSUPPORTED;
            if (err && errlen)
                snprintf(err, errlen, "cannot render a sample conversation: %s", msgs ? rc.msg : "out of memory");
            pd_error("chat template: cannot render a sample conversation: %s", msgs ? rc.msg : "out of memory");
            txt_chat_template_destroy(t);
            return st;
        }
    }
    *out = t;
    return PD_OK;
}

static const char *cfg_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        return cJSON_IsString(c) ? c->valuestring : NULL;
    }
    return NULL;
}

pd_status txt_chat_template_load(const char *dir, txt_chat_template *out, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *txt = NULL, *jinja = NULL;
    size_t n;
    cJSON *cfg = NULL;
    pd_status st = pd_file_read(path, &txt, &n);
    if (st == PD_OK) {
        cfg = cJSON_Parse(txt);
        free(txt);
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            if (err && errlen) snprintf(err, errlen, "%s is not a JSON object", path);
            pd_error("chat template: %s is not a JSON object", path);
            return PD_ERR_FORMAT;
        }
    } else if (st != PD_ERR_NOT_FOUND) {
        if (err && errlen) snprintf(err, errlen, "cannot read %s: %s", path, pd_status_str(st));
        pd_error("chat template: cannot read %s: %s", path, pd_status_str(st));
        return st;
    }
    const char *src = NULL;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (pd_file_read(path, &jinja, &n) == PD_OK) src = jinja;
    else {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *x;
        if (cJSON_IsString(ct)) src = ct->valuestring;
        else if (cJSON_IsArray(ct))
            cJSON_ArrayForEach(x, ct)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(x, "name"),
                            *tp = cJSON_GetObjectItemCaseSensitive(x, "template");
                if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tp))
                    src = tp->valuestring;
            }
    }
    if (!src) {
        if (err && errlen) snprintf(err, errlen, "%s has no chat_template", dir);
        pd_error("chat template: %s has no chat_template (tokenizer_config.json or chat_template.jinja)", dir);
        cJSON_Delete(cfg);
        return PD_ERR_NOT_FOUND;
    }
    st = txt_chat_template_create(src, cfg_token(cfg, "bos_token"), cfg_token(cfg, "eos_token"), out, err, errlen);
    free(jinja);
    cJSON_Delete(cfg);
    return st;
}
