"""What a new user meets first. Small data must not fail silently (issue 28): the batch size follows the number of
images, a run with too few steps for its model says so before training, and predictions collapsed onto a few
classes are called out by `train` and at the top of `report`. Help (issue 30): every flag's default, examples,
and a model table."""

from pathlib import Path

import pytest
from PIL import Image

from imagefit.cli import main
from imagefit.evaluation.metrics import collapse_warning
from imagefit.training.train import auto_batch_size

from .conftest import TINY, class_images
from .test_train import run


def test_auto_batch_size_gives_an_epoch_enough_steps():
    assert auto_batch_size(45_000) == 128 and auto_batch_size(6_400) == 128
    assert auto_batch_size(1_800) == 32 and 1_800 // 32 >= 50
    assert auto_batch_size(100) == 16  # never below 16


def test_collapsed_predictions_are_named():
    classes = ["a", "b", "c", "d", "e"]
    spread = [[10 if i == j else 0 for j in range(5)] for i in range(5)]
    assert collapse_warning(spread, classes) is None
    collapsed = [[0, 10, 0, 0, 0] for _ in range(5)]  # everything predicted as b
    said = collapse_warning(collapsed, classes)
    assert "predicts b for 100% of the 50 test images (1 of 5 classes)" in said and "--epochs" in said
    # ResNet18 from scratch, 28 steps: three of ten classes took every prediction (12% accuracy)
    ten = [str(i) for i in range(10)]
    three = [[300, 100, 100] + [0] * 7 for _ in range(10)]
    assert "predicts 0, 1, 2 for 100%" in collapse_warning(three, ten)
    learned_a_little = [[150, 130, 70, 40, 30, 30, 20, 10, 10, 10] for _ in range(10)]
    assert collapse_warning(learned_a_little, ten) is None
    skewed_truth = [[40, 0, 0, 0, 0], [0, 5, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 2, 0], [0, 0, 0, 0, 1]]
    assert collapse_warning(skewed_truth, classes) is None  # the labels are skewed the same way: not a collapse


