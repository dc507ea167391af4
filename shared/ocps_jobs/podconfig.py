"""The shapes of the job pod settings (volumes, secret files, placement, resources), validated."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "QUANTITY",
    "DataVolume",
    "JobSecretFiles",
    "JobSecurityContext",
    "JobVariable",
    "ResourceProfile",
    "Toleration",
    "check_label_key",
    "check_label_value",
    "quantity_value",
]

# Kubernetes' own syntaxes, so that a bad value stops the service at start, not at a Job.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
_ABSOLUTE_PATH = r"^/[^\x00]*$"
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}

Quantity = Annotated[str, Field(pattern=QUANTITY)]
AbsolutePath = Annotated[str, Field(pattern=_ABSOLUTE_PATH)]
ObjectName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]


def quantity_value(quantity: str) -> float:
    """A Kubernetes quantity (``500m``, ``4Gi``) as a number, to compare two of them."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    number, suffix = match.groups()
    return float(number) * _SUFFIXES.get(suffix, 1.0)


def check_label_key(key: str) -> str:
    """A label or annotation key as Kubernetes accepts it: ``[prefix/]name``."""
    prefix, slash, name = key.rpartition("/")
    bad_prefix = slash and (len(prefix) > 253 or not re.match(DNS_SUBDOMAIN, prefix))
    if not _LABEL_NAME.match(name) or bad_prefix:
        raise ValueError(f"{key!r} is not a valid label or annotation key")
    return key


def check_label_value(value: str) -> str:
    """A label value as Kubernetes accepts it (at most 63 characters, alphanumeric ends)."""
    if not _LABEL_VALUE.match(value):
        raise ValueError(f"{value!r} is not a valid label value")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataVolume(_Strict):
    """A data volume of every job pod: an NFS export or a PVC, mounted read-only or read-write.

    Its name gives the job ``DATA_DIR_<NAME>`` = ``mount_path``.
    """

    mount_path: AbsolutePath
    claim: ObjectName | None = None
    nfs_server: Annotated[str, Field(min_length=1, pattern=r"^[^\s/]+$")] | None = None
    nfs_path: AbsolutePath | None = None
    sub_path: Annotated[str, Field(pattern=r"^[^/\x00][^\x00]*$")] | None = None
    read_only: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> DataVolume:
        nfs = self.nfs_server is not None or self.nfs_path is not None
        if nfs and (self.nfs_server is None or self.nfs_path is None):
            raise ValueError("an NFS volume needs both nfs_server and nfs_path")
        if nfs == (self.claim is not None):
            raise ValueError("give either claim or nfs_server and nfs_path")
        if self.sub_path and ".." in self.sub_path.split("/"):
            raise ValueError("sub_path may not contain '..'")
        return self


def _octal(value: Any) -> Any:
    """A mode written as text is octal (``"0400"``); JSON has no octal numbers."""
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal file mode") from None
    return value


class JobSecretFiles(_Strict):
    """A Secret's keys as files of every job pod, readable by the job's user (and fsGroup)."""

    secret: ObjectName
    mount_path: AbsolutePath
    # File mode; with the pod's fsGroup the files belong to that group (Kubernetes adds
    # group read to the mode of a read-only volume).
    mode: Annotated[int, Field(ge=0, le=0o777), BeforeValidator(_octal)] = 0o400
    # Key -> file name; empty: every key as a file of its own name.
    items: dict[str, Annotated[str, Field(pattern=r"^[^/\x00][^\x00]*$")]] = {}


class JobVariable(_Strict):
    """A variable of every job: a literal value, or a key of a Secret."""

    value: str | None = None
    secret: ObjectName | None = None
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _literal(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> JobVariable:
        from_secret = self.secret is not None or self.key is not None
        if from_secret and (self.secret is None or self.key is None):
            raise ValueError("a variable from a Secret needs both secret and key")
        if from_secret == (self.value is not None):
            raise ValueError("give either value or secret and key")
        return self


class JobSecurityContext(_Strict):
    """Who the job pod's containers run as; non-root unless the operator says otherwise."""

    run_as_user: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    run_as_group: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    fs_group: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    run_as_non_root: bool = True

    @model_validator(mode="after")
    def _root_only_if_allowed(self) -> JobSecurityContext:
        if self.run_as_non_root and self.run_as_user == 0:
            raise ValueError("run_as_user 0 (root) needs run_as_non_root false")
        return self


class Toleration(_Strict):
    """A toleration of the job pods, as Kubernetes spells its fields."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists has no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists")
        return self


def _none_if_empty(value: Any) -> Any:
    return None if value == "" else value


OptionalQuantity = Annotated[Quantity | None, BeforeValidator(_none_if_empty)]


class ResourceProfile(_Strict):
    """Requests and limits of a job container (empty limits: none)."""

    cpu_request: Quantity
    memory_request: Quantity
    cpu_limit: OptionalQuantity = None
    memory_limit: OptionalQuantity = None

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourceProfile:
        for kind in ("cpu", "memory"):
            request, limit = getattr(self, f"{kind}_request"), getattr(self, f"{kind}_limit")
            if limit and quantity_value(request) > quantity_value(limit):
                raise ValueError(f"{kind}_request {request} is above {kind}_limit {limit}")
        return self
