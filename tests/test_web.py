"""The search page over HTTP, against a real uvicorn server on a loopback port, over real
services: search by upload (raw body or form) and by id, label filters, thumbnails by item id
only, and every refusal with its status and a message a person can act on. Then in a real
browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium opens
the page, uploads a picture, waits for the grid, counts the hit tiles, clicks one to search by
it; opens the duplicates view from the header and sees the planted copy beside its original; and
keeps screenshots of what a person sees."""

from __future__ import annotations

import io
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imgsearch.client import ImageSearchClient, IngestItem
from tests import images
from tests.web_helpers import (
    COLLECTION,
    NEEDS_CHROMIUM,
    ODD,
    PER_LABEL,
    SECRET,
    chromium,
    photo,
    running_services,
    shots,
    store_photos,
)
from webui.app import WebConfig, create_app
from webui.server import WebServer

MAX_UPLOAD = 300_000
DUPS = "web_dups"  # distinct photos and one re-compressed copy


@pytest.fixture(scope="module")
def services(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    with running_services(postgres_dsn) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def stored(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return store_photos(services, tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def planted_copy(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> float:
    """Six distinct photos and a copy of the first re-saved at JPEG quality 60, stored in DUPS
    with their paths as uris; returns a distance between the copy's and the nearest distinct
    pair's, measured on these very vectors."""
    folder = tmp_path_factory.mktemp("duplicates")
    paths = {}
    for n in range(6):
        paths[f"scene-{n}.jpg"] = images.encode(images.textured_photo(100 + n, (480, 360)), "JPEG")
    paths["scene-0-copy.jpg"] = images.encode(
        images.textured_photo(100, (480, 360)), "JPEG", quality=60
    )
    items = []
    for n, (name, data) in enumerate(paths.items()):
        (folder / name).write_bytes(data)
        items.append(IngestItem(3000 + n, data, "scene", str(folder / name)))
    with ImageSearchClient(*services, collection=DUPS) as client:
        assert client.ingest(items).stored == len(items)
        vectors = np.stack(client.embed(list(paths.values())))
    distances = np.linalg.norm(vectors[:, None] - vectors[None, :], axis=-1)
    copy = float(distances[0, 6])
    distinct = float(distances[:6, :6][np.triu_indices(6, k=1)].min())
    assert copy < distinct / 2, (copy, distinct)
    return (copy + distinct / 2) / 2


@pytest.fixture(scope="module")
def page(services: tuple[str, str], stored) -> Iterator[str]:
    client = ImageSearchClient(*services, collection=COLLECTION)
    config = WebConfig(collection=COLLECTION, max_upload_bytes=MAX_UPLOAD)
    with WebServer(create_app(client, config), "127.0.0.1:0") as server:
        yield server.url
    client.close()


@pytest.fixture
def http(page: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=page, timeout=60) as client:
        yield client


def _search(http: httpx.Client, body: bytes, **params: object) -> httpx.Response:
    return http.post(
        "/api/search", content=body, params=params, headers={"Content-Type": "image/jpeg"}
    )


# -- the page --------------------------------------------------------------------------------


def test_the_page_and_its_script_come_with_a_strict_content_policy(http) -> None:
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Drop an image" in page.text and '<script src="/page.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    script = http.get("/page.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text  # server text goes in as text, never as markup


def test_info_names_the_model_the_collections_and_the_random_weights(http) -> None:
    info = http.get("/api/info").json()
    assert info["model"] == "squeezenet1_1" and info["random_weights"] is True
    assert {COLLECTION, "web_empty"} <= set(info["collections"])
    assert info["collection"] == COLLECTION and info["max_upload_bytes"] == MAX_UPLOAD
    assert "image/jpeg" in info["image_types"]


# -- duplicates ------------------------------------------------------------------------------


def test_duplicates_come_as_groups_with_thumbnails_names_and_distances(http, planted_copy) -> None:
    answer = http.get("/api/duplicates", params={"collection": DUPS, "max_distance": planted_copy})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["collection"] == DUPS and body["suggested"] is False
    assert body["vector"] == ""  # a collection of one vector: compared by its own
    assert [[m["name"] for m in g["members"]] for g in body["groups"]] == [
        ["scene-0.jpg", "scene-0-copy.jpg"]
    ]
    first, copy = body["groups"][0]["members"]
    assert first["distance"] == 0 and 0 < copy["distance"] <= planted_copy
    assert (first["id"], copy["id"]) == ("3000", "3006")
    thumbnail = http.get(copy["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"max_distance": "near"}, "max_distance must be a number"),
        ({"max_distance": "nan"}, "finite non-zero"),
        ({"max_distance": "1", "limit": "0"}, "limit must be 1..1000"),
        ({"max_distance": "1", "collection": "no such"}, "collection"),
        ({}, "suggests no duplicate distance"),  # this embedder measured none
    ],
)
def test_a_duplicates_request_it_cannot_answer_says_why(http, params, reason: str) -> None:
    answer = http.get("/api/duplicates", params={"collection": DUPS, **params})
    assert answer.status_code == 400 and reason in answer.json()["error"], answer.text


# -- searching -------------------------------------------------------------------------------


def test_an_uploaded_picture_finds_itself_first_with_a_thumbnail_per_hit(http, stored) -> None:
    answer = _search(http, photo("forest-03.jpg"), top_k=5).json()
    assert answer["random_weights"] is True and answer["collection"] == COLLECTION
    hits = answer["hits"]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["name"] == "forest-03.jpg" and hits[0]["distance"] < 1e-3
    assert hits[0]["id"] == str(stored["forest-03.jpg"])  # ids as strings: 64-bit safe in JS
    for hit in hits:
        assert hit["thumbnail"] == f"/thumbnails/{COLLECTION}/{hit['id']}"
    thumbnail = http.get(hits[0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as picture:
        assert max(picture.size) == 256 and picture.size[0] > picture.size[1]
    assert http.get(hits[0]["thumbnail"]).content == thumbnail.content  # served again, the same


def test_a_form_upload_searches_like_a_raw_one(http) -> None:
    picture = photo("harbour-04.jpg")
    form = http.post(
        "/api/search",
        params={"top_k": 3},
        files={"image": ("query.jpg", picture, "image/jpeg")},
    )
    assert form.status_code == 200, form.text
    assert form.json()["hits"] == _search(http, picture, top_k=3).json()["hits"]


def test_search_by_id_and_a_label_filter(http, stored) -> None:
    item = stored["harbour-02.jpg"]
    by_id = http.get("/api/search", params={"id": item, "top_k": 4}).json()
    assert by_id["query"] == {"id": str(item)} and by_id["hits"][0]["id"] == str(item)
    forest = http.get("/api/search", params={"id": item, "top_k": 20, "label": "forest"}).json()
    assert len(forest["hits"]) == PER_LABEL and {h["label"] for h in forest["hits"]} == {"forest"}
    nothing = http.get("/api/search", params={"id": item, "label": "desert"}).json()
    assert nothing["hits"] == [] and "desert" in nothing["message"]
    assert nothing["empty_collection"] is False


def test_an_empty_collection_says_how_to_fill_it(http) -> None:
    answer = _search(http, photo("forest-01.jpg"), collection="web_empty").json()
    assert answer["hits"] == [] and answer["empty_collection"] is True
    assert "imgsearch ingest FOLDER --collection web_empty" in answer["message"]


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_kind", "status", "says"),
    [
        ("text file", 415, "text/plain is not a picture type"),
        ("no content type", 415, "Content-Type"),
        ("not an image", 400, "not an image"),
        ("too large", 413, "up to 0.3 MB"),
        ("empty", 400, "no picture in the request"),
        ("form without image field", 400, "form field 'image'"),
        ("top_k zero", 400, "top_k must be 1..100"),
        ("top_k word", 400, "top_k must be a whole number"),
        ("no id", 400, "needs ?id="),
        ("id word", 400, "id must be a whole number"),
        ("unknown id", 404, "no item with id 424242"),
        ("unknown collection", 404, "nowhere"),
        ("bad collection name", 400, "invalid collection name"),
    ],
)
def test_bad_requests_are_refused_with_the_status_and_a_reason(
    http, request_kind: str, status: int, says: str
) -> None:
    picture = photo("forest-01.jpg")
    big = images.encode(images.textured_photo(1, (1400, 1000)), "PNG")
    assert len(big) > MAX_UPLOAD
    send = {
        "text file": lambda: http.post(
            "/api/search", content=b"hello", headers={"Content-Type": "text/plain"}
        ),
        "no content type": lambda: http.post("/api/search", content=picture, headers={}),
        "not an image": lambda: _search(http, b"\xff\xd8 not really a jpeg"),
        "too large": lambda: _search(http, big),
        "empty": lambda: _search(http, b""),
        "form without image field": lambda: http.post(
            "/api/search", files={"picture": ("q.jpg", picture, "image/jpeg")}
        ),
        "top_k zero": lambda: _search(http, picture, top_k=0),
        "top_k word": lambda: _search(http, picture, top_k="ten"),
        "no id": lambda: http.get("/api/search"),
        "id word": lambda: http.get("/api/search", params={"id": "4x"}),
        "unknown id": lambda: http.get("/api/search", params={"id": 424242}),
        "unknown collection": lambda: _search(http, picture, collection="nowhere"),
        "bad collection name": lambda: _search(http, picture, collection="../etc"),
    }[request_kind]
    response = send()
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_thumbnails_are_served_by_item_id_never_by_path(http, page: str, stored) -> None:
    photo_id = stored["forest-01.jpg"]
    assert http.get(f"/thumbnails/{COLLECTION}/{photo_id}").status_code == 200
    # Only items of the collection named.
    missing = http.get(f"/thumbnails/{COLLECTION}/424242")
    assert missing.status_code == 404 and "no item 424242" in missing.json()["error"]
    assert http.get(f"/thumbnails/web_empty/{photo_id}").status_code == 404
    # The item's own uri decides the file, and only pictures come back, re-encoded.
    for name, says in (("text", "not a picture"), ("url", "no picture on this machine"),
                       ("gone", "is gone")):  # fmt: skip
        response = http.get(f"/thumbnails/{ODD}/{stored[name]}")
        assert response.status_code == 404 and says in response.json()["error"], name
        assert SECRET not in response.text
    # A path in the URL is never a file to read.
    host, port = page.removeprefix("http://").rstrip("/").split(":")
    for target in (
        "/thumbnails/../../etc/passwd",
        "/thumbnails/web/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/thumbnails/web/{photo_id}/../../../etc/passwd",
        "/thumbnails/%2Fetc%2Fpasswd/1",
        "/thumbnails?path=/etc/passwd",
        "/static/../../etc/passwd",
    ):
        connection = HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", target)  # sent as written, no normalising
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status in (400, 404), target
        assert b"root:" not in body and SECRET.encode() not in body, target


def test_an_unreachable_service_is_named_on_the_page(tmp_path) -> None:
    client = ImageSearchClient("127.0.0.1:9", "127.0.0.1:7", timeout_s=5)
    with WebServer(create_app(client), "127.0.0.1:0") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            info = http.get("/api/info")
            assert info.status_code == 503
            assert "cannot reach the embedder at 127.0.0.1:9" in info.json()["error"]
            by_id = http.get("/api/search", params={"id": 1})
            assert by_id.status_code == 503
            assert "cannot reach the searcher at 127.0.0.1:7" in by_id.json()["error"]
    client.close()


# -- in a browser ------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_in_a_browser_upload_a_picture_see_the_grid_and_click_a_hit(
    browser, page: str, stored: dict[str, int], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(page + f"?collection={COLLECTION}")
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert "RANDOM weights" in browser.find_element(By.ID, "weights").text

    top_k = browser.find_element(By.ID, "top-k")
    top_k.clear()
    top_k.send_keys("12")
    query = tmp_path / "forest-05.jpg"
    query.write_bytes(images.encode(images.textured_photo(5, (480, 360)), "JPEG", quality=90))
    upload = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", upload)  # as if picked in the dialog
    upload.send_keys(str(query))

    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#hits .hit")) == 12)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
    assert tiles[0].get_attribute("data-id") == str(stored["forest-05.jpg"])
    assert "1. forest" in tiles[0].text and "forest-05.jpg" in tiles[0].text
    assert "distance" in tiles[0].text
    wait.until(  # every thumbnail has loaded
        lambda driver: driver.execute_script(
            "return [...document.querySelectorAll('#hits .hit img')]"
            ".every(img => img.complete && img.naturalWidth > 0)"
        )
    )
    assert browser.find_element(By.ID, "query-image").get_attribute("src").startswith("blob:")
    assert browser.save_screenshot(str(shots(tmp_path) / "search-page-results.png"))

    # Clicking a hit searches by that stored item.
    second = tiles[1]
    second_id = second.get_attribute("data-id")
    second.click()
    wait.until(
        lambda driver: (
            driver.find_element(By.ID, "query-caption").text == f"stored item {second_id}"
        )
    )
    wait.until(ready.text_to_be_present_in_element((By.ID, "status"), "12 hits"))
    first = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")[0]
    assert first.get_attribute("data-id") == second_id

    # A file that is not a picture gets a message on the page, and the grid stays.
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    upload.send_keys(str(text))
    wait.until(ready.visibility_of_element_located((By.ID, "error")))
    assert "is not a picture the page takes" in browser.find_element(By.ID, "error").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#hits .hit")) == 12
    assert browser.save_screenshot(str(shots(tmp_path) / "search-page-error.png"))


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_in_a_browser_the_duplicates_view_lists_the_groups_as_rows_of_pictures(
    browser, page: str, planted_copy: float, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(page + f"?collection={DUPS}")
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    browser.find_element(By.ID, "duplicates-link").click()  # from the page's header
    # This embedder suggests no distance: the page says so, and takes one.
    wait.until(ready.text_to_be_present_in_element((By.ID, "error"), "no duplicate distance"))
    assert not browser.find_element(By.ID, "drop").is_displayed()
    browser.find_element(By.ID, "max-distance").send_keys(f"{planted_copy:.6g}")
    browser.find_element(By.CSS_SELECTOR, "#duplicates-form button").click()
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#groups .group .hit"))
    wait.until(  # every thumbnail has loaded
        lambda driver: driver.execute_script(
            "return [...document.querySelectorAll('#groups .hit img')]"
            ".every(img => img.complete && img.naturalWidth > 0)"
        )
    )
    groups = browser.find_elements(By.CSS_SELECTOR, "#groups .group")
    assert len(groups) == 1 and "group 1: 2 pictures" in groups[0].text
    tiles = groups[0].find_elements(By.CSS_SELECTOR, ".hit")
    assert "scene-0.jpg" in tiles[0].text and "first of the group" in tiles[0].text
    assert "scene-0-copy.jpg" in tiles[1].text and "distance" in tiles[1].text
    status = browser.find_element(By.ID, "duplicates-status").text
    assert (
        "1 group (2 pictures)" in status and not browser.find_element(By.ID, "error").is_displayed()
    )
    assert browser.save_screenshot(str(shots(tmp_path) / "duplicates-view.png"))

    # A member opens the search by that picture.
    tiles[1].click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "query-caption"), "stored item 3006"))
    assert browser.find_element(By.ID, "drop").is_displayed()


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_in_a_browser_an_unreachable_service_is_named_on_the_page(browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    client = ImageSearchClient("127.0.0.1:9", "127.0.0.1:7", timeout_s=5)
    with WebServer(create_app(client), "127.0.0.1:0") as server:
        browser.get(server.url)
        WebDriverWait(browser, 60).until(ready.visibility_of_element_located((By.ID, "error")))
        message = browser.find_element(By.ID, "error").text
        assert "cannot reach the embedder at 127.0.0.1:9" in message and "imgsearch up" in message
        assert browser.save_screenshot(str(shots(tmp_path) / "search-page-unreachable.png"))
    client.close()
