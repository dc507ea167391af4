"""Which ``Host`` headers the service builds absolute links from (``OCPS_TRUSTED_HOSTS``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

__all__ = ["ANY_HOST", "host_name", "is_trusted_host"]

# A trusted-hosts entry that trusts every Host (a proxy in front checks it).
ANY_HOST = "*"


def host_name(host: str) -> str:
    """The name of a ``Host`` header value, lower-cased, without its port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_trusted_host(host: str, trusted: Collection[str]) -> bool:
    """Whether links may name ``host``: a loopback name, or one of ``trusted``.

    An entry is a host name or address (any port), ``.example.org`` for that domain and
    every name under it, or ``*`` for any host.
    """
    name = host_name(host)
    if not name:
        return False
    if _is_loopback(name) or ANY_HOST in trusted:
        return True
    for entry in trusted:
        entry = entry.lower()
        if entry.startswith("."):
            if name == entry[1:] or name.endswith(entry):
                return True
        elif name == host_name(entry):
            return True
    return False
