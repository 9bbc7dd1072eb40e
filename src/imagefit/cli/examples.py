"""Two or three examples at the end of each command's --help, and the formatter that shows every flag's default."""

from __future__ import annotations

import argparse

EXAMPLES = {
    "train": ["imagefit train --recipe fast --data DIR --out runs/fast",
              "imagefit train --data DIR --model resnet18 --epochs 30 --lr auto --out runs/r18",
              "imagefit train --data DIR --augment-policy trivial --cutmix 1.0 --ema 0.999 --out runs/aug",
              "imagefit train --resume runs/r18"],
    "find-lr": ["imagefit find-lr --data DIR --model resnet20 --out lr",
                "imagefit find-lr --recipe fast --data DIR --end-lr 100 --json"],
    "fine-tune": ["imagefit fine-tune --data DIR --model resnet18 --pretrained imagenet --epochs 3 --out ft",
                  "imagefit fine-tune --data DIR --init-from runs/r18 --sizes 16,32 --out ft2",
                  "imagefit fine-tune --resume --out ft2 --data DIR --init-from runs/r18 --sizes 16,32"],
    "features": ["imagefit features --data DIR --init-from runs/r18 --head svm",
                 "imagefit features --data DIR --model resnet18 --pretrained imagenet --head logistic"],
    "ensemble": ["imagefit ensemble --data DIR --recipe fast-small --members 5 --out runs/ens",
                 "imagefit ensemble --data DIR --recipe fast-small --kind bagging --members 3 --out runs/bag"],
    "report": ["imagefit report runs/fast", "imagefit report runs/fast --data DIR --top 32",
               "imagefit report runs/fast runs/aug --out compare-fast-aug"],
    "generate": ["imagefit generate train --data DIR --out gen --preset small",
                 "imagefit generate sample --model gen --per-class 500 --out syn"],
    "generate train": ["imagefit generate train --data DIR --out gen --preset small",
                       "imagefit generate train --data DIR --out gan --family gan",
                       "imagefit generate train --data DIR --out gen --preset small --steps 30000"],
    "generate sample": ["imagefit generate sample --model gen --per-class 500 --out syn",
                        "imagefit generate sample --model gen --per-class 50 --steps 25 --guidance 3 --out quick"],
    "generate vary": ["imagefit generate vary --model gen --data DIR --strength 0.3 --out var"],
    "generate eval": ["imagefit generate eval --model gen --data DIR --classifier runs/fast --cas",
                      "imagefit generate eval --model gen --data DIR --features classifier"],
    "evaluate": ["imagefit evaluate --bundle runs/fast --tta flip+crops",
                 "imagefit evaluate --bundle runs/a --bundle runs/b --vote soft --data DIR"],
    "calibrate": ["imagefit calibrate --bundle runs/r18", "imagefit calibrate --bundle runs/fast --split test"],
    "predict": ["imagefit predict --bundle runs/fast cat.png dog.jpg",
                "imagefit predict --bundle runs/fast photos/ --format csv --top-k 3"],
    "search": ["imagefit search --space benchmarks/spaces/fast.yaml --data DIR --trials 20 --out search",
               "imagefit search --out search --report"],
    "export": ["imagefit export --bundle runs/fast --data DIR",
               "imagefit export --bundle runs/fast --format mlflow --out model"],
    "serve": ["imagefit serve --bundle runs/fast --port 8000",
              "imagefit serve --bundle runs/fast --host 0.0.0.0 --workers 2 --log-level info"],
    "models": ["imagefit models", "imagefit models --json"],
}


class Help(argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with its default unless the text already says it (argparse's own
    ArgumentDefaultsHelpFormatter also prints it for flags whose default means nothing, like --out); the epilog of
    examples keeps its lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, argparse.SUPPRESS, False, True) and action.option_strings
        if shown and "default" not in text and not isinstance(action, argparse._VersionAction):
            value = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {value})"
        return text


def finish(parser: argparse.ArgumentParser, name: str = "") -> None:
    """Every (sub)command: the Help formatter and its examples."""
    parser.formatter_class = Help
    if name in EXAMPLES:
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                finish(sub, f"{name} {sub_name}".strip())
