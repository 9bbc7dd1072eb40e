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
    rows = {name: count_params(create_model(10, ModelConfig(model=name))) for name in sorted(REGISTRY)}
    if not args.json:
        for name, n in rows.items():
            print(f"{name:>10} {n:>12,} parameters")
    return {"models": rows}
