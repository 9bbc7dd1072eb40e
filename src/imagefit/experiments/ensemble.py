"""Training ensembles: members that differ by seed, bootstrap sample (bagging), cycle of one cyclic run (snapshot)
or reweighted images (boosting, SAMME). How they vote is `voting`'s; evaluating them is `evaluate.evaluate_bundles`'s.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ImagefitError
from ..evaluation.evaluate import evaluate_bundles
from ..files import atomic_write_text
from ..evaluation.voting import MANIFEST


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
    from ..tracking import start_run
    out, manifest = Path(opts.out), {"kind": kind}
    parent = start_run(opts.tracking_uri, opts.experiment, f"ensemble {out.name} ({kind})",
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
    from ..training.train import train
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
    from ..evaluation.evaluate import gather_logits
    from ..data.loader import Loader
    from ..training.train import Trainer
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
