"""Who is let in: the anonymous identity; the trusted header only from the ingress's networks."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from ocps_jobs.config import Settings
from ocps_jobs.errors import AuthenticationRequiredError, SettingsError
from ocps_jobs.http.auth import Authenticator
from ocps_jobs.models import Caller

HEADER = "X-Auth-Request-User"
INGRESS = "10.1.2.3"  # in the ingress's network below
CSC_POD = "10.244.7.8"
APP = Flask(__name__)


def identify(settings: Settings, peer: str, headers: dict[str, str] | None = None) -> Caller:
    with APP.test_request_context(
        "/api/v1/job", headers=headers or {}, environ_base={"REMOTE_ADDR": peer}
    ):
        from flask import request

        return Authenticator(settings).identify(request)


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "backend": "kubernetes",
        "auth_header": HEADER,
        "auth_header_sources": frozenset({"10.1.0.0/16"}),
        "anonymous_identity": "ocps-csc",
        "auth_tokens": {"good-token": "operator"},
        "admin_users": frozenset({"ops"}),
    }
    base.update(values)
    return Settings.from_env(**base)


def test_a_request_without_credentials_from_the_cluster_is_the_csc() -> None:
    assert identify(settings(), CSC_POD) == Caller(name="ocps-csc")


def test_the_ingress_header_is_believed_from_the_ingress_only() -> None:
    assert identify(settings(), INGRESS, {HEADER: "alice"}).name == "alice"
    # From a pod the deployment does not name as its ingress, the header is ignored: the
    # caller is the anonymous identity, not the admin it claims to be.
    forged = identify(settings(), CSC_POD, {HEADER: "ops"})
    assert forged == Caller(name="ocps-csc") and not forged.admin
    with pytest.raises(AuthenticationRequiredError):
        identify(settings(anonymous_identity=None), CSC_POD, {HEADER: "ops"})


def test_from_the_ingress_without_credentials_is_refused() -> None:
    with pytest.raises(AuthenticationRequiredError):
        identify(settings(), INGRESS)
    # A peer that is no address is not the ingress: its header is not believed.
    assert identify(settings(), "not an address", {HEADER: "x"}).name == "ocps-csc"


def test_a_bearer_token_wins_and_a_bad_one_is_refused_from_anywhere() -> None:
    good = {"Authorization": "Bearer good-token"}
    assert identify(settings(), CSC_POD, good).name == "operator"
    assert identify(settings(), INGRESS, good).name == "operator"
    for peer in (CSC_POD, INGRESS):
        with pytest.raises(AuthenticationRequiredError):
            identify(settings(), peer, {"Authorization": "Bearer stolen"})


def test_without_named_sources_the_header_is_believed_as_before() -> None:
    plain = settings(auth_header_sources=frozenset(), anonymous_identity=None)
    assert identify(plain, CSC_POD, {HEADER: "bob"}).name == "bob"
    with pytest.raises(AuthenticationRequiredError):
        identify(plain, CSC_POD)


def test_an_ipv6_ingress_network() -> None:
    v6 = settings(auth_header_sources=frozenset({"fd00:10::/64"}))
    assert identify(v6, "fd00:10::5", {HEADER: "carol"}).name == "carol"
    assert identify(v6, "fd00:11::5", {HEADER: "carol"}).name == "ocps-csc"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"auth_header_sources": frozenset({"10.0.0.300/8"})}, "OCPS_AUTH_HEADER_SOURCES"),
        ({"anonymous_identity": ""}, "OCPS_ANONYMOUS_IDENTITY"),
    ],
)
def test_bad_authentication_settings_are_refused_by_name(
    values: dict[str, Any], named: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        settings(**values)
    message = str(raised.value)
    assert "\n" not in message and named in message
