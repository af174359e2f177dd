"""The web page in a real headless browser (Debian's chromium through chromedriver, with selenium).

It logs in through the URL fragment, uploads a text-to-video workflow, edits a parameter in the generated form,
queues it, watches per-node progress arrive from the event stream, and checks that the finished job's video
element loads (decoded frames of the right size) and its contact sheet shows. Without chromium or chromedriver the
test fails: CI installs both (``.ci/run``). ``REELGRAPH_SCREENSHOT=FILE`` saves a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import TOKEN, LiveServer, wait_for
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def video_workflow() -> dict[str, Any]:
    """workflows/text2video.json on builtin:tiny with few steps, plus a contact sheet of the clip."""
    wf = json.loads((ROOT / "workflows" / "text2video.json").read_text(encoding="utf-8"))
    wf["params"]["steps"]["default"] = 4
    wf["nodes"]["sheet"] = {"type": "contact_sheet", "inputs": {"video": {"from": "decode.video"},
                                                                "path": "contact_sheet.png"}}
    return wf


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver (.ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_submit_watch_and_play_in_a_real_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server = LiveServer(tmp_path / "state", "--log-level", "info",  # access log on: the token must not be in it
                        env={"REELGRAPH_HOME": str(tmp_path / "home")}).start()
    try:
        workflow = tmp_path / "video.json"
        workflow.write_text(json.dumps(video_workflow()), encoding="utf-8")
        browser.get(f"{server.url}/#token={TOKEN}")
        wait_for(lambda: browser.find_element(By.ID, "app").is_displayed(), 20, what="the page to log in")
        assert TOKEN not in browser.current_url, "the token must leave the address bar"

        browser.find_element(By.ID, "workflow-file").send_keys(str(workflow))
        prompt = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#params input[name=prompt]"), 10,
                          what="the params form")[0]
        assert prompt.get_attribute("value") == "a red circle moving left"
        assert browser.find_element(By.CSS_SELECTOR, "#params input[name=steps]").get_attribute("value") == "4"
        prompt.clear()
        prompt.send_keys("a blue square moving up")
        browser.find_element(By.ID, "submit").click()

        card = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs .job"), 20, what="the job card")[0]
        job_id = card.get_attribute("data-job-id")
        live_rows: set[str] = set()

        def finished() -> bool:
            status = card.get_attribute("data-status")
            assert status not in ("failed", "cancelled"), card.text
            if status == "running":  # rows drawn while running come from the event stream alone
                live_rows.update(e.get_attribute("data-node")
                                 for e in card.find_elements(By.CSS_SELECTOR, ".nodes [data-node]"))
            return status == "finished"

        wait_for(finished, 180, every=0.1, what="the job to finish in the page")
        assert "model" in live_rows, "no live progress reached the page while the job ran"
        bars = {e.get_attribute("data-node"): e for e in card.find_elements(By.CSS_SELECTOR, ".nodes [data-node]")}
        assert {"model", "text", "sample", "decode", "save", "sheet"} <= set(bars)
        states = {b.get_attribute("data-state") for b in card.find_elements(By.CSS_SELECTOR, ".nodes .bar")}
        assert states <= {"done", "cached"}, states

        video = wait_for(lambda: card.find_elements(By.CSS_SELECTOR, "video[data-file='text2video.mp4']"), 20,
                         what="the video element")[0]
        loaded = wait_for(lambda: browser.execute_script(
            "const v = arguments[0]; return v.readyState >= 2 && v.videoWidth > 0 ? [v.videoWidth, v.videoHeight,"
            " v.duration, v.error] : null;", video), 20, what="the video to load")
        assert loaded[:2] == [32, 32] and loaded[2] > 0 and loaded[3] is None
        assert video.get_attribute("src").startswith("blob:"), "media is fetched with the token, not by URL"
        sheet = card.find_element(By.CSS_SELECTOR, "img[data-file='contact_sheet.png']")
        wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth > 0", sheet), 10,
                 what="the contact sheet")
        time.sleep(0.5)  # let the video play a few frames for the screenshot
        if os.environ.get("REELGRAPH_SCREENSHOT"):
            browser.save_screenshot(os.environ["REELGRAPH_SCREENSHOT"])

        with server.client() as client:
            job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "finished" and job["params"]["prompt"] == "a blue square moving up"
        assert job["files"] == ["contact_sheet.png", "text2video.mp4"]
        assert TOKEN not in server.log.read_text(), "the token never appears in the server's log"
    finally:
        server.stop()
