"""The rating app in a real browser (Debian's chromium + chromedriver, driven by Selenium, headless).

Two annotators sign in with their tokens and vote on the tiny model's trajectories (from `humaneval generate`,
the session fixture) with the keyboard only; the server is SIGKILLed mid-session and restarted; both carry on
from the page they had open. Then: the report counts exactly the votes cast, one annotator's browser cannot read
or overwrite the other's vote, and a screenshot of the rating page is kept in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, require
from humaneval.live_server import kill_server, start_server
from north_lightning.humaneval import db

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture()
def browser_factory():
    require(Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(),
            "chromium / chromium-driver are not installed (run `bash scripts/ensure_browser.sh`)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def make():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500",
                    "--disable-gpu"):
            options.add_argument(arg)
        drivers.append(webdriver.Chrome(service=Service(CHROMEDRIVER), options=options))
        return drivers[-1]

    yield make
    for driver in drivers:
        driver.quit()


def keys_for(k: int) -> tuple[str, tuple[int, int, int]]:
    """The keystrokes of the k-th vote and the (rating_left, rating_right, preference) they mean."""
    left, right, pref = 1 + k % 5, 1 + (k + 2) % 5, 1 + (2 * k + 1) % 5
    return str(left) + "67890"[right - 1] + "asdfg"[pref - 1], (left, right, pref)


def vote_with_keyboard(driver, k: int, n: int):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    keys, meaning = keys_for(k)
    before = driver.current_url
    assert before.split("?")[0].endswith(f"/items/{n}")
    ActionChains(driver).send_keys(keys).perform()
    checked = driver.execute_script("return ['rating_left', 'rating_right', 'preference'].map("
                                    "n => document.querySelector(`input[name=${n}]:checked`)?.value)")
    assert tuple(int(v) for v in checked) == meaning
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    # the next page (the next item, or "all done" after the last) comes only after the vote was committed
    WebDriverWait(driver, 30).until(lambda d: d.current_url != before)
    return meaning


def sign_in(driver, base: str, token: str):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/login")
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("id", "signin").click()
    WebDriverWait(driver, 30).until(lambda d: "/items/" in d.current_url)


def fetch_status(driver, method: str, path: str, body: dict | None = None) -> int:
    """An HTTP request from inside the page (the annotator's cookie goes with it): its status code."""
    return driver.execute_async_script(
        "const [method, path, body, done] = arguments;"
        "fetch(path, {method, headers: {'content-type': 'application/json'}, credentials: 'same-origin',"
        " body: body ? JSON.stringify(body) : undefined}).then(r => done(r.status), e => done(-1));",
        method, path, body)


def test_two_annotators_vote_by_keyboard_through_a_server_kill(generated, browser_factory, tmp_path):
    out, _ = generated
    path = tmp_path / "he.db"
    shutil.copy(out / "humaneval.db", path)
    conn = db.connect(path)
    tokens = {name: db.add_annotator(conn, name) for name in ("alice", "bob")}
    admin = db.add_annotator(conn, "lead", admin=True)
    ids = {name: db.annotator_id_by_name(conn, name) for name in tokens}
    order = {name: db.item_order(conn, ids[name]) for name in tokens}
    total = len(order["alice"])
    assert total == 4
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = start_server(path, port, log)
    cast: dict[tuple[str, str], tuple[int, int, int]] = {}
    try:
        browsers = {name: browser_factory() for name in tokens}
        for name, driver in browsers.items():
            sign_in(driver, base, tokens[name])
            assert driver.current_url.endswith("/items/1")
        # rubric, prompt, both responses' trajectories and the diff / test views are on the page
        page = browsers["alice"]
        assert page.find_element("id", "rubric").text and page.find_element("id", "prompt").text
        assert len(page.find_elements("css selector", "details.turn")) >= 2
        assert "sys-" not in page.page_source  # blind
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(page).send_keys("t").perform()  # expand every turn for the screenshot
        assert all(d.get_attribute("open") for d in page.find_elements("css selector", "details.turn"))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "humaneval_rating_page.png"
        assert page.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
        shutil.copy(shot, tmp_path / shot.name)

        for k in range(2):  # two votes each, interleaved
            for name, driver in browsers.items():
                cast[(name, order[name][k])] = vote_with_keyboard(driver, k, k + 1)
        kill_server(server)  # SIGKILL mid-session: both browsers sit on their item 3
        server = start_server(path, port, log)
        for k in range(2, total):  # they carry on from the page they had open
            for name, driver in browsers.items():
                cast[(name, order[name][k])] = vote_with_keyboard(driver, k, k + 1)
        for driver in browsers.values():
            assert driver.find_element("id", "title").text == "All done"

        # bob's browser cannot read or overwrite alice's vote; alice's own requests work
        target = order["alice"][0]
        assert fetch_status(browsers["bob"], "GET", f"/votes/alice/{target}") == 403
        assert fetch_status(browsers["bob"], "GET", "/votes/alice") == 403
        assert fetch_status(browsers["bob"], "POST", f"/votes/alice/{target}",
                            {"rating_left": 1, "rating_right": 1, "preference": 5}) == 403
        assert fetch_status(browsers["bob"], "GET", "/report") == 403
        assert fetch_status(browsers["alice"], "GET", f"/votes/alice/{target}") == 200
        browsers["bob"].delete_all_cookies()
        assert fetch_status(browsers["bob"], "GET", f"/votes/bob/{order['bob'][0]}") == 401

        # the report, as the admin reads it, is exactly the votes cast
        def admin_get(route: str) -> bytes:
            req = urllib.request.Request(base + route, headers={"authorization": f"Bearer {admin}"})
            return urllib.request.urlopen(req, timeout=60).read()

        report = json.loads(admin_get("/report.json"))
        rows = [json.loads(line) for line in admin_get("/report/votes.jsonl").decode().splitlines()]
    finally:
        kill_server(server)
    assert report["votes"] == len(cast) == 2 * total and report["annotators"] == {"alice": total, "bob": total}
    got = {(r["annotator"], r["item_id"]): (r["rating_left"], r["rating_right"], r["preference"]) for r in rows}
    assert got == cast
    (pair,) = report["pairs"]
    assert pair["wins"] + pair["ties"] + pair["losses"] == 2 * total
    stored = {(n, v["item_id"]): (v["rating_left"], v["rating_right"], v["preference"])
              for n in ids for v in db.votes_of(conn, ids[n])}
    assert stored == cast
