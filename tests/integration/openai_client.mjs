// The official OpenAI client (npm "openai"), unmodified, against pdserve-router: completions and chat, streamed
// and not, and an error the client must surface as the right exception class. Usage: node openai_client.mjs PORT|URL
// MODEL [API_KEY]: PORT is http://127.0.0.1:PORT/v1, a URL is the base URL itself (https://localhost:PORT/v1 with
// NODE_EXTRA_CA_CERTS naming the CA); with a key, the router requires it, and a client with a wrong key gets
// AuthenticationError.
import OpenAI from "openai";

const [port, model, apiKey] = process.argv.slice(2);
const baseURL = /^https?:/.test(port) ? port : `http://127.0.0.1:${port}/v1`;
const client = new OpenAI({ baseURL, apiKey: apiKey ?? "unused", maxRetries: 0 });
let passed = 0, failed = 0;
function check(cond, what) {
  if (cond) passed++;
  else { failed++; console.log("FAIL:", what); }
}

const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === model, "models.list");

const c = await client.completions.create({ model, prompt: "The capital of France is", max_tokens: 8, temperature: 0 });
check(c.object === "text_completion" && c.choices.length === 1 && typeof c.choices[0].text === "string" &&
      c.usage.completion_tokens >= 1 && c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens,
      "completions.create: " + JSON.stringify(c));

let text = "", chunks = 0, usage = null;
const cs = await client.completions.create({ model, prompt: "The capital of France is", max_tokens: 8, temperature: 0,
                                             stream: true, stream_options: { include_usage: true } });
for await (const ch of cs) {
  chunks++;
  if (ch.usage) usage = ch.usage;
  for (const x of ch.choices) text += x.text;
}
check(text === c.choices[0].text && chunks >= 2 && usage && usage.completion_tokens === c.usage.completion_tokens,
      `streamed completion equals the non-streamed one: ${JSON.stringify(text)} vs ${JSON.stringify(c.choices[0].text)}`);

const chat = await client.chat.completions.create({ model, messages: [{ role: "system", content: "You are terse." },
                                                                      { role: "user", content: "Say hi" }],
                                                    max_tokens: 6, temperature: 0 });
check(chat.object === "chat.completion" && chat.choices[0].message.role === "assistant" &&
      typeof chat.choices[0].message.content === "string" && chat.choices[0].finish_reason, "chat.completions.create");

let ctext = "", role = null, finish = null;
const chs = await client.chat.completions.create({ model, messages: [{ role: "system", content: "You are terse." },
                                                                     { role: "user", content: "Say hi" }],
                                                   max_tokens: 6, temperature: 0, stream: true });
for await (const ch of chs) {
  const d = ch.choices[0]?.delta ?? {};
  if (d.role) role = d.role;
  if (d.content) ctext += d.content;
  if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
}
check(ctext === chat.choices[0].message.content && finish === chat.choices[0].finish_reason,
      `streamed chat equals the non-streamed one: ${JSON.stringify(ctext)}`);

try {
  await client.completions.create({ model, prompt: "hi", max_tokens: 10000000 });
  check(false, "an over-long request must fail");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.error?.param === "max_tokens",
        "BadRequestError for max_tokens: " + e);
}
try {
  await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
  check(false, "an unknown model must fail");
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && /does not exist/.test(e.message), "unknown model: " + e);
}
if (apiKey) {
  const wrong = new OpenAI({ baseURL, apiKey: apiKey + "-wrong", maxRetries: 0 });
  try {
    await wrong.models.list();
    check(false, "a wrong API key must fail");
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === "invalid_api_key",
          "AuthenticationError for a wrong key: " + e);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
