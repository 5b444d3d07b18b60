"""The panel in a real browser: headless Chromium (Debian's chromium + chromium-driver) through Selenium.

Each test drives the real page against a real daemon (null audio backend).
Marked slow: run with ``pytest -m slow`` (``.ci/run`` does, after installing
the browser).  With ``ENSEMBLE_PANEL_SCREENSHOTS=DIR`` the tests save the
screenshots the docs show (``docs/images/panel-*.png``).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import wait_for
from tests.controller.panel.conftest import EXAMPLES, Panel, kill_panel, loaded

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the 'browser' extra)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

if not (shutil.which(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str) -> None:
    where = os.environ.get("ENSEMBLE_PANEL_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(where) / f"panel-{name}.png"))


def _open(driver: Any, panel: Panel) -> None:
    driver.get(panel.url)
    wait_for(lambda: driver.find_element(By.ID, "conn").text == "live", 60, what="the page's WebSocket")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#actors tbody tr"), 30, what="the first state")


def _tab(driver: Any, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'nav button[data-tab="{name}"]').click()


def _reached(slider: Any, controller_value: Any) -> None:
    """Wait until the controller has the last value the page sent for ``slider`` (the one it shows).

    Each click or arrow key on a range input is a change the page sends, and
    the first one to arrive is not the last: a value set elsewhere before the
    last arrives would be overwritten by it.
    """
    shown = float(slider.get_attribute("value"))
    wait_for(lambda: abs(float(controller_value()) - shown) < 1e-9,
             what=f"the controller to have the control's last change ({shown})")


def test_the_page_works_only_with_the_token_which_stays_in_its_tab(browser: Any, panel: Panel) -> None:
    """Without the token the shell loads and says so; a wrong one is refused; the right one leaves the address bar
    for the tab's sessionStorage (no cookie: a cookie of 127.0.0.1 goes to every port), and a reload finds it."""
    browser.get(f"http://127.0.0.1:{panel.port}/")
    wait_for(lambda: "no token" in browser.find_element(By.ID, "conn").text, what="the page to say it has no token")
    browser.get(f"http://127.0.0.1:{panel.port}/?token=wrong")
    assert "no valid token" in browser.find_element(By.TAG_NAME, "body").text
    _open(browser, panel)
    assert browser.current_url == f"http://127.0.0.1:{panel.port}/"  # the token left the address bar
    assert browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.getItem('ensemble-panel-token')") == panel.token
    browser.refresh()
    wait_for(lambda: browser.find_element(By.ID, "conn").text == "live", 60, what="the reloaded page's WebSocket")


def test_a_page_load_costs_no_line_of_the_refused_requests_log(browser: Any, panel: Panel) -> None:
    """The browser asked for /favicon.ico at every load, without the token: refused, 403, one line of the refused
    requests' budget each time.  The page names its icon now, and the shell serves it: loads log no refusal."""
    log = panel.daemon.base / "state" / "daemon.log"
    offset = log.stat().st_size
    _open(browser, panel)
    for _ in range(3):
        browser.refresh()
        wait_for(lambda: browser.find_element(By.ID, "conn").text == "live", 60, what="the reloaded page's WebSocket")
    icon = browser.execute_script("return fetch('/favicon.ico')"  # as the browser asks for it: no token
                                  ".then(r => r.status + ' ' + r.headers.get('content-type'))")
    assert icon == "200 image/svg+xml", icon
    with open(log, "rb") as f:
        f.seek(offset)
        grown = f.read().decode(errors="replace")
    assert "event=panel-refused" not in grown, grown[-2000:]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Another local web server: records the headers of each request it gets."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(str(self.headers))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"another service")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on another port of 127.0.0.1, and the headers of the requests it got."""
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_another_local_web_server_never_gets_the_token(browser: Any, panel: Panel,
                                                       other_server: tuple[int, list[str]]) -> None:
    """Browsers send a cookie of 127.0.0.1 to every port of 127.0.0.1: with the token in a cookie, any web server
    on this machine received it with each visit.  A page that uploads, too, sends it to the panel only."""
    port, seen = other_server
    _open(browser, panel)
    browser.get(f"http://127.0.0.1:{port}/")
    wait_for(lambda: seen, what="the other server to get the visit")
    browser.execute_script(f"fetch('http://127.0.0.1:{port}/x', {{mode: 'no-cors', credentials: 'include'}})")
    wait_for(lambda: len(seen) >= 2, what="the other server to get the fetch")
    assert not any(panel.token in headers for headers in seen), seen


