"""CORS headers only for configured origins; preflight answered only for them."""

from pathlib import Path

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app


def make_client(tmp_path: Path, origins: frozenset[str]):
    settings = Settings.from_env(data_dir=tmp_path / "data", cors_origins=origins)
    return create_embedded_app(build_service(settings)).test_client()


def test_no_cors_headers_by_default(tmp_path: Path) -> None:
    client = make_client(tmp_path, frozenset())
    response = client.get("/api/v1/job", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert not [name for name, _ in response.headers.items() if name.startswith("Access-Control")]
    preflight = client.options(
        "/api/v1/job",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    assert preflight.status_code == 405
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_configured_origin_gets_cors_headers(tmp_path: Path) -> None:
    client = make_client(tmp_path, frozenset({"https://portal.lsst.org"}))
    allowed = client.get("/api/v1/job", headers={"Origin": "https://portal.lsst.org"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://portal.lsst.org"
    assert "Origin" in allowed.headers.get_all("Vary")
    other = client.get("/api/v1/job", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/api/v1/job",
        headers={"Origin": "https://portal.lsst.org", "Access-Control-Request-Method": "PUT"},
    )
    assert preflight.status_code == 204
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
