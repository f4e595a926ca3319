"""Runs every curl example of README.md against a real deployment (router + prefill + decode) on ports this test
picks: each must succeed and return what its endpoint promises."""
import json, os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(__file__))
import harness

ap = harness.arg_parser()
ap.add_argument("--readme", required=True)
args = ap.parse_args()

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

dep = harness.Deployment(args.build, args.model, "pd", tempfile.mkdtemp(prefix="readme_test_"))
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
