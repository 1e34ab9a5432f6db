"""The `imgsearch` CLI end to end, every command a real process: `up` runs the stack, `ingest`
stores a labelled folder tree, `search` finds images and their re-encoded copies."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from embedder import probes
from tests import images
from tests.certs import CertificateAuthority
from tests.conftest import ROOT
from tests.process_helpers import imgsearch, offline_env

LABELS = [f"label{i:02d}" for i in range(10)]
PER_LABEL = 20


@contextlib.contextmanager
def imgsearch_up(
    data_dir: Path, *options: str, said: list[str] | None = None
) -> Iterator[tuple[str, str]]:
    """`imgsearch up` with random weights on free ports; yields (embedder, searcher), then stops
    it with Ctrl-C and checks that it stopped cleanly. What it printed until ready goes into
    `said`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "up", "--data-dir", str(data_dir),
         "--embedder-port", "0", "--searcher-port", "0", "--weights", "random", *options],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        addresses: dict[str, str] = {}
        output = [] if said is None else said
        for line in process.stdout:
            output.append(line)
            name, _, value = line.partition(" ")
            if name in ("embedder", "searcher"):
                addresses[name] = value.strip()
            if line.startswith("ready"):
                break
        assert set(addresses) == {"embedder", "searcher"}, "".join(output)
        assert any("RANDOM weights" in line for line in output)
        yield addresses["embedder"], addresses["searcher"]
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0]
    assert process.returncode == 0, rest
    assert "stopped" in rest


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with imgsearch_up(tmp_path_factory.mktemp("stack")) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for li, label in enumerate(LABELS):
        (root / label).mkdir()
        for n in range(PER_LABEL):
            seed = li * PER_LABEL + n
            (root / label / f"{n:02d}.jpg").write_bytes(images.jpeg(seed, (320, 240)))
    return root


@pytest.fixture(scope="module")
def ingested(stack: tuple[str, str], photos: Path) -> tuple[str, ...]:
    embedder, searcher = stack
    options = ("--embedder", embedder, "--searcher", searcher)
    first = imgsearch("ingest", str(photos), *options)
    assert first.returncode == 0, first.stderr
    assert "ingested 200 (200 new, 0 updated), skipped 0" in first.stdout
    # Running it again stores nothing twice.
    again = imgsearch("ingest", str(photos), *options)
    assert again.returncode == 0, again.stderr
    assert "ingested 0 (0 new, 0 updated), skipped 200 already stored" in again.stdout
    stats = imgsearch("stats", *options)
    assert "rows            200" in stats.stdout, stats.stdout + stats.stderr
    assert "index           HNSW over HALFVEC, m=16, ef_construction=200" in stats.stdout
    assert "PostgreSQL      18." in stats.stdout and "pgvector        0.8.5" in stats.stdout
    assert "shared_buffers=" in stats.stdout
    return options


def _search(options: tuple[str, ...], image: Path, *extra: str) -> list[dict[str, object]]:
    result = imgsearch("search", str(image), "--json", *options, *extra)
    assert result.returncode == 0, result.stderr
    hits: list[dict[str, object]] = json.loads(result.stdout)["hits"]
    return hits


def test_an_ingested_image_finds_itself_first_at_distance_zero(ingested, photos: Path) -> None:
    image = photos / "label03" / "07.jpg"
    hits = _search(ingested, image, "--top-k", "5")
    assert hits[0]["uri"] == str(image.resolve())
    assert hits[0]["label"] == "label03"
    assert abs(float(hits[0]["distance"])) < 1e-3  # type: ignore[arg-type]


def test_search_effort_options_reach_the_searcher(ingested, photos: Path) -> None:
    image = photos / "label05" / "03.jpg"
    walked = _search(ingested, image, "--top-k", "10", "--ef-search", "100", "--candidates", "50")
    exact = _search(ingested, image, "--top-k", "10", "--exact")
    assert [h["id"] for h in walked] == [h["id"] for h in exact]  # 200 rows: the index finds all
    too_much = imgsearch("search", str(image), "--ef-search", "5000", *ingested)
    assert too_much.returncode == 2
    assert "ef_search must be between 0 and 1000, got 5000" in too_much.stderr


