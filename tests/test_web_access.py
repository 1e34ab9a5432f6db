"""The search page behind its token: every route with data refuses a request without it, scripts
send it as a bearer token, a browser shows it once for a session cookie, and the page will not
listen beyond loopback without one. Over HTTP, then in headless Chromium."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgsearch.client import ImageSearchClient
from tests.process_helpers import imgsearch, offline_env
from tests.web_helpers import (
    COLLECTION,
    NEEDS_CHROMIUM,
    chromium,
    photo,
    running_services,
    shots,
    store_photos,
)
from webui.access import WrongTokens
from webui.app import WebConfig, create_app
from webui.server import WebServer

PAGE_TOKEN = "page-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def services(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    with running_services(postgres_dsn) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def stored(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return store_photos(services, tmp_path_factory.mktemp("photos"))


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def guarded_page(services: tuple[str, str], stored) -> Iterator[str]:
    """The page started with a page token, as it must be beyond loopback."""
    client = ImageSearchClient(*services, collection=COLLECTION)
    config = WebConfig(collection=COLLECTION, token=PAGE_TOKEN)
    with WebServer(create_app(client, config), "127.0.0.1:0") as server:
        yield server.url
    client.close()


def test_with_a_page_token_every_route_with_data_needs_it(guarded_page: str, stored) -> None:
    thumbnail = f"/thumbnails/{COLLECTION}/{stored['forest-01.jpg']}"
    data_routes = ["/api/info", f"/api/search?id={stored['forest-01.jpg']}", thumbnail,
                   f"/api/duplicates?collection={COLLECTION}&max_distance=1"]  # fmt: skip
    with httpx.Client(base_url=guarded_page, timeout=60) as anonymous:
        for route in data_routes:
            refused = anonymous.get(route)
            assert refused.status_code == 401, route
            assert refused.json()["token_required"] is True
            assert refused.headers["www-authenticate"] == "Bearer"
        refused = anonymous.post(
            "/api/search", content=photo("forest-01.jpg"), headers={"Content-Type": "image/jpeg"}
        )
        assert refused.status_code == 401
        # The page itself carries no data: it loads, to ask for the token.
        assert anonymous.get("/").status_code == anonymous.get("/page.js").status_code == 200
    bearer = {"Authorization": f"Bearer {PAGE_TOKEN}"}
    with httpx.Client(base_url=guarded_page, timeout=60, headers=bearer) as script:
        assert script.get("/api/info").status_code == 200
        assert script.get(thumbnail).headers["content-type"] == "image/jpeg"
    wrong = {"Authorization": f"Bearer {PAGE_TOKEN[:-1]}"}
    with httpx.Client(base_url=guarded_page, timeout=60, headers=wrong) as guessing:
        assert guessing.get("/api/info").status_code == 401


def test_a_browser_shows_the_token_once_and_keeps_a_session_cookie(guarded_page, stored) -> None:
    with httpx.Client(base_url=guarded_page, timeout=60) as browser:
        wrong = browser.post("/api/session", json={"token": "guess"})
        assert wrong.status_code == 401 and "not the page's token" in wrong.json()["error"]
        assert not browser.cookies
        assert browser.post("/api/session", content=b"not json").status_code == 400
        opened = browser.post("/api/session", json={"token": PAGE_TOKEN})
        assert opened.status_code == 204
        cookie = opened.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert PAGE_TOKEN not in opened.headers["set-cookie"]  # an HMAC of it, not the token
        assert browser.get("/api/info").status_code == 200
        assert browser.get(f"/thumbnails/{COLLECTION}/{stored['forest-01.jpg']}").status_code == 200


def test_wrong_tokens_are_counted_per_address_within_a_window() -> None:
    now = [0.0]
    wrong = WrongTokens(limit=3, window_s=10.0, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        assert wrong.wait_s("10.0.0.1") == 0
        wrong.record("10.0.0.1")
    assert wrong.wait_s("10.0.0.1") == 10.0 and wrong.wait_s("10.0.0.2") == 0
    now[0] = 4.0
    assert wrong.wait_s("10.0.0.1") == 6.0
    now[0] = 10.0
    assert wrong.wait_s("10.0.0.1") == 0  # the first guesses have left the window
    wrong.record("10.0.0.2")
    wrong.record("10.0.0.3")  # a third address: the longest-remembered one is forgotten
    assert len(wrong._wrong) == 2


def test_an_address_guessing_tokens_is_refused_for_a_while(services, stored) -> None:
    client = ImageSearchClient(*services, collection=COLLECTION)
    config = WebConfig(token=PAGE_TOKEN, wrong_tokens_limit=3, wrong_tokens_window_s=2.0)
    with (
        WebServer(create_app(client, config), "127.0.0.1:0") as server,
        httpx.Client(base_url=server.url, timeout=60) as guesser,
    ):
        assert guesser.get("/api/info").status_code == 401  # no token at all: not a guess
        assert guesser.post("/api/session", json={"token": "one"}).status_code == 401
        wrong = {"Authorization": "Bearer two"}
        assert guesser.get("/api/info", headers=wrong).status_code == 401
        assert guesser.post("/api/session", json={"token": "three"}).status_code == 401
        refused = guesser.post("/api/session", json={"token": PAGE_TOKEN})
        assert refused.status_code == 429 and "too many wrong tokens" in refused.json()["error"]
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        right = {"Authorization": f"Bearer {PAGE_TOKEN}"}
        assert guesser.get("/api/info", headers=right).status_code == 429
        time.sleep(2.1)
        assert guesser.post("/api/session", json={"token": PAGE_TOKEN}).status_code == 204
    client.close()


def test_the_page_will_not_listen_beyond_loopback_without_a_token(tmp_path) -> None:
    env = {k: v for k, v in offline_env().items() if k != "IMGSEARCH_PAGE_TOKEN"}
    result = imgsearch("web", "--address", "0.0.0.0:0", env=env)
    assert result.returncode != 0
    assert "beyond this machine" in result.stderr and "IMGSEARCH_PAGE_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_in_a_browser_the_page_asks_for_its_token_once(
    browser, guarded_page: str, stored: dict[str, int], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(guarded_page)
    wait.until(ready.visibility_of_element_located((By.ID, "token-form")))
    assert "needs its token" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "token").send_keys("a guess")
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "error"), "not the page's token"))
    assert browser.save_screenshot(str(shots(tmp_path) / "search-page-token-asked.png"))
    browser.find_element(By.ID, "token").send_keys(PAGE_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: not for scripts

    # Searches and thumbnails go through on the session, and a reload does not ask again.
    browser.find_element(By.ID, "item-id").send_keys(str(stored["forest-01.jpg"]))
    browser.find_element(By.CSS_SELECTOR, "#by-id button").click()
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#hits .hit"))
    wait.until(
        lambda driver: driver.execute_script(
            "return [...document.querySelectorAll('#hits .hit img')]"
            ".every(img => img.complete && img.naturalWidth > 0)"
        )
    )
    browser.refresh()
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    assert browser.save_screenshot(str(shots(tmp_path) / "search-page-token.png"))
