"""Helpers shared by the tests: waiting on phases, building git repositories, hashing."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FINISHED = {"completed", "error", "aborted", "unknown", "archived"}


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_for_phase(get_phase: Callable[[], str], phases: set[str], timeout: float = 20.0) -> str:
    """Poll a phase getter until it is one of ``phases``."""
    seen: list[str] = []

    def check() -> str | None:
        phase = get_phase()
        seen.append(phase)
        return phase if phase in phases else None

    try:
        return str(wait_until(check, timeout))
    except AssertionError:
        raise AssertionError(f"phase never reached {phases}; saw {sorted(set(seen))}") from None


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` with a fixed identity; its stdout."""
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


PIPETASK = """#!/bin/bash
# A stand-in for the CSC's bin/pipetask.sh: writes nested outputs, text and binary.
set -euo pipefail
mkdir -p "$JOB_OUTPUT_DIR/logs" "$JOB_OUTPUT_DIR/data/deep"
branch=$(git -C "$JOB_SOURCE_DIR" rev-parse --abbrev-ref HEAD)
echo "job $JOB_ID at $branch" > "$JOB_OUTPUT_DIR/summary.txt"
cat "$JOB_SOURCE_DIR/VERSION" > "$JOB_OUTPUT_DIR/version.txt"
head -c 300000 /dev/urandom > "$JOB_OUTPUT_DIR/data/deep/image.fits"
printf '%s' "$SRC_GIT_URL|$GIT_COMMIT_REF" > "$JOB_OUTPUT_DIR/logs/git.txt"
echo "done"
"""


def make_pipeline_repo(root: Path) -> Path:
    """A git repository holding ``bin/pipetask.sh``.

    Branch ``main`` and tag ``v1`` have VERSION 1, branch ``release`` VERSION 2.
    """
    repo = root / "pipeline-repo"
    (repo / "bin").mkdir(parents=True)
    (repo / "bin" / "pipetask.sh").write_text(PIPETASK)
    (repo / "VERSION").write_text("1\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "first")
    git(repo, "tag", "v1")
    git(repo, "checkout", "--quiet", "-b", "release")
    (repo / "VERSION").write_text("2\n")
    git(repo, "commit", "--quiet", "-am", "second")
    git(repo, "checkout", "--quiet", "main")
    return repo


def kubelet_expand(text: str, variables: dict[str, str]) -> str:
    """What a container's process sees of a command element or variable value in its spec.

    The kubelet's expansion (Kubernetes' third_party/forked/golang/expansion): ``$(NAME)``
    becomes the variable's value when it is defined and stays as written when not; ``$$``
    becomes ``$``; an unclosed ``$(`` and any other ``$`` stay as written.
    """
    out: list[str] = []
    cursor, checkpoint = 0, 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            advance = 1
            if following == "$":
                out.append("$")
            elif following == "(":
                closing = text.find(")", cursor + 2)
                if closing < 0:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : closing]
                    out.append(variables.get(name, f"$({name})"))
                    advance = closing - cursor
            else:
                out.append("$" + following)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def container_view(container: Any, secrets: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A container's command and environment as its process sees them, given the values of
    the secrets its ``envFrom`` names; variables expand in order, as the kubelet does."""
    variables = dict(secrets) if container.env_from else {}
    for entry in container.env or []:
        variables[entry.name] = kubelet_expand(entry.value or "", variables)
    command = [kubelet_expand(part, variables) for part in container.command or []]
    own = {entry.name: variables[entry.name] for entry in container.env or []}
    return command, own


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not), from /proc."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def host_pid(job_id: str, job_pid: int) -> int:
    """The host's pid of a job process that knows itself as ``job_pid`` (``$$``, ``$!``).

    A sandboxed job has its own PID namespace: among the processes in another namespace
    whose innermost pid is ``job_pid``, the one descended from the job's ``bwrap`` (whose
    command line names the job's folder). Unsandboxed, the pid is the host's already.
    """
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        namespaced = fields.get("NSpid", "").split()
        if len(namespaced) < 2 or int(namespaced[-1]) != job_pid:
            continue
        if _descends_from_job(int(namespaced[0]), job_id):
            return int(namespaced[0])
    return job_pid


def _descends_from_job(pid: int, job_id: str) -> bool:
    for _ in range(8):
        try:
            if job_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            return False
        pid = int(parent)
        if pid <= 1:
            return False
    return False
