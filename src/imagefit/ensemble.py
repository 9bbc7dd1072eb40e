"""Ensembles of bundles: soft voting (mean probability) or hard voting (majority, ties broken by probability), and
the figures that say whether an ensemble works: each member's error, the error independent members would give,
the observed error, and how often members disagree.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from .errors import ImagefitError
from .files import atomic_write_text

MANIFEST = "ensemble.json"


def check_same_classes(names: list[str], class_lists: list[list[str]]) -> None:
    """Refuse members whose class lists differ from the first one's, naming the difference."""
    first = class_lists[0]
    for name, classes in zip(names[1:], class_lists[1:]):
        if classes != first:
            missing, extra = sorted(set(first) - set(classes)), sorted(set(classes) - set(first))
            what = (f"lacks {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "") + \
                (f"has {', '.join(extra)} besides" if extra else "")
            raise ImagefitError(f"{name} cannot join the ensemble: its classes differ from {names[0]}'s "
                                f"({what or 'same classes in another order'}); ensemble bundles of the same "
                                f"classes in the same order")


def combine(probs: list[torch.Tensor], vote: str, weights: list[float] | None = None) -> torch.Tensor:
    """Ensemble scores (N×K, argmax = the ensemble's answer) from each member's N×K probabilities, members
    weighted by `weights` (boosting's α; default equal). Soft voting returns the log of the weighted mean
    probability; hard voting the weighted vote count plus a probability term smaller than the lightest vote,
    which only breaks ties."""
    w = torch.tensor(weights or [1.0] * len(probs), dtype=torch.float32)
    w = w / w.sum()
    mean = sum(wi * p for wi, p in zip(w, probs))
    if vote == "soft":
        return mean.clamp_min(1e-30).log()
    if vote == "hard":
        k = mean.shape[1]
        votes = sum(wi * torch.nn.functional.one_hot(p.argmax(1), k).float() for wi, p in zip(w, probs))
        return votes + 0.5 * float(w.min()) * mean
    raise ImagefitError(f"--vote must be soft or hard (got {vote!r})")


def independent_error(e: float, m: int) -> float:
    """Majority-vote error of `m` members that each err with probability `e`, independently, and never agree on a
    wrong answer unless a majority errs: P(more than half wrong). For m = 3 this is
    1 − (1−e)³ − C(3,2)(1−e)²e."""
    return sum(math.comb(m, k) * e ** k * (1 - e) ** (m - k) for k in range(m // 2 + 1, m + 1))


def disagreement(predictions: list[torch.Tensor]) -> float:
    """Mean over member pairs of the share of images on which the two predict differently."""
    pairs = [(a, b) for i, a in enumerate(predictions) for b in predictions[i + 1:]]
    if not pairs:
        return 0.0
    return sum((a != b).float().mean().item() for a, b in pairs) / len(pairs)


def expand(paths: list[str]) -> tuple[list[str], list[float], str | None]:
    """Bundle paths and member weights, ensemble folders (an `ensemble.json` beside member runs) replaced by
    their members and the weights they were saved with (boosting's α; 1 otherwise), and the vote a folder asks
    for (boosting: hard), if any."""
    out, weights, vote = [], [], None
    for p in paths:
        manifest = Path(p) / MANIFEST
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            out += [str(Path(p) / name) for name in m["members"]]
            weights += m.get("weights") or [1.0] * len(m["members"])
            vote = vote or m.get("vote")
        else:
            out.append(p)
            weights.append(1.0)
    return out, weights, vote


def split_images(bundle, data: str | None, split: str):
    """The bundle's test or validation split (from `data` if given), prepared as in training and labelled in the
    bundle's class order."""
    from .data import align_classes, load_splits, load_test_split
    cfg = bundle.config.data
    if data:
        cfg.data, cfg.test_data = data, None
    if split == "test":
        images = load_test_split(cfg)
    else:
        images = load_splits(cfg, bundle.config.train.seed).val
        if images is None:
            raise ImagefitError(f"{bundle.path} was trained without a validation split (--val-fraction 0); "
                                f"use --split test")
    return align_classes(images, bundle.classes)


def bundle_scores(bundle, images, *, batch_size: int, tta: str, average: str):
    """One bundle's scores (its logit adjustment applied) and the labels, on `images` (see `split_images`)."""
    from .evaluate import gather_logits
    from .loader import Loader
    device = next(bundle.model.parameters()).device
    loader = Loader(images, batch_size, bundle.normalizer(device), device=device)
    with torch.inference_mode():
        scores, labels = gather_logits(bundle.model, loader, tta=tta, average=average)
    return bundle.adjust(scores), labels


def evaluate_bundles(paths: list[str], *, data: str | None = None, split: str = "test", batch_size: int = 256,
                     tta: str | None = None, tta_average: str | None = None, vote: str | None = None,
                     device: torch.device = torch.device("cpu")):
    """(metrics, first bundle): the metrics of one bundle (with and without its TTA), or of an ensemble with its
    members and the figures of the module docstring. Every bundle uses its own TTA unless `tta` is given."""
    from .bundle import load_bundle
    from .evaluate import summarize
    members_paths, weights, asked = expand(paths)
    vote = vote or asked or "soft"
    bundles = [load_bundle(b, device) for b in members_paths]
    check_same_classes([str(b.path) for b in bundles], [b.classes for b in bundles])
    classes, members, plain = bundles[0].classes, [], []
    for bundle in bundles:
        t, images = tta or bundle.config.train.tta, split_images(bundle, data, split)
        scores, labels = bundle_scores(bundle, images, batch_size=batch_size, tta=t,
                                       average=tta_average or bundle.config.train.tta_average)
        members.append({"bundle": str(bundle.path), "tta": t, "scores": scores, **summarize(scores, labels, classes)})
        if t != "none" and len(bundles) == 1:  # the same model without TTA, side by side
            scores = bundle_scores(bundle, images, batch_size=batch_size, tta="none", average="logits")[0]
            plain.append(summarize(scores, labels, classes)["accuracy"])
    if len(bundles) == 1:
        m = {k: v for k, v in members[0].items() if k != "scores"}
        if plain:
            m["accuracy_without_tta"] = plain[0]
    else:
        probs = [r["scores"].softmax(1) for r in members]
        m = summarize(combine(probs, vote, weights), labels, classes)
        if vote == "hard":
            m["loss"] = None  # vote counts, not log-probabilities
        errors = [1 - r["accuracy"] for r in members]
        m.update(vote=vote, members=[{**{k: r[k] for k in ("bundle", "tta", "accuracy", "balanced_accuracy")},
                                      "weight": w} for r, w in zip(members, weights)],
                 best_member_accuracy=max(r["accuracy"] for r in members),
                 independent_error=independent_error(sum(errors) / len(errors), len(members)),
                 observed_error=1 - m["accuracy"], disagreement=disagreement([p.argmax(1) for p in probs]))
    return m, bundles[0]


def train_ensemble(cfg, opts, members: int, kind: str):
    """Train `members` runs into OUT/member-i (seeds: seed+i; bagging: seed+i and bootstrap sample i+1), or one run
    into OUT/run whose cyclic schedule leaves a bundle per cycle (snapshot: --epochs per cycle when not a multiple
    of the members), or boost (see `_boost`); write OUT/ensemble.json (which `imagefit evaluate --bundle OUT`
    reads) and evaluate the ensemble on the test split, as `evaluate_bundles` does. Tracked as one MLflow run with
    the members' runs nested under it."""
    if members < 2:
        raise ImagefitError(f"--members must be 2 or more for an ensemble (got {members})")
    if kind not in ("seeds", "bagging", "snapshot", "boosting"):
        raise ImagefitError(f"--kind must be seeds, bagging, snapshot or boosting (got {kind!r})")
    from .tracking import ParentRun
    out, manifest = Path(opts.out), {"kind": kind}
    parent = ParentRun(opts.tracking_uri, opts.experiment, f"ensemble {out.name} ({kind})",
                       {**cfg.to_dict(), "ensemble": {"kind": kind, "members": members}})
    opts = replace(opts, parent_run_id=parent.run_id)  # members show nested under the ensemble in `mlflow ui`
    try:
        result = _train_members(cfg, opts, members, kind, out, manifest)
    except BaseException:
        parent.end("FAILED")
        raise
    m = result[0]
    parent.metrics({k: v for k, v in m.items() if isinstance(v, float)})
    parent.artifact(out / MANIFEST)
    parent.end("FINISHED")
    return result


def _train_members(cfg, opts, members: int, kind: str, out: Path, manifest: dict):
    from .train import train
    if kind == "boosting":
        manifest.update(_boost(cfg, opts, members), vote="hard")
    elif kind == "snapshot":  # one run, a cosine cycle per member, a bundle at the end of each cycle
        run = copy.deepcopy(cfg)
        run.schedule.schedule, run.schedule.cycles = "cyclic", members
        run.train.epochs = cfg.train.epochs * members if cfg.train.epochs % members else cfg.train.epochs
        if train(run.validate(), replace(opts, out=out / "run")).get("stopped") == "interrupted":
            raise ImagefitError(f"the run was interrupted; resume it with 'imagefit train --resume {out / 'run'}'")
        manifest["members"] = [f"run/snapshots/cycle-{k}/bundle.safetensors" for k in range(1, members + 1)]
    else:
        manifest["members"] = []
        for i in range(members):
            member = copy.deepcopy(cfg)
            member.train.seed = cfg.train.seed + i
            if kind == "bagging":
                member.data.bootstrap = i + 1
            if train(member.validate(), replace(opts, out=out / f"member-{i + 1}")).get("stopped") == "interrupted":
                raise ImagefitError(f"member {i + 1} was interrupted; resume it with 'imagefit train --resume "
                                    f"{out / f'member-{i + 1}'}', then evaluate with --bundle for each member")
            manifest["members"].append(f"member-{i + 1}/bundle.safetensors")
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return evaluate_bundles([str(out)], data=cfg.data.data)


def _boost(cfg, opts, members: int) -> dict:
    """SAMME (Zhu et al. 2009) by resampling: member m trains on images drawn in proportion to the weights w;
    its weighted training error e gives α = log((1 − e)/e) + log(K − 1); the images it gets wrong have their
    weight multiplied by exp(α). The ensemble votes with the α's (hard voting). Returns the manifest's members
    and weights."""
    from .evaluate import gather_logits
    from .loader import Loader
    from .train import Trainer
    out, names, alphas, w = Path(opts.out), [], [], None
    for i in range(members):
        member = copy.deepcopy(cfg)
        member.train.seed = cfg.train.seed + i
        trainer = Trainer(member.validate(), replace(opts, out=out / f"member-{i + 1}"))
        train_set, k = trainer.data.train, len(trainer.data.classes)
        if w is None:
            w = torch.full((len(train_set),), 1.0 / len(train_set), dtype=torch.float64)
        trainer.train_loader.weights = w.float()
        if trainer.fit().get("stopped") == "interrupted":
            raise ImagefitError(f"member {i + 1} was interrupted; boosting needs each member whole: start again")
        loader = Loader(train_set, 500, trainer.normalize, device=trainer.device)
        scores, labels = gather_logits(trainer.model, loader)
        wrong = (scores.argmax(1) != labels).double()
        error = float((w * wrong).sum() / w.sum())
        alpha = math.log(max(1 - error, 1e-10) / max(error, 1e-10)) + math.log(k - 1)
        if alpha <= 0:  # no better than chance on the weighted set: SAMME stops here
            break
        names.append(f"member-{i + 1}/bundle.safetensors")
        alphas.append(alpha)
        w = w * torch.exp(alpha * wrong)
        w = w / w.sum()
    if len(names) < 2:
        raise ImagefitError(f"boosting kept {len(names)} member(s) (the next was no better than chance on the "
                            f"reweighted images); use --kind seeds or bagging")
    return {"members": names, "weights": alphas}
