"""The real server in a real headless browser: every page shows its charts and no error box.

Needs Chromium and its driver from Debian's packages (``apt-get install -y chromium chromium-driver``)
and selenium; skipped, with the reason, when they are absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.app.conftest import DL20, MAIN

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1800")
# url path, title on the page, charts it must draw
PAGES = [
    ("", "Overview", 1),
    ("head-atlas", "Head atlas", 3),
    ("directions", "Attention directions", 2),
    ("ablations", "Ablations", 3),
    ("patching", "Activation patching", 3),
    ("spectra", "Query-key spectra", 4),
    ("pair-explorer", "Pair explorer", 2),
    ("sql", "SQL", 0),
    ("compare", "Compare runs", 4),
]
ERROR_BOX = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def _binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = _binary("chromium", "chromium-browser")
    chromedriver = _binary("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("Chromium or chromedriver not found (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield drv
    drv.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(store, driver, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = dict(os.environ, ATLAS_STORE=str(store))
    repo = Path(MAIN).parents[1]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(MAIN), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the Streamlit server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _load(driver, url: str, title: str, charts: int, timeout: float = 60.0) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)

    def ready(d):
        h1 = [e.text for e in d.find_elements(By.CSS_SELECTOR, "h1")]
        if not any(t.startswith(title) for t in h1):
            return False
        drawn = [e for e in d.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg.marks")
                 if e.size["width"] > 0 and e.size["height"] > 0]
        running = d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        return len(drawn) >= charts and not running

    WebDriverWait(driver, timeout, poll_frequency=0.25).until(ready)
    time.sleep(0.5)  # let a last rerun settle before looking for error boxes


@pytest.mark.parametrize("path, title, charts", PAGES, ids=[p[1] for p in PAGES])
def test_page_shows_charts_and_no_error(driver, server, path, title, charts):
    from selenium.webdriver.common.by import By

    _load(driver, f"{server}/{path}?run={DL20}", title, charts)
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ERROR_BOX)]
    assert not errors, errors
    if path == "sql":
        assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')


def test_error_boxes_are_detected(driver, server):
    """Positive control for the selector above: a refused SQL statement shows an error box."""
    from selenium.webdriver.common.by import By

    query = urllib.parse.quote("COPY pairs TO '/tmp/atlas-browser-leak.csv'")
    _load(driver, f"{server}/sql?run={DL20}&sql_q={query}", "SQL", 0)
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ERROR_BOX)]
    assert errors and "COPY statements are not allowed" in errors[0]
    assert not Path("/tmp/atlas-browser-leak.csv").exists()


def test_shared_link_restores_the_view(driver, server):
    from selenium.webdriver.common.by import By

    _load(driver, f"{server}/head-atlas?run={DL20}&atlas_metric=q2d_max&atlas_view=relevant_vs_hard&layers=1-2",
          "Head atlas", 3)
    page = driver.find_element(By.CSS_SELECTOR, "section.stMain, [data-testid='stMain']").text
    assert "Query->Document max weight per head: relevant minus hard negatives" in page
    assert "atlas_metric=q2d_max" in driver.current_url


def test_clicking_a_cell_opens_that_head(driver, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _load(driver, f"{server}/head-atlas?run={DL20}", "Head atlas", 3)
    cells = driver.find_elements(By.CSS_SELECTOR, ".vega-embed svg g.mark-rect path[aria-label^='Head: 3; Layer: 2;']")
    assert cells, "no heatmap cell for layer 2, head 3"
    ActionChains(driver).move_to_element(cells[0]).click().perform()
    WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: "atlas_head=2.3" in d.current_url)
    # the head's own charts follow the click
    WebDriverWait(driver, 30, poll_frequency=0.25).until(
        lambda d: any("Head 2.3:" in (e.get_attribute("textContent") or "")
                      for e in d.find_elements(By.CSS_SELECTOR, ".vega-embed")))


def test_clicks_on_the_patching_page_open_their_pairs(driver, server):
    """A click on a head of the patching heatmap, then on a point of the component curves, lists that target's
    pairs (and puts it in the URL)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def main_text(d) -> str:
        return d.find_element(By.CSS_SELECTOR, "section.stMain, [data-testid='stMain']").text

    _load(driver, f"{server}/patching?run={DL20}", "Activation patching", 3)
    cells = driver.find_elements(By.CSS_SELECTOR, ".vega-embed svg g.mark-rect path[aria-label^='Head: 0; Layer: 1;']")
    assert cells, "no patching heatmap cell for layer 1, head 0"
    ActionChains(driver).move_to_element(cells[0]).click().perform()
    WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: "pat_head=1.0" in d.current_url)
    WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: "Mean effect, head 1.0" in main_text(d))

    points = [e for e in driver.find_elements(By.CSS_SELECTOR, ".vega-embed svg g.mark-symbol path[aria-label]")
              if "component: mlp" in (e.get_attribute("aria-label") or "")
              and "Layer: 2" in (e.get_attribute("aria-label") or "")]
    assert points, "no point of the mlp curve at layer 2"
    ActionChains(driver).move_to_element(points[0]).click().perform()
    WebDriverWait(driver, 30, poll_frequency=0.25).until(
        lambda d: "pat_target=component" in d.current_url and "pat_comp=2.mlp." in d.current_url)
    WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: "Mean effect, layer 2 · mlp ·" in main_text(d))
