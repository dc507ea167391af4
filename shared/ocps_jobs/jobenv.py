"""The environment contract every job sees, in order: system variables, then the caller's."""

from __future__ import annotations

from .config import Settings
from .conventions import (
    ENV_DATA_DIR_PREFIX,
    ENV_GIT_COMMIT_REF,
    ENV_JOB_ID,
    ENV_JOB_OUTPUT_DIR,
    ENV_JOB_SOURCE_DIR,
    ENV_PROJECT_PATH,
    ENV_SRC_GIT_URL,
)
from .models import EnvironmentVariable, JobParameters

__all__ = ["job_environment"]


def job_environment(
    job_id: str,
    parameters: JobParameters,
    settings: Settings,
    *,
    output_dir: str,
    source_dir: str,
) -> list[EnvironmentVariable]:
    """The variables a job sees, in the order DESIGN section 3 gives.

    ``JOB_ID``, ``JOB_OUTPUT_DIR``, the git variables when a URL was given,
    ``DATA_DIR_<NAME>`` and ``PROJECT_PATH`` where configured, the operator's literal
    variables, then the caller's entries (a Secret's variables are the backend's to add).
    """
    entries = [
        EnvironmentVariable(name=ENV_JOB_ID, value=job_id),
        EnvironmentVariable(name=ENV_JOB_OUTPUT_DIR, value=output_dir),
    ]
    if parameters.url:
        entries += [
            EnvironmentVariable(name=ENV_JOB_SOURCE_DIR, value=source_dir),
            EnvironmentVariable(name=ENV_SRC_GIT_URL, value=parameters.url),
            EnvironmentVariable(name=ENV_GIT_COMMIT_REF, value=parameters.commit_ref or ""),
        ]
    data_dirs = {
        **settings.data_dirs,
        **{name: volume.mount_path for name, volume in settings.data_volumes.items()},
    }
    for name, path in sorted(data_dirs.items()):
        entries.append(EnvironmentVariable(name=ENV_DATA_DIR_PREFIX + name.upper(), value=path))
    if settings.project_path:
        entries.append(EnvironmentVariable(name=ENV_PROJECT_PATH, value=settings.project_path))
    for name, variable in sorted(settings.job_variables.items()):
        if variable.value is not None:
            entries.append(EnvironmentVariable(name=name, value=variable.value))
    return entries + list(parameters.environment)
