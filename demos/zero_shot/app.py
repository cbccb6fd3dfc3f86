"""Zero-shot image classification with any two-tower embedhub model, as a Gradio app.

Upload, paste or pick an example image, type candidate labels (comma separated) and optional prompt
templates (one per line, each with one ``{}``), and see the labels ranked by probability. The label
embeddings are cached per (model, labels, templates), so a request costs one image forward.

Run it with ``embedhub demo zero-shot`` or ``python app.py`` (a Hugging Face Space runs the latter).
Named API endpoints: ``/classify`` (image, labels, templates) and ``/load_model`` (model, backend); the
latter loads a model only when the server listens on this machine alone (loopback, no share link) or the
operator turned it on (``--allow-model-loading``, ``EMBEDHUB_DEMO_ALLOW_MODEL_LOADING=1``).

>>> from embedhub.demos.zero_shot.app import build_app
>>> demo = build_app()                                  # doctest: +SKIP
>>> demo.launch()                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import string
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from embedhub.demos._common import (
    FASHION_CLASSES,
    MAX_UPLOAD_BYTES,
    DemoError,
    allow_model_loading,
    example_images,
    example_label,
    load_model,
    model_lock,
    read_image,
    resolve_model,
    save_data_url,
    say,
)

import embedhub
from embedhub.modules import average_templates, template_prompts

README = Path(__file__).with_name("README.md")
BACKENDS = ("torch", "onnx")
#: at most this many labels per request (each label is one text embedding per template)
MAX_LABELS = 100
#: at most this many templates per request
MAX_TEMPLATES = 20
#: a label or a template longer than this many characters is refused
MAX_ITEM_CHARS = 200
#: the labels or templates textbox holds at most this many characters
MAX_FIELD_CHARS = 20_000
#: label sets whose embeddings are kept (per model, labels and templates)
LABEL_CACHE_SIZE = 64
#: requests the queue runs at once; the model itself runs one forward at a time (see ``_Classifier``)
CONCURRENCY = 2
DEFAULT_LABELS = ", ".join(FASHION_CLASSES)
#: the label set each bundled example (a Fashion-MNIST test image) is shown with
EXAMPLE_LABELS = DEFAULT_LABELS
TEMPLATE_HELP = "one per line, each with one {} for the label"


# ------------------------------------------------------------------------------ input checks
def parse_labels(text: str | None) -> list[str]:
    """The comma-separated labels of ``text``: stripped, empty entries and repeats dropped, order kept.

    A ``DemoError`` when none is left, when there are more than ``MAX_LABELS``, or one is too long.

    >>> parse_labels("cat, dog,, cat ")
    ['cat', 'dog']
    """
    text = text or ""
    if len(text) > MAX_FIELD_CHARS:
        raise DemoError(f"the labels field holds {len(text):,} characters; at most {MAX_FIELD_CHARS:,} are accepted")
    labels = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not labels:
        raise DemoError("no labels: type the candidate labels, comma separated, e.g. 'cat, dog, bird'")
    if len(labels) > MAX_LABELS:
        raise DemoError(f"{len(labels)} labels given; at most {MAX_LABELS} are accepted per request")
    long = [s for s in labels if len(s) > MAX_ITEM_CHARS]
    if long:
        raise DemoError(f"label {long[0][:40]!r}... has {len(long[0])} characters; at most {MAX_ITEM_CHARS}")
    return labels


def parse_templates(text: str | None) -> list[str] | None:
    """The templates of ``text``, one per line (blank lines dropped); ``None`` when there are none
    (then the model's own templates apply). Each must hold exactly one ``{}`` and no other field.

    >>> parse_templates("a photo of a {}.\\n\\na drawing of a {}.")
    ['a photo of a {}.', 'a drawing of a {}.']
    >>> parse_templates("  ") is None
    True
    """
    text = text or ""
    if len(text) > MAX_FIELD_CHARS:
        raise DemoError(f"the templates field holds {len(text):,} characters; at most {MAX_FIELD_CHARS:,} are accepted")
    templates = list(dict.fromkeys(s.strip() for s in text.splitlines() if s.strip()))
    if not templates:
        return None
    if len(templates) > MAX_TEMPLATES:
        raise DemoError(f"{len(templates)} templates given; at most {MAX_TEMPLATES} are accepted")
    for t in templates:
        _check_template(t)
    return templates


def _check_template(template: str) -> None:
    if len(template) > MAX_ITEM_CHARS:
        raise DemoError(f"template {template[:40]!r}... has {len(template)} characters; at most {MAX_ITEM_CHARS}")
    expected = "exactly one {} where the label goes, e.g. 'a photo of a {}.' (write a literal brace as {{ or }})"
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise DemoError(f"template {template!r} is not valid ({exc}); it needs {expected}") from None
    if len(fields) != 1:
        found = "no {}" if not fields else f"{len(fields)} replacement fields"
        raise DemoError(f"template {template!r} has {found}; it needs {expected}")
    if fields[0] != "" or "{}" not in template:
        raise DemoError(f"template {template!r} has the field {{{fields[0]}}}; it needs {expected}")


def examples() -> list[tuple[str, str, str]]:
    """The bundled examples as ``(image file, labels, right answer)``: each Fashion-MNIST test image with the
    class names as labels (:data:`EXAMPLE_LABELS`) and its class (from its file name) as the answer the
    default model gives (``tests/test_demo_examples.py`` checks it through the running app).

    >>> examples()[0][1:]  # doctest: +SKIP
    ('t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot', 'ankle boot')
    """
    out = []
    for path in example_images():
        answer = example_label(path)
        if answer is not None and answer in parse_labels(EXAMPLE_LABELS):
            out.append((str(path), EXAMPLE_LABELS, answer))
    return out


# ------------------------------------------------------------------------------ the model side
def open_model(name: str, backend: str = "torch") -> tuple[embedhub.EmbeddingModel, str, str | None]:
    """The model ``name`` on ``backend`` (shared, from :func:`load_model`'s cache), the backend it
    runs on and a warning: asking for onnx where the model has no ONNX graphs loads it on torch
    and says so. A ``DemoError`` for an unknown backend or model, or a model without a text and
    an image tower.

    >>> model, backend, warning = open_model("./lit-fashion-mnist", "onnx")   # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise DemoError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")

    def two_towers(model: embedhub.EmbeddingModel) -> None:
        if not {"text", "image"} <= set(model.modalities):
            raise DemoError(f"model {name!r} embeds only {' and '.join(model.modalities)}; zero-shot classification "
                            "needs a model with a text and an image tower (CLIP-style)")

    warning = None
    if backend == "onnx":
        folder = Path(name).expanduser()
        no_graphs = folder.is_dir() and not any((folder / "onnx").glob("*.onnx"))
        try:
            if no_graphs:
                raise DemoError(f"the folder has no ONNX graphs ({folder / 'onnx'}/*.onnx)")
            model = load_model(name, "onnx", check=two_towers)
        except DemoError as exc:
            warning = (f"onnx backend unavailable for {name!r} ({exc}); running on torch. Export the model with "
                       f"`embedhub export {name} --output FOLDER` and load FOLDER with onnx.")
            backend = "torch"
    if backend == "torch":
        model = load_model(name, "torch", check=two_towers)
    return model, backend, warning


class _Classifier:
    """Ranks labels for one image with a shared model: label embeddings from an LRU cache keyed by
    (model, backend, labels, templates); one model forward at a time per model (a lock), so
    requests in the queue's worker threads never run the model concurrently."""

    def __init__(self, cache_size: int = LABEL_CACHE_SIZE):
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()

    def label_embeddings(self, name: str, backend: str, labels: list[str], templates: list[str] | None
                         ) -> torch.Tensor:
        """``(L, D)`` unit rows: each label's text embedding averaged over the templates (CLIP's ensemble)."""
        model, backend, _ = open_model(name, backend)
        templates = list(templates or model.templates)
        key = (name, backend, tuple(labels), tuple(templates))
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        prompts = template_prompts(labels, templates)
        with model_lock(model):
            text = model.encode_text(prompts, convert_to="torch", normalize=True)
        classes = average_templates(text, len(labels))
        with self._cache_lock:
            self._cache[key] = classes
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return classes

    def classify(self, name: str, backend: str, image: Any, labels: list[str], templates: list[str] | None
                 ) -> dict[str, float]:
        """``{label: probability}``, most probable first, as ``model.zero_shot`` gives them: ``softmax(logit_scale
        * cos)`` over the labels (CLIP), or ``sigmoid(logit_scale * cos + logit_bias)`` per label (SigLIP)."""
        model, backend, _ = open_model(name, backend)
        classes = self.label_embeddings(name, backend, labels, templates)
        with model_lock(model):
            img = model.encode_image(image, convert_to="torch", normalize=True)
        logits = (model.logit_scale or 100.0) * (classes @ img)
        bias = getattr(model, "logit_bias", None)
        probs = (torch.sigmoid(logits + bias) if bias is not None else torch.softmax(logits, dim=-1)).tolist()
        order = sorted(range(len(labels)), key=lambda i: -probs[i])
        return {labels[i]: float(probs[i]) for i in order}


CLASSIFIER = _Classifier()


# ------------------------------------------------------------------------------ the image input
class ImageInput(gr.Image):
    """``gr.Image`` that hands the function the uploaded file's path without decoding it: the
    app decodes it with :func:`read_image` (size-bounded, decompression-bomb-safe), so a non-image,
    corrupt or huge upload becomes a readable message instead of an exception in Gradio's code."""

    is_template = True  # rendered by the frontend's image component

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            return self._save_data_url(url)
        if payload.path is None:
            raise gr.Error("the image upload carried no file; upload it again", print_exception=False)
        return str(payload.path)

    def _save_data_url(self, url: str) -> str:
        try:
            return save_data_url(url, self.GRADIO_CACHE, what="inline image")
        except DemoError as exc:
            raise _fail(exc) from None


# ------------------------------------------------------------------------------ the app
def _fail(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def _status(name: str, backend: str, model: embedhub.EmbeddingModel) -> str:
    templates = " | ".join(model.templates)
    return (f"**Model** `{name}` on **{backend}**: {model.embed_dim}-d, logit scale "
            f"{model.logit_scale or 100.0:.1f}, templates: `{templates}`")


def _template_placeholder(model: embedhub.EmbeddingModel) -> str:
    return "empty: the model's own templates:\n" + "\n".join(model.templates)


def classify(image: str | None, labels: str, templates: str, session: tuple[str, str]) -> dict[str, float]:
    """The API endpoint ``/classify``: ``{label: probability}`` for ``image`` (a file), the comma-separated
    ``labels`` and the optional ``templates`` (one per line), with the session's model."""
    if image is None:
        raise gr.Error("no image: upload one, paste one, or click an example below", print_exception=False)
    try:
        label_list = parse_labels(labels)
        template_list = parse_templates(templates)
        pil = read_image(image)
        return CLASSIFIER.classify(session[0], session[1], pil, label_list, template_list)
    except DemoError as exc:
        raise _fail(exc) from None
    except embedhub.EmbedhubError as exc:  # the model refused the input (e.g. a corrupt image)
        raise _fail(exc) from None


MODEL_LOADING_OFF = ("loading another model is turned off on this server (it is not on this machine alone); "
                     "its operator can turn it on with --allow-model-loading or EMBEDHUB_DEMO_ALLOW_MODEL_LOADING=1")


def load(name: str, backend: str) -> tuple[tuple[str, str], str, Any]:
    """The API endpoint ``/load_model`` (where model loading is on): make ``name`` on ``backend`` the model of
    this browser tab's Gradio state. Only models that load and have both towers are kept (an LRU of
    ``MODEL_CACHE_SIZE``); errors name the model, never a folder's contents."""
    if not isinstance(name, str) or not isinstance(backend, str):
        raise gr.Error("the model name and the backend must be text", print_exception=False)
    name = name.strip()
    if not name:
        raise gr.Error("no model name: type an alias, a folder or a Hub id (org/name[@revision])",
                       print_exception=False)
    try:
        model, used, warning = open_model(name, backend)
        CLASSIFIER.label_embeddings(name, used, parse_labels(DEFAULT_LABELS), None)
    except DemoError as exc:
        raise _fail(exc) from None
    if warning:
        gr.Warning(warning)
    return (name, used), _status(name, used, model), gr.update(placeholder=_template_placeholder(model))


def refuse_load(name: str, backend: str) -> Any:
    """``/load_model`` where model loading is off: a readable refusal, nothing loaded or looked at."""
    raise gr.Error(MODEL_LOADING_OFF, print_exception=False)


def _allow(host: str, share: bool, allow: bool | None) -> bool:
    return allow_model_loading(host, share, allow)


def build_app(model: str | None = None, backend: str = "torch", *, model_loading: bool | None = None) -> gr.Blocks:
    """The zero-shot app on ``model`` (else ``$EMBEDHUB_MODEL``, else the README's ``models:``, else the
    offline default LiT model) and ``backend``; the model is loaded and the default labels embedded
    here, so the first request is fast. A ``DemoError`` for a model that cannot be used.

    ``model_loading`` turns on the model box and ``/load_model`` (loading any folder, alias or Hub id this
    machine can reach); default: ``$EMBEDHUB_DEMO_ALLOW_MODEL_LOADING``, else off (:func:`launch` turns it
    on for a loopback server). Off, ``/load_model`` answers with a refusal and loads nothing.

    >>> demo = build_app("./lit-fashion-mnist")   # doctest: +SKIP
    """
    model_loading = allow_model_loading("", allow=model_loading)  # no host here: off unless asked or set
    name = resolve_model(model, kind="image", readme=README)
    say(f"loading the model {name} ({backend})", "zero-shot")
    loaded, used, warning = open_model(name, backend)
    if warning:
        say(f"warning: {warning}", "zero-shot")
    labels_now = parse_labels(DEFAULT_LABELS)
    say(f"embedding the {len(labels_now)} default labels with {len(loaded.templates)} templates", "zero-shot")
    CLASSIFIER.label_embeddings(name, used, labels_now, None)
    shown = [[path, labels_text] for path, labels_text, _ in examples()]

    with gr.Blocks(title="embedhub zero-shot", delete_cache=(900, 1800)) as demo:
        gr.Markdown("# Zero-shot image classification\nUpload or paste an image (or click an example), "
                    "list the candidate labels and see them ranked. Runs on "
                    "[embedhub](https://pypi.org/project/embedhub/) models with a text and an image tower.")
        session = gr.State((name, used))
        with gr.Row():
            with gr.Column():
                image = ImageInput(label="Image", type="filepath", sources=["upload", "clipboard"], height=320)
                labels = gr.Textbox(label="Labels (comma separated)", value=DEFAULT_LABELS, lines=2,
                                    max_length=MAX_FIELD_CHARS)
                templates = gr.Textbox(label=f"Templates ({TEMPLATE_HELP}; optional)", value="", lines=3,
                                       placeholder=_template_placeholder(loaded), max_length=MAX_FIELD_CHARS)
                button = gr.Button("Classify", variant="primary")
            with gr.Column():
                result = gr.Label(label="Labels ranked by probability")
        if shown:
            gr.Examples(examples=shown, inputs=[image, labels], examples_per_page=10,
                        label="Examples (Fashion-MNIST test images, with the ten class names as labels)")
        with gr.Accordion("Model", open=False):
            with gr.Row(visible=model_loading):
                model_box = gr.Textbox(label="Model (alias, folder or Hub id[@revision])", value=name, scale=4)
                backend_box = gr.Radio(list(BACKENDS), value=used, label="Backend", scale=1)
                load_button = gr.Button("Load", scale=1)
            status = gr.Markdown(_status(name, used, loaded), label="Model status")
        button.click(classify, inputs=[image, labels, templates, session], outputs=result, api_name="classify")
        load_button.click(load if model_loading else refuse_load, inputs=[model_box, backend_box],
                          outputs=[session, status, templates], api_name="load_model", concurrency_limit=1,
                          concurrency_id="load_model")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    return demo


def launch(
    model: str | None = None,
    backend: str = "torch",
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    *,
    allow_model_loading: bool | None = None,
    prevent_thread_lock: bool = False,
) -> gr.Blocks:
    """Build the app and serve it on ``host:port``, uploads bounded to ``MAX_UPLOAD_BYTES``; prints the
    local URL. With ``prevent_thread_lock=True`` it returns at once (the server runs in a thread).

    ``/load_model`` loads models when ``allow_model_loading`` is true (``--allow-model-loading``); by default
    (``None``) when ``$EMBEDHUB_DEMO_ALLOW_MODEL_LOADING`` says so, else only on a loopback ``host`` without
    ``share`` and off a Hugging Face Space.

    >>> launch(port=7860)   # doctest: +SKIP
    """
    demo = build_app(model, backend, model_loading=_allow(host, share, allow_model_loading))
    say("starting the web server", "zero-shot")
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES,
                prevent_thread_lock=True, quiet=True, footer_links=["api", "gradio"])
    print(f"zero-shot demo running on {demo.local_url}" + (f" (public: {demo.share_url})" if demo.share_url else ""),
          flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


if __name__ == "__main__":
    # a Hugging Face Space sets GRADIO_SERVER_NAME (0.0.0.0) and GRADIO_SERVER_PORT
    launch(host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None)
