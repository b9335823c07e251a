"""The page in a real headless Chromium: upload a real photo, wait for the boxes, compare the boxes
drawn on the canvas with the API's JSON for that photo, then move the score slider with the keyboard
and see the drawn boxes fall to those at or above the threshold, without asking the model again."""

from __future__ import annotations

import json
import urllib.request
from http.client import HTTPConnection

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from frcnn.serving import ServeSettings, create_app
from tests.serving.browser import MISSING, chromium
from tests.serving.live import LiveServer
from tests.shared_data import RACCOON

PHOTO = RACCOON / "JPEGImages" / "raccoon-1.jpg"  # a real photo
pytestmark = pytest.mark.shared_data


def api_json(port: int, data: bytes) -> dict:
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/api/predict", body=data, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def predict_requests(driver) -> int:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/predict')).length")


def drawn(driver) -> list[dict]:
    return driver.execute_script("return window.__strokes")


def assert_drawn_equals(strokes: list[dict], detections: list[dict], colours: dict[str, str]) -> None:
    assert len(strokes) == len(detections)
    for stroke, det in zip(strokes, detections):  # drawn in the JSON's order (by score)
        assert [stroke["x1"], stroke["y1"], stroke["x2"], stroke["y2"]] == pytest.approx(det["box"], abs=1e-6)
        assert stroke["colour"] == colours[det["class_name"]]


@pytest.fixture()
def browser(tmp_path):
    try:
        driver = chromium(tmp_path / "profile")
    except RuntimeError as error:
        pytest.fail(str(error) if str(error) == MISSING else f"{MISSING} ({error})")
    yield driver
    driver.quit()


def test_page_draws_the_api_boxes_and_filters_them_in_the_browser(detector, browser, tmp_path):
    assert PHOTO.is_file(), f"the real photo {PHOTO} (../shared beside the checkout)"
    app = create_app(detector, ServeSettings(max_batch_size=4, max_wait_ms=5.0))
    with LiveServer(app) as server:
        expected = api_json(server.port, PHOTO.read_bytes())
        info = json.loads(urllib.request.urlopen(f"{server.url}/api/info", timeout=30).read())
        scores = [d["score"] for d in expected["detections"]]
        assert len(scores) >= 10, "the tiny model keeps enough boxes on the photo for the test to mean something"

        browser.get(server.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classes input")) == len(info["class_names"]))
        browser.find_element(By.ID, "file").send_keys(str(PHOTO))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")

        slider = browser.find_element(By.ID, "score")
        slider.send_keys(Keys.HOME)  # threshold 0: every box the API sent
        wait.until(lambda d: len(drawn(d)) == len(scores))
        page_json = json.loads(browser.find_element(By.ID, "json").text)
        assert page_json["detections"] == expected["detections"] and page_json["image"] == expected["image"]
        assert_drawn_equals(drawn(browser), expected["detections"], info["colours"])
        canvas = browser.find_element(By.ID, "canvas")
        assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == \
            (expected["image"]["width"], expected["image"]["height"])

        median = sorted(scores)[len(scores) // 2]
        steps = int(median * 100)  # the slider moves in steps of 0.01
        for _ in range(steps):
            slider.send_keys(Keys.ARROW_RIGHT)
        threshold = float(slider.get_attribute("value"))
        assert threshold == pytest.approx(steps / 100)
        above = [d for d in expected["detections"] if d["score"] >= threshold]
        assert 0 < len(above) < len(scores)
        wait.until(lambda d: len(drawn(d)) == len(above))
        assert_drawn_equals(drawn(browser), above, info["colours"])
        assert browser.find_element(By.ID, "shown").text == str(len(above))
        assert predict_requests(browser) == 1  # filtering never called the model again

        hidden_class = above[0]["class_name"]
        browser.find_element(By.CSS_SELECTOR, f'#classes input[data-class="{hidden_class}"]').click()
        kept = [d for d in above if d["class_name"] != hidden_class]
        wait.until(lambda d: len(drawn(d)) == len(kept))
        assert_drawn_equals(drawn(browser), kept, info["colours"])
        assert "ms" in browser.find_element(By.ID, "inference").text
        assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
        assert browser.save_screenshot(str(tmp_path / "page.png"))
        print(f"screenshot: {tmp_path / 'page.png'}")
