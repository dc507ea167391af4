"""One upload in a fresh process, so that its peak RSS is its own: prints a JSON line.

``python -m bench.upload_worker uploader|sequential|transfer ENDPOINT BUCKET DIR JOB_ID``

``sequential``: boto3's ``upload_file`` per file, default configuration; ``transfer``: one
boto3 transfer manager for every file, 16 concurrent transfers across files, 8 MiB parts.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

TRANSFERS = 16
PART = 8 * 1024 * 1024


def _files(output_dir: Path) -> list[tuple[str, str]]:
    """Every file under ``output_dir``: its path and its path relative to the folder."""
    found = []
    for folder_path, _dirs, files in os.walk(output_dir):
        for name in sorted(files):
            path = os.path.join(folder_path, name)
            found.append((path, os.path.relpath(path, output_dir)))
    return found


def main() -> int:
    mode, endpoint, bucket, folder, job_id = sys.argv[1:6]
    output_dir = Path(folder)
    if mode == "uploader":
        from ocps_jobs.objectstore.s3 import S3Store
        from ocps_jobs.uploader.upload import Uploader

        store = S3Store(bucket, endpoint)
        store.client.head_bucket(Bucket=bucket)  # connect before the clock starts
        started = time.perf_counter()
        manifest = Uploader(store, job_id, output_dir).finish()
        seconds = time.perf_counter() - started
        count = len(manifest["files"])
    elif mode == "sequential":
        import boto3

        client = boto3.session.Session().client("s3", endpoint_url=endpoint)
        client.head_bucket(Bucket=bucket)
        started = time.perf_counter()
        files = _files(output_dir)
        for path, relative in files:
            client.upload_file(path, bucket, f"baseline/{job_id}/{relative}")
        seconds = time.perf_counter() - started
        count = len(files)
    elif mode == "transfer":
        import boto3
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=Config(max_pool_connections=TRANSFERS)
        )
        client.head_bucket(Bucket=bucket)
        config = TransferConfig(
            max_concurrency=TRANSFERS, multipart_chunksize=PART, multipart_threshold=PART
        )
        started = time.perf_counter()
        with create_transfer_manager(client, config) as manager:
            futures = [
                manager.upload(path, bucket, f"baseline/{job_id}/{relative}")
                for path, relative in _files(output_dir)
            ]
            for future in futures:
                future.result()
        seconds = time.perf_counter() - started
        count = len(futures)
    else:
        raise SystemExit(f"unknown mode {mode}")
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the
    # benchmark process that started this one.
    peak_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)  # includes imports and connecting
    cpu_seconds = round(usage.ru_utime + usage.ru_stime, 2)
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": seconds,
                "files": count,
                "peak_rss_kb": peak_kb,
                "process_cpu_s": cpu_seconds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
