"""Who is calling: a bearer token, a trusted identity header, else the anonymous identity.

The trusted header is believed only from the networks the deployment names as its
ingress's (``auth_header_sources``; none named: from any peer). A request without
credentials gets the configured anonymous identity (the CSC's, which sends none), unless it
came from the ingress: from outside, credentials are required.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from flask import Request

from ..config import Settings
from ..errors import AuthenticationRequiredError
from ..models import Caller

__all__ = ["Authenticator"]

_MAX_IDENTITY_LENGTH = 255

log = logging.getLogger(__name__)


class Authenticator:
    """Resolves the caller of each request from the settings' tokens and trusted header."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stamp: tuple[int, int] | None = None
        self._tokens = self._read_tokens()
        self._sources = [
            ipaddress.ip_network(network, strict=False) for network in settings.auth_header_sources
        ]

    def _from_ingress(self, address: str | None) -> bool:
        """Whether a peer address is in the networks named as the ingress's."""
        try:
            peer = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            return False
        return any(peer in network for network in self._sources)

    def _file_stamp(self) -> tuple[int, int] | None:
        path = self.settings.auth_tokens_file
        try:
            info = os.stat(path) if path is not None else None
        except OSError:
            return None
        return None if info is None else (info.st_mtime_ns, info.st_size)

    def _read_tokens(self) -> list[tuple[bytes, str]]:
        stamp = self._file_stamp()
        tokens = [
            (token.encode(), identity) for token, identity in self.settings.bearer_tokens().items()
        ]
        self._stamp = stamp  # only once read: a failed read is tried again
        return tokens

    def _current_tokens(self) -> list[tuple[bytes, str]]:
        """The tokens, read again once the tokens file has changed.

        An updated Secret reaches running pods as a refreshed file, without a restart.
        """
        if self.settings.auth_tokens_file is not None and self._file_stamp() != self._stamp:
            try:
                self._tokens = self._read_tokens()
            except (OSError, ValueError) as error:  # mid-update, unreadable, not UTF-8
                log.warning("tokens file not read again (%s); none accepted meanwhile", error)
                self._tokens = []  # fail closed: a revoked token must not keep working
        return self._tokens

    def identify(self, request: Request) -> Caller:
        """The caller; 401 for a bad token, or for no credentials when they are required."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            presented = credential.strip().encode()
            found = None
            for token, identity in self._current_tokens():  # constant time: no early exit
                if hmac.compare_digest(token, presented):
                    found = identity
            if found is None:
                raise AuthenticationRequiredError("The bearer token is not valid")
            return self._caller(found)
        trusted = self.settings.auth_header
        from_ingress = bool(self._sources) and self._from_ingress(request.remote_addr)
        if trusted and (from_ingress or not self._sources):
            identity = request.headers.get(trusted, "").strip()
            if identity:
                if len(identity) > _MAX_IDENTITY_LENGTH or not identity.isprintable():
                    raise AuthenticationRequiredError(f"Invalid identity in {trusted}")
                return self._caller(identity)
        anonymous = self.settings.anonymous_identity
        if anonymous and not from_ingress:
            return self._caller(anonymous)
        if self.settings.authentication_required:
            raise AuthenticationRequiredError(
                "Authentication required: send 'Authorization: Bearer <token>'"
            )
        return Caller()

    def _caller(self, identity: str) -> Caller:
        return Caller(name=identity, admin=identity in self.settings.admin_users)
