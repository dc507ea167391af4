"""Why a queued job waits, and the start timeout, on the test control plane (KWOK pods)."""

from __future__ import annotations

from collections.abc import Callable

from kubernetes import client as k8s
from lxml import etree

from ocps_jobs.http import create_embedded_app
from ocps_jobs.http.uws_xml import OCPS_NS, UWS_NS
from ocps_jobs.service import JobService
from tests.helpers import wait_until

START_TIMEOUT = 15


def test_an_image_that_cannot_be_pulled_shows_why_then_ends_error(
    make_cluster_service: Callable[..., JobService], kube: k8s.ApiClient, namespace: str
) -> None:
    service = make_cluster_service(
        pod_annotations={"ocps.test/image-pull-error": "true"},
        start_timeout_seconds=START_TIMEOUT,
    )
    client = create_embedded_app(service).test_client()
    job_id = client.put("/api/v1/job", json={"command": "true"}).get_json()["jobId"]

    waiting = wait_until(
        lambda: (
            (job := client.get(f"/api/v1/job/{job_id}").get_json())["errorSummary"]["message"]
            and job
        )
    )
    assert waiting["phase"] == "queued"
    assert waiting["errorSummary"]["message"].startswith("ImagePullBackOff: Back-off pulling")
    assert waiting["jobInfo"] == {}  # the seed's fields only: the CSC reads them unchanged

    def uws_waiting() -> bytes | None:
        data: bytes = client.get(f"/uws/async/{job_id}").data
        found = etree.fromstring(data).find(f"{{{UWS_NS}}}jobInfo/{{{OCPS_NS}}}waitingReason")
        return data if found is not None else None

    # A moment later when the read meets the watched copy, which sees the pod a bit later.
    document = etree.fromstring(wait_until(uws_waiting))
    assert document.findtext(f"{{{UWS_NS}}}phase") == "QUEUED"
    reason = document.findtext(f"{{{UWS_NS}}}jobInfo/{{{OCPS_NS}}}waitingReason")
    assert reason == waiting["errorSummary"]["message"]
    assert document.find(f"{{{UWS_NS}}}errorSummary") is None  # not an error yet

    ended = wait_until(
        lambda: (job := client.get(f"/api/v1/job/{job_id}").get_json())["phase"] == "error" and job,
        timeout=START_TIMEOUT + 30,
        interval=0.5,
    )
    message = ended["errorSummary"]["message"]
    assert message.startswith(f"The job could not start within {START_TIMEOUT} s:")
    assert "ImagePullBackOff" in message
    assert ended["endTime"]
    core = k8s.CoreV1Api(kube)
    wait_until(
        lambda: (
            not core.list_namespaced_pod(
                namespace, label_selector=f"ocps.lsst.io/job-id={job_id}"
            ).items
        ),
        timeout=30,
    )
    uws = etree.fromstring(client.get(f"/uws/async/{job_id}").data)
    assert uws.findtext(f"{{{UWS_NS}}}phase") == "ERROR"
    assert uws.findtext(f"{{{UWS_NS}}}errorSummary/{{{UWS_NS}}}message") == message
    assert client.get(f"/api/v1/job/{job_id}").get_json() == ended  # it stays ended
