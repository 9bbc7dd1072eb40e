"""Where images come from: CIFAR-10 batches, ImageFolder trees, the download, and the splits.

`ImageSet` is the in-memory currency: a uint8 N×C×H×W tensor (CIFAR-10 is 150 MB this way, a quarter of
float32), int64 labels and the ordered class names. `FileSet` is its streaming twin for trees too big for
memory: the same labels and classes, images decoded from disk by loader workers. Both go through the same
loader and augmentation, so both yield the same batches.
"""

from __future__ import annotations


import hashlib
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..config import DataConfig
from ..errors import ImagefitError
from ..files import atomic_torch_save, atomic_write_text
from ..preprocessing import DECODER, IMAGE_EXTENSIONS, is_utf8, load_image
from ..seeds import Stream, choice_generator

CIFAR_DIR = "cifar-10-batches-py"


def cache_dir() -> Path:
    """imagefit's cache: $IMAGEFIT_CACHE, else $XDG_CACHE_HOME/imagefit, else ~/.cache/imagefit."""
    root = os.environ.get("IMAGEFIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagefit"
    return Path(root)


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes, self.source)

    def concat(self, other: ImageSet) -> ImageSet:
        """These images, then `other`'s (same classes): e.g. real then synthetic."""
        return ImageSet(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]),
                        self.classes, self.source)


@dataclass
class FileSet:
    """Image files decoded on demand (streaming path); `size`/`resize` say how each file is prepared."""
    paths: list[str]
    labels: torch.Tensor
    classes: list[str]
    source: str
    size: int
    resize: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> FileSet:
        return FileSet([self.paths[i] for i in index.tolist()], self.labels[index], self.classes, self.source,
                       self.size, self.resize)

    def read(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_image(self.paths[i], self.size, self.resize)).permute(2, 0, 1)


@dataclass
class Splits:
    train: ImageSet | FileSet
    val: ImageSet | FileSet | None
    test: ImageSet | FileSet | None
    classes: list[str]
    mean: list[float]
    std: list[float]
    source: str
    synthetic: ImageSet | None = None  # --synthetic in ratio mode: drawn into every training batch
    calibration: ImageSet | FileSet | None = None  # --calibration-fraction: held out to fit the temperature only


# ---------------------------------------------------------------------------------------------- images

def _try_load(path: str, size: int, resize: str):
    try:
        return load_image(path, size, resize)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return e


def _decode_each(paths: list[str], size: int, resize: str):
    """(index, uint8 array or the exception) for every file, decoded in parallel (PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        yield from enumerate(pool.map(lambda p: _try_load(p, size, resize), paths, chunksize=64))


def decode_files(paths: list[str], size: int, resize: str, skip_bad: bool,
                 without: str = "train without them") -> tuple[torch.Tensor, list[int]]:
    """Decode every file; returns N×C×H×W uint8 and the indices of the files kept.

    All files are read before training starts, so a corrupt file is found now, never halfway through an epoch.
    """
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    bad, keep = [], []
    for i, result in _decode_each(paths, size, resize):
        if isinstance(result, Exception):
            bad.append(paths[i])
        else:
            out[len(keep)] = result
            keep.append(i)
    _report_bad(bad, skip_bad, without)
    return torch.from_numpy(out[: len(keep)]).permute(0, 3, 1, 2).contiguous(), keep


def _report_bad(bad: list[str], skip_bad: bool, without: str = "train without them") -> None:
    if not bad:
        return
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if not skip_bad:
        raise ImagefitError(f"{len(bad)} file(s) could not be read as images: {shown} (corrupt, truncated, a "
                            f"dangling link or a link loop); remove or replace them, or pass --skip-bad-images to "
                            f"{without}")
    import warnings
    warnings.warn(f"skipped {len(bad)} unreadable image file(s): {shown}", stacklevel=3)


# ---------------------------------------------------------------------------------------------- CIFAR-10

class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches without running arbitrary code: only numpy's array rebuilders (and the
    codec call that Python 3 uses to pickle bytes at protocol 2) are allowed."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
        if not isinstance(d, dict):
            raise TypeError(f"a {type(d).__name__}, not a dict")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    except FileNotFoundError:
        raise ImagefitError(f"CIFAR-10 folder {path.parent} lacks {path.name}; copy the complete "
                            f"cifar-10-batches-py folder (data_batch_1..5, test_batch, batches.meta)") from None
    except Exception as e:
        raise ImagefitError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}); "
                            f"download or copy it again") from None


def _check_batch(path: Path, batch: dict) -> None:
    """The official batches hold `data` as an N×3072 uint8 array and `labels` as N integers. Anything else is refused
    before numpy touches it: a 222-byte pickle of shared nested lists becomes gigabytes under np.asarray."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"an array of shape {data.shape} and dtype {data.dtype}" if isinstance(data, np.ndarray) else \
            f"a {type(data).__name__}"
        raise ImagefitError(f"{path} holds {what} as its data, not N×3072 uint8 CIFAR-10 rows; use the official "
                            f"python-version files")
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    else:
        ok = isinstance(labels, list) and all(type(x) is int for x in labels)
    if not ok or len(labels) != len(data):
        raise ImagefitError(f"{path} does not hold one integer label per image ({len(data)} images); use the "
                            f"official python-version files")


