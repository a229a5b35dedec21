"""Built-in dataset loaders, registered in ``dcbench.data.DATASETS``.

Every loader reads the dataset's own release format from the data root (``DataOptions.root``) and
returns uint8 N×C×H×W images with int64 labels; normalisation uses the DC family's per-channel
constants in ``NORMALIZATION``. Files are parsed here rather than through torchvision's dataset
classes, which md5-check whole files; torchvision is used only to download when asked.

Layouts under the data root:

- ``mnist``: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's layout).
- ``fashionmnist``: ``FashionMNIST/raw/`` with the same file names; falls back to the Debian package
  folder ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (python pickles).
- ``cifar100``: ``cifar-100-python/{train,test,meta}``; the 100 fine labels are used.
- ``svhn``: ``svhn/{train,test}_32x32.mat`` (format 2, cropped digits); label 10 means digit 0.
- ``tinyimagenet``: the extracted ``tiny-imagenet-200/`` folder; the official val split is the test
  split. The decoded images are cached in ``tiny-imagenet-200/dcbench-cache-uint8.pt``.

Two datasets need no files: ``digits`` (scikit-learn's embedded 8×8 digits, the offline default)
and ``tiny`` (a synthetic 4-class fixture for tests). The digits split is fixed and RNG-free:
within each class, in file order, the image with within-class rank ``r`` is a test image iff
``r % 4 == 3``, otherwise a train image. This gives 1352 train and 445 test images.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcbench.data import DataOptions, DatasetInfo, RealData, register_dataset
from dcbench.errors import DataNotFoundError, DcbenchError

log = logging.getLogger(__name__)

# Per-channel (mean, std) of each train split in [0, 1] units, as used throughout the DC family
# (DC/DSA/DM/MTT ``utils.get_dataset``). Digits were computed once from the split documented above.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3049,), (0.3756,)),
    "tiny": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}

# The one hard-coded path: where Debian's ``dataset-fashion-mnist`` package installs its files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_GET_IT = "pass --data-root DIR, set DCBENCH_DATA, or add --download"


def _info(name: str, shape: tuple[int, int, int], class_names: Sequence[str]) -> DatasetInfo:
    """The ``DatasetInfo`` of ``name`` with its constants from ``NORMALIZATION``."""
    mean, std = NORMALIZATION[name]
    channels, height, width = shape
    return DatasetInfo(
        name=name,
        num_classes=len(class_names),
        channels=channels,
        height=height,
        width=width,
        mean=mean,
        std=std,
        class_names=tuple(class_names),
    )


def _real_data(
    info: DatasetInfo,
    train: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor],
    test: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor],
    source: Path | str,
) -> RealData:
    """Check shapes and label ranges (as one-line errors naming ``source``), then wrap."""
    tensors = []
    for split, (images, labels) in (("train", train), ("test", test)):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).long().flatten()
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != info.image_shape:
            raise DcbenchError(
                f"{source}: {info.name} {split} images are {images.dtype} "
                f"{tuple(images.shape)}, expected uint8 N×{'×'.join(map(str, info.image_shape))}"
            )
        if labels.numel() != images.shape[0]:
            raise DcbenchError(
                f"{source}: {info.name} has {images.shape[0]} {split} images "
                f"but {labels.numel()} labels"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
            raise DcbenchError(
                f"{source}: {info.name} {split} labels span {int(labels.min())}..."
                f"{int(labels.max())}, expected 0...{info.num_classes - 1}"
            )
        tensors += [images.contiguous(), labels]
    return RealData(info, *tensors)


def _not_found(name: str, missing: Sequence[Path | str], how: str) -> DataNotFoundError:
    """A one-line error listing the missing files, grouped by the folder they were looked for in."""
    by_folder: dict[str, list[str]] = {}
    for path in missing:
        path = Path(path)
        by_folder.setdefault(str(path.parent), []).append(path.name)
    where = "; ".join(f"{', '.join(names)} in {folder}" for folder, names in by_folder.items())
    return DataNotFoundError(f"{name} data not found: missing {where}; {how}")


def _download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Run a torchvision download, turning any failure into a one-line ``DcbenchError``."""
    log.info("downloading %s into %s", name, root)
    try:
        fetch()
    except Exception as exc:  # network failures surface as URLError, OSError, RuntimeError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DcbenchError(f"could not download {name} into {root}: {reason}") from exc


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files


_IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip-compressed iff the name ends in ``.gz``).

    ``magic`` is the expected magic number (2051 for images, 2049 for labels); its low byte is the
    number of big-endian int32 dimensions that follow it.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile and truncated gzip streams
        raise DcbenchError(f"cannot read IDX file {path}: {exc}") from exc
    if len(buf) < 4:
        raise DcbenchError(f"IDX file {path} is truncated: {len(buf)} bytes")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        raise DcbenchError(f"IDX file {path} has magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DcbenchError(f"IDX file {path} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(buf) - header != expected:
        raise DcbenchError(
            f"IDX file {path} holds {len(buf) - header} data bytes, "
            f"its header {dims} announces {expected} (truncated or corrupt)"
        )
    # copy(): frombuffer views the immutable bytes, and torch wants writable memory
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four MNIST files in ``folder`` (raw preferred over ``.gz``); None if one is missing."""
    found = {}
    for key, stem in _MNIST_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _missing_idx_files(folder: Path) -> list[Path]:
    return [
        folder / f"{stem}[.gz]"
        for stem in _MNIST_FILES.values()
        if not (folder / stem).is_file() and not (folder / f"{stem}.gz").is_file()
    ]


def _load_idx_dataset(
    info: DatasetInfo,
    folders: Sequence[Path],
    options: DataOptions,
    download: Callable[[], object],
    how: str,
) -> RealData:
    """Load an MNIST-format dataset from the first of ``folders`` holding all four files."""
    files = next((f for f in map(_find_idx_files, folders) if f is not None), None)
    if files is None and options.download:
        _download(info.name, options.root, download)
        files = _find_idx_files(folders[0])
    if files is None:
        raise _not_found(info.name, [p for f in folders for p in _missing_idx_files(f)], how)
    arrays = {
        key: read_idx(path, _IDX_IMAGES_MAGIC if key.endswith("images") else _IDX_LABELS_MAGIC)
        for key, path in files.items()
    }
    # IDX images are N×H×W; add the channel axis
    return _real_data(
        info,
        (arrays["train_images"][:, None], arrays["train_labels"]),
        (arrays["test_images"][:, None], arrays["test_labels"]),
        files["train_images"].parent,
    )


@register_dataset("mnist", "MNIST handwritten digits, 1×28×28, 10 classes, 60000/10000")
def load_mnist(options: DataOptions) -> RealData:
    """MNIST from ``<root>/MNIST/raw/`` (IDX files, optionally ``.gz``)."""

    def download() -> None:
        from torchvision.datasets import MNIST

        MNIST(str(options.root), train=True, download=True)

    folder = options.root / "MNIST" / "raw"
    how = f"{_GET_IT} (files go in DIR/MNIST/raw/)"
    return _load_idx_dataset(
        _info("mnist", (1, 28, 28), DIGIT_NAMES), [folder], options, download, how
    )


@register_dataset("fashionmnist", "Fashion-MNIST clothing images, 1×28×28, 10 classes, 60000/10000")
def load_fashionmnist(options: DataOptions) -> RealData:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/``, else from the Debian package folder."""

    def download() -> None:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(options.root), train=True, download=True)

    folders = [options.root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    how = f"{_GET_IT} (files go in DIR/FashionMNIST/raw/), or apt-get install dataset-fashion-mnist"
    info = _info("fashionmnist", (1, 28, 28), FASHION_MNIST_NAMES)
    return _load_idx_dataset(info, folders, options, download, how)


# --------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100: python pickles


def _read_cifar_pickle(path: Path) -> dict[Any, Any]:
    """One CIFAR pickle (a dict with bytes keys; trusted input, as with any pickle)."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DcbenchError(f"cannot read CIFAR pickle {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DcbenchError(f"CIFAR pickle {path} holds a {type(data).__name__}, expected a dict")
    return data


def _field(data: dict[Any, Any], key: str, path: Path) -> Any:
    """``data[key]``, accepting bytes keys (the original releases) and str keys (re-pickled)."""
    for k in (key.encode(), key):
        if k in data:
            return data[k]
    raise DcbenchError(f"CIFAR pickle {path} has no {key!r} entry")


def _read_cifar_batches(paths: Sequence[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR batches into N×3×32×32 uint8 images and labels."""
    images, labels = [], []
    for path in paths:
        batch = _read_cifar_pickle(path)
        # rows are 3072 bytes: the red plane, then green, then blue, each row-major 32×32
        data = np.asarray(_field(batch, "data", path), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DcbenchError(
                f"CIFAR pickle {path} has data of shape {data.shape}, expected N×3072"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(_field(batch, label_key, path), dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _load_cifar(
    name: str,
    options: DataOptions,
    folder: Path,
    train_files: Sequence[str],
    test_files: Sequence[str],
    meta_file: str,
    label_key: str,
    names_key: str,
    download: Callable[[], object],
) -> RealData:
    """Load a CIFAR python release from ``folder``."""
    needed = [folder / f for f in (*train_files, *test_files, meta_file)]
    if not all(p.is_file() for p in needed) and options.download:
        _download(name, options.root, download)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        how = f"{_GET_IT} (the extracted python release goes in DIR/{folder.name}/)"
        raise _not_found(name, missing, how)
    meta_path = folder / meta_file
    class_names = [
        n.decode() if isinstance(n, bytes) else str(n)
        for n in _field(_read_cifar_pickle(meta_path), names_key, meta_path)
    ]
    info = _info(name, (3, 32, 32), class_names)
    train = _read_cifar_batches([folder / f for f in train_files], label_key)
    test = _read_cifar_batches([folder / f for f in test_files], label_key)
    return _real_data(info, train, test, folder)


@register_dataset("cifar10", "CIFAR-10 natural images, 3×32×32, 10 classes, 50000/10000")
def load_cifar10(options: DataOptions) -> RealData:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/``."""

    def download() -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(options.root), train=True, download=True)

    return _load_cifar(
        "cifar10",
        options,
        options.root / "cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_files=["test_batch"],
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        download=download,
    )


@register_dataset("cifar100", "CIFAR-100 natural images, 3×32×32, 100 fine classes, 50000/10000")
def load_cifar100(options: DataOptions) -> RealData:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/``."""

    def download() -> None:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(options.root), train=True, download=True)

    return _load_cifar(
        "cifar100",
        options,
        options.root / "cifar-100-python",
        train_files=["train"],
        test_files=["test"],
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        download=download,
    )


# --------------------------------------------------------------------------------------------
# SVHN: MATLAB files


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``*_32x32.mat``: X is 32×32×3×N (H, W, C, N), y is N×1 with 10 for digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError, ...
        raise DcbenchError(f"cannot read SVHN file {path}: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DcbenchError(f"SVHN file {path} lacks the 'X' or 'y' variable")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DcbenchError(f"SVHN file {path} has X {x.dtype} {x.shape}, expected uint8 H×W×3×N")
    labels = y.astype(np.int64).flatten()
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


@register_dataset("svhn", "SVHN cropped house-number digits, 3×32×32, 10 classes, 73257/26032")
def load_svhn(options: DataOptions) -> RealData:
    """SVHN (format 2, without ``extra``) from ``<root>/svhn/{train,test}_32x32.mat``."""
    folder = options.root / "svhn"
    needed = [folder / "train_32x32.mat", folder / "test_32x32.mat"]

    def download() -> None:
        from torchvision.datasets import SVHN

        for split in ("train", "test"):
            if not (folder / f"{split}_32x32.mat").is_file():
                SVHN(str(folder), split=split, download=True)

    if not all(p.is_file() for p in needed) and options.download:
        _download("svhn", folder, download)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise _not_found("svhn", missing, f"{_GET_IT} (files go in DIR/svhn/)")
    info = _info("svhn", (3, 32, 32), DIGIT_NAMES)
    return _real_data(info, _read_svhn_mat(needed[0]), _read_svhn_mat(needed[1]), folder)


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet: JPEG folders, decoded once and cached

TINY_IMAGENET_CACHE = "dcbench-cache-uint8.pt"
_TINY_CACHE_VERSION = 1
_TINY_HOW = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it in DIR so that "
    "DIR/tiny-imagenet-200/ holds wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG and val/val_annotations.txt, then pass --data-root DIR or set DCBENCH_DATA "
    "(dcbench cannot download it)"
)


def _is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in (".jpeg", ".jpg")


def _tiny_imagenet_files(folder: Path) -> tuple[list[str], list[list[Path]], list[Path], list[str]]:
    """wnids, train files per class (sorted), val files and their wnids (annotation order)."""
    wnids_path = folder / "wnids.txt"
    annotations = folder / "val" / "val_annotations.txt"
    needed = [wnids_path, folder / "train", folder / "val" / "images", annotations]
    # a wholly absent folder is reported as such, not as four missing entries
    missing = [p for p in needed if not p.exists()] if folder.is_dir() else [folder]
    if missing:
        raise _not_found("tinyimagenet", missing, _TINY_HOW)
    wnids = [line.strip() for line in wnids_path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise DcbenchError(f"{wnids_path} lists no classes")
    train_files = []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        files = sorted(p for p in images.iterdir() if _is_jpeg(p)) if images.is_dir() else []
        if not files:
            raise DataNotFoundError(f"tinyimagenet: no *.JPEG files in {images}; {_TINY_HOW}")
        train_files.append(files)
    val_files, val_wnids = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DcbenchError(f"{annotations}:{number} is not 'file<TAB>wnid<TAB>...'")
        val_files.append(folder / "val" / "images" / fields[0])
        val_wnids.append(fields[1].strip())
    return wnids, train_files, val_files, val_wnids


def _tiny_imagenet_names(folder: Path, wnids: Sequence[str]) -> list[str]:
    """The first synonym of each wnid in ``words.txt``; the wnid itself when absent."""
    words = folder / "words.txt"
    names = dict.fromkeys(wnids, "")
    if words.is_file():
        for line in words.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in names:
                names[wnid] = text.split(",")[0].strip()
    return [names[w] or w for w in wnids]


def _decode_jpegs(paths: Sequence[Path], size: int) -> np.ndarray:
    """Decode RGB JPEGs of ``size``×``size`` into an N×3×size×size uint8 array."""
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        try:
            with Image.open(paths[i]) as image:
                rgb = np.asarray(image.convert("RGB"))
        except OSError as exc:  # missing or unreadable files (PIL's errors derive from OSError)
            raise DcbenchError(f"cannot read image {paths[i]}: {exc}") from exc
        if rgb.shape != (size, size, 3):
            raise DcbenchError(
                f"image {paths[i]} is {rgb.shape[1]}×{rgb.shape[0]}, expected {size}×{size}"
            )
        out[i] = rgb.transpose(2, 0, 1)

    # PIL releases the GIL while decoding, so threads give a real speed-up on 110k files
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(paths))))
    return out


def _read_tiny_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached tensors if ``path`` exists and was built from the same files, else None."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, weights_only=True)
    except Exception as exc:  # a partial or foreign file is rebuilt, not fatal
        log.warning("ignoring unreadable Tiny-ImageNet cache %s: %s", path, exc)
        return None
    same = (
        isinstance(cache, dict)
        and cache.get("version") == key["version"]
        and cache.get("wnids") == key["wnids"]
        and torch.equal(cache.get("file_counts", torch.empty(0)), key["file_counts"])
    )
    if not same:
        log.info("Tiny-ImageNet files changed since %s was written; rebuilding it", path)
        return None
    return cache


def _write_tiny_cache(path: Path, cache: dict[str, Any]) -> None:
    """Write the cache atomically (temp file + rename) so an interrupted run leaves no half file."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # a read-only dataset folder just means no cache
        log.warning("cannot cache Tiny-ImageNet in %s: %s", path.parent, exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(cache, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@register_dataset(
    "tinyimagenet",
    "Tiny-ImageNet, 3×64×64, 200 classes, 100000 train / 10000 val (used as test); no download",
)
def load_tinyimagenet(options: DataOptions) -> RealData:
    """Tiny-ImageNet from ``<root>/tiny-imagenet-200/``, cached after the first decode.

    The class order is the line order of ``wnids.txt``; the number of classes is the number of
    wnids listed there (200 in the official release).
    """
    folder = options.root / "tiny-imagenet-200"
    wnids, train_files, val_files, val_wnids = _tiny_imagenet_files(folder)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = sorted(set(val_wnids) - set(index))
    if unknown:
        raise DcbenchError(
            f"{folder / 'val' / 'val_annotations.txt'} names wnids missing from wnids.txt: "
            f"{', '.join(unknown[:5])}"
        )
    info = _info("tinyimagenet", (3, 64, 64), _tiny_imagenet_names(folder, wnids))
    # The cache key: a changed class list or any added/removed file invalidates it.
    key = {
        "version": _TINY_CACHE_VERSION,
        "wnids": wnids,
        "file_counts": torch.tensor([len(f) for f in train_files] + [len(val_files)]),
    }
    cache_path = folder / TINY_IMAGENET_CACHE
    cache = _read_tiny_cache(cache_path, key)
    if cache is None:
        paths = [p for files in train_files for p in files]
        log.info(
            "decoding %d Tiny-ImageNet JPEGs (once; cached in %s)",
            len(paths) + len(val_files),
            cache_path,
        )
        start = time.perf_counter()
        cache = {
            **key,
            "train_images": torch.from_numpy(_decode_jpegs(paths, 64)),
            "train_labels": torch.repeat_interleave(
                torch.arange(len(wnids)), torch.tensor([len(f) for f in train_files])
            ),
            "test_images": torch.from_numpy(_decode_jpegs(val_files, 64)),
            "test_labels": torch.tensor([index[w] for w in val_wnids], dtype=torch.int64),
        }
        log.info("decoded Tiny-ImageNet in %.1f s", time.perf_counter() - start)
        _write_tiny_cache(cache_path, cache)
    return _real_data(
        info,
        (cache["train_images"], cache["train_labels"]),
        (cache["test_images"], cache["test_labels"]),
        folder,
    )


# --------------------------------------------------------------------------------------------
# Datasets without files: scikit-learn digits and the synthetic test fixture


def digits_split(labels: np.ndarray) -> np.ndarray:
    """Test mask: within each class, in file order, rank ``r`` is test iff ``r % 4 == 3``."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return rank % 4 == 3


@register_dataset(
    "digits",
    "scikit-learn 8×8 digits, 1×8×8, 10 classes, embedded (no files); fixed split: within each "
    "class in file order, rank r is test iff r % 4 == 3 (1352 train / 445 test)",
)
def load_digits(options: DataOptions) -> RealData:
    """scikit-learn's digits (1797 images) with the fixed split of ``digits_split``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # 0..16 intensities → 0..255; np.rint rounds half to even like round(), and only v=8 (127.5)
    # is a tie
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    test = digits_split(labels)
    info = _info("digits", (1, 8, 8), DIGIT_NAMES)
    return _real_data(
        info, (images[~test], labels[~test]), (images[test], labels[test]), "sklearn digits"
    )


TINY_SEED = 20240601
TINY_CLASSES, TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS = 4, 48, 16


@register_dataset(
    "tiny", "synthetic 3×8×8 fixture for tests, 4 classes, 192/64 (fixed seed)", test_only=True
)
def load_tiny(options: DataOptions) -> RealData:
    """A learnable synthetic set: each class is a fixed random pattern plus Gaussian noise."""
    generator = torch.Generator().manual_seed(TINY_SEED)
    shape = (3, 8, 8)
    # means in 48..208 keep most noisy pixels inside 0..255, so clipping distorts little
    means = torch.rand((TINY_CLASSES, *shape), generator=generator) * 160 + 48

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn((TINY_CLASSES, per_class, *shape), generator=generator) * 40
        images = (means[:, None] + noise).round().clamp(0, 255).to(torch.uint8)
        labels = torch.arange(TINY_CLASSES).repeat_interleave(per_class)
        return images.reshape(-1, *shape), labels

    info = _info("tiny", shape, [f"class{c}" for c in range(TINY_CLASSES)])
    return _real_data(info, sample(TINY_TRAIN_PER_CLASS), sample(TINY_TEST_PER_CLASS), "tiny")
