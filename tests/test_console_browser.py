"""The operations console in a real browser: Debian's headless Chromium, driven by
Selenium through /usr/bin/chromedriver (Selenium Manager never downloads anything).

Real parts throughout: ``covers web`` processes on 127.0.0.1 serving the console, a real
worker, the Kie stand-in. The browser never leaves loopback (no first-run, sync,
component-update or background requests). The tests never skip: without Chromium they
fail, saying what to install (``.ci/run`` installs it).

``COVERS_CONSOLE_SCREENSHOT=docs/console.png`` makes the test write the README's
screenshot there too (it always writes one under pytest's tmp path).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from kie_covers import enqueue_cover, get_cover, wait_for_cover
from kie_covers.core.errors import UnknownJob
from kie_covers.runtime.redis_server import free_port
from kie_covers.standin import KieStandin
from tests.conftest import process_env
from tests.services import ROOT, StartWorker, WebProcess, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APP_CALLBACK = "http://127.0.0.1:9/app-callback"
TOKEN = "console-" + uuid.uuid4().hex
#: Seconds the browser waits for what a test expects (generous: 2 shared cores).
WAIT_S = 30
#: A phone's screen width in CSS pixels (an iPhone SE / 12 mini).
PHONE_WIDTH = 375


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's browser with "
                    "`apt-get install -y chromium chromium-driver` (.ci/run does)")
    profile = tempfile.mkdtemp(prefix="covers-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps",
                 "--disable-extensions", f"--user-data-dir={profile}",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def console_web(run_dir: Path) -> Iterator[str]:
    """``covers web`` without a console token; its console's URL."""
    process = WebProcess(free_port(), process_env(), run_dir).start()
    yield f"http://127.0.0.1:{process.port}/console"
    process.stop()


def until(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait (polling) until `check` returns something truthy; say `what` on timeout."""
    def safe(d: WebDriver) -> Any:
        try:
            return check(d)
        except (StaleElementReferenceException, WebDriverException):
            return False  # the page redrew mid-read: look again
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(safe, what)


def failure_rows(driver: WebDriver) -> list[str]:
    return [row.get_attribute("data-job-id") or "" for row in
            driver.find_elements(By.CSS_SELECTOR, "#failures tbody tr")]


def count_card(driver: WebDriver, label: str) -> str:
    return str(driver.find_element(
        By.CSS_SELECTOR, f'#counts [data-count="{label}"] .value').text)


def no_sideways_scroll(driver: WebDriver) -> bool:
    return bool(driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1"))


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "no screenshot"
    assert path.stat().st_size > 10_000  # a drawn page, not an empty one
    return path


def filter_by_kind(browser: WebDriver, missing: str, flaky: str) -> None:
    """The kind filter lists only that kind's failures, and any lists both again."""
    Select(browser.find_element(By.ID, "kind")).select_by_value("not_found")
    until(browser, lambda d: failure_rows(d) == [missing], "only not_found listed")
    Select(browser.find_element(By.ID, "kind")).select_by_value("upstream")
    until(browser, lambda d: failure_rows(d) == [flaky], "only upstream listed")
    Select(browser.find_element(By.ID, "kind")).select_by_value("")
    until(browser, lambda d: failure_rows(d) == [missing, flaky], "both again")


def open_job_page(browser: WebDriver, job_id: str, tmp_path: Path) -> None:
    """Search by music task id opens the job's page: succeeded, thumbnails drawn, and a
    timeline from enqueue through the failure and the retry to success."""
    box = browser.find_element(By.ID, "q")
    box.send_keys(get_cover(job_id)["music_task_id"])
    box.submit()
    until(browser, lambda d: d.current_url.endswith("/console/jobs/" + job_id), "job page")
    until(browser, lambda d: d.find_element(By.ID, "job-state").text == "succeeded",
          "the job shows succeeded")
    until(browser, lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('#job-images img')];"
        "return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0);"),
        "two thumbnails loaded")
    events = [li.get_attribute("data-event") for li in
              browser.find_elements(By.CSS_SELECTOR, "#job-timeline li")]
    assert events[0] == "enqueued" and "failed" in events and "retried" in events
    assert events.index("failed") < events.index("retried") < events.index("succeeded")
    screenshot(browser, tmp_path, "job.png")


