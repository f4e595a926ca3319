"""GET /metrics of all three executables (PD deployment) and of a colocated decode instance: the Prometheus text
is valid (promtool check metrics when installed, and always a strict parser of our own), the vLLM-style families
are there with plausible values after real requests, and the per-request phase timings (pdserve_timing) are in
non-streamed responses and in the final chunk of streamed ones, consistent with the client's own clock."""
import os, re, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

ap = harness.arg_parser()
ap.add_argument("--require-promtool", action="store_true", help="fail when promtool is not installed")
args = ap.parse_args()
logdir = tempfile.mkdtemp(prefix="metrics_test_")
check = harness.Checks()


NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,|(?=\})))*\})? '
                    r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def parse(text, who):
    """Strict parse of the text format: HELP and TYPE before samples, one TYPE per family, suffixes matching the
    type, histogram buckets cumulative and ending in +Inf == _count. Returns {family: {"type", "samples"}}."""
    fams, cur = {}, None
    for ln, line in enumerate(text.splitlines(), 1):
        where = "%s line %d: %r" % (who, ln, line)
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            check(NAME.match(name) and name not in fams, "bad or repeated HELP: " + where)
            fams[name] = {"type": None, "samples": []}
            cur = name
        elif line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            check(name == cur and typ in ("counter", "gauge", "histogram"), "TYPE out of place: " + where)
            fams[name]["type"] = typ
        else:
            m = SAMPLE.match(line)
            check(m is not None, "malformed sample: " + where)
            if not m or cur is None:
                continue
            name, typ = m.group(1), fams[cur]["type"]
            ok = name == cur if typ != "histogram" else name in (cur + "_bucket", cur + "_sum", cur + "_count")
            check(ok, "sample outside its family: " + where)
            check(typ != "counter" or name.endswith("_total"), "counter without _total: " + where)
            fams[cur]["samples"].append((name, m.group(2) or "", float(m.group(3).replace("+Inf", "inf"))))
    for name, f in fams.items():
        if f["type"] != "histogram":
            continue
        series = {}
        for s, labels, v in f["samples"]:
            key = re.sub(r',?le="[^"]*"', "", labels).replace("{}", "")
            series.setdefault(key, {"b": [], "count": None})
            if s.endswith("_bucket"):
                series[key]["b"].append((re.search(r'le="([^"]*)"', labels).group(1), v))
            elif s.endswith("_count"):
                series[key]["count"] = v
        for key, d in series.items():
            vals = [v for _, v in d["b"]]
            check(vals == sorted(vals), "%s %s%s: buckets not cumulative" % (who, name, key))
            check(d["b"] and d["b"][-1][0] == "+Inf" and d["b"][-1][1] == d["count"],
                  "%s %s%s: +Inf bucket != count" % (who, name, key))
    return fams


def value(fams, name, labels=""):
    base = name[:-len("_count")] if name.endswith("_count") else name[:-len("_sum")] if name.endswith("_sum") else name
    for s, l, v in fams.get(base, {}).get("samples", []):
        if s == name and (not labels or labels in l):
            return v
    return None


promtool = shutil.which("promtool")
if not promtool:
    msg = ("promtool not found (Debian package 'prometheus'): only the built-in format checks run. "
           "Install it with: apt-get install --no-install-recommends prometheus")
    if args.require_promtool:
        check(False, msg)
    else:
        print("NOTE:", msg, flush=True)


def scrape(port, who):
    st, body, r = harness.request(port, "GET", "/metrics")
    check(st == 200, "%s /metrics status %s" % (who, st))
    check(r.getheader("Content-Type", "").startswith("text/plain; version=0.0.4"), who + " content type")
    text = body.decode() if isinstance(body, bytes) else str(body)
    if promtool:
        p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        report = (p.stdout + p.stderr).decode().strip()
        check(p.returncode == 0 and not report, "%s: promtool check metrics: %s" % (who, report))
    return parse(text, who)


def gen(port, stream, max_tokens=8):
    body = {"model": "tiny", "prompt": "The capital of France is " * 5, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}
    t0 = time.time()
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
        st, events, done, _ = harness.sse(port, "/v1/completions", body)
        check(st == 200 and done, "stream ok")
        finals = [e for e in events if e.get("choices") and e["choices"][0].get("finish_reason")]
        check(len(finals) == 1, "one final chunk per choice")
        timing = finals[0].get("pdserve_timing") if finals else None
    else:
        st, out, _ = harness.request(port, "POST", "/v1/completions", body)
        check(st == 200, "completion ok")
        timing = out.get("pdserve_timing")
    wall = time.time() - t0
    check(isinstance(timing, dict) and set(timing) >= {"queue_s", "prefill_s", "transfer_s", "decode_s"},
          "pdserve_timing present (stream=%s): %r" % (stream, timing))
    return timing or {}, wall


