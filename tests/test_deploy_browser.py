"""The demo page end to end in headless Chromium: draw, ask for endings, see SVG paths appear.

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver) and the
`selenium` package; skips with the reason when one is missing. Selenium is pointed at
/usr/bin/chromedriver, so Selenium Manager never downloads anything.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from deploy_fixtures import shared_export_dir, shared_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[test])")

from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="sketch-rnn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    server = shared_server(shared_export_dir(tmp_path_factory))
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return browser


def draw(driver, points):
    """Drags the mouse over the canvas through `points` (offsets from its centre, in CSS pixels)."""
    pad = driver.find_element(By.ID, "pad")
    actions = ActionChains(driver, duration=10)
    actions.move_to_element_with_offset(pad, *points[0]).click_and_hold()
    for x, y in points[1:]:
        actions.move_to_element_with_offset(pad, x, y)
    actions.release().perform()


def wait_done(driver, box_id, timeout=60):
    def state(d):
        s = d.find_element(By.ID, box_id).get_attribute("data-state")
        return s if s in ("done", "error") else None
    result = WebDriverWait(driver, timeout).until(state)
    assert result == "done", driver.find_element(By.ID, "status").text
    return driver.find_element(By.ID, box_id)


def set_auto_finish(driver, on):
    box = driver.find_element(By.ID, "auto-finish")
    if box.is_selected() != on:
        box.click()


def test_draw_then_finish_shows_candidate_svg_paths(page):
    set_auto_finish(page, False)
    page.find_element(By.ID, "clear").click()
    draw(page, [(-100, -80), (-40, -90), (20, -60), (60, 0), (40, 70), (-30, 90)])
    draw(page, [(-50, 0), (10, 10)])
    assert page.execute_script("return window.sketchRnn.state.strokes.length") == 2
    page.find_element(By.ID, "count").clear()
    page.find_element(By.ID, "count").send_keys("3")
    page.find_element(By.ID, "complete").click()
    box = wait_done(page, "candidates")
    svgs = box.find_elements(By.TAG_NAME, "svg")
    assert len(svgs) == 3
    for svg in svgs:
        # The user's strokes come back first (grey prefix paths), drawn as inline SVG paths.
        prefix = svg.find_elements(By.CSS_SELECTOR, "path.prefix")
        assert len(prefix) == 2
        assert all(p.get_attribute("d").startswith("M") for p in svg.find_elements(By.TAG_NAME, "path"))


def test_sample_and_interpolate(page):
    page.find_element(By.ID, "sample").click()
    assert len(wait_done(page, "samples").find_elements(By.TAG_NAME, "svg")) == 3
    page.find_element(By.ID, "keep-a").click()
    page.find_element(By.ID, "clear").click()
    draw(page, [(-80, 80), (0, -90), (80, 80)])
    page.find_element(By.ID, "keep-b").click()
    assert len(page.find_element(By.ID, "kept").find_elements(By.TAG_NAME, "svg")) == 2
    page.find_element(By.ID, "steps").clear()
    page.find_element(By.ID, "steps").send_keys("4")
    page.find_element(By.ID, "interpolate").click()
    frames = wait_done(page, "interpolation").find_elements(By.TAG_NAME, "figure")
    assert [f.text for f in frames] == ["t=0.00", "t=0.33", "t=0.67", "t=1.00"]


def test_drawing_to_stroke3_in_js(page):
    rows = page.execute_script(
        "return window.sketchRnn.toStroke3([[[10, 10], [60, 10], [110, 10]], [[110, 60]]], 64)")
    # Aligned to the top-left, scaled to 255, collinear point dropped by RDP, dot doubled.
    assert rows == [[0, 0, 0], [255, 0, 1], [0, 128, 0], [0, 0, 1]]
    # A model trained on re-simplified data (--resimplify-epsilon, /config.json): RDP again.
    arc = "[[[0, 0], [100, 3], [200, 0]]]"
    assert len(page.execute_script(f"return window.sketchRnn.toStroke3({arc}, 64)")) == 3
    assert page.execute_script(f"return window.sketchRnn.toStroke3({arc}, 64, 5)") == [[0, 0, 0], [255, 0, 1]]
    z = page.execute_script("return window.sketchRnn.slerp([1, 0], [0, 1], 0.5)")
    assert abs(z[0] - 0.5 ** 0.5) < 1e-9 and abs(z[1] - 0.5 ** 0.5) < 1e-9


def test_lifting_the_pen_asks_for_endings_and_they_are_animated(page):
    set_auto_finish(page, True)
    page.find_element(By.ID, "clear").click()
    page.execute_script("window.sketchRnn.requested.length = 0; window.sketchRnn.state.animationMs = 60000;"
                        "document.getElementById('candidates').dataset.state = 'empty';")
    draw(page, [(-60, -60), (60, -60), (60, 60)])  # no click: the pen lift alone asks the model
    box = wait_done(page, "candidates")
    assert page.execute_script("return window.sketchRnn.requested") == ["/v1/models/sketch_rnn:predict"]
    # Each ending is drawn at the pen's pace: one dash-offset animation per generated path, in
    # order (the untrained model's endings are often single dots: animate a known one).
    page.execute_script("window.sketchRnn.show('samples', {strokes: [[[0, 0, 0], [30, 0, 1], [0, 20, 0],"
                        " [10, 10, 1]]], lengths: [4]}, 0)")
    timing = page.execute_script(
        "return [...document.querySelectorAll('#samples path.ending')].map(p => p.getAnimations()"
        ".map(a => [a.effect.getTiming().delay, a.effect.getTiming().duration]))")
    assert [len(t) for t in timing] == [1, 1]
    (d0, t0), (d1, t1) = timing[0][0], timing[1][0]
    assert d0 == 0 and abs(d1 - t0) < 1e-6 and abs(t0 + t1 - 60000) < 1e-6 and t0 > t1  # 30 px, then 14 px
    count = int(page.find_element(By.ID, "count").get_attribute("value"))
    assert len(box.find_elements(By.TAG_NAME, "svg")) == count
    page.execute_script("window.sketchRnn.state.animationMs = 1500;")
    set_auto_finish(page, False)


def test_the_model_picker_sends_requests_to_the_chosen_model(browser, tmp_path_factory):
    from deploy.server import ModelSet, ModelSlot, Server, create_app
    from selenium.webdriver.support.ui import Select

    export = shared_export_dir(tmp_path_factory)
    models = ModelSet([ModelSlot("pig", export, log=lambda m: None), ModelSlot("face", export, log=lambda m: None)])
    server = Server(create_app(models), "127.0.0.1", 0).start()
    try:
        browser.get(server.url + "/")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        picker = Select(browser.find_element(By.ID, "model"))
        assert [o.text for o in picker.options] == ["pig", "face"]
        assert picker.first_selected_option.text == "pig"
        picker.select_by_visible_text("face")
        browser.find_element(By.ID, "sample").click()
        wait_done(browser, "samples")
        assert browser.execute_script("return window.sketchRnn.requested") == ["/v1/models/face:predict"]
        browser.get(server.url + "/?model=face")  # a link to one model
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert Select(browser.find_element(By.ID, "model")).first_selected_option.text == "face"
    finally:
        server.stop()
