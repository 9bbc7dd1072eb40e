"""The batch path: batches are a pure function of (seed, epoch, step), from memory or streamed from disk."""

import torch

from imagefit.config import AugmentConfig, DataConfig
from imagefit.data.augment import BatchAugment
from imagefit.data.loader import Loader
from imagefit.data.sources import load_splits
from imagefit.preprocessing import Normalize


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


def test_synthetic_images_fill_their_share_of_every_batch_and_the_epoch_stays_one_pass(folder_dir):
    real = load_splits(DataConfig(data=str(folder_dir), val_fraction=0), seed=0)
    synthetic = real.train.subset(torch.arange(6))
    synthetic.images = torch.full_like(synthetic.images, 7)  # recognisable
    norm = Normalize([0.0] * 3, [1 / 255] * 3)  # identity on the uint8 values
    loader = Loader(real.train, 10, norm, shuffle=True, drop_last=True, seed=1, synthetic=synthetic,
                    synthetic_ratio=0.3)
    batches = list(loader.batches(0))
    assert len(batches) == len(real.train) // 7  # 7 real images a batch, one pass over the real ones
    for _, x, y in batches:
        assert len(x) == 10 and int((x == 7).flatten(1).all(1).sum()) == 3


def test_drop_last_keeps_one_batch_when_the_set_is_smaller_than_a_batch(folder_dir):
    s = load_splits(DataConfig(data=str(folder_dir), val_fraction=0), seed=0)
    norm = Normalize(s.mean, s.std)
    assert len(Loader(s.train, 8, norm, drop_last=True)) == len(s.train) // 8
    small = s.train.subset(torch.arange(5))
    loader = Loader(small, 8, norm, drop_last=True)
    assert len(loader) == 1 and len(next(loader.batches())[1]) == 5
