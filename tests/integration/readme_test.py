"""Runs every curl example of README.md against a real deployment (router + prefill + decode) of the model the README
serves (demo-v3, unpacked from the repository's tarball when missing) on ports this test picks: each must succeed and
return what its endpoint promises, and what the model writes must be English (mostly ASCII words, common English
words among them)."""
import json, os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(__file__))
import harness

ap = harness.arg_parser()
ap.add_argument("--readme", required=True)
ap.add_argument("--demo-tarball", required=True)
args = ap.parse_args()
if not os.path.exists(os.path.join(args.model, "config.json")):
    os.makedirs(os.path.dirname(args.model), exist_ok=True)
    subprocess.run(["tar", "-xJf", args.demo_tarball, "-C", os.path.dirname(args.model)], check=True)
COMMON = {"the", "of", "and", "to", "a", "in", "is", "was", "he", "it", "that", "for", "on", "with", "as", "his"}


def english(text):
    """Mostly ASCII letters, spaces and punctuation, and at least one of the commonest English words."""
    words = re.findall(r"[A-Za-z']+", text)
    ascii_share = sum(c.isascii() for c in text) / max(1, len(text))
    return len(words) >= 3 and ascii_share >= 0.9 and any(w.lower() in COMMON for w in words)


text = open(args.readme).read()
cmds, cur = [], None
for line in text.splitlines():
    s = line.strip()
    if cur is None and s.startswith("curl "):
        cur = s
    elif cur is not None:
        cur += " " + s
    if cur is not None and not cur.endswith("\\"):
        cmds.append(cur.replace("\\ ", " "))
        cur = None
    elif cur is not None:
        cur = cur[:-1]
assert len(cmds) >= 3, "README lists too few curl examples: %r" % cmds

# the router with the configuration scripts/serve.sh gives it (flags here override its ports and instances)
conf = os.path.join(os.path.dirname(os.path.abspath(args.readme)), "configs", "local-1p1d", "router.yaml")
dep = harness.Deployment(args.build, args.model, "pd", tempfile.mkdtemp(prefix="readme_test_"),
                         router_args=["--config", conf])
passed = failed = 0
try:
    for cmd in cmds:
        run = re.sub(r"127\.0\.0\.1:8000", "127.0.0.1:%d" % dep.port, cmd)
        out = subprocess.run(["bash", "-c", run.replace("curl ", "curl -sS --fail-with-body ", 1)],
                             capture_output=True, text=True, timeout=120)
        ok = out.returncode == 0
        body = out.stdout
        if ok and '"stream": true' in cmd:
            events = [l[6:] for l in body.splitlines() if l.startswith("data: ")]
            ok = events and events[-1] == "[DONE]" and all(json.loads(e)["object"].endswith("chunk") for e in events[:-1])
        elif ok:
            o = json.loads(body)
            ok = ("choices" in o and o["choices"]) or o.get("object") == "list"
            if ok and o.get("choices"):
                c = o["choices"][0]
                text = c["message"]["content"] if "message" in c else c["text"]
                ok = english(text)
                print("%s -> %r (%s)" % (cmd[:60], text, "English" if ok else "NOT English"))
        if ok:
            passed += 1
        else:
            failed += 1
            print("FAIL: %s\n  -> rc %d: %s %s" % (cmd, out.returncode, body[:300], out.stderr[:300]))
finally:
    dep.close()
harness.stop_all()  # sanitizer builds write leak reports at exit
for _name, _report in harness.sanitizer_reports():
    print("FAIL: sanitizer report in %s:\n%s" % (_name, _report))
    failed += 1
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
