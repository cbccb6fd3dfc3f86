"""The demos in a real browser: Debian's chromium driven by Playwright.

Each app is served on 127.0.0.1; the page is opened, an image is uploaded through the page's own file
input (or the first example is clicked), the button is clicked and the result is read from the page.
Screenshots go to ``tests/artifacts/`` (ignored by git); ``docs/screenshots/`` holds the two the docs show,
each demo after clicking its first example (refresh them with
``EMBEDHUB_SCREENSHOTS=docs/screenshots pytest tests/test_demo_browser.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)
if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"


def _screenshot(page, name: str, *, docs: bool = False) -> Path:
    """The page saved as ``tests/artifacts/<name>.png``; with ``docs``, also copied to
    ``$EMBEDHUB_SCREENSHOTS`` when that is set."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("EMBEDHUB_SCREENSHOTS")
    if keep and docs:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / f"{name}.png")
    assert path.stat().st_size > 10_000  # a rendered page, not an empty one
    return path


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def zero_shot_url():
    from embedhub.demos.zero_shot.app import launch

    demo = launch(host="127.0.0.1", port=None, prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def retrieval_url():
    from embedhub.demos.retrieval.app import launch

    demo = launch(host="127.0.0.1", port=None, prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


def test_zero_shot_page_classifies_an_uploaded_image(browser, zero_shot_url):
    from embedhub.demos._common import example_images, example_label

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(zero_shot_url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Classify").wait_for(timeout=60_000)  # the app has rendered
    sneaker = next(p for p in example_images() if example_label(p) == "sneaker")
    page.locator("input[type=file]").first.set_input_files(str(sneaker))
    page.get_by_role("button", name="Classify").click()
    # the ranked labels: the top one is shown as the Label component's heading
    top = page.locator("[data-testid='label-output-value']").first
    top.wait_for(timeout=60_000)
    page.wait_for_function("document.querySelector(\"[data-testid='label-output-value']\").innerText.length > 0",
                           timeout=60_000)
    assert top.inner_text().strip() == "sneaker"
    assert page.get_by_text("ankle boot").count() >= 1  # the other labels are listed with their bars
    _screenshot(page, "zero_shot_upload")
    page.close()


def test_zero_shot_page_shows_a_readable_error(browser, zero_shot_url, tmp_path):
    page = browser.new_page()
    page.goto(zero_shot_url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Classify").wait_for(timeout=60_000)
    page.get_by_role("button", name="Classify").click()  # no image
    toast = page.locator(".toast-body, [data-testid='toast-body']").first
    toast.wait_for(timeout=30_000)
    text = toast.inner_text()
    assert "image" in text.lower() and "Traceback" not in text
    page.close()


def test_retrieval_page_finds_images_for_a_text_query(browser, retrieval_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(retrieval_url, wait_until="domcontentloaded")
    page.get_by_label("Query").first.wait_for(timeout=60_000)
    page.get_by_label("Query").first.fill("a photo of a trouser.")
    page.get_by_role("button", name="Search").first.click()
    thumbs = page.locator("[data-testid='gallery'] img, .gallery img, button.thumbnail-item img")
    thumbs.first.wait_for(timeout=120_000)
    # gallery files are named <class>_<index>.png: the nearest images are trousers
    sources = [thumbs.nth(i).get_attribute("src") or "" for i in range(min(3, thumbs.count()))]
    assert sources and all("trouser_" in src for src in sources), sources
    _screenshot(page, "retrieval_text_query")
    page.close()


def test_zero_shot_first_example_shows_its_class(browser, zero_shot_url):
    from embedhub.demos.zero_shot.app import examples

    image, labels, answer = examples()[0]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(zero_shot_url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Classify").wait_for(timeout=60_000)
    first = page.locator("tr.tr-body").first  # the examples table: image and labels on each row
    first.wait_for(timeout=60_000)
    first.click()
    page.locator("[data-testid='image'] img, .image-container img").first.wait_for(timeout=60_000)
    playwright.expect(page.get_by_label("Labels (comma separated)")).to_have_value(labels, timeout=30_000)
    page.get_by_role("button", name="Classify").click()
    top = page.locator("[data-testid='label-output-value']").first
    page.wait_for_function("(document.querySelector(\"[data-testid='label-output-value']\") || {}).innerText",
                           timeout=120_000)
    assert top.inner_text().strip() == answer, (Path(image).name, top.inner_text())
    _screenshot(page, "zero_shot", docs=True)
    page.close()


def test_retrieval_first_example_shows_images_of_its_class(browser, retrieval_url):
    from embedhub.demos.retrieval.app import IMAGE_QUERIES

    query, expected = next(iter(IMAGE_QUERIES.items()))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(retrieval_url, wait_until="domcontentloaded")
    page.get_by_label("Query").first.wait_for(timeout=60_000)
    first = page.locator("button.gallery-item:visible").first  # the first tab's suggested queries
    playwright.expect(first).to_have_text(query, timeout=60_000)
    first.click()
    playwright.expect(page.get_by_label("Query").first).to_have_value(query, timeout=30_000)
    page.get_by_role("button", name="Search").first.click()
    thumbs = page.locator("[data-testid='gallery'] img, .gallery img, button.thumbnail-item img")
    thumbs.first.wait_for(timeout=120_000)
    # gallery files are named <class>_<index>.png: the nearest images are of the query's class
    sources = [thumbs.nth(i).get_attribute("src") or "" for i in range(min(5, thumbs.count()))]
    prefix = expected.replace(" ", "-") + "_"
    assert len(sources) == 5 and all(src.rsplit("/", 1)[-1].startswith(prefix) for src in sources), sources
    _screenshot(page, "retrieval", docs=True)
    page.close()
