"""One typed config tree: recipe YAML + command-line overrides, validated up front.

The dataclass defaults *are* the default recipe, so `imagefit train --help` shows the values a run really uses.
A recipe file holds only what differs, as `section: {field: value}`. Every field becomes one command-line flag
(`--weight-decay`), so field names are unique across sections. The whole tree is saved verbatim with every run
and bundle; a run is reproduced from it and its seed alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ImagefitError

RECIPES_DIR = Path(__file__).parent / "recipes"
# The vocabulary of the preprocessing contract (preprocessing.py says what each means), here so that reading a
# config (and `imagefit --help`) needs no torch.
TTA_MODES = ("none", "flip", "crops", "flip+crops")
TTA_AVERAGES = ("logits", "probs")
RESIZE_MODES = ("crop", "squish")


def opt(default: Any, help: str, *, choices: tuple | None = None, low: float | None = None,
        high: float | None = None, low_open: bool = False):
    """A config field with its help text and the range the validator enforces."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    data: str | None = opt(None, "data folder: CIFAR-10 batches or an ImageFolder tree "
                                 "(else $IMAGEFIT_DATA, else the download cache)")
    test_data: str | None = opt(None, "evaluate on this folder's test split instead of --data's (same classes); e.g. "
                                      "train on synthetic images, test on real ones")
    download: bool = opt(False, "download CIFAR-10 through torchvision when the folder has no data")
    size: int = opt(32, "image side in pixels after resizing", low=8, high=1024)
    resize: str = opt("crop", "how other sizes are resized: crop (shorter side, centre crop) or squish",
                      choices=RESIZE_MODES)
    val_fraction: float = opt(0.1, "share of train held out (stratified, seeded) for validation", low=0.0, high=0.9)
    calibration_fraction: float = opt(0.0, "runs without a validation split (--val-fraction 0): share of train held "
                                           "out (stratified, seeded) only to fit --calibrate's temperature on after "
                                           "training (0: none; the fast recipes hold out 0.02)", low=0.0, high=0.5)
    folds: int = opt(0, "k-fold cross-validation: train once per fold of K stratified, seeded folds, each held out "
                        "in turn for validation (replaces --val-fraction); reports mean ± std (0: off)", low=0, high=100)
    fold: int = opt(0, "with --folds: the one fold held out (0…K-1); set per run by --folds itself", low=0)
    in_memory: str = opt("auto", "keep decoded images in memory (fast path) or stream from disk",
                         choices=("auto", "yes", "no"))
    workers: int = opt(2, "decoding workers for the streaming path", low=0, high=64)
    skip_bad_images: bool = opt(False, "skip unreadable image files (with a warning) instead of stopping")
    classes: list[str] = opt([], "use only these classes (names, comma-separated; labels follow this order); "
                                 "empty: all")
    synthetic: str | None = opt(None, "a folder of synthetic training images (imagefit generate sample writes one: "
                                      "train/<class>/*.png) to mix with the real ones")
    synthetic_ratio: float = opt(0.3, "--synthetic: share of each training batch drawn from the synthetic images "
                                      "(the epoch stays one pass over the real ones)", low=0.0, high=0.9)
    synthetic_mode: str = opt("ratio", "--synthetic: ratio (a share of every batch, equal compute per epoch) or "
                                       "extra (the synthetic images join the training set: longer epochs)",
                              choices=("ratio", "extra"))
    imbalance: str = opt("none", "make the training set imbalanced for study: exp:RATIO (long-tailed, largest/"
                                 "smallest class = RATIO) or step:RATIO (half the classes cut to 1/RATIO); seeded, "
                                 "the test split untouched")
    bootstrap: int = opt(0, "replace the training split by a bootstrap sample (as many draws with replacement) "
                            "seeded by this number (0: off); bagging ensembles set it per member", low=0)
    per_class: int = opt(0, "keep at most this many training images per class, a seeded choice (0: all); for "
                            "small-data experiments", low=0)


