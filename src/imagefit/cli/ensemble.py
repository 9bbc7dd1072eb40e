"""`imagefit ensemble`: train an ensemble and evaluate it (`ensemble.train_ensemble`)."""

from __future__ import annotations

from .common import config_from_args, out_dir, print_evaluation, run_group, run_options

NAME = "ensemble"


def add_arguments(sub) -> None:
    p = sub.add_parser("ensemble", help="train an ensemble (seeds, bagging, snapshot, boosting) and evaluate it",
                       description="Train --members members into OUT (seeds: different seeds; bagging: each on its "
                                   "own bootstrap sample; snapshot: the cycles of one cyclic run; boosting: SAMME, "
                                   "images reweighted toward earlier members' errors), write OUT/ensemble.json and "
                                   "report members and ensemble on the test split (soft voting; boosting: "
                                   "α-weighted hard voting). 'imagefit evaluate --bundle OUT' evaluates it again.")
    run = run_group(p)
    run.add_argument("--members", type=int, default=5, help="number of members (default: 5)")
    run.add_argument("--kind", choices=("seeds", "bagging", "snapshot", "boosting"), default="seeds",
                     help="how members differ: seed, bootstrap sample (bagging), cycle of one cyclic run "
                          "(snapshot), or images reweighted toward the previous members' errors (boosting, SAMME)")


def run(args) -> dict:
    from ..experiments.ensemble import train_ensemble
    cfg = config_from_args(args)
    out = out_dir(args, "ensemble", empty=True)
    m, first = train_ensemble(cfg, run_options(args, out), args.members, args.kind)
    if not args.json:
        print_evaluation(m, first.classes)
    return {**m, "ensemble": str(out)}
