#!/usr/bin/python3
"""Runs every test of the project and prints one summary line.

Suites, for each build directory given (plain and sanitizer builds):
  - every Catch2 unit-test executable (build/tests/test_*), one result per
    test case, plus one for the executable's exit status (a sanitizer report
    or a leak fails it even when every assertion passed);
  - the integration tests (pytest, tests/integration) against that build.
Then, if asked, the fuzz targets (scripts/fuzz), one result per target.

The last line is `N passed, N failed[, N skipped]`.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures = []

    def add(self, name, outcome, detail=""):
        if outcome == "passed":
            self.passed += 1
        elif outcome == "skipped":
            self.skipped += 1
            if detail:
                print(f"  skipped: {name}: {detail}")
        else:
            self.failed += 1
            self.failures.append(name)
            print(f"  FAILED: {name}" + (f"\n{detail}" if detail else ""))


def junit_cases(path):
    """(name, outcome, detail) for every testcase of a JUnit XML file."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, FileNotFoundError):
        return None
    out = []
    for case in tree.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            text = (node.get("message") or "") + "\n" + (node.text or "")
            out.append((name, "failed", text.strip()[-3000:]))
        elif case.find("skipped") is not None:
            out.append((name, "skipped", case.find("skipped").get("message", "")))
        else:
            out.append((name, "passed", ""))
    return out


def sanitizer_env(build):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:strict_string_checks=1")
    env.setdefault("LSAN_OPTIONS", f"suppressions={ROOT / 'tests' / 'lsan.supp'}:print_suppressions=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env["INTERSYNC_BUILD"] = str(build)
    return env


def run_unit(build, tally, tmp):
    exes = sorted(p for p in (build / "tests").glob("test_*") if p.is_file() and os.access(p, os.X_OK))
    if not exes:
        tally.add(f"{build.name}: unit tests", "failed", "no test executables found")
    for exe in exes:
        xml = Path(tmp) / f"{build.name}-{exe.name}.xml"
        start = time.monotonic()
        r = subprocess.run([str(exe), "-r", "junit", "-o", str(xml)], cwd=build / "tests",
                           env=sanitizer_env(build), capture_output=True, text=True)
        cases = junit_cases(xml) or []
        for name, outcome, detail in cases:
            tally.add(f"{build.name}/{exe.name}/{name}", outcome, detail)
        label = f"{build.name}/{exe.name}: exit status"
        if r.returncode == 0 and cases:
            tally.add(label, "passed")
        elif r.returncode != 0 and all(o != "failed" for _, o, _ in cases):
            tally.add(label, "failed", (r.stderr or r.stdout)[-4000:])
        elif not cases:
            tally.add(label, "failed", "no test cases ran\n" + (r.stderr or r.stdout)[-4000:])
        print(f"{build.name}/{exe.name}: {len(cases)} cases, exit {r.returncode}, "
              f"{time.monotonic() - start:.1f}s", flush=True)


def run_integration(build, tally, tmp, select):
    xml = Path(tmp) / f"{build.name}-integration.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", str(ROOT / "tests" / "integration")]
    if select:
        cmd += ["-k", select]
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=sanitizer_env(build), capture_output=True, text=True)
    cases = junit_cases(xml)
    if cases is None:
        tally.add(f"{build.name}: integration", "failed", (r.stdout + r.stderr)[-4000:])
        return
    for name, outcome, detail in cases:
        tally.add(f"{build.name}/integration/{name}", outcome, detail)
    print(f"{build.name}/integration: {len(cases)} cases, {time.monotonic() - start:.1f}s",
          flush=True)


def run_fuzz(seconds, tally):
    start = time.monotonic()
    r = subprocess.run([str(ROOT / "scripts" / "fuzz"), str(seconds)], cwd=ROOT,
                       capture_output=True, text=True)
    # One line per target: "fuzz_<target>: ok: N executions ..." or a failure.
    lines = [l for l in r.stdout.splitlines() if re.match(r"^fuzz_\w+: ", l)]
    for line in lines:
        name, _, rest = line.partition(": ")
        tally.add(f"fuzz/{name}", "passed" if rest.startswith("ok") else "failed", rest)
    if not lines or (r.returncode != 0 and all(": ok" in l for l in lines)):
        tally.add("fuzz", "failed", (r.stdout + r.stderr)[-4000:])
    print(f"fuzz: {len(lines)} targets, {time.monotonic() - start:.1f}s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", action="append", required=True, help="build directory (repeat)")
    ap.add_argument("--fuzz-seconds", type=int, default=0)
    ap.add_argument("-k", dest="select", default="", help="pytest -k expression")
    args = ap.parse_args()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="intersync-results-") as tmp:
        for b in args.build:
            build = (ROOT / b).resolve()
            run_unit(build, tally, tmp)
            run_integration(build, tally, tmp, args.select)
        if args.fuzz_seconds > 0:
            run_fuzz(args.fuzz_seconds, tally)
    line = f"{tally.passed} passed, {tally.failed} failed"
    if tally.skipped:
        line += f", {tally.skipped} skipped"
    print(line)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
