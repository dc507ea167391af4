"""Pure builders of the job pod's operator settings: volumes, secret files, placement, resources.

Each takes the settings (and the record where the job chooses) and returns Kubernetes
objects; ``spec.build_job`` composes them. A job's choice outside what the operator allows
(a resource above the maximum, an image tag outside the pattern) is a 400 naming the limit.
"""

from __future__ import annotations

import re

from kubernetes.client import (
    V1Affinity,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1KeyToPath,
    V1LocalObjectReference,
    V1NFSVolumeSource,
    V1PersistentVolumeClaimVolumeSource,
    V1PodSecurityContext,
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1SecretVolumeSource,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)
from pydantic import ValidationError

from ...config import Settings
from ...errors import InvalidRequestError, SettingsError
from ...models import JobRecord
from ...podconfig import ResourceProfile, quantity_value

__all__ = [
    "IMAGE_TAG_VARIABLE",
    "build_affinity",
    "build_container_security_context",
    "build_data_mounts",
    "build_data_volumes",
    "build_image",
    "build_image_pull_secrets",
    "build_pod_security_context",
    "build_resources",
    "build_secret_env",
    "build_secret_file_mounts",
    "build_secret_file_volumes",
    "build_tolerations",
    "build_work_volume_source",
    "check_pod_settings",
    "resource_profile",
]

# The variable the CSC sends the pipeline version in (its execute command's `version`).
IMAGE_TAG_VARIABLE = "IMAGE_TAG"
_IMAGE_TAG_SYNTAX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _volume_name(prefix: str, name: str) -> str:
    return f"{prefix}-{name.lower().replace('_', '-')}"


def _legacy_claims(settings: Settings) -> list[str]:
    return [name for name in sorted(settings.data_volume_claims) if name in settings.data_dirs]


def build_data_volumes(settings: Settings) -> list[V1Volume]:
    """The data volumes: the read-only claims of ``data_volume_claims``, then ``data_volumes``."""
    volumes = [
        V1Volume(
            name=_volume_name("data", name),
            persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                claim_name=settings.data_volume_claims[name], read_only=True
            ),
        )
        for name in _legacy_claims(settings)
    ]
    for name, volume in sorted(settings.data_volumes.items()):
        if volume.claim is not None:
            volumes.append(
                V1Volume(
                    name=_volume_name("data", name),
                    persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                        claim_name=volume.claim, read_only=volume.read_only
                    ),
                )
            )
        else:
            volumes.append(
                V1Volume(
                    name=_volume_name("data", name),
                    nfs=V1NFSVolumeSource(
                        server=volume.nfs_server, path=volume.nfs_path, read_only=volume.read_only
                    ),
                )
            )
    return volumes


def build_data_mounts(settings: Settings) -> list[V1VolumeMount]:
    """Where the job container sees each data volume, read-only or read-write as configured."""
    mounts = [
        V1VolumeMount(
            name=_volume_name("data", name), mount_path=settings.data_dirs[name], read_only=True
        )
        for name in _legacy_claims(settings)
    ]
    mounts += [
        V1VolumeMount(
            name=_volume_name("data", name),
            mount_path=volume.mount_path,
            sub_path=volume.sub_path,
            read_only=volume.read_only,
        )
        for name, volume in sorted(settings.data_volumes.items())
    ]
    return mounts


def build_secret_file_volumes(settings: Settings) -> list[V1Volume]:
    """One Secret volume per ``job_secret_files`` entry, its files of the configured mode."""
    return [
        V1Volume(
            name=f"secret-files-{index}",
            secret=V1SecretVolumeSource(
                secret_name=files.secret,
                default_mode=files.mode,
                items=[V1KeyToPath(key=key, path=path) for key, path in sorted(files.items.items())]
                or None,
            ),
        )
        for index, files in enumerate(settings.job_secret_files)
    ]


def build_secret_file_mounts(settings: Settings) -> list[V1VolumeMount]:
    """The secret files' folders in the job container, read-only."""
    return [
        V1VolumeMount(name=f"secret-files-{index}", mount_path=files.mount_path, read_only=True)
        for index, files in enumerate(settings.job_secret_files)
    ]


def build_secret_env(settings: Settings) -> list[V1EnvVar]:
    """The variables of every job taken from a Secret's key (the literal ones are in jobenv)."""
    return [
        V1EnvVar(
            name=name,
            value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(name=variable.secret, key=variable.key)
            ),
        )
        for name, variable in sorted(settings.job_variables.items())
        if variable.secret is not None
    ]


def build_work_volume_source(settings: Settings) -> V1EmptyDirVolumeSource:
    """The work folder: an emptyDir, bounded where the operator set a size limit."""
    return V1EmptyDirVolumeSource(size_limit=settings.job_work_dir_size_limit)


