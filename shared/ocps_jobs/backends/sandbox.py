"""Job sandboxes of the embedded backend: bubblewrap namespaces around each job process.

A sandboxed job sees the machine's files read-only and its own folder writable; the
server's data folder (records, objects, other jobs' folders), the server's home, token
file and kubeconfig are hidden; it has its own ``/proc`` (a PID namespace: the server's
processes and their environments are out of sight) and no capabilities. When the outer
``bwrap`` ends (a signal to the job's process group, or the server dying), the kernel
stops every process of the namespace, ``setsid`` escapes included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import SettingsError

__all__ = [
    "Sandbox",
    "exit_status",
    "find_sandbox",
    "require_isolation",
    "sandbox_for",
    "signal_inside",
]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Sandbox:
    """How to run a job's command inside bubblewrap."""

    bwrap: str
    hidden_folders: tuple[Path, ...]
    hidden_files: tuple[Path, ...]

    def wrap(self, argv: list[str], job_root: Path, cwd: Path) -> list[str]:
        """``argv`` as run in the sandbox of the job whose folder is ``job_root``."""
        options = [
            self.bwrap,
            "--die-with-parent",
            "--unshare-all",
            "--share-net",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ]
        if Path("/tmp").is_dir():  # shared, as outside: jobs expect a writable /tmp
            options += ["--bind", "/tmp", "/tmp"]
        for folder in self.hidden_folders:
            options += ["--tmpfs", str(folder)]
        for path in self.hidden_files:
            options += ["--ro-bind", "/dev/null", str(path)]
        options += ["--bind", str(job_root), str(job_root), "--chdir", str(cwd), "--"]
        return options + argv


def exit_status(code: int) -> int:
    """A sandboxed command's exit status as ``Popen.returncode`` says it (negative: signal).

    bwrap reports a command killed by signal N as 128 + N, as a shell does.
    """
    return -(code - 128) if 128 < code <= 128 + 64 else code


def signal_inside(group: int, sig: int) -> None:
    """Signal the processes of a sandboxed job's process group, but not its outer ``bwrap``.

    The outer ``bwrap`` (the group's leader) would die of SIGTERM and take the sandbox with
    it at once; left alone, the job gets its grace period and ``bwrap`` ends with it.
    """
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat_file.parent.name)
        if pid != group and fields[2] == str(group):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def find_sandbox(settings: Settings) -> Sandbox | None:
    """The sandbox jobs run in, per ``local_sandbox``; None when off or unavailable (auto)."""
    if settings.local_sandbox == "none":
        return None
    bwrap = shutil.which("bwrap")
    problem = "bubblewrap (bwrap) is not installed" if bwrap is None else None
    sandbox = None
    if bwrap is not None:
        sandbox = Sandbox(bwrap, _hidden_folders(settings), _hidden_files(settings))
        problem = _probe(sandbox, settings.data_dir)
    if problem is None:
        return sandbox
    if settings.local_sandbox == "bubblewrap":
        raise SettingsError(f"OCPS_LOCAL_SANDBOX=bubblewrap, but {problem}")
    log.warning("jobs run without a sandbox: %s", problem)
    return None


def sandbox_for(settings: Settings) -> Callable[[], Sandbox | None]:
    """The sandbox jobs run in, as a call that the first job makes (and may wait on).

    Where the start depends on the answer (``OCPS_LOCAL_SANDBOX=bubblewrap``, or several
    identities whose jobs must not reach one another) the probe runs now, and a sandbox
    that cannot run stops the start. Otherwise it runs in the background while the server
    starts, so that a function's cold start does not wait for a bubblewrap process.
    """
    if settings.local_sandbox == "bubblewrap" or needs_isolation(settings):
        decided = find_sandbox(settings)
        require_isolation(settings, decided)
        return lambda: decided
    if settings.local_sandbox == "none":
        return lambda: None
    found: list[Sandbox | None] = []
    probed = threading.Thread(
        target=lambda: found.append(find_sandbox(settings)),
        name="ocps-sandbox-probe",
        daemon=True,
    )
    probed.start()

    def probed_sandbox() -> Sandbox | None:
        probed.join()
        return found[0] if found else None  # the probe failed unexpectedly: no sandbox

    return probed_sandbox


def needs_isolation(settings: Settings) -> bool:
    """Whether jobs of several identities run here, so that they must not reach each other."""
    if not settings.authentication_required:
        return False
    identities = set(settings.bearer_tokens().values())
    return settings.auth_header is not None or len(identities) > 1


def require_isolation(settings: Settings, sandbox: Sandbox | None) -> None:
    """Refuse to serve several identities when their jobs could reach one another."""
    if sandbox is not None or not needs_isolation(settings):
        return
    raise SettingsError(
        "Authentication for more than one identity on the local backend needs a job "
        "sandbox (bubblewrap, see OCPS_LOCAL_SANDBOX): without one, every job runs as the "
        "server's user and can read the server's environment (its tokens), every job "
        "record and every other user's results. Install bubblewrap, or serve one identity."
    )


def _hidden_folders(settings: Settings) -> tuple[Path, ...]:
    folders = [settings.data_dir.resolve()]
    home = os.environ.get("HOME")
    if home and Path(home).resolve() != Path("/"):
        folders.append(Path(home).resolve())
    return tuple(folders)


def _hidden_files(settings: Settings) -> tuple[Path, ...]:
    files = [settings.auth_tokens_file, settings.kubeconfig]
    return tuple(path.resolve() for path in files if path is not None and path.is_file())


def _probe(sandbox: Sandbox, data_dir: Path) -> str | None:
    """Why the sandbox cannot run a command here, or None when it can."""
    probe_root = data_dir.resolve() / "work"
    argv = sandbox.wrap(["/bin/true"], probe_root, probe_root)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap cannot run: {error}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[:500]
        return f"bwrap cannot run here: {detail or f'exit status {done.returncode}'}"
    return None
