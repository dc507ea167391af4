"""Where the live view's time and memory go: ``python -m bench.profile_scale [--jobs N]``.

Starts an S3 endpoint and the test control plane, makes N started CSC-shaped Jobs (as the
``scale`` suite does), then lists them in this process through the library's
KubernetesBackend: once under cProfile (the first list, before the watches synced), once
under tracemalloc (the memory the watched copies and records hold). Prints both reports.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from .cluster import BUCKET, Kube
from .common import S3_ENV, control_plane, s3_client, s3_server
from .scale import ROOMY_NODE, _fill

__all__ = ["main"]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def _backend(kubeconfig: Path, namespace: str, endpoint: str, data_dir: Path) -> Any:
    from ocps_jobs.backends.kubernetes import KubernetesBackend
    from ocps_jobs.objectstore.s3 import S3Store

    from .manifests import kube_settings

    settings = kube_settings(namespace, kubeconfig, data_dir)
    return KubernetesBackend(settings, S3Store(BUCKET, endpoint))


def _synced(backend: Any, count: int, timeout: float = 600) -> None:
    """Wait until the backend's watched copy shows ``count`` executing jobs."""
    from ocps_jobs.models import Phase

    deadline = time.monotonic() + timeout
    while sum(record.phase == Phase.EXECUTING for record in backend.list_records()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the watches did not sync")
        time.sleep(1)


class _ThreadProfiles:
    """cProfile in every thread started while active (the watches list on their own threads)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._run = threading.Thread.run

    def __enter__(self) -> _ThreadProfiles:
        original, profiles = self._run, self.profiles

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()

        threading.Thread.run = run  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *_: object) -> None:
        threading.Thread.run = self._run  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_scale", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    os.environ.update(S3_ENV)
    work = Path(tempfile.mkdtemp(prefix="ocps-profile-"))
    try:
        _profile(work, args.jobs, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _profile(work: Path, jobs: int, top: int) -> None:
    """Fill, then profile the first list and trace the memory of a synced backend."""
    with s3_server(work) as s3, control_plane(work, "testenv-profile", ROOMY_NODE) as plane:
        s3_client(s3.url).create_bucket(Bucket=BUCKET)
        kube = Kube(plane)
        namespace = kube.namespace("bench-profile")
        print(f"# fill {jobs} Jobs: {_fill(kube, namespace, jobs, work):.1f} s")
        # Wait until every pod runs, through a throwaway backend.
        warm = _backend(plane.kubeconfig, namespace, s3.url, work / "warm")
        _synced(warm, jobs)
        warm.close()
        del warm

        profiled = _backend(plane.kubeconfig, namespace, s3.url, work / "cprofile")
        profile = cProfile.Profile()
        with _ThreadProfiles() as threads:
            started = time.perf_counter()
            profile.enable()
            records = profiled.list_records()
            profile.disable()
            seconds = time.perf_counter() - started
        print(f"# first list: {len(records)} records in {seconds:.2f} s")
        for title, profiles in (("the request's thread", [profile]), ("watches", threads.profiles)):
            text = io.StringIO()
            stats = pstats.Stats(*profiles, stream=text)
            stats.sort_stats("tottime").print_stats(top)
            print(f"# {title}, by own time\n{text.getvalue()}")
        profiled.close()
        del profiled, records, profile

        before = _rss_kb()
        tracemalloc.start(10)
        traced = _backend(plane.kubeconfig, namespace, s3.url, work / "tracemalloc")
        _synced(traced, jobs)
        traced.list_records()
        snapshot = tracemalloc.take_snapshot()
        after = _rss_kb()
        total = sum(stat.size for stat in snapshot.statistics("filename"))
        print(
            f"# traced after sync + list: {total / 1024 / 1024:.1f} MiB held by Python "
            f"({total / jobs / 1024:.1f} KB/Job); VmRSS +{(after - before) / 1024:.1f} MB"
        )
        for kind in ("filename", "lineno"):
            print(f"# top {top} by {kind}")
            for stat in snapshot.statistics(kind)[:top]:
                print(f"{stat.size / 1024:10.0f} KiB {stat.count:8d} blocks  {stat.traceback}")
        print("# top tracebacks")
        for stat in snapshot.statistics("traceback")[:8]:
            print(f"{stat.size / 1024:10.0f} KiB {stat.count:8d} blocks")
            for line in stat.traceback.format()[-12:]:
                print("   ", line)
        traced.close()


if __name__ == "__main__":
    raise SystemExit(main())
