"""Dataset loaders, each fed small files written in the dataset's real on-disk format."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dcbench import datasets
from dcbench.data import DATASETS, DataOptions, RealData, load_dataset
from dcbench.errors import DataNotFoundError, DcbenchError

ALL_DATASETS = [
    "mnist",
    "fashionmnist",
    "svhn",
    "cifar10",
    "cifar100",
    "tinyimagenet",
    "digits",
    "tiny",
]


def options(root: Path, download: bool = False) -> DataOptions:
    return DataOptions(root=root, download=download)


def check_common(data: RealData, shape: tuple[int, int, int], n_train: int, n_test: int) -> None:
    """Shapes, dtypes and class_indices that every loader must get right."""
    assert data.train_images.shape == (n_train, *shape)
    assert data.test_images.shape == (n_test, *shape)
    assert data.train_images.dtype == data.test_images.dtype == torch.uint8
    assert data.train_labels.dtype == data.test_labels.dtype == torch.int64
    assert len(data.class_indices) == data.info.num_classes == len(data.info.class_names)
    for c, idx in enumerate(data.class_indices):
        assert torch.equal(idx, torch.nonzero(data.train_labels == c).flatten())


def assert_one_line_naming(exc: pytest.ExceptionInfo[BaseException], *paths: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for path in paths:
        assert str(path) in message


# --------------------------------------------------------------------------------------------
# Registry


def test_all_datasets_registered_with_consistent_constants() -> None:
    import dcbench.datasets  # noqa: F401

    assert set(ALL_DATASETS) <= set(DATASETS.names())
    assert [n for n in ALL_DATASETS if DATASETS.get(n).test_only] == ["tiny"]
    for name in ALL_DATASETS:
        mean, std = datasets.NORMALIZATION[name]
        assert len(mean) == len(std) in (1, 3)
        assert all(0 < s < 1 for s in std)


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write uint8 ``array`` as an IDX file (magic 0x08 type + ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(folder: Path, compress: bool, per_class: int = 3) -> dict[str, np.ndarray]:
    """A small MNIST release: ``per_class`` train and 1 test image per class."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (10 * per_class, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.tile(np.arange(10, dtype=np.uint8), per_class),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(10, dtype=np.uint8)[::-1].copy(),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_round_trip(tmp_path: Path, compress: bool) -> None:
    arrays = write_mnist(tmp_path / "MNIST" / "raw", compress)
    data = datasets.load_mnist(options(tmp_path))
    check_common(data, (1, 28, 28), 30, 10)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(data.test_images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.train_labels.tolist() == list(range(10)) * 3
    assert data.test_labels.tolist() == list(range(9, -1, -1))
    assert data.info.class_names == tuple("0123456789")
    assert data.info.mean == (0.1307,) and data.info.std == (0.3081,)
    assert data.class_indices[2].tolist() == [2, 12, 22]


def test_fashionmnist_mixed_raw_and_gz(tmp_path: Path) -> None:
    folder = tmp_path / "FashionMNIST" / "raw"
    arrays = write_mnist(folder, compress=True)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(folder / "t10k-images-idx3-ubyte", arrays["t10k-images-idx3-ubyte"], False)
    data = datasets.load_fashionmnist(options(tmp_path))
    check_common(data, (1, 28, 28), 30, 10)
    assert torch.equal(data.test_images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.info.class_names[0] == "T-shirt/top"
    assert data.info.class_names[9] == "Ankle boot"
    assert data.info.mean == (0.2861,) and data.info.std == (0.3530,)


def test_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, compress=False)
    # a labels file (magic 2049) where the images (2051) belong
    labels = np.zeros(10, dtype=np.uint8)
    bad = write_idx(folder / "t10k-images-idx3-ubyte", labels, False)
    with pytest.raises(DcbenchError, match="magic number 2049, expected 2051") as exc:
        datasets.load_mnist(options(tmp_path))
    assert_one_line_naming(exc, bad)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_truncated_names_the_file(tmp_path: Path, compress: bool) -> None:
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, compress)
    suffix = ".gz" if compress else ""
    bad = folder / f"train-images-idx3-ubyte{suffix}"
    bad.write_bytes(bad.read_bytes()[:-50])
    with pytest.raises(DcbenchError) as exc:
        datasets.load_mnist(options(tmp_path))
    assert_one_line_naming(exc, bad)


