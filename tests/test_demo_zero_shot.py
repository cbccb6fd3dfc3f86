"""The zero-shot demo (demos/zero_shot/app.py): one server per module on 127.0.0.1, driven with gradio_client.

- 200 Fashion-MNIST test images classified through the app get exactly the predictions of the SDK's own
  ``model.zero_shot`` on the same images, with the offline default LiT model.
- Every bad input gives a readable error through the running app, and the server keeps answering.
- 50 concurrent requests give the sequential results; concurrent ``encode`` calls on one shared model
  (torch, and ONNX Runtime on an exported copy) give the sequential embeddings.
- Label embeddings are cached: a request with a label set seen before runs no text forward.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
import httpx
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import embedhub

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "demos" / "zero_shot"
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION_TEST.is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
N_ACCURACY = 200
N_CONCURRENT = 50
#: gradio_client's own timeouts (5 s for an upload) are sized for an idle server; tens of uploads at once
#: queue behind each other on a loaded 2-core machine, so the test clients wait up to 10 minutes a request
PATIENT = {"timeout": httpx.Timeout(600.0)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict(client: Client, image: str | None, labels: str, templates: str = "") -> dict[str, float]:
    """``/classify`` through the app, as ``{label: probability}`` in the app's (ranked) order."""
    out = client.predict(None if image is None else handle_file(image), labels, templates, api_name="/classify")
    return {c["label"]: c["confidence"] for c in out["confidences"]}


@pytest.fixture(scope="module")
def lit_path() -> Path:
    from embedhub.demos._default import default_image_model

    return default_image_model()


