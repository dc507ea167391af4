"""Pure builder of the Kubernetes Job for a job record: data in, ``V1Job`` out."""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex

from kubernetes.client import (
    V1Container,
    V1DownwardAPIVolumeFile,
    V1DownwardAPIVolumeSource,
    V1EmptyDirVolumeSource,
    V1EnvFromSource,
    V1EnvVar,
    V1EnvVarSource,
    V1Job,
    V1JobSpec,
    V1ObjectFieldSelector,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SecretEnvSource,
    V1Volume,
    V1VolumeMount,
)

from .config import Settings
from .conventions import (
    ANNOTATIONS,
    COMPLETION_INDEX_ANNOTATION,
    CONTAINER_GIT_CLONE,
    CONTAINER_JOB,
    CONTAINER_UPLOADER,
    ENV_JOB_REPLICA_INDEX,
    LABEL_JOB_ID,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    MANAGED_BY,
    job_name,
)
from .errors import PayloadTooLargeError
from .jobenv import job_environment
from .models import JobRecord
from .uploader.contract import (
    EXIT_CODE_FILE_NAME,
    FAILURE_FILE_NAME,
    LOG_FILE_NAME,
    STDERR_FILE_NAME,
    UploaderConfig,
)

__all__ = [
    "ANNOTATION_BUDGET",
    "GIT_CLONE_SCRIPT",
    "RECORD_FILE",
    "WRAPPER_SCRIPT",
    "build_job",
    "from_kubelet_literal",
    "job_annotations",
    "job_json",
    "job_paths",
    "kubelet_literal",
    "owner_label",
    "pod_annotations",
    "uploader_configuration",
]

# Kubernetes refuses annotations over 256 KiB in total; leave room for kubectl's own.
ANNOTATION_BUDGET = 256 * 1024 - 8 * 1024

# The main container: run the command with bash, keep stdout+stderr as a result file,
# record the exit code for the uploader and a termination message for the error summary.
# The command arrives as "$1", never interpolated into this text.
WRAPPER_SCRIPT = (
    f"log_name={shlex.quote(LOG_FILE_NAME)} stderr_name={shlex.quote(STDERR_FILE_NAME)}"
    f" exit_code_name={shlex.quote(EXIT_CODE_FILE_NAME)}\n"
    + r"""
work="${JOB_OUTPUT_DIR%/out}"
mkdir -p "$JOB_OUTPUT_DIR"
log="$work/$log_name"
stderr="$work/$stderr_name"
/bin/bash -c "$1" > >(tee -a "$log") 2> >(tee -a "$log" "$stderr" >&2)
code=$?
wait
if [ "$code" -ne 0 ]; then
  { echo "Command exited with code $code:"; tail -n 20 "$stderr" 2>/dev/null; } \
    | tail -c 3500 > /dev/termination-log
fi
echo "$code" > "$work/$exit_code_name.tmp" && mv "$work/$exit_code_name.tmp" "$work/$exit_code_name"
exit "$code"
""".strip()
)

# The clone init container: the URL and ref come from the environment, never the script.
# A failure's message goes to the termination log (the live job's error summary) and, for
# the uploader's archived record, to the work folder's failure file.
GIT_CLONE_SCRIPT = (
    f"failure_name={shlex.quote(FAILURE_FILE_NAME)}\n"
    + r"""
set -o pipefail
failure="${JOB_SOURCE_DIR%/src}/$failure_name"
failed() {
  { printf 'git clone failed: '; cat /dev/termination-log; } > "$failure"
  exit 1
}
git -c protocol.ext.allow=never clone --quiet -- "$SRC_GIT_URL" "$JOB_SOURCE_DIR" 2>&1 \
  | tail -c 3000 > /dev/termination-log || failed
if [ -n "$GIT_COMMIT_REF" ]; then
  git -C "$JOB_SOURCE_DIR" checkout --quiet "$GIT_COMMIT_REF" -- 2>&1 \
    | tail -c 3000 > /dev/termination-log || failed
fi
: > /dev/termination-log
""".strip()
)

_WORK_VOLUME = "work"
_RECORD_VOLUME = "record"
# Where the uploader reads the record it archives: a file the kubelet writes from the pod's
# annotation (a variable would be refused by execve past 128 KiB, and expanded).
RECORD_FILE = "/etc/ocps-job/record.json"


