"""The shell scripts of a Job's containers, and text the kubelet passes on unexpanded."""

from __future__ import annotations

import shlex

from ...uploader.contract import (
    COMMIT_FILE_NAME,
    EXIT_CODE_FILE_NAME,
    FAILURE_FILE_NAME,
    LOG_FILE_NAME,
    STDERR_FILE_NAME,
)

__all__ = ["GIT_CLONE_SCRIPT", "WRAPPER_SCRIPT", "from_kubelet_literal", "kubelet_literal"]

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
# the uploader's archived record, to the work folder's failure file. On success the commit
# checked out goes to both places instead: the termination message (the live record) and
# the work folder's commit file (the uploader's record).
GIT_CLONE_SCRIPT = (
    f"failure_name={shlex.quote(FAILURE_FILE_NAME)} commit_name={shlex.quote(COMMIT_FILE_NAME)}\n"
    + r"""
set -o pipefail
failure="${JOB_SOURCE_DIR%/src}/$failure_name"
commit="${JOB_SOURCE_DIR%/src}/$commit_name"
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
git -C "$JOB_SOURCE_DIR" rev-parse --verify --quiet HEAD > "$commit" || : > "$commit"
cat "$commit" > /dev/termination-log
""".strip()
)


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
