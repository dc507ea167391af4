"""Content-Disposition: attachment for active content, inline otherwise, names encoded."""

import pytest

from ocps_jobs.http.downloads import content_disposition


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/html", "attachment"),
        ("image/svg+xml", "attachment"),
        ("application/xml", "attachment"),
        ("text/javascript", "attachment"),
        ("application/pdf", "attachment"),
        ("text/plain", "inline"),
        ("application/fits", "inline"),
        ("image/png", "inline"),
        ("application/octet-stream", "inline"),
    ],
)
def test_active_content_is_attachment(content_type: str, kind: str) -> None:
    assert content_disposition("f", content_type).startswith(kind + ";")


def test_filename_is_quoted_safely() -> None:
    header = content_disposition('évil";\r\nx.txt', "text/plain")
    assert "\r" not in header and "\n" not in header
    assert 'filename="_vil____x.txt"' in header
    assert "filename*=UTF-8''%C3%A9vil%22%3B%0D%0Ax.txt" in header
