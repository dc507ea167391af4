"""The shell scripts of a Job's containers, and text the kubelet passes on unexpanded."""

from __future__ import annotations

__all__ = ["GIT_CLONE_SCRIPT", "WRAPPER_SCRIPT", "from_kubelet_literal", "kubelet_literal"]

# The main container: run the command with bash, keep stdout+stderr as a result file,
# record the exit code for the uploader and a termination message for the error summary.
# The command arrives as "$1", never interpolated into this text.
WRAPPER_SCRIPT = r"""
work="${JOB_OUTPUT_DIR%/out}"
mkdir -p "$JOB_OUTPUT_DIR"
log="$work/ocps-job.log"
/bin/bash -c "$1" > >(tee -a "$log") 2> >(tee -a "$log" "$work/stderr" >&2)
code=$?
wait
if [ "$code" -ne 0 ]; then
  { echo "Command exited with code $code:"; tail -n 20 "$work/stderr" 2>/dev/null; } \
    | tail -c 3500 > /dev/termination-log
fi
echo "$code" > "$work/exit-code.tmp" && mv "$work/exit-code.tmp" "$work/exit-code"
exit "$code"
""".strip()

# The clone init container: the URL and ref come from the environment, never the script.
# A failure's message goes to the termination log (the live job's error summary) and, for
# the uploader's archived record, to the work folder's "failure" file.
GIT_CLONE_SCRIPT = r"""
set -o pipefail
failed() {
  { printf 'git clone failed: '; cat /dev/termination-log; } > "${JOB_SOURCE_DIR%/src}/failure"
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
