"""What the search page's tests share: real services in this process, photos stored with their
paths as uris, and a headless Chromium with a place for its screenshots. Plain functions and
context managers; each test module wraps them in its own fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch.client import ImageSearchClient, IngestItem
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images

COLLECTION = "web"
LABELS = ("harbour", "forest")
PER_LABEL = 10
ODD = "web_odd"  # items whose uri is no picture here
SECRET = "this text must never be served"


@contextlib.contextmanager
def running_services(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """(embedder address, searcher address) of real services in this process."""
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as searcher:
        embedder = Embedder(
            EmbedderConfig(
                address="127.0.0.1:0", weights="random", seed=4, device="cpu", duplicate_probes=0
            )
        ).start()
        try:
            yield f"127.0.0.1:{embedder.port}", f"127.0.0.1:{searcher.port}"
        finally:
            embedder.stop(grace_s=1)


def store_photos(services: tuple[str, str], folder: Path) -> dict[str, int]:
    """Photos of two labels, ingested with their paths as uris; plus items whose uri is a text
    file, a URL, and a file since deleted. Returns ids by name."""
    items, ids = [], {}
    for n in range(2 * PER_LABEL):
        path = folder / f"{LABELS[n % 2]}-{n:02d}.jpg"
        path.write_bytes(photo(path.name))
        ids[path.name] = 1000 + n
        items.append(IngestItem(1000 + n, path.read_bytes(), LABELS[n % 2], str(path)))
    secret = folder / "notes.txt"
    secret.write_text(SECRET)
    gone = folder / "gone.jpg"
    gone.write_bytes(images.jpeg(99))
    odd = {"text": (2001, str(secret)), "url": (2002, "https://example.com/a.jpg"),
           "gone": (2003, str(gone))}  # fmt: skip
    odd_items = [IngestItem(i, images.jpeg(i), "odd", uri) for i, uri in odd.values()]
    ids.update({name: item_id for name, (item_id, _) in odd.items()})
    with ImageSearchClient(*services, collection=COLLECTION) as client:
        for collection, batch in ((COLLECTION, items), (ODD, odd_items)):
            report = client.ingest(batch, collection=collection)
            assert report.stored == len(batch), report.failed
        client.ensure_collection("web_empty")
    gone.unlink()
    return ids


def photo(stored_name: str) -> bytes:
    """The bytes of the stored photo of that name (e.g. "forest-05.jpg")."""
    n = int(stored_name.split("-")[1].split(".")[0])
    return images.encode(images.textured_photo(n, (480, 360)), "JPEG", quality=90)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

NEEDS_CHROMIUM = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium is not installed here: apt-get install chromium chromium-driver "
    "(.ci/run installs them)",
)

# Where the screenshots go: IMGSEARCH_SCREENSHOTS when set (to keep them), else the test's tmp.
SCREENSHOTS_ENV = "IMGSEARCH_SCREENSHOTS"


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def shots(tmp_path: Path) -> Path:
    """The folder screenshots go to."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