def _cifar_set(root: Path, names: list[str], classes: list[str]) -> ImageSet:
    parts = [_read_batch(root / n) for n in names]
    for name, part in zip(names, parts):
        _check_batch(root / name, part)
    data = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
    labels = np.concatenate([np.asarray(p["labels"], dtype=np.int64) for p in parts])
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ImagefitError(f"{root} holds batches of shape {data.shape}, not N×3072 CIFAR-10 rows; "
                            f"use the official python-version files")
    outside = labels[(labels < 0) | (labels >= len(classes))]
    if len(outside):
        raise ImagefitError(f"{root}/{'/'.join(names) if len(names) == 1 else 'data_batch_*'} has labels outside "
                            f"0..{len(classes) - 1} (e.g. {int(outside[0])}) for its {len(classes)} classes; the "
                            f"file is damaged or not CIFAR-10: copy the official files again")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels), classes, str(root))


def read_cifar10(root: Path) -> tuple[ImageSet, ImageSet]:
    """The official python-version pickles, read directly: torchvision's md5 check rejects re-encoded copies."""
    meta = _read_batch(root / "batches.meta") if (root / "batches.meta").exists() else {}
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get("label_names", [])] or [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train = _cifar_set(root, [f"data_batch_{i}" for i in range(1, 6)], classes)
    test = _cifar_set(root, ["test_batch"], classes)
    return train, test


def download_cifar10(root: Path) -> None:
    """Fetch CIFAR-10 through torchvision into root/cifar-10-batches-py; a clear error when offline."""
    from torchvision.datasets import CIFAR10
    root.mkdir(parents=True, exist_ok=True)
    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # URLError, socket errors, checksum failures: all mean "no usable download"
        raise ImagefitError(f"could not download CIFAR-10 ({type(e).__name__}: {str(e)[:120]}); put the official "
                            f"'{CIFAR_DIR}' folder in {root} or point IMAGEFIT_DATA (or --data) at its parent") from None


# ---------------------------------------------------------------------------------------------- ImageFolder

def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_tree(folder: Path, classes: list[str] | None) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, classes) of an ImageFolder split; every class must hold at least one image."""
    found = [d.name for d in _class_dirs(folder)]
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ImagefitError(f"{folder} has class folder(s) {', '.join(extra)} that train/ lacks; "
                                f"add them to train/ or remove them")
    undecodable = [n for n in found if not is_utf8(n)]
    if undecodable:
        raise ImagefitError(f"class folder {undecodable[0]!r} in {folder} has a name that is not valid UTF-8; "
                            f"rename it (class names travel in bundles, JSON and web pages)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        d = folder / name
        if not d.is_dir():
            raise ImagefitError(f"{folder} has no folder for class '{name}', which train/ has; add {d} with "
                                f"images of it, or remove the class from train/")
        files = sorted(str(p) for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ImagefitError(f"class '{name}' has no images in {d} (extensions: "
                                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the class folder")
        paths += files
        labels += [label] * len(files)
    return paths, labels, classes


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_fingerprint(paths: list[str]) -> list:
    def sized(p: str):
        try:
            s = os.stat(p)
            return p, s.st_size, s.st_mtime_ns
        except OSError:  # a dangling link or a link loop: decoding names it (or --skip-bad-images skips it)
            return p, -1, -1
    return [sized(p) for p in paths]


def _imagefolder_set(folder: Path, classes, cfg: DataConfig, stream: bool) -> tuple[ImageSet | FileSet, str]:
    """The split in `folder` and a key that changes whenever any file or the preprocessing does."""
    paths, labels, classes = _scan_tree(folder, classes)
    key = _fingerprint(_files_fingerprint(paths), cfg.size, cfg.resize, cfg.skip_bad_images, DECODER)
    if stream:
        keep = _readable(paths, key, cfg)
        return FileSet([paths[i] for i in keep], torch.tensor(labels)[keep], classes, str(folder), cfg.size,
                       cfg.resize), key
    # Decoding is the slow part of loading a tree (about 20 s for 50,000 JPEGs on 2 cores): cache the tensor
    # under that key, so the next run starts at once.
    cached = cache_dir() / "decoded" / f"{key}.pt"
    if cached.exists():
        try:
            blob = torch.load(cached, weights_only=True)
            return ImageSet(blob["images"], blob["labels"], classes, str(folder)), key
        except Exception:
            pass  # a damaged cache entry is rebuilt below
    images, keep = decode_files(paths, cfg.size, cfg.resize, cfg.skip_bad_images)
    result = ImageSet(images, torch.tensor(labels)[keep], classes, str(folder))
    try:
        atomic_torch_save({"images": result.images, "labels": result.labels}, cached)
    except OSError:
        pass  # a read-only cache only costs speed
    return result, key


def _readable(paths: list[str], key: str, cfg: DataConfig) -> list[int]:
    """Indices of the files that decode, checked once per tree (cached under its key): the streaming path then
    never meets a corrupt file halfway through an epoch."""
    def check() -> list[int]:
        results = list(_decode_each(paths, cfg.size, cfg.resize))  # decoded and dropped: only readability counts
        _report_bad([paths[i] for i, r in results if isinstance(r, Exception)], cfg.skip_bad_images)
        return [i for i, r in results if not isinstance(r, Exception)]
    return _json_cached("verified", key, check)


def _streams(n_images: int, size: int, mode: str) -> bool:
    """Stream from disk when asked, or (auto) when the uint8 tensor would take over a quarter of RAM."""
    if mode != "auto":
        return mode == "no"
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return False
    return n_images * 3 * size * size > ram // 4


# ---------------------------------------------------------------------------------------------- splits

def kfold_split(labels: torch.Tensor, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held) indices for fold `fold` of `folds` stratified folds: each class's images, in a seeded order,
    dealt round-robin into the folds, so every fold has each class's share to within one image."""
    if folds < 2 or not 0 <= fold < folds:
        raise ImagefitError(f"--fold must be between 0 and {folds - 1} with --folds {folds} (got {fold}); "
                            f"--folds needs 2 or more")
    g = choice_generator(seed, Stream.FOLDS)
    which = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        which[idx[torch.randperm(len(idx), generator=g)]] = torch.arange(len(idx)) % folds
    if int((which == fold).sum()) == 0:
        raise ImagefitError(f"fold {fold} of {folds} is empty: the training set has fewer images than folds")
    return torch.nonzero(which != fold).flatten(), torch.nonzero(which == fold).flatten()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held) indices: `fraction` of each class held out, chosen by `seed`; both sorted."""
    if fraction <= 0:
        return torch.arange(len(labels)), torch.empty(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = int(round(fraction * len(idx)))
        n = min(max(n, 1), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    held = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def channel_stats(data: ImageSet | FileSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1], over the given (training) images."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    chunks = ((data.images[i:i + 4096] for i in range(0, len(data), 4096)) if isinstance(data, ImageSet)
              else (data.read(i)[None] for i in range(len(data))))
    for x in chunks:
        x = x.to(torch.float64) / 255
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def _json_cached(kind: str, key: str, compute):
    """`compute()` once per key, its JSON result kept under the cache folder; a read-only or damaged cache
    only costs the recomputation."""
    path = cache_dir() / kind / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        atomic_write_text(path, json.dumps(value))
    except OSError:
        pass
    return value


def _cached_stats(train: ImageSet | FileSet, key: str) -> tuple[list[float], list[float]]:
    stats = _json_cached("stats", key, lambda: dict(zip(("mean", "std"), channel_stats(train))))
    return stats["mean"], stats["std"]


# ---------------------------------------------------------------------------------------------- entry point

def data_root(cfg: DataConfig) -> Path:
    if cfg.data:
        return Path(cfg.data).expanduser()
    if os.environ.get("IMAGEFIT_DATA"):
        return Path(os.environ["IMAGEFIT_DATA"]).expanduser()
    return cache_dir() / "datasets"


def find_layout(root: Path) -> tuple[str, Path]:
    """('cifar', batches folder) or ('folder', tree root), or a one-line error describing what is expected."""
    if root.exists() and not root.is_dir():
        raise ImagefitError(f"data folder {root} is a file, not a folder; pass --data DIR (or set IMAGEFIT_DATA) "
                            f"to the folder holding {CIFAR_DIR}/ or an ImageFolder tree")
    if not root.is_dir():
        raise ImagefitError(f"data folder {root} does not exist; pass --data DIR (or set IMAGEFIT_DATA) "
                            f"to a folder holding {CIFAR_DIR}/ or an ImageFolder tree, or add --download")
    for candidate in (root / CIFAR_DIR, root):
        if (candidate / "data_batch_1").exists() or (candidate / "test_batch").exists():
            return "cifar", candidate
    if (root / "train").is_dir():
        return "folder", root
    if _class_dirs(root) and not any((root / s).is_dir() for s in ("val", "test")):
        return "folder", root  # a bare tree of class folders: all of it is train
    listing = ", ".join(sorted(p.name for p in root.iterdir())[:6]) or "nothing"
    raise ImagefitError(f"{root} holds neither CIFAR-10 batches ({CIFAR_DIR}/data_batch_1..5) nor an "
                        f"ImageFolder tree (train/<class>/*.jpg); found {listing}. Point --data (or IMAGEFIT_DATA) "
                        f"at one of them, or add --download for CIFAR-10")


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Train/val/test for a data config; val is carved from train, the test split is only ever evaluated."""
    root = data_root(cfg)
    try:
        kind, where = find_layout(root)
    except ImagefitError:
        if not cfg.download:
            raise
        download_cifar10(root)
        kind, where = find_layout(root)

    if kind == "cifar":
        train, test = read_cifar10(where)
        if cfg.size != 32:
            train, test = resize_set(train, cfg), resize_set(test, cfg)
        fingerprint = _files_fingerprint(sorted(str(p) for p in where.iterdir() if p.is_file()))
    else:
        has_train = (where / "train").is_dir()
        train_dir = where / "train" if has_train else where
        n = sum(1 for _ in train_dir.rglob("*"))
        stream = _streams(n, cfg.size, cfg.in_memory)
        train, fingerprint = _imagefolder_set(train_dir, None, cfg, stream)
        if len(train.classes) < 2:
            raise ImagefitError(f"{train_dir} has {len(train.classes)} class folder(s); a classifier needs "
                                f"at least 2 (train/<class>/*.jpg)")
        test_dir = next((where / s for s in ("test", "val") if has_train and (where / s).is_dir()), None)
        test = _imagefolder_set(test_dir, train.classes, cfg, stream)[0] if test_dir else None

    if cfg.test_data:
        test = _load_test_split(replace(cfg, data=cfg.test_data))
        missing = [c for c in train.classes if c not in test.classes]
        if missing:
            raise ImagefitError(f"--test-data {cfg.test_data} has no class {', '.join(missing)} of {where}; "
                                f"test on a folder with the same class names")
        test = select_classes(test, train.classes)
    if cfg.classes:
        train = select_classes(train, cfg.classes)
        test = select_classes(test, cfg.classes) if test is not None else None
    if cfg.per_class:
        train = train.subset(per_class_subset(train.labels, cfg.per_class, seed))
    if cfg.imbalance != "none":
        from .imbalance import imbalanced_subset
        train = train.subset(imbalanced_subset(train.labels, cfg.imbalance, len(train.classes), seed))
    if cfg.folds:
        keep, held = kfold_split(train.labels, cfg.folds, cfg.fold, seed)
    else:
        keep, held = stratified_split(train.labels, cfg.val_fraction, seed)
    val = train.subset(held) if len(held) else None
    train = train.subset(keep)
    calibration = None
    if val is None and cfg.calibration_fraction > 0 and not cfg.folds:
        keep, held = stratified_split(train.labels, cfg.calibration_fraction, seed)
        calibration, train = train.subset(held), train.subset(keep)
    if cfg.bootstrap:
        train = train.subset(torch.randint(len(train), (len(train),), generator=choice_generator(cfg.bootstrap, Stream.BOOTSTRAP)))
    key = _fingerprint(fingerprint, cfg.size, cfg.resize, cfg.val_fraction, seed, cfg.classes, cfg.per_class,
                       cfg.imbalance, cfg.bootstrap, *((cfg.folds, cfg.fold) if cfg.folds else ()),
                       *((cfg.calibration_fraction,) if calibration is not None else ()))
    mean, std = _cached_stats(train, key)  # the real images' statistics, synthetic ones or not
    synthetic = _synthetic_set(cfg, train) if cfg.synthetic else None
    if synthetic is not None and cfg.synthetic_mode == "extra":
        train, synthetic = train.concat(synthetic), None
    return Splits(train, val, test, train.classes, mean, std, str(where), synthetic, calibration)


