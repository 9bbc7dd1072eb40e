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

    setup = _setup_section(bundle, trained.get("data"), labels)
    page = out / "index.html"
    page.write_text(_html(run, m, classes, pairs, gallery, cal, robustness, figures, tta, warnings, setup))
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


def _setup_section(bundle, data: dict | None, test_labels: torch.Tensor) -> str:
    """The run's setup: what differs from the defaults (the full config folded away) and images per class per
    split (train and validation from the run's metrics.json; test from the images scored here)."""
    import yaml
    from ..config import Config
    from ..tracking import run_address
    e = html.escape
    config, default = bundle.config.to_dict(), Config().to_dict()
    changed = [(f"{section}.{name}", value) for section, fields in config.items() for name, value in fields.items()
               if default[section][name] != value]
    p = bundle.metrics
    facts = [("model", f"{bundle.config.model.model}, {p.get('params', 0):,} parameters"),
             ("trained", f"{p.get('epochs', '?')} epochs, {p.get('seconds', 0):.0f} s, seed {bundle.config.train.seed}"),
             ("image size", f"{bundle.preprocessing.size} px ({bundle.preprocessing.resize})")]
    link = run_address(p.get("mlflow_uri"), p.get("mlflow_run_id"))
    tracked = (f'<a href="{e(link[0])}">{e(link[1])}</a>' if link and link[0] else e(link[1]) if link
               else "not tracked")
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    rows += f"<tr><th>MLflow</th><td class=\"mlflow\">{tracked}</td></tr>"
    changes = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in changed) or \
        "<tr><td colspan=2>none: the defaults</td></tr>"
    classes = bundle.classes
    splits = {k: v for k, v in (data or {}).items() if k in ("train", "val", "calibration") and v}
    splits["test"] = torch.bincount(test_labels, minlength=len(classes)).tolist()
    head = "".join(f"<th>{k}</th>" for k in splits)
    counts = "".join(f"<tr><td>{e(c)}</td>" + "".join(f"<td>{v[i]:,}</td>" for v in splits.values()) + "</tr>"
                     for i, c in enumerate(classes))
    counts += "<tr><th>all</th>" + "".join(f"<th>{sum(v):,}</th>" for v in splits.values()) + "</tr>"
    note = "" if data else "<p>(the run's metrics.json has no split counts: trained before they were recorded)</p>"
    return (f'<h2>Setup</h2><table class="facts">{rows}</table>'
            f'<h3>Options that differ from the defaults</h3><table><tr><th>option</th><th>value</th></tr>{changes}'
            f'</table><details><summary>the whole config</summary><pre>{e(yaml.safe_dump(config, sort_keys=False))}'
            f'</pre></details><h3>Images per class</h3>{note}<table class="sortable"><tr><th>class</th>{head}</tr>'
            f'{counts}</table>')


# Click a column's header to sort the table by it (again: the other way); `#sort=COLUMN` or `#sort=COLUMN-desc`
# in the address sorts the first table with that column on load, so a sorted view can be linked to.
SORT_JS = """<script>
function sortBy(table, col, desc) {
  const rows = [...table.rows].slice(1).filter(r => r.cells[0].tagName === "TD");
  const key = r => { const t = r.cells[col].textContent.replace(/[,%+]/g, ""); const v = parseFloat(t);
                     return isNaN(v) ? t : v; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1); });
  const tail = [...table.rows].slice(1).filter(r => r.cells[0].tagName !== "TD");
  for (const r of [...rows, ...tail]) r.parentNode.appendChild(r);
  table.dataset.sorted = table.rows[0].cells[col].textContent + (desc ? " desc" : " asc");
}
for (const table of document.querySelectorAll("table.sortable")) {
  [...table.rows[0].cells].forEach((th, col) => {
    th.style.cursor = "pointer"; th.title = "sort";
    th.addEventListener("click", () => sortBy(table, col, table.dataset.sorted === th.textContent + " asc"));
  });
}
const wanted = /sort=([^&-]+)(-desc)?/.exec(decodeURIComponent(location.hash));
if (wanted) {
  for (const table of document.querySelectorAll("table.sortable")) {
    const col = [...table.rows[0].cells].findIndex(th => th.textContent === wanted[1]);
    if (col >= 0) { sortBy(table, col, !!wanted[2]); break; }
  }
}
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length;
});
</script>"""