def test_mnist_missing_files(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, compress=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError) as exc:
        datasets.load_mnist(options(tmp_path))
    assert_one_line_naming(exc, folder)
    message = str(exc.value)
    assert "t10k-labels-idx1-ubyte[.gz]" in message
    assert "train-images" not in message  # only what is actually missing
    assert "--data-root" in message and "DCBENCH_DATA" in message and "--download" in message


def test_fashionmnist_missing_names_both_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = tmp_path / "no-debian-package"
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(DataNotFoundError) as exc:
        datasets.load_fashionmnist(options(tmp_path))
    assert_one_line_naming(exc, tmp_path / "FashionMNIST" / "raw", debian)
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)


def test_mnist_download_then_own_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeMNIST:  # writes the files torchvision would, without a network
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            write_mnist(Path(root) / "MNIST" / "raw", compress=False, per_class=1)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    data = datasets.load_mnist(options(tmp_path, download=True))
    assert calls == [(str(tmp_path), True)]
    check_common(data, (1, 28, 28), 10, 10)
    datasets.load_mnist(options(tmp_path, download=True))
    assert len(calls) == 1  # files present: no second download


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    with pytest.raises(DcbenchError, match="could not download mnist") as exc:
        datasets.load_mnist(options(tmp_path, download=True))
    assert_one_line_naming(exc, tmp_path)


@pytest.mark.skipif(
    not datasets.DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"{datasets.DEBIAN_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)",
)
def test_fashionmnist_from_debian_package(tmp_path: Path) -> None:
    data = datasets.load_fashionmnist(options(tmp_path))
    check_common(data, (1, 28, 28), 60000, 10000)
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    mean = data.train_images.float().div(255).mean().item()
    assert abs(mean - data.info.mean[0]) < 1e-3


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    rows, labels = [], []
    for i in range(1, 6):
        batch_rows, batch_labels = cifar_rows(rng, 2), [(2 * i) % 10, (2 * i + 1) % 10]
        write_pickle(folder / f"data_batch_{i}", {b"data": batch_rows, b"labels": batch_labels})
        rows.append(batch_rows)
        labels += batch_labels
    test_rows = cifar_rows(rng, 3)
    write_pickle(folder / "test_batch", {b"data": test_rows, b"labels": [9, 0, 4]})
    names = [f"name{c}".encode() for c in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})

    data = datasets.load_cifar10(options(tmp_path))
    check_common(data, (3, 32, 32), 10, 3)
    train_rows = np.concatenate(rows)
    assert data.train_labels.tolist() == labels
    assert data.test_labels.tolist() == [9, 0, 4]
    # channel-major rows: pixel (c, h, w) is byte c*1024 + h*32 + w
    assert data.train_images[7, 2, 5, 17].item() == train_rows[7, 2 * 1024 + 5 * 32 + 17]
    assert torch.equal(data.train_images.reshape(10, -1), torch.from_numpy(train_rows))
    assert torch.equal(data.test_images.reshape(3, -1), torch.from_numpy(test_rows))
    assert data.info.class_names == tuple(f"name{c}" for c in range(10))
    assert data.info.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    train_rows, test_rows = cifar_rows(rng, 4), cifar_rows(rng, 2)
    write_pickle(
        folder / "train",
        {b"data": train_rows, b"fine_labels": [99, 0, 57, 3], b"coarse_labels": [1, 2, 3, 4]},
    )
    write_pickle(
        folder / "test", {b"data": test_rows, b"fine_labels": [12, 88], b"coarse_labels": [5, 6]}
    )
    names = [f"fine{c}".encode() for c in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20})

    data = datasets.load_cifar100(options(tmp_path))
    check_common(data, (3, 32, 32), 4, 2)
    assert data.train_labels.tolist() == [99, 0, 57, 3]
    assert data.test_labels.tolist() == [12, 88]
    assert torch.equal(data.train_images.reshape(4, -1), torch.from_numpy(train_rows))
    assert data.info.class_names[57] == "fine57"
    assert data.class_indices[99].tolist() == [0]


def test_cifar_missing_and_bad_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    with pytest.raises(DataNotFoundError) as exc:
        datasets.load_cifar100(options(tmp_path))
    assert_one_line_naming(exc, folder)
    assert "train, test, meta" in str(exc.value)

    rows = cifar_rows(np.random.default_rng(3), 1)
    write_pickle(folder / "train", {b"data": rows, b"fine_labels": [100]})
    write_pickle(folder / "test", {b"data": rows, b"fine_labels": [0]})
    write_pickle(folder / "meta", {b"fine_label_names": [b"n"] * 100})
    with pytest.raises(DcbenchError, match="labels span 100...100") as exc:
        datasets.load_cifar100(options(tmp_path))
    assert_one_line_naming(exc, folder)