@dataclass
class AugmentConfig:
    crop_padding: int = opt(4, "random crop after reflect-padding this many pixels (0: off)", low=0, high=64)
    flip: bool = opt(True, "random horizontal flip")
    alternate_flip: bool = opt(False, "flip a fixed random half of the images in even epochs and the other half "
                                      "in odd ones, so every image is seen both ways in any two epochs (airbench)")
    rotation: float = opt(0.0, "random rotation up to this many degrees (0: off)", low=0.0, high=180.0)
    cutout: int = opt(0, "cutout square side in pixels (0: off)", low=0, high=1024)
    color_jitter: float = opt(0.0, "colour jitter: brightness, contrast and saturation factors drawn per image in "
                                   "[1 - S, 1 + S] (0: off; timm's recipes use 0.4)", low=0.0, high=1.0)
    hue: float = opt(0.0, "colour jitter: turn each image's hue by up to this share of the colour circle (0: off)",
                     low=0.0, high=0.5)
    augment_policy: str = opt("none", "per-image augmentation policy: rand-mM-nN (RandAugment, N ops at magnitude M "
                                      "of 30, e.g. rand-m9-n2), trivial (TrivialAugment) or none")
    random_erasing: float = opt(0.0, "probability that an image gets one rectangle (2-33%% of its area) of noise "
                                     "(random erasing, timm's pixel mode; 0: off)", low=0.0, high=1.0)
    mixup: float = opt(0.0, "mixup: blend each batch with itself reversed, weight from Beta(A, A); targets "
                            "blended alike (0: off; 0.2-0.8 typical)", low=0.0, high=10.0)
    cutmix: float = opt(0.0, "CutMix: paste a box of the reversed batch, area from Beta(A, A) (0: off; 1.0 "
                             "typical); with --mixup too, each mixed batch takes one of the two", low=0.0, high=10.0)
    mix_prob: float = opt(1.0, "--mixup/--cutmix: share of batches mixed", low=0.0, high=1.0)
    progressive_sizes: list[int] = opt([], "progressive resizing: training image sides for the first epochs, one "
                                           "per epoch (e.g. 16,24), later epochs at --size; a 16-px epoch runs "
                                           "about 5x faster than a 32-px one", low=8, high=1024)


@dataclass
class ModelConfig:
    model: str = opt("resnet20", "architecture from the model registry (imagefit models lists them)")
    stem: str = opt("cifar", "first layers: cifar (3x3 stride 1, no max-pool) or imagenet (torchvision's)",
                    choices=("cifar", "imagenet"))
    dropout: float = opt(0.0, "dropout before the classifier head", low=0.0, high=0.95)
    blocks: list[int] = opt([2, 2, 2, 2], "models resnet and fastnet-res only: residual blocks per stage (resnet's "
                                          "default: 2,2,2,2; fastnet-res: basic blocks in each of its three groups, "
                                          "default 1,1,1)")
    widths: list[int] = opt([64, 128, 256, 512], "models resnet and fastnet* only: channels per stage (resnet's "
                                                 "default: 64,128,256,512; fastnet models: the three conv groups', "
                                                 "default the model's own)")
    max_params: int = opt(0, "refuse a model with more parameters than this (0: no limit)", low=0)
    pretrained: str = opt("none", "start from torchvision's ImageNet weights (resnet18/34/50); inputs are then "
                                  "normalized with ImageNet's statistics, the ones the weights were trained with",
                          choices=("none", "imagenet"))
    init_from: str | None = opt(None, "start from an imagefit bundle's weights (run folder or bundle file) and its "
                                      "normalization; the head starts afresh when the classes differ")
    freeze_body: bool = opt(False, "train only the head (and the BatchNorm layers, as fastai does); the rest "
                                   "keeps the weights it started from")
    whiten_bias_epochs: int = opt(3, "fastnet: epochs in which the whitening layer's bias learns (then frozen)",
                                  low=0)


