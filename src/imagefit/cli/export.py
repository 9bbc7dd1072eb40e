"""`imagefit export`: a bundle to ONNX or TorchScript, checked for parity (`export.export`)."""

from __future__ import annotations

from .common import add_json

NAME = "export"


def add_arguments(sub) -> None:
    p = sub.add_parser("export", help="export a bundle to ONNX or TorchScript (checked for parity on real images)")
    p.add_argument("--bundle", required=True, help="run folder or bundle.safetensors")
    p.add_argument("--format", choices=("onnx", "torchscript", "mlflow"), default="onnx",
                   help="onnx, torchscript, or mlflow (a pyfunc model folder for mlflow models serve and the model "
                        "registry; default: onnx)")
    p.add_argument("--out", help="output file (default: model.onnx / model.torchscript.pt beside the bundle, where "
                                 "predict and serve find it)")
    p.add_argument("--data", help="data folder for the parity images (default: the bundle's)")
    p.add_argument("--parity-images", type=int, default=64, help="real images the parity check runs on "
                                                                 "(default: 64)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: ONNX Runtime's static quantization (activation ranges from 512 training images), "
                        "written to model.int8.onnx and kept only if it names the bundle's class on 97%% of the "
                        "parity images; faster on CPUs with VNNI (default: none)")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not an earlier export "
                                                        "(never a bundle or checkpoint)")
    add_json(p)


def run(args) -> dict:
    from ..deploy.export import export
    r = export(args.bundle, args.format, args.out, args.data, args.parity_images, force=args.force,
               quantize=args.quantize)
    if not args.json and r.get("quantize"):
        print(f"{r['export']} ({r['bytes'] / 1e6:.1f} MB, int8); on {r['parity_images']} real images it names the "
              f"bundle's class on {100 * r['agreement']:.1f}%, probabilities within {r['max_probability_diff']:.3f}")
    elif not args.json:
        print(f"{r['export']} ({r['bytes'] / 1e6:.1f} MB); parity on {r['parity_images']} real images: max |"
              f"difference| from the bundle {r['parity_max_abs_diff']:.1e}")
    return r
