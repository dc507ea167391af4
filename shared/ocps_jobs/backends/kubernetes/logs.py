"""A job's live log on Kubernetes: its pods' job-container logs, one stream per replica."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...conventions import CONTAINER_JOB
from ..logs import LogLine, whole_lines
from .client import KubernetesApi, LogStream, Missing
from .views import PodView

__all__ = ["FINAL_GRACE_SECONDS", "PodLogs", "newest_pod_per_replica"]

# Once the job has ended, a followed pod log still open after this long is closed.
FINAL_GRACE_SECONDS = 2.0
# How often a follow looks for pods that started since (a queued job, a retried pod).
POD_RECHECK_SECONDS = 1.0
_POLL_SECONDS = 0.25


def newest_pod_per_replica(pods: list[dict[str, Any]]) -> dict[int, PodView]:
    """Each replica's newest pod whose job container has started (a retry replaces it)."""
    chosen: dict[int, PodView] = {}
    for raw in pods:
        pod = PodView(raw)
        status = pod.container(CONTAINER_JOB)
        if status is None or not status.started or pod.name is None:
            continue
        current = chosen.get(pod.replica_index)
        if current is None or (pod.creation_timestamp or "") > (current.creation_timestamp or ""):
            chosen[pod.replica_index] = pod
    return chosen


class _End:
    """Put on the queue when one replica's followed log has ended."""

    def __init__(self, stream: int) -> None:
        self.stream = stream


class PodLogs:
    """The logs of one job's pods, read once or followed.

    ``pods()`` gives the job's pods as raw objects, None once its Job is gone;
    ``finished()`` whether the job has ended.
    """

    def __init__(
        self,
        kube: KubernetesApi,
        pods: Callable[[], list[dict[str, Any]] | None],
        finished: Callable[[], bool],
    ) -> None:
        self.kube = kube
        self.pods = pods
        self.finished = finished

    def snapshot(self, pods: dict[int, PodView]) -> Iterator[LogLine]:
        """Every replica's log as it is now, one replica after the other."""
        for stream, pod in sorted(pods.items()):
            try:
                opened = self.kube.pod_log(pod.name or "", CONTAINER_JOB, follow=False)
            except Missing:
                continue
            if opened is not None:
                yield from whole_lines(opened.chunks(), stream, lambda: True)

    def follow(self, until: float) -> Iterator[LogLine]:
        """New lines of every replica as they come, until the job ends or ``until`` passes."""
        lines: queue.Queue[LogLine | _End] = queue.Queue()
        open_streams: dict[int, LogStream] = {}
        ended: set[int] = set()
        closing = threading.Event()
        next_check = 0.0
        final_since: float | None = None

        def pump(stream: int, opened: LogStream) -> None:
            try:
                for line in whole_lines(opened.chunks(), stream, lambda: not closing.is_set()):
                    lines.put(line)
            finally:
                lines.put(_End(stream))

        try:
            while True:
                now = time.monotonic()
                if now >= until:
                    return
                if now >= next_check:
                    next_check = now + POD_RECHECK_SECONDS
                    done = self.finished()
                    if done and final_since is None:
                        final_since = now
                    pods = self.pods()
                    if pods is None:  # the Job is gone: what is left is the stored log
                        return
                    self._open_new(newest_pod_per_replica(pods), open_streams, ended, pump)
                    streaming = set(open_streams) - ended
                    if final_since is not None and (
                        not streaming or now - final_since >= FINAL_GRACE_SECONDS
                    ):
                        return
                try:
                    item = lines.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                if isinstance(item, _End):
                    ended.add(item.stream)
                else:
                    yield item
        finally:
            closing.set()
            for opened in open_streams.values():
                opened.close()

    def _open_new(
        self,
        pods: dict[int, PodView],
        open_streams: dict[int, LogStream],
        ended: set[int],
        pump: Callable[[int, LogStream], None],
    ) -> None:
        """Start following each replica whose pod has started and is not followed yet."""
        for stream, pod in pods.items():
            if stream in open_streams:
                continue
            try:
                opened = self.kube.pod_log(pod.name or "", CONTAINER_JOB, follow=True)
            except Missing:
                continue
            if opened is None:
                continue
            open_streams[stream] = opened
            threading.Thread(
                target=pump, args=(stream, opened), name=f"ocps-pod-log-{stream}", daemon=True
            ).start()
