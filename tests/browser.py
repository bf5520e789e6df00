"""A real headless browser for the tests: Debian's chromium driven by selenium with the system
chromedriver (nothing is downloaded), a fresh profile each time."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (path for path in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(path).is_file()), None
)
NO_BROWSER = "the UI check needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver"
UI_TIMEOUT_S = 30.0


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless chromium with a fresh profile in `profile`; skips the test without one."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(NO_BROWSER)
    webdriver = pytest.importorskip("selenium.webdriver", reason="the UI check needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, what: str, screenshot: Path, timeout: float = UI_TIMEOUT_S) -> Any:
    """`condition(driver)`'s first truthy value within `timeout`; else fail with a screenshot and the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        driver.save_screenshot(str(screenshot))
        body = driver.find_element("tag name", "body").text[:2000]
        pytest.fail(f"{what} not shown within {timeout:.0f} s at {driver.current_url}; screenshot {screenshot}\n{body}")
