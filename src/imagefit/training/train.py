"""The training loop: one readable loop, the varying parts (tracking, checkpoints, early stopping, progress) as
plain calls at the epoch's end.

A run lives in one folder (`--out`): config.yaml (the full config, verbatim), checkpoints/last.pt after every
epoch and on interruption, checkpoints/best.safetensors (best validation weights), curves.png, confusion.png,
metrics.json and bundle.safetensors. `train(cfg, RunOptions(out, resume=True))` continues a stopped run exactly:
the weights at the end are bitwise those of a run that was never stopped (on the same machine and threads).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from . import distributed
from .. import plots
from ..allocator import keep_freed_memory
from ..data.augment import BatchAugment
from ..bundle import load_bundle, load_weights, save_bundle
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config
from ..data.sources import ImageSet, Splits, data_root, describe_change, fingerprint, load_splits
from ..errors import ImagefitError
from ..evaluation.evaluate import gather_logits
from ..files import RunLock, atomic_path, atomic_write_text, check_writable, remove_stale_temporaries
from ..data.imbalance import TAU_GRID, class_weights, log_priors
from ..data.loader import Loader
from ..data.mix import hits
from .lr_finder import FinderResult, describe_candidates, range_test
from ..evaluation.metrics import calibration, collapse_warning, scale_temperature, summarize
from ..models import EpochAware, TrainsFromData, check_options, count_params, create_model, input_stats, is_head, norm_parameter_ids
from .ema import WeightEMA
from .optim import Lookahead, build_optimizer, build_schedule
from ..preprocessing import Normalize, Preprocessing, adjust_logits
from .progress import Progress
from ..runtime import autocast_for, resolve_device, set_threads
from ..seeds import flip_seed, seed_everything
from ..tracking import check_store, default_uri, start_run


@dataclass
class RunOptions:
    """How to run, as opposed to what to train (which is the Config)."""
    out: Path
    resume: bool = False
    tracking_uri: str | None = None  # None: the local default; "none": off
    experiment: str = "imagefit"
    stop_after_steps: int = 0  # stop as if interrupted after this many optimizer steps in all (0: never)
    progress: str = "auto"  # auto | bar | lines
    log: Callable[[str], None] | None = None  # where one-line messages go (stderr by default)
    on_epoch_end: Callable[[Trainer, dict], None] | None = None  # (trainer, the epoch's row), e.g. benchmarks
    parent_run_id: str | None = None  # MLflow run this one is nested under (a study, a cross-validation)
    run_name: str | None = None  # the MLflow run's name (the --out folder's name by default)
    writes: bool = True  # False: the Trainer only serves a range test (find-lr): no run folder is claimed
    data: str | None = None  # with resume: the data folder, when it has moved since the run started


# ---------------------------------------------------------------------------------------------- setup helpers

def make_loss(cfg: Config, weight: torch.Tensor | None = None):
    """The training loss; `weight` (one per class) for --balance reweight."""
    if cfg.optim.loss == "nll":
        if cfg.optim.label_smoothing > 0:
            raise ImagefitError("--label-smoothing needs --loss cross-entropy; nll takes hard labels only")
        return lambda logits, y: F.nll_loss(F.log_softmax(logits.float(), 1), y, weight=weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.optim.label_smoothing)


class _StopSignal:
    """SIGINT/SIGTERM during training ask for a clean stop after the current step (a second SIGINT kills)."""

    def __init__(self):
        self.requested, self.signum = False, None

    def __enter__(self):
        self.saved = {}
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------- trainer

class Trainer:
    def __init__(self, cfg: Config, opts: RunOptions):
        self.opts = opts
        self.out = Path(opts.out)
        self.log = opts.log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lock = self._claim_folder() if opts.writes else None
        try:
            self._setup(cfg)
        except BaseException:
            if self.lock is not None:  # nothing was written yet: leave the folder as it was found
                self.lock.release(undo=True)
                self.lock = None
            raise

    def _claim_folder(self) -> RunLock | None:
        """Lock the run folder (rank 0 of a torchrun job holds it for all), then check it is new, empty or (with
        --resume) a run, before any data is read; remove what a process killed mid-write left behind."""
        if int(os.environ.get("RANK", "0")) != 0:
            return None
        self._check_folder()  # before anything is created in it
        lock = RunLock(self.out).acquire()
        try:
            self._check_folder()  # again: another process may have written there meanwhile
        except ImagefitError:
            lock.release(undo=True)
            raise
        for path in remove_stale_temporaries(self.out, self.out / "checkpoints"):
            self.log(f"removed {path}, left by a process killed while writing it")
        return lock

    def _check_config_file(self, cfg: Config) -> None:
        """config.yaml describes the run; resume follows the checkpoint's copy, so an edited file would contradict
        the run silently: refuse, naming the first difference."""
        path = self.out / "config.yaml"
        if not path.exists():
            return
        try:
            written = Config.from_dict(yaml.safe_load(path.read_text()) or {}, where=str(path)).to_dict()
        except (yaml.YAMLError, ImagefitError, UnicodeDecodeError) as e:
            raise ImagefitError(f"{path} was edited and no longer reads as the run's config ({str(e)[:80]}); the run "
                                f"continues with the config in its checkpoint: restore the file (or delete it) and "
                                f"resume again") from None
        saved = cfg.to_dict()
        for section, fields in saved.items():
            for name, value in fields.items():
                if written[section][name] != value:
                    raise ImagefitError(f"{path} was edited ({section}.{name}: {written[section][name]!r}, the run "
                                        f"has {value!r}); a run resumes with the config it started with: restore the "
                                        f"file (or delete it), or start a new run with the new value")

    def _check_folder(self) -> None:
        out = check_writable(self.out)
        if self.opts.resume or not out.exists():
            return
        if (out / "checkpoints" / "last.pt").exists() or (out / "bundle.safetensors").exists():
            raise ImagefitError(f"{out} already holds a run; continue it with --resume {out}, or choose another --out")
        others = sorted(p.name for p in out.iterdir() if p.name != RunLock.NAME)
        if others:
            raise ImagefitError(f"{out} is not empty and is not a run (it holds {', '.join(others[:3])}"
                                f"{' …' if len(others) > 3 else ''}); a run needs a new or empty folder: choose "
                                f"another --out")

    def release(self) -> None:
        """Let go of the run folder (the end of fit does; so does the process's end, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self, cfg: Config) -> None:
        opts = self.opts
        checkpoint = None
        if opts.resume:
            checkpoint = load_checkpoint(self.out / "checkpoints" / "last.pt")
            cfg = Config.from_dict(json.loads(checkpoint["config"]), where=f"{self.out}/checkpoints/last.pt")
            self._check_config_file(cfg)
            if opts.data is not None:  # the folder moved: the fingerprint below says whether it is the same data
                cfg.data.data = str(opts.data)
        self.cfg = cfg.validate()
        check_options(cfg.model)
        keep_freed_memory()  # a library caller gets the tool's speed too
        t = cfg.train
        set_threads(t.threads)
        self.world = distributed.setup(t.device)
        if not self.world.main:
            self.log = lambda msg: None
        self.device = resolve_device(t.device)
        if self.world.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        seed_everything(t.seed, t.deterministic)

        # The store: the one asked for, else (resuming) the run's own, else the local default; rank 0 tracks for
        # everyone. A remote one is opened before the data is read: a wrong URI is refused in seconds.
        self.tracking_uri = (opts.tracking_uri or (checkpoint or {}).get("tracking_uri") or default_uri()) \
            if self.world.main else "none"
        check_store(self.tracking_uri, opts.experiment)
        self.data: Splits = load_splits(cfg.data, t.seed)
        if not cfg.data.data:  # found through IMAGEFIT_DATA or the cache: recorded, so report and evaluate find it
            cfg.data.data = str(data_root(cfg.data).resolve())
        self.data_fingerprint = fingerprint(self.data)
        if checkpoint is not None and checkpoint.get("data"):
            change = describe_change(json.loads(checkpoint["data"]), self.data_fingerprint)
            if change:
                raise ImagefitError(f"{self.out} was trained on other data: {change}; resume on the data it started "
                                    f"with (--data DIR, if that folder has moved), or start a new run")
        if t.early_stopping and self.data.val is None:
            raise ImagefitError("--early-stopping needs a validation split; set --val-fraction above 0")
        self.batch_note = None  # said with the model line, once the run is set up (a setup error says only itself)
        if t.batch_size == "auto":
            t.batch_size = auto_batch_size(len(self.data.train) // self.world.size) * self.world.size
            if t.batch_size < AUTO_BATCH:
                self.batch_note = (f"batch size {t.batch_size} (auto: {len(self.data.train):,} training images; "
                                   f"{AUTO_BATCH} would give an epoch {len(self.data.train) // AUTO_BATCH} steps)")
        self.channels_last = t.channels_last != "no"
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = create_model(len(self.data.classes), cfg.model)
        start = self._starting_weights(load=checkpoint is None)  # a resumed run has its weights already
        self.preprocessing = self._resolve_preprocessing(start)
        self.model.to(self.device, memory_format=memory_format)
        if cfg.model.freeze_body:
            self._freeze_body()
        self.normalize = normalize = self.preprocessing.normalizer(self.device, self.channels_last)
        self.params = count_params(self.model)
        if isinstance(self.model, TrainsFromData) and checkpoint is None and not cfg.model.init_from:
            self._init_from_data(normalize)
        auto_lr = cfg.optim.lr == "auto"
        if auto_lr and self.world.active:
            raise ImagefitError("--lr auto runs the range test in one process; run 'imagefit find-lr' first and pass "
                                "its rate with --lr")
        if auto_lr:
            cfg.optim.lr = 1.0  # a placeholder: the range test needs only the groups' ratios to it
        self.optimizer = build_optimizer(self.model, cfg)
        k, labels = len(self.data.classes), self.data.train.labels
        self.log_prior = log_priors(labels, k)  # for --logit-adjust, applied to scores gathered on the CPU
        self.tau = 0.0 if t.logit_adjust == "auto" else t.logit_adjust  # auto: chosen at the end, on validation
        self.temperature = 1.0  # fitted at the end, on validation (--calibrate)
        self.loss_fn = make_loss(cfg, class_weights(labels, k).to(self.device) if t.balance == "reweight" else None)
        self.autocast, self.scaler = autocast_for(self.device, t.amp)

        common = dict(seed=t.seed, device=self.device, workers=cfg.data.workers)
        synthetic = self.data.synthetic
        augment = BatchAugment(cfg.augment, normalize, self._distinct_images(), flip_seed(t.seed), k)
        self.train_loader = Loader(self.data.train, t.batch_size, normalize, augment=augment,
                                   shuffle=True, drop_last=True, balance=t.balance, synthetic=synthetic,
                                   synthetic_ratio=cfg.data.synthetic_ratio,
                                   shard=(self.world.rank, self.world.size), **common)
        eval_batch = max(t.batch_size, 256)
        self.val_loader = Loader(self.data.val, eval_batch, normalize, **common) if self.data.val else None
        self.test_loader = Loader(self.data.test, eval_batch, normalize, **common) if self.data.test else None
        self.calibration_loader = Loader(self.data.calibration, eval_batch, normalize, **common) \
            if self.data.calibration else self.val_loader  # where --calibrate fits the temperature
        steps = self._steps_warning()
        self.warnings = [steps] if steps else []
        self.lr_finder: FinderResult | None = None
        if auto_lr:
            self._find_lr()
        self.schedule = build_schedule(self.optimizer, cfg, len(self.train_loader))
        self.lookahead = Lookahead(self.model, t.lookahead, t.epochs * len(self.train_loader)) if t.lookahead else None
        self.ema = WeightEMA(self.model, t.ema) if t.ema else None
        self.net = self.model  # what the training step calls: the model, or its DDP wrapper under torchrun
        if self.world.active:
            if t.sync_bn:
                distributed.sync_batchnorm(self.model, self.device.type == "cuda")
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        # Position and running state; restored from the checkpoint when resuming.
        self.epoch, self.step, self.global_step, self.seconds = 0, 0, 0, 0.0
        self.sums = torch.zeros(3, dtype=torch.float64)  # the epoch's loss·n, correct, n
        self.history: list[dict] = []
        self.best, self.best_epoch, self.bad_epochs = None, None, 0
        self.finished, self.tracking_run_id = False, None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _starting_weights(self, load: bool):
        """--init-from: the bundle (or None), its weights loaded when `load`, its head too when the classes are
        the same."""
        if not self.cfg.model.init_from:
            return None
        bundle = load_bundle(self.cfg.model.init_from)
        if not load:
            return bundle
        weights = dict(bundle.model.state_dict())
        if bundle.classes != self.data.classes:
            own = self.model.state_dict()
            weights = {k: own[k] if is_head(k) else v for k, v in weights.items()}
        load_weights(self.model, weights, f"--init-from {bundle.path} (a {bundle.config.model.model})")
        return bundle

    def _resolve_preprocessing(self, start) -> Preprocessing:
        """The contract, once: the data's size and resize rule, its class order, the run's TTA, and the statistics
        the starting weights saw (the --init-from bundle's, the pretrained weights', else the training set's)."""
        c, data = self.cfg, self.data
        if start is not None:
            mean, std = start.preprocessing.mean, start.preprocessing.std
        else:
            mean, std = input_stats(c.model) or (data.mean, data.std)
        return Preprocessing(c.data.size, c.data.resize, list(mean), list(std), list(data.classes), c.train.tta,
                             c.train.tta_average)

    def _freeze_body(self) -> None:
        norm_params = norm_parameter_ids(self.model)
        fresh = getattr(self.model, "fresh_parameters", set())
        for name, p in self.model.named_parameters():
            if not is_head(name) and id(p) not in norm_params and name not in fresh:
                p.requires_grad_(False)

    def _init_from_data(self, normalize: Normalize) -> None:
        """Data-dependent init (e.g. FastNet's whitening) from up to 5,000 training images, normalized."""
        train = self.data.train
        n = min(len(train), 5000)
        images = train.images[:n] if isinstance(train, ImageSet) else torch.stack([train.read(i) for i in range(n)])
        self.model.init_from_data(normalize(images.to(self.device)))

    def _steps_warning(self) -> str | None:
        """Said before training when a model trained from scratch gets too few optimizer steps to learn."""
        cfg, t = self.cfg, self.cfg.train
        steps = t.epochs * len(self.train_loader)
        if cfg.model.init_from or cfg.model.pretrained != "none" or steps >= MIN_SCRATCH_STEPS:
            return None
        return (f"this run has only {steps} optimizer step{'s' * (steps != 1)} ({t.epochs} epoch{'s' * (t.epochs != 1)} "
                f"of {len(self.train_loader)} batch{'es' * (len(self.train_loader) != 1)} of "
                f"{t.batch_size} from {len(self.data.train):,} images); a {cfg.model.model} trained from scratch "
                f"rarely learns in under {MIN_SCRATCH_STEPS} and may end predicting one class: raise --epochs, "
                f"lower --batch-size, fine-tune a pretrained model (imagefit fine-tune), or use --recipe fast")

    def batch_stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches, epoch after epoch from the first, as training would see them."""
        for epoch in itertools.count():
            for _, x, y in self.train_loader.batches(epoch):
                yield x, y

    def range_test(self, **kwargs) -> FinderResult:
        """The learning-rate range test on this run's model, optimizer and batches; everything restored after."""
        with Progress(self.opts.progress if self.world.main else "off").range_test() as on_step:
            return range_test(self.model, self.optimizer, self.batch_stream(), self.loss_fn,
                              base_lr=self.cfg.optim.lr, autocast=self.autocast,
                              train_images=self._distinct_images() // self.world.size, on_step=on_step, **kwargs)

    def _distinct_images(self) -> int:
        synthetic = self.data.synthetic
        return len(self.data.train) + (len(synthetic) if synthetic else 0)

    def _find_lr(self) -> None:
        """--lr auto: train at the range test's suggestion, with an optimizer built afresh at that rate (so the
        run equals one started with --lr set to it; the saved config holds the number)."""
        self.lr_finder = self.range_test()
        self.cfg.optim.lr = self.lr_finder.suggestion
        self.optimizer = build_optimizer(self.model, self.cfg)
        r = self.lr_finder
        self.log(f"lr finder: training at {r.suggestion:.2e}, the {r.rule} ({describe_candidates(r)}; "
                 f"{len(r.lrs)} steps, {r.stopped})")
        if r.warning:
            self.log(f"lr finder warning: {r.warning}")

    # -- state -------------------------------------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "config": self.cfg.to_json(), "model": self.model.state_dict(),
            "data": json.dumps(self.data_fingerprint),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule else {},
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "lookahead": self.lookahead.slow if self.lookahead else {},
            "ema": self.ema.model.state_dict() if self.ema else {},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step, "seconds": self.seconds,
            "sums": self.sums, "history": json.dumps(self.history), "best": self.best,
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "finished": self.finished,
            "tracking_run_id": self.tracking_run_id or "", "tracking_uri": self.tracking_uri,
        }

    def _restore(self, s: dict) -> None:
        load_weights(self.model, s["model"], f"{self.out}/checkpoints/last.pt")
        self.optimizer.load_state_dict(s["optimizer"])
        if self.schedule:
            self.schedule.load_state_dict(s["schedule"])
        if self.scaler and s["scaler"]:
            self.scaler.load_state_dict(s["scaler"])
        if self.lookahead:
            for k, v in s["lookahead"].items():
                self.lookahead.slow[k].copy_(v)
        if self.ema:
            load_weights(self.ema.model, s["ema"], f"{self.out}/checkpoints/last.pt (the weights' average)")
        torch.set_rng_state(s["torch_rng"])
        if s["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        self.epoch, self.step, self.global_step = s["epoch"], s["step"], s["global_step"]
        self.seconds, self.sums, self.history = s["seconds"], s["sums"], json.loads(s["history"])
        self.best, self.best_epoch, self.bad_epochs = s["best"], s["best_epoch"], s["bad_epochs"]
        self.finished, self.tracking_run_id = s["finished"], s["tracking_run_id"] or None

    def _save_last(self) -> None:
        if self.world.main:
            save_checkpoint(self.out / "checkpoints" / "last.pt", self._state())

    # -- the loop ----------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.opts.resume and self.finished and (self.out / "bundle.safetensors").exists():
            return self._finished_already()  # (without its bundle, it was stopped in its final evaluation: redo that)
        self.out.mkdir(parents=True, exist_ok=True)
        self._resumed_here = self.opts.resume  # the next epoch row is the first this process finishes
        if (not self.opts.resume or self.opts.data is not None) and self.world.main:  # new, or its data moved
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.tracker = start_run(self.tracking_uri, self.opts.experiment, self.opts.run_name or self.out.name,
                                 cfg.to_dict(), run_id=self.tracking_run_id, parent=self.opts.parent_run_id)
        self.tracking_run_id = self.tracker.run_id
        if self.opts.resume and self.tracking_run_id:
            self.log(f"continuing MLflow run {self.tracking_run_id} (it stayed RUNNING while the run was stopped)")
        if self.lr_finder:
            atomic_write_text(self.out / "lr_finder.json", json.dumps(self.lr_finder.to_dict(), indent=1))
            self.tracker.artifact(plots.lr_finder(self.lr_finder, self.out / "lr_finder.png"))
        held = f" ({len(self.data.calibration):,} held out to calibrate)" if self.data.calibration else ""
        self.log(f"{cfg.model.model}: {self.params:,} parameters; {len(self.data.train):,} train, "
                 f"{len(self.data.val) if self.data.val else 0:,} val{held}, "
                 f"{len(self.data.test) if self.data.test else 0:,} test images; {self.device}"
                 + (f"; resuming at epoch {self.epoch + 1}, step {self.step}" if self.opts.resume else ""))
        if self.batch_note:
            self.log(self.batch_note)
        if self.data.test is None or not len(self.data.test):
            self.log(f"no test split in {self.data.source}: the run reports validation figures only (an ImageFolder "
                     f"tree gets one from a test/ folder beside train/); score the bundle later with 'imagefit "
                     f"evaluate --bundle {self.out} --data DIR'")
        for warning in self.warnings:
            self.log(f"warning: {warning}")
        # a step's expected cost by its image area (ResNet18 here takes 0.36x / 0.61x a 32-px step at 16 / 24 px, 0.25 /
        # 0.56 by area); Progress replaces it with each size's measured pace once that size has run
        progress = Progress(self.opts.progress if self.world.main else "off",
                            costs=[(s / self.cfg.data.size) ** 2 for s in self.cfg.epoch_sizes()])
        stopped = "completed"
        try:
            with _StopSignal() as stop:
                while self.epoch < t.epochs and not self.finished:
                    completed = self._train_epoch(progress, stop)
                    if completed and self._end_epoch(progress):
                        stopped, self.finished = "early_stopping", True
                    if completed and self.opts.on_epoch_end:
                        self.opts.on_epoch_end(self, self.history[-1])
                    if self.epoch < t.epochs and not self.finished and (not completed or self._stop_asked(stop)):
                        self._save_last()
                        self.tracker.end("KILLED")
                        self.log(f"stopped at epoch {self.epoch + 1}, step {self.step}; continue with "
                                 f"'imagefit train --resume {self.out}'")
                        result = {"stopped": "interrupted", "epoch": self.epoch, "step": self.step,
                                  "run_dir": str(self.out), "resume": f"imagefit train --resume {self.out}"}
                        if stop.requested:  # a signal, not --stop-after-steps: the command exits 128 + it
                            result["signal"] = signal.Signals(stop.signum).name
                        return result
                    self._save_last()
        except BaseException:
            progress.close()
            self.tracker.end("FAILED")
            raise
        self.finished = True
        self._save_last()
        return self._finish(stopped)

    def _stop_asked(self, stop: _StopSignal) -> bool:
        return stop.requested or bool(self.opts.stop_after_steps and self.global_step >= self.opts.stop_after_steps)

    def _train_epoch(self, progress: Progress, stop: _StopSignal) -> bool:
        """Train from the current (epoch, step) to the epoch's end; False if stopped on the way."""
        model, t0 = self.net.train(), time.perf_counter()
        if isinstance(model, EpochAware):  # the model itself; under torchrun its DDP wrapper is not
            model.set_epoch(self.epoch)
        progress.start_epoch(self.epoch, self.cfg.train.epochs, len(self.train_loader), self.step)
        per_step = self.schedule is not None and not isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        # the first step whose loss was not finite, counted on the device (no host sync per step)
        taken, first_bad = torch.zeros((), dtype=torch.long, device=self.device), torch.full(
            (), -1, dtype=torch.long, device=self.device)
        start_step = self.step
        clip = self.cfg.optim.grad_clip
        for step, x, y in self.train_loader.batches(self.epoch, self.step):
            with self.autocast():
                logits = model(x)
                loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                if clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                self.optimizer.step()
            if per_step:
                self.schedule.step()
            if self.lookahead:
                self.lookahead.step(model, self.global_step + 1)
            if self.ema:
                self.ema.update(self.model, self.global_step)
            with torch.no_grad():  # summed on the device: no host sync per step
                taken += 1
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), taken, first_bad)
                sums[0] += loss.detach().double() * len(y)
                sums[1] += hits(logits, y)
                sums[2] += len(y)
            self.step, self.global_step = step + 1, self.global_step + 1
            if progress.live:
                progress.step(len(y), loss.item(), hits(logits, y).item() / len(y))
            else:
                progress.step(len(y), math.nan, math.nan)
            if self._stop_asked(stop) and self.step < len(self.train_loader):
                break
        self.sums += distributed.all_sum(sums, self.world).cpu()  # every rank's share of the global batches
        self.seconds += time.perf_counter() - t0
        if not math.isfinite(self.sums[0]):  # NaN or inf on any rank reaches every rank's sum
            progress.close()
            self._non_finite(start_step + int(first_bad) - 1 if int(first_bad) > 0 else None)
        if self.step < len(self.train_loader):
            progress.close()
            return False
        if self.lookahead and self.epoch == self.cfg.train.epochs - 1:
            self.lookahead.finish(model)
        return True

    def _non_finite(self, step: int | None) -> None:
        """Stop a run whose loss became NaN or infinite, before its weights reach a checkpoint: the last one on disk
        (the end of the previous epoch) stays the last good one."""
        where = f"epoch {self.epoch + 1}" + (f", step {step + 1} of {len(self.train_loader)}" if step is not None else "")
        kept = (f"the last good checkpoint (end of epoch {self.epoch}) is kept in {self.out / 'checkpoints' / 'last.pt'}"
                if self.epoch else "no checkpoint was kept (the first epoch failed)")
        raise ImagefitError(f"the training loss became non-finite at {where}: the learning rate is likely too high "
                            f"for this model (peak {self.cfg.optim.lr:g}); lower --lr (and --muon-lr) or set "
                            f"--grad-clip 1, and start a new run; {kept}")

    def _end_epoch(self, progress: Progress) -> bool:
        """Validate, log, keep the best weights; True when early stopping says stop."""
        loss_sum, correct, n = self.sums.tolist()
        row = {"epoch": self.epoch + 1, "train_loss": loss_sum / max(n, 1), "train_accuracy": correct / max(n, 1),
               "lr": self.optimizer.param_groups[0]["lr"]}
        if self.val_loader:
            logits, labels = self._scores(self.val_loader, autocast=self.autocast)
            row["val_loss"] = F.cross_entropy(logits, labels).item()
            row["val_accuracy"] = (logits.argmax(1) == labels).float().mean().item()
        if self._resumed_here:
            row["resumed"], self._resumed_here = True, False  # the first epoch this process of a resumed run ends
        if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.schedule.step(row.get(self.cfg.train.monitor, row["train_loss"]))
        self.history.append(row)
        self.tracker.metrics(row, step=self.epoch + 1)
        progress.end_epoch(row)
        self.epoch, self.step = self.epoch + 1, 0
        s, cycle_epochs = self.cfg.schedule, self.cfg.train.epochs // self.cfg.schedule.cycles
        if s.schedule == "cyclic" and s.cycles > 1 and self.epoch % cycle_epochs == 0 and self.world.main:
            cycle = self.epoch // cycle_epochs
            save_bundle(self.out / "snapshots" / f"cycle-{cycle}" / "bundle.safetensors", self.eval_model,
                        self._preprocessing(), self.cfg, {"epoch": self.epoch, "cycle": cycle})
        self.sums = torch.zeros(3, dtype=torch.float64)

        if self.val_loader is None:
            return False
        value = row[self.cfg.train.monitor]
        better = self.best is None or (value < self.best if self.cfg.train.monitor == "val_loss" else value > self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
            if self.world.main:
                weights = {k: v.detach().cpu().contiguous() for k, v in self.eval_model.state_dict().items()}
                with atomic_path(self.out / "checkpoints" / "best.safetensors") as tmp:
                    save_file(weights, str(tmp))
            distributed.barrier(self.world)  # the other ranks reload these weights at the end
        else:
            self.bad_epochs += 1
        patience = self.cfg.train.early_stopping
        if patience and self.bad_epochs >= patience:
            self.log(f"early stopping: {self.cfg.train.monitor} has not improved for {patience} epochs "
                     f"(best {self.best:.4f} at epoch {self.best_epoch})")
            return True
        return False

    # -- the end -----------------------------------------------------------------------------------------------

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and the best checkpoint hold: the weights' average under --ema, else the model."""
        return self.ema.model if self.ema else self.model

    def _scores(self, loader: Loader, tau: float | None = None, autocast=None,
                name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores in float32 unless an autocast is given: the figures a bundle records are the ones `evaluate`,
        `predict` and `serve` reproduce from it; only the per-epoch validation runs in the training precision.
        With a `name`, the pass shows its progress (the final test with its TTA views can take minutes)."""
        p = self.preprocessing
        shown = self.opts.progress if name and self.world.main else "off"
        label = f"{name}{'' if p.tta == 'none' else f' (TTA {p.tta})'}"
        with Progress(shown).evaluation(label, len(loader)) as on_batch:
            scores, labels = gather_logits(self.eval_model, loader, autocast, p.tta, p.tta_average, on_batch)
        return adjust_logits(scores, self.log_prior, self.tau if tau is None else tau) / self.temperature, labels

    def test_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 scores (the bundle's TTA and logit adjustment applied) and labels of the test split, in its
        order: what the run's final test figures are computed from."""
        if self.test_loader is None:
            raise ImagefitError(f"{self.data.source} has no test split")
        return self._scores(self.test_loader, name="final test")

    def _choose_tau(self) -> None:
        """--logit-adjust auto: the strength with the best validation balanced accuracy (ties: the smaller)."""
        scores, labels = self._scores(self.val_loader, tau=0.0)
        table = {tau: summarize(adjust_logits(scores, self.log_prior, tau), labels, self.data.classes)["balanced_accuracy"]
                 for tau in TAU_GRID}
        self.tau = max(TAU_GRID, key=lambda tau: (table[tau], -tau))
        self.log(f"logit adjustment: strength {self.tau:g} (validation balanced accuracy "
                 f"{table[self.tau]:.4f}; {table[0.0]:.4f} without)")

    def _preprocessing(self) -> Preprocessing:
        """The contract the bundle carries: the one resolved at the start, with the logit adjustment and the
        temperature chosen (the bundle's scores are adjusted and scaled wherever it is used)."""
        adjust = {"tau": self.tau, "log_prior": self.log_prior.tolist()} if self.tau else None
        return replace(self.preprocessing, logit_adjust=adjust, temperature=self.temperature)

    def _calibrate(self, metrics: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Temperature scaling on the validation split (or the slice of train held out for it): one number that
        divides the scores, fitted to their cross-entropy there; accuracy unchanged, the expected calibration
        error before and after recorded (as val_ece_*: on held-out images either way)."""
        self.temperature = 1.0
        scores, labels = self._scores(self.calibration_loader)
        fitted = scale_temperature(scores, labels)
        self.temperature, before, after = fitted["temperature"], fitted["ece_before"], fitted["ece_after"]
        metrics.update(temperature=self.temperature, val_ece_before=round(before, 5), val_ece_after=round(after, 5))
        self.log(f"calibration: temperature {self.temperature:.3f} (validation calibration error {100 * before:.2f}% "
                 f"-> {100 * after:.2f}%)")
        return scores, labels

    def _finish(self, stopped: str) -> dict:
        """Best weights back in, test evaluation, plots, bundle, tracking; the result as a dict."""
        best = self.out / "checkpoints" / "best.safetensors"
        if self.ema:  # from here on the model is the average: tested, calibrated and bundled
            load_weights(self.model, self.ema.model.state_dict(), "the weights' average")
            self.ema = None
        if self.val_loader and best.exists():  # chosen on validation data only
            load_weights(self.model, load_file(str(best)), str(best))
        metrics = {"epochs": self.epoch, "best_epoch": self.best_epoch, "params": self.params,
                   "seconds": round(self.seconds, 2), "stopped": stopped}
        if self.cfg.train.logit_adjust == "auto":
            self._choose_tau()
        if self.tau or self.cfg.train.logit_adjust == "auto":
            metrics["logit_adjust"] = self.tau
        calibrating = self.cfg.train.calibrate and self.calibration_loader is not None
        if calibrating and len(self.calibration_loader.data) < MIN_CALIBRATION_IMAGES:
            self.log(f"calibration skipped: the validation split has {len(self.calibration_loader.data)} images, too "
                     f"few to fit a temperature (at least {MIN_CALIBRATION_IMAGES}); fit one later on more images "
                     f"with 'imagefit calibrate --bundle {self.out}'")
            calibrating = False
        if self.val_loader:
            # one pass over validation: the temperature divides the scores, so it leaves their argmax alone
            val = self._calibrate(metrics) if calibrating else self._scores(self.val_loader)
            metrics["val_accuracy"] = summarize(*val, self.data.classes)["accuracy"]
        elif calibrating:  # the slice held out for it (--calibration-fraction)
            self._calibrate(metrics)
            metrics["calibration_images"] = len(self.data.calibration)
        report = None
        if self.test_loader:
            scores, labels = self.test_scores()
            report = summarize(scores, labels, self.data.classes)
            metrics.update({k: report[k] for k in ("accuracy", "top5", "loss", "n")})
            metrics["ece"] = round(calibration(scores.softmax(1), labels)["ece"], 5)
            collapsed = collapse_warning(report["confusion"], self.data.classes)
            if collapsed:
                self.warnings.append(collapsed)
                self.log(f"warning: {collapsed}")
        if self.warnings:
            metrics["warnings"] = self.warnings
        if not self.world.main:  # rank 0 writes the bundle, the plots and the metrics
            return {**metrics, "rank": self.world.rank}
        score = f", test accuracy {100 * metrics['accuracy']:.2f}%" if "accuracy" in metrics else ""
        artifacts = [plots.training_curves(self.history, self.out / "curves.png",
                                           f"{self.out.name}: {self.cfg.model.model}{score}", self.best_epoch)]
        if report:
            artifacts.append(plots.confusion_matrix(report["confusion"], self.data.classes, self.out / "confusion.png",
                                                    "test split"))
        full = {**metrics, "history": self.history, "test": report, "data": self._data_summary()}
        atomic_write_text(self.out / "metrics.json", json.dumps(full, indent=1))

        tracked = {"mlflow_run_id": self.tracking_run_id, "mlflow_uri": self.tracking_uri} \
            if self.tracking_run_id else {}  # so evaluate and report can link their runs to this one
        bundle = save_bundle(self.out / "bundle.safetensors", self.model, self._preprocessing(), self.cfg,
                             {**metrics, **tracked, "created": datetime.now().isoformat(timespec="seconds")})
        # End-of-run figures get their own names, so they never extend the per-epoch curves.
        final_names = {"accuracy": "test_accuracy", "top5": "test_top5", "loss": "test_loss",
                       "val_accuracy": "final_val_accuracy"}
        self.tracker.metrics({final_names.get(k, k): v for k, v in metrics.items()}, step=self.epoch)
        for path in [*artifacts, self.out / "metrics.json", self.out / "config.yaml", bundle]:
            self.tracker.artifact(path)
        self.tracker.end("FINISHED")
        return {**metrics, "bundle": str(bundle), "run_dir": str(self.out), "mlflow_run_id": self.tracking_run_id,
                "mlflow_uri": self.tracking_uri if self.tracking_run_id else None}


    def _data_summary(self) -> dict:
        """Images per class in each split, in class order (the report's setup section shows them)."""
        k = len(self.data.classes)
        counts = {name: torch.bincount(split.labels, minlength=k).tolist()
                  for name, split in (("train", self.data.train), ("val", self.data.val), ("test", self.data.test),
                                      ("calibration", self.data.calibration))
                  if split is not None}
        return {"source": self.data.source, "classes": list(self.data.classes), **counts}

    def _finished_already(self) -> dict:
        """--resume of a run that ended: say so, and give its result without training or writing anything."""
        self.log(f"{self.out} finished already ({self.epoch} of {self.cfg.train.epochs} epochs); nothing to resume. "
                 f"Its bundle: {self.out / 'bundle.safetensors'}")
        try:
            metrics = json.loads((self.out / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
        metrics = {k: v for k, v in metrics.items() if k not in ("history", "test")}
        return {**metrics, "stopped": "finished already", "bundle": str(self.out / "bundle.safetensors"),
                "run_dir": str(self.out), "mlflow_run_id": self.tracking_run_id}


MIN_CALIBRATION_IMAGES = 20  # a temperature fitted on 3 images (a tiny folder's validation split) was 37: noise
MIN_SCRATCH_STEPS = 200  # fewer, and a ResNet trained from scratch on a small folder predicted one class (issue 28)
AUTO_BATCH, MIN_AUTO_BATCH, MIN_EPOCH_STEPS = 128, 16, 50


def auto_batch_size(images: int) -> int:
    """`--batch-size auto`: 128, or the largest power of two that gives an epoch at least 50 steps, not below 16:
    2,000 images train at 32 (56 steps an epoch), where 128 gave 14 and ResNets trained from scratch collapsed."""
    batch = AUTO_BATCH
    while batch > MIN_AUTO_BATCH and images // batch < MIN_EPOCH_STEPS:
        batch //= 2
    return batch


def train(cfg: Config, opts: RunOptions) -> dict:
    trainer = Trainer(cfg, opts)
    try:
        return trainer.fit()
    finally:
        distributed.teardown(trainer.world)
