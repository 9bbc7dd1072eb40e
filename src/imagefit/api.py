"""The public Python API: what the `imagefit` commands do, for notebooks and scripts. The CLI is a client of it.

    import imagefit
    run = imagefit.train(recipe="fast", data="DIR", out="runs/a", epochs=6, tracking_uri="none")
    model = imagefit.load("runs/a")                  # the bundle: classes, preprocessing, metrics
    model.predict(["cat.png", pil_image, array])     # top-k classes per image
    model.evaluate("DIR", tta="flip")                # the figures of `imagefit evaluate`
    imagefit.find_lr(data="DIR", model="resnet20")   # the range test's result

Options are the config's fields by name, as the command line's flags without the dashes (`epochs=6`,
`weight_decay=5e-4`, `data="DIR"`); a recipe is the same defaults-then-recipe-then-options chain as `--recipe`.
Bad options raise `ImagefitError` with the one-line message the CLI prints. Heavy modules are imported only
when a function needs them, so `import imagefit` is quick.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Config, all_fields, check_fixed, coerce, load_recipe
from .errors import ImagefitError


def make_config(recipe: str | None = None, *, where: str = "options", **options: Any) -> Config:
    """A validated config: the defaults, then `recipe` (a name or a YAML path), then `options` by field name."""
    sections = {f.name: section for section, f in all_fields()}
    for name in options:
        if name not in sections:
            near = difflib.get_close_matches(name, list(sections), n=3, cutoff=0.5)
            raise ImagefitError(f"{where}: unknown option '{name}'"
                                + (f"; did you mean {', '.join(near)}?" if near else "; see imagefit train --help"))
    cfg = Config()
    if recipe:
        tree = load_recipe(recipe)
        cfg.update(tree, where=f"recipe {recipe}")
        check_fixed(recipe, tree, {name: coerce(getattr(cfg, sections[name]), name, value, where)
                                   for name, value in options.items()})
    for name, value in options.items():
        target = getattr(cfg, sections[name])
        setattr(target, name, coerce(target, name, value, where))
    from .models import check_options
    check_options(cfg.validate().model)
    return cfg


def default_out(name: str) -> Path:
    """Where a run goes when no folder is given: runs/NAME-TIMESTAMP."""
    return Path(f"runs/{name}-{datetime.now():%Y%m%d-%H%M%S}")


@dataclass
class Run:
    """A finished (or interrupted) training run: its folder and the figures `imagefit train --json` prints."""
    dir: Path
    result: dict

    @property
    def bundle(self) -> Path | None:
        return Path(self.result["bundle"]) if self.result.get("bundle") else None

    @property
    def interrupted(self) -> bool:
        return self.result.get("stopped") == "interrupted"

    def __getitem__(self, key: str):
        return self.result[key]

    def load(self, backend: str = "auto") -> Model:
        if self.bundle is None:
            raise ImagefitError(f"{self.dir} holds no bundle yet (the run stopped at epoch "
                                f"{self.result.get('epoch', '?')}); continue it with imagefit.train(resume=...)")
        return load(self.bundle, backend)


def train(recipe: str | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          config: Config | None = None, tracking_uri: str | None = None, experiment: str = "imagefit",
          progress: str = "auto", stop_after_steps: int = 0, run_name: str | None = None, **options: Any) -> Run:
    """Train, evaluate on the test split and bundle a model (`imagefit train`); with `folds` in the options, one
    run per fold (k-fold cross-validation). `resume=RUN_DIR` continues a stopped run exactly; `config` passes a
    ready Config instead of recipe and options. `tracking_uri="none"` turns MLflow off."""
    from .training.train import RunOptions
    moved_data = None
    if resume is not None:
        moved_data = options.pop("data", None)  # a data folder that moved: checked against the run's fingerprint
        if options or recipe or config:
            given = ", ".join([*(f"--{k.replace('_', '-')}" for k in options), *(["--recipe"] if recipe else [])])
            raise ImagefitError(f"--resume continues a run with its saved config; drop {given or 'the config'} "
                                f"(or start a new run with another --out)")
        cfg, out = Config(), Path(resume)
    else:
        cfg = config.validate() if config is not None else make_config(recipe, **options)
        out = Path(out) if out else default_out(cfg.model.model)
    opts = RunOptions(out=out, resume=resume is not None, tracking_uri=tracking_uri, experiment=experiment,
                      stop_after_steps=stop_after_steps, progress=progress, run_name=run_name,
                      data=str(moved_data) if moved_data is not None else None)
    if cfg.data.folds and resume is None:
        from .experiments.crossval import train_folds
        return Run(out, train_folds(cfg, opts))
    from .training.train import train as run_training
    result = run_training(cfg, opts)
    if result.get("mlflow_run_id") and result.get("bundle") and result.get("stopped") != "finished already":
        # the bundle as an MLflow model in its own run (deploy/ sits above training, so the API does it)
        from .deploy.mlflow_model import log_to_run
        result["mlflow_model"] = log_to_run(Path(result["bundle"]), result["mlflow_uri"], result["mlflow_run_id"])
    return Run(out, result)


def find_lr(recipe: str | None = None, *, out: str | Path | None = None, start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100, tracking_uri: str | None = "none", experiment: str = "imagefit",
            **options: Any):
    """The learning-rate range test (`imagefit find-lr`) on the model and data the options describe: a
    `FinderResult` (its `suggestion`, the other rules' rates, the curve), with lr_finder.png and lr_finder.json
    written to `out`."""
    import json

    from . import plots
    from .files import atomic_write_text
    from .training.train import RunOptions, Trainer
    if options.get("lr") == "auto":
        raise ImagefitError("find-lr sweeps the rate itself; drop --lr auto")
    cfg = make_config(recipe, **options)
    from .tracking import check_store
    check_store(tracking_uri, experiment)  # a remote store that cannot be opened: refused before the range test
    if cfg.optim.optimizer == "muon":
        raise ImagefitError("find-lr sweeps one rate, and --optimizer muon has two (--lr, --muon-lr); "
                            "use --optimizer sgd or adamw")
    out = Path(out) if out else default_out("find-lr")
    trainer = Trainer(cfg, RunOptions(out=out, tracking_uri="none", writes=False))
    result = trainer.range_test(start_lr=start_lr, end_lr=end_lr, steps=steps)
    atomic_write_text(out / "lr_finder.json", json.dumps(result.to_dict(), indent=1))
    plot = plots.lr_finder(result, out / "lr_finder.png")
    from .tracking import record
    record(tracking_uri, experiment, f"find-lr {out.name}", cfg.to_dict(),
           {"suggestion": result.suggestion, "steepest": result.steepest, "valley": result.valley,
            "minimum": result.minimum, "minimum_10": result.minimum_10},
           [plot, out / "lr_finder.json"], steps=[(i, {"lr": lr, "loss": loss, "smoothed": sm}) for i, (lr, loss, sm)
                                                 in enumerate(zip(result.lrs, result.losses, result.smoothed))])
    return result


class Model:
    """A bundle ready to predict: its classes, its preprocessing contract, its metrics. Made by `imagefit.load`."""

    def __init__(self, predictor, path: Path):
        self.predictor, self.path = predictor, path

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def preprocessing(self):
        return self.predictor.preprocessing

    @property
    def metrics(self) -> dict:
        return self.predictor.metrics

    @property
    def backend(self) -> str:
        return self.predictor.backend

    def __repr__(self) -> str:
        return (f"imagefit.Model({str(self.path)!r}, {len(self.classes)} classes, {self.preprocessing.size} px, "
                f"{self.backend})")

    def probabilities(self, images, tta: str | None = None):
        """N×K class probabilities (a tensor, columns in `classes` order) for images: a list of paths, bytes, PIL
        images or H×W×3 uint8 arrays (one such image alone is taken as a list of one), prepared by the bundle's
        contract, with its test-time augmentation (or `tta`) and logit adjustment."""
        if isinstance(images, (str, Path, bytes)) or not hasattr(images, "__len__") or _one_array(images):
            images = [images]
        if len(images) == 0:
            raise ImagefitError("no images given; pass a list of paths, bytes, PIL images or uint8 arrays")
        return self.predictor.probabilities(self.preprocessing.batch(images), tta)

    def predict(self, images, top_k: int = 3, tta: str | None = None) -> list[list[dict]]:
        """The `top_k` most probable classes of each image, [{"class", "probability"}] best first (the same
        figures `imagefit predict` and the server give)."""
        from .deploy.inference import top_classes
        if top_k < 1:
            raise ImagefitError(f"top_k must be at least 1 (got {top_k})")
        return top_classes(self.probabilities(images, tta), self.classes, top_k)

    def evaluate(self, data: str | Path | None = None, split: str = "test", tta: str | None = None,
                 tta_average: str | None = None, batch_size: int = 256, device: str = "cpu") -> dict:
        """Metrics on a split (`imagefit evaluate`): accuracy, balanced accuracy, macro-F1, top-5, loss, per-class
        rows and the confusion matrix; with TTA, the accuracy without it beside."""
        from .evaluation.evaluate import evaluate_bundles
        from .runtime import resolve_device
        bundle = self.predictor.identity.get("bundle")
        if not bundle:
            raise ImagefitError(f"{self.path} is an ONNX file; evaluate the bundle it was exported from")
        m, _ = evaluate_bundles([bundle], data=str(data) if data else None, split=split, batch_size=batch_size,
                                tta=tta, tta_average=tta_average, device=resolve_device(device))
        return m


def _one_array(images) -> bool:
    """A single H×W or H×W×C image array (rather than a list or an N×H×W×C stack of them)."""
    ndim = getattr(images, "ndim", None)
    return ndim in (2,) or (ndim == 3 and images.shape[-1] in (1, 3, 4))


def load(path: str | Path, backend: str = "auto", threads: int = 0) -> Model:
    """A bundle (run folder or .safetensors) or an exported .onnx file, ready to predict. `auto`: ONNX Runtime when
    the run folder holds an export of this very bundle, else PyTorch."""
    from .deploy.inference import load_predictor
    return Model(load_predictor(path, backend, threads), Path(path))


def evaluate(bundles: str | Path | list, data: str | Path | None = None, **kwargs) -> dict:
    """One bundle, or an ensemble of bundles (a list, or an ensemble folder), evaluated on a split: the figures of
    `imagefit evaluate --bundle ...` (keywords: split, batch_size, tta, tta_average, vote, device)."""
    from .evaluation.evaluate import evaluate_bundles
    from .runtime import resolve_device
    paths = [str(b) for b in bundles] if isinstance(bundles, (list, tuple)) else [str(bundles)]
    kwargs["device"] = resolve_device(kwargs.get("device", "cpu"))
    return evaluate_bundles(paths, data=str(data) if data else None, **kwargs)[0]


def report(*runs: str | Path, data: str | Path | None = None, out: str | Path = "comparison", top: int = 16) -> Path:
    """`imagefit report`: the error-analysis page of one run (RUN/report/index.html), or with two or more runs a
    comparison page in `out`; returns the page's path (open it in a browser, or `IPython.display.IFrame` it)."""
    from .evaluation.report import build_comparison, build_report
    if len(runs) > 1:
        return build_comparison(list(runs), out, data=str(data) if data else None)
    if not runs:
        raise ImagefitError("report() needs a run folder (or two or more to compare)")
    return build_report(runs[0], data=str(data) if data else None, top=top)
