"""Pure builders of the Kubernetes Job for a job record: data in, ``V1Job`` out.

``build_job`` composes the small ``build_*`` functions below; none changes its input.
"""

from __future__ import annotations

import posixpath

from kubernetes.client import (
    V1Container,
    V1DownwardAPIVolumeFile,
    V1DownwardAPIVolumeSource,
    V1EnvFromSource,
    V1EnvVar,
    V1EnvVarSource,
    V1Job,
    V1JobSpec,
    V1ObjectFieldSelector,
    V1ObjectMeta,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SecretEnvSource,
    V1Volume,
    V1VolumeMount,
)

from ...config import Settings
from ...conventions import (
    ANNOTATIONS,
    COMPLETION_INDEX_ANNOTATION,
    CONTAINER_GIT_CLONE,
    CONTAINER_JOB,
    CONTAINER_UPLOADER,
    ENV_JOB_REPLICA_INDEX,
    job_name,
)
from ...jobenv import job_environment
from ...models import EnvironmentVariable, JobRecord
from ...uploader.contract import EXIT_CODE_FILE_NAME, LOG_FILE_NAME, UploaderConfig
from .metadata import (
    ANNOTATION_BUDGET,
    build_labels,
    job_annotations,
    owner_label,
    pod_annotations,
)
from .scripts import GIT_CLONE_SCRIPT, WRAPPER_SCRIPT, from_kubelet_literal, kubelet_literal
from .spec_pod import (
    build_affinity,
    build_container_security_context,
    build_data_mounts,
    build_data_volumes,
    build_image,
    build_image_pull_secrets,
    build_pod_security_context,
    build_resources,
    build_secret_env,
    build_secret_file_mounts,
    build_secret_file_volumes,
    build_tolerations,
    build_work_volume_source,
)

__all__ = [
    "ANNOTATION_BUDGET",
    "GIT_CLONE_SCRIPT",
    "RECORD_FILE",
    "WRAPPER_SCRIPT",
    "build_environment",
    "build_git_clone",
    "build_job",
    "build_main_container",
    "build_replica_env",
    "build_resources",
    "build_uploader",
    "build_uploader_env",
    "build_volumes",
    "from_kubelet_literal",
    "job_annotations",
    "job_json",
    "job_paths",
    "kubelet_literal",
    "owner_label",
    "pod_annotations",
    "uploader_configuration",
]

_WORK_VOLUME = "work"
_RECORD_VOLUME = "record"
# Where the uploader reads the record it archives: a file the kubelet writes from the pod's
# annotation (a variable would be refused by execve past 128 KiB, and expanded).
RECORD_FILE = "/etc/ocps-job/record.json"
# The clone container sees only these of the job's variables.
_GIT_CLONE_VARIABLES = ("JOB_SOURCE_DIR", "SRC_GIT_URL", "GIT_COMMIT_REF")


def job_paths(job_id: str, settings: Settings) -> tuple[str, str, str]:
    """Work folder, ``$JOB_OUTPUT_DIR`` and ``$JOB_SOURCE_DIR`` inside the pod."""
    work = f"{settings.job_output_root.rstrip('/')}/{job_id}"
    return work, f"{work}/out", f"{work}/src"


def build_environment(record: JobRecord, settings: Settings) -> list[EnvironmentVariable]:
    """The job's variables as its command sees them: the system's, then the caller's."""
    _, output_dir, source_dir = job_paths(record.job_id, settings)
    return job_environment(
        record.job_id, record.parameters, settings, output_dir=output_dir, source_dir=source_dir
    )


def build_volumes(settings: Settings) -> list[V1Volume]:
    """The work folder, the record file, the data volumes and the secret files."""
    record_source = V1ObjectFieldSelector(
        field_path=f"metadata.annotations['{ANNOTATIONS.RECORD}']"
    )
    record_file = V1DownwardAPIVolumeFile(
        path=posixpath.basename(RECORD_FILE), field_ref=record_source
    )
    return [
        V1Volume(name=_WORK_VOLUME, empty_dir=build_work_volume_source(settings)),
        V1Volume(
            name=_RECORD_VOLUME,
            downward_api=V1DownwardAPIVolumeSource(items=[record_file]),
        ),
        *build_data_volumes(settings),
        *build_secret_file_volumes(settings),
    ]


def build_replica_env(replicas: int) -> list[V1EnvVar]:
    """Each pod's replica index, from its completion index (an Indexed Job's pods only)."""
    if replicas < 2:
        return []
    path = f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
    return [
        V1EnvVar(
            name=ENV_JOB_REPLICA_INDEX,
            value_from=V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path=path)),
        )
    ]


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
        limits=settings.output_limits,
        replicas=replicas,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )


def build_uploader_env(record: JobRecord, settings: Settings) -> list[V1EnvVar]:
    """The uploader's environment: its contract's variables, and the replica index if any."""
    replicas = record.parameters.replicas
    config = uploader_configuration(record.job_id, replicas, settings)
    env = [V1EnvVar(name=name, value=value) for name, value in config.to_environment().items()]
    if replicas > 1:
        # Each uploader keeps its own replica's manifest; the last to finish merges them.
        env += build_replica_env(replicas)
    return env


