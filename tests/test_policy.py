"""The batched augmentation policies, mixing and the weights' average, each against a per-image or textbook
definition (torchvision's functional ops where torchvision has the op)."""

import pytest
import torch
import torch.nn as nn
import torchvision.transforms.v2.functional as TF

from imagefit.config import AugmentConfig, Config, parse_policy
from imagefit.data import policy as P
from imagefit.data.augment import BatchAugment
from imagefit.data.mix import hits, mix_batch
from imagefit.errors import ImagefitError
from imagefit.preprocessing import Normalize
from imagefit.training.ema import WeightEMA, ema_decay


def _images(n=6, h=12, w=10, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("ours, theirs", [
    (P.brightness, TF.adjust_brightness),
    (P.contrast, TF.adjust_contrast),
    (P.saturation, TF.adjust_saturation),
    (P.sharpness, TF.adjust_sharpness),
])
def test_each_image_gets_its_own_factor_as_torchvision_would_give_it(ours, theirs):
    x = _images()
    factors = torch.tensor([0.1, 0.5, 1.0, 1.3, 1.9, 0.0])
    got = ours(x.float(), factors)
    for i, f in enumerate(factors.tolist()):
        want = theirs(x[i].float() / 255, f) * 255
        assert torch.allclose(got[i], want, atol=1e-3), (ours.__name__, f)


def test_posterize_solarize_equalize_autocontrast_match_torchvision_on_uint8():
    x = _images(n=4)
    x[3] = 77  # a flat image: equalize and autocontrast leave it alone
    bits = torch.tensor([1.0, 4.0, 7.0, 8.0])
    got = P.posterize(x.float(), bits)
    assert all(torch.equal(got[i], TF.posterize(x[i], int(b)).float()) for i, b in enumerate(bits))
    thresholds = torch.tensor([0.0, 100.0, 200.0, 255.0])
    got = P.solarize(x.float(), thresholds)
    assert all(torch.equal(got[i], TF.solarize(x[i], float(t)).float()) for i, t in enumerate(thresholds))
    got = P.equalize(x.float())
    assert all(torch.equal(got[i], TF.equalize(x[i]).float()) for i in range(4))
    got = P.autocontrast(x.float())
    assert all(torch.allclose(got[i], TF.autocontrast(x[i].float() / 255) * 255, atol=1e-3) for i in range(4))


def test_geometric_ops_move_pixels_exactly():
    x = _images(n=3, h=8, w=8).float()
    kinds = torch.tensor([P.GEOMETRIC.index("translate_x"), P.GEOMETRIC.index("translate_y"),
                          P.GEOMETRIC.index("rotate")])
    out = P._affine(x, kinds, torch.tensor([2.0, -3.0, 90.0]))
    assert torch.equal(out[0, :, :, 2:], x[0, :, :, :-2]) and (out[0, :, :, :2] == 0).all()  # right by 2, black in
    assert torch.equal(out[1, :, :-3], x[1, :, 3:]) and (out[1, :, -3:] == 0).all()  # up by 3
    quarter = [torch.rot90(x[2], k, (1, 2)) for k in (1, 3)]
    assert any(torch.equal(out[2], q) for q in quarter)  # a quarter turn, pixel for pixel
    same = P._affine(x, torch.tensor([P.GEOMETRIC.index("shear_x")] * 3), torch.zeros(3))
    assert torch.equal(same, x)


def test_the_policy_gives_each_image_its_own_op_exactly_as_one_image_at_a_time_would():
    """The batched grouping against the per-image definition, drawn in the same order from the same generator."""
    x = _images(n=32, h=16, w=16).float()
    for spec in ("rand-m9-n2", "trivial"):
        policy = parse_policy(spec)
        got = P.apply_policy(x, policy, torch.Generator().manual_seed(3))
        gen, want = torch.Generator().manual_seed(3), x.clone()
        table = P._table(policy, 16, 16)
        names = list(table)
        for _ in range(policy.ops):
            choice = torch.randint(len(names), (32,), generator=gen)
            bins = torch.randint(31, (32,), generator=gen) if policy.kind == "trivial" else torch.full((32,), 9)
            signs = torch.where(torch.rand(32, generator=gen) < 0.5, -1.0, 1.0)
            for i in range(32):
                name = names[choice[i]]
                magnitudes, signed = table[name]
                v = 0.0 if magnitudes is None else float(magnitudes[bins[i]]) * (float(signs[i]) if signed else 1.0)
                one, value = want[i:i + 1], torch.tensor([v])
                if name in P.GEOMETRIC:
                    want[i:i + 1] = P._affine(one, torch.tensor([P.GEOMETRIC.index(name)]), value)
                elif name != "identity":
                    want[i:i + 1] = P.PIXEL_OPS[name](one, value)
        assert torch.allclose(got, want, atol=1e-4), spec
        assert len({tuple(o.flatten()[:20].tolist()) for o in got}) > 16  # the images went different ways


def test_color_jitter_matches_torchvision_factors_and_hue_keeps_grey_and_luminance():
    x = _images(n=8).float()
    gen = torch.Generator().manual_seed(1)
    got = P.color_jitter(x, 0.4, 0.0, gen)
    gen = torch.Generator().manual_seed(1)
    f = [(1 + (torch.rand(8, generator=gen) * 2 - 1) * 0.4) for _ in range(3)]
    for i in range(8):
        want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i] / 255, f[0][i].item()),
                                                       f[1][i].item()), f[2][i].item()) * 255
        assert torch.allclose(got[i], want, atol=1e-3)
    grey = torch.full((4, 3, 5, 5), 120.0)
    assert torch.allclose(P.color_jitter(grey, 0.0, 0.5, torch.Generator().manual_seed(0)), grey, atol=1e-3)
    mid = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 100 + 80  # no clipping
    turned = P.color_jitter(mid, 0.0, 0.3, torch.Generator().manual_seed(0))
    luminance = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    assert torch.allclose(luminance(turned), luminance(mid), atol=1e-2) and not torch.allclose(turned, mid, atol=1)