def synthetic_tree(folder: str | Path, cfg: DataConfig) -> ImageSet:
    """A folder 'imagefit generate sample' wrote (train/<class>/*.png), decoded into memory at `cfg.size`."""
    folder = Path(folder)
    tree = folder / "train" if (folder / "train").is_dir() else folder
    if not tree.is_dir():
        raise ImagefitError(f"--synthetic {folder} is not a folder; pass what 'imagefit generate sample' wrote")
    return _imagefolder_set(tree, None, cfg, stream=False)[0]


def _synthetic_set(cfg: DataConfig, train: ImageSet | FileSet) -> ImageSet:
    """The synthetic tree at the real images' size, labelled in the real class order."""
    if not isinstance(train, ImageSet):
        raise ImagefitError("--synthetic needs the real images in memory (--in-memory yes)")
    return align_classes(synthetic_tree(cfg.synthetic, cfg), train.classes)


def select_classes(data: ImageSet | FileSet, names: list[str]) -> ImageSet | FileSet:
    """Only the images of `names`, relabelled 0… in that order."""
    unknown = [c for c in names if c not in data.classes]
    if unknown:
        raise ImagefitError(f"--classes names {', '.join(unknown)}, not in {data.source}; its classes: "
                            f"{', '.join(data.classes)}")
    if len(set(names)) != len(names):
        raise ImagefitError(f"--classes names a class twice ({','.join(names)}); list each once")
    old = torch.tensor([data.classes.index(c) for c in names])
    index = torch.nonzero(torch.isin(data.labels, old)).flatten()
    remap = torch.full((len(data.classes),), -1, dtype=torch.long)
    remap[old] = torch.arange(len(names))
    part = data.subset(index)
    part.labels, part.classes = remap[part.labels], list(names)
    return part


