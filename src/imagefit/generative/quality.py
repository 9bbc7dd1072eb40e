"""How good are a generator's images: FID, KID, Inception Score and Classification Accuracy Score.

FID/KID/IS are torchmetrics' implementations. Their default feature network is Inception-v3, whose weights
torch-fidelity downloads on first use; offline (and always available) the features are instead the penultimate
activations of an imagefit classifier trained on the real images, and IS uses its class probabilities. The two
kinds of figure are not comparable with each other, nor classifier-feature FIDs across classifiers: the report
names the feature network beside every figure. CAS (Ravuri & Vinyals 2019) trains a fresh classifier on the
synthetic images only and tests it on real held-out images.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
import torch.nn as nn

from ..errors import ImagefitError


class ClassifierFeatures(nn.Module):
    """uint8 N×3×H×W images → a bundle's penultimate features (or its logits): the `feature=` network torchmetrics
    calls where it would call Inception."""

    def __init__(self, bundle, logits: bool = False):
        super().__init__()
        self.model = copy.deepcopy(bundle.model).eval()
        if not logits:
            self.model.fc = nn.Identity()
        self.normalize = bundle.preprocessing.normalizer()
        self.size = bundle.preprocessing.size
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.size, self.size, dtype=torch.uint8)
            self.num_features = self.model(self.normalize(probe)).flatten(1).shape[1]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            raise ImagefitError(f"the classifier takes {self.size} px images; these are {x.shape[-1]} px")
        return self.model(self.normalize(x)).flatten(1).double()


def _require_fidelity() -> None:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise ImagefitError("--features inception needs torch-fidelity (pip install torch-fidelity; its weights "
                            "download on first use); offline, use --features classifier") from None


def _batched(metric, images: torch.Tensor, real: bool | None, batch: int = 500) -> None:
    for i in range(0, len(images), batch):
        if real is None:
            metric.update(images[i:i + batch])
        else:
            metric.update(images[i:i + batch], real=real)


class Scorer:
    """FID, KID (mean ± std over subsets) and IS of uint8 fake images against uint8 `real` ones, whose features are
    extracted once (torchmetrics keeps them across `reset`), so scoring every checkpoint costs only its samples.
    With a classifier, also how often it names the class each fake image was drawn for ('label accuracy')."""

    def __init__(self, real: torch.Tensor, bundle=None, features: str = "classifier", fake_size: int = 1000,
                 kid_subset: int = 1000, seed: int = 0):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        if features == "classifier":
            if bundle is None:
                raise ImagefitError("classifier features need --classifier BUNDLE (a run trained on the real images)")
            self.feature, self.logits = ClassifierFeatures(bundle), ClassifierFeatures(bundle, logits=True)
            self.name = f"classifier {bundle.path}"
        elif features == "inception":
            _require_fidelity()
            self.feature, self.logits, self.name = 2048, "logits_unbiased", "inception"
        else:
            raise ImagefitError(f"--features must be classifier or inception (got {features!r})")
        self.seed, self.real_images = seed, len(real)
        warnings.filterwarnings("ignore", "Metric `.*` will save all extracted features", UserWarning)
        with self._inception_errors():
            self.fid = FrechetInceptionDistance(feature=self.feature, reset_real_features=False)
            self.kid = KernelInceptionDistance(feature=self.feature, reset_real_features=False,
                                               subset_size=min(kid_subset, len(real), fake_size))
            for metric in (self.fid, self.kid):
                _batched(metric, real, True)

    def _inception_errors(self):
        import contextlib

        @contextlib.contextmanager
        def translate():
            try:
                yield
            except (OSError, RuntimeError) as e:
                if self.name != "inception":
                    raise
                raise ImagefitError(f"Inception-v3 weights could not be loaded ({str(e)[:80]}); they download on "
                                    f"first use into torch's hub cache (~/.cache/torch/hub); offline, use --features "
                                    f"classifier") from None
        return translate()

    def score(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None) -> dict:
        from torchmetrics.image.inception import InceptionScore
        torch.manual_seed(self.seed)  # KID's subsets and IS's split order
        with self._inception_errors():
            for metric in (self.fid, self.kid):
                metric.reset()  # the fake features only
                _batched(metric, fake, False)
            inception = InceptionScore(feature=self.logits, splits=10)
            _batched(inception, fake, None)
            kid_mean, kid_std = self.kid.compute()
            is_mean, is_std = inception.compute()
            result = {"features": self.name, "fid": float(self.fid.compute()), "kid": float(kid_mean),
                      "kid_std": float(kid_std), "inception_score": float(is_mean),
                      "inception_score_std": float(is_std), "real_images": self.real_images,
                      "fake_images": len(fake)}
        if self.name != "inception" and fake_labels is not None:
            with torch.inference_mode():
                predicted = torch.cat([self.logits(fake[i:i + 500]).argmax(1) for i in range(0, len(fake), 500)])
            result["label_accuracy"] = float((predicted == fake_labels).double().mean())
        return result


def scores(real: torch.Tensor, fake: torch.Tensor, bundle=None, features: str = "classifier",
           fake_labels: torch.Tensor | None = None, kid_subset: int = 1000, seed: int = 0) -> dict:
    """One set of fake images scored against `real` (see `Scorer`)."""
    return Scorer(real, bundle, features, len(fake), kid_subset, seed).score(fake, fake_labels)


def _real_train(data: str | None, classes: tuple, size: int):
    """The real training images of `classes`, resized to `size` as training would resize them."""
    from ..config import DataConfig
    from ..data.sources import ImageSet, align_classes, load_splits
    splits = load_splits(DataConfig(data=data, val_fraction=0.0, classes=list(classes), size=size), 0)
    if not isinstance(splits.train, ImageSet):
        raise ImagefitError(f"{splits.source} is streamed from disk; generator metrics need it in memory")
    return align_classes(splits.train, list(classes)), splits.source


def _draw_set(model, cfg, per_class: int, steps: int, guidance: float, seed: int, size: int, batch: int = 250,
              amp: str = "auto"):
    """per_class images of every class, at `size` px: a generator trained smaller (--size 16) is scored scaled up,
    the way its images are used. `amp`: the UNet's precision (generate.use_bf16)."""
    from ..data.sources import resize_images
    from ..seeds import Stream, choice_generator
    from .generate import draw
    labels = torch.arange(len(cfg.classes)).repeat_interleave(per_class)
    parts = [draw(model, cfg, labels[i:i + batch], steps=steps, guidance=guidance,
                  generator=choice_generator(seed, i, Stream.GENERATOR_SAMPLES), amp=amp) for i in range(0, len(labels), batch)]
    return resize_images(torch.cat(parts), size), labels


