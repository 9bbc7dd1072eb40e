"""The bundle: weights, the preprocessing contract, the config and the metrics in one file that loads without running
code, and one-line errors for files that are damaged, foreign or of another model."""

import json

import pytest
import torch
from safetensors.torch import save_file

from imagefit.bundle import FORMAT, load_bundle, read_metadata, save_bundle
from imagefit.config import Config
from imagefit.errors import ImagefitError
from imagefit.models import create_model
from imagefit.preprocessing import Preprocessing


def _bundle(path, **model):
    cfg = Config.from_dict({"model": {"model": "resnet", "blocks": [1], "widths": [8], **model}, "data": {"size": 40},
                            "train": {"tta": "flip", "tta_average": "probs"}}).validate()
    torch.manual_seed(0)
    net = create_model(3, cfg.model)
    pre = Preprocessing(40, "squish", [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], ["cat", "dog", "frog"], "flip", "probs",
                        {"tau": 0.5, "log_prior": [-1.0, -1.2, -1.1]})
    return save_bundle(path, net, pre, cfg, {"accuracy": 0.5}), net, pre


def test_round_trip_keeps_weights_contract_config_and_metrics(tmp_path):
    path, net, pre = _bundle(tmp_path / "b" / "bundle.safetensors")
    b = load_bundle(tmp_path / "b")  # the run folder stands for its bundle
    assert b.preprocessing == pre and b.classes == ["cat", "dog", "frog"] and b.metrics == {"accuracy": 0.5}
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in b.model.state_dict().items())
    assert not b.model.training and b.config.model.widths == [8]


def test_damaged_foreign_and_mismatched_files_get_one_line_errors(tmp_path):
    path, _, _ = _bundle(tmp_path / "bundle.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImagefitError, match="damaged or not an imagefit bundle|is damaged"):
        load_bundle(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ImagefitError, match="damaged or not an imagefit bundle"):
        load_bundle(tmp_path / "foreign.safetensors")
    meta = read_metadata(path)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "old.safetensors"),
              metadata={"imagefit": json.dumps({**meta, "format": "imagefit-bundle/0"})})
    with pytest.raises(ImagefitError, match=f"of format 'imagefit-bundle/0', not {FORMAT}"):
        load_bundle(tmp_path / "old.safetensors")
    wrong = {**meta, "config": {**meta["config"], "model": {**meta["config"]["model"], "widths": [16]}}}
    from safetensors.torch import load_file
    save_file(load_file(str(path)), str(tmp_path / "other.safetensors"), metadata={"imagefit": json.dumps(wrong)})
    with pytest.raises(ImagefitError, match="do not fit the model \\(shape differs: stem.0.weight"):
        load_bundle(tmp_path / "other.safetensors")
    with pytest.raises(ImagefitError, match="no bundle at"):
        load_bundle(tmp_path / "nowhere")
