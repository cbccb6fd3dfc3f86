"""``embedhub demo zero-shot|retrieval`` (registered through ``embedhub.commands``): launch a demo locally;
``embedhub demo`` alone lists the demos.
"""

from __future__ import annotations

import argparse
import importlib

DEMOS = {"zero-shot": "zero_shot", "retrieval": "retrieval"}
#: what each demo does, one line (``embedhub demo`` lists them)
DESCRIPTIONS = {
    "zero-shot": "rank the labels you type for an uploaded image (CLIP-style zero-shot classification)",
    "retrieval": "search a gallery of images by text or by image, and 3,000 sentences by meaning",
}


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {port}")
    return port


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="launch a Gradio demo (zero-shot, retrieval) in the browser",
                       description="Launch a demo on a local web server and print its URL. The model is --model, "
                       "else $EMBEDHUB_MODEL, else the offline default (the LiT model on Fashion-MNIST for images, "
                       "all-MiniLM-L6-v2 for text). With no demo named, list the demos.")
    p.add_argument("demo", nargs="?", choices=sorted(DEMOS), help="the demo to launch; none: list the demos")
    p.add_argument("--model", default=None, help="any name embedhub.load takes (alias, folder, Hub id[@revision])")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx needs a model folder with ONNX graphs (`embedhub export`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--allow-model-loading", action="store_true", default=None,
                   help="zero-shot: let page visitors load other models (any folder, alias or Hub id this machine "
                   "reaches) even when --host is not a loopback address or --share is on; without it model "
                   "loading is on for a loopback host only (or as $EMBEDHUB_DEMO_ALLOW_MODEL_LOADING=1|0 says)")
    p.set_defaults(func=run)
    return p


def list_demos() -> str:
    """The demos, one line each: name and what it does.

    >>> print(list_demos().splitlines()[0])
    zero-shot  rank the labels you type for an uploaded image (CLIP-style zero-shot classification)
    """
    width = max(map(len, DEMOS))
    return "\n".join(f"{name:<{width}}  {DESCRIPTIONS[name]}" for name in DEMOS)


def run(args: argparse.Namespace) -> int:
    if args.demo is None:
        print(list_demos())
        print("\nlaunch one with: embedhub demo NAME [--model MODEL] [--port PORT]  (embedhub demo -h for all options)")
        return 0
    from embedhub.errors import require

    require("gradio", "demo", "a Gradio demo")
    app = importlib.import_module(f"{__package__}.{DEMOS[args.demo]}.app")
    extra = {"allow_model_loading": args.allow_model_loading} if args.demo == "zero-shot" else {}
    app.launch(model=args.model, backend=args.backend, host=args.host, port=args.port, share=args.share, **extra)
    return 0