# --------------------------------------------------------------------------------------------
# SVHN (MATLAB)


def write_svhn(path: Path, labels: list[int], rng: np.random.Generator) -> np.ndarray:
    from scipy.io import savemat

    x = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": x, "y": np.asarray(labels, dtype=np.uint8)[:, None]})
    return x


def test_svhn_round_trip_and_label_10_is_0(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "svhn"
    x_train = write_svhn(folder / "train_32x32.mat", [10, 1, 5, 10, 9], rng)
    x_test = write_svhn(folder / "test_32x32.mat", [3, 10], rng)
    data = datasets.load_svhn(options(tmp_path))
    check_common(data, (3, 32, 32), 5, 2)
    assert data.train_labels.tolist() == [0, 1, 5, 0, 9]
    assert data.test_labels.tolist() == [3, 0]
    # MATLAB X is H×W×C×N
    assert torch.equal(data.train_images, torch.from_numpy(x_train.transpose(3, 2, 0, 1).copy()))
    assert data.test_images[1, 2, 30, 4].item() == x_test[30, 4, 2, 1]
    assert data.info.class_names == tuple("0123456789")
    assert data.class_indices[0].tolist() == [0, 3]


def test_svhn_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as exc:
        datasets.load_svhn(options(tmp_path))
    assert_one_line_naming(exc, tmp_path / "svhn")
    assert "train_32x32.mat" in str(exc.value) and "test_32x32.mat" in str(exc.value)


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet (JPEG folders + cache)

WNIDS = ["n01443537", "n09999999"]
COLOURS = {"n01443537": (200, 30, 30), "n09999999": (20, 160, 240)}


def write_jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), colour).save(path, quality=95)


def write_tiny_imagenet(root: Path, train_per_class: int = 3) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    # words.txt covers all of ImageNet; the second wnid is deliberately absent from it
    (folder / "words.txt").write_text("n00001740\tentity\nn01443537\tgoldfish, Carassius auratus\n")
    for wnid in WNIDS:
        for i in range(train_per_class):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[wnid])
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = [("val_0.JPEG", WNIDS[1]), ("val_1.JPEG", WNIDS[0]), ("val_2.JPEG", WNIDS[1])]
    for name, wnid in val:
        write_jpeg(folder / "val" / "images" / name, COLOURS[wnid])
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in val)
    )
    return folder


def test_tinyimagenet_load_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_tiny_imagenet(tmp_path)
    data = datasets.load_tinyimagenet(options(tmp_path))
    check_common(data, (3, 64, 64), 6, 3)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_labels.tolist() == [1, 0, 1]
    assert data.info.class_names == ("goldfish", "n09999999")
    assert data.info.mean == (0.485, 0.456, 0.406)
    # JPEG is lossy, but a flat colour survives within a few levels
    expected = torch.tensor(COLOURS[WNIDS[1]]).view(3, 1, 1)
    assert (data.test_images[0].int() - expected).abs().max() <= 3

    cache = folder / datasets.TINY_IMAGENET_CACHE
    assert cache.is_file()
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    stored = torch.load(cache, weights_only=True)
    assert torch.equal(stored["train_images"], data.train_images)

    def no_decoding(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(datasets, "_decode_jpegs", no_decoding)
        again = datasets.load_tinyimagenet(options(tmp_path))
    assert torch.equal(again.train_images, data.train_images)
    assert torch.equal(again.test_labels, data.test_labels)

    # one more training image changes the file counts: the cache is rebuilt
    write_jpeg(folder / "train" / WNIDS[1] / "images" / "extra.JPEG", COLOURS[WNIDS[1]])
    grown = datasets.load_tinyimagenet(options(tmp_path))
    assert grown.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert torch.load(cache, weights_only=True)["train_images"].shape[0] == 7


def test_tinyimagenet_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    folder = write_tiny_imagenet(tmp_path, train_per_class=1)
    (folder / datasets.TINY_IMAGENET_CACHE).write_bytes(b"not a torch file")
    data = datasets.load_tinyimagenet(options(tmp_path))
    assert data.train_labels.tolist() == [0, 1]
    torch.load(folder / datasets.TINY_IMAGENET_CACHE, weights_only=True)


def test_tinyimagenet_unknown_val_wnid(tmp_path: Path) -> None:
    folder = write_tiny_imagenet(tmp_path, train_per_class=1)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DcbenchError, match="n00000000") as exc:
        datasets.load_tinyimagenet(options(tmp_path))
    assert_one_line_naming(exc, annotations)


