"""Results of scripts/gpu_verify.sh: OUTDIR/results.md and OUTDIR/results.json, rewritten after every
step (standard library only: it runs before the venv exists).

  gpu_verify_report.py init OUTDIR --mode gpu|dry-run --budget S --root REPO
  gpu_verify_report.py step OUTDIR --name N --status pass|fail|timeout|skipped --seconds S --note TEXT
  gpu_verify_report.py finish OUTDIR --seconds S      (prints the summary; exit 1 if a required step failed)
  gpu_verify_report.py junit PYTEST_XML               (one line: passed/failed/skipped counts)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET


def _load(out: str) -> dict:
    path = os.path.join(out, "meta.json")
    meta = json.load(open(path)) if os.path.exists(path) else {}
    steps = []
    sp = os.path.join(out, "steps.jsonl")
    if os.path.exists(sp):
        for line in open(sp):
            line = line.strip()
            if line:
                try:
                    steps.append(json.loads(line))
                except ValueError:
                    pass
    res = dict(meta=meta, steps=steps)
    for name in ("checks", "bench"):
        p = os.path.join(out, name + ".json")
        if os.path.exists(p):
            try:
                res[name] = json.load(open(p))
            except ValueError:
                res[name] = {"error": "unreadable " + p}
    return res


def _write_atomic(path: str, text: str) -> None:
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def render(out: str) -> dict:
    r = _load(out)
    meta = r["meta"]
    lines = ["# GPU verification (%s)" % meta.get("mode", "?"), ""]
    if meta.get("mode") == "dry-run":
        lines += ["**Dry run: no GPU was used.** The steps ran on the CPU to keep the script from rotting; none of "
                  "the numbers below is a GPU result.", ""]
    lines += ["- started: %s, host %s, budget %s s" % (meta.get("started"), meta.get("host"), meta.get("budget")),
              "- commit: %s" % meta.get("commit"), ""]
    if "total_seconds" in meta:
        lines += ["- total wall time: %s s" % meta["total_seconds"], ""]
    lines += ["| step | status | seconds | note |", "|---|---|---|---|"]
    for s in r["steps"]:
        req = "" if s.get("required", 1) else " (optional)"
        lines.append("| %s%s | %s | %s | %s |" % (s["name"], req, s["status"], s["seconds"],
                                                 str(s.get("note", "")).replace("|", "/").replace("\n", " ")))
    ch = r.get("checks")
    if ch and "results" in ch:
        bad = [c for c in ch["results"] if c["status"] == "fail"]
        lines += ["", "## Checks (%s, device %s): %d passed, %d failed, %d not applicable" % (
            "tiny" if ch.get("tiny") else "full", ch.get("device"), sum(c["status"] == "pass" for c in ch["results"]),
            len(bad), sum(c["status"] == "n/a" for c in ch["results"]))]
        for c in bad[:40]:
            lines.append("- FAIL %s: %s" % (c["name"], c.get("detail", "")))
    b = r.get("bench")
    if b and "md" in b:
        lines += ["", "## Timings", "", b["md"]]
    _write_atomic(os.path.join(out, "results.md"), "\n".join(lines) + "\n")
    _write_atomic(os.path.join(out, "results.json"), json.dumps(r, indent=1, default=str) + "\n")
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["init", "step", "finish", "junit"])
    ap.add_argument("out")
    ap.add_argument("--mode", default="gpu")
    ap.add_argument("--budget", default="480")
    ap.add_argument("--root", default=".")
    ap.add_argument("--name")
    ap.add_argument("--status")
    ap.add_argument("--seconds", default="0")
    ap.add_argument("--note", default="")
    ap.add_argument("--required", default="1")
    ap.add_argument("--log", default="")
    a = ap.parse_args(argv)
    if a.cmd == "junit":
        try:
            root = ET.parse(a.out).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            t = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            print("%d passed, %d failed, %d errors, %d skipped" % (
                t["tests"] - t["failures"] - t["errors"] - t["skipped"], t["failures"], t["errors"], t["skipped"]))
        except Exception as e:  # noqa: BLE001
            print("no junit results (%s)" % e)
        return 0
    os.makedirs(a.out, exist_ok=True)
    if a.cmd == "init":
        try:
            commit = subprocess.run(["git", "-C", a.root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or "?"
            dirty = subprocess.run(["git", "-C", a.root, "status", "--porcelain"], capture_output=True,
                                   text=True).stdout.strip()
            commit += " (+ uncommitted changes)" if dirty else ""
        except OSError:
            commit = "?"
        meta = dict(mode=a.mode, budget=int(a.budget), started=_dt.datetime.now().isoformat(timespec="seconds"),
                    host=platform.node(), cores=os.cpu_count(), commit=commit)
        _write_atomic(os.path.join(a.out, "meta.json"), json.dumps(meta) + "\n")
        render(a.out)
        return 0
    if a.cmd == "step":
        rec = dict(name=a.name, status=a.status, seconds=float(a.seconds), note=a.note, required=int(a.required),
                   log=a.log, at=_dt.datetime.now().isoformat(timespec="seconds"))
        with open(os.path.join(a.out, "steps.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        render(a.out)
        return 0
    # finish
    mp = os.path.join(a.out, "meta.json")
    meta = json.load(open(mp)) if os.path.exists(mp) else {}
    meta["total_seconds"] = int(float(a.seconds))
    _write_atomic(mp, json.dumps(meta) + "\n")
    r = render(a.out)
    failed = [s["name"] for s in r["steps"] if s.get("required", 1) and s["status"] != "pass"]
    print(open(os.path.join(a.out, "results.md")).read())
    print("gpu_verify: %s in %s s (%s)" % ("all required steps passed" if not failed else
                                           "FAILED: " + ", ".join(failed), meta["total_seconds"],
                                           os.path.join(a.out, "results.md")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
