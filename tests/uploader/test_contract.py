"""The uploader's contract: configuration ↔ environment, the Job builder's side, the store rule."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ocps_jobs.backends.kubernetes.spec import (
    GIT_CLONE_SCRIPT,
    WRAPPER_SCRIPT,
    build_job,
    uploader_configuration,
)
from ocps_jobs.config import Settings
from ocps_jobs.conventions import ENV_JOB_REPLICA_INDEX, LOG_RESULT_NAME
from ocps_jobs.errors import SettingsError
from ocps_jobs.models import JobParameters, JobRecord
from ocps_jobs.objectstore import open_store
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.objectstore.s3 import S3Store
from ocps_jobs.uploader.contract import (
    DEFAULT_UPLOAD_INTERVAL_SECONDS,
    EXIT_CODE_FILE_NAME,
    FAILURE_FILE_NAME,
    LOG_FILE_NAME,
    STDERR_FILE_NAME,
    OutputLimits,
    UploaderConfig,
    UploaderConfigError,
)
from tests.helpers import container_view

JOB_ID = "0123456789abcdef0123456789abcdef"

# Every field set, none at its default: each one must reach the environment and come back.
EVERYTHING = UploaderConfig(
    job_id=JOB_ID,
    output_dir="/jobs/x/out",
    exit_code_file="/jobs/x/done",
    log_file="/jobs/x/all.log",
    bucket="other-bucket",
    s3_region="eu-west-3",
    s3_endpoint="http://s3.example:9000",
    store_dir="/srv/objects",
    upload_interval_seconds=2.5,
    upload_attempts=3,
    upload_backoff_seconds=0.25,
    job_record_file="/etc/ocps-job/record.json",
    job_record='{"job_id": "x"}',
    replicas=4,
    replica_index=2,
    log_level="DEBUG",
    log_format="json",
    limits=OutputLimits(max_bytes=5_000, max_files=6, max_depth=7),
)


def test_every_field_travels_through_the_environment_and_back() -> None:
    for field in dataclasses.fields(UploaderConfig):
        if field.default is not dataclasses.MISSING:
            assert getattr(EVERYTHING, field.name) != field.default, field.name
    environment = EVERYTHING.to_environment()
    assert UploaderConfig.from_environment(environment) == EVERYTHING
    # Each field has a variable of its own: dropping any one changes what is read back.
    for name in environment:
        partial = {key: value for key, value in environment.items() if key != name}
        if name in ("JOB_ID", "JOB_OUTPUT_DIR"):
            with pytest.raises(UploaderConfigError, match=name):
                UploaderConfig.from_environment(partial)
        else:
            assert UploaderConfig.from_environment(partial) != EVERYTHING, name
    assert all(isinstance(value, str) for value in environment.values())


def test_defaults_travel_too_and_a_plain_job_names_no_replicas() -> None:
    config = UploaderConfig(job_id=JOB_ID, output_dir="/jobs/x/out")
    environment = config.to_environment()
    assert UploaderConfig.from_environment(environment) == config
    assert "OCPS_REPLICAS" not in environment and ENV_JOB_REPLICA_INDEX not in environment
    assert config.exit_code_path == f"/jobs/x/{EXIT_CODE_FILE_NAME}"
    assert config.work_file(STDERR_FILE_NAME) == "/jobs/x/stderr"
    assert config.index == 0


def test_one_upload_interval_default_for_settings_and_the_uploader() -> None:
    assert Settings().upload_interval_seconds == DEFAULT_UPLOAD_INTERVAL_SECONDS == 30
    parsed = UploaderConfig.from_environment({"JOB_ID": JOB_ID, "JOB_OUTPUT_DIR": "/o"})
    assert parsed.upload_interval_seconds == DEFAULT_UPLOAD_INTERVAL_SECONDS
    assert LOG_FILE_NAME == LOG_RESULT_NAME


def test_the_output_limits_are_settings_of_the_same_names_with_the_same_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().output_limits == OutputLimits()
    monkeypatch.setenv("OCPS_MAX_OUTPUT_FILES", "250")
    monkeypatch.setenv("OCPS_MAX_OUTPUT_DEPTH", "0")
    assert Settings.from_env().output_limits == OutputLimits(max_files=250, max_depth=0)
    limits = UploaderConfig(job_id=JOB_ID, output_dir="/o", limits=Settings().output_limits)
    assert limits.to_environment()["OCPS_MAX_OUTPUT_BYTES"] == str(Settings().max_output_bytes)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OCPS_MAX_OUTPUT_BYTES", "0"),
        ("OCPS_MAX_OUTPUT_FILES", "many"),
        ("OCPS_MAX_OUTPUT_DEPTH", "-2"),
    ],
)
def test_a_bad_output_limit_stops_the_service_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable) as refused:
        Settings.from_env()
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OCPS_UPLOAD_INTERVAL", "soon"),
        ("OCPS_UPLOAD_INTERVAL", "-1"),
        ("OCPS_UPLOAD_INTERVAL", "inf"),
        ("OCPS_UPLOAD_ATTEMPTS", "0"),
        ("OCPS_UPLOAD_ATTEMPTS", "2.5"),
        ("OCPS_UPLOAD_BACKOFF", "nan"),
        ("OCPS_REPLICAS", "three"),
        ("OCPS_REPLICAS", "0"),
        (ENV_JOB_REPLICA_INDEX, "-1"),
        ("OCPS_MAX_OUTPUT_BYTES", "0"),
        ("OCPS_MAX_OUTPUT_BYTES", "5G"),
        ("OCPS_MAX_OUTPUT_FILES", "0"),
        ("OCPS_MAX_OUTPUT_DEPTH", "-1"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(variable: str, value: str) -> None:
    environment = {**EVERYTHING.to_environment(), variable: value}
    with pytest.raises(UploaderConfigError) as refused:
        UploaderConfig.from_environment(environment)
    assert variable in str(refused.value) and repr(value) in str(refused.value)


@pytest.mark.parametrize("variable", ["JOB_ID", "JOB_OUTPUT_DIR"])
def test_a_missing_required_variable_is_named(variable: str) -> None:
    environment = {**EVERYTHING.to_environment(), variable: ""}
    with pytest.raises(UploaderConfigError, match=variable):
        UploaderConfig.from_environment(environment)


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_job_builders_uploader_environment_parses_back_to_its_config(replicas: int) -> None:
    settings = Settings(
        backend="kubernetes",
        s3_endpoint="http://minio:9000",
        upload_interval_seconds=7,
        max_output_bytes=10**9,
        max_output_files=12,
        max_output_depth=3,
    )
    record = JobRecord(
        job_id=JOB_ID,
        run_id=JOB_ID,
        creation_time=datetime(2024, 1, 1, tzinfo=UTC),
        parameters=JobParameters(command="true", replicas=replicas),
    )
    pod = build_job(record, settings, suspend=True).spec.template.spec
    (uploader,) = [c for c in pod.init_containers if c.name == "uploader"]
    command, environment = container_view(uploader, {"AWS_SECRET_ACCESS_KEY": "s"})
    assert command == ["python", "-m", "ocps_jobs.uploader"]
    parsed = UploaderConfig.from_environment(environment)
    assert parsed == uploader_configuration(JOB_ID, replicas, settings)
    assert (parsed.replicas, parsed.upload_interval_seconds) == (replicas, 7)
    assert parsed.s3_endpoint == "http://minio:9000" and parsed.bucket == settings.bucket
    assert parsed.limits == OutputLimits(max_bytes=10**9, max_files=12, max_depth=3)
    (main,) = pod.containers
    _, job_environment = container_view(main, {})
    assert parsed.output_dir == job_environment["JOB_OUTPUT_DIR"]
    if replicas > 1:  # the pod tells each replica its index
        pod_env = {**environment, ENV_JOB_REPLICA_INDEX: "2"}
        assert UploaderConfig.from_environment(pod_env).index == 2


def test_the_wrapper_leaves_its_files_where_the_uploader_looks(tmp_path: Path) -> None:
    config = UploaderConfig(job_id=JOB_ID, output_dir=str(tmp_path / "out"))
    script = WRAPPER_SCRIPT.replace("/dev/termination-log", str(tmp_path / "termination"))
    done = subprocess.run(
        ["/bin/bash", "-c", script, "ocps-job", "echo out; echo oops >&2; exit 4"],
        env={"JOB_OUTPUT_DIR": config.output_dir, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 4
    assert Path(config.exit_code_path).read_text().strip() == "4"
    assert Path(config.work_file(STDERR_FILE_NAME)).read_text() == "oops\n"
    assert sorted(Path(config.work_file(LOG_FILE_NAME)).read_text().split()) == ["oops", "out"]


def test_the_clone_script_leaves_its_failure_where_the_uploader_looks(tmp_path: Path) -> None:
    config = UploaderConfig(job_id=JOB_ID, output_dir=str(tmp_path / "out"))
    script = GIT_CLONE_SCRIPT.replace("/dev/termination-log", str(tmp_path / "termination"))
    done = subprocess.run(
        ["/bin/bash", "-c", script],
        env={
            "JOB_SOURCE_DIR": str(tmp_path / "src"),
            "SRC_GIT_URL": str(tmp_path / "no-such-repo"),
            "GIT_COMMIT_REF": "",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert Path(config.work_file(FAILURE_FILE_NAME)).read_text().startswith("git clone failed: ")


# --- one rule chooses the object store -----------------------------------------------------------


def test_a_folder_without_an_endpoint_is_a_filesystem_store(tmp_path: Path) -> None:
    store = open_store(bucket="b", endpoint=None, region="us-east-1", folder=tmp_path / "o")
    assert isinstance(store, FilesystemStore) and store.root == (tmp_path / "o").resolve()


def test_an_endpoint_is_s3_even_with_a_folder(tmp_path: Path) -> None:
    store = open_store(
        bucket="b", endpoint="http://127.0.0.1:9", region="eu-west-3", folder=tmp_path
    )
    assert isinstance(store, S3Store) and store.bucket == "b"
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "eu-west-3"


def test_no_folder_is_s3_on_its_default_endpoint() -> None:
    store = open_store(bucket="b", endpoint=None, region="us-east-1", folder=None)
    assert isinstance(store, S3Store)
    assert store.client.meta.endpoint_url.startswith("https://")


def test_a_folder_store_never_imports_boto3(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom pathlib import Path\nfrom ocps_jobs.objectstore import open_store\n"
        f"open_store(bucket='b', endpoint=None, region='r', folder=Path({str(tmp_path)!r}))\n"
        "import ocps_jobs.uploader.main\n"
        "assert 'boto3' not in sys.modules, 'boto3 imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