def test_random_erasing_paints_one_rectangle_on_the_chosen_images():
    x = torch.full((200, 3, 16, 16), 7.0)
    out = P.random_erasing(x, 0.5, torch.Generator().manual_seed(0))
    changed = out[:, 0] != 7.0
    erased = changed.flatten(1).any(1)
    assert 60 < erased.sum() < 140  # about half
    for m in changed[erased]:
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        box = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and m.sum() == box.numel()  # one solid rectangle
        assert 0.01 * 256 <= m.sum() <= 0.4 * 256  # 2-33%, give or take the rounding of the sides
    assert torch.equal(P.random_erasing(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_mixup_and_cutmix_mix_images_and_targets_in_the_same_proportion():
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    mixed, t = mix_batch(x, y, 4, mixup=0.4, cutmix=0.0, prob=1.0, gen=torch.Generator().manual_seed(0))
    lam = t[0, y[0]].item() if y[0] != y[-1] else None
    assert torch.allclose(t.sum(1), torch.ones(8)) and lam is not None
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    seen = set()
    for seed in range(20):
        mixed, t = mix_batch(x, y, 4, mixup=0.0, cutmix=1.0, prob=1.0, gen=torch.Generator().manual_seed(seed))
        from_partner = (mixed != x).any(1)[0].float().mean().item()  # image 0's pasted share (y[0] != y[-1])
        assert t[0, y[0]].item() == pytest.approx(1 - from_partner, abs=1e-6)
        assert ((mixed == x) | (mixed == x.flip(0))).all()
        seen.add(round(from_partner, 3))
    assert len(seen) > 5
    same, hard = mix_batch(x, y, 4, mixup=0.4, cutmix=1.0, prob=0.0, gen=torch.Generator().manual_seed(0))
    assert same is x and hard is y


def test_hits_counts_target_mass_on_the_prediction():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert hits(logits, torch.tensor([0, 0, 0])).item() == 2
    soft = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.2, 0.8]])
    assert hits(logits, soft).item() == pytest.approx(0.7 + 0.3 + 0.2)


def test_batch_augment_returns_mixed_targets_and_keeps_old_configs_bitwise():
    norm = Normalize([0.5] * 3, [0.25] * 3, True)
    x, y = _images(n=8, h=16, w=16), torch.arange(8) % 3
    plain = AugmentConfig(crop_padding=2, cutout=4)
    a, ya = BatchAugment(plain, norm)(x, y, torch.Generator().manual_seed(0))
    on = AugmentConfig(crop_padding=2, cutout=4, color_jitter=0.4, hue=0.1, augment_policy="rand-m9-n2",
                       random_erasing=0.25, mixup=0.2, cutmix=1.0)
    b, yb = BatchAugment(on, norm, num_classes=3)(x, y, torch.Generator().manual_seed(0))
    assert ya is y and yb.shape == (8, 3) and b.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(a, b)
    again, _ = BatchAugment(plain, norm)(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(a, again)


@pytest.mark.parametrize("bad", ["rand-m31-n2", "rand-m9-n0", "random", "rand-n2-m9", "trivial-wide"])
def test_a_bad_policy_is_refused_in_one_line(bad):
    cfg = Config()
    cfg.augment.augment_policy = bad
    with pytest.raises(ImagefitError, match="--augment-policy") as e:
        cfg.validate()
    assert "\n" not in str(e.value)


def test_mixing_refuses_the_nll_loss():
    cfg = Config()
    cfg.augment.mixup, cfg.optim.loss = 0.2, "nll"
    with pytest.raises(ImagefitError, match="--loss cross-entropy"):
        cfg.validate()


def test_the_weights_average_follows_the_textbook_update():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    want = {k: v.clone().float() for k, v in start.items()}
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        model(torch.randn(4, 3))  # moves the BatchNorm statistics
        ema.update(model, step)
        d = ema_decay(0.9, step)
        for k, v in model.state_dict().items():
            want[k] = want[k] * d + v.float() * (1 - d) if v.is_floating_point() else v.float()
    got = ema.model.state_dict()
    assert all(torch.allclose(got[k].float(), want[k], atol=1e-5) for k in want)
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
