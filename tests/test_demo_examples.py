"""Every example and suggested query the demos show, run through the running app on the default models, gets
the right answer; each demo's start names its steps; ``embedhub demo`` lists the demos.

Each demo is started once, as a user starts it (``python -m embedhub demo NAME --port P``, a subprocess with
an empty ``EMBEDHUB_HOME``, so the default model is assembled and the indexes are built as on a first run).
Its output is kept for the startup checks; the examples are read from the page's own configuration (the
samples of each ``gr.Examples``, the query boxes' placeholders), their image files fetched from the server,
and each is sent to the app's API with gradio_client. The right answers come from the examples' metadata:

- zero-shot: an example (image, labels) answers the class in its file name (``<class>_<row>.png``);
- retrieval, text -> images: each suggested query (``IMAGE_QUERIES``, query -> class): the first
  ``DEFAULT_K`` results are all images of that class (gallery ids are ``<class>_<row>.png`` too);
- retrieval, image -> images: each example image: the first ``DEFAULT_K`` results are all of its class;
- retrieval, text -> texts: each suggested query (``TEXT_QUERIES``, query -> sentence): that sentence first.
"""

from __future__ import annotations

import codecs
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
import httpx
from gradio_client import Client, handle_file

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION_TEST.is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
#: a first start on a loaded 2-core machine: the retrieval demo embeds 1,020 images and 3,000 sentences
START_TIMEOUT = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    """``python -m embedhub demo NAME`` in a subprocess: its URL once it listens, and its output so far."""

    def __init__(self, name: str, home: Path):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("EMBEDHUB_MODEL", "EMBEDHUB_TEXT_MODEL")}
        env.update(EMBEDHUB_HOME=str(home), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "embedhub", "demo", name, "--port", str(self.port)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.chunks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = f"http://127.0.0.1:{self.port}/"
        marker = f"demo running on {self.url}"
        deadline = time.monotonic() + START_TIMEOUT
        while marker not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"`embedhub demo {name}` did not start:\n{self.output[-3000:]}")
            time.sleep(0.5)

    def _read(self) -> None:
        """Whatever the demo writes, as soon as it is written (progress bars end their lines with \\r)."""
        fd, decoder = self.proc.stdout.fileno(), codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := os.read(fd, 65536):
            self.chunks.append(decoder.decode(chunk))

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def config(self) -> dict:
        return httpx.get(self.url + "config", timeout=60).json()

    def examples(self) -> list[dict]:
        """The ``gr.Examples`` of the page, in page order: their samples and the components they fill."""
        return [c["props"] for c in self.config()["components"] if c.get("type") == "dataset"]

    def fetch(self, file: dict, folder: Path) -> Path:
        """The example image the page shows, downloaded from the server under its own name."""
        path = folder / file["orig_name"]
        response = httpx.get(file["url"], timeout=60)
        response.raise_for_status()
        path.write_bytes(response.content)
        return path


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory):
    demo = Demo("zero-shot", tmp_path_factory.mktemp("home_zero_shot"))
    yield demo
    demo.stop()


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    demo = Demo("retrieval", tmp_path_factory.mktemp("home_retrieval"))
    yield demo
    demo.stop()


def item_class(item: str) -> str | None:
    from embedhub.demos._common import example_label

    return example_label(Path(item).name)


# ------------------------------------------------------------------------------ zero-shot
def test_every_zero_shot_example_gets_its_class(zero_shot, tmp_path):
    from embedhub.demos._common import FASHION_CLASSES, example_images

    (examples,) = zero_shot.examples()
    samples = examples["samples"]
    shown = sorted(s[0]["orig_name"] for s in samples)
    assert shown == sorted(p.name for p in example_images())  # every bundled example is on the page
    assert {item_class(name) for name in shown} == set(FASHION_CLASSES)  # each class, no image without one
    client = Client(zero_shot.url, verbose=False)
    wrong = []
    for image, labels in samples:
        answer = item_class(image["orig_name"])
        assert answer in [s.strip() for s in labels.split(",")]  # the example's labels hold its class
        out = client.predict(handle_file(str(zero_shot.fetch(image, tmp_path))), labels, "", api_name="/classify")
        if out["label"] != answer:
            wrong.append((image["orig_name"], out["label"], out["confidences"][0]["confidence"]))
    assert not wrong, wrong