def test_tinyimagenet_missing_explains_layout(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as exc:
        datasets.load_tinyimagenet(options(tmp_path, download=True))
    assert_one_line_naming(exc, tmp_path)
    message = str(exc.value)
    assert "tiny-imagenet-200" in message and "val_annotations.txt" in message
    assert "cannot download" in message

    folder = write_tiny_imagenet(tmp_path, train_per_class=1)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataNotFoundError) as exc:
        datasets.load_tinyimagenet(options(tmp_path))
    assert_one_line_naming(exc, folder / "val")


# --------------------------------------------------------------------------------------------
# Datasets without files: digits and tiny


@pytest.fixture(scope="module")
def digits() -> RealData:
    return datasets.load_digits(options(Path("unused")))


def test_digits_split(digits: RealData) -> None:
    check_common(digits, (1, 8, 8), 1352, 445)
    assert digits.train_labels.bincount().tolist() == [
        134,
        137,
        133,
        138,
        136,
        137,
        136,
        135,
        131,
        135,
    ]
    assert digits.test_labels.bincount().tolist() == [44, 45, 44, 45, 45, 45, 45, 44, 43, 45]
    assert digits.info.class_names == tuple("0123456789")

    from sklearn.datasets import load_digits

    bunch = load_digits()
    class0 = np.flatnonzero(bunch.target == 0)
    # the first test image is the 4th image of class 0 (rank 3), scaled 0..16 → 0..255
    expected = np.rint(bunch.images[class0[3]] * 255 / 16).astype(np.uint8)
    assert digits.test_labels[0].item() == 0
    assert torch.equal(digits.test_images[0, 0], torch.from_numpy(expected))
    assert set(digits.train_images.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)}


def test_digits_deterministic(digits: RealData) -> None:
    again = datasets.load_digits(options(Path("unused")))
    assert torch.equal(again.train_images, digits.train_images)
    assert torch.equal(again.test_labels, digits.test_labels)


def test_digits_constants_match_train_split(digits: RealData) -> None:
    pixels = digits.train_images.double() / 255
    assert abs(pixels.mean().item() - digits.info.mean[0]) < 1e-3
    assert abs(pixels.std(unbiased=False).item() - digits.info.std[0]) < 1e-3


def nearest_mean_accuracy(data: RealData) -> float:
    x_train, y_train = data.train()
    x_test, y_test = data.test()
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(data.info.num_classes)])
    distances = torch.cdist(x_test.flatten(1), means.flatten(1))
    return (distances.argmin(1) == y_test).float().mean().item()


def test_tiny_deterministic_and_learnable() -> None:
    first = datasets.load_tiny(options(Path("unused")))
    second = datasets.load_tiny(options(Path("unused")))
    check_common(first, (3, 8, 8), 192, 64)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_images, second.test_images)
    assert first.train_labels.bincount().tolist() == [48] * 4
    assert first.test_labels.bincount().tolist() == [16] * 4
    assert not torch.equal(first.train_images[:64], first.test_images)
    assert nearest_mean_accuracy(first) > 0.9


def test_load_dataset_finds_builtin_loaders(tmp_path: Path) -> None:
    data = load_dataset("tiny", root=tmp_path)
    assert data.info.name == "tiny"
    with pytest.raises(DataNotFoundError):
        load_dataset("svhn", root=tmp_path)


@pytest.mark.parametrize(
    ("loader", "subpath"),
    [
        (datasets.load_mnist, "MNIST/raw"),
        (datasets.load_cifar10, "cifar-10-batches-py"),
        (datasets.load_cifar100, "cifar-100-python"),
        (datasets.load_svhn, "svhn"),
        (datasets.load_tinyimagenet, ""),
    ],
    ids=["mnist", "cifar10", "cifar100", "svhn", "tinyimagenet"],
)
def test_missing_data_is_one_line_with_path(
    tmp_path: Path, loader: Callable[[DataOptions], RealData], subpath: str
) -> None:
    with pytest.raises(DataNotFoundError) as exc:
        loader(options(tmp_path))
    assert_one_line_naming(exc, tmp_path / subpath)
    assert "--data-root" in str(exc.value)
