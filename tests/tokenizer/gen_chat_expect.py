#!/usr/bin/env python3
"""Reference renderings of the chat-template cases with Python's jinja2 configured exactly as transformers'
apply_chat_template does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, its own tojson
with ensure_ascii=False, raise_exception, strftime_now; tools=None and documents=None unless given).
Usage: gen_chat_expect.py CASES.json TEMPLATES_DIR OUT.json [COMMITTED.json]
With COMMITTED, exits non-zero when the committed expectations differ from the fresh ones."""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


class Generation(Extension):
    """transformers' AssistantTracker, minus the tracking: renders the body of {% generation %}."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def main():
    cases_path, tdir, out_path = sys.argv[1:4]
    committed = sys.argv[4] if len(sys.argv) > 4 else None
    cases = json.load(open(cases_path, encoding="utf-8"))
    out = {}
    for c in cases:
        src = c.get("source")
        if src is None:
            src = open(f"{tdir}/{c['template']}.jinja", encoding="utf-8").read()
        kwargs = {"bos_token": BOS, "eos_token": EOS, "tools": None, "documents": None}
        kwargs.update(c.get("extra", {}))
        try:
            out[c["name"]] = {"text": compile_template(src).render(messages=c["messages"],
                                                                    add_generation_prompt=c["add_generation_prompt"],
                                                                    **kwargs)}
        except jinja2.exceptions.TemplateError as e:
            out[c["name"]] = {"error": str(e)}
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)  # as gen_tokenizer_expect.js does: either may run first
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"generator": f"jinja2 {jinja2.__version__}", "cases": out}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} renderings to {out_path}")
    if committed:
        old = json.load(open(committed, encoding="utf-8"))["cases"]
        bad = [k for k in out if old.get(k) != out[k]] + [k for k in old if k not in out]
        for k in bad:
            print(f"{k}: differs from the committed expectations")
        if bad:
            print(f"committed {committed} is stale; regenerate it with this script")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