@dataclass
class OptimConfig:
    optimizer: str = opt("sgd", "optimizer; muon: conv filters take orthogonalized momentum steps (Muon), the rest "
                                "SGD", choices=("sgd", "adam", "adamw", "muon"))
    lr: float | str = opt(0.1, "learning rate (the peak rate for one-cycle); auto: run the range test first "
                               "(imagefit find-lr) and train at its suggestion", low=0.0, high=10.0, low_open=True)
    momentum: float = opt(0.9, "SGD momentum (Adam's beta1)", low=0.0, high=0.999)
    muon_lr: float = opt(0.24, "muon: learning rate of the conv filters", low=0.0, high=10.0, low_open=True)
    muon_momentum: float = opt(0.6, "muon: momentum of the conv filters", low=0.0, high=0.999)
    nesterov: bool = opt(True, "Nesterov momentum for SGD")
    weight_decay: float = opt(5e-4, "weight decay", low=0.0, high=1.0)
    layer_lr_decay: float = opt(1.0, "discriminative learning rates: each layer group, from the head back to the "
                                     "input, learns this factor slower than the one after it (1: one rate)",
                                low=1.0, high=100.0)
    norm_lr_scale: float = opt(1.0, "learning-rate multiplier for BatchNorm parameters", low=0.0, high=1e4,
                               low_open=True)
    decay_biases: bool = opt(False, "weight decay on BatchNorm parameters and biases too (on BatchNorm's at "
                                    "weight_decay / norm_lr_scale, so their decay per step equals the weights')")
    loss: str = opt("cross-entropy", "loss: cross-entropy, or nll (log-softmax + NLLLoss)",
                    choices=("cross-entropy", "nll"))
    label_smoothing: float = opt(0.0, "label smoothing for cross-entropy", low=0.0, high=0.5)
    grad_clip: float = opt(0.0, "clip the gradient norm to this (0: off)", low=0.0)


@dataclass
class ScheduleConfig:
    schedule: str = opt("onecycle", "learning-rate schedule",
                        choices=("onecycle", "triangle", "cosine", "cyclic", "step", "plateau", "constant"))
    cycles: int = opt(1, "cyclic: cosine cycles (each from the peak rate to 0) over the run; a bundle is saved at "
                         "the end of each (snapshot ensembles); --epochs must be a multiple", low=1, high=1000)
    warmup: float = opt(0.25, "one-cycle/triangle: share of steps spent warming up to the peak rate", low=0.0,
                        high=0.99)
    div_factor: float = opt(25.0, "one-cycle/triangle: peak rate / starting rate", low=1.0)
    final_div_factor: float = opt(1e4, "one-cycle: starting rate / final rate", low=1.0)
    milestones: list[int] = opt([], "step: epochs at which the rate is multiplied by --gamma")
    gamma: float = opt(0.1, "step/plateau: rate multiplier", low=0.0, high=1.0, low_open=True)
    plateau_patience: int = opt(3, "plateau: epochs without improvement before lowering the rate", low=0)


@dataclass
class TrainConfig:
    epochs: int = opt(10, "epochs", low=1, high=100000)
    batch_size: int | str = opt("auto", "training batch size; auto: 128, or less on small data so that an epoch "
                                        "has at least 50 steps (never below 16)", low=1, high=65536)
    seed: int = opt(0, "seed for weights, data order and augmentation", low=0, high=2**31 - 1)
    deterministic: bool = opt(False, "use deterministic algorithms only (slower on some GPUs)")
    early_stopping: int = opt(0, "stop after this many epochs without validation improvement (0: off)", low=0)
    monitor: str = opt("val_accuracy", "validation metric for early stopping and the best checkpoint",
                       choices=("val_accuracy", "val_loss"))
    lookahead: int = opt(0, "every this many steps, move the weights to a slow average of themselves, which "
                            "averages more as training ends (airbench's lookahead; 0: off)", low=0)
    balance: str = opt("none", "class-imbalance remedy: oversample (every class drawn to the largest count each "
                               "epoch), undersample (to the smallest), reweight (loss weight N/(K·n_class))",
                       choices=("none", "oversample", "undersample", "reweight"))
    logit_adjust: float | str = opt(0.0, "at evaluation, subtract this times the log of each class's training "
                                         "prior from the scores (0: off; auto: chosen on the validation split)",
                                    low=0.0, high=10.0)
    ema: float = opt(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999; warmed "
                          "up over the first steps) and validate, checkpoint and bundle the average (0: off)",
                     low=0.0, high=0.99999)
    calibrate: bool = opt(True, "after training, fit a temperature on the validation split (when there is one) so "
                                "that the probabilities match how often the model is right; stored in the bundle")
    tta: str = opt("none", "test-time augmentation for validation and test: none, flip (2 views), crops (3: the "
                           "image and two 1-pixel shifts) or flip+crops (6)", choices=TTA_MODES)
    tta_average: str = opt("logits", "how test-time views combine: mean of the logits or of the probabilities",
                           choices=TTA_AVERAGES)
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    sync_bn: bool = opt(True, "under torchrun, BatchNorm normalizes by the statistics of the whole global batch, "
                              "as one process would (off: each rank's own share)")
    channels_last: str = opt("auto", "channels_last memory layout (auto: on; 10-17%% faster than contiguous for "
                                     "ResNets on a CPU here, benchmarks/RESULTS.md)", choices=("auto", "yes", "no"))
    amp: str = opt("auto", "mixed precision (auto: bfloat16 on CUDA and on CPUs with native bfloat16, AVX512-BF16 "
                           "or AMX; float32 elsewhere)", choices=("auto", "bf16", "fp16", "no"))
    threads: int = opt(0, "CPU threads for torch (0: torch's default)", low=0, high=1024)


SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "optim": OptimConfig,
            "schedule": ScheduleConfig, "train": TrainConfig}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def epoch_sizes(self) -> list[int]:
        """The training image side of each epoch: the progressive sizes first, then --size."""
        sizes = self.augment.progressive_sizes
        return [sizes[e] if e < len(sizes) else self.data.size for e in range(self.train.epochs)]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, tree: dict, where: str = "config") -> Config:
        cfg = cls()
        cfg.update(tree, where)
        return cfg

    def update(self, tree: dict, where: str) -> None:
        """Set `section: {field: value}` entries, refusing unknown names with the closest valid ones."""
        if not isinstance(tree, dict):
            raise ImagefitError(f"{where} must map sections to fields, e.g. 'optim: {{lr: 0.1}}'")
        for section, values in tree.items():
            if section == "fixed":
                continue
            if section not in SECTIONS:
                raise ImagefitError(f"{where}: unknown section '{section}'{_closest(section, SECTIONS)}")
            if not isinstance(values, dict):
                raise ImagefitError(f"{where}: section '{section}' must map fields to values")
            target = getattr(self, section)
            names = {f.name for f in dataclasses.fields(target)}
            for name, value in values.items():
                if name not in names:
                    raise ImagefitError(f"{where}: unknown field '{section}.{name}'{_closest(name, names)}")
                setattr(target, name, coerce(target, name, value, where))

    def validate(self) -> Config:
        """Check every value against its field's type, choices and range, and the fields against each other;
        raise on the first bad one. Which options a model takes is the model registry's to check
        (`models.check_options`)."""
        for section in SECTIONS:
            obj = getattr(self, section)
            for f in dataclasses.fields(obj):
                _check(f, getattr(obj, f.name))
        if self.schedule.schedule == "step" and not self.schedule.milestones:
            raise ImagefitError("--schedule step needs --milestones, e.g. --milestones 15,25")
        if any(s > self.data.size for s in self.augment.progressive_sizes):
            raise ImagefitError(f"--progressive-sizes {','.join(map(str, self.augment.progressive_sizes))} must not "
                                f"exceed --size {self.data.size}; progressive resizing trains smaller first")
        parse_imbalance(self.data.imbalance)
        parse_policy(self.augment.augment_policy)
        if self.optim.loss == "nll" and (self.augment.mixup or self.augment.cutmix):
            raise ImagefitError("--mixup/--cutmix train on mixed targets, which --loss nll cannot take; use --loss "
                                "cross-entropy")
        if self.train.logit_adjust == "auto" and self.data.val_fraction == 0:
            raise ImagefitError("--logit-adjust auto chooses on the validation split; set --val-fraction above 0 "
                                "or give a number")
        if self.optim.lr == "auto" and self.optim.optimizer == "muon":
            raise ImagefitError("--lr auto finds one rate, and --optimizer muon has two (--lr, --muon-lr): give both "
                                "as numbers, or use --optimizer sgd/adamw with --lr auto")
        if self.schedule.schedule == "cyclic" and self.train.epochs % self.schedule.cycles:
            raise ImagefitError(f"--epochs {self.train.epochs} is not a multiple of --cycles {self.schedule.cycles}; "
                                f"each cycle needs whole epochs")
        if any(m < 1 for m in self.schedule.milestones):
            raise ImagefitError(f"--milestones must be epochs >= 1 (got {self.schedule.milestones})")
        m = self.model
        if m.pretrained != "none" and m.init_from:
            raise ImagefitError("--pretrained and --init-from both choose the starting weights; keep one")
        return self