def write_folder(root: Path, per_class: int, test_per_class: int, classes: int = 10) -> Path:
    for split, n, seed in (("train", per_class, 5), ("test", test_per_class, 6)):
        x, y = class_images(n, classes, seed=seed)
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_the_default_recipe_learns_on_2000_images(capsys, tmp_path):
    """No options but the data: 2,000 images in 10 classes train at batch 32 (56 steps an epoch), and learn."""
    data = write_folder(tmp_path / "tree", 200, 20)
    r = run(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--tracking-uri", "none")
    assert r["accuracy"] > 0.5  # chance is 0.1
    import yaml
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["batch_size"] == 32
    assert "warnings" not in r


def test_too_few_steps_are_said_before_training_and_in_the_report(capsys, tmp_path):
    data = write_folder(tmp_path / "tree", 20, 5, classes=4)
    r = run(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--tracking-uri", "none",
            "--epochs", "1", "--batch-size", "32")
    steps = [w for w in r["warnings"] if "optimizer steps" in w]
    assert steps and "only 2 optimizer steps" in steps[0] and "--recipe fast" in steps[0]
    page = run(capsys, "report", str(tmp_path / "run"), "--data", str(data))
    assert any("only 2 optimizer steps" in w for w in page["warnings"])
    html = Path(page["report"]).read_text()
    assert html.index('class="warning"') < html.index("<h2>Figures")


@pytest.mark.parametrize("value, error", [("lots", "an integer or auto"), ("0", "must be >= 1")])
def test_batch_size_auto_or_a_number(capsys, tmp_path, value, error):
    from .test_train import fails
    assert error in fails(capsys, "train", "--data", str(tmp_path), "--batch-size", value)


def test_every_flag_shows_its_default_and_every_command_has_examples():
    """issue 30: `--help` of every command and subcommand names each flag's default and ends with examples."""
    import argparse

    from imagefit.cli import build_parser
    from imagefit.cli.examples import Help

    def walk(p, name=""):
        yield name, p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    yield from walk(sp, f"{name} {n}".strip())
    missing = []
    for name, p in list(walk(build_parser()))[1:]:
        formatter = Help(name)
        for a in p._actions:
            meaningful = a.default not in (None, argparse.SUPPRESS, False, True)
            if a.option_strings and meaningful and "default" not in formatter._get_help_string(a):
                missing.append(f"{name} {a.option_strings[-1]}")
        if "examples:\n  imagefit " not in p.format_help():
            missing.append(f"{name}: no examples")
    assert not missing, missing
    tune = " ".join(next(sp for n, sp in walk(build_parser()) if n == "fine-tune").format_help().split())
    decay = tune[tune.index("--layer-lr-decay LAYER_LR_DECAY discriminative"):][:300]
    assert "(default here: 2.6" in decay and "(default: 1.0)" not in decay


def test_every_help_example_is_a_command_line_the_parser_takes():
    """An example a user copies must not end in 'unknown option' (`generate train --resume gen` did)."""
    import shlex

    from imagefit.cli import build_parser
    from imagefit.cli.examples import EXAMPLES
    parser = build_parser()
    for name, lines in EXAMPLES.items():
        for line in lines:
            argv = shlex.split(line.split("  #")[0])[1:]
            assert " ".join(argv[:len(name.split())]) == name, line
            args, extra = parser.parse_known_args(argv)
            assert not extra, f"{line}: {extra}"


def test_models_prints_a_table_with_a_header(capsys):
    r = run(capsys, "models")
    assert r["models"]["resnet18"]["pretrained"] == ["imagenet"] and "blocks" in r["models"]["resnet"]["options"]
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["model", "parameters", "input"] and "pretrained weights" in lines[0]
    assert any(line.startswith("resnet18 ") and "imagenet" in line for line in lines)


def test_a_run_from_imagefit_data_is_reported_without_it(capsys, tmp_path, monkeypatch):
    """issue 30: the README's main job reads IMAGEFIT_DATA; a later shell without it must still find the data for
    `report` and `evaluate`. And report takes --tracking-uri like every command that tracks."""
    from .conftest import write_cifar
    data = write_cifar(tmp_path / "data")
    monkeypatch.setenv("IMAGEFIT_DATA", str(data))
    run(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    import yaml
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["data"] == str(data.resolve())
    monkeypatch.delenv("IMAGEFIT_DATA")
    assert run(capsys, "evaluate", "--bundle", str(tmp_path / "run"))["n"] == 40
    uri = f"sqlite:///{tmp_path}/reports.db"
    page = run(capsys, "report", str(tmp_path / "run"), "--tracking-uri", uri)
    assert Path(page["report"]).exists()
    import mlflow
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imagefit").experiment_id])
    assert [r.info.run_name for r in runs] == ["report run"]
    assert "report/index.html" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert run(capsys, "report", str(tmp_path / "run"), "--tracking-uri", "none")["accuracy"] == page["accuracy"]


def test_mlflow_info_lines_stay_out_of_the_output(tmp_path):
    """issue 30: MLflow's own INFO lines ("Creating initial MLflow database tables...") no longer interleave with
    the run's progress; its warnings and errors still show."""
    import os
    import subprocess
    import sys

    from .conftest import write_cifar
    data = write_cifar(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "imagefit", "train", "--data", str(data), "--model", "resnet",
                           "--blocks", "1", "--widths", "8", "--epochs", "1", "--tracking-uri",
                           f"sqlite:///{tmp_path}/m.db", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "INFO mlflow" not in done.stderr and "test accuracy" in done.stdout + done.stderr


def test_a_bare_class_tree_says_its_split_sizes_and_that_it_has_no_test_split(capsys, tmp_path):
    images, labels = class_images(7, 3, size=16)
    for i, (img, y) in enumerate(zip(images, labels)):
        (tmp_path / "bare" / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "bare" / f"c{y}" / f"{i}.png")
    code = main(["train", "--data", str(tmp_path / "bare"), *TINY, "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "18 train, 3 val, 0 test images" in err and "no test split in" in err and "imagefit evaluate" in err
    assert "calibration skipped: the validation split has 3 images" in err
