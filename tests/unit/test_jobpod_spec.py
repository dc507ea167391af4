"""The job pod's operator settings, built into the Job object: one table of settings to fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ocps_jobs.backends.kubernetes.spec import build_job
from ocps_jobs.backends.kubernetes.spec_pod import check_pod_settings
from ocps_jobs.config import Settings
from ocps_jobs.conventions import LABEL_RUN_ID
from ocps_jobs.errors import InvalidRequestError, SettingsError
from ocps_jobs.models import EnvironmentVariable, JobParameters, JobRecord

JOB_ID = "0123456789abcdef0123456789abcdef"


def record(run_id: str = "csc-run", **parameters: Any) -> JobRecord:
    environment = [
        EnvironmentVariable(name=name, value=value)
        for name, value in parameters.pop("env", {}).items()
    ]
    return JobRecord(
        job_id=JOB_ID,
        run_id=run_id,
        owner="ocps-csc",
        creation_time=datetime(2024, 1, 1, tzinfo=UTC),
        parameters=JobParameters(command="true", environment=environment, **parameters),
    )


def settings(**values: Any) -> Settings:
    return Settings.from_env(backend="kubernetes", **values)


def pod(job: Any) -> Any:
    return job.spec.template.spec


def main(job: Any) -> Any:
    (container,) = pod(job).containers
    return container


def env(job: Any) -> list[tuple[str, Any]]:
    return [
        (e.name, e.value if e.value_from is None else e.value_from.secret_key_ref)
        for e in main(job).env
    ]


SUMMIT_VOLUMES = {
    "PROJECT": {"mount_path": "/project", "nfs_server": "nfs1", "nfs_path": "/project"},
    "LATISS": {
        "mount_path": "/repo/LATISS",
        "nfs_server": "nfs2",
        "nfs_path": "/repo",
        "sub_path": "LATISS",
        "read_only": False,
    },
    "AUXTEL": {"mount_path": "/data/auxtel", "claim": "auxtel-data"},
}


def test_data_volumes_nfs_or_claim_each_read_only_or_read_write() -> None:
    job = build_job(record(), settings(data_volumes=SUMMIT_VOLUMES), suspend=False)
    volumes = {v.name: v for v in pod(job).volumes}
    assert volumes["data-latiss"].nfs.server == "nfs2"
    assert volumes["data-latiss"].nfs.path == "/repo"
    assert volumes["data-latiss"].nfs.read_only is False
    assert volumes["data-project"].nfs.read_only is True
    assert volumes["data-auxtel"].persistent_volume_claim.claim_name == "auxtel-data"
    mounts = {m.mount_path: m for m in main(job).volume_mounts}
    assert mounts["/repo/LATISS"].read_only is False
    assert mounts["/repo/LATISS"].sub_path == "LATISS"
    assert mounts["/project"].read_only is True and mounts["/data/auxtel"].read_only is True
    variables = dict(env(job))
    assert variables["DATA_DIR_LATISS"] == "/repo/LATISS"
    assert variables["DATA_DIR_AUXTEL"] == "/data/auxtel"


def test_secret_files_and_variables_literal_or_from_a_secret_key() -> None:
    chosen = settings(
        job_secret_files=[
            {
                "secret": "uws",
                "mount_path": "/home/lsst/.lsst",
                "mode": "0400",  # as text: octal
                "items": {"postgres-credentials.txt": "postgres-credentials.txt"},
            }
        ],
        job_security_context={"run_as_user": 1000, "run_as_group": 202, "fs_group": 202},
        job_variables={
            "PGUSER": "oods",
            "S3_KEY": {"secret": "butler", "key": "key"},
        },
    )
    job = build_job(record(env={"MINE": "1"}), chosen, suspend=False)
    (volume,) = [v for v in pod(job).volumes if v.secret is not None]
    assert volume.secret.secret_name == "uws" and volume.secret.default_mode == 0o400
    assert [item.key for item in volume.secret.items] == ["postgres-credentials.txt"]
    (mount,) = [m for m in main(job).volume_mounts if m.name == volume.name]
    assert mount.mount_path == "/home/lsst/.lsst" and mount.read_only is True
    context = pod(job).security_context
    assert (context.run_as_user, context.run_as_group, context.fs_group) == (1000, 202, 202)
    assert context.run_as_non_root is True
    names = [name for name, _ in env(job)]
    # The operator's variables after the system's and before the caller's.
    assert names.index("PGUSER") < names.index("S3_KEY") < names.index("MINE")
    secret_ref = dict(env(job))["S3_KEY"]
    assert (secret_ref.name, secret_ref.key) == ("butler", "key")
    assert dict(env(job))["PGUSER"] == "oods"
    # No extra container: the uploader and the job only.
    assert [c.name for c in pod(job).init_containers] == ["uploader"]


def test_placement_pull_and_work_folder() -> None:
    chosen = settings(
        job_node_selector={"kubernetes.io/arch": "amd64"},
        job_tolerations=[{"key": "dedicated", "value": "ocps", "effect": "NoSchedule"}],
        job_affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "x", "operator": "In", "values": ["y"]}]}
                    ]
                }
            }
        },
        job_priority_class="ocps-high",
        job_image_pull_secrets=["pull-secret"],
        job_image_pull_policy="Always",
        job_work_dir_size_limit="50Gi",
    )
    spec = pod(build_job(record(), chosen, suspend=False))
    assert spec.node_selector == {"kubernetes.io/arch": "amd64"}
    assert spec.tolerations[0].key == "dedicated" and spec.tolerations[0].effect == "NoSchedule"
    terms = spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert terms.node_selector_terms[0].match_expressions[0].values == ["y"]
    assert spec.priority_class_name == "ocps-high"
    assert [s.name for s in spec.image_pull_secrets] == ["pull-secret"]
    assert spec.containers[0].image_pull_policy == "Always"
    work = next(v for v in spec.volumes if v.empty_dir is not None)
    assert work.empty_dir.size_limit == "50Gi"


def test_default_pod_is_non_root_without_placement() -> None:
    spec = pod(build_job(record(), settings(), suspend=False))
    assert spec.security_context.run_as_non_root is True
    assert spec.node_selector is None and spec.tolerations is None and spec.affinity is None
    assert all(
        c.security_context.allow_privilege_escalation is False
        for c in spec.containers + spec.init_containers
    )


PROFILES = {
    "job_resource_profile_variable": "BUTLER_REPO",
    "job_resource_profiles": {
        "/repo/LATISS": {"cpu_request": "2", "memory_request": "8Gi", "memory_limit": "16Gi"},
        "/repo/LSSTCam": {"cpu_request": "8", "memory_request": "32Gi", "cpu_limit": "16"},
    },
    "job_cpu_request": "1",
    "job_memory_request": "4Gi",
    "job_max_cpu": "16",
    "job_max_memory": "64Gi",
}


@pytest.mark.parametrize(
    ("environment", "asked", "requests", "limits"),
    [
        ({}, {}, {"cpu": "1", "memory": "4Gi"}, None),
        ({"BUTLER_REPO": "/repo/LATISS"}, {}, {"cpu": "2", "memory": "8Gi"}, {"memory": "16Gi"}),
        ({"BUTLER_REPO": "/repo/other"}, {}, {"cpu": "1", "memory": "4Gi"}, None),
        (
            {"BUTLER_REPO": "/repo/LATISS"},
            {"memory": "32Gi"},
            {"cpu": "2", "memory": "32Gi"},
            {"memory": "32Gi"},  # the limit follows a request above it
        ),
        (
            {"BUTLER_REPO": "/repo/LSSTCam"},
            {"cpu": "500m"},
            {"cpu": "500m", "memory": "32Gi"},
            {"cpu": "16"},
        ),
    ],
)
def test_resources_by_profile_then_the_jobs_own_request(
    environment: dict[str, str], asked: dict[str, str], requests: dict[str, str], limits: Any
) -> None:
    job = build_job(record(env=environment, **asked), settings(**PROFILES), suspend=False)
    assert main(job).resources.requests == requests
    assert main(job).resources.limits == limits


@pytest.mark.parametrize(
    ("values", "asked", "named"),
    [
        (PROFILES, {"cpu": "17"}, "OCPS_JOB_MAX_CPU"),
        (PROFILES, {"memory": "65Gi"}, "OCPS_JOB_MAX_MEMORY"),
        ({}, {"cpu": "1"}, "OCPS_JOB_MAX_CPU"),
    ],
)
def test_a_request_above_the_maximum_is_a_400_naming_the_limit(
    values: dict[str, Any], asked: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        build_job(record(**asked), settings(**values), suspend=False)
    assert named in str(raised.value) and raised.value.status == 400


def test_image_tag_from_the_job_only_when_allowed_and_matching() -> None:
    tagged = record(env={"IMAGE_TAG": "w_2025_10"})
    # Off by default: the variable is only a variable.
    assert main(build_job(tagged, settings(), suspend=False)).image == "lsstsqre/centos:d_latest"
    allowed = settings(job_image="ghcr.io/lsst/scipipe", job_image_tag_pattern=r"[dw]_\d{4}_\d{2}")
    job = build_job(tagged, allowed, suspend=False)
    assert main(job).image == "ghcr.io/lsst/scipipe:w_2025_10"
    assert build_job(record(), allowed, suspend=False).spec.template.spec.containers[0].image == (
        "ghcr.io/lsst/scipipe:d_latest"
    )
    for bad in ("latest", "w_2025_10; rm -rf /", "w_2025_1x"):
        with pytest.raises(InvalidRequestError) as raised:
            build_job(record(env={"IMAGE_TAG": bad}), allowed, suspend=False)
        assert "OCPS_JOB_IMAGE_TAG_PATTERN" in str(raised.value)


def test_operator_labels_and_annotations_on_job_and_pod_and_the_run_id_label() -> None:
    chosen = settings(
        job_labels={"argocd.argoproj.io/instance": "ocps-uws-job"},
        job_annotations={"argocd.argoproj.io/sync-options": "Prune=false"},
    )
    job = build_job(record(), chosen, suspend=False)
    for meta in (job.metadata, job.spec.template.metadata):
        assert meta.labels["argocd.argoproj.io/instance"] == "ocps-uws-job"
        assert meta.labels[LABEL_RUN_ID] == "csc-run"
        assert meta.annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
    # A run id that is no label value stays an annotation only.
    odd = build_job(record(run_id="run with spaces"), chosen, suspend=False)
    assert LABEL_RUN_ID not in odd.metadata.labels


BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "volume without source": (
        {"data_volumes": {"A": {"mount_path": "/a"}}},
        "OCPS_DATA_VOLUMES at A",
    ),
    "volume relative path": (
        {"data_volumes": {"A": {"mount_path": "a", "claim": "c"}}},
        "OCPS_DATA_VOLUMES at A.mount_path",
    ),
    "volume half nfs": (
        {"data_volumes": {"A": {"mount_path": "/a", "nfs_server": "n"}}},
        "OCPS_DATA_VOLUMES",
    ),
    "volume bad name": ({"data_volumes": {"A-B": {"mount_path": "/a", "claim": "c"}}}, "A-B"),
    "secret files mode": (
        {"job_secret_files": [{"secret": "s", "mount_path": "/s", "mode": 0o1000}]},
        "OCPS_JOB_SECRET_FILES at 0.mode",
    ),
    "secret files mode text": (
        {"job_secret_files": [{"secret": "s", "mount_path": "/s", "mode": "rw"}]},
        "OCPS_JOB_SECRET_FILES at 0.mode",
    ),
    "variable half secret": ({"job_variables": {"A": {"secret": "s"}}}, "OCPS_JOB_VARIABLES"),
    "variable reserved": ({"job_variables": {"JOB_ID": "x"}}, "OCPS_JOB_VARIABLES"),
    "root user": ({"job_security_context": {"run_as_user": 0}}, "OCPS_JOB_SECURITY_CONTEXT"),
    "node selector value": ({"job_node_selector": {"a": "b c"}}, "OCPS_JOB_NODE_SELECTOR"),
    "toleration effect": (
        {"job_tolerations": [{"key": "k", "effect": "Sometimes"}]},
        "OCPS_JOB_TOLERATIONS",
    ),
    "affinity field": ({"job_affinity": {"nodeAffinty": {}}}, "OCPS_JOB_AFFINITY"),
    "priority class": ({"job_priority_class": "High"}, "OCPS_JOB_PRIORITY_CLASS"),
    "pull policy": ({"job_image_pull_policy": "Sometimes"}, "OCPS_JOB_IMAGE_PULL_POLICY"),
    "size limit": ({"job_work_dir_size_limit": "lots"}, "OCPS_JOB_WORK_DIR_SIZE_LIMIT"),
    "profile limit below request": (
        {
            "job_resource_profile_variable": "R",
            "job_resource_profiles": {
                "x": {"cpu_request": "4", "memory_request": "1Gi", "cpu_limit": "2"}
            },
        },
        "OCPS_JOB_RESOURCE_PROFILES at x",
    ),
    "profiles without variable": (
        {"job_resource_profiles": {"x": {"cpu_request": "1", "memory_request": "1Gi"}}},
        "job_resource_profile_variable",
    ),
    "max cpu": ({"job_max_cpu": "many"}, "OCPS_JOB_MAX_CPU"),
    "tag pattern": ({"job_image_tag_pattern": "w_(["}, "OCPS_JOB_IMAGE_TAG_PATTERN"),
    "label key": ({"job_labels": {"bad key": "x"}}, "OCPS_JOB_LABELS"),
    "annotation key": ({"job_annotations": {"/x": "y"}}, "OCPS_JOB_ANNOTATIONS"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_each_bad_setting_is_refused_in_one_line_naming_it(case: str) -> None:
    values, named = BAD_SETTINGS[case]
    with pytest.raises(SettingsError) as raised:
        settings(**values)
    message = str(raised.value)
    assert named in message and "\n" not in message, message


def test_an_affinity_kubernetes_would_refuse_stops_the_start_naming_where() -> None:
    wrong = settings(job_affinity={"nodeAffinity": {"requiredDuringScheduling": {}}})
    with pytest.raises(SettingsError) as raised:
        check_pod_settings(wrong)
    message = str(raised.value)
    assert "OCPS_JOB_AFFINITY at nodeAffinity.requiredDuringScheduling" in message
    assert "\n" not in message
    check_pod_settings(settings(job_affinity={"podAntiAffinity": {}}))  # a valid one passes


def test_the_service_is_not_built_with_such_an_affinity(tmp_path: Any) -> None:
    from ocps_jobs.composition import build_service

    wrong = settings(
        job_affinity={"nodeAffinity": {"requiredDuringScheduling": {}}},
        s3_endpoint="http://127.0.0.1:9",
        kubeconfig=tmp_path / "never-read",
        data_dir=tmp_path,
    )
    with pytest.raises(SettingsError, match="OCPS_JOB_AFFINITY"):
        build_service(wrong)
