"""charts/ocps-jobs: knative/ is its default rendering; lint, template and dry-run of both topologies.

Helm is the test environment's (scripts/testenv helm, built from helm.sh/helm/v4 into its
cache). Every rendered manifest is server-side dry-run on the test control plane with the
real CRDs: Knative Serving and Gateway API from the testenv cache, GafaelfawrIngress and
VaultSecret from the reference folder beside the repository (../shared/reference/crds, or
``$OCPS_REFERENCE_DIR/crds``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

CHART = REPO_ROOT / "charts" / "ocps-jobs"
KNATIVE = REPO_ROOT / "knative"
RENDER_KNATIVE = REPO_ROOT / "scripts" / "render-knative"
TESTENV = REPO_ROOT / "scripts" / "testenv"


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def render_knative(*args: str) -> subprocess.CompletedProcess[str]:
    # The first call may build helm (about 3 minutes on 2 cores).
    return run([sys.executable, str(RENDER_KNATIVE), *args], timeout=1800)


# --- knative/ is the chart's default rendering -------------------------------------------


def test_knative_folder_is_the_default_rendering_of_the_chart(tmp_path: Path) -> None:
    done = render_knative("--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rendered = {path.name: path.read_text() for path in tmp_path.glob("*.yaml")}
    assert {"kustomization.yaml", "httproute.yaml", "rbac.yaml", "configmap.yaml"} <= set(
        rendered
    )
    for name, text in rendered.items():
        assert (KNATIVE / name).read_text() == text, f"knative/{name}: run scripts/render-knative"
    # Every manifest of knative/ but the hand-written Secret template comes from the chart.
    on_disk = {path.name for path in KNATIVE.glob("*.yaml")}
    assert on_disk - set(rendered) == {"secret.example.yaml"}
    check = render_knative("--check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_render_check_reports_a_knative_folder_out_of_step() -> None:
    done = render_knative("--check", "--", "--set", "knative.functions.queryJob.maxScale=11")
    assert done.returncode == 1
    assert '-        autoscaling.knative.dev/max-scale: "10"' in done.stdout
    assert '+        autoscaling.knative.dev/max-scale: "11"' in done.stdout
