"""`imagefit models`: the model registry with parameter counts."""

from __future__ import annotations

from .common import add_json

NAME = "models"


def add_arguments(sub) -> None:
    p = sub.add_parser("models", help="list the model registry with parameter counts (10 classes)")
    add_json(p)


def run(args) -> dict:
    from ..config import ModelConfig
    from ..models import REGISTRY, count_params, create_model
    rows = {name: {"parameters": count_params(create_model(10, ModelConfig(model=name))),
                   "options": sorted(REGISTRY[name].options), "pretrained": sorted(REGISTRY[name].pretrained)}
            for name in sorted(REGISTRY)}
    if not args.json:
        print(f"{'model':<13} {'parameters':>12}  {'input':<18} {'its own options':<40} pretrained weights")
        for name, r in rows.items():
            options = ", ".join("--" + o.replace("_", "-") for o in r["options"]) or "-"
            print(f"{name:<13} {r['parameters']:>12,}  {'--size (any, 32)':<18} {options:<40} "
                  f"{', '.join(r['pretrained']) or '-'}")
        print("parameters for 10 classes; every model takes any --size (default 32 px): the pooling before the head "
              "adapts; options beside those: --dropout, --max-params, --pretrained, --init-from, --freeze-body")
    return {"models": rows}