def kubelet_literal(text: str) -> str:
    """``text`` as a container's command or variable value that the kubelet leaves alone.

    The kubelet expands ``$(NAME)`` there, from the container's variables (the S3 secret's
    among them, in the uploader), and turns ``$$`` into ``$``; with every ``$`` doubled, what
    the process sees is ``text``, byte for byte.
    """
    return text.replace("$", "$$")


def from_kubelet_literal(text: str) -> str:
    """The text that ``kubelet_literal`` was given (reading a Job back)."""
    return text.replace("$$", "$")


def job_paths(job_id: str, settings: Settings) -> tuple[str, str, str]:
    """Work folder, ``$JOB_OUTPUT_DIR`` and ``$JOB_SOURCE_DIR`` inside the pod."""
    work = f"{settings.job_output_root.rstrip('/')}/{job_id}"
    return work, f"{work}/out", f"{work}/src"


def owner_label(owner: str) -> str:
    """A label value for the owner: the name itself when it is a valid label value."""
    if re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", owner):
        return owner
    return "sha256-" + hashlib.sha256(owner.encode()).hexdigest()[:56]


def _within_budget(annotations: dict[str, str], what: str) -> dict[str, str]:
    size = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if size > ANNOTATION_BUDGET:
        raise PayloadTooLargeError(
            f"The job's {what} is {size} bytes; Kubernetes annotations hold at most "
            f"{ANNOTATION_BUDGET} bytes"
        )
    return annotations


def job_annotations(record: JobRecord) -> dict[str, str]:
    """All job metadata, under one prefix; 413 when it would not fit Kubernetes' budget."""
    annotations = {
        ANNOTATIONS.RUN_ID: record.run_id,
        ANNOTATIONS.OWNER: record.owner,
        ANNOTATIONS.CREATION_TIME: record.creation_time.isoformat(),
        ANNOTATIONS.PARAMETERS: record.parameters.model_dump_json(),
    }
    if record.execution_duration:
        annotations[ANNOTATIONS.EXECUTION_DURATION] = str(record.execution_duration)
    if record.destruction is not None:
        annotations[ANNOTATIONS.DESTRUCTION] = record.destruction.isoformat()
    return _within_budget(annotations, "metadata")


def pod_annotations(record: JobRecord, settings: Settings) -> dict[str, str]:
    """The configured pod annotations, and the record the uploader archives as job.json.

    Without the rendered environment: the parameters have the caller's entries.
    """
    annotations = {
        **settings.pod_annotations,
        ANNOTATIONS.RECORD: record.model_dump_json(exclude={"environment"}),
    }
    return _within_budget(annotations, "record")


def uploader_configuration(job_id: str, replicas: int, settings: Settings) -> UploaderConfig:
    """What the Job's uploader is told (its replica index the pod adds, from the downward API)."""
    work, output_dir, _source_dir = job_paths(job_id, settings)
    return UploaderConfig(
        job_id=job_id,
        output_dir=output_dir,
        exit_code_file=f"{work}/{EXIT_CODE_FILE_NAME}",
        log_file=f"{work}/{LOG_FILE_NAME}",
        bucket=settings.bucket,
        s3_region=settings.s3_region,
        s3_endpoint=settings.s3_endpoint or None,
        upload_interval_seconds=settings.upload_interval_seconds,
        job_record_file=RECORD_FILE,
        replicas=replicas,
    )