def test_clicking_a_key_sounds_a_voice(browser: Any, panel: Panel) -> None:
    _open(browser, panel)
    key = browser.find_element(By.CSS_SELECTOR, '[data-note="60"]')
    chain = ActionChains(browser).click_and_hold(key)
    chain.perform()
    try:
        wait_for(lambda: panel.daemon.actor("processor").stats["active_voices"] >= 1, what="a voice to sound")
        wait_for(lambda: int(browser.find_element(By.ID, "voices").text) >= 1, what="the page to show the voice")
        wait_for(lambda: panel.daemon.actor("processor").stats["output_peak"] > 0, what="the output level to rise")
        wait_for(lambda: "dBFS" in browser.find_element(By.ID, "level-db").text, what="the level meter to move")
    finally:
        ActionChains(browser).release(key).perform()
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("j")  # the computer keyboard plays too (j = A4 in the default octave)
    wait_for(lambda: panel.daemon.actor("processor").stats["peak_voices"] >= 1, what="a voice from the keyboard")


def test_a_value_set_while_a_control_is_held_shows_once_it_is_let_go(browser: Any, panel: Panel) -> None:
    """The page leaves a control alone while the user moves it and for a moment after (its own change echoes
    back meanwhile); a value set elsewhere in that moment shows once the control is let go, not at the next change."""
    loaded(panel, EXAMPLES / "download_panel.py")
    _open(browser, panel)
    slider = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, '[data-param="seconds"]'), what="the control")
    c = panel.daemon.client()
    slider.click()  # a click moves a range input too: a change of its own
    slider.send_keys(Keys.ARROW_RIGHT)  # input + change: the page holds the control for 400 ms
    _reached(slider, lambda: c.get_param("seconds"))
    c.set_param("seconds", 42)  # within the hold (on a machine not loaded): the page hears it while it holds
    wait_for(lambda: float(slider.get_attribute("value")) == 42.0, what="the control to show 42 once let go")


def test_a_control_and_the_cli_move_each_other(browser: Any, panel: Panel) -> None:
    loaded(panel, EXAMPLES / "download_panel.py")
    _open(browser, panel)
    slider = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, '[data-param="seconds"]'), what="the control")
    assert slider.get_attribute("type") == "range"
    start = float(slider.get_attribute("value"))
    slider.click()  # focus; arrow keys move a range input one step and fire input + change
    for _ in range(5):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert float(slider.get_attribute("value")) > start
    _reached(slider, lambda: float(panel.daemon.cli("param", "get", "seconds").stdout))  # `ensemble param get`
    browser.find_element(By.TAG_NAME, "h1").click()  # let go of the control
    panel.daemon.cli("param", "set", "seconds", "42")
    wait_for(lambda: float(slider.get_attribute("value")) == 42.0, what="the control to follow `param set`")


def test_the_download_example_button_progress_cancel_and_finish(browser: Any, panel: Panel) -> None:
    c = loaded(panel, EXAMPLES / "download_panel.py")
    c.set_param("seconds", 30.0)
    _open(browser, panel)
    button = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, 'button[data-ui="run"]'), what="the Run button")
    bar = browser.find_element(By.CSS_SELECTOR, '[data-ui="bar"]')
    assert button.text == "Run" and not bar.is_displayed()
    button.click()
    wait_for(lambda: bar.is_displayed() and float(bar.get_attribute("data-value")) > 0.02, what="the bar to advance")
    first = float(bar.get_attribute("data-value"))
    wait_for(lambda: float(bar.get_attribute("data-value")) > first, what="the bar to go on advancing")
    wait_for(lambda: browser.find_element(By.ID, "loading").is_displayed(), what="the loading bar in the header")
    assert "DownloadTest" in browser.find_element(By.ID, "loading-task").text
    assert button.text == "Cancel"
    _shot(browser, "instrument")
    button.click()  # the second click cancels
    result = browser.find_element(By.CSS_SELECTOR, '[data-ui="result"]')
    wait_for(lambda: result.is_displayed() and result.text == "Cancelled.", what="the finish callback's change")
    assert not bar.is_displayed() and button.text == "Run"
    wait_for(lambda: c.get_param("last_finish") == "True,True", what="the finish callback's parameter")
    c.set_param("seconds", 1.0)  # now let one finish
    wait_for(lambda: not result.is_displayed() or button.text == "Run", what="ready")
    button.click()
    wait_for(lambda: result.is_displayed() and result.text == "Download complete.", 60, what="the download to finish")
    wait_for(lambda: c.get_param("last_finish") == "True,False", what="finished, not cancelled")


