"""Result IDs: every accepted form decodes to a key inside one job's outputs; nothing else."""

import base64

import pytest

from ocps_jobs.errors import ResultNotFoundError
from ocps_jobs.resultids import ResultKey, decode_result_id, encode_result_id

JOB = "e13ed9f2803842409763b185d4f490e2"
OTHER = "a6b9043ef0c24170b019641da57a0dba"


def b64(text: str, *, urlsafe: bool = False, pad: bool = True) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    value = encode(text.encode()).decode()
    return value if pad else value.rstrip("=")


def test_issued_ids_are_urlsafe_and_unpadded() -> None:
    key = f"jobs/{JOB}/out/a dir/ünïcode?.fits"
    issued = encode_result_id(key)
    assert "=" not in issued and "+" not in issued and "/" not in issued
    assert decode_result_id(issued) == ResultKey(JOB, "a dir/ünïcode?.fits")
    assert decode_result_id(issued).key == key


@pytest.mark.parametrize(
    ("result_id", "expected"),
    [
        (b64(f"jobs/{JOB}/out/f.txt", urlsafe=True, pad=False), ResultKey(JOB, "f.txt")),
        (b64(f"jobs/{JOB}/out/f.txt", urlsafe=True, pad=True), ResultKey(JOB, "f.txt")),
        (b64(f"jobs/{JOB}/out/x/y>>?.txt"), ResultKey(JOB, "x/y>>?.txt")),  # '+' and '/' inside
        # The seed's legacy form: base64 of an absolute path under /uws/jobs.
        (b64(f"/uws/jobs/{JOB}/out/dirlist.txt"), ResultKey(JOB, "dirlist.txt")),
        (
            "L3V3cy9qb2JzL2UxM2VkOWYyODAzODQyNDA5NzYzYjE4NWQ0ZjQ5MGUyL291dC9kaXJsaXN0LnR4dA==",
            ResultKey(JOB, "dirlist.txt"),
        ),
    ],
)
def test_accepted_forms(result_id: str, expected: ResultKey) -> None:
    assert decode_result_id(result_id) == expected


def test_standard_base64_with_plus_and_slash_decodes() -> None:
    key = f"jobs/{JOB}/out/??>>"  # encodes to characters '+' and '/' in standard base64
    standard = b64(key)
    assert "+" in standard or "/" in standard
    assert decode_result_id(standard).relative_path == "??>>"


@pytest.mark.parametrize(
    "decoded",
    [
        "/etc/passwd",
        "../../etc/passwd",
        f"jobs/{JOB}/out/../../{OTHER}/out/secret",
        f"jobs/{JOB}/out/../job.json",
        f"jobs/{JOB}/out/./f",
        f"jobs/{JOB}/out//f",
        f"jobs/{JOB}/out/",
        f"jobs/{JOB}/manifest.json",
        f"jobs/{JOB}/job.json",
        f"jobs/{JOB.upper()}/out/f",
        f"jobs/{JOB}x/out/f",
        f"/uws/jobs/{JOB}/out/../../../etc/passwd",
        f"/uws/jobs/{JOB}/src/secret",
        f"/data/jobs/{JOB}/out/f",
        f"jobs/{JOB}/out/a\\..\\b",
        f"jobs/{JOB}/out/a\x00b",
        f"jobs/{JOB}/out/line\nbreak",
    ],
)
def test_ids_outside_a_jobs_outputs_are_not_found(decoded: str) -> None:
    for result_id in (b64(decoded), b64(decoded, urlsafe=True, pad=False)):
        with pytest.raises(ResultNotFoundError):
            decode_result_id(result_id)


@pytest.mark.parametrize(
    "result_id",
    ["", "!!!!", "a", "%2E%2E", "..", "x" * 5000, "w4Ao", "/etc/passwd", "Zm9v\n"],
)
def test_garbage_is_not_found(result_id: str) -> None:
    with pytest.raises(ResultNotFoundError):
        decode_result_id(result_id)
