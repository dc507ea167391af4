"""Who is calling: a bearer token or a trusted identity header, else anonymous when allowed."""

from __future__ import annotations

import hmac

from flask import Request

from ..config import Settings
from ..errors import AuthenticationRequiredError
from ..models import Caller

__all__ = ["Authenticator"]

_MAX_IDENTITY_LENGTH = 255


class Authenticator:
    """Resolves the caller of each request from the settings' tokens and trusted header."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tokens = [
            (token.encode(), identity) for token, identity in settings.bearer_tokens().items()
        ]

    def identify(self, request: Request) -> Caller:
        """The caller; 401 for a bad token, or for no credentials when they are required."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            presented = credential.strip().encode()
            found = None
            for token, identity in self._tokens:  # constant time: no early exit
                if hmac.compare_digest(token, presented):
                    found = identity
            if found is None:
                raise AuthenticationRequiredError("The bearer token is not valid")
            return self._caller(found)
        trusted = self.settings.auth_header
        if trusted:
            identity = request.headers.get(trusted, "").strip()
            if identity:
                if len(identity) > _MAX_IDENTITY_LENGTH or not identity.isprintable():
                    raise AuthenticationRequiredError(f"Invalid identity in {trusted}")
                return self._caller(identity)
        if self.settings.authentication_required:
            raise AuthenticationRequiredError(
                "Authentication required: send 'Authorization: Bearer <token>'"
            )
        return Caller()

    def _caller(self, identity: str) -> Caller:
        return Caller(name=identity, admin=identity in self.settings.admin_users)