def per_class_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most `n` images per class, chosen by `seed`."""
    g = choice_generator(seed, Stream.PER_CLASS)
    keep = [idx[torch.randperm(len(idx), generator=g)[:n]] for c in labels.unique().tolist()
            for idx in [torch.nonzero(labels == c).flatten()]]
    return torch.cat(keep).sort().values


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×3×H×W images at `size`×`size` (bilinear, antialiased when shrinking)."""
    import torch.nn.functional as F
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def resize_set(data: ImageSet, cfg: DataConfig) -> ImageSet:
    """Resize an in-memory set (e.g. CIFAR-10 to 64 px) with the same rule as files."""
    return ImageSet(resize_images(data.images, cfg.size), data.labels, data.classes, data.source)


def load_test_split(cfg: DataConfig) -> ImageSet | FileSet:
    """Only the test split (CIFAR's test_batch, or the tree's test/, else val/; --test-data's when it was given),
    for evaluating a bundle."""
    test = _load_test_split(replace(cfg, data=cfg.test_data) if cfg.test_data else cfg)
    return select_classes(test, cfg.classes) if cfg.classes else test


def _load_test_split(cfg: DataConfig) -> ImageSet | FileSet:
    kind, where = find_layout(data_root(cfg))
    if kind == "cifar":
        return read_cifar10(where)[1] if cfg.size == 32 else resize_set(read_cifar10(where)[1], cfg)
    test_dir = next((where / s for s in ("test", "val") if (where / s).is_dir()), None)
    if test_dir is None:
        raise ImagefitError(f"{where} has no test/ or val/ folder to evaluate on; add one with the same class "
                            f"folders as train/, or pass --split val to use the run's validation split")
    n = sum(1 for _ in test_dir.rglob("*"))
    return _imagefolder_set(test_dir, None, cfg, _streams(n, cfg.size, cfg.in_memory))[0]


