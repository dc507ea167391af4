"""pyvo's own ``AsyncTAPJob`` drives jobs on a real ``ocps-jobs serve`` over HTTP, unmodified."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from pyvo.dal import AsyncTAPJob
from pyvo.dal.exceptions import DALQueryError, DALServiceError

from tests.chaos import ServeProcess
from tests.helpers import wait_until
from tests.test_uws import check_job, check_job_list, valid_xml

pytestmark = pytest.mark.slow

MAX_EXECUTION_DURATION = 3600


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    running = ServeProcess(
        tmp_path_factory.mktemp("uws-server") / "data",
        env={
            "OCPS_MAX_EXECUTION_DURATION": str(MAX_EXECUTION_DURATION),
            "OCPS_MAX_CONCURRENT_JOBS": "4",
        },
    ).start()
    yield running
    running.stop()


def submit(server: ServeProcess, **fields: str) -> str:
    """Create a job with a plain form POST (pyvo's create sends TAP's ADQL parameters)."""
    response = requests.post(
        f"{server.url}/uws/async", data=fields, allow_redirects=False, timeout=10
    )
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def test_pyvo_runs_a_job_end_to_end(server: ServeProcess) -> None:
    job_url = submit(
        server,
        command='echo "$GREETING" > $JOB_OUTPUT_DIR/greeting.txt',
        env="GREETING=hello from pyvo",
        RUNID="pyvo-1",
    )
    assert job_url.startswith(server.url + "/uws/async/")
    job = AsyncTAPJob(job_url)
    assert job.phase == "PENDING"
    assert job.uws_version == "1.1"
    assert job.job.runid == "pyvo-1"
    assert job.owner is None

    job.execution_duration = 7200  # over the configured maximum: clamped
    assert job.execution_duration.value == MAX_EXECUTION_DURATION
    job.execution_duration = 600
    assert job.execution_duration.value == 600

    destruction = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0, tzinfo=None)
    job.destruction = destruction
    assert job.destruction.datetime == destruction

    job.run()
    job.wait(timeout=60)
    assert job.phase == "COMPLETED"
    job.raise_if_error()
    assert job.job.starttime is not None and job.job.endtime is not None

    by_id = {result.id_: result for result in job.results}
    assert set(by_id) == {"greeting.txt", "ocps-job.log"}
    download = requests.get(by_id["greeting.txt"].href, timeout=10)
    assert download.status_code == 200
    assert download.text == "hello from pyvo\n"
    assert by_id["greeting.txt"].size == len(download.content)

    document = requests.get(job_url, timeout=10)
    assert check_job(document.content).phase == "COMPLETED"
    listing = requests.get(f"{server.url}/uws/async", params={"PHASE": "COMPLETED"}, timeout=10)
    assert job.job_id in [ref.jobid for ref in check_job_list(listing.content)]
    valid_xml(requests.get(f"{job_url}/results", timeout=10).content)
    valid_xml(requests.get(f"{job_url}/parameters", timeout=10).content)

    job.delete()
    assert requests.get(job_url, timeout=10).status_code == 404


def test_pyvo_aborts_a_running_job(server: ServeProcess) -> None:
    command = "echo started > $JOB_OUTPUT_DIR/started.txt; echo written; sleep 100"
    job = AsyncTAPJob(submit(server, command=command))
    job.run()
    # Not wait(phases={"EXECUTING"}): its WAIT=-1 rightly blocks while the job executes.
    # Aborted once its partial output is written (its log says so), not merely executing.
    log_url = f"{server.url}/api/v1/job/{job.job_id}/log"
    wait_until(lambda: "written" in requests.get(log_url, timeout=10).text)
    started = time.monotonic()
    job.abort()
    assert job.phase == "ABORTED"
    assert time.monotonic() - started < 15
    assert job.job.endtime is not None
    assert {result.id_ for result in job.results} == {"started.txt", "ocps-job.log"}
    with pytest.raises(DALQueryError, match="Aborted by request"):
        job.raise_if_error()
    job.delete()


def test_pyvo_sees_errors_and_overrun_aborts(server: ServeProcess) -> None:
    with AsyncTAPJob(submit(server, command="echo broken >&2; exit 3")) as failing:
        failing.run().wait(timeout=60)
        assert failing.phase == "ERROR"
        with pytest.raises(DALQueryError, match="exited with code 3: broken"):
            failing.raise_if_error()
        job_url = failing.url
    assert requests.get(job_url, timeout=10).status_code == 404  # deleted on exit

    overrun = AsyncTAPJob(submit(server, command="sleep 60"))
    overrun.execution_duration = 1
    started = time.monotonic()
    # pyvo's wait() refuses to go on once a job is ABORTED: that is how it ends here.
    with pytest.raises(DALServiceError, match="not active"):
        overrun.run().wait(timeout=60)
    assert overrun.phase == "ABORTED"
    assert time.monotonic() - started < 20
    with pytest.raises(DALQueryError, match="execution duration of 1 s"):
        overrun.raise_if_error()
    overrun.delete()


def test_wait_over_http_returns_on_the_phase_change(server: ServeProcess) -> None:
    job_url = submit(server, command="sleep 30")

    def waited() -> tuple[float, bytes]:
        started = time.monotonic()
        response = requests.get(job_url, params={"WAIT": "50"}, timeout=70)
        return time.monotonic() - started, response.content

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(waited)
        time.sleep(0.5)
        assert not future.done()
        requests.post(f"{job_url}/phase", data={"PHASE": "RUN"}, timeout=10)
        elapsed, body = future.result(timeout=30)
    assert 0.4 < elapsed < 10
    assert check_job(body).phase in {"QUEUED", "EXECUTING"}
    started = time.monotonic()
    mismatch = requests.get(job_url, params={"WAIT": "50", "PHASE": "PENDING"}, timeout=70)
    assert time.monotonic() - started < 5
    assert check_job(mismatch.content).phase in {"QUEUED", "EXECUTING"}
    requests.delete(job_url, timeout=10)


def test_idle_waiters_do_not_burn_cpu(server: ServeProcess) -> None:
    job_url = submit(server, command="true")
    waiters = 48  # under the server's 64 HTTP threads
    before = server.cpu_seconds()
    started = time.monotonic()
    with ThreadPoolExecutor(waiters) as pool:
        responses = list(
            pool.map(
                lambda _: requests.get(job_url, params={"WAIT": "3"}, timeout=30),
                range(waiters),
            )
        )
    elapsed = time.monotonic() - started
    used = server.cpu_seconds() - before
    assert all(response.status_code == 200 for response in responses)
    assert 2.5 < elapsed < 20
    # A busy loop per waiter would cost about one CPU-second per second.
    assert used < 1.5, f"{used:.2f} CPU seconds for {waiters} idle waiters"
    requests.delete(job_url, timeout=10)
