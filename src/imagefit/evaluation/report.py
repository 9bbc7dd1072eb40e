"""The error-analysis report: `imagefit report RUN` writes RUN/report/index.html, one static page with its PNGs.

What a practitioner looks at after a baseline, in one place: training curves, the confusion matrix, per-class
precision/recall/F1, the most confused class pairs, the test images with the highest loss, calibration (expected
calibration error and a reliability diagram), the learning-rate finder's plot when the run has one, and a
robustness probe: accuracy on the test images rotated, blurred, shrunk, darkened and brightened, which says what
augmentation the model lacks. The figures are also logged to the run's MLflow store when it had one.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import plots
from ..errors import ImagefitError

PROBES = ("rotated 15°", "blurred", "shrunk to half", "darkened ×0.5", "brightened ×1.5")


def probe(images: torch.Tensor, kind: str) -> torch.Tensor:
    """A uint8 N×C×H×W batch, altered as the robustness probe `kind` says."""
    x = images.float()
    if kind.startswith("rotated"):
        from torchvision.transforms.v2.functional import rotate
        return rotate(images, 15.0)
    if kind == "blurred":
        from torchvision.transforms.v2.functional import gaussian_blur
        return gaussian_blur(images, [3, 3], [1.0, 1.0])
    if kind == "shrunk to half":
        h, w = images.shape[-2:]
        small = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    elif kind == "darkened ×0.5":
        x = x * 0.5
    elif kind == "brightened ×1.5":
        x = x * 1.5
    return x.round().clamp(0, 255).to(torch.uint8)


def build_report(run: str | Path, data: str | None = None, top: int = 16, tracking_uri: str | None = None,
                 experiment: str = "imagefit") -> Path:
    from ..bundle import load_bundle
    from ..data.sources import ImageSet
    from .evaluate import bundle_scores, split_images
    from .metrics import calibration, collapse_warning, summarize
    bundle = load_bundle(run)
    run = bundle.path.parent
    out = run / "report"
    out.mkdir(exist_ok=True)
    test = split_images(bundle, data, "test")
    if not isinstance(test, ImageSet):
        raise ImagefitError(f"{test.source} streams its test images from disk; the report needs them in memory "
                            f"(--in-memory yes)")
    tta = bundle.config.train.tta
    scores, labels = bundle_scores(bundle, test, batch_size=256, tta=tta, average=bundle.config.train.tta_average)
    classes = bundle.classes
    m = summarize(scores, labels, classes)
    probs = scores.softmax(1)

    figures = {}
    history = run / "metrics.json"
    trained = json.loads(history.read_text()) if history.is_file() else {}
    if trained.get("history"):
        figures["training curves"] = plots.training_curves(
            trained["history"], out / "curves.png", f"{run.name}: {bundle.config.model.model}, test accuracy "
            f"{100 * m['accuracy']:.2f}%", trained.get("best_epoch"))
    # The training run's warnings (too few steps, collapsed predictions), and the collapse as seen on this data.
    warnings = [w for w in trained.get("warnings", []) if not w.startswith("the model predicts")]
    warnings += [w for w in [collapse_warning(m["confusion"], classes)] if w]
    figures["confusion matrix"] = plots.confusion_matrix(m["confusion"], classes, out / "confusion.png", "test split")
    cal = calibration(probs, labels)
    temperature = bundle.preprocessing.temperature
    # the error the bundle's temperature removed: the same scores unscaled
    cal["ece_without_temperature"] = calibration((scores * temperature).softmax(1), labels)["ece"]
    cal["temperature"] = temperature
    figures["reliability diagram"] = plots.reliability(cal, out / "reliability.png")
    if (run / "lr_finder.png").is_file():
        figures["learning-rate finder"] = Path(shutil.copy(run / "lr_finder.png", out / "lr_finder.png"))

    confusion = np.asarray(m["confusion"])
    np.fill_diagonal(confusion, 0)
    pairs = [(classes[i], classes[j], int(confusion[i, j])) for i, j in
             zip(*np.unravel_index(np.argsort(-confusion, axis=None)[:8], confusion.shape)) if confusion[i, j]]

    losses = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="none")
    gallery = []
    for rank, i in enumerate(losses.argsort(descending=True)[:top].tolist()):
        path = plots.thumbnail(test.images[i], out / f"top-loss-{rank + 1}.png")
        gallery.append({"file": path.name, "true": classes[int(labels[i])],
                        "predicted": classes[int(probs[i].argmax())], "probability": float(probs[i].max()),
                        "p_true": float(probs[i, labels[i]])})

    robustness = {}
    for kind in ("unaltered (no TTA)", *PROBES):
        images = test.images if kind.startswith("unaltered") else probe(test.images, kind)
        altered = ImageSet(images, test.labels, test.classes, test.source)
        s, y = bundle_scores(bundle, altered, batch_size=256, tta="none", average="logits")
        robustness[kind] = (s.argmax(1) == y).float().mean().item()

    page = out / "index.html"
    page.write_text(_html(run, m, classes, pairs, gallery, cal, robustness, figures, tta, warnings))
    summary = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "ece": cal["ece"],
               "temperature": cal["temperature"], "ece_without_temperature": cal["ece_without_temperature"],
               "warnings": warnings,
               "robustness": robustness, "confused_pairs": pairs, "top_loss": gallery}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    _log_to_mlflow(run, out, tracking_uri, experiment)
    return page


def _log_to_mlflow(run: Path, out: Path, uri: str | None = None, experiment: str = "imagefit") -> None:
    """Attach the report to the run's MLflow record, when the run was tracked (or, given another store `uri`, to a
    new run named after it there; 'none': nowhere)."""
    from ..checkpoint import load_checkpoint
    from ..tracking import start_run
    if uri == "none":
        return
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last) if last.is_file() else {}
    own = state.get("tracking_uri") not in (None, "", "none") and state.get("tracking_run_id")
    if uri is None and not own:
        return
    if uri is None or uri == state.get("tracking_uri"):
        tracker = start_run(state["tracking_uri"], "imagefit", run.name, {}, run_id=state["tracking_run_id"])
    else:
        tracker = start_run(uri, experiment, f"report {run.name}", {})
    for f in sorted(out.iterdir()):
        tracker.artifact(f, "report")
    tracker.end("FINISHED")


def _html(run, m, classes, pairs, gallery, cal, robustness, figures, tta, warnings=()) -> str:
    e = html.escape
    alerts = "".join(f'<p class="warning" role="alert"><b>Warning:</b> {e(w)}</p>' for w in warnings)
    rows = "".join(f"<tr><td>{e(c)}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td><td>{r['f1']:.3f}"
                   f"</td><td>{r['support']}</td></tr>" for c, r in m["per_class"].items())
    pair_rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{n}</td></tr>" for a, b, n in pairs)
    tiles = "".join(f'<figure><img src="{e(g["file"])}" alt="{e(g["true"])}"><figcaption>true {e(g["true"])}<br>'
                    f'said {e(g["predicted"])} ({g["probability"]:.2f})</figcaption></figure>' for g in gallery)
    robust = "".join(f"<tr><td>{e(k)}</td><td>{100 * v:.2f}%</td></tr>" for k, v in robustness.items())
    figs = "".join(f'<figure><img src="{e(p.name)}" alt="{e(name)}"><figcaption>{e(name)}</figcaption></figure>'
                   for name, p in figures.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagefit report: {e(run.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
figure{{display:inline-block;margin:6px;text-align:center;font-size:12px}}.gallery img{{width:96px;
image-rendering:pixelated}}.warning{{background:#fff3cd;border:1px solid #c9a227;padding:8px 12px}}</style></head>
<body><h1>{e(run.name)}</h1>{alerts}
<p>Test accuracy <b>{100 * m['accuracy']:.2f}%</b> (TTA {e(tta)}), balanced {100 * m['balanced_accuracy']:.2f}%,
macro-F1 {100 * m['macro_f1']:.2f}%, top-5 {100 * m['top5']:.2f}%, {m['n']} images.
Expected calibration error {100 * cal['ece']:.2f}% (temperature {cal['temperature']:.3f}; without it
{100 * cal['ece_without_temperature']:.2f}%).</p>
<h2>Figures</h2>{figs}
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{rows}</table>
<h2>Most confused pairs (true → predicted)</h2><table><tr><th>true</th><th>predicted</th><th>images</th></tr>
{pair_rows}</table>
<h2>Highest-loss test images</h2><div class="gallery">{tiles}</div>
<h2>Robustness probe (no TTA)</h2><table><tr><th>test images</th><th>accuracy</th></tr>{robust}</table>
<script>window.addEventListener("load", () => {{
  const imgs = [...document.images];
  document.body.dataset.images = imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length;
}});</script>
</body></html>
"""
