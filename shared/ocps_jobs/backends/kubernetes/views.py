"""The Job and Pod as the backend reads them, declared once; the watch cache's trim follows.

Each view is a small class over the API's raw JSON whose every accessor is a declared
``Field`` (a path into the object) or ``Items`` (a list of smaller views). Nothing reads a
Job or a Pod except through these accessors, and ``trim`` keeps exactly the declared paths:
a field that is read is, by construction, a field the watch cache keeps. The watch cache
keeps each trimmed object ``packed``: its compact JSON as one ``bytes`` that owns its data
(nothing of the parsed page or event it came from stays referenced), read back by ``unpack``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar, overload

import orjson

from ...conventions import COMPLETION_INDEX_ANNOTATION, LABEL_JOB_ID, LABEL_OWNER

__all__ = [
    "ConditionView",
    "ContainerStatusView",
    "ContainerView",
    "Field",
    "Items",
    "JobView",
    "ObjectView",
    "PodConditionView",
    "PodView",
    "View",
    "job_id_of",
    "newer",
    "pack",
    "pack_job",
    "pack_pod",
    "trim",
    "trim_job",
    "trim_pod",
    "unpack",
    "unpack_list",
]

T = TypeVar("T")
V = TypeVar("V", bound="View")

# The trim of one object: key -> everything under it (True), or a trim of what it holds;
# under the key EACH, the trim of each item of a list.
Shape = dict[str, "Shape | bool"]
EACH = "[]"


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_bool(value: Any) -> bool:
    return bool(value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _at(raw: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = raw
    for key in path:
        # JSON objects are dicts: the exact type check first, the ABC's only otherwise.
        if type(value) is not dict and not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


class Field(Generic[T]):
    """One declared path into the raw object, read through ``convert``."""

    def __init__(self, *path: str, convert: Callable[[Any], T]) -> None:
        self.path = path
        self.convert = convert

    @overload
    def __get__(self, instance: None, owner: type[View]) -> Field[T]: ...

    @overload
    def __get__(self, instance: View, owner: type[View]) -> T: ...

    def __get__(self, instance: View | None, owner: type[View]) -> Field[T] | T:
        if instance is None:
            return self
        return self.convert(_at(instance.raw, self.path))


class Items(Generic[V]):
    """A declared list of objects, each read through the smaller view ``view``."""

    def __init__(self, view: type[V], *path: str) -> None:
        self.view = view
        self.path = path

    @overload
    def __get__(self, instance: None, owner: type[View]) -> Items[V]: ...

    @overload
    def __get__(self, instance: View, owner: type[View]) -> list[V]: ...

    def __get__(self, instance: View | None, owner: type[View]) -> Items[V] | list[V]:
        if instance is None:
            return self
        items = _as_list(_at(instance.raw, self.path))
        return [self.view(item) for item in items if isinstance(item, dict)]


def _merge(shape: Shape, path: tuple[str, ...], leaf: Shape | bool) -> None:
    *parents, last = path
    for key in parents:
        child = shape.setdefault(key, {})
        if child is True:
            return
        assert isinstance(child, dict)
        shape = child
    if leaf is True or last not in shape:
        shape[last] = leaf
    elif isinstance(leaf, dict):
        existing = shape[last]
        if isinstance(existing, dict):
            for key, value in leaf.items():
                _merge(existing, (key,), value)


class View:
    """A read-only view over one raw API object; subclasses declare what is read."""

    __slots__ = ("raw",)
    shape: ClassVar[Shape] = {}
    trimmer: ClassVar[Trimmer]

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        shape: Shape = {}
        for klass in reversed(cls.__mro__):
            for declared in vars(klass).values():
                if isinstance(declared, Field):
                    _merge(shape, declared.path, True)
                elif isinstance(declared, Items):
                    _merge(shape, declared.path, {EACH: declared.view.shape})
        cls.shape = shape
        cls.trimmer = staticmethod(_trimmer(shape))

    @classmethod
    def accessors(cls) -> list[str]:
        """The names of every declared accessor (for tests that compare views)."""
        return sorted(
            name for name in dir(cls) if isinstance(getattr(cls, name, None), (Field, Items))
        )


Trimmer = Callable[[Any], Any]


def _trimmer(shape: Shape) -> Trimmer:
    """A function keeping what ``shape`` names of a value (of each item, under ``EACH``)."""
    each = shape.get(EACH)
    if isinstance(each, dict):
        item = _trimmer(each)
        return lambda value: [item(v) for v in value] if isinstance(value, list) else value
    keys = [(key, _trimmer(sub) if isinstance(sub, dict) else None) for key, sub in shape.items()]

    def trimmed(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {
            key: value[key] if inner is None else inner(value[key])
            for key, inner in keys
            if key in value
        }

    return trimmed


def trim(raw: Mapping[str, Any], view: type[View]) -> dict[str, Any]:
    """What ``view`` reads of ``raw``: every declared path, nothing else."""
    trimmed: dict[str, Any] = view.trimmer(dict(raw))
    return trimmed


class PodConditionView(View):
    """One of a Pod's status conditions: what the waiting reason reads of it."""

    __slots__ = ()
    kind = Field("type", convert=_as_str)
    status = Field("status", convert=_as_str)
    reason = Field("reason", convert=_as_str)
    message = Field("message", convert=_as_str)

    @property
    def true(self) -> bool:
        """Whether the condition holds."""
        return self.status == "True"