def test_re_encoded_copies_find_their_original_first(ingested, photos: Path, tmp_path) -> None:
    found = 0
    for n in range(50):
        original = photos / LABELS[n % 10] / f"{(n * 7) % PER_LABEL:02d}.jpg"
        picture = Image.open(original)
        smaller = picture.resize((picture.width * 9 // 10, picture.height * 9 // 10))
        buffer = io.BytesIO()
        smaller.save(buffer, "JPEG", quality=75)
        copy = tmp_path / f"copy{n}.jpg"
        copy.write_bytes(buffer.getvalue())
        found += _search(ingested, copy, "--top-k", "1")[0]["uri"] == str(original.resolve())
    assert found >= 45, f"{found}/50"


def test_search_prints_a_table_and_writes_a_grid(ingested, photos: Path, tmp_path) -> None:
    grid = tmp_path / "grid.png"
    image = photos / "label05" / "03.jpg"
    result = imgsearch("search", str(image), "--top-k", "8", "--grid", str(grid), *ingested)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("RANDOM weights" in line for line in lines)  # said on every result
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "id", "label"])
    assert len(lines[header + 1 :]) >= 8 and "label05" in lines[header + 1]
    with Image.open(grid) as picture:
        assert picture.width >= 5 * 160 and picture.height >= 2 * 160


def test_a_label_filter_and_a_search_by_id(ingested, photos: Path) -> None:
    hits = _search(ingested, photos / "label01" / "00.jpg", "--label", "label08", "--top-k", "30")
    assert len(hits) == PER_LABEL and {h["label"] for h in hits} == {"label08"}
    first = hits[0]
    by_id = imgsearch("search", "--id", str(first["id"]), "--json", *ingested)
    assert json.loads(by_id.stdout)["hits"][0]["id"] == first["id"]