def parse_imbalance(spec: str) -> tuple[str, float] | None:
    """--imbalance: 'none' → None; 'exp:100' → ('exp', 100.0); refuses anything else in one line."""
    if spec == "none":
        return None
    kind, _, ratio = spec.partition(":")
    try:
        value = float(ratio)
    except ValueError:
        value = 0.0
    if kind not in ("exp", "step") or value < 1:
        raise ImagefitError(f"--imbalance {spec!r} is not none, exp:RATIO or step:RATIO with RATIO >= 1 "
                            f"(e.g. exp:100)")
    return kind, value


BINS = 31  # magnitude bins of the augmentation policies (torchvision's num_magnitude_bins)


@dataclass(frozen=True)
class Policy:
    """A parsed --augment-policy: `rand` (N ops per image at magnitude M) or `trivial` (one op, random bin)."""
    kind: str
    ops: int = 1
    magnitude: int = 0


def parse_policy(spec: str) -> Policy | None:
    """'none' → None; 'rand-m9-n2' → RandAugment, magnitude 9 of 30, 2 ops; 'trivial' → TrivialAugmentWide."""
    if spec == "none":
        return None
    if spec == "trivial":
        return Policy("trivial")
    match = re.fullmatch(r"rand(?:-m(\d+))?(?:-n(\d+))?", spec)
    if match:
        magnitude, ops = int(match[1] or 9), int(match[2] or 2)
        if magnitude < BINS and 1 <= ops <= 10:
            return Policy("rand", ops, magnitude)
    raise ImagefitError(f"--augment-policy {spec!r} is not none, trivial or rand-mM-nN with magnitude M in 0-30 and "
                        f"N ops in 1-10 (e.g. rand-m9-n2, timm's notation)")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_types(obj) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def coerce(obj, name: str, value: Any, where: str) -> Any:
    """Turn a YAML or command-line value into the field's type, with a one-line error otherwise."""
    kind = field_types(obj)[name]
    origin = typing.get_origin(kind)
    try:
        nullable = type(None) in typing.get_args(kind)
        if value is None or (nullable and isinstance(value, str) and value.lower() in ("none", "null")):
            if nullable:
                return None
            raise ValueError
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if origin is list:
            items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
            return [str(v) for v in items] if typing.get_args(kind)[0] is str else [int(v) for v in items]
        if kind is int or kind == (int | None):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        if kind == (float | str):  # a number, or the word the field names (lr: auto)
            return "auto" if str(value).lower() == "auto" else float(value)
        if kind == (int | str):  # an integer, or auto (batch_size: auto)
            if str(value).lower() == "auto":
                return "auto"
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ImagefitError(f"{where}: {flag(name)} got {value!r}, which is not {_describe(kind)}") from None


def _describe(kind) -> str:
    if typing.get_origin(kind) is list:
        return f"a comma-separated list of {'names' if typing.get_args(kind)[0] is str else 'integers'}"
    names = {bool: "true or false", int: "an integer", float: "a number", float | str: "a number or auto",
             int | str: "an integer or auto"}
    return names.get(kind, "a string")