pd = harness.Deployment(args.build, args.model, "pd", logdir)
co = harness.Deployment(args.build, args.model, "colocated", logdir)
try:
    for dep, mode in ((pd, "pd"), (co, "colocated")):
        for stream in (False, True):
            t, wall = gen(dep.port, stream)
            phases = [t.get(k, -1) for k in ("queue_s", "prefill_s", "transfer_s", "decode_s")]
            check(all(p >= 0 for p in phases), "%s: phases non-negative: %r" % (mode, t))
            check(t.get("prefill_s", 0) > 0 and t.get("decode_s", 0) > 0, "%s: prefill and decode measured: %r" % (mode, t))
            check(sum(phases) <= wall + 0.01, "%s: phases %.4f s fit in the client's %.4f s" % (mode, sum(phases), wall))
            if mode == "colocated":
                check(t.get("transfer_s") == 0, "colocated: no transfer time")
        # a refusal, counted by status
        st, _, _ = harness.request(dep.port, "POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1})
        check(st == 400, "bad request refused")

    time.sleep(0.5)
    r = scrape(pd.port, "router")
    d = scrape(pd.decode_port, "decode")
    p = scrape(pd.prefill_port, "prefill")
    c = scrape(co.decode_port, "colocated")
    rc = scrape(co.port, "router(colocated)")

    # the names that were there before the registry, and the new families
    for fams, who, names in (
        (r, "router", ["pdserve_router_requests_total", "pdserve_router_requests_rejected_total",
                       "pdserve_router_requests_failed_total", "pdserve_router_requests_running",
                       "pdserve_router_prompt_tokens_total", "pdserve_router_generation_tokens_total",
                       "pdserve_router_choices_finished_total", "pdserve_router_instance_healthy",
                       "pdserve_router_time_to_first_token_seconds", "pdserve_router_inter_token_latency_seconds",
                       "pdserve_router_e2e_request_latency_seconds", "pdserve_router_request_queue_time_seconds",
                       "pdserve_router_request_prefill_time_seconds", "pdserve_router_request_kv_transfer_time_seconds",
                       "pdserve_router_request_decode_time_seconds", "pdserve_router_error_replies_total",
                       "pdserve_router_retries_total", "pdserve_router_instance_kv_cache_usage_perc"]),
        (d, "decode", ["pdserve_num_requests_running", "pdserve_num_requests_waiting", "pdserve_kv_cache_usage_perc",
                       "pdserve_kv_cache_free_blocks", "pdserve_generation_tokens_total", "pdserve_prompt_tokens_total",
                       "pdserve_request_rejected_total", "pdserve_request_success_total",
                       "pdserve_time_to_first_token_seconds", "pdserve_inter_token_latency_seconds",
                       "pdserve_e2e_request_latency_seconds", "pdserve_request_queue_time_seconds",
                       "pdserve_request_decode_time_seconds", "pdserve_request_kv_wait_time_seconds",
                       "pdserve_kv_transfer_failures_total"]),
        (p, "prefill", ["pdserve_num_requests_running", "pdserve_kv_cache_usage_perc", "pdserve_prompt_tokens_total",
                        "pdserve_request_prefill_time_seconds", "pdserve_request_queue_time_seconds",
                        "pdserve_kv_transfer_bytes_total", "pdserve_kv_transfer_failures_total",
                        "pdserve_kv_transfer_duration_seconds", "pdserve_request_kv_transfer_time_seconds"]),
        (c, "colocated", ["pdserve_request_prefill_time_seconds", "pdserve_time_to_first_token_seconds",
                          "pdserve_generation_tokens_total"])):
        for n in names:
            check(n in fams, "%s exports %s" % (who, n))

    check(value(r, "pdserve_router_requests_total") == 3, "router counted 3 requests")
    check(value(r, "pdserve_router_requests_rejected_total") == 1, "router counted the refusal")
    check(value(r, "pdserve_router_error_replies_total", 'status="400"') == 1, "refusal counted by status")
    check(value(r, "pdserve_router_generation_tokens_total") == 16, "router relayed 16 tokens")
    check(value(r, "pdserve_router_choices_finished_total", 'finished_reason="length"') == 2, "2 length finishes")
    check(value(r, "pdserve_router_time_to_first_token_seconds_count") == 2, "router TTFT observed twice")
    check(value(r, "pdserve_router_inter_token_latency_seconds_count") == 14, "router ITL observed 14 times")
    check(value(r, "pdserve_router_request_kv_transfer_time_seconds_count") == 2, "router transfer time observed")
    check(value(r, "pdserve_router_instance_healthy", 'role="prefill"') == 1, "prefill instance healthy")
    check(value(d, "pdserve_generation_tokens_total") == 16, "decode generated 16 tokens")
    check(value(d, "pdserve_request_success_total", 'finished_reason="length"') == 2, "decode finished 2")
    check(value(d, "pdserve_request_kv_wait_time_seconds_count") == 2, "decode KV waits observed")
    check(value(d, "pdserve_request_prefill_time_seconds_count") == 0, "PD decode does no prefill")
    usage = value(d, "pdserve_kv_cache_usage_perc")
    check(usage is not None and 0 <= usage <= 1, "KV usage in [0, 1]")
    check(value(p, "pdserve_kv_transfer_bytes_total") > 0, "prefill sent KV bytes")
    check(value(p, "pdserve_kv_transfer_duration_seconds_count") == 2, "prefill transfer durations observed")
    check(value(p, "pdserve_prompt_tokens_total") == value(d, "pdserve_prompt_tokens_total"), "prompt tokens agree")
    check(value(c, "pdserve_request_prefill_time_seconds_count") == 2, "colocated prefill observed")
    check(value(rc, "pdserve_router_request_kv_transfer_time_seconds_count") == 0, "colocated: no transfers")
finally:
    pd.close()
    co.close()

if not promtool:
    print("metrics: promtool not installed; the text was checked by our own parser only")
check.finish(logdir)