def evaluate_generator(*, model: str | None, synthetic: str | None, data: str | None, classifier: str | None,
                       features: str = "classifier", per_class: int = 100, steps: int = 50, guidance: float = 2.0,
                       per_checkpoint: bool = False, real_limit: int = 10000, seed: int = 0, cas: bool = False,
                       cas_recipe: str | None = None, cas_epochs: int = 0, tracking_uri: str | None = None,
                       log=print) -> dict:
    """Scores of a generator (`model`, sampled here) or of a folder of its images (`synthetic`) against the real
    training images (at most `real_limit` of them, a seeded choice). With `per_checkpoint`, the FID of every
    snapshot the run kept, plotted beside the run (`fid-per-step.png`). With `cas`, also the Classification
    Accuracy Score of the images (a `model` is sampled into MODEL/cas-samples for it). The scores are written to
    quality.json beside the model or the images."""
    import json
    from pathlib import Path

    from .. import plots
    from ..bundle import load_bundle
    from ..seeds import Stream, choice_generator
    from ..files import atomic_write_text
    from .generate import check_options, load_generator, sample_folder, snapshots

    if (model is None) == (synthetic is None):
        raise ImagefitError("give --model GEN (sample from it) or --synthetic SYN (score its images), not both")
    if per_class < 2:
        raise ImagefitError(f"--per-class must be 2 or more (got {per_class}): FID needs a covariance")
    bundle = load_bundle(classifier) if classifier else None
    if model is not None:
        gen, cfg = load_generator(model)
        check_options(cfg, steps, guidance)
        classes, size = cfg.classes, cfg.size
    else:
        from ..config import DataConfig
        from ..data.sources import synthetic_tree
        syn = synthetic_tree(synthetic, DataConfig(size=bundle.preprocessing.size if bundle else 32))
        classes, size = tuple(syn.classes), syn.images.shape[-1]
    if bundle is not None and list(classes) != list(bundle.classes):
        missing = [c for c in classes if c not in bundle.classes]
        if missing:
            raise ImagefitError(f"the classifier {bundle.path} has no class {', '.join(missing)}; use one trained "
                                f"on the generator's classes")
    score_size = bundle.preprocessing.size if bundle is not None else size  # what the features network takes
    real, source = _real_train(data, classes, score_size)
    if len(real) > real_limit:
        real = real.subset(torch.randperm(len(real), generator=choice_generator(seed, Stream.REAL_SUBSET))[:real_limit])
    if bundle is not None and list(classes) != list(bundle.classes):
        order = torch.tensor([bundle.classes.index(c) for c in classes])  # labels in the classifier's order
    else:
        order = torch.arange(len(classes))
    start = time.perf_counter()
    if model is not None:
        fake, labels = _draw_set(gen, cfg, per_class, steps, guidance, seed, score_size)
    else:
        fake, labels = syn.images, syn.labels
    seconds = time.perf_counter() - start
    scorer = Scorer(real.images, bundle, features, fake_size=len(fake), seed=seed)
    result = scorer.score(fake, order[labels])
    result.update(real_source=source, classes=list(classes))
    if model is not None:
        result.update(model=model, steps=steps, guidance=guidance, per_class=per_class,
                      sampling_images_per_s=len(fake) / seconds)
    log(f"FID {result['fid']:.2f}  KID {result['kid']:.4f}  IS {result['inception_score']:.2f}  "
        f"({result['features']})")
    if per_checkpoint:
        if model is None:
            raise ImagefitError("--per-checkpoint scores a training run's snapshots; pass --model GEN")
        rows = []
        for step, path in snapshots(model):
            snap, _ = load_generator(model, path)
            images, snap_labels = _draw_set(snap, cfg, per_class, steps, guidance, seed, score_size)
            r = scorer.score(images, order[snap_labels])
            rows.append({"step": step, **{k: r[k] for k in ("fid", "kid", "inception_score", "features")},
                         **({"label_accuracy": r["label_accuracy"]} if "label_accuracy" in r else {})})
            log(f"step {step}: FID {r['fid']:.2f}")
        result["per_checkpoint"] = rows
        if rows:
            result["plot"] = str(plots.fid_per_step(rows, Path(model) / "fid-per-step.png"))
    if cas:
        if synthetic is None:
            synthetic = str(Path(model) / "cas-samples")
            sample_folder(model, synthetic, per_class, steps=steps, guidance=guidance, seed=seed, log=log)
        result.update(classification_accuracy_score(synthetic, data, Path(synthetic) / "cas-run", recipe=cas_recipe,
                                                    tracking_uri=tracking_uri, epochs=cas_epochs))
    where = Path(model if model is not None else synthetic)
    atomic_write_text(where / "quality.json", json.dumps(result, indent=1))
    return result


