"""The PD path end to end: router + prefill + decode against router + colocated decode, on the tiny model with
the real DeepSeek-V3 tokenizer. Greedy PD output must equal colocated output token for token."""
import concurrent.futures, os, random, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
logdir = tempfile.mkdtemp(prefix="pd_test_")
check = harness.Checks()


# a small token budget and blocks force chunked prefill and prompts spanning many blocks
server_args = ["--max-num-batched-tokens", "64", "--block-size", "16", "--max-model-len", "1024"]
pd = harness.Deployment(args.build, args.model, "pd", logdir, server_args)
co = harness.Deployment(args.build, args.model, "colocated", logdir, server_args)
try:
    rng = random.Random(7)
    words = ("the of and a to in is you that it he was for on are as with his they I at be this have from or one "
             "had by word but not what all were we when your can said there use an each which she do how their if "
             "will up other about out many then them these so some her would make like him into time has look two "
             "more write go see number no way could people my than first water been call who oil its now find long "
             "down day did get come made may part 中文 日本語 한국어 🙂 -- 123 4567").split()
    prompts = []
    for i in range(52):
        n = rng.choice([1, 3, 8, 20, 40, 70, 130])  # up to ~300 tokens: many 16-token blocks, > 64-token budget
        if i % 4 == 3:
            prompts.append([rng.randrange(0, 128000) for _ in range(n * 2)])  # token ids
        else:
            prompts.append(" ".join(rng.choice(words) for _ in range(n)))

    def check_offsets(toks, offs):
        # each token's text starts where the earlier ones end (vLLM's text_offset), across stream chunks too
        want = [sum(len(t) for t in toks[:i]) for i in range(len(toks))]
        assert offs == want, ("text_offset", offs, want, toks)

    def complete(dep, prompt, stream):
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0,
                "ignore_eos": True}
        if not stream:
            st, o, _ = harness.request(dep.port, "POST", "/v1/completions", body)
            assert st == 200, (st, o)
            ch = o["choices"][0]
            check_offsets(ch["logprobs"]["tokens"], ch["logprobs"]["text_offset"])
            return ch["logprobs"]["tokens"], ch["text"], o["usage"]
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        st, evs, done, raw = harness.sse(dep.port, "/v1/completions", body)
        assert st == 200 and done, (st, raw[:300])
        toks, offs, text, usage = [], [], "", None
        for e in evs:
            if e.get("usage"):
                usage = e["usage"]
            for c in e["choices"]:
                text += c["text"]
                if c.get("logprobs"):
                    toks += c["logprobs"]["tokens"]
                    offs += c["logprobs"]["text_offset"]
        check_offsets(toks, offs)
        return toks, text, usage

    # 1. PD == colocated, greedy, streamed and not
    equal = 0
    base = []
    for i, pr in enumerate(prompts):
        stream = i % 2 == 1
        a = complete(pd, pr, stream)
        b = complete(co, pr, stream)
        base.append(b)
        ok = a[0] == b[0] and a[1] == b[1] and a[2]["completion_tokens"] == 12 == len(a[0])
        equal += ok
        if not ok:
            print("mismatch on prompt %d (stream=%s):\n  pd %r\n  co %r" % (i, stream, a[:2], b[:2]))
    check(equal == len(prompts), "PD == colocated on %d/%d prompts" % (equal, len(prompts)))

    # 1b. speculative decoding through the real servers: MTP drafts on the PD path (the prefill instance hands over
    # the MTP cache and hidden state), prompt-lookup drafts colocated; greedy output unchanged, drafts really made
    specdir = os.path.join(logdir, "spec")
    os.makedirs(specdir)
    for mode, cfg in (("pd", '{"method":"mtp","num_speculative_tokens":2}'),
                      ("colocated", '{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_min":1,'
                                    '"prompt_lookup_max":3}')):
        dep = harness.Deployment(args.build, args.model, mode, specdir, server_args + ["--speculative-config", cfg])
        try:
            same = 0
            for i, pr in enumerate(prompts[:20]):
                a = complete(dep, pr, i % 2 == 1)
                same += a[0] == base[i][0] and a[1] == base[i][1]
            # logit_bias with speculation: verify rows and drafts are processed as plain decode rows are
            st, o, _ = harness.request(dep.port, "POST", "/v1/completions",
                                       {"prompt": [3, 5, 7], "max_tokens": 6, "temperature": 0, "logit_bias": {"1000": 100}})
            st2, w, _ = harness.request(dep.port, "POST", "/detokenize", {"tokens": [1000] * 6})
            check(st == 200 and o["choices"][0]["text"] == w["prompt"], "%s %s: logit_bias +100 on 1000 gives %r"
                  % (mode, cfg, o["choices"][0]["text"] if st == 200 else o))
            st, metrics, _ = harness.request(dep.decode_port, "GET", "/metrics")
            drafted = sum(float(l.split()[-1]) for l in metrics.decode().splitlines()
                          if l.startswith("pdserve_spec_decode_num_draft_tokens_total"))
            print("%s %s: %d/20 prompts unchanged, %d drafts" % (mode, cfg, same, drafted))
            check(same == 20 and drafted > 0, "%s %s: greedy output unchanged on %d/20 prompts, %d drafts"
                  % (mode, cfg, same, drafted))
        finally:
            dep.close()

    # 2. 16 concurrent streaming requests: framing and usage
    def one(i):
        body = {"prompt": prompts[i], "max_tokens": 10 + i % 5, "temperature": 0.8, "seed": i, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True}
        return i, harness.sse(pd.port, "/v1/completions", body)

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(16)))
    good = 0
    for i, (st, evs, done, raw) in results:
        finals = [c for e in evs for c in e["choices"] if c.get("finish_reason")]
        usage = [e["usage"] for e in evs if e.get("usage")]
        ids = {e["id"] for e in evs}
        ntext = sum(1 for e in evs for c in e["choices"] if c.get("finish_reason") is None)
        ok = (st == 200 and done and len(finals) == 1 and finals[0]["finish_reason"] == "length" and len(usage) == 1
              and usage[0]["completion_tokens"] == 10 + i % 5 and len(ids) == 1 and evs[-1]["choices"] == []
              and ntext >= 1)
        good += ok
        if not ok:
            print("concurrent request %d bad: %s" % (i, raw[-400:]))
    check(good == 16, "16 concurrent streams complete with correct framing (%d/16)" % good)

    # 3. seeded sampling is reproducible, and equal between PD and colocated
    body = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": 1234,
            "ignore_eos": True}
    outs = [harness.request(d.port, "POST", "/v1/completions", body)[1]["choices"][0]["text"] for d in (pd, pd, co)]
    check(outs[0] == outs[1] == outs[2], "seeded sampling reproducible across runs and PD/colocated: %r" % outs)

    # 4. chat, n > 1, stop strings, logprobs
    st, o, _ = harness.request(pd.port, "POST", "/v1/chat/completions",
                               {"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hello! 你好"}],
                                "max_tokens": 8, "temperature": 0, "n": 2, "logprobs": True, "top_logprobs": 3,
                                "ignore_eos": True})
    ch = o["choices"] if st == 200 else []
    check(st == 200 and len(ch) == 2 and ch[0]["message"]["role"] == "assistant" and
          ch[0]["message"]["content"] == ch[1]["message"]["content"] and
          len(ch[0]["logprobs"]["content"]) == 8 and len(ch[0]["logprobs"]["content"][0]["top_logprobs"]) == 3 and
          o["usage"]["completion_tokens"] == 16, "chat with n=2 and logprobs: %r" % (o,))
    # a stop string cut from the greedy text: output ends right before it, finish_reason stop
    st, o, _ = harness.request(co.port, "POST", "/v1/completions",
                               {"prompt": "the cat", "max_tokens": 20, "temperature": 0, "ignore_eos": True})
    full = o["choices"][0]["text"]
    cut = full[len(full) // 2: len(full) // 2 + 3]
    st, o2, _ = harness.request(co.port, "POST", "/v1/completions",
                                {"prompt": "the cat", "max_tokens": 20, "temperature": 0, "stop": [cut, "zzzz"],
                                 "ignore_eos": True})
    got = o2["choices"][0]
    check(len(cut) > 0 and got["text"] == full[:full.find(cut)] and got["finish_reason"] == "stop"
          and got["stop_reason"] == cut, "stop string %r: %r vs %r" % (cut, got, full))
    st, evs, done, raw = harness.sse(co.port, "/v1/completions",
                                     {"prompt": "the cat", "max_tokens": 20, "temperature": 0, "stop": [cut],
                                      "stream": True, "ignore_eos": True})
    streamed = "".join(c["text"] for e in evs for c in e["choices"])
    check(streamed == full[:full.find(cut)] and done, "streamed stop string never leaks: %r" % streamed)

    # 5. errors: OpenAI shape, right status
    def err(path, body, status, param=None):
        st, o, r = harness.request(pd.port, "POST", path, body)
        ok = st == status and isinstance(o, dict) and "error" in o and set(o["error"]) >= {"message", "type", "param", "code"}
        if param:
            ok = ok and o["error"]["param"] == param
        check(ok, "%s %r -> %s %r" % (path, body, st, o))

    err("/v1/completions", b"{not json", 400)
    err("/v1/completions", b"[1,2]", 400)
    err("/v1/completions", {"prompt": 5}, 400, "prompt")
    err("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model")  # as OpenAI and vLLM: not served
    err("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens")
    err("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature")
    err("/v1/completions", {"prompt": "hi", "max_tokens": 2000}, 400, "max_tokens")
    err("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop")
    err("/v1/completions", b'{"prompt": "\xff\xfe bad utf8"}', 400, "prompt")
    err("/v1/chat/completions", {"messages": []}, 400, "messages")
    err("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages")
    err("/v1/completions", {"prompt": [1, 2, 99999999]}, 400, "prompt")
    st, o, _ = harness.request(pd.port, "GET", "/v1/nothing")
    check(st == 404 and "error" in o, "unknown route -> 404")
    st, o, _ = harness.request(pd.port, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2, "unknown_field": 1})
    check(st == 200, "unknown fields are ignored")
    st, o, _ = harness.request(pd.port, "GET", "/v1/models")
    check(st == 200 and o["data"][0]["id"] == "tiny", "/v1/models")
    st, o, _ = harness.request(pd.port, "POST", "/tokenize", {"prompt": "Hello world"})
    st2, o2, _ = harness.request(pd.port, "POST", "/detokenize", {"tokens": o["tokens"]})
    check(st == 200 and o["count"] == len(o["tokens"]) and o2["prompt"].endswith("Hello world"), "tokenize round trip")

    # logit_bias: +100 on one token makes it every generated token (the prefill instance's first one and the decode
    # instance's rest), greedy and sampled, PD and colocated
    biased = o["tokens"][-1]
    st, want, _ = harness.request(pd.port, "POST", "/detokenize", {"tokens": [biased] * 4})
    for dep, name in ((pd, "PD"), (co, "colocated")):
        for temp in (0, 1.0):
            st, o, _ = harness.request(dep.port, "POST", "/v1/completions",
                                       {"prompt": [3, 5, 7], "max_tokens": 4, "temperature": temp, "seed": 3,
                                        "logit_bias": {str(biased): 100}})
            check(st == 200 and o["choices"][0]["text"] == want["prompt"],
                  "%s logit_bias +100 on %d at temperature %g: %r, want %r"
                  % (name, biased, temp, o["choices"][0]["text"] if st == 200 else o, want["prompt"]))

    # 6. the official OpenAI client, unmodified, against the PD deployment
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(["node", os.path.join(here, "openai_client.mjs"), str(pd.port), "tiny"], capture_output=True,
                         text=True, timeout=300)
    print(out.stdout.strip())
    check(out.returncode == 0, "OpenAI client: %s %s" % (out.stdout[-500:], out.stderr[-500:]))

    # 6b. API keys: a second router over the same instances requires one (two given: --api-key A,B and a file)
    keyfile = os.path.join(logdir, "keys")
    with open(keyfile, "w") as f:
        f.write("# the router's keys\n\nsk-from-file\n")
    ar, aport = harness.start([harness.exe(args.build, "pdserve-router"), "--port", "0", "--model", args.model,
                               "--health-interval", "0.2", "--prefill", "127.0.0.1:%d" % pd.prefill_port, "--decode",
                               "127.0.0.1:%d" % pd.decode_port, "--api-key", "sk-one,sk-two", "--api-key-file", keyfile],
                              os.path.join(logdir, "auth-router.log"))
    try:
        harness.wait_healthy(aport)  # /health stays open
        body = {"prompt": "hi", "max_tokens": 2}
        for hdr, what in (({}, "no key"), ({"Authorization": "Bearer sk-wrong"}, "a wrong key"),
                          ({"Authorization": "Basic c2stb25lOg=="}, "a Basic credential"),
                          ({"Authorization": "Bearer sk-one-longer"}, "a key with a valid prefix")):
            for path, b in (("/v1/completions", body), ("/v1/models", None), ("/tokenize", {"prompt": "x"})):
                st, o, h = harness.request(aport, "GET" if b is None else "POST", path, b, headers=hdr)
                check(st == 401 and o["error"]["code"] == "invalid_api_key" and o["error"]["type"] ==
                      "invalid_request_error" and h.getheader("WWW-Authenticate") == "Bearer", "%s on %s: 401 invalid_api_key (%s %r)" %
                      (what, path, st, o))
        for key in ("sk-one", "sk-two", "sk-from-file"):
            st, o, _ = harness.request(aport, "POST", "/v1/completions", body, headers={"Authorization": "Bearer " + key})
            check(st == 200 and o["choices"], "key %s is accepted (%s)" % (key, st))
        st, _, _ = harness.request(aport, "GET", "/metrics")
        check(st == 200, "/metrics stays open (%s)" % st)
        out = subprocess.run(["node", os.path.join(here, "openai_client.mjs"), str(aport), "tiny", "sk-two"],
                             capture_output=True, text=True, timeout=300)
        print(out.stdout.strip())
        check(out.returncode == 0, "OpenAI client with apiKey: %s %s" % (out.stdout[-500:], out.stderr[-500:]))
        log = open(os.path.join(logdir, "auth-router.log"), errors="replace").read()
        check(log.count("without a valid API key") == 1 and "sk-one" not in log and "sk-wrong" not in log,
              "refusals are logged once (rate-limited) and no key is logged")
    finally:
        harness.stop(ar)

    # 7. nothing stranded: every block is free again on every instance
    time.sleep(0.5)
    for dep in (pd, co):
        for port in filter(None, (dep.decode_port, dep.prefill_port)):
            st, h, _ = harness.request(port, "GET", "/health")
            check(h["load"]["free_blocks"] == h["load"]["total_blocks"] and h["load"]["running"] == 0,
                  "no stranded blocks on %d: %r" % (port, h["load"]))
finally:
    pd.close()
    co.close()

check.finish()
