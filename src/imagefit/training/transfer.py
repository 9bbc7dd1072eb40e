"""Transfer learning on top of the trainer: fastai's two-stage fine-tuning, and a linear probe.

- `fine_tune`: from trained weights (`--pretrained imagenet` or `--init-from BUNDLE`), first train the head alone
  with the body frozen, then everything with discriminative rates (`--layer-lr-decay`); each stage is an ordinary
  tracked run in its own folder, its rate from the range test unless `--lr` is given.
- `linear_probe`: the penultimate features of a frozen model, then a linear SVM or a logistic regression
  (scikit-learn) on them, reported with the same metrics as any model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from ..errors import ImagefitError
from ..evaluation.metrics import format_report, summarize
from ..files import atomic_write_text
from ..data.loader import Loader
from .train import RunOptions, Trainer, train

DEFAULT_LAYER_DECAY = 2.6  # ULMFiT's factor between layer groups


def _check_start(cfg: Config, command: str) -> None:
    if cfg.model.pretrained == "none" and not cfg.model.init_from:
        raise ImagefitError(f"{command} starts from trained weights: add --pretrained imagenet (resnet18/34/50) "
                            f"or --init-from RUN_DIR")


def fine_tune(cfg: Config, opts: RunOptions, head_epochs: int, lr_given: bool) -> dict:
    """Stage 1 (`out/1-head`): body frozen, `head_epochs` epochs. Stage 2 (`out/2-all`): from stage 1's bundle,
    all layers, `cfg.train.epochs` epochs at discriminative rates."""
    _check_start(cfg, "fine-tune")
    if head_epochs < 1:
        raise ImagefitError(f"--head-epochs must be 1 or more (got {head_epochs})")
    out = Path(opts.out)
    head = copy.deepcopy(cfg)
    head.model.freeze_body, head.optim.layer_lr_decay, head.train.epochs = True, 1.0, head_epochs
    body = copy.deepcopy(cfg)
    body.model.pretrained, body.model.init_from, body.model.freeze_body = "none", str(out / "1-head"), False
    if body.optim.layer_lr_decay == 1.0:
        body.optim.layer_lr_decay = DEFAULT_LAYER_DECAY
    if not lr_given:
        head.optim.lr = body.optim.lr = "auto"
    stages = {}
    for name, folder, stage_cfg in (("head", "1-head", head), ("all", "2-all", body)):
        stages[name] = train(stage_cfg.validate(), replace(opts, out=out / folder))
        if stages[name].get("stopped") == "interrupted":
            raise ImagefitError(f"stage '{name}' was interrupted; run fine-tune again with a new --out "
                                f"(stages restart from their first epoch)")
    result = {"accuracy": stages["all"].get("accuracy"), "n": stages["all"].get("n"),
              "bundle": stages["all"]["bundle"], "head": stages["head"], "all": stages["all"],
              "layer_lr_decay": body.optim.layer_lr_decay}
    atomic_write_text(out / "fine_tune.json", json.dumps(result, indent=1, default=str))
    return result


@torch.inference_mode()
def features(model: nn.Module, loader: Loader) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate activations (the head's input) for every image, in order, and the labels."""
    head, model.fc = model.fc, nn.Identity()
    was_training = model.training
    model.eval()
    try:
        xs, ys = [], []
        for _, x, y in loader.batches():
            xs.append(model(x).float().flatten(1).cpu())
            ys.append(y.cpu())
    finally:
        model.fc = head
        model.train(was_training)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def linear_probe(cfg: Config, out: Path, head: str, c: float = 1.0) -> dict:
    """Features of the frozen starting model for train (+val) and test; a scikit-learn head fitted on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    _check_start(cfg, "features")
    trainer = Trainer(cfg, RunOptions(out=out, tracking_uri="none"))
    data = trainer.data
    if data.test is None:
        raise ImagefitError(f"{data.source} has no test split to report on; add test/ beside train/")
    batch = max(cfg.train.batch_size, 256)
    sets = [s for s in (data.train, data.val) if s is not None]
    parts = [features(trainer.model, Loader(s, batch, trainer.normalize, device=trainer.device)) for s in sets]
    x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x_test, y_test = features(trainer.model, Loader(data.test, batch, trainer.normalize, device=trainer.device))
    if head == "svm":
        clf = make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, random_state=cfg.train.seed))
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(x_train, y_train)
    scores = clf.decision_function(x_test) if head == "svm" else clf.predict_log_proba(x_test)
    scores = torch.from_numpy(np.asarray(scores, dtype=np.float32))
    if scores.ndim == 1:  # two classes: one margin
        scores = torch.stack([-scores, scores], 1)
    m = summarize(scores, torch.from_numpy(y_test).long(), data.classes)
    if head == "svm":
        m["loss"] = None  # margins, not log-probabilities: no cross-entropy to report
    result = {**m, "head": head, "features": int(x_train.shape[1]), "train_images": int(len(y_train)),
              "start": cfg.model.init_from or f"{cfg.model.model} {cfg.model.pretrained}"}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "linear_probe.json", json.dumps(result, indent=1))
    result["report"] = format_report(m, data.classes)
    return result