def test_errors_are_one_readable_line(ingested, tmp_path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    result = imgsearch("search", str(junk), *ingested)
    assert result.returncode == 2
    assert result.stderr.startswith("imgsearch: data is not an image")


def test_several_images_get_their_own_hits_keyed_by_file(ingested, photos: Path, tmp_path) -> None:
    queries = [photos / "label02" / "04.jpg", photos / "label07" / "11.jpg"]
    missing = tmp_path / "missing.jpg"
    result = imgsearch(
        "search", *map(str, queries), str(missing), "--top-k", "3", "--json", *ingested
    )
    assert result.returncode == 1, result.stderr  # one query failed; the others answered
    report = json.loads(result.stdout)["queries"]
    assert list(report) == [*map(str, queries), str(missing)]
    for query in queries:
        hits = report[str(query)]["hits"]
        assert len(hits) == 3 and hits[0]["uri"] == str(query.resolve())
    assert "No such file" in report[str(missing)]["error"]
    text = imgsearch("search", *map(str, queries), "--top-k", "2", *ingested)
    assert text.returncode == 0 and text.stdout.count("\n== ") == 2


def test_a_box_finds_the_picture_it_was_cut_from(ingested, photos: Path, tmp_path) -> None:
    """A screenshot-like page with an ingested photo pasted into it: searching by the photo's
    region finds that photo; searching by the whole page need not."""
    found_by_box = 0
    for n, (label, name) in enumerate([("label01", "05"), ("label04", "12"), ("label09", "00")]):
        original = photos / label / f"{name}.jpg"
        page = images.textured_photo(500 + n, (900, 700)).filter(ImageFilter.GaussianBlur(3))
        with Image.open(original) as picture:
            page.paste(picture.convert("RGB"), (130 + 40 * n, 210))
        page_file = tmp_path / f"page{n}.png"
        page.save(page_file)
        hits = _search(ingested, page_file, "--top-k", "1", "--box", f"{130 + 40 * n},210,320,240")
        found_by_box += hits[0]["uri"] == str(original.resolve())
        assert float(hits[0]["distance"]) < 1e-3  # type: ignore[arg-type]
    assert found_by_box == 3
    outside = imgsearch("search", str(page_file), "--box", "800,600,320,240", *ingested)
    assert outside.returncode == 2
    assert "reaches past the picture, which is 900x700 pixels" in outside.stderr
    malformed = imgsearch("search", str(page_file), "--box", "1,2,3", *ingested)
    assert malformed.returncode == 2 and "x,y,width,height" in malformed.stderr


def test_min_and_max_distance_drop_or_keep_the_querys_near_duplicates(
    ingested, photos: Path
) -> None:
    image = photos / "label06" / "08.jpg"
    nearest = _search(ingested, image, "--top-k", "5")
    assert nearest[0]["uri"] == str(image.resolve())
    # The image itself (distance 0) is left out, and five others still come back.
    others = _search(ingested, image, "--top-k", "5", "--min-distance", "1e-3")
    assert [h["id"] for h in others] == [h["id"] for h in _search(ingested, image, "--top-k", "6")][
        1:
    ]
    only_copies = _search(ingested, image, "--top-k", "5", "--max-distance", "1e-3")
    assert [h["uri"] for h in only_copies] == [str(image.resolve())]
    by_id = imgsearch(
        "search", "--id", str(nearest[0]["id"]), "--min-distance", "1e-3", "--json", *ingested
    )
    assert nearest[0]["id"] not in [h["id"] for h in json.loads(by_id.stdout)["hits"]]
    wrong = imgsearch("search", str(image), "--min-distance", "2", "--max-distance", "1", *ingested)
    assert wrong.returncode == 2
    assert "min_distance (2.0) is above max_distance (1.0)" in wrong.stderr


@pytest.fixture(scope="module")
def planted_duplicates(
    stack: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[tuple[str, ...], list[set[str]], float]:
    """A collection of 24 distinct photo-like pictures, 6 of them with one edited copy and 4
    with two: (CLI options, the planted groups as sets of file paths, a max distance that
    separates copies from distinct pictures on this embedder)."""
    from imgsearch.client import ImageSearchClient

    root = tmp_path_factory.mktemp("duplicates")
    edits = [probes.jpeg(70), probes.resize(0.8), probes.centre_crop(0.95)]
    files: list[Path] = []
    groups: list[set[str]] = []
    for seed in range(24):
        original = images.textured_photo(seed, (400, 300))
        path = root / f"photo{seed:02d}.jpg"
        original.save(path, "JPEG", quality=92)
        files.append(path)
        copies = 1 if seed < 6 else 2 if seed < 10 else 0
        group = {str(path.resolve())}
        for n in range(copies):
            copy = root / f"photo{seed:02d}_copy{n}.jpg"
            edits[(seed + n) % len(edits)](original).save(copy, "JPEG", quality=85)
            group.add(str(copy.resolve()))
        if copies:
            groups.append(group)
    embedder, searcher = stack
    options = ("--embedder", embedder, "--searcher", searcher, "--collection", "planted")
    assert imgsearch("ingest", str(root), *options).returncode == 0
    # The threshold for this test: between the copies' distances and the distinct pictures',
    # in the vectors `imgsearch duplicates` compares (the collection's gem ones, from `up`).
    with ImageSearchClient(embedder, searcher) as client:
        head = client.duplicates_vector("planted")
        assert head == "gem"
        vectors = {}
        for path in root.iterdir():
            (vectors[str(path.resolve())],) = client.embed([path.read_bytes()], head=head)
    distinct = [str(path.resolve()) for path in files]
    nearest_distinct = min(
        float(np.linalg.norm(vectors[a] - vectors[b]))
        for i, a in enumerate(distinct)
        for b in distinct[i + 1 :]
    )
    farthest_copy = max(
        float(np.linalg.norm(vectors[a] - vectors[b])) for g in groups for a in g for b in g
    )
    assert farthest_copy < nearest_distinct, (farthest_copy, nearest_distinct)
    return options, groups, (farthest_copy + nearest_distinct) / 2


def test_planted_duplicates_come_back_as_groups_and_distinct_pictures_do_not(
    planted_duplicates, tmp_path
) -> None:
    options, planted, max_distance = planted_duplicates
    sheets = tmp_path / "sheets"
    result = imgsearch(
        "duplicates", "--max-distance", str(max_distance), "--json", "--grid", str(sheets),
        *options,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    found = [{member["uri"] for member in group} for group in report["groups"]]
    assert sorted(found, key=min) == sorted(planted, key=min)
    for group in report["groups"]:
        assert group[0]["distance"] == 0 and all(m["distance"] > 0 for m in group[1:])
    assert sorted(p.name for p in sheets.iterdir()) == [
        f"group-{n:04d}.png" for n in range(1, len(planted) + 1)
    ]


def test_duplicates_prints_groups_and_defaults_to_the_embedders_distance(
    planted_duplicates,
) -> None:
    from imgsearch.client import ImageSearchClient

    options, _, _ = planted_duplicates
    result = imgsearch("duplicates", *options)
    assert result.returncode == 0, result.stderr
    with ImageSearchClient(options[1], options[3]) as client:
        gem = client.model_info().head_named("gem")
        assert gem is not None
        suggested = gem.duplicate_distance
        assert suggested == client.suggested_duplicate_distance("planted")
    assert suggested > 0
    assert f"within {suggested:g}" in result.stdout.splitlines()[0]
    assert "comparing" in result.stderr  # the progress bar


def test_up_serves_the_gem_head_and_a_logits_collection_refuses_it(
    ingested: tuple[str, ...], photos: Path, tmp_path
) -> None:
    from imgsearch.client import ImageSearchClient

    said: list[str] = []
    with imgsearch_up(
        tmp_path / "gem", "--head", "gem", "--runtime", "torch", "--web", "127.0.0.1:0", said=said
    ) as (embedder, own):
        with ImageSearchClient(embedder, own) as client:
            info = client.model_info()
        # `up --web` serves the search page over this stack.
        (page,) = [line.split()[1] for line in said if line.startswith("web ")]
        with urllib.request.urlopen(page + "api/info", timeout=30) as response:
            assert json.loads(response.read())["head"] == "gem"
        assert (info.model, info.head, info.runtime) == ("squeezenet1_1", "gem", "torch")
        assert 0 < info.duplicate_cosine_distance < 1 and 0 < info.duplicate_distance < 2
        # Its own searcher takes GeM vectors...
        photo = photos / "label03" / "01.jpg"
        mine = ("--embedder", embedder, "--searcher", own)
        assert imgsearch("ingest", str(photo), *mine).returncode == 0
        assert _search(mine, photo, "--top-k", "1")[0]["uri"] == str(photo.resolve())
        # The GeM head trims a screenshot's frame: the screenshot finds the photo, at ~0.
        shot = tmp_path / "screenshot.png"
        with Image.open(photo) as picture:
            probes.screenshot(picture.convert("RGB")).save(shot)
        (hit,) = _search(mine, shot, "--top-k", "1")
        assert hit["uri"] == str(photo.resolve()) and float(hit["distance"]) < 1e-3  # type: ignore[arg-type]
        # ...but the first stack's collection, filled with logits, refuses them unless forced.
        logits = ("--embedder", embedder, "--searcher", ingested[3])
        refused = imgsearch("search", str(photo), *logits)
        assert refused.returncode == 2
        assert "was filled by model" in refused.stderr and "--force" in refused.stderr
        assert imgsearch("search", str(photo), *logits, "--force").returncode == 0


def test_an_unreachable_service_is_named_with_its_address_and_what_to_run(tmp_path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(images.jpeg(1, (320, 240)))
    nowhere = ("--embedder", "127.0.0.1:9", "--searcher", "127.0.0.1:7", "--timeout", "5")
    for command, service, address in (
        (("stats",), "searcher", "127.0.0.1:7"),
        (("search", str(photo)), "embedder", "127.0.0.1:9"),
        (("search", "--id", "5"), "searcher", "127.0.0.1:7"),
        (("ingest", str(photo)), "embedder", "127.0.0.1:9"),
    ):
        result = imgsearch(*command, *nowhere)
        assert result.returncode == 2, result.stdout
        (line,) = result.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith(f"imgsearch: cannot reach the {service} at {address}"), line
        assert "imgsearch up" in line and f"--{service}" in line
        assert "UNKNOWN" not in line and "backends" not in line


def test_up_serves_tls_tokens_and_metrics_as_the_servers_do(photos: Path, tmp_path) -> None:
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("stack", server=True)
    (tmp_path / "tokens").write_text("write s3cret\nread look-only\n")
    (tmp_path / "write-token").write_text("s3cret\n")
    said: list[str] = []
    with imgsearch_up(
        tmp_path / "secure",
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tokens-file", str(tmp_path / "tokens"),
        "--embedder-metrics-address", "127.0.0.1:0", "--searcher-metrics-address", "127.0.0.1:0",
        said=said,
    ) as (embedder, searcher):  # fmt: skip
        tls = ("--embedder", embedder, "--searcher", searcher, "--tls-ca", str(ca.pem))
        photo = photos / "label04" / "07.jpg"
        stored = imgsearch(
            "ingest", str(photo), *tls, "--token-file", str(tmp_path / "write-token")
        )
        assert stored.returncode == 0, stored.stderr
        reader = dict(os.environ, IMGSEARCH_TOKEN="look-only")
        hits = imgsearch("search", str(photo), "--json", *tls, env=reader)
        assert hits.returncode == 0, hits.stderr
        assert json.loads(hits.stdout)["hits"][0]["uri"] == str(photo.resolve())
        no_token = imgsearch("stats", *tls)
        assert no_token.returncode == 2 and "bearer token" in no_token.stderr
        plaintext = imgsearch("stats", "--searcher", searcher, "--timeout", "5")
        assert plaintext.returncode == 2 and f"the searcher at {searcher}" in plaintext.stderr
        # The search page forwards the CA and the token to the services.
        with imgsearch_web(*tls, "--token-file", str(tmp_path / "write-token")) as page:
            with urllib.request.urlopen(page + "api/info", timeout=30) as response:
                assert json.loads(response.read())["collections"] == ["images"]
        metrics = {line.split()[1]: line.split()[2] for line in said if line.startswith("metrics")}
        assert set(metrics) == {"embedder", "searcher"}
        for url in metrics.values():
            with urllib.request.urlopen(url, timeout=10) as response:
                assert "imgsearch_rpc_requests_total" in response.read().decode()
    assert any(line.startswith("tls ") for line in said)
    assert any(line.startswith("auth ") for line in said)


@contextlib.contextmanager
def imgsearch_web(*options: str) -> Iterator[str]:
    """`imgsearch web` on a free port; yields the page's address, then stops it with Ctrl-C and
    checks that it stopped cleanly."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "web", "--address", "127.0.0.1:0", *options],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        said = []
        for line in process.stdout:
            said.append(line)
            if line.startswith("ready"):
                break
        pages = [line.split()[1] for line in said if line.startswith("web ")]
        assert len(pages) == 1, "".join(said)
        yield pages[0]
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0]
    assert process.returncode == 0 and "stopped" in rest, rest


def test_web_serves_the_page_over_running_services_until_ctrl_c(ingested, photos: Path) -> None:
    with imgsearch_web(*ingested) as page:
        photo = (photos / "label06" / "02.jpg").read_bytes()
        request = urllib.request.Request(
            page + "api/search?top_k=3", data=photo, headers={"Content-Type": "image/jpeg"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            hits = json.loads(response.read())["hits"]
        assert hits[0]["name"] == "02.jpg" and hits[0]["label"] == "label06"


def test_every_command_documents_its_options(tmp_path) -> None:
    for command in (
        "up", "ingest", "search", "duplicates", "collections", "stats", "web", "demo"
    ):  # fmt: skip
        result = imgsearch(command, "--help")
        assert result.returncode == 0
        assert "default" in result.stdout, command
    assert "IMGSEARCH_EMBEDDER" in imgsearch("search", "--help").stdout


def test_the_demo_runs_offline_with_random_weights_and_says_so(tmp_path) -> None:
    grid = tmp_path / "demo.png"
    result = imgsearch(
        "demo", "--weights", "random", "--data-dir", str(tmp_path / "demo"),
        "--per-label", "6", "--grid", str(grid),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ingested 63 (63 new" in result.stdout  # 60 pictures and 3 planted copies
    demo_dir = tmp_path / "demo"
    # It ends with the duplicate search: the planted copies named, the groups counted and drawn.
    assert "demo: 3 edited copies were planted among the pictures:" in result.stdout
    assert "_copy.jpg: " in result.stdout and "re-saved at JPEG quality 60" in result.stdout
    found = re.search(r"demo: (\d) of the 3 planted copies came back as groups", result.stdout)
    groups = re.search(r"(\d+) groups of near-duplicates", result.stdout)
    assert found and groups, result.stdout
    assert int(found[1]) <= int(groups[1]) == len(list((demo_dir / "duplicates").glob("*.png")))
    assert (
        f"search page: run `imgsearch up --data-dir {demo_dir} --web --weights random`, then open "
        "http://127.0.0.1:8080/?collection=demo"
    ) in result.stdout
    assert result.stdout.count("RANDOM weights") >= 2  # before the results and after them
    assert "rank" in result.stdout and grid.exists()


def test_the_demo_without_imagenet_weights_stops_and_names_the_way_out(tmp_path) -> None:
    result = imgsearch(
        "demo", "--data-dir", str(tmp_path / "demo"),
        env=offline_env(TORCH_HOME=str(tmp_path / "torch")),
    )  # fmt: skip
    assert result.returncode == 2
    assert "squeezenet1_1-b8a52dc0.pth" in result.stderr
    assert "--weights random" in result.stderr
    assert "Traceback" not in result.stderr
