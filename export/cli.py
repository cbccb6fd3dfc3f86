"""``embedhub export MODEL --output DIR``: registered on the embedhub CLI through the
``embedhub.commands`` entry point; also ``python -m export`` from a checkout."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (parity-gated) for backend='onnx'",
        description="Export every tower of MODEL to ONNX with pooling and projection inside the graph "
        "(normalisation stays in encode, so normalize=False works on both backends), check ONNX Runtime "
        "against torch on real inputs, and write DIR only when the gate passes (fp32: min cosine >= 0.99999; "
        "fp16: >= 0.999; int8: mean >= 0.99 and min >= 0.97; and embedding lengths within 0.1% / 1% / 10%). "
        "The SHA-256 of every graph and weights file is recorded and checked at load. DIR holds what "
        "--backend onnx needs; --keep-torch also keeps a torch copy of the weights (backend='torch' on DIR). "
        "Progress bars (int8 calibration, parity gate) go to stderr; --quiet silences them and the step lines.",
    )
    p.add_argument("model", help="model name, Hub repo id or folder (anything embedhub.load takes)")
    p.add_argument("--output", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="graph precision (default fp32)")
    p.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 for CPU (from fp32)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-optimize", action="store_true", help="skip onnxruntime's transformer fusions")
    torch_copy = p.add_mutually_exclusive_group()
    torch_copy.add_argument("--keep-torch", action="store_true",
                            help="also keep a torch copy of the weights in DIR, so backend='torch' loads DIR too "
                            "(default: only what backend='onnx' needs)")
    torch_copy.add_argument("--no-torch-weights", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--quiet", action="store_true", help="print nothing but errors: no step lines, no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ._export import ParityError, export

    try:
        export(args.model, args.output, dtype=args.dtype, quantize=args.quantize, opset=args.opset,
               optimize=not args.no_optimize, keep_torch=args.keep_torch, verbose=not args.quiet)
    except ParityError as exc:
        print(f"embedhub export: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["export", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
