"""Progress: a live bar on a terminal; one plain line per epoch when output goes to a file or CI log. Both say how
long the whole run has left (from this process's pace so far), and the final evaluation reports its own progress."""

from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    def __init__(self, mode: str = "auto", stream=None, costs: list[float] | None = None):
        """`costs`: a step's expected relative cost in each epoch (progressive resizing's small epochs cost less; 1
        each if not given), so the run's time left does not start low while they run. Once steps of a cost have run,
        their measured pace replaces the expectation for the epochs of that cost still to come."""
        self.stream = stream or sys.stderr
        self.quiet = mode == "off"  # the other ranks of a torchrun job: rank 0 reports
        self.live = not self.quiet and (mode == "bar" or (mode == "auto" and self.stream.isatty()))
        self.bar = None
        self.costs = costs
        # for the run's time left: this process's seconds and steps by step cost (the time between two steps, the
        # validation at an epoch's end included, goes to the later step), and the clock at the last step
        self.pace: dict[float, list] = {}
        self.last = None

    def run_left(self) -> str:
        """The whole run's time left at this process's pace so far ('' before the first step): a step of a cost
        already run here takes its measured seconds. One of a cost not yet run takes a fixed part plus a part in
        proportion to its cost, the line through the two costliest sizes run so far (while one size has run: in
        proportion to its cost alone). A step costs its launches and bookkeeping besides its arithmetic: on a 2-core
        CPU ResNet18's 16/24-px steps take 0.36x/0.61x a 32-px step (0.25x/0.56x by area), and this line puts the
        32-px step at 0.96x of its measured time, where area alone from 24 px says 1.08x; on a GPU at batch 128 the
        steps of every size take the same time, which area alone overstated 5x."""
        if not self.pace:
            return ""
        seen = sorted(self.pace)
        largest, top = seen[-1], self._measured(seen[-1])
        fixed, per_cost = 0.0, top / largest  # in proportion to cost: all one size can tell
        if len(seen) > 1:
            slope = max((top - self._measured(seen[-2])) / (largest - seen[-2]), 0.0)
            if top >= slope * largest:  # else steps costlier than their share: no fixed part, keep the proportion
                fixed, per_cost = top - slope * largest, slope

        def per_step(cost: float) -> float:
            return self._measured(cost) if cost in self.pace else fixed + per_cost * cost
        left = max(self.steps - self.step_in_epoch, 0) * per_step(self.cost(self.epoch)) + self.steps * sum(
            per_step(self.cost(e)) for e in range(self.epoch + 1, self.epochs))
        return f"run {int(left // 60)}m{int(left % 60):02d}s left"

    def _measured(self, cost: float) -> float:
        seconds, n = self.pace[cost]
        return seconds / n

    def cost(self, epoch: int) -> float:
        return self.costs[epoch] if self.costs else 1.0

    def start_epoch(self, epoch: int, epochs: int, steps: int, start: int = 0) -> None:
        self.epoch, self.epochs, self.steps, self.t0, self.images = epoch, epochs, steps, time.perf_counter(), 0
        self.step_in_epoch = start
        if self.last is None:
            self.last = self.t0
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
            from rich.console import Console
            self.bar = Bar(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), TextColumn("{task.fields[run]}"),
                           transient=True, console=Console(file=self.stream))
            self.bar.start()
            self.task = self.bar.add_task("", total=steps, completed=start, stats="", run="")

    def step(self, images: int, loss: float, accuracy: float) -> None:
        self.images += images
        now = time.perf_counter()
        pace = self.pace.setdefault(self.cost(self.epoch), [0.0, 0])
        pace[0], pace[1], self.last = pace[0] + now - self.last, pace[1] + 1, now
        self.step_in_epoch += 1
        if self.bar is not None:
            rate = self.images / max(now - self.t0, 1e-9)
            self.bar.update(self.task, advance=1, stats=f"loss {loss:.3f} acc {accuracy:.3f} {rate:,.0f} img/s",
                            run=self.run_left())

    def end_epoch(self, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        seconds = time.perf_counter() - self.t0
        parts = [f"epoch {self.epoch + 1}/{self.epochs}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("train_", "val_")) and v is not None]
        parts += [f"lr {metrics['lr']:.3g}", f"{self.images / max(seconds, 1e-9):,.0f} img/s", f"{seconds:.1f}s"]
        if self.epoch + 1 < self.epochs and self.pace:
            parts.append(self.run_left())
        if not self.quiet:
            print("  ".join(parts), file=self.stream, flush=True)

    @contextlib.contextmanager
    def range_test(self, every: int = 25):
        """Yields the range test's `on_step(step, steps, lr, smoothed_loss)`: a live bar on a terminal, else a
        line every `every` steps (a test can take minutes before the first epoch starts)."""
        t0 = time.perf_counter()
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
            bar = Bar(TextColumn("lr range test"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                      TimeRemainingColumn(), transient=True, console=Console(file=self.stream))
            task = bar.add_task("", total=None, stats="")

            def on_step(step, steps, lr, loss):
                bar.update(task, total=steps, completed=step, stats=f"rate {lr:.1e} loss {loss:.3f}")
            with bar:
                yield on_step
            return

        def on_step(step, steps, lr, loss):
            if not self.quiet and (step % every == 0 or step == steps):
                print(f"lr range test: step {step}/{steps}  rate {lr:.1e}  smoothed loss {loss:.4f}  "
                      f"{time.perf_counter() - t0:.1f}s", file=self.stream, flush=True)
        yield on_step

    @contextlib.contextmanager
    def evaluation(self, name: str, batches: int):
        """Yields `on_batch()` for a pass over `batches` batches (the final test, with its TTA views): a live bar on
        a terminal, else one line when it starts and one when it ends."""
        t0 = time.perf_counter()
        if self.quiet:
            yield lambda: None
            return
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
            bar = Bar(TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                      console=Console(file=self.stream))
            task = bar.add_task("", total=batches)
            with bar:
                yield lambda: bar.update(task, advance=1)
            return
        print(f"{name}: {batches} batch{'' if batches == 1 else 'es'}", file=self.stream, flush=True)
        yield lambda: None
        print(f"{name}: done in {time.perf_counter() - t0:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