@pytest.fixture(scope="module")
def lit(lit_path):
    """The default model loaded on its own, independently of the app's shared object."""
    return embedhub.load(lit_path, device="cpu")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The first 250 Fashion-MNIST test images: PIL images, labels, class names and the same images as PNG files."""
    from embedhub.demos._common import fashion_mnist_test

    images, labels, classes = fashion_mnist_test(N_ACCURACY + N_CONCURRENT)
    folder = tmp_path_factory.mktemp("fashion_png")
    paths = []
    for i, img in enumerate(images):
        paths.append(str(folder / f"{i:03d}.png"))
        img.save(paths[-1])
    return images, labels, list(classes), paths


@pytest.fixture(scope="module")
def server(lit_path):
    from embedhub.demos.zero_shot import app

    demo = app.launch(model=str(lit_path), host="127.0.0.1", port=free_port(), prevent_thread_lock=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.local_url, verbose=False, httpx_kwargs=PATIENT)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, fashion) -> dict[str, str]:
    """Real files of each bad kind: text named .png, a truncated PNG, a 100-megapixel PNG (compresses to ~100 KB)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad_images")
    text = folder / "notes.png"
    text.write_text("a pair of trousers, not an image\n" * 20)
    png = Path(fashion[3][0]).read_bytes()
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(png[: len(png) // 2])
    huge = folder / "huge.png"
    Image.new("L", (10_000, 10_000), 128).save(huge)
    return {"text": str(text), "corrupt": str(corrupt), "huge": str(huge), "good": fashion[3][0]}


@pytest.fixture(scope="module")
def lit_onnx(tmp_path_factory, lit_path) -> Path:
    """The default model exported to ONNX (fp32, parity-gated by the exporter)."""
    pytest.importorskip("onnxruntime")
    from embedhub.export import export

    return export(lit_path, tmp_path_factory.mktemp("lit_onnx") / "model", verbose=False)


# ------------------------------------------------------------------------------ accuracy
def test_accuracy_through_the_app_equals_the_sdk_zero_shot(client, lit, fashion):
    images, labels, classes, paths = fashion
    jobs = [client.submit(handle_file(p), ", ".join(classes), "", api_name="/classify") for p in paths[:N_ACCURACY]]
    results = [{c["label"]: c["confidence"] for c in job.result(timeout=600)["confidences"]} for job in jobs]
    app_probs = np.array([[r[c] for c in classes] for r in results])

    sdk_probs = lit.zero_shot(images[:N_ACCURACY], classes)    # the model's own templates, as the app's default
    assert app_probs.shape == sdk_probs.shape == (N_ACCURACY, len(classes))
    assert np.array_equal(app_probs.argmax(1), sdk_probs.argmax(1))
    np.testing.assert_allclose(app_probs, sdk_probs, atol=1e-5)
    # the app ranks the labels, most probable first
    assert all(list(r.values()) == sorted(r.values(), reverse=True) for r in results)
    accuracy = float((app_probs.argmax(1) == labels[:N_ACCURACY]).mean())
    print(f"zero-shot top-1 through the app on {N_ACCURACY} Fashion-MNIST test images: {accuracy:.1%} "
          f"(SDK zero_shot: {float((sdk_probs.argmax(1) == labels[:N_ACCURACY]).mean()):.1%})")
    assert accuracy > 0.75  # the shipped model measures ~89% on all 10k test images


def test_templates_from_the_textbox_are_used(client, lit, fashion):
    images, _, classes, paths = fashion
    templates = ["a photo of a {}.", "a black and white photo of a {}."]
    got = predict(client, paths[0], ", ".join(classes), "\n".join(templates) + "\n\n")
    want = lit.zero_shot(images[0], classes, templates=templates)
    np.testing.assert_allclose([got[c] for c in classes], want, atol=1e-5)


# ------------------------------------------------------------------------------ caching
def test_a_label_set_seen_before_costs_one_image_forward(client, server, lit_path, fashion, monkeypatch):
    from embedhub.demos._common import load_model

    shared = load_model(str(lit_path))  # the object the app serves with
    calls = {"text": 0, "image": 0}
    for kind in calls:
        original = getattr(shared, f"encode_{kind}")

        def counted(*args, _original=original, _kind=kind, **kwargs):
            calls[_kind] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(shared, f"encode_{kind}", counted)
    labels = "a sandal, a sneaker, a handbag"  # a label set no other test uses
    first = predict(client, fashion[3][5], labels)
    assert calls == {"text": 1, "image": 1}
    second = predict(client, fashion[3][6], labels)
    predict(client, fashion[3][5], labels)
    assert calls == {"text": 1, "image": 3}
    assert list(first) != [] and set(first) == set(second) == {"a sandal", "a sneaker", "a handbag"}
    predict(client, fashion[3][5], labels + ", a coat")  # another label set: one text pass
    assert calls == {"text": 2, "image": 4}


# ------------------------------------------------------------------------------ bad input
LABELS = "t-shirt, trouser, sneaker"
BAD_INPUTS = {
    "no image": (None, LABELS, "", "no image"),
    "non-image file": ("text", LABELS, "", "is not an image"),
    "corrupt file": ("corrupt", LABELS, "", "corrupt or truncated image"),
    "100-megapixel image": ("huge", LABELS, "", "100.0 megapixels, over the 40 megapixel limit"),
    "empty label list": ("good", " ,  , ", "", "no labels"),
    "200 labels": ("good", ", ".join(f"class {i}" for i in range(200)), "", "200 labels given; at most 100"),
    "101 labels": ("good", ", ".join(f"class {i}" for i in range(101)), "", "101 labels given; at most 100"),
    "template without {}": ("good", LABELS, "a photo of a {}.\na photo of a thing", "has no {}"),
    "template with two fields": ("good", LABELS, "a {} next to a {}", "2 replacement fields"),
    "template with a named field": ("good", LABELS, "a photo of a {label}", "has the field {label}"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_readable_error_and_the_server_keeps_answering(client, bad_files, case):
    image, labels, templates, message = BAD_INPUTS[case]
    with pytest.raises(AppError) as err:
        predict(client, None if image is None else bad_files[image], labels, templates)
    assert message in str(err.value)
    assert "Traceback" not in str(err.value) and "File \"" not in str(err.value)
    ok = predict(client, bad_files["good"], LABELS)
    assert set(ok) == {"t-shirt", "trouser", "sneaker"} and abs(sum(ok.values()) - 1) < 1e-5


def test_100_labels_are_accepted(client, bad_files):
    labels = [f"class {i}" for i in range(100)]
    got = predict(client, bad_files["good"], ", ".join(labels))
    assert sorted(got) == sorted(labels) and abs(sum(got.values()) - 1) < 1e-4


def test_unknown_model_and_text_only_model_are_readable_errors(server, bad_files, minilm_path):
    # its own session: a failed load keeps the session's model
    session = Client(server.local_url, verbose=False, httpx_kwargs=PATIENT)
    with pytest.raises(AppError, match="model 'no-such-model' not found"):
        session.predict("no-such-model", "torch", api_name="/load_model")
    with pytest.raises(AppError, match="embeds only text; zero-shot classification needs a model with a text and "
                                       "an image tower"):
        session.predict(str(minilm_path), "torch", api_name="/load_model")
    with pytest.raises(AppError, match="no model name"):
        session.predict("  ", "torch", api_name="/load_model")
    assert set(predict(session, bad_files["good"], LABELS)) == {"t-shirt", "trouser", "sneaker"}


def test_uploads_over_the_size_limit_are_refused_by_the_server(server, client, bad_files):
    from embedhub.demos._common import MAX_UPLOAD_BYTES

    # straight to the upload route: gradio_client would refuse the file itself before sending it
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD_BYTES + 1024)
    response = httpx.post(f"{server.local_url}gradio_api/upload", files={"files": ("big.png", big, "image/png")},
                          timeout=60)
    assert response.status_code == 413, response.text[:300]
    assert "maximum" in response.text.lower() or "too large" in response.text.lower()
    assert set(predict(client, bad_files["good"], LABELS)) == {"t-shirt", "trouser", "sneaker"}


# ------------------------------------------------------------------------------ concurrency
def test_50_concurrent_requests_give_the_sequential_results(client, lit, fashion):
    images, _, classes, paths = fashion
    batch = paths[N_ACCURACY:N_ACCURACY + N_CONCURRENT]
    labels = ", ".join(classes)
    sequential = [predict(client, p, labels) for p in batch]

    start = threading.Barrier(N_CONCURRENT)

    def one(path: str) -> dict[str, float]:
        start.wait(timeout=600)
        return predict(client, path, labels)

    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        concurrent = list(pool.map(one, batch))
    assert len(concurrent) == N_CONCURRENT
    for seq, conc in zip(sequential, concurrent):
        assert list(seq) == list(conc)
        np.testing.assert_allclose(list(conc.values()), list(seq.values()), atol=1e-6)
    sdk = lit.zero_shot(images[N_ACCURACY:N_ACCURACY + N_CONCURRENT], classes).argmax(1)
    assert [classes.index(next(iter(r))) for r in concurrent] == sdk.tolist()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_concurrent_encode_on_one_shared_model_equals_sequential(backend, lit_path, fashion, request):
    folder = request.getfixturevalue("lit_onnx") if backend == "onnx" else lit_path
    model = embedhub.load(folder, backend=backend, device="cpu")
    assert model.backend == backend
    images, _, classes, _ = fashion
    # each thread its own inputs: 12 images and 10 captions (distinct texts of several lengths)
    work = [(images[12 * t:12 * t + 12], [f"a {'very ' * t}blurry photo of a {c}, item {t}" for c in classes])
            for t in range(8)]
    sequential = [(model.encode(imgs), model.encode(texts)) for imgs, texts in work]
    start = threading.Barrier(len(work))

    def run(job):
        imgs, texts = job
        start.wait(timeout=60)
        return [(model.encode(imgs), model.encode(texts)) for _ in range(3)]

    with ThreadPoolExecutor(len(work)) as pool:
        concurrent = list(pool.map(run, work))
    for (seq_img, seq_txt), repeats in zip(sequential, concurrent):
        for img, txt in repeats:
            assert np.abs(img - seq_img).max() <= 1e-6 and np.abs(txt - seq_txt).max() <= 1e-6


def test_onnx_backend_through_the_app(server, lit_path, lit_onnx, fashion):
    images, _, classes, paths = fashion
    session = Client(server.local_url, verbose=False, httpx_kwargs=PATIENT)
    status, _ = session.predict(str(lit_onnx), "onnx", api_name="/load_model")
    assert "on **onnx**" in status
    on_onnx = [predict(session, p, ", ".join(classes)) for p in paths[:20]]
    torch_model = embedhub.load(lit_path, device="cpu")
    want = torch_model.zero_shot(images[:20], classes)
    got = np.array([[r[c] for c in classes] for r in on_onnx])
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, atol=1e-3)
    # asking for onnx on a folder without ONNX graphs runs it on torch and says so
    status, _ = session.predict(str(lit_path), "onnx", api_name="/load_model")
    assert "on **torch**" in status


# ------------------------------------------------------------------------------ the Space
def test_space_files():
    import gradio
    from huggingface_hub import metadata_load

    meta = metadata_load(APP_DIR / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert (APP_DIR / meta["app_file"]).is_file() and meta["license"] == "apache-2.0" and meta["pinned"] is False
    assert all(meta.get(k) for k in ("title", "emoji", "colorFrom", "colorTo", "short_description"))
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    assert "models" not in meta  # no Hub id: the Space runs the offline default unless EMBEDHUB_MODEL is set
    reqs = [line.strip() for line in (APP_DIR / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert f"gradio=={gradio.__version__}" in reqs
    assert any(r.startswith("embedhub[") and "demo" in r.split("]")[0] for r in reqs)


def test_python_app_py_serves_as_a_space_does(lit_path, bad_files):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "EMBEDHUB_MODEL": str(lit_path)}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=APP_DIR, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if "zero-shot demo running on" in line:
                break
        assert f"zero-shot demo running on http://127.0.0.1:{port}/" in "".join(lines), "".join(lines)[-2000:]
        space = Client(f"http://127.0.0.1:{port}/", verbose=False, httpx_kwargs=PATIENT)
        got = predict(space, bad_files["good"], LABELS)
        assert set(got) == {"t-shirt", "trouser", "sneaker"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_inline_data_url_images_are_bounded_and_decoded_by_the_app(fashion):
    import base64

    import gradio as gr
    from embedhub.demos._common import MAX_UPLOAD_BYTES, read_image
    from embedhub.demos.zero_shot.app import ImageInput
    from gradio.data_classes import FileData

    component = ImageInput(type="filepath")
    png = Path(fashion[3][0]).read_bytes()
    path = component.preprocess(FileData(path="inline", url="data:image/png;base64," + base64.b64encode(png).decode()))
    assert Path(path).read_bytes() == png
    assert np.array_equal(np.asarray(read_image(path)), np.asarray(read_image(fashion[3][0])))
    with pytest.raises(gr.Error, match="larger than 20 MB"):
        component.preprocess(FileData(path="inline", url="data:image/png;base64," + "A" * (MAX_UPLOAD_BYTES * 2)))
    with pytest.raises(gr.Error, match="not valid base64"):
        component.preprocess(FileData(path="inline", url="data:image/png;base64,@@@"))
    # an uploaded file is handed over undecoded, as its path
    assert component.preprocess(FileData(path=fashion[3][1])) == fashion[3][1]
    assert component.preprocess(None) is None
