"""The terminal page in a real browser (Debian's headless Chromium through chromedriver) against
the live stack: log in, create a session, type into xterm.js, read the output back from the page."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import ARTIFACTS

ROOT = Path(__file__).resolve().parent.parent.parent
PASSWORD = "carol-browser-pw-1"


@pytest.fixture(scope="module")
def vendor_files():
    """xterm.js from npm, copied into static/ (what `make run` and `make test` do first)."""
    subprocess.run(["make", "-s", "vendor"], cwd=ROOT, check=True)
    assert (ROOT / "sessions/static/vendor/xterm.js").exists()


@pytest.fixture(scope="module")
def browser(vendor_files):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    profile = tempfile.mkdtemp(prefix="vterm-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, predicate, timeout: float = 60, what: str = ""):
    # The session list redraws its rows as they change: an element found just before a redraw is stale.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: predicate(d), what)


def screen_lines(driver) -> list[str]:
    """What xterm.js shows, from its buffer (scrollback included)."""
    return driver.execute_script("""
        const b = window.vterm.term.buffer.active, out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
        return out;""")


def type_line(driver, text: str) -> None:
    area = driver.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea")
    area.send_keys(text)
    area.send_keys(Keys.ENTER)


def test_log_in_open_a_terminal_type_and_read_back(stack, browser):
    stack.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                                       "u,_=g().objects.get_or_create(username='carol'); "
                                       f"u.set_password({PASSWORD!r}); u.save()")
    d = browser
    d.get(stack.url + "/")
    assert "/login/" in d.current_url, "the pages need a login"
    d.find_element(By.ID, "id_username").send_keys("carol")
    d.find_element(By.ID, "id_password").send_keys(PASSWORD)
    d.find_element(By.ID, "login-submit").click()
    wait_for(d, lambda d: d.find_elements(By.ID, "create-session"), what="the session list")

    d.find_element(By.ID, "new-name").send_keys("browser")
    d.find_element(By.ID, "create-session").click()
    wait_for(d, lambda d: "/sessions/" in d.current_url and d.find_elements(By.CSS_SELECTOR, "#terminal .xterm"),
             what="the terminal page")
    session_id = d.find_element(By.ID, "terminal").get_attribute("data-session")
    wait_for(d, lambda d: d.find_element(By.ID, "conn").text == "connected", what="the WebSocket")
    wait_for(d, lambda d: any(line.rstrip().endswith("#") or line.rstrip().endswith("$")
                              for line in screen_lines(d)), what="a prompt")

    d.find_element(By.ID, "terminal").click()
    type_line(d, "echo hello")
    wait_for(d, lambda d: "hello" in [line.strip() for line in screen_lines(d)], what="hello in the buffer")
    rows = d.find_element(By.CSS_SELECTOR, "#terminal .xterm-rows").text
    assert "hello" in rows.split("\n") or any(r.strip() == "hello" for r in rows.split("\n")), rows
    # The command's exit code, from the shell's marks.
    wait_for(d, lambda d: d.find_element(By.ID, "exit").text == "exit 0", what="exit 0")
    type_line(d, "(exit 3)")
    wait_for(d, lambda d: d.find_element(By.ID, "exit").text == "exit 3", what="exit 3")
    # Each command line as typed, without the prompt: the shell marks where a prompt ends (the
    # first prompt may have been drawn before the page attached, and came in the snapshot).
    listed = d.find_element(By.ID, "commands").text.split("\n")
    assert listed[-2].startswith("[0] ") and listed[-2].endswith("echo hello") and listed[-1] == "[3] (exit 3)", listed

    # The terminal follows the window, and the shell follows the terminal.
    cols_before = d.execute_script("return window.vterm.term.cols")
    d.set_window_size(800, 600)
    wait_for(d, lambda d: d.execute_script("return window.vterm.term.cols") < cols_before, what="a refit")
    cols = d.execute_script("return window.vterm.term.cols")
    type_line(d, "stty size")
    wait_for(d, lambda d: any(line.strip().endswith(f" {cols}") and line.strip().split()[0].isdigit()
                              for line in screen_lines(d)), what=f"stty size ending in {cols}")

    # A dropped connection comes back by itself, says so, and continues where it was.
    d.execute_script("window.vterm.reconnectNow()")
    wait_for(d, lambda d: d.find_element(By.ID, "conn").text.startswith("reconnected"), what="reconnected")
    d.find_element(By.ID, "terminal").click()
    type_line(d, "echo again-$((40+2))")
    wait_for(d, lambda d: "again-42" in [line.strip() for line in screen_lines(d)], what="again-42")
    assert [line.strip() for line in screen_lines(d)].count("hello") == 1, "nothing replayed twice"
    time.sleep(0.3)  # let xterm.js paint the last line before the picture (not an assertion)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "terminal.png"))

    # End it from the list.
    d.get(stack.url + "/")
    def click_end(d) -> bool:
        d.find_element(By.CSS_SELECTOR, f'tr[data-session="{session_id}"] button.danger').click()
        return True  # a row redrawn meanwhile is stale: wait_for tries again
    wait_for(d, click_end, what="the session's end button")
    wait_for(d, lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-session="{session_id}"] .status').text
             in ("terminating", "terminated"), what="the session ending")

    # Made and ended on the pages, audited as the REST API would (sessions/services.py).
    out = stack.config.manage("vterm_audit_export", "--session", session_id).stdout
    events = [json.loads(line) for line in out.splitlines()]
    made = [e for e in events if e["action"] in ("session.create", "session.terminate")]
    assert made and made[0]["action"] == "session.create" and made[0]["detail"]["name"] == "browser", events
    assert any(e["action"] == "session.terminate" for e in made), events
    assert all(e["user"] == "carol" and e["remote_addr"] == "127.0.0.1" and e["detail"]["via"] == "page"
               for e in made), made