def build_job(record: JobRecord, settings: Settings, *, suspend: bool) -> V1Job:
    """The ``batch/v1`` Job running ``record``; ``suspend`` keeps a PENDING job from starting."""
    job_id = record.job_id
    work, output_dir, source_dir = job_paths(job_id, settings)
    environment = job_environment(
        job_id, record.parameters, settings, output_dir=output_dir, source_dir=source_dir
    )
    record.environment = environment
    annotations = job_annotations(record)  # 413 first when the metadata is too large
    template_annotations = pod_annotations(record, settings)
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB_ID: job_id,
        LABEL_OWNER: owner_label(record.owner),
    }
    work_mount = V1VolumeMount(name=_WORK_VOLUME, mount_path=work)
    data_mounts = [
        V1VolumeMount(
            name=f"data-{name.lower()}", mount_path=settings.data_dirs[name], read_only=True
        )
        for name in sorted(settings.data_volume_claims)
        if name in settings.data_dirs
    ]
    record_source = V1ObjectFieldSelector(
        field_path=f"metadata.annotations['{ANNOTATIONS.RECORD}']"
    )
    volumes = [
        V1Volume(name=_WORK_VOLUME, empty_dir=V1EmptyDirVolumeSource()),
        V1Volume(
            name=_RECORD_VOLUME,
            downward_api=V1DownwardAPIVolumeSource(
                items=[
                    V1DownwardAPIVolumeFile(
                        path=posixpath.basename(RECORD_FILE), field_ref=record_source
                    )
                ]
            ),
        ),
    ] + [
        V1Volume(
            name=f"data-{name.lower()}",
            persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                claim_name=settings.data_volume_claims[name], read_only=True
            ),
        )
        for name in sorted(settings.data_volume_claims)
        if name in settings.data_dirs
    ]
    job_env = [
        V1EnvVar(name=entry.name, value=kubelet_literal(entry.value)) for entry in environment
    ]
    image = f"{settings.job_image}:{settings.job_image_tag}"
    resources = V1ResourceRequirements(
        requests={"cpu": settings.job_cpu_request, "memory": settings.job_memory_request},
        limits={
            key: value
            for key, value in (
                ("cpu", settings.job_cpu_limit),
                ("memory", settings.job_memory_limit),
            )
            if value
        }
        or None,
    )
    replicas = record.parameters.replicas
    uploader_config = uploader_configuration(job_id, replicas, settings)
    uploader_env = [
        V1EnvVar(name=name, value=value) for name, value in uploader_config.to_environment().items()
    ]
    replica_env: list[V1EnvVar] = []
    if replicas > 1:
        # An Indexed Job: each pod knows its index, as each local replica does; its uploader
        # keeps its own manifest, and the last to finish merges them (uploader.manifest).
        path = f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
        replica_env = [
            V1EnvVar(
                name=ENV_JOB_REPLICA_INDEX,
                value_from=V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path=path)),
            )
        ]
        uploader_env += replica_env
    uploader = V1Container(
        name=CONTAINER_UPLOADER,
        image=settings.sidecar_image,
        command=["python", "-m", "ocps_jobs.uploader"],
        env=uploader_env,
        env_from=[
            V1EnvFromSource(secret_ref=V1SecretEnvSource(name=settings.s3_credentials_secret))
        ],
        volume_mounts=[
            work_mount,
            V1VolumeMount(
                name=_RECORD_VOLUME, mount_path=posixpath.dirname(RECORD_FILE), read_only=True
            ),
        ],
        restart_policy="Always",
        resources=V1ResourceRequirements(requests={"cpu": "100m", "memory": "128Mi"}),
    )
    init_containers = [uploader]
    if record.parameters.url:
        init_containers.append(
            V1Container(
                name=CONTAINER_GIT_CLONE,
                image=image,
                command=["/bin/bash", "-c", kubelet_literal(GIT_CLONE_SCRIPT)],
                env=[
                    e
                    for e in job_env
                    if e.name in ("JOB_SOURCE_DIR", "SRC_GIT_URL", "GIT_COMMIT_REF")
                ]
                + [V1EnvVar(name="GIT_TERMINAL_PROMPT", value="0")],
                volume_mounts=[work_mount],
                termination_message_policy="File",
            )
        )
    main = V1Container(
        name=CONTAINER_JOB,
        image=image,
        command=[
            "/bin/bash",
            "-c",
            kubelet_literal(WRAPPER_SCRIPT),
            "ocps-job",
            kubelet_literal(record.parameters.command),
        ],
        env=job_env + replica_env,
        volume_mounts=[work_mount, *data_mounts],
        resources=resources,
        termination_message_policy="FallbackToLogsOnError",
    )
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=job_name(job_id),
            namespace=settings.namespace,
            labels=labels,
            annotations=annotations,
        ),
        spec=V1JobSpec(
            backoff_limit=0,
            completions=replicas,
            parallelism=replicas,
            completion_mode="Indexed" if replicas > 1 else None,
            active_deadline_seconds=record.execution_duration or None,
            ttl_seconds_after_finished=settings.job_ttl_seconds,
            suspend=suspend,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels, annotations=template_annotations),
                spec=V1PodSpec(
                    restart_policy="Never",
                    termination_grace_period_seconds=settings.job_termination_grace_seconds,
                    service_account_name=settings.job_service_account,
                    automount_service_account_token=False,
                    enable_service_links=False,
                    init_containers=init_containers,
                    containers=[main],
                    volumes=volumes,
                ),
            ),
        ),
    )


def job_json(job: V1Job) -> bytes:
    """The Job as the API's JSON, serialized by pydantic in one call.

    The same document as the client's ``sanitize_for_serialization`` (camelCase names,
    unset fields left out), at a tenth of its cost.
    """
    return job.model_dump_json(by_alias=True, exclude_none=True).encode()
