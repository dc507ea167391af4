"""Runs every benchmark, prints one line each and writes bench/results/*.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from . import cluster, coldstart, history, local, scale, transfer
from .common import Result

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (function(work, quick) -> results); cluster benchmarks share one control plane.
SUITES: dict[str, Callable[[Path, bool], Iterable[Result]]] = {
    "coldstart": coldstart.run,
    "local": local.run,
    "cluster": cluster.run,
    "scale": scale.run,
    "transfer": transfer.run,
    "history": history.run,
}


def machine() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "free_g": free.strip(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": " ".join(load),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="every line at smaller sizes (a few minutes)"
    )
    parser.add_argument("--only", action="append", choices=sorted(SUITES), help="run these suites")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ocps-bench-"))
    started = time.perf_counter()
    info = machine()
    print(
        f"# {'quick' if args.quick else 'full'} run on {info['nproc']} cores, {info['cpu']}, "
        f"load {info['loadavg_at_start']}; work {work}",
        flush=True,
    )
    results: list[Result] = []
    errors: dict[str, str] = {}
    suite_seconds: dict[str, float] = {}
    for name, suite in SUITES.items():
        if args.only and name not in args.only:
            continue
        suite_started = time.perf_counter()
        try:
            for result in suite(work, args.quick):
                results.append(result)
                print(result.line(), flush=True)
        except Exception:
            errors[name] = traceback.format_exc()
            print(f"# suite {name} failed:\n{errors[name]}", file=sys.stderr, flush=True)
        suite_seconds[name] = round(time.perf_counter() - suite_started, 1)
    elapsed = time.perf_counter() - started
    failed = [result.name for result in results if not result.passed]
    print(
        f"# {len(results) - len(failed)} passed, {len(failed)} failed"
        f"{', suites with errors: ' + ', '.join(errors) if errors else ''}"
        f"; {elapsed:.0f} s (suites: {suite_seconds})",
        flush=True,
    )
    now = datetime.now(UTC)
    report = {
        "mode": "quick" if args.quick else "full",
        "date": now.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "suite_seconds": suite_seconds,
        "machine": info,
        "loadavg_at_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "results": [result.as_dict() for result in results],
        "lines": [result.line() for result in results],
        "errors": errors,
    }
    text = json.dumps(report, indent=1) + "\n"
    (work / "report.json").write_text(text)
    if not args.no_save and not args.only:
        RESULTS.mkdir(exist_ok=True)
        suffix = "-quick" if args.quick else ""
        (RESULTS / f"latest{suffix}.json").write_text(text)
        (RESULTS / f"{now:%Y-%m-%d}{suffix}.json").write_text(text)
    if args.keep:
        print(f"# kept {work} (report.json there)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or errors else 0
