"""Headless Chromium for the web view's tests: the machine's Debian chromium and chromedriver.

Missing, they fail the test (``./run test`` installs them): a browser test must not pass
by being skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["headless_chromium", "wait_for"]


def headless_chromium(downloads: Path, width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """A fresh headless Chromium whose downloads land in ``downloads``."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(
            "chromium and chromedriver are needed (Debian: apt-get install chromium "
            "chromium-driver; ./run test installs them)"
        )
    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    browser.set_page_load_timeout(30)
    return browser


def wait_for(
    browser: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], timeout: float = 30
) -> Any:
    """What ``condition`` returns once it is truthy, polled in the test (not the page).

    An element the page replaced while the condition read it (the live table re-renders)
    is asked again at the next poll.
    """
    wait = WebDriverWait(
        browser, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition)
