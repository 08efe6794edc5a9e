"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): sign in by typing a token, walk the pages of a seeded fleet served by uvicorn
on loopback - its devices, a halted rollout with its gate numbers, the telemetry page with
its latency plots - write screenshots and check they are not blank, and see that the CSP
let the stylesheet apply and blocked nothing of ours."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.dashboard.conftest import DEVICES, HOSTILE_NAME, SeededFleet, send_telemetry
from tests.live_server import serving
from tests.requirements import require, require_module

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOW = "apt-get install -y chromium chromium-driver (make setup does it as root)"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    require(CHROMIUM.exists(), "Debian's chromium at /usr/bin/chromium", HOW)
    require(CHROMEDRIVER.exists(), "Debian's chromedriver at /usr/bin/chromedriver", HOW)
    webdriver = require_module("selenium.webdriver", "selenium", "pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(5)  # elements of the page a click just opened
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def screenshot_is_not_blank(driver: Any, path: Path) -> None:
    """Write a screenshot (also into ``$OUTPOST_DASHBOARD_SCREENSHOTS`` when set: how the
    docs' pictures are made) and check it shows something."""
    import cv2

    driver.save_screenshot(str(path))
    keep = os.environ.get("OUTPOST_DASHBOARD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / f"dashboard-{path.name}")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, path
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    assert gray.var() > 100, f"{path} looks blank (pixel variance {gray.var():.1f})"
    assert len(np.unique(gray)) > 16, f"{path} has almost no distinct shades"


def test_an_operator_signs_in_and_reads_the_fleet_in_chromium(
    browser: Any, seeded_sqlite: SeededFleet, tmp_path: Path
) -> None:
    seeded = seeded_sqlite
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(browser, 15)

    send_telemetry(seeded)
    token = seeded.cp.auth("viewer")["Authorization"].removeprefix("Bearer ")
    with serving(seeded.cp.app) as base:
        browser.get(f"{base}/dashboard")
        assert browser.current_url == f"{base}/dashboard/login", "a stranger is sent to sign in"
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "sign-in").click()
        wait.until(expected.url_to_be(f"{base}/dashboard"))
        assert browser.find_element(By.ID, "devices-total").text == str(DEVICES)
        rows = browser.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
        assert len(rows) == DEVICES
        names = [r.find_element(By.CSS_SELECTOR, ".name").text for r in rows]
        assert HOSTILE_NAME in names, "the hostile name shows as text, not as markup"
        assert browser.execute_script("return window.__pwned === undefined") is True
        header = browser.find_element(By.TAG_NAME, "header")
        assert header.value_of_css_property("background-color") == "rgba(29, 35, 48, 1)", (
            "the stylesheet applied under the CSP"
        )
        screenshot_is_not_blank(browser, tmp_path / "fleet.png")

        browser.find_element(By.LINK_TEXT, "Rollouts").click()
        browser.find_element(By.LINK_TEXT, seeded.halted_rollout).click()
        assert browser.find_element(By.ID, "rollout-state").text == "halted"
        halted_row = browser.find_element(By.CSS_SELECTOR, "#stages tr.halted")
        assert "(halted)" in halted_row.text
        gates = browser.find_elements(By.CSS_SELECTOR, "table.gates tr.depth-1")
        assert any("failure_rate" in g.text and "max_rate" in g.text for g in gates)
        screenshot_is_not_blank(browser, tmp_path / "rollout.png")

        browser.find_element(By.LINK_TEXT, "Releases").click()
        assert "kiosk-assistant@1.0.0" in browser.find_element(By.ID, "distribution").text
        browser.find_element(By.LINK_TEXT, "Telemetry").click()
        plots = browser.find_elements(By.CSS_SELECTOR, "figure.plot svg")
        assert len(plots) == 4, "TTFT, time per token, vision, RAG"
        for plot in plots:
            assert plot.size["width"] > 300 and plot.size["height"] > 150, plot.size
        lines = browser.find_elements(By.CSS_SELECTOR, "#plot-chat_ttft polyline.p95")
        assert [line.value_of_css_property("fill") for line in lines] == ["none", "none"]
        assert browser.find_element(By.ID, "privacy-budget").is_displayed()
        screenshot_is_not_blank(browser, tmp_path / "telemetry.png")

        browser.find_element(By.CSS_SELECTOR, ".signout button").click()
        wait.until(expected.url_to_be(f"{base}/dashboard/login"))
        browser.get(f"{base}/dashboard")
        assert browser.current_url == f"{base}/dashboard/login", "signed out for good"
        problems = [
            entry["message"]
            for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon" not in entry["message"]
        ]
        assert not problems, problems