def build_uploader(record: JobRecord, settings: Settings) -> V1Container:
    """The uploader, a native sidecar: it runs beside the job and outlives its command."""
    work, _, _ = job_paths(record.job_id, settings)
    return V1Container(
        name=CONTAINER_UPLOADER,
        image=settings.sidecar_image,
        command=["python", "-m", "ocps_jobs.uploader"],
        env=build_uploader_env(record, settings),
        env_from=[
            V1EnvFromSource(secret_ref=V1SecretEnvSource(name=settings.s3_credentials_secret))
        ],
        volume_mounts=[
            V1VolumeMount(name=_WORK_VOLUME, mount_path=work),
            V1VolumeMount(
                name=_RECORD_VOLUME, mount_path=posixpath.dirname(RECORD_FILE), read_only=True
            ),
        ],
        restart_policy="Always",
        resources=V1ResourceRequirements(requests={"cpu": "100m", "memory": "128Mi"}),
        security_context=build_container_security_context(),
    )


def _job_env(environment: list[EnvironmentVariable]) -> list[V1EnvVar]:
    return [V1EnvVar(name=entry.name, value=kubelet_literal(entry.value)) for entry in environment]


def _main_env(
    record: JobRecord, settings: Settings, environment: list[EnvironmentVariable]
) -> list[V1EnvVar]:
    """The job's variables, those from Secrets just before the caller's own."""
    callers = len(record.parameters.environment)
    system = environment[: len(environment) - callers]
    own = environment[len(environment) - callers :]
    return _job_env(system) + build_secret_env(settings) + _job_env(own)


def build_git_clone(
    record: JobRecord, settings: Settings, environment: list[EnvironmentVariable]
) -> V1Container:
    """The init container cloning the job's repository into ``$JOB_SOURCE_DIR``."""
    work, _, _ = job_paths(record.job_id, settings)
    return V1Container(
        name=CONTAINER_GIT_CLONE,
        image=build_image(record, settings),
        image_pull_policy=settings.job_image_pull_policy,
        command=["/bin/bash", "-c", kubelet_literal(GIT_CLONE_SCRIPT)],
        env=[e for e in _job_env(environment) if e.name in _GIT_CLONE_VARIABLES]
        + [V1EnvVar(name="GIT_TERMINAL_PROMPT", value="0")],
        volume_mounts=[V1VolumeMount(name=_WORK_VOLUME, mount_path=work)],
        termination_message_policy="File",
        security_context=build_container_security_context(),
    )


def build_main_container(
    record: JobRecord, settings: Settings, environment: list[EnvironmentVariable]
) -> V1Container:
    """The job container: the wrapper script running the caller's command."""
    work, _, _ = job_paths(record.job_id, settings)
    return V1Container(
        name=CONTAINER_JOB,
        image=build_image(record, settings),
        image_pull_policy=settings.job_image_pull_policy,
        command=[
            "/bin/bash",
            "-c",
            kubelet_literal(WRAPPER_SCRIPT),
            "ocps-job",
            kubelet_literal(record.parameters.command),
        ],
        env=_main_env(record, settings, environment)
        + build_replica_env(record.parameters.replicas),
        volume_mounts=[
            V1VolumeMount(name=_WORK_VOLUME, mount_path=work),
            *build_data_mounts(settings),
            *build_secret_file_mounts(settings),
        ],
        resources=build_resources(record, settings),
        termination_message_policy="FallbackToLogsOnError",
        security_context=build_container_security_context(),
    )


def build_pod_spec(record: JobRecord, settings: Settings) -> V1PodSpec:
    """The pod: the uploader (and the clone), the job container and their volumes."""
    environment = build_environment(record, settings)
    init_containers = [build_uploader(record, settings)]
    if record.parameters.url:
        init_containers.append(build_git_clone(record, settings, environment))
    return V1PodSpec(
        restart_policy="Never",
        termination_grace_period_seconds=settings.job_termination_grace_seconds,
        service_account_name=settings.job_service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        init_containers=init_containers,
        containers=[build_main_container(record, settings, environment)],
        volumes=build_volumes(settings),
        security_context=build_pod_security_context(settings),
        node_selector=dict(settings.job_node_selector) or None,
        tolerations=build_tolerations(settings),
        affinity=build_affinity(settings),
        priority_class_name=settings.job_priority_class,
        image_pull_secrets=build_image_pull_secrets(settings),
    )


def build_job(record: JobRecord, settings: Settings, *, suspend: bool) -> V1Job:
    """The ``batch/v1`` Job running ``record``; ``suspend`` keeps a PENDING job from starting."""
    annotations = job_annotations(record)  # 413 first when the metadata is too large
    template_annotations = pod_annotations(record, settings)
    labels = build_labels(record, settings)
    replicas = record.parameters.replicas
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=job_name(record.job_id),
            namespace=settings.namespace,
            labels=labels,
            annotations={**settings.job_annotations, **annotations},
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
                metadata=V1ObjectMeta(labels=dict(labels), annotations=template_annotations),
                spec=build_pod_spec(record, settings),
            ),
        ),
    )


def job_json(job: V1Job) -> bytes:
    """The Job as the API's JSON, serialized by pydantic in one call.

    The same document as the client's ``sanitize_for_serialization`` (camelCase names,
    unset fields left out), at a tenth of its cost.
    """
    return job.model_dump_json(by_alias=True, exclude_none=True).encode()