def build_pod_security_context(settings: Settings) -> V1PodSecurityContext:
    """The pod's user, group and fsGroup (the secret files' group); non-root by default."""
    context = settings.job_security_context
    return V1PodSecurityContext(
        run_as_user=context.run_as_user,
        run_as_group=context.run_as_group,
        fs_group=context.fs_group,
        run_as_non_root=context.run_as_non_root or None,
    )


def build_container_security_context() -> V1SecurityContext:
    """Every container of the job pod: no privilege escalation, no capabilities."""
    return V1SecurityContext(allow_privilege_escalation=False)


def build_tolerations(settings: Settings) -> list[V1Toleration] | None:
    """The job pods' tolerations, if any."""
    return [
        V1Toleration(
            key=item.key,
            operator=item.operator,
            value=item.value,
            effect=item.effect,
            toleration_seconds=item.toleration_seconds,
        )
        for item in settings.job_tolerations
    ] or None


def build_affinity(settings: Settings) -> V1Affinity | None:
    """The job pods' affinity, as the operator wrote it (Kubernetes' camelCase)."""
    if not settings.job_affinity:
        return None
    return V1Affinity.model_validate(settings.job_affinity)


def check_pod_settings(settings: Settings) -> None:
    """Refuse at start what only Kubernetes' own models check: the affinity's inner fields."""
    try:
        build_affinity(settings)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SettingsError(
            f"Invalid settings: OCPS_JOB_AFFINITY at {where}: {first['msg']}"
        ) from None


def build_image_pull_secrets(settings: Settings) -> list[V1LocalObjectReference] | None:
    """The Secrets the kubelet pulls the job and uploader images with."""
    return [V1LocalObjectReference(name=name) for name in settings.job_image_pull_secrets] or None


def _variable(record: JobRecord, name: str) -> str | None:
    values = [entry.value for entry in record.parameters.environment if entry.name == name]
    return values[-1] if values else None


def resource_profile(record: JobRecord, settings: Settings) -> ResourceProfile:
    """The operator's resources for this job: the profile its variable picks, else the default."""
    variable = settings.job_resource_profile_variable
    if variable:
        chosen = settings.job_resource_profiles.get(_variable(record, variable) or "")
        if chosen is not None:
            return chosen
    return ResourceProfile(
        cpu_request=settings.job_cpu_request,
        memory_request=settings.job_memory_request,
        cpu_limit=settings.job_cpu_limit,
        memory_limit=settings.job_memory_limit,
    )


def _asked(kind: str, asked: str | None, maximum: str | None) -> str | None:
    """A per-job request, checked against the operator's maximum (400 naming it)."""
    if asked is None:
        return None
    setting = f"OCPS_JOB_MAX_{kind.upper()}"
    if maximum is None:
        raise InvalidRequestError(f"Per-job {kind} is not enabled here ({setting} is unset)")
    if quantity_value(asked) > quantity_value(maximum):
        raise InvalidRequestError(f"{kind} {asked} is above the maximum {maximum} ({setting})")
    return asked


def build_resources(record: JobRecord, settings: Settings) -> V1ResourceRequirements:
    """The job container's requests and limits: the profile, then the job's own request.

    A job's request above the profile's limit raises the limit to it (the maximum bounds both).
    """
    profile = resource_profile(record, settings)
    requests = {"cpu": profile.cpu_request, "memory": profile.memory_request}
    limits = {
        key: value
        for key, value in (("cpu", profile.cpu_limit), ("memory", profile.memory_limit))
        if value
    }
    maxima = {"cpu": settings.job_max_cpu, "memory": settings.job_max_memory}
    for kind in ("cpu", "memory"):
        asked = _asked(kind, getattr(record.parameters, kind), maxima[kind])
        if asked is not None:
            requests[kind] = asked
            if kind in limits and quantity_value(limits[kind]) < quantity_value(asked):
                limits[kind] = asked
    return V1ResourceRequirements(requests=requests, limits=limits or None)


def build_image(record: JobRecord, settings: Settings) -> str:
    """The job image: its tag the job's ``IMAGE_TAG`` where the operator allows, else the set one.

    Without ``job_image_tag_pattern`` the variable is only a variable (the CSC always sends
    it); with one, a tag that does not match it in full is a 400.
    """
    tag = settings.job_image_tag
    pattern = settings.job_image_tag_pattern
    asked = _variable(record, IMAGE_TAG_VARIABLE) if pattern else None
    if asked:
        if not _IMAGE_TAG_SYNTAX.fullmatch(asked) or not re.fullmatch(pattern or "", asked):
            raise InvalidRequestError(
                f"{IMAGE_TAG_VARIABLE} {asked!r} is not an allowed tag of {settings.job_image} "
                "(OCPS_JOB_IMAGE_TAG_PATTERN)"
            )
        tag = asked
    return f"{settings.job_image}:{tag}"