def fits_a_phone(browser: WebDriver, console_url: str, rows: list[str], tmp_path: Path
                 ) -> None:
    """On a phone-sized screen nothing scrolls sideways: the page open now (a job's),
    then the cluster page, which lists `rows`."""
    browser.set_window_size(PHONE_WIDTH, 812)
    try:
        until(browser, lambda d: d.execute_script("return window.innerWidth") <= PHONE_WIDTH,
              "a phone-wide window")
        until(browser, no_sideways_scroll, "the job page fits a phone")
        browser.get(console_url)
        until(browser, lambda d: failure_rows(d) == rows, "the cluster on a phone")
        until(browser, no_sideways_scroll, "the cluster page fits a phone")
        screenshot(browser, tmp_path, "console-phone.png")
    finally:
        browser.set_window_size(1280, 1000)


@pytest.mark.e2e
def test_a_failed_job_is_found_filtered_retried_and_its_page_shows_thumbnails(
    standin: KieStandin, start_worker: StartWorker, browser: WebDriver, console_web: str,
    tmp_path: Path,
) -> None:
    # Given two failures: Kie down (500, retryable; a fault until the stand-in is
    # fixed) and an unknown music task (404, not retryable).
    worker = start_worker(COVERS_MAX_ATTEMPTS="1", COVERS_RETRY_BASE="3600")
    standin.inject("generate", "500", times=None)
    flaky = enqueue_cover("console" + uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    assert wait_for_cover(flaky, timeout_s=30)["error"]["kind"] == "upstream"
    missing = enqueue_cover("notfound" + uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    standin.clear_faults()
    standin.inject("generate", "404", times=1)
    assert wait_for_cover(missing, timeout_s=30)["error"]["kind"] == "not_found"

    # The console lists both, newest first, and counts them.
    browser.get(console_web)
    until(browser, lambda d: failure_rows(d) == [missing, flaky], "both failures listed")
    until(browser, lambda d: count_card(d, "failed") == "2", "2 failed counted")
    assert browser.find_element(By.ID, "failures-total").text == "2"
    # The limiter panel: this suite's KIE_RATE_LIMIT is 1000 a second.
    assert " of 1000 in the last " in browser.find_element(By.ID, "limiter-generate").text
    # Who got the latest slots: these jobs are interactive, with no tenant
    slots = browser.find_element(By.ID, "limiter-slots").text
    assert re.fullmatch(r"interactive [1-9][0-9]* · bulk [0-9]+", slots), slots
    assert "(no tenant) " in browser.find_element(By.ID, "limiter-tenants").text

    filter_by_kind(browser, missing, flaky)

    # The stand-in is fixed; Retry on the flaky row queues it, and it succeeds.
    row = browser.find_element(By.CSS_SELECTOR, f'#failures tr[data-job-id="{flaky}"]')
    row.find_element(By.CSS_SELECTOR, "button.row-retry").click()
    until(browser, lambda d: "1 queued again" in d.find_element(By.ID, "message").text,
          "the retry acknowledged")
    assert wait_for_cover(flaky, timeout_s=30)["state"] == "succeeded"
    until(browser, lambda d: failure_rows(d) == [missing], "the retried job left the list")
    until(browser, lambda d: count_card(d, "succeeded") == "1"
          and count_card(d, "failed") == "1", "the counts follow, live")
    shot = screenshot(browser, tmp_path, "console.png")
    wanted = os.environ.get("COVERS_CONSOLE_SCREENSHOT")
    if wanted:
        shutil.copyfile(shot, ROOT / wanted)

    open_job_page(browser, flaky, tmp_path)

    fits_a_phone(browser, console_web, [missing], tmp_path)

    # An action without the page's CSRF proof is refused, and changes nothing.
    refused = requests.post(console_web + "/api/forget", json={"jobIds": [missing]},
                            timeout=5)
    assert refused.status_code == 403
    assert get_cover(missing)["state"] == "failed"


def tick(browser: WebDriver, job_id: str) -> None:
    """Select a failure's row by its checkbox."""
    browser.find_element(By.CSS_SELECTOR,
                         f'#failures tr[data-job-id="{job_id}"] input[type=checkbox]').click()


def said(browser: WebDriver, text: str) -> None:
    until(browser, lambda d: d.find_element(By.ID, "message").text == text, repr(text))


@pytest.mark.e2e
def test_selected_and_all_retryable_failures_are_retried_and_a_failure_forgotten(
    standin: KieStandin, start_worker: StartWorker, browser: WebDriver, console_web: str,
) -> None:
    worker = start_worker(COVERS_MAX_ATTEMPTS="1", COVERS_RETRY_BASE="3600")
    standin.inject("generate", "500", times=None)
    first, second = (enqueue_cover("console" + uuid.uuid4().hex, APP_CALLBACK,
                                   queue=worker.queue) for _ in range(2))
    for job_id in (first, second):
        assert wait_for_cover(job_id, timeout_s=30)["state"] == "failed"
    standin.clear_faults()
    standin.inject("generate", "404", times=1)
    missing = enqueue_cover("notfound" + uuid.uuid4().hex, APP_CALLBACK, queue=worker.queue)
    assert wait_for_cover(missing, timeout_s=30)["error"]["retryable"] is False
    browser.get(console_web)
    until(browser, lambda d: set(failure_rows(d)) == {first, second, missing}, "3 failures")
    # The selected one only.
    tick(browser, first)
    browser.find_element(By.ID, "retry-selected").click()
    said(browser, "1 queued again")
    assert wait_for_cover(first, timeout_s=30)["state"] == "succeeded"
    assert get_cover(second)["state"] == "failed"
    # All retryable ones: the 500, not the 404.
    browser.find_element(By.ID, "retry-all").click()
    said(browser, "1 queued again")
    assert wait_for_cover(second, timeout_s=30)["state"] == "succeeded"
    until(browser, lambda d: failure_rows(d) == [missing], "only the 404 is left")
    # Forget asks first, then deletes the record.
    tick(browser, missing)
    browser.find_element(By.ID, "forget-selected").click()
    until(browser, lambda d: d.switch_to.alert, "the confirmation").accept()
    said(browser, "1 forgotten")
    until(browser, lambda d: failure_rows(d) == [], "no failures left")
    with pytest.raises(UnknownJob):
        get_cover(missing)


@pytest.mark.e2e
def test_with_a_token_the_console_asks_for_it(
    standin: KieStandin, run_dir: Path, browser: WebDriver
) -> None:
    process = WebProcess(free_port(), process_env(COVERS_CONSOLE_TOKEN=TOKEN), run_dir).start()
    try:
        url = f"http://127.0.0.1:{process.port}/console"
        browser.delete_all_cookies()
        browser.get(url)
        until(browser, lambda d: d.current_url.endswith("/console/login"), "the login form")
        browser.find_element(By.ID, "token").send_keys("wrong")
        browser.find_element(By.ID, "login").click()
        until(browser, lambda d: d.find_element(By.ID, "login-failed").is_displayed(),
              "wrong token said")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        until(browser, lambda d: d.current_url.endswith("/console")
              and count_card(d, "failed") == "0", "the console, logged in")
        assert TOKEN not in browser.page_source
        session = browser.get_cookie("covers_console")
        assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"
        assert TOKEN not in session["value"]
        # Without the session (another client), the JSON is refused.
        assert requests.get(url + "/api/overview", timeout=5).status_code == 401
        browser.find_element(By.ID, "logout").click()
        until(browser, lambda d: d.current_url.endswith("/console/login"), "logged out")
        wait_until(lambda: browser.get_cookie("covers_console") is None, 10, 0.2,
                   "the session cookie dropped")
    finally:
        process.stop()
