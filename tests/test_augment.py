import torch
import torch.nn.functional as F

from imagefit.data.augment import BatchAugment, crop_flip, cutout
from imagefit.preprocessing import Normalize
from imagefit.config import AugmentConfig


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


def test_alternate_flip_shows_every_image_both_ways_over_two_epochs():
    n = 64
    x = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 3, 4, 4)
    norm = Normalize([0.0] * 3, [1 / 255] * 3, False)  # identity on the uint8 values
    aug = BatchAugment(AugmentConfig(crop_padding=0, flip=True, alternate_flip=True), norm, n, seed=3)
    index = torch.randperm(n)

    def flipped(epoch):
        out, _ = aug(x[index], index, torch.Generator().manual_seed(epoch), index, epoch)
        assert all(o.equal(s) or o.equal(s.flip(-1)) for o, s in zip(out, x[index].float()))
        return torch.tensor([not o.equal(s) for o, s in zip(out, x[index].float())])

    even, odd, even2 = flipped(0), flipped(1), flipped(2)
    assert torch.equal(even, ~odd) and torch.equal(even, even2)
    assert 16 < even.sum() < 48  # a random half, not all or none


def test_progressive_sizes_shrink_the_first_epochs_only():
    norm = Normalize([0.5] * 3, [0.25] * 3, True)
    aug = BatchAugment(AugmentConfig(crop_padding=2, progressive_sizes=[16, 24]), norm)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(4)
    shapes = [aug(x, y, torch.Generator().manual_seed(0), torch.arange(4), epoch)[0].shape[-1] for epoch in range(4)]
    assert shapes == [16, 24, 32, 32]
    small, _ = aug(x, y, torch.Generator().manual_seed(0), torch.arange(4), 0)
    assert small.is_contiguous(memory_format=torch.channels_last)
    full, _ = aug(x, y, torch.Generator().manual_seed(0), torch.arange(4), 2)  # same draws, full size
    assert torch.allclose(small, F.interpolate(full, size=16, mode="bilinear", antialias=True), atol=1e-5)