# The CAS classifier: fast-small, the recipe the recorded CAS figures (RESULTS.md) were measured with.
CAS_RECIPE = "fast-small"


def classification_accuracy_score(synthetic: str, data: str | None, out, *, recipe: str | None = None,
                                  tracking_uri: str | None = None, epochs: int = 0) -> dict:
    """CAS: a fresh classifier (the `recipe`'s) trained on the synthetic tree only, normalized by its statistics,
    tested on the real test split of `data`."""
    from ..config import Config, load_recipe
    from ..training.train import RunOptions, train
    recipe = recipe or CAS_RECIPE
    cfg = Config.from_dict(load_recipe(recipe), where=f"recipe {recipe}")
    cfg.data.data, cfg.data.test_data, cfg.data.val_fraction = synthetic, data or _default_data(), 0.0
    if epochs:
        cfg.train.epochs = epochs
        cfg.augment.progressive_sizes = []  # the recipe's size schedule is laid out for its own epoch count
    result = train(cfg.validate(), RunOptions(out=out, tracking_uri=tracking_uri))
    return {"cas": result["accuracy"], "cas_n": result["n"], "cas_recipe": recipe, "cas_bundle": result["bundle"]}


def _default_data() -> str:
    from ..config import DataConfig
    from ..data.sources import data_root
    return str(data_root(DataConfig()))
