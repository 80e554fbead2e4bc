"""The web page in real headless Chromium (Debian's, driven by Playwright): upload, count, masks."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_serving import API_KEY, Served, running_server
from fixtures_trainer import synthetic_photo
from PIL import Image

from bookcounter.settings import get_settings

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file() or shutil.which("chromedriver") is None:
        pytest.fail("Debian chromium is not installed: run `make setup` (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def test_page_counts_an_uploaded_photo_and_draws_its_masks(
    served_champion: Served, browser, tmp_path: Path, known_photo
) -> None:
    photo, _ = known_photo
    path = tmp_path / "shelf.png"
    photo.resize((384, 384), Image.Resampling.NEAREST).save(path)
    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served_champion.url}/")
    version = served_champion.app.state.slot.current.version
    page.wait_for_function(f"document.getElementById('model-version').textContent.includes('v{version}')")

    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    import httpx

    expected = httpx.post(
        f"{served_champion.url}/count", files={"image": ("s.png", path.read_bytes(), "image/png")}
    ).json()
    assert expected["count"] > 0
    assert page.inner_text("#count") == str(expected["count"])
    assert f"model v{version}" in page.inner_text("#details")
    # the masks layer has one tinted region per book, drawn where the API says it is
    tinted = page.evaluate(
        """(instances) => {
          const c = document.getElementById('masks'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          return instances.map(i => {
            const [x, y, w, h] = i.bbox, p = 4 * (Math.round(y + h / 2) * c.width + Math.round(x + w / 2));
            return d[p + 3];
          });
        }""",
        expected["instances"],
    )
    assert all(alpha > 0 for alpha in tinted), tinted
    # hovering over a book shows its confidence
    box = page.locator("#masks").bounding_box()
    x, y, w, h = expected["instances"][0]["bbox"]
    scale = box["width"] / 384
    page.mouse.move(box["x"] + (x + w / 2) * scale + 2, box["y"] + (y + h / 2) * scale + 8)
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    assert tip.inner_text() == f"book 1: {round(expected['instances'][0]['score'] * 100)}% confident"

    shot = get_settings().state_dir / "screenshots" / "serving_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors
    page.close()


def test_page_counts_several_photos_into_a_table_with_a_total_and_a_csv(
    served_champion: Served, browser, tmp_path: Path
) -> None:
    import csv

    import httpx

    paths = []
    for seed, books in [(21, 3), (22, 5)]:
        paths.append(tmp_path / f"shelf-{seed}.png")
        synthetic_photo(seed, books)[0].resize((192, 192), Image.Resampling.NEAREST).save(paths[-1])
    paths.insert(1, tmp_path / "broken.jpg")
    paths[1].write_bytes(b"this is not a photo")
    expected = [
        httpx.post(f"{served_champion.url}/count", files={"image": (p.name, p.read_bytes())}, timeout=60) for p in paths
    ]
    assert [r.status_code for r in expected] == [200, 400, 200]
    counts = [expected[0].json()["count"], None, expected[2].json()["count"]]

    page = browser.new_page(viewport={"width": 900, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served_champion.url}/")
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.wait_for_selector("#batch[data-done='true']", timeout=60_000)

    assert page.locator("#result").is_hidden()  # the one-photo view stays out of the way
    rows = page.locator("#batch-table tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).locator("td.name").inner_text() for i in range(3)] == [p.name for p in paths]
    assert [rows.nth(i).locator("td.books").inner_text() for i in range(3)] == [str(counts[0]), "-", str(counts[2])]
    assert "not an image" in rows.nth(1).locator("td.note").inner_text()
    assert rows.nth(1).get_attribute("class") == "failed"
    shown = page.evaluate("[...document.querySelectorAll('#batch-table img.thumb')].map(i => i.naturalWidth)")
    assert shown[0] == shown[2] == 192 and shown[1] == 0  # thumbnails of the photos; none for the bad file
    assert page.inner_text("#batch-total") == str(counts[0] + counts[2])
    assert (page.inner_text("#batch-done"), page.inner_text("#batch-photos")) == ("3", "3")
    assert "1 photo could not be counted" in page.inner_text("#batch-details")

    with page.expect_download() as download:
        page.click("#download-csv")
    with open(download.value.path(), newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["photo"], r["count"]) for r in table] == [
        (p.name, "" if c is None else str(c)) for p, c in zip(paths, counts)
    ]
    assert (
        "not an image" in table[1]["error"]
        and table[0]["model_version"] == served_champion.app.state.slot.current.version
    )

    page.set_input_files("#file-input", str(paths[0]))  # one photo again: the one-photo view as before
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    assert page.locator("#batch").is_hidden() and page.inner_text("#count") == str(counts[0])
    assert not errors, errors
    page.close()


def test_page_without_a_champion_says_how_to_train_one(settings, browser) -> None:
    from serving.app import create_app

    with running_server(create_app(settings)) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        page.wait_for_selector("#notice:not([hidden])")
        assert "bookcounter train" in page.inner_text("#notice")
        assert page.inner_text("#model-version") == "no model"
        page.close()


def test_page_opened_with_its_api_key_counts_a_photo(
    served_with_key: Served, browser, tmp_path: Path, known_photo
) -> None:
    photo, _ = known_photo
    path = tmp_path / "shelf.png"
    photo.save(path)
    page = browser.new_page()
    refused = page.goto(f"{served_with_key.url}/")
    assert refused.status == 401 and "?key=" in page.inner_text("body")
    page.goto(f"{served_with_key.url}/?key={API_KEY}")
    assert page.url == f"{served_with_key.url}/"  # the key is not left in the address bar
    version = served_with_key.app.state.slot.current.version
    page.wait_for_function(f"document.getElementById('model-version').textContent.includes('v{version}')")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    import httpx

    expected = httpx.post(
        f"{served_with_key.url}/count",
        content=path.read_bytes(),
        headers={"content-type": "image/png", "x-api-key": API_KEY},
        timeout=60,
    ).json()
    assert page.inner_text("#count") == str(expected["count"]) and page.locator("#error").is_hidden()
    page.close()
