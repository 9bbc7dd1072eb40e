"""The preprocessing contract's parts: Normalize, the TTA views and how they combine, logit adjustment, decoding any
input a user has into the pixels training saw, and the value a bundle stores."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imagefit.errors import ImagefitError
from imagefit.preprocessing import (Normalize, Preprocessing, adjust_logits, load_image, tta_scores, tta_views,
                                    ImageTooLarge)


def test_normalize_matches_the_formula():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    got = Normalize(mean, std, True)(x)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(got, want, atol=1e-6) and got.is_contiguous(memory_format=torch.channels_last)


def test_flip_tta_is_mirror_invariant_and_translate_adds_views():
    from imagefit.preprocessing import tta_scores
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = tta_scores(model, x)
        assert plain.equal(model(x)) and not torch.allclose(plain, model(x.flip(-1)))
        assert torch.allclose(tta_scores(model, x, "flip"), tta_scores(model, x.flip(-1), "flip"), atol=1e-6)
        assert not torch.allclose(tta_scores(model, x, "flip+crops"), tta_scores(model, x, "flip"))


@pytest.mark.parametrize("tta, n", [("none", 1), ("flip", 2), ("crops", 3), ("flip+crops", 6)])
def test_tta_views_weights_sum_to_one(tta, n):
    views = tta_views(torch.randn(2, 3, 8, 8), tta)
    assert len(views) == n and sum(w for w, _ in views) == pytest.approx(1.0)


def test_normalize_is_a_module_whose_buffers_travel_with_it():
    norm = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert set(norm.state_dict()) == {"scale", "shift"}  # exported graphs and .to(device) carry them
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(norm(x), norm(x.float())) and norm(x).dtype == torch.float32


@pytest.mark.parametrize("tta", ["flip", "crops", "flip+crops"])
def test_views_commute_with_normalize_so_pixels_and_inputs_give_the_same_scores(tta):
    """Why the exported graph can take pixels: TTA views cut before or after normalizing are bitwise the same."""
    norm = Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        for average in ("logits", "probs"):
            assert torch.equal(tta_scores(lambda v: model(norm(v)), x.float(), tta, average),
                               tta_scores(model, norm(x), tta, average))


def test_probability_averaging_is_the_log_of_the_mean_probability():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        got = tta_scores(model, x, "flip", "probs")
        want = ((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2).log()
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ImagefitError, match="--tta-average must be logits or probs"):
        tta_scores(model, x, "flip", "mean")


def test_logit_adjustment_subtracts_tau_times_the_log_prior():
    scores, prior = torch.zeros(1, 3), torch.tensor([0.5, 0.3, 0.2]).log()
    assert torch.allclose(adjust_logits(scores, prior, 2.0), -2.0 * prior[None])
    assert adjust_logits(scores, prior, 0.0) is scores
    p = Preprocessing(32, "crop", [0.5] * 3, [0.2] * 3, ["a", "b", "c"],
                      logit_adjust={"tau": 2.0, "log_prior": prior.tolist()})
    assert torch.allclose(p.adjust(scores), -2.0 * prior[None])  # rare classes gain


def test_the_contract_round_trips_through_the_bundle_format():
    p = Preprocessing(48, "squish", [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], ["cat", "dog"], "flip", "probs",
                      {"tau": 1.0, "log_prior": [-0.5, -0.9]})
    d = p.to_dict()
    assert set(d) == {"size", "resize", "mean", "std", "logit_adjust"}  # bundle format 1: classes and TTA beside it
    assert Preprocessing.from_dict(d, ["cat", "dog"], "flip", "probs") == p
    assert "logit_adjust" not in Preprocessing(32, "crop", [0.5] * 3, [0.2] * 3).to_dict()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_every_input_a_user_has_becomes_the_pixels_a_file_would(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    for resize in ("crop", "squish"):
        p = Preprocessing(32, resize, [0.5] * 3, [0.2] * 3)
        from_file = p.decode(str(tmp_path / "rgb.png"))
        assert from_file.shape == (3, 32, 32) and from_file.dtype == torch.uint8
        batch = p.batch([str(tmp_path / "rgb.png"), tmp_path / "rgb.png", _png(Image.fromarray(rgb)),
                         Image.fromarray(rgb), rgb, torch.from_numpy(rgb), np.dstack([rgb, np.full((40, 48), 255,
                                                                                          np.uint8)])])
        assert all(torch.equal(b, from_file) for b in batch), resize
        grays = p.batch([str(tmp_path / "gray.png"), gray, gray[..., None], Image.fromarray(gray)])
        assert all(torch.equal(g, grays[0]) for g in grays) and torch.equal(grays[0][0], grays[0][2])
    crop, squish = (Preprocessing(32, r, [0.5] * 3, [0.2] * 3).decode(str(tmp_path / "rgb.png"))
                    for r in ("crop", "squish"))
    assert not torch.equal(crop, squish)  # the rule matters on a 48×40 image


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 3), dtype=np.float32), "dtype float32; pass H×W×3"),
    (np.zeros((8, 8, 2), dtype=np.uint8), "shape \\(8, 8, 2\\)"),
    (42, "image 0 is a int; pass a file path, bytes"),
])
def test_inputs_that_are_not_images_get_one_line_errors(bad, message):
    with pytest.raises(ImagefitError, match=message):
        Preprocessing(32, "crop", [0.5] * 3, [0.2] * 3).batch([bad])


def test_the_pixel_guard_refuses_before_decoding():
    blob = _png(Image.new("RGB", (300, 200)))
    with pytest.raises(ImageTooLarge) as e:
        load_image(blob, 32, max_pixels=50_000)
    assert e.value.pixels == 60_000
    assert load_image(blob, 32, max_pixels=60_000).shape == (32, 32, 3)


def test_large_jpegs_decode_at_a_reduced_scale_close_to_the_full_decode(tmp_path):
    """libjpeg's DCT scaling (PIL draft): a 1,600×1,200 photo for a 32-px model decodes at 1/8 scale; the resized
    result stays within a few levels of resizing the full decode."""
    yy, xx = np.mgrid[0:1200, 0:1600]
    photo = np.stack([(xx / 1600 * 255), (yy / 1200 * 255), ((xx + yy) % 256)], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=92)
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft(None, (32, 32))
        assert im.size == (200, 150)  # what load_image decodes
    fast = load_image(str(tmp_path / "big.jpg"), 32)
    with Image.open(tmp_path / "big.jpg") as im:
        full = load_image(im.convert("RGB"), 32)  # a PIL image: decoded at full size first
    assert fast.shape == full.shape == (32, 32, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4
    with pytest.raises(ImageTooLarge):  # the guard reads the declared size, before any scaling
        load_image(str(tmp_path / "big.jpg"), 32, max_pixels=1_000_000)
