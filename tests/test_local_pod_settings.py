"""The embedded backend applies the job pod settings a local process can use, and names the rest."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from tests.helpers import wait_for_phase


def test_variables_and_data_folders_applied_the_rest_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "repo"
    data.mkdir()
    (data / "marker.txt").write_text("in the data folder\n")
    settings = Settings.from_env(
        data_dir=tmp_path / "state",
        data_volumes={"REPO": {"mount_path": str(data), "claim": "butler-repo"}},
        job_variables={"PGUSER": "oods", "SECRET_ONE": {"secret": "s", "key": "k"}},
        job_security_context={"run_as_user": 1000, "fs_group": 202},
        job_node_selector={"kubernetes.io/arch": "amd64"},
        job_max_cpu="8",
    )
    with caplog.at_level(logging.INFO, logger="ocps_jobs.backends.local"):
        service = build_service(settings)
    lines = [r.getMessage() for r in caplog.records if "ignores" in r.getMessage()]
    assert len(lines) == 1, lines
    for name in (
        "OCPS_JOB_SECURITY_CONTEXT",
        "OCPS_JOB_NODE_SELECTOR",
        "OCPS_JOB_MAX_CPU",
        "OCPS_JOB_VARIABLES (those from Secrets)",
    ):
        assert name in lines[0]
    assert "OCPS_DATA_VOLUMES" not in lines[0]
    client = create_embedded_app(service).test_client()
    created = client.put(
        "/api/v1/job",
        json={
            "command": 'cat "$DATA_DIR_REPO/marker.txt" > $JOB_OUTPUT_DIR/out.txt; '
            'echo "$PGUSER|${SECRET_ONE-unset}" >> $JOB_OUTPUT_DIR/out.txt',
            "cpu": "2",
        },
    )
    assert created.status_code == 200, created.data
    job_id = created.get_json()["jobId"]
    wait_for_phase(
        lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json(),
        {"completed", "error", "aborted"},
        30,
    )
    results = client.get(f"/api/v1/job/{job_id}/results").get_json()
    (result,) = [item for item in results if item["uri"].endswith("/out/out.txt")]
    text = client.get(f"/api/v1/job/result/{result['id']}").get_data(as_text=True)
    assert text == "in the data folder\noods|unset\n"