class ConditionView(PodConditionView):
    """One of a Job's status conditions: also when it last changed (when the Job ended)."""

    __slots__ = ()
    last_transition_time = Field("lastTransitionTime", convert=_as_str)


class ContainerView(View):
    """One container of the Job's pod template: its name and variables."""

    __slots__ = ()
    name = Field("name", convert=_as_str)
    env = Field("env", convert=_as_list)


class ContainerStatusView(View):
    """One container's state in a Pod: ended (with its code and message) or not."""

    __slots__ = ()
    name = Field("name", convert=_as_str)
    # Kept whole: a few short fields, cheaper to keep than to trim field by field.
    state = Field("state", convert=_as_dict)
    # The image as the runtime resolved it (``repo@sha256:...``): what exactly ran.
    image_id = Field("imageID", convert=_as_str)

    @property
    def started(self) -> bool:
        """Whether the container has run (it has a log): running now, or ended."""
        return bool(self.state.get("running") or self.state.get("terminated"))

    @property
    def exit_code(self) -> int | None:
        """The code the container exited with; None while it has not ended."""
        return _as_int(_as_dict(self.state.get("terminated")).get("exitCode"))

    @property
    def message(self) -> str | None:
        """The termination message of an ended container."""
        return _as_str(_as_dict(self.state.get("terminated")).get("message"))

    @property
    def waiting_reason(self) -> str | None:
        """Why a container that has not started waits (``ImagePullBackOff``, ...)."""
        return _as_str(_as_dict(self.state.get("waiting")).get("reason"))

    @property
    def waiting_message(self) -> str | None:
        """The kubelet's words on why the container waits."""
        return _as_str(_as_dict(self.state.get("waiting")).get("message"))


class ObjectView(View):
    """What the backend reads of any managed object: its name, labels and version."""

    __slots__ = ()
    name = Field("metadata", "name", convert=_as_str)
    # The labels read, one by one: the others (the Job controller's) are trimmed away.
    job_id = Field("metadata", "labels", LABEL_JOB_ID, convert=_as_str)
    owner_label = Field("metadata", "labels", LABEL_OWNER, convert=_as_str)
    resource_version = Field("metadata", "resourceVersion", convert=_as_str)