def align_classes(data: ImageSet | FileSet, classes: list[str]) -> ImageSet | FileSet:
    """Relabel `data` to a model's class order; refuse when the class lists differ, naming the difference."""
    if data.classes == classes:
        return data
    missing, extra = sorted(set(classes) - set(data.classes)), sorted(set(data.classes) - set(classes))
    if extra:
        raise ImagefitError(f"the data has class(es) {', '.join(extra)} that the model was not trained on"
                            + (f" and lacks {', '.join(missing)}" if missing else "")
                            + "; evaluate on data with the model's classes")
    remap = torch.tensor([classes.index(c) for c in data.classes])
    relabelled = remap[data.labels]
    if isinstance(data, ImageSet):
        return ImageSet(data.images, relabelled, classes, data.source)
    return FileSet(data.paths, relabelled, classes, data.source, data.size, data.resize)



def fingerprint(splits: Splits) -> dict:
    """What a run was trained and tested on, independent of where the folder lies: per split, the images per class
    and a hash of the decoded pixels and labels (of the file names and sizes, when streamed). A resumed run compares
    it with the one in its checkpoint (`describe_change`)."""
    out = {}
    for name in ("train", "val", "test"):
        data = getattr(splits, name)
        if data is None:
            continue
        h = hashlib.blake2b(digest_size=16)
        if isinstance(data, ImageSet):
            h.update(data.images.contiguous().numpy().tobytes())
        else:
            h.update(json.dumps([(Path(p).name, os.stat(p).st_size) for p in data.paths]).encode())
        h.update(data.labels.numpy().astype(np.int64).tobytes())
        out[name] = {"per_class": torch.bincount(data.labels, minlength=len(splits.classes)).tolist(),
                     "hash": h.hexdigest()}
    return {"classes": list(splits.classes), "splits": out}


def describe_change(before: dict, now: dict) -> str | None:
    """How the data differs from a fingerprint taken earlier (None: it does not)."""
    if before["classes"] != now["classes"]:
        return f"its classes are now {', '.join(now['classes'])} (were {', '.join(before['classes'])})"
    for name in sorted(set(before["splits"]) | set(now["splits"])):
        a, b = before["splits"].get(name), now["splits"].get(name)
        if a is None or b is None:
            return f"it {'has' if a is None else 'lacks'} a {name} split now"
        if a["per_class"] != b["per_class"]:
            changed = [(c, x, y) for c, x, y in zip(now["classes"], a["per_class"], b["per_class"]) if x != y]
            c, x, y = changed[0]
            return (f"its {name} split has {sum(b['per_class'])} images (was {sum(a['per_class'])}; class {c}: {y}, "
                    f"was {x})")
        if a["hash"] != b["hash"]:
            return f"the images of its {name} split changed ({sum(b['per_class'])} images, as before)"
    return None