def test_a_cli_job_appears_with_progress_and_is_cancelled_from_the_page(browser: Any, panel: Panel) -> None:
    out = panel.daemon.cli("submit", "examples.jobs:countdown", "600", "0.1").stdout
    job_id = int(re.search(r"(\d+)", out).group(1))  # type: ignore[union-attr]
    _open(browser, panel)
    _tab(browser, "jobs")
    row = f'tr[data-job="{job_id}"]'
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "running",
             what="the job in the list")
    wait_for(lambda: "s left" in browser.find_element(By.CSS_SELECTOR, row).text, what="its status message")
    wait_for(lambda: re.search(r"\b[1-9]\d*%", browser.find_element(By.CSS_SELECTOR, row).text), what="its progress")
    _shot(browser, "jobs")
    browser.find_element(By.CSS_SELECTOR, f"{row} button.cancel").click()
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "cancelled",
             what="the job cancelled from the page")
    assert panel.daemon.client().job(job_id).state == "cancelled"


def test_killing_the_panel_while_the_page_is_open(browser: Any, panel: Panel) -> None:
    d = panel.daemon
    c = d.client()
    _open(browser, panel)
    _tab(browser, "runtime")
    job = c.submit("examples.jobs:countdown", 8, 0.1)
    wait_for(lambda: job.state == "running", what="the job to run")
    before = kill_panel(d)
    wait_for(lambda: browser.find_element(By.ID, "conn").text != "live", what="the page to see the panel go")
    wait_for(lambda: browser.find_element(By.ID, "conn").text == "live", 60, what="the page to reconnect")
    assert d.actor("panel").pid != before.panel.pid
    assert before.others_untouched(d)
    assert job.result(60) == "done"
    wait_for(lambda: d.actor("processor").stats["blocks"] > before.blocks + 50, what="audio to go on")
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-actor="panel"]'), what="the actors table")
    _shot(browser, "runtime")


def test_a_key_held_across_an_octave_change_ends_its_own_note(browser: Any, panel: Panel) -> None:
    """Hold A (note 60), press Z (an octave down), let A go: the page sent the note off for 48, and 60 sounded on."""
    loaded(panel, EXAMPLES / "download_panel.py")
    _open(browser, panel)
    ActionChains(browser).key_down("a").pause(0.2).key_down("z").key_up("z").pause(0.2).key_up("a").perform()
    wait_for(lambda: panel.daemon.actor("processor").stats["peak_voices"] >= 1, what="the note to sound")
    wait_for(lambda: panel.daemon.actor("processor").stats["active_voices"] == 0, what="the note to end")
    assert browser.execute_script("return held.size") == 0
    assert "down" not in browser.find_element(By.CSS_SELECTOR, '[data-note="60"]').get_attribute("class")


PARAMS = '''
from controller.script import define_parameter
define_parameter("mode", "Mode", 2, kind="choice", choices=[1, 2, 4])
define_parameter("flag", "Flag", True, kind="choice", choices=[True, False])
define_parameter("free_int", "Free int", 3)
define_parameter("free_float", "Free float", 2.5)
define_parameter("wide", "Wide", 0.0, float("-inf"), float("inf"))
'''


def test_choices_empty_numbers_and_unbounded_numbers(browser: Any, panel: Panel, tmp_path: Path) -> None:
    """A choice that is no string is sent as itself (the page sent "4" for 4 and was refused); an emptied number
    field or one holding no number shows an error and keeps the value (it set 0); a number with an infinite
    bound is a number field (its slider ran 0..100)."""
    from selenium.webdriver.support.ui import Select

    script = tmp_path / "params.py"
    script.write_text(PARAMS)
    c = loaded(panel, script)
    _open(browser, panel)
    mode = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, '[data-param="mode"]'), what="the controls")
    Select(mode).select_by_visible_text("4")
    wait_for(lambda: c.get_param("mode") == 4, what="mode to be 4")
    assert type(c.get_param("mode")) is int
    Select(browser.find_element(By.CSS_SELECTOR, '[data-param="flag"]')).select_by_visible_text("false")
    wait_for(lambda: c.get_param("flag") is False, what="flag to be False")
    toast = browser.find_element(By.ID, "toast")
    for name, typed, kept in (("free_int", "", 3), ("free_float", "abc", 2.5)):
        field = browser.find_element(By.CSS_SELECTOR, f'[data-param="{name}"]')
        field.clear()
        field.send_keys(typed, Keys.TAB)
        wait_for(lambda: "not a number" in toast.get_attribute("textContent"), what=f"the error for {name}")
        wait_for(lambda: field.get_attribute("value") == str(kept), what=f"{name}'s field to show its value again")
        assert c.get_param(name) == kept
        browser.execute_script("document.querySelector('#toast').textContent = ''")
    wide = browser.find_element(By.CSS_SELECTOR, '[data-param="wide"]')
    assert wide.get_attribute("type") == "number"
    wide.clear()
    wide.send_keys("5000", Keys.TAB)
    wait_for(lambda: c.get_param("wide") == 5000.0, what="the unbounded number to take 5000")
