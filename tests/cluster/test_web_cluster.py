"""The web view in headless Chromium on the Kubernetes backend (test control plane, KWOK).

The jobs table follows a Job from the watch without a reload, a running job's page follows
its pod's log (KWOK's ``pods/log``) live, a failed job's page shows its error and the log
its uploader stored, a result downloads, and Abort stops a job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from selenium import webdriver
from selenium.webdriver.common.by import By
from waitress.server import create_server

from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRequest, Phase
from ocps_jobs.service import JobService
from ocps_jobs.uploader.upload import Uploader
from tests.browser import wait_for
from tests.cluster.test_cluster_logs import cri_lines, pods_of, serve_log
from tests.helpers import wait_until

ANYONE = Caller()


class Served:
    """The embedded app of a service on a free loopback port, in a thread."""

    def __init__(self, service: JobService) -> None:
        self.server = create_server(
            create_embedded_app(service), host="127.0.0.1", port=0, threads=8
        )
        self.url = f"http://127.0.0.1:{self.server.effective_port}"  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[JobService], Served]]:
    running: list[Served] = []

    def start(service: JobService) -> Served:
        running.append(Served(service))
        return running[-1]

    yield start
    for served in running:
        served.close()


def row_phase(browser: webdriver.Chrome, job_id: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"] .phase')
    return rows[0].text if rows else None


def test_a_failing_job_followed_read_and_downloaded_in_the_browser(
    make_cluster_service: Callable[..., JobService],
    serve: Callable[[JobService], Served],
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    service = make_cluster_service(
        pod_annotations={
            "ocps.test/run-seconds": "4",
            "ocps.test/exit-code": "3",
            "ocps.test/exit-message": "Command exited with code 3:\nno flat for detector 17",
        },
    )
    served = serve(service)
    browser.get(served.url + "/")
    browser.execute_script("window.sameDocument = 'still here'")
    record = service.create_job(JobRequest(command="exit 3", run_id="cluster-calib"), ANYONE)
    job_id = record.job_id
    wait_for(browser, lambda b: row_phase(b, job_id) in {"queued", "executing"}, timeout=30)
    # What the uploader sidecar stores for the job's outputs and log.
    output = tmp_path / job_id / "out"
    output.mkdir(parents=True)
    (output / "summary.txt").write_text("calibrated 41 of 42\n")
    (output / "ocps-job.log").write_text("step 1: bias\nno flat for detector 17\n")
    Uploader(service.store, job_id, output).finish(exitCode=3)
    wait_for(browser, lambda b: row_phase(b, job_id) == "error", timeout=60)
    assert browser.execute_script("return window.sameDocument") == "still here"
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]')
    assert "Command exited with code 3:" in row.find_element(By.CSS_SELECTOR, ".error").text
    row.find_element(By.LINK_TEXT, "cluster-calib").click()
    wait_for(browser, lambda b: b.find_elements(By.ID, "log"))
    assert "no flat for detector 17" in browser.find_element(By.ID, "error-summary").text
    assert "step 1: bias" in browser.find_element(By.ID, "log").text
    browser.find_element(By.CSS_SELECTOR, 'a[aria-label="Download summary.txt"]').click()
    downloaded = browser.downloads / "summary.txt"  # type: ignore[attr-defined]
    wait_for(browser, lambda b: downloaded.is_file() and downloaded.stat().st_size > 0)
    assert downloaded.read_text() == "calibrated 41 of 42\n"


def test_the_abort_button_stops_a_kubernetes_job(
    make_cluster_service: Callable[..., JobService],
    serve: Callable[[JobService], Served],
    browser: webdriver.Chrome,
) -> None:
    service = make_cluster_service(pod_annotations={"ocps.test/run-seconds": "120"})
    served = serve(service)
    record = service.create_job(JobRequest(command="sleep 120", run_id="cluster-abort"), ANYONE)
    wait_until(lambda: service.get_job(record.job_id, ANYONE).phase is Phase.EXECUTING)
    browser.get(f"{served.url}/web/jobs/{record.job_id}")
    browser.find_element(By.ID, "abort").click()
    wait_for(browser, lambda b: b.switch_to.alert).accept()
    shown = "return document.getElementById('job-phase').textContent"
    wait_for(browser, lambda b: b.execute_script(shown) == "aborted", timeout=60)
    assert service.get_job(record.job_id, ANYONE).phase is Phase.ABORTED


def test_a_running_pods_log_is_followed_live_in_the_browser(
    make_cluster_service: Callable[..., JobService],
    serve: Callable[[JobService], Served],
    browser: webdriver.Chrome,
    namespace: str,
    kube: k8s.ApiClient,
    tmp_path: Path,
) -> None:
    # A 2 s wait cap: the page's follow ends and is asked again (skip=) while the pod runs.
    service = make_cluster_service(
        pod_annotations={"ocps.test/run-seconds": "120"}, wait_max_seconds=2
    )
    served = serve(service)
    record = service.create_job(JobRequest(command="echo simulated", run_id="live-pod"), ANYONE)
    job_id = record.job_id
    (pod,) = wait_until(lambda: pods_of(kube, namespace, job_id))
    log_file = tmp_path / "pod.log"
    log_file.write_text(cri_lines("before the page loaded"))
    serve_log(kube, namespace, pod.metadata.name, log_file)
    wait_until(lambda: service.get_job(job_id, ANYONE).phase is Phase.EXECUTING)
    browser.get(f"{served.url}/web/jobs/{job_id}")
    browser.execute_script("window.sameDocument = 'still here'")
    shown = "return document.getElementById('log').textContent"
    wait_for(browser, lambda b: "before the page loaded" in b.execute_script(shown), timeout=30)
    time.sleep(3)  # past the wait cap
    injected = "<img src=x onerror=window.injected=1>"
    with open(log_file, "a") as appended:
        appended.write(cri_lines("after the page loaded", injected))
    wait_for(browser, lambda b: injected in b.execute_script(shown), timeout=30)
    text = browser.execute_script(shown)
    assert text.count("before the page loaded") == 1, text
    assert text.index("before the page") < text.index("after the page")
    assert service.get_job(job_id, ANYONE).phase is Phase.EXECUTING
    assert browser.execute_script("return window.sameDocument") == "still here"
    assert browser.execute_script("return window.injected") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#log *, main img")
    service.abort_job(job_id, ANYONE)
