"""Helpers of the fault-injection and load tests: ``ocps-jobs serve`` as a subprocess.

Everything listens on 127.0.0.1 only; every loop that drives it is bounded in count and
time by its caller. The TCP fault proxy itself is ``tests.faults.TcpProxy``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

__all__ = ["ServeProcess"]

CLI = Path(sys.executable).with_name("ocps-jobs")


class ServeProcess:
    """A running ``ocps-jobs serve --port 0`` on loopback; its log kept in memory."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OCPS_")}
        environment.update(env or {})
        self.env = environment
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: deque[str] = deque(maxlen=2000)
        self._reader: threading.Thread | None = None

    def start(self) -> ServeProcess:
        self.process = subprocess.Popen(
            [
                str(CLI),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None
        for _ in range(50):  # the first lines are logging of start-up, then the URL
            line = self.process.stdout.readline()
            if not line:
                break
            self.log.append(line)
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.url = f"http://127.0.0.1:{found[1]}"
                break
        assert self.url, "".join(self.log)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def logged(self, text: str) -> bool:
        """Whether the server's output has a line containing ``text``."""
        return any(text in line for line in list(self.log))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: a clean shutdown; SIGKILL: a crash)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
