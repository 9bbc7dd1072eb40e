import pickle

import pytest
import torch

from imagefit.config import DataConfig
from imagefit.data.sources import FileSet, ImageSet, load_splits, load_test_split, stratified_split
from imagefit.errors import ImagefitError


def test_cifar_batches_are_read_directly(cifar_dir):
    s = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0.2), seed=0)
    assert isinstance(s.train, ImageSet) and s.train.images.dtype == torch.uint8
    assert s.train.images.shape[1:] == (3, 32, 32)
    assert len(s.train) + len(s.val) == 120 and len(s.test) == 40
    assert s.classes[0] == "airplane" and len(s.classes) == 10
    assert all(0 < m < 1 for m in s.mean) and all(0 < v < 1 for v in s.std)


def test_the_pickle_reader_runs_no_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(ImagefitError, match="not a readable CIFAR-10 batch"):
        load_splits(DataConfig(data=str(tmp_path)), seed=0)


def test_imagefolder_any_size_and_grayscale_become_rgb_at_the_configured_size(folder_dir):
    s = load_splits(DataConfig(data=str(folder_dir), size=24, val_fraction=0.2), seed=0)
    assert s.classes == ["cat", "dog", "frog"]
    assert s.train.images.shape[1:] == (3, 24, 24)
    assert len(s.train) + len(s.val) == 30 and len(s.test) == 12


def test_split_is_stratified_seeded_and_disjoint():
    labels = torch.arange(10).repeat_interleave(50)
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == 50 and torch.bincount(labels[held]).tolist() == [5] * 10
    assert not set(keep.tolist()) & set(held.tolist())
    assert torch.equal(held, stratified_split(labels, 0.1, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.1, seed=4)[1])


def test_stats_are_cached_and_reused(cifar_dir, tmp_path):
    load_splits(DataConfig(data=str(cifar_dir)), seed=0)
    cached = list((tmp_path / "cache" / "stats").glob("*.json"))
    assert len(cached) == 1
    cached[0].write_text('{"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}')
    assert load_splits(DataConfig(data=str(cifar_dir)), seed=0).mean == [0.1, 0.2, 0.3]


def test_corrupt_image_is_named_before_training(folder_dir):
    bad = folder_dir / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImagefitError, match=r"1 file\(s\) could not be read as images: .*broken.jpg.*--skip-bad-images"):
        load_splits(DataConfig(data=str(folder_dir)), seed=0)
    with pytest.warns(UserWarning, match="broken.jpg"):
        s = load_splits(DataConfig(data=str(folder_dir), skip_bad_images=True), seed=0)
    assert len(s.train) + len(s.val) == 30


def test_empty_class_is_refused(folder_dir):
    (folder_dir / "train" / "empty").mkdir()
    with pytest.raises(ImagefitError, match="class 'empty' has no images"):
        load_splits(DataConfig(data=str(folder_dir)), seed=0)


def test_test_split_with_a_class_train_lacks_is_refused(folder_dir):
    (folder_dir / "test" / "horse").mkdir()
    with pytest.raises(ImagefitError, match="class folder\\(s\\) horse that train/ lacks"):
        load_splits(DataConfig(data=str(folder_dir)), seed=0)


def test_wrong_layout_and_missing_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    with pytest.raises(ImagefitError, match="neither CIFAR-10 batches .* nor an ImageFolder tree.*found notes.txt"):
        load_splits(DataConfig(data=str(tmp_path / "stuff")), seed=0)
    with pytest.raises(ImagefitError, match="does not exist; pass --data DIR"):
        load_splits(DataConfig(data=str(tmp_path / "nowhere")), seed=0)


def test_offline_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(ImagefitError, match="could not download CIFAR-10 .* put the official 'cifar-10-batches-py' "
                                            "folder in .* IMAGEFIT_DATA"):
        load_splits(DataConfig(data=str(tmp_path / "empty"), download=True), seed=0)


def test_imagefit_data_environment_variable(cifar_dir, monkeypatch):
    monkeypatch.setenv("IMAGEFIT_DATA", str(cifar_dir))
    assert len(load_test_split(DataConfig())) == 40


def test_streaming_path_reads_the_same_images(folder_dir):
    mem = load_splits(DataConfig(data=str(folder_dir), in_memory="yes"), seed=0)
    stream = load_splits(DataConfig(data=str(folder_dir), in_memory="no"), seed=0)
    assert isinstance(stream.train, FileSet)
    assert torch.equal(mem.train.labels, stream.train.labels)
    assert torch.equal(mem.train.images[3], stream.train.read(3))
    assert mem.mean == stream.mean


def test_streaming_path_checks_every_file_before_training(folder_dir):
    (folder_dir / "train" / "cat" / "truncated.jpg").write_bytes(
        (folder_dir / "train" / "cat" / "1.jpg").read_bytes()[:40])
    with pytest.raises(ImagefitError, match="truncated.jpg"):
        load_splits(DataConfig(data=str(folder_dir), in_memory="no"), seed=0)
    with pytest.warns(UserWarning, match="truncated.jpg"):
        s = load_splits(DataConfig(data=str(folder_dir), in_memory="no", skip_bad_images=True), seed=0)
    assert "truncated.jpg" not in " ".join(s.train.paths + (s.val.paths if s.val else []))
