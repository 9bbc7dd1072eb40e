import torch
import torch.nn.functional as F

from imagefit.augment import BatchAugment, crop_flip, cutout
from imagefit.preprocessing import Normalize
from imagefit.config import AugmentConfig, DataConfig
from imagefit.data import load_splits
from imagefit.loader import Loader


def _reference_crop_flip(x, padding, flip, gen):
    """The per-image definition: reflect-pad, crop at the drawn offset, maybe flip; drawn in the same order."""
    n = x.shape[0]
    dy = torch.randint(-padding, padding + 1, (n, 1), generator=gen)
    dx = torch.randint(-padding, padding + 1, (n, 1), generator=gen)
    flips = torch.rand(n, 1, generator=gen) < 0.5 if flip else torch.zeros(n, 1, dtype=torch.bool)
    out = []
    for i in range(n):
        padded = F.pad(x[i:i + 1].float(), (padding,) * 4, mode="reflect")[0]
        top, left = padding + dy[i, 0], padding + dx[i, 0]
        crop = padded[:, top:top + x.shape[2], left:left + x.shape[3]]
        out.append(crop.flip(2) if flips[i, 0] else crop)
    return torch.stack(out).to(torch.uint8)


def test_fused_crop_flip_equals_pad_crop_flip_per_image():
    x = torch.randint(0, 256, (16, 3, 12, 10), dtype=torch.uint8)
    fast = crop_flip(x, 3, True, torch.Generator().manual_seed(5))
    slow = _reference_crop_flip(x, 3, True, torch.Generator().manual_seed(5))
    assert torch.equal(fast, slow)


def test_cutout_zeroes_a_square_per_image():
    x = torch.ones(32, 3, 16, 16)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    zeroed = (out[:, 0] == 0).sum((1, 2))
    assert zeroed.max() == 16 and zeroed.min() >= 4  # a full square, or clipped at the border
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # the same square in every channel


def test_normalize_matches_the_formula():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    got = Normalize(mean, std, True)(x)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(got, want, atol=1e-6) and got.is_contiguous(memory_format=torch.channels_last)


def _loader(data, splits, **kw):
    norm = Normalize(splits.mean, splits.std, False)
    aug = BatchAugment(AugmentConfig(crop_padding=2, flip=True, rotation=10, cutout=4), norm)
    return Loader(data, 8, norm, augment=aug, shuffle=True, drop_last=True, seed=7, workers=0, **kw)


def test_batches_depend_only_on_their_position(folder_dir):
    """What makes resume exact: starting at step 2 yields exactly the batches 2.. of a full pass."""
    s = load_splits(DataConfig(data=str(folder_dir), val_fraction=0), seed=0)
    loader = _loader(s.train, s)
    full = list(loader.batches(epoch=3))
    later = list(loader.batches(epoch=3, start=2))
    assert len(full) == len(loader) == 30 // 8
    for (i, x, y), (j, x2, y2) in zip(full[2:], later):
        assert i == j and torch.equal(x, x2) and torch.equal(y, y2)
    other_epoch = next(loader.batches(epoch=4))
    assert not torch.equal(full[0][2], other_epoch[2])


def test_streaming_and_memory_paths_yield_the_same_batches(folder_dir):
    mem = load_splits(DataConfig(data=str(folder_dir), in_memory="yes", val_fraction=0), seed=0)
    stream = load_splits(DataConfig(data=str(folder_dir), in_memory="no", val_fraction=0), seed=0)
    for (_, x1, y1), (_, x2, y2) in zip(_loader(mem.train, mem).batches(1), _loader(stream.train, stream).batches(1)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_alternate_flip_shows_every_image_both_ways_over_two_epochs():
    n = 64
    x = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 3, 4, 4)
    norm = Normalize([0.0] * 3, [1 / 255] * 3, False)  # identity on the uint8 values
    aug = BatchAugment(AugmentConfig(crop_padding=0, flip=True, alternate_flip=True), norm, n, seed=3)
    index = torch.randperm(n)

    def flipped(epoch):
        out = aug(x[index], torch.Generator().manual_seed(epoch), index, epoch)
        assert all(o.equal(s) or o.equal(s.flip(-1)) for o, s in zip(out, x[index].float()))
        return torch.tensor([not o.equal(s) for o, s in zip(out, x[index].float())])

    even, odd, even2 = flipped(0), flipped(1), flipped(2)
    assert torch.equal(even, ~odd) and torch.equal(even, even2)
    assert 16 < even.sum() < 48  # a random half, not all or none


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


def test_progressive_sizes_shrink_the_first_epochs_only():
    norm = Normalize([0.5] * 3, [0.25] * 3, True)
    aug = BatchAugment(AugmentConfig(crop_padding=2, progressive_sizes=[16, 24]), norm)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    shapes = [aug(x, torch.Generator().manual_seed(0), torch.arange(4), epoch).shape[-1] for epoch in range(4)]
    assert shapes == [16, 24, 32, 32]
    small = aug(x, torch.Generator().manual_seed(0), torch.arange(4), 0)
    assert small.is_contiguous(memory_format=torch.channels_last)
    full = aug(x, torch.Generator().manual_seed(0), torch.arange(4), 2)  # same draws, full size
    assert torch.allclose(small, F.interpolate(full, size=16, mode="bilinear", antialias=True), atol=1e-5)