class JobView(ObjectView):
    """A ``batch/v1`` Job as the status rules, the record and the archive read it."""

    __slots__ = ()
    annotations = Field("metadata", "annotations", convert=_as_dict)
    creation_timestamp = Field("metadata", "creationTimestamp", convert=_as_str)
    suspend = Field("spec", "suspend", convert=_as_bool)
    completions = Field("spec", "completions", convert=_as_int)
    active_deadline_seconds = Field("spec", "activeDeadlineSeconds", convert=_as_int)
    containers = Items(ContainerView, "spec", "template", "spec", "containers")
    conditions = Items(ConditionView, "status", "conditions")
    start_time = Field("status", "startTime", convert=_as_str)
    completion_time = Field("status", "completionTime", convert=_as_str)
    active = Field("status", "active", convert=_as_int)
    terminating = Field("status", "terminating", convert=_as_int)

    def condition(self, kind: str) -> ConditionView | None:
        """The condition ``kind`` when it holds."""
        return next((c for c in self.conditions if c.kind == kind and c.true), None)


class PodView(ObjectView):
    """A Pod of a Job as the status rules read it."""

    __slots__ = ()
    phase = Field("status", "phase", convert=_as_str)
    completion_index = Field(
        "metadata", "annotations", COMPLETION_INDEX_ANNOTATION, convert=_as_str
    )
    creation_timestamp = Field("metadata", "creationTimestamp", convert=_as_str)
    conditions = Items(PodConditionView, "status", "conditions")
    init_container_statuses = Items(ContainerStatusView, "status", "initContainerStatuses")
    container_statuses = Items(ContainerStatusView, "status", "containerStatuses")

    def failing(self, kind: str) -> PodConditionView | None:
        """The condition ``kind`` when it is False (``PodScheduled``: not scheduled)."""
        return next((c for c in self.conditions if c.kind == kind and c.status == "False"), None)

    @property
    def replica_index(self) -> int:
        """Its completion index in an Indexed Job (a job with replicas); 0 otherwise."""
        text = self.completion_index or ""
        return int(text) if text.isascii() and text.isdigit() else 0

    def container(self, name: str) -> ContainerStatusView | None:
        """The status of its container ``name``, once the kubelet reported one."""
        return next((c for c in self.container_statuses if c.name == name), None)


def trim_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """What the watch cache keeps of a Job: what ``JobView`` reads."""
    return trim(job, JobView)


def trim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the watch cache keeps of a Pod: what ``PodView`` reads."""
    return trim(pod, PodView)


def pack(trimmed: Mapping[str, Any] | list[dict[str, Any]]) -> bytes:
    """A trimmed object (or a list of them) as compact JSON of its own, for ``unpack``."""
    # An exact copy: the buffer ``orjson.dumps`` returns keeps its whole working capacity
    # (many times the JSON's length), for as long as the bytes live.
    return bytes(memoryview(orjson.dumps(trimmed)))


def pack_job(job: Mapping[str, Any]) -> bytes:
    """The watch cache's copy of a Job: what ``JobView`` reads, as compact JSON."""
    return pack(trim(job, JobView))


def pack_pod(pod: Mapping[str, Any]) -> bytes:
    """The watch cache's copy of a Pod: what ``PodView`` reads, as compact JSON."""
    return pack(trim(pod, PodView))


def unpack(packed: bytes | memoryview) -> dict[str, Any]:
    """A packed copy read back: the trimmed object (a new one on every call)."""
    unpacked: dict[str, Any] = orjson.loads(packed)
    return unpacked


def unpack_list(packed: bytes | memoryview) -> list[dict[str, Any]]:
    """A packed list of trimmed objects read back (new ones on every call)."""
    unpacked: list[dict[str, Any]] = orjson.loads(packed)
    return unpacked


def job_id_of(item: Mapping[str, Any]) -> str | None:
    """The job ID label of a raw Job or Pod."""
    return ObjectView(item).job_id


def newer(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether ``candidate`` is at least as recent as ``current`` (etcd revisions)."""
    if current is None:
        return True
    try:
        return int(ObjectView(candidate).resource_version or "") >= int(
            ObjectView(current).resource_version or ""
        )
    except ValueError:
        return True
