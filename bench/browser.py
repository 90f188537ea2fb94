"""Open a page in headless Chromium (Debian's chromium + chromium-driver, via Selenium),
collect its console errors and save a full-page screenshot.

Install on Debian/Ubuntu: ``apt-get install -y chromium chromium-driver``; the Python
side is ``selenium`` (dev extra). Nothing is downloaded at run time: the driver and the
browser are the system's (``$SPURAUG_CHROMIUM`` / ``$SPURAUG_CHROMEDRIVER`` override the
paths).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class BrowserMissingError(RuntimeError):
    """Chromium, chromedriver or selenium is not installed; the message says how to install it."""


def find_chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and its driver, or :class:`BrowserMissingError`."""
    browser = os.environ.get("SPURAUG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("SPURAUG_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p)
        raise BrowserMissingError(
            f"{missing} not found on PATH; install with `apt-get install -y chromium chromium-driver`"
        )
    try:
        import selenium  # noqa: F401  # deferred: optional dev dependency
    except ImportError:
        raise BrowserMissingError("the Python package selenium is missing; run `make setup`") from None
    return browser, driver


def render_page(page: str | Path, screenshot: str | Path | None = None, width: int = 1280,
                max_height: int = 8000) -> dict:
    """Load ``page`` (a file path or URL) in headless Chromium.

    Returns ``{"title", "console_errors", "console", "height"}``: ``console_errors`` are the
    SEVERE browser-log entries (``console.error``, uncaught exceptions, resources that
    failed to load), ``console`` all entries. With ``screenshot`` the whole page (up to
    ``max_height`` pixels) is saved there as PNG.
    """
    browser, driver_path = find_chromium()
    from selenium import webdriver  # deferred: optional dev dependency
    from selenium.webdriver.chrome.service import Service  # deferred: optional dev dependency

    url = str(page)
    if "://" not in url:
        url = Path(page).resolve().as_uri()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},900", "--hide-scrollbars", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        drv.set_page_load_timeout(60)
        drv.get(url)
        height = int(drv.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"))
        log = drv.get_log("browser")
        if screenshot is not None:
            drv.set_window_size(width, min(max(height, 200), max_height))
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(screenshot))
            log += drv.get_log("browser")
        title = drv.title
    finally:
        drv.quit()
    return {
        "title": title,
        "console_errors": [e["message"] for e in log if e.get("level") == "SEVERE"],
        "console": [f"{e.get('level')}: {e.get('message')}" for e in log],
        "height": height,
    }
