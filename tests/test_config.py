import pytest

from imagefit.config import Config, load_recipe
from imagefit.errors import ImagefitError


def test_defaults_are_valid():
    assert Config().validate().train.epochs == 10


@pytest.mark.parametrize("tree, message", [
    ({"optim": {"lr": -1}}, "--lr must be > 0"),
    ({"train": {"epochs": 0}}, "--epochs must be >= 1"),
    ({"data": {"val_fraction": 1.5}}, "--val-fraction must be >= 0 and <= 0.9"),
    ({"optim": {"optimizer": "rmsprop"}}, "--optimizer must be one of sgd, adam, adamw"),
    ({"schedule": {"schedule": "step"}}, "--schedule step needs --milestones"),
])
def test_out_of_range_values_are_refused_with_the_valid_range(tree, message):
    with pytest.raises(ImagefitError, match=message):
        Config.from_dict(tree).validate()


def test_unknown_field_names_the_closest_ones():
    with pytest.raises(ImagefitError, match="unknown field 'optim.weight_decy'; did you mean weight_decay"):
        Config.from_dict({"optim": {"weight_decy": 0.1}})
    with pytest.raises(ImagefitError, match="unknown section 'optimizer'; did you mean optim"):
        Config.from_dict({"optimizer": {"lr": 0.1}})


def test_values_are_coerced_or_refused():
    cfg = Config.from_dict({"optim": {"lr": "0.05", "nesterov": "false"}, "model": {"widths": "8,16"}})
    assert cfg.optim.lr == 0.05 and cfg.optim.nesterov is False and cfg.model.widths == [8, 16]
    with pytest.raises(ImagefitError, match="--epochs got 'ten', which is not an integer"):
        Config.from_dict({"train": {"epochs": "ten"}})


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(ImagefitError, match="unknown recipe 'fastest'; available: .*resnet18"):
        load_recipe("fastest")


def test_shipped_recipes_are_valid():
    from imagefit.config import recipe_names
    for name in recipe_names():
        Config.from_dict(load_recipe(name), where=name).validate()


def test_a_recipe_with_a_base_overrides_it_field_by_field(tmp_path):
    (tmp_path / "variant.yaml").write_text("base: fast\ntrain: {epochs: 2}\nmodel: {model: fastnet-small}\n")
    tree, fast = load_recipe(str(tmp_path / "variant.yaml")), load_recipe("fast")
    assert tree["train"] == {**fast["train"], "epochs": 2} and tree["optim"] == fast["optim"]
    assert tree["model"] == {**fast["model"], "model": "fastnet-small"} and tree["fixed"] == ["model"]
    (tmp_path / "child.yaml").write_text("base: variant.yaml\ntrain: {epochs: 3}\n")  # a path, relative to it
    assert load_recipe(str(tmp_path / "child.yaml"))["train"]["epochs"] == 3
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ImagefitError, match="is its own base"):
        load_recipe(str(tmp_path / "loop.yaml"))


def test_bad_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [\n")
    with pytest.raises(ImagefitError) as e:
        load_recipe(str(bad))
    assert "not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_train_help_lists_every_option_with_its_default(capsys, monkeypatch):
    from imagefit.cli import main
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps help to the terminal; keep each choice list on one line
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for text in ("--weight-decay", "(default: 0.0005)", "--label-smoothing", "--resume", "--max-params",
                 "--no-flip", "[onecycle|triangle|cosine|cyclic|step|plateau|constant]"):
        assert text in out, text


def test_the_challenge_recipe_keeps_its_parameter_budget():
    from imagefit.config import check_fixed
    from imagefit.models import count_params, create_model
    tree = load_recipe("challenge")
    cfg = Config.from_dict(tree, where="challenge")
    assert cfg.model.max_params == 5_000_000 and count_params(create_model(10, cfg.model)) <= 5_000_000
    with pytest.raises(ImagefitError, match="cannot honour --max-params 6000000"):
        check_fixed("challenge", tree, {"max_params": 6_000_000})
