"""The web view in a real browser: headless Chromium against ``ocps-jobs serve``.

The jobs table updates itself while jobs run, a running job's log is followed live, a
failed job's page shows its error and log, a result downloads, the Abort button aborts,
injected markup (in fields and in the log) never runs, and the pages fit a phone's width.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from ocps_jobs.http.webpages import LOG_TAIL_BYTES
from tests.browser import headless_chromium, wait_for
from tests.chaos import ServeProcess
from tests.helpers import wait_for_phase

pytestmark = pytest.mark.slow

SCREENSHOTS = "WEB_TEST_SCREENSHOTS"  # a folder to keep the pages' screenshots in


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    running = ServeProcess(
        tmp_path_factory.mktemp("web") / "data", "--max-concurrent-jobs", "4"
    ).start()
    yield running
    running.stop()


def submit(server: ServeProcess, **body: Any) -> str:
    response = requests.put(f"{server.url}/api/v1/job", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["jobId"])


def api_phase(server: ServeProcess, job_id: str) -> str:
    return str(requests.get(f"{server.url}/api/v1/job/{job_id}/phase", timeout=10).json())


def row_phase(browser: webdriver.Chrome, job_id: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"] .phase')
    return rows[0].text if rows else None


def keep_screenshot(browser: webdriver.Chrome, name: str) -> None:
    import os

    folder = os.environ.get(SCREENSHOTS)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_a_job_appears_and_changes_phase_without_a_reload(
    server: ServeProcess, browser: webdriver.Chrome
) -> None:
    browser.get(server.url + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs"
    browser.execute_script("window.sameDocument = 'still here'")
    # The long poll is open before the job exists.
    time.sleep(0.5)
    job_id = submit(server, command="sleep 2; echo done", run_id="appears-live")
    wait_for(browser, lambda b: row_phase(b, job_id) in {"queued", "executing"}, timeout=15)
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]')
    assert "appears-live" in row.text
    wait_for(browser, lambda b: row_phase(b, job_id) == "completed", timeout=30)
    assert browser.execute_script("return window.sameDocument") == "still here"
    # Newest first: the job just made is the top row.
    first = browser.find_element(By.CSS_SELECTOR, "#job-rows tr")
    assert first.get_attribute("data-job-id") == job_id
    keep_screenshot(browser, "jobs")


def test_a_failed_job_shows_its_error_and_log_and_a_result_downloads(
    server: ServeProcess, browser: webdriver.Chrome
) -> None:
    job_id = submit(
        server,
        command=(
            "printf 'calibrated 42 frames\\n' > $JOB_OUTPUT_DIR/summary.txt; "
            "echo 'step 1 of 2: bias'; echo 'flat field missing for detector 17' >&2; exit 3"
        ),
        run_id="night-calib-failed",
    )
    wait_for_phase(lambda: api_phase(server, job_id), {"error"})
    browser.get(server.url + "/?phase=error")
    row = wait_for(
        browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]')
    )[0]
    assert "flat field missing for detector 17" in row.find_element(By.CSS_SELECTOR, ".error").text
    row.find_element(By.LINK_TEXT, "night-calib-failed").click()
    wait_for(browser, lambda b: b.find_elements(By.ID, "error-summary"))
    assert browser.find_element(By.ID, "job-phase").text == "error"
    error = browser.find_element(By.ID, "error-summary").text
    assert "code 3" in error and "flat field missing for detector 17" in error
    log = browser.find_element(By.ID, "log").text
    assert "step 1 of 2: bias" in log and "flat field missing for detector 17" in log
    keep_screenshot(browser, "failed-job")
    link = browser.find_element(By.CSS_SELECTOR, 'a[aria-label="Download summary.txt"]')
    link.click()
    downloaded = browser.downloads / "summary.txt"  # type: ignore[attr-defined]
    wait_for(browser, lambda b: downloaded.is_file() and downloaded.stat().st_size > 0)
    assert downloaded.read_bytes() == b"calibrated 42 frames\n"


def test_the_abort_button_aborts_a_running_job(
    server: ServeProcess, browser: webdriver.Chrome
) -> None:
    job_id = submit(server, command="echo started; sleep 120", run_id="to-abort")
    wait_for_phase(lambda: api_phase(server, job_id), {"executing"})
    browser.get(f"{server.url}/web/jobs/{job_id}")
    button = browser.find_element(By.ID, "abort")
    button.click()
    alert = wait_for(browser, lambda b: b.switch_to.alert)
    assert "to-abort" in alert.text
    alert.dismiss()  # cancelled: nothing is sent
    time.sleep(0.5)
    assert api_phase(server, job_id) == "executing"
    browser.find_element(By.ID, "abort").click()
    wait_for(browser, lambda b: b.switch_to.alert).accept()
    shown = "return document.getElementById('job-phase').textContent"
    wait_for(browser, lambda b: b.execute_script(shown) == "aborted", timeout=30)
    assert api_phase(server, job_id) == "aborted"
    assert not browser.find_elements(By.ID, "abort")  # an aborted job has no button


LOG_INJECTED = "<script>window.injected='log'</script>"
LOG_INJECTED_IMG = "<img src=x onerror=window.injected=3>"


def log_text(browser: webdriver.Chrome) -> str:
    return str(browser.execute_script("return document.getElementById('log').textContent"))


def test_a_running_jobs_log_is_followed_live(tmp_path: Path, browser: webdriver.Chrome) -> None:
    """Lines printed after the page loaded appear without a reload, markup as text.

    The service's wait cap is 2 s, so the follow ends and is asked again (``skip=``) while
    the job waits: the lines before the reconnect are not shown twice.
    """
    server = ServeProcess(tmp_path / "data", env={"OCPS_WAIT_MAX_SECONDS": "2"}).start()
    printed, finish = tmp_path / "print-now", tmp_path / "finish-now"
    try:
        job_id = submit(
            server,
            command=(
                "echo before-the-page-loaded; "
                f"while [ ! -e {printed} ]; do sleep 0.1; done; "
                "echo printed-after-the-page-loaded; "
                f"echo \"{LOG_INJECTED}\"; echo '{LOG_INJECTED_IMG}'; "
                f"while [ ! -e {finish} ]; do sleep 0.1; done; echo the-last-line"
            ),
            run_id="live-log",
        )
        wait_for_phase(lambda: api_phase(server, job_id), {"executing"})
        browser.get(f"{server.url}/web/jobs/{job_id}")
        browser.execute_script("window.sameDocument = 'still here'")
        wait_for(browser, lambda b: "before-the-page-loaded" in log_text(b), timeout=15)
        time.sleep(3)  # past the wait cap: the follow has ended and been asked again
        printed.touch()
        wait_for(browser, lambda b: LOG_INJECTED_IMG in log_text(b), timeout=15)
        assert api_phase(server, job_id) == "executing"  # shown live, not from the stored log
        assert browser.execute_script("return window.sameDocument") == "still here"
        text = log_text(browser)
        assert text.count("before-the-page-loaded") == 1, text
        assert text.index("before-the") < text.index("printed-after") < text.index(LOG_INJECTED)
        time.sleep(0.3)
        assert browser.execute_script("return window.injected") is None
        assert not browser.find_elements(By.CSS_SELECTOR, "#log *, main img, main script")
        assert (
            browser.execute_script("return document.getElementById('log').childNodes.length") == 1
        )
        finish.touch()
        shown = "return document.getElementById('job-phase').textContent"
        wait_for(browser, lambda b: b.execute_script(shown) == "completed", timeout=30)
        wait_for(browser, lambda b: "the-last-line" in log_text(b), timeout=15)
        text = log_text(browser)
        assert text.count("printed-after-the-page-loaded") == 1, text
        assert browser.execute_script("return window.injected") is None
        assert browser.execute_script("return window.sameDocument") == "still here"
    finally:
        printed.touch()
        finish.touch()
        server.stop()


def test_a_followed_log_keeps_only_its_end_in_the_page(
    server: ServeProcess, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    burst, finish = tmp_path / "burst-now", tmp_path / "finish-now"
    job_id = submit(
        server,
        command=(
            f"echo first-of-all; while [ ! -e {burst} ]; do sleep 0.1; done; "
            f"seq 1 40000; echo end-of-burst; while [ ! -e {finish} ]; do sleep 0.1; done"
        ),
        run_id="log-burst",
    )
    try:
        wait_for_phase(lambda: api_phase(server, job_id), {"executing"})
        browser.get(f"{server.url}/web/jobs/{job_id}")
        wait_for(browser, lambda b: "first-of-all" in log_text(b), timeout=15)
        burst.touch()
        wait_for(browser, lambda b: "end-of-burst" in log_text(b), timeout=30)
        text = log_text(browser)
        assert len(text) <= LOG_TAIL_BYTES and "first-of-all" not in text
        assert text.split("\n", 1)[0].isdigit()  # cut at a whole line
        assert text.endswith("40000\nend-of-burst\n")
    finally:
        burst.touch()
        finish.touch()


INJECTED = "<script>window.injected = 'run id'</script>"
INJECTED_ERROR = '<img src=x onerror="window.injected=2">'
INJECTED_FILE = "<svg onload=window.injected=1>.txt"


def test_markup_in_a_jobs_fields_is_shown_as_text_and_never_runs(
    server: ServeProcess, browser: webdriver.Chrome
) -> None:
    job_id = submit(
        server,
        command=(
            f"echo x > $JOB_OUTPUT_DIR/'{INJECTED_FILE}'; echo \"{LOG_INJECTED}\"; "
            f"echo '{LOG_INJECTED_IMG}'; "
            f"echo '{INJECTED_ERROR}' >&2; exit 1 # <script>window.injected='command'</script>"
        ),
        run_id=INJECTED,
        environment=[{"name": "NOTE", "value": "<script>window.injected='env'</script>"}],
    )
    wait_for_phase(lambda: api_phase(server, job_id), {"error"})
    for page in ("/", f"/web/jobs/{job_id}"):
        browser.get(server.url + page)
        wait_for(browser, lambda b: b.execute_script("return document.readyState") == "complete")
        time.sleep(0.3)
        assert browser.execute_script("return window.injected") is None, page
        text = browser.find_element(By.TAG_NAME, "body").text
        assert INJECTED in text, page
        # Only the page's own script element; no element the values could have made.
        sources = browser.execute_script(
            "return Array.from(document.scripts).map(s => s.getAttribute('src'))"
        )
        assert sources == ["/web/static/web.js"], page
        assert not browser.find_elements(By.CSS_SELECTOR, "main img, main svg"), page
    text = browser.find_element(By.TAG_NAME, "body").text
    assert INJECTED_ERROR in browser.find_element(By.ID, "error-summary").text
    assert INJECTED_FILE in text
    assert LOG_INJECTED in log_text(browser) and LOG_INJECTED_IMG in log_text(browser)
    assert "<script>window.injected='env'</script>" in text
    assert "<script>window.injected='command'</script>" in text


def test_the_pages_fit_a_phone_and_work_from_the_keyboard(
    server: ServeProcess, tmp_path: Path
) -> None:
    job_id = submit(server, command="echo phone", run_id="phone-width-" + "x" * 60)
    wait_for_phase(lambda: api_phase(server, job_id), {"completed"})
    phone = headless_chromium(tmp_path, width=390, height=844)
    try:
        for page in ("/", f"/web/jobs/{job_id}"):
            phone.get(server.url + page)
            overflow = phone.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{page} is {overflow}px wider than a phone"
        phone.get(server.url + "/")
        # The first Tab stop skips to the content; Tab on reaches the job's link.
        body = phone.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        assert phone.switch_to.active_element.text == "Skip to content"
        for _ in range(40):
            phone.switch_to.active_element.send_keys(Keys.TAB)
            if phone.switch_to.active_element.text.startswith("phone-width-"):
                break
        phone.switch_to.active_element.send_keys(Keys.ENTER)
        wait_for(phone, lambda b: b.current_url.endswith(f"/web/jobs/{job_id}"))
        labels = phone.execute_script(
            "return Array.from(document.querySelectorAll('input, select, button'))"
            ".filter(e => !e.labels || e.labels.length === 0 && !e.textContent.trim()).length"
        )
        assert labels == 0
    finally:
        phone.quit()
