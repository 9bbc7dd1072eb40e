"""`imagefit predict`: top-k classes for image files or folders (`inference.predict_files`), as text, JSON or CSV."""

from __future__ import annotations

import json
import sys

from ..config import TTA_MODES
from ..errors import ImagefitError
from .common import add_json

NAME = "predict"


def add_arguments(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes for image files or folders")
    p.add_argument("--bundle", required=True, help="run folder, bundle.safetensors or an exported .onnx file")
    p.add_argument("paths", nargs="+", help="image files or folders of images")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable files instead of stopping")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the bundle's; none is "
                                                    "fastest)")
    p.add_argument("--backend", choices=("auto", "onnx", "pytorch"), default="auto",
                   help="auto: ONNX Runtime when the run folder holds an export of this bundle, else PyTorch")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    add_json(p)


def run(args) -> dict:
    from ..deploy.inference import image_files, load_predictor, predict_files
    if args.top_k < 1:
        raise ImagefitError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.batch_size < 1:
        raise ImagefitError(f"--batch-size must be at least 1 (got {args.batch_size})")
    predictor = load_predictor(args.bundle, args.backend)
    results = predict_files(predictor, image_files(args.paths), top_k=args.top_k, tta=args.tta,
                            batch_size=args.batch_size, skip_bad=args.skip_bad_images, progress=sys.stderr.isatty())
    if not args.json:
        _print(results, args.format, min(args.top_k, len(predictor.classes)))
    return {"predictions": results, "n": len(results), "bundle": str(args.bundle), "backend": predictor.backend}


def _print(results: list[dict], fmt: str, k: int) -> None:
    if fmt == "json":
        print(json.dumps(results, indent=1))
    elif fmt == "csv":
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(["file"] + [f"{kind}{j + 1}" for j in range(k) for kind in ("class", "probability")])
        for r in results:
            writer.writerow([r["file"]] + [v for t in r["top"] for v in (t["class"], t["probability"])])
    else:
        for r in results:
            print(f"{r['file']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
