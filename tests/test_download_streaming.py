"""Large downloads through ``ocps-jobs serve`` arrive whole, by range, and on a kept connection."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import requests

from tests.chaos import ServeProcess
from tests.helpers import wait_until

LINES = 2_000_000  # `seq` output of about 15 MB: several times waitress's 4 MiB high watermark
EXPECTED = "".join(f"{number}\n" for number in range(1, LINES + 1)).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    """A server with one completed job whose result is ``seq 1 LINES``; its result's URL."""
    data_dir = tmp_path_factory.mktemp("streaming") / "data"
    with ServeProcess(data_dir, "--max-concurrent-jobs", "1") as server:
        created = requests.put(
            f"{server.url}/api/v1/job",
            json={"command": f"seq 1 {LINES} > $JOB_OUTPUT_DIR/numbers.txt"},
            timeout=10,
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["jobId"]

        def completed() -> bool:
            answer = requests.get(f"{server.url}/api/v1/job/{job_id}/phase", timeout=10)
            return bool(answer.json() == "completed")

        wait_until(completed, timeout=60)
        listing = requests.get(f"{server.url}/api/v1/job/{job_id}/results", timeout=10).json()
        result = next(item["id"] for item in listing if item["uri"].endswith("numbers.txt"))
        yield server, f"{server.url}/api/v1/job/result/{result}"


def test_a_download_larger_than_the_send_buffers_arrives_whole(
    served: tuple[ServeProcess, str],
) -> None:
    _server, url = served
    with requests.get(url, stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(EXPECTED)
        digest = hashlib.sha256()
        for block in response.iter_content(256 * 1024):
            digest.update(block)
    assert digest.hexdigest() == hashlib.sha256(EXPECTED).hexdigest()


def test_ranges_across_chunk_boundaries_and_requests_after_them_on_one_connection(
    served: tuple[ServeProcess, str],
) -> None:
    server, url = served
    with requests.Session() as session:
        for first, last in [(1_048_570, 5_242_890), (0, 0), (len(EXPECTED) - 9, len(EXPECTED) - 1)]:
            response = session.get(url, headers={"Range": f"bytes={first}-{last}"}, timeout=30)
            assert response.status_code == 206
            assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(EXPECTED)}"
            assert response.content == EXPECTED[first : last + 1]
            # The next answer on the same connection starts clean after the streamed one.
            assert session.get(f"{server.url}/api/v1/job", timeout=10).status_code == 200
        assert session.get(url, timeout=30).content == EXPECTED
