"""One version: pyproject, the installed package, OpenAPI, the chart, the images, the changelog."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import ocps_jobs
from ocps_jobs.http.openapi import openapi_document
from tests.conftest import REPO_ROOT

CHART = REPO_ROOT / "charts" / "ocps-jobs"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "release.yaml"


def pyproject_version() -> str:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def test_package_openapi_and_chart_carry_the_one_version() -> None:
    version = pyproject_version()
    installed = importlib.metadata.version("ocps-jobs")
    assert installed == version, "the installed metadata is stale: run ./run setup"
    assert ocps_jobs.__version__ == version
    assert openapi_document()["info"]["version"] == version
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version
    # The images default to appVersion: no tag is written in the values.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == "" and values["uploader"]["image"]["tag"] == ""
    assert re.search(
        rf"^## \[{re.escape(version)}\]", (REPO_ROOT / "CHANGELOG.md").read_text(), re.M
    )


def test_the_workflow_pushes_the_charts_images_from_their_dockerfiles() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    registry = workflow["env"]["REGISTRY"]
    matrix = workflow["jobs"]["images"]["strategy"]["matrix"]["image"]
    pushed = {f"{registry}/{item['name']}": item["dockerfile"] for item in matrix}
    assert set(pushed) == {values["image"]["repository"], values["uploader"]["image"]["repository"]}
    for dockerfile in pushed.values():
        text = (REPO_ROOT / dockerfile).read_text()
        assert "ARG VERSION" in text and 'org.opencontainers.image.version="$VERSION"' in text
    assert workflow["on"]["push"]["tags"] == ["v*"]


def test_set_version_refuses_what_is_not_a_semantic_version() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "set-version"), "1.2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "semantic version" in done.stderr
    assert pyproject_version() != "1.2"


def test_set_version_writes_every_place(tmp_path: Path) -> None:
    """On a copy of the repository's files: each place gets the new version."""
    copy = tmp_path / "repo"
    for name in (
        "pyproject.toml",
        "CHANGELOG.md",
        "charts/ocps-jobs/Chart.yaml",
        "shared/ocps_jobs/__init__.py",
        "scripts/set-version",
    ):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text((REPO_ROOT / name).read_text())
    # A stand-in render step: the copy has no chart templates to render.
    (copy / "scripts" / "render-knative").write_text("import sys\nsys.exit(0)\n")
    (copy / "CHANGELOG.md").write_text("# Changelog\n\n## [2.3.4]\n")
    done = subprocess.run(
        [sys.executable, str(copy / "scripts" / "set-version"), "2.3.4"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert tomllib.loads((copy / "pyproject.toml").read_text())["project"]["version"] == "2.3.4"
    chart = yaml.safe_load((copy / "charts/ocps-jobs/Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == "2.3.4"
    assert '__version__ = "2.3.4"' in (copy / "shared/ocps_jobs/__init__.py").read_text()