def _check(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    if meta["choices"] and value not in meta["choices"]:
        raise ImagefitError(f"{flag(f.name)} must be one of {', '.join(meta['choices'])} (got {value!r})")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ImagefitError(f"{flag(f.name)} must be a finite number (got {v}); give a number such as its "
                                f"default, {f.default if f.default is not dataclasses.MISSING else 'see --help'}")
        low, high = meta["low"], meta["high"]
        too_low = low is not None and (v <= low if meta["low_open"] else v < low)
        if too_low or (high is not None and v > high):
            lo = "" if low is None else f"{'>' if meta['low_open'] else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise ImagefitError(f"{flag(f.name)} must be {' and '.join(p for p in (lo, hi) if p)} (got {v})")


def _closest(name: str, options) -> str:
    near = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else f"; valid: {', '.join(sorted(options))}"


MAX_YAML_BYTES = 100_000


def read_yaml(path: Path, what: str, missing_fix: str) -> dict:
    """A YAML file the user wrote (a recipe, a search space), read safely (no tags that build objects), with a
    one-line error when it is missing or not valid YAML."""
    if not path.is_file():
        raise ImagefitError(f"{what} file {path} does not exist; {missing_fix}")
    try:
        text = path.read_bytes()[:MAX_YAML_BYTES + 1].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ImagefitError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ImagefitError(f"cannot read {what} {path} ({e.strerror}); check the path") from None
    if len(text) > MAX_YAML_BYTES:
        raise ImagefitError(f"{what} {path} is over {MAX_YAML_BYTES // 1000} kB; a {what} is a few lines of YAML")
    try:
        # Aliases (*name) are refused: a few hundred bytes of nested aliases expand to gigabytes ("billion laughs"),
        # and a recipe has no need of them.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ImagefitError(f"{what} {path} uses a YAML alias (*name); write the values out instead")
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ImagefitError(f"{what} {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ImagefitError(f"{what} {path} must be a mapping of sections to fields (e.g. 'optim: {{lr: 0.1}}'), "
                            f"not a {type(tree).__name__}; fix the file")
    return tree


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str, _chain: tuple[str, ...] = ()) -> dict:
    """A recipe by name (shipped with imagefit) or by path to a YAML file, as `section: {field: value}`.

    A recipe's optional `fixed: [field, ...]` names the fields it is built around (its model, say): its rates and
    schedule are tuned for them, so `check_fixed` refuses a command line that changes them. An optional
    `base: NAME` starts from another recipe (a name, or a path relative to this file) and overrides it field by
    field, so a variant states only what differs."""
    if name_or_path in _chain:
        raise ImagefitError(f"recipe {name_or_path} is its own base ({' -> '.join([*_chain, name_or_path])}); "
                            f"remove one of the base: lines")
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ImagefitError(f"unknown recipe '{name_or_path}'; available: {', '.join(recipe_names())} "
                                f"(or a path to a .yaml file)")
    tree = read_yaml(path, "recipe", f"give a recipe name ({', '.join(recipe_names())}) or a path to a .yaml file")
    tree.pop("description", None)
    base = tree.pop("base", None)
    if base is None:
        return tree
    merged = load_recipe(str(base) if not Path(str(base)).suffix else str(path.parent / str(base)),
                         (*_chain, name_or_path))
    for key, value in tree.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both else value
    return merged


def check_fixed(recipe: str, tree: dict, given: dict[str, Any]) -> None:
    """Refuse command-line values (`given`, by field name) that change a field the recipe fixes."""
    values = {name: value for section in tree.values() if isinstance(section, dict) for name, value in section.items()}
    fixed = tree.get("fixed", [])
    if not isinstance(fixed, list) or not all(isinstance(n, str) for n in fixed):
        raise ImagefitError(f"recipe {recipe}: 'fixed' must list field names, e.g. 'fixed: [model]' (got {fixed!r})")
    for name in fixed:
        if name in given and given[name] != values.get(name):
            raise ImagefitError(f"recipe {recipe} is tuned for {flag(name)} {values.get(name)} and cannot honour "
                                f"{flag(name)} {given[name]}; drop {flag(name)}, or drop --recipe to set your own")


def all_fields():
    """(section, field) for every field, in order: the source of the command-line flags."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f


_names = [f.name for _, f in all_fields()]
assert len(_names) == len(set(_names)), "config field names must be unique: each is one command-line flag"
