"""Headless Chromium for the page test: Debian's chromium and chromium-driver driven by Selenium.

Nothing is downloaded: the driver and the browser are the system's (``/usr/bin/chromedriver``,
``/usr/bin/chromium``), so Selenium Manager is never asked for one. The flags keep the browser off
the network (no component updates, sync, QUIC or background requests) and in a fresh profile.
``FRCNN_CHROMIUM`` / ``FRCNN_CHROMEDRIVER`` point at another browser and its driver.
"""

from __future__ import annotations

import os
from pathlib import Path

# Debian's paths; another machine's browser and matching driver via the environment.
CHROMIUM = Path(os.environ.get("FRCNN_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FRCNN_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")
MISSING = ("the browser test needs Debian's chromium and chromium-driver: "
           "apt-get update && apt-get install -y chromium chromium-driver")

# Installed before the page's own scripts run: records every box the page strokes on a canvas
# (a redraw starts with drawImage, which clears the record), so the test reads what was drawn,
# not what the page says it drew.
RECORDER = """
window.__strokes = [];
const proto = CanvasRenderingContext2D.prototype;
const drawImage = proto.drawImage, strokeRect = proto.strokeRect;
proto.drawImage = function (...args) { window.__strokes = []; return drawImage.apply(this, args); };
proto.strokeRect = function (x, y, w, h) {
  window.__strokes.push({x1: x, y1: y, x2: x + w, y2: y + h, colour: this.strokeStyle});
  return strokeRect.call(this, x, y, w, h);
};
"""


def chromium(profile: Path):
    """A Selenium driver of headless Chromium with a fresh profile in ``profile``."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER})
    return driver
