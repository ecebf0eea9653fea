"""End to end in a real headless browser (Debian's chromium driven by Selenium through Debian's chromedriver):
open a rater link, rate with the mouse and with the keyboard, go back and change answers, reload, kill and
restart the server, and check that nothing was lost and that the export matches what was clicked.

Set OPHORA_REVIEW_SCREENSHOT=docs/review_rater.png to write the rater-page screenshot committed in docs/.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from review_helpers import Server, make_real, make_samples

from ophora.review.config import AddRaterConfig, CreateConfig, ExportConfig
from ophora.review.export import export
from ophora.review.study import add_rater, create_study

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser(user_data: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} not found: install Debian's {package} (apt-get install -y chromium chromium-driver; "
                        ".ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1366,768", f"--user-data-dir={user_data}"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # a browser that cannot start here is a skip with its reason, not a failure
        pytest.skip(f"headless chromium did not start: {type(exc).__name__}: {str(exc).splitlines()[0]}")


@pytest.fixture
def browser(tmp_path):
    user_data = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    driver = _browser(user_data)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_rate_in_a_real_browser(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    folder = tmp_path / "study"
    create_study(CreateConfig(study=folder, generated=make_samples(tmp_path / "g", per_phase=2, size=96),
                              real=make_real(tmp_path / "r", 2), seed=3))
    token = add_rater(AddRaterConfig(study=folder, name="dr_a")).token
    server = Server(folder).start()
    wait = WebDriverWait(browser, 20)

    def press(*sequence):
        for key in sequence:
            ActionChains(browser).send_keys(key).perform()

    def saved():
        wait.until(lambda d: d.find_element(By.ID, "save-state").text == "All answers saved")

    def shown() -> tuple[str, dict[str, int]]:
        """The video on screen and the scores its buttons show."""
        wait.until(lambda d: d.find_element(By.ID, "video").get_attribute("src"))
        video = browser.find_element(By.ID, "video").get_attribute("src").rsplit("/", 1)[1]
        scores = {}
        for li in browser.find_elements(By.CSS_SELECTOR, "#criteria .criterion"):
            chosen = li.find_elements(By.CSS_SELECTOR, "button.score.selected")
            if chosen:
                scores[li.get_attribute("data-key")] = int(chosen[0].text)
        return video, scores

    def click_score(key: str, score: int):
        button = browser.find_element(By.CSS_SELECTOR, f'#criteria li[data-key="{key}"] button[data-score="{score}"]')
        ActionChains(browser).move_to_element(button).click().perform()

    try:
        browser.get(f"{server.url}/#t={token}")
        wait.until(lambda d: d.find_element(By.ID, "app").is_displayed())
        assert token not in browser.current_url  # the token leaves the address bar at once
        wait.until(lambda d: d.execute_script("const v = document.getElementById('video'); "
                                              "return v.readyState >= 2 && v.videoWidth > 0"))
        keys_ = [li.get_attribute("data-key") for li in browser.find_elements(By.CSS_SELECTOR, "#criteria .criterion")]
        assert len(keys_) == 7
        expected: dict[str, dict[str, int]] = {}

        # video 1: the mouse, and a comment
        v1, _ = shown()
        for i, key in enumerate(keys_):
            click_score(key, 1 + (i + 2) % 5)
        expected[v1] = {key: 1 + (i + 2) % 5 for i, key in enumerate(keys_)}
        comment = browser.find_element(By.ID, "comment")
        ActionChains(browser).move_to_element(comment).click().perform()
        comment.send_keys("Instrument tip flickers.")
        press(Keys.ESCAPE)
        saved()
        assert browser.find_element(By.ID, "done").text.startswith("1 of 8")

        # video 2: the keyboard only (Enter moves on; each number rates the highlighted criterion and moves down)
        press(Keys.ENTER)
        v2, scores = shown()
        assert v2 != v1 and scores == {}
        press("3", "4", "5", "1", "2", "3", "4")
        expected[v2] = dict(zip(keys_, (3, 4, 5, 1, 2, 3, 4)))
        # video 3: arrows: two scores, skip one criterion, one more
        press(Keys.ARROW_RIGHT)
        v3, _ = shown()
        press("5", "5", Keys.ARROW_DOWN, "2")
        expected[v3] = {keys_[0]: 5, keys_[1]: 5, keys_[3]: 2}
        saved()
        assert shown() == (v3, expected[v3])

        # back to video 1 and change two answers: one by mouse, one by keyboard
        press(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
        assert shown() == (v1, expected[v1])
        click_score(keys_[4], 1)
        expected[v1][keys_[4]] = 1
        press(Keys.ARROW_UP, Keys.ARROW_UP, "5")  # from criterion 6 (after the click) up to 4
        expected[v1][keys_[3]] = 5
        saved()
        assert shown() == (v1, expected[v1])

        screenshot = tmp_path / "rater.png"
        browser.save_screenshot(str(screenshot))
        browser.set_window_size(820, 1180)  # a tablet in portrait: the video above the criteria
        browser.save_screenshot(str(tmp_path / "rater_tablet.png"))
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.set_window_size(1366, 768)
        if os.environ.get("OPHORA_REVIEW_SCREENSHOT"):
            target = Path(os.environ["OPHORA_REVIEW_SCREENSHOT"])
            shutil.copy(screenshot, target)
            shutil.copy(tmp_path / "rater_tablet.png", target.with_name(target.stem + "_tablet.png"))

        def check_all():
            for n, video in ((1, v1), (2, v2), (3, v3)):
                browser.get("about:blank")  # a fresh load each time (a changed #fragment alone would not reload)
                browser.get(f"{server.url}/#{n}")
                wait.until(lambda d: d.find_element(By.ID, "app").is_displayed())
                assert shown() == (video, expected[video])
            assert browser.find_element(By.ID, "comment").get_attribute("value") == ""
            browser.get("about:blank")
            browser.get(f"{server.url}/#1")
            wait.until(lambda d: d.find_element(By.ID, "app").is_displayed())
            assert browser.find_element(By.ID, "comment").get_attribute("value") == "Instrument tip flickers."

        browser.refresh()  # a reload keeps the position and every answer
        wait.until(lambda d: d.find_element(By.ID, "app").is_displayed())
        assert shown() == (v1, expected[v1])
        check_all()

        server.stop(kill=True)  # a crash: SIGKILL, no shutdown of any kind
        server.start()
        check_all()
        # still signed in after the restart (the cookie), and still saving
        press(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        assert shown()[0] == v3
        press("1")  # the first criterion not yet rated is highlighted
        expected[v3][keys_[2]] = 1
        saved()
        assert browser.find_element(By.ID, "done").text.startswith("2 of 8")
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        server.stop()

    export(ExportConfig(study=folder, out=tmp_path / "export", bootstrap=50))
    rows = list(csv.DictReader(open(tmp_path / "export" / "answers.csv")))
    assert {(r["video"], r["criterion"]): int(r["score"]) for r in rows} == {
        (video, key): score for video, scores in expected.items() for key, score in scores.items()}
    assert {r["rater"] for r in rows} == {"dr_a"}
    comments = list(csv.DictReader(open(tmp_path / "export" / "comments.csv")))
    assert [(c["video"], c["comment"]) for c in comments] == [(v1, "Instrument tip flickers.")]
