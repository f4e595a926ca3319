"""pdserve-bench against a real PD deployment: a short sweep with warm-ups and SLOs, a fixed-prompt run and a
text-prompt run; the result JSON holds vLLM's keys with counts that add up, no failures and plausible latencies.
Then compare turns the files into well-formed SVG plots and a markdown table. No timing thresholds."""
import json, os, subprocess, sys, tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
out = tempfile.mkdtemp(prefix="bench_test_")
bench = os.path.join(args.build, "benchmarks", "pdserve-bench")
check = harness.Checks()


def run(port, *extra):
    p = subprocess.run([bench, "--port", str(port), "--disable-tqdm"] + list(extra), capture_output=True, text=True,
                       timeout=300)
    check(p.returncode == 0, "pdserve-bench %s exited %d: %s" % (" ".join(extra), p.returncode, p.stderr[-2000:]))
    return p


def check_result(r, n, out_len, what):
    keys = ["date", "model_id", "num_prompts", "request_rate", "burstiness", "duration", "completed", "failed",
            "total_input_tokens", "total_output_tokens", "request_throughput", "output_throughput",
            "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls", "errors", "generated_texts"]
    for stat in ("mean", "median", "std", "p90", "p99"):
        keys += ["%s_%s_ms" % (stat, m) for m in ("ttft", "tpot", "itl", "e2el")]
    for k in keys:
        check(k in r, "%s: key %s" % (what, k))
    check(r.get("completed") == n and r.get("failed") == 0, "%s: %s completed, %s failed" % (what, r.get("completed"), r.get("failed")))
    check(r.get("errors") == [""] * n, "%s: no errors" % what)
    if out_len:
        check(r.get("output_lens") == [out_len] * n, "%s: output lengths %r" % (what, r.get("output_lens")))
        check(r.get("total_output_tokens") == n * out_len, what + ": total output tokens")
    check(all(l > 0 for l in r.get("input_lens", [0])), what + ": input lengths")
    check(len(r.get("ttfts", [])) == n and all(0 < t < 60 for t in r["ttfts"]), what + ": TTFTs plausible")
    check(all(len(x) >= 1 for x in r.get("itls", [])), what + ": ITLs recorded")
    check(0 < r.get("median_ttft_ms", 0) <= r.get("p99_ttft_ms", 0) < 60000, what + ": TTFT percentiles ordered")
    check(0 < r.get("mean_tpot_ms", 0) < 10000, what + ": TPOT plausible")
    check(r.get("median_ttft_ms", 0) <= r.get("median_e2el_ms", 0), what + ": TTFT <= E2E")
    check(r.get("duration", 0) > 0 and r.get("request_throughput", 0) > 0, what + ": throughput")
    t = r.get("mean_pdserve_timing_ms", {})
    check(set(t) == {"queue", "prefill", "transfer", "decode"}, what + ": pdserve timing means")


dep = harness.Deployment(args.build, args.model, "pd", out)
try:
    sweep = os.path.join(out, "pd.json")
    p = run(dep.port, "--num-prompts", "6", "--random-input-len", "24", "--random-output-len", "6",
            "--sweep-rates", "8,inf", "--num-warmups", "2", "--ignore-eos", "--goodput", "ttft:60000 tpot:60000",
            "--label", "pd", "--save-result", sweep)
    check("Serving Benchmark Result" in p.stdout and "DistServe goodput" in p.stdout, "summary printed")
    res = json.load(open(sweep))
    check(res.get("label") == "pd" and len(res.get("sweep", [])) == 2, "sweep file shape")
    check(res.get("distserve_goodput_rate") == 8, "goodput rate with generous SLOs: %r" % res.get("distserve_goodput_rate"))
    for r in res.get("sweep", []):
        check_result(r, 6, 6, "sweep rate %s" % r.get("request_rate"))
        check(r.get("goodput_fraction") == 1.0 and r.get("request_goodput", 0) > 0, "all requests within generous SLOs")
    check([r.get("request_rate") for r in res.get("sweep", [])] == [8, "inf"], "rates recorded")

    fixed = os.path.join(out, "fixed.json")
    run(dep.port, "--dataset-name", "fixed", "--fixed-prompt", "The capital of France is", "--fixed-output-len", "5",
        "--num-prompts", "4", "--max-concurrency", "2", "--ignore-eos", "--label", "fixed", "--save-result", fixed)
    r = json.load(open(fixed))
    check_result(r, 4, 5, "fixed")
    check(r.get("max_concurrency") == 2 and r.get("max_concurrent_requests", 9) <= 2, "concurrency capped at 2")
    check(len(set(r.get("input_lens", []))) == 1, "fixed prompt: one input length")

    text = os.path.join(out, "text.json")
    run(dep.port, "--random-input-type", "text", "--random-input-len", "20", "--random-output-len", "4",
        "--random-range-ratio", "0.5", "--num-prompts", "4", "--request-rate", "20", "--burstiness", "0.5",
        "--save-result", text)
    check_result(json.load(open(text)), 4, 0, "text")

    # an unreachable router: a clear failure, not a hang
    p = subprocess.run([bench, "--port", "1", "--num-prompts", "1"], capture_output=True, text=True, timeout=60)
    check(p.returncode != 0 and "cannot reach" in p.stderr, "unreachable router reported")
finally:
    dep.close()

cmp_dir = os.path.join(out, "cmp")
p = subprocess.run([bench, "compare", sweep, fixed, "--out-dir", cmp_dir], capture_output=True, text=True, timeout=60)
check(p.returncode == 0, "compare ran: " + p.stderr)
for name in ("latency_vs_rate.svg", "throughput_vs_rate.svg", "ttft_cdf.svg", "itl_cdf.svg"):
    path = os.path.join(cmp_dir, name)
    try:
        root = ET.parse(path).getroot()
        check(root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) >= 1,
              name + ": an SVG with lines")
    except (OSError, ET.ParseError) as e:
        check(False, "%s: %s" % (name, e))
md = open(os.path.join(cmp_dir, "summary.md")).read() if os.path.exists(os.path.join(cmp_dir, "summary.md")) else ""
check(md.count("\n| pd |") == 2 and md.count("\n| fixed |") == 1, "summary table rows:\n" + md)
check("|---|" in md and "DistServe goodput" in md, "summary table and goodput")
p = subprocess.run([bench, "compare", os.path.join(out, "missing.json"), "--out-dir", cmp_dir], capture_output=True,
                   text=True)
check(p.returncode != 0, "compare refuses a missing file")

check.finish(out)