def test_zero_shot_start_names_its_steps(zero_shot):
    out = zero_shot.output
    steps = ["assembling the default image model", "loading the model", "embedding the 10 default labels",
             "starting the web server", "zero-shot demo running on"]
    at = [out.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), out[-3000:]


# ------------------------------------------------------------------------------ retrieval
def text_boxes(config: dict) -> list[dict]:
    """The props of the two query boxes (text -> images, then text -> texts)."""
    return [c["props"] for c in config["components"]
            if c.get("type") == "textbox" and c["props"].get("label") == "Query"]


def test_every_suggested_image_query_finds_its_class(retrieval):
    from embedhub.demos.retrieval.app import DEFAULT_K, IMAGE_QUERIES, TEXT_QUERIES

    image_box, text_box = text_boxes(retrieval.config())
    shown = [s[0] for e in retrieval.examples() for s in e["samples"] if isinstance(s[0], str)]
    # every query the page suggests (examples and placeholders) is one with a known right answer
    assert set(shown) | {image_box["placeholder"], text_box["placeholder"]} == set(IMAGE_QUERIES) | set(TEXT_QUERIES)
    assert image_box["placeholder"] in IMAGE_QUERIES and text_box["placeholder"] in TEXT_QUERIES
    client = Client(retrieval.url, verbose=False)
    wrong = {}
    for query, expected in IMAGE_QUERIES.items():
        _, table = client.predict(query, DEFAULT_K, api_name="/search_images_by_text")
        got = [item_class(r[1]) for r in table["data"]]
        if got != [expected] * DEFAULT_K:
            wrong[query] = got
    assert not wrong, wrong


def test_every_suggested_text_query_finds_its_sentence(retrieval):
    from embedhub.demos.retrieval.app import DEFAULT_K, TEXT_QUERIES

    client = Client(retrieval.url, verbose=False)
    for query, expected in TEXT_QUERIES.items():
        table = client.predict(query, DEFAULT_K, api_name="/search_texts")
        assert table["data"][0][1] == expected, (query, table["data"][:3])


def test_every_retrieval_example_image_finds_its_class(retrieval, tmp_path):
    from embedhub.demos._common import example_images
    from embedhub.demos.retrieval.app import DEFAULT_K

    samples = [s[0] for e in retrieval.examples() for s in e["samples"] if isinstance(s[0], dict)]
    assert sorted(s["orig_name"] for s in samples) == sorted(p.name for p in example_images())
    client = Client(retrieval.url, verbose=False)
    wrong = {}
    for image in samples:
        expected = item_class(image["orig_name"])
        _, table = client.predict(handle_file(str(retrieval.fetch(image, tmp_path))), DEFAULT_K,
                                  api_name="/search_images_by_image")
        got = [item_class(r[1]) for r in table["data"]]
        if got != [expected] * DEFAULT_K:
            wrong[image["orig_name"]] = got
    assert not wrong, wrong


def test_retrieval_start_names_its_steps(retrieval):
    from embedhub.demos._common import example_images
    from embedhub.demos.retrieval.app import FASHION_GALLERY, read_texts

    out = retrieval.output
    images, texts = FASHION_GALLERY + len(example_images()), len(read_texts())
    steps = ["loading the image model", "loading the text model",
             f"reading the gallery's {FASHION_GALLERY:,} Fashion-MNIST test images",
             f"building the index of {images:,} items", "embedding images: 100%",
             f"text collection ({texts:,} sentences): building the index of {texts:,} items", "embedding text: 100%",
             "starting the web server", "retrieval demo running on"]
    at = [out.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), out[-3000:]


# ------------------------------------------------------------------------------ the command
def test_embedhub_demo_alone_lists_the_demos():
    from embedhub.demos.cli import DEMOS

    out = subprocess.run([sys.executable, "-m", "embedhub", "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in DEMOS:
        line = next(line for line in lines if line.startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 20  # the name and one line on what it does