STYLE = """<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin-bottom:8px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.facts th,table.facts td{text-align:left}table.sortable tr:first-child th{background:#f2f2f2}
figure{display:inline-block;margin:6px;text-align:center;font-size:12px;max-width:100%}figure img{max-width:100%}
.gallery img{width:96px;
image-rendering:pixelated}.warning{background:#fff3cd;border:1px solid #c9a227;padding:8px 12px}
.up{color:#0a6b2a}.down{color:#b00020}pre{text-align:left;font-size:12px}</style>"""


def _html(run, m, classes, pairs, gallery, cal, robustness, figures, tta, warnings=(), setup="") -> str:
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
{STYLE}</head>
<body><h1>{e(run.name)}</h1>{alerts}
<p>Test accuracy <b>{100 * m['accuracy']:.2f}%</b> (TTA {e(tta)}), balanced {100 * m['balanced_accuracy']:.2f}%,
macro-F1 {100 * m['macro_f1']:.2f}%, top-5 {100 * m['top5']:.2f}%, {m['n']} images.
Expected calibration error {100 * cal['ece']:.2f}% (temperature {cal['temperature']:.3f}; without it
{100 * cal['ece_without_temperature']:.2f}%).</p>
<h2>Figures</h2>{figs}
<h2>Per class</h2><table class="sortable" id="per-class"><tr><th>class</th><th>precision</th><th>recall</th>
<th>F1</th><th>support</th></tr>
{rows}</table>
<h2>Most confused pairs (true → predicted)</h2><table><tr><th>true</th><th>predicted</th><th>images</th></tr>
{pair_rows}</table>
<h2>Highest-loss test images</h2><div class="gallery">{tiles}</div>
<h2>Robustness probe (no TTA)</h2><table><tr><th>test images</th><th>accuracy</th></tr>{robust}</table>
{setup}
{SORT_JS}
</body></html>
"""


COMPARED = (("accuracy", "test accuracy", 100), ("balanced_accuracy", "balanced accuracy", 100),
            ("macro_f1", "macro-F1", 100), ("top5", "top-5", 100), ("ece", "calibration error", 100),
            ("loss", "test loss", 1))


def build_comparison(runs: list[str | Path], out: str | Path, data: str | None = None) -> Path:
    """`imagefit report RUN_A RUN_B …`: one page that sets two or more runs side by side on the same test images:
    their curves overlaid, their metrics in one table, and each class's recall per run with the change from the
    first run (sortable: the classes that moved most first). Writes OUT/index.html, curves.png and comparison.json;
    OUT must be new, empty or an earlier comparison (nothing else is overwritten)."""
    from ..bundle import load_bundle
    from ..files import atomic_write_text, check_writable
    from .evaluate import bundle_scores, split_images
    from .metrics import calibration, summarize
    if len(runs) < 2:
        raise ImagefitError("a comparison needs two or more runs (imagefit report RUN_A RUN_B)")
    out = check_writable(Path(out))
    if out.exists() and any(out.iterdir()) and not (out / "comparison.json").is_file():
        raise ImagefitError(f"{out} is not empty and holds no earlier comparison; choose a new --out folder")
    bundles = [load_bundle(r) for r in runs]
    names = _unique_names([b.path.parent for b in bundles])
    first = bundles[0]
    for name, b in zip(names[1:], bundles[1:]):
        if b.classes != first.classes:
            raise ImagefitError(f"{name} has classes {', '.join(b.classes[:4])}… and {names[0]} has "
                                f"{', '.join(first.classes[:4])}…; runs are compared on the same classes in the same "
                                f"order")
    out.mkdir(parents=True, exist_ok=True)
    rows, histories = {}, {}
    for name, b in zip(names, bundles):
        test = split_images(b, data, "test")
        scores, labels = bundle_scores(b, test, batch_size=256, tta=b.preprocessing.tta,
                                       average=b.preprocessing.tta_average)
        m = summarize(scores, labels, b.classes)
        m["ece"] = calibration(scores.softmax(1), labels)["ece"]
        trained = b.path.parent / "metrics.json"
        history = json.loads(trained.read_text()).get("history", []) if trained.is_file() else []
        if history:
            histories[name] = history
        rows[name] = {**{k: m[k] for k, _, _ in COMPARED}, "n": m["n"], "model": b.config.model.model,
                      "params": b.metrics.get("params"), "seconds": b.metrics.get("seconds"),
                      "epochs": b.metrics.get("epochs"), "tta": b.preprocessing.tta,
                      "recall": {c: r["recall"] for c, r in m["per_class"].items()}, "run": str(b.path.parent)}
    sizes = {r["n"] for r in rows.values()}
    if len(sizes) > 1:
        raise ImagefitError(f"the runs' test splits differ in size ({', '.join(map(str, sorted(sizes)))} images); "
                            f"compare them on one folder with --data DIR")
    figures = [plots.compared_curves(histories, out / "curves.png")] if histories else []
    page = out / "index.html"
    atomic_write_text(page, _comparison_html(names, rows, first.classes, figures))
    atomic_write_text(out / "comparison.json", json.dumps({"runs": rows}, indent=1))
    return page


def _unique_names(folders: list[Path]) -> list[str]:
    """Each run's folder name, or its last two parts where names repeat (runs/a/default, runs/b/default)."""
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def _comparison_html(names: list[str], rows: dict, classes: list[str], figures: list[Path]) -> str:
    e = html.escape
    base = names[0]
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    metric_rows = ""
    for key, label, scale in COMPARED:
        cells = "".join(f"<td>{scale * rows[n][key]:.2f}{'%' if scale == 100 else ''}</td>" for n in names)
        metric_rows += f"<tr><td>{e(label)}</td>{cells}</tr>"
    for key, label in (("model", "model"), ("params", "parameters"), ("epochs", "epochs"),
                       ("seconds", "training seconds"), ("tta", "test-time augmentation"), ("n", "test images")):
        cells = "".join(f"<td>{e(format(rows[n][key], ',') if isinstance(rows[n][key], int) else str(rows[n][key]))}"
                        f"</td>" for n in names)
        metric_rows += f"<tr><td>{e(label)}</td>{cells}</tr>"
    last = names[-1]
    change_head = f"<th>{e(last)} − {e(base)}</th>"  # in percentage points
    class_rows = ""
    for c in classes:
        recalls = [rows[n]["recall"][c] for n in names]
        delta = 100 * (recalls[-1] - recalls[0])
        mood = "up" if delta > 0 else "down" if delta < 0 else ""
        class_rows += (f"<tr><td>{e(c)}</td>" + "".join(f"<td>{100 * r:.1f}%</td>" for r in recalls)
                       + f'<td class="{mood}">{delta:+.1f}</td></tr>')
    figs = "".join(f'<figure><img src="{e(p.name)}" alt="curves"><figcaption>curves per epoch</figcaption></figure>'
                   for p in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagefit comparison: {e(' vs '.join(names))}</title>
{STYLE}</head>
<body><h1>{e(' vs '.join(names))}</h1>
<p>Every run scored here on the same {rows[base]['n']:,} test images, each with its own test-time augmentation.</p>
<h2>Metrics</h2><table id="metrics"><tr><th>metric</th>{head}</tr>{metric_rows}</table>
<h2>Curves</h2>{figs or '<p>(no run has a training history)</p>'}
<h2>Recall per class</h2><p>The last column is the change in percentage points; click a header to sort.</p>
<table class="sortable" id="per-class"><tr><th>class</th>{head}{change_head}</tr>
{class_rows}</table>
{SORT_JS}
</body></html>
"""
