"""``DistilledSet``: what a method produces and an evaluator trains on, and its file format.

A distilled set is saved as one safetensors file: the tensors (``images``, ``labels``, optional
``soft_targets``) plus a JSON header under the safetensors metadata key ``dcbench``. Loading never
executes code. Importers convert the field's release formats (DC ``res_*.pt``, MTT
``images_best.pt``/``labels_best.pt``, image folders) into the same object.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dcbench.data import DatasetInfo, normalize_uint8
from dcbench.errors import InvalidDistilledSetError

FORMAT_NAME = "dcbench.distilled"
FORMAT_VERSION = 1


def decode_partition2x2(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """IDM/BACON's partition-and-expansion decoder (spec dm_idm_bacon.md §1.4).

    Every stored image is cut into four H/2×W/2 quadrants, each upsampled ×2 (bilinear,
    align_corners=False), giving 4n images in the block order [all TL; all BL; all TR; all BR];
    the labels are tiled four times in the same order.
    """
    h, w = images.shape[-2] // 2, images.shape[-1] // 2
    quadrants = (
        images[..., :h, :w],  # top-left
        images[..., h:, :w],  # bottom-left
        images[..., :h, w:],  # top-right
        images[..., h:, w:],  # bottom-right
    )
    size = images.shape[-2:]
    decoded = torch.cat(
        [F.interpolate(q, size=size, mode="bilinear", align_corners=False) for q in quadrants]
    )
    return decoded, labels.repeat(4)


#: Decoders a distilled set can name in its ``decoder`` hint; evaluators apply them before training.
DECODERS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "partition2x2": decode_partition2x2,
}


@dataclass
class DistilledSet:
    """A distilled training set in normalised space, class-major order.

    ``reference="train"`` marks a set that *is* the real train split (the ``full`` upper bound): it
    stores no images and evaluators read the real data instead. ``decoder`` names an entry of
    :data:`DECODERS` that expands the stored images into the training images. ``train_lr`` is a
    learned evaluation step size (MTT). ``meta`` holds dataset, ipc, normalisation, method, resolved
    config, seed and cost.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    soft_targets: torch.Tensor | None = None
    decoder: str | None = None
    train_lr: float | None = None
    reference: str | None = None

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels an evaluator trains on (the decoder applied, if any)."""
        if self.decoder is None:
            return self.images, self.labels
        return DECODERS[self.decoder](self.images, self.labels)

    def validate(self, info: DatasetInfo) -> None:
        """Raise :class:`InvalidDistilledSetError` unless the set fits ``info`` and is finite."""
        if self.reference is not None:
            if self.reference != "train":
                raise InvalidDistilledSetError(f"unknown reference {self.reference!r}")
            return
        if self.decoder is not None and self.decoder not in DECODERS:
            raise InvalidDistilledSetError(
                f"unknown decoder {self.decoder!r}; valid choices: {', '.join(DECODERS)}"
            )
        x, y = self.images, self.labels
        if x.dim() != 4 or tuple(x.shape[1:]) != info.image_shape:
            raise InvalidDistilledSetError(
                f"images have shape {tuple(x.shape)}, expected "
                f"N×{'×'.join(map(str, info.image_shape))} for {info.name}"
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise InvalidDistilledSetError(
                f"{y.shape[0] if y.dim() else 0} labels for {x.shape[0]} images"
            )
        if x.shape[0] == 0:
            raise InvalidDistilledSetError("the distilled set is empty")
        if y.min() < 0 or y.max() >= info.num_classes:
            raise InvalidDistilledSetError(
                f"labels must lie in [0, {info.num_classes}) for {info.name}, found "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        if not torch.isfinite(x).all():
            raise InvalidDistilledSetError(
                f"the distilled images contain {int((~torch.isfinite(x)).sum())} NaN/inf values"
            )
        if self.soft_targets is not None and not torch.isfinite(self.soft_targets).all():
            raise InvalidDistilledSetError("the soft targets contain NaN/inf values")

    # --- file format -------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "decoder": self.decoder,
            "train_lr": self.train_lr,
            "reference": self.reference,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> int:
        """Write the set atomically to ``path`` (safetensors); returns the file size in bytes."""
        tensors = {
            "images": self.images.detach().float().contiguous().cpu(),
            "labels": self.labels.detach().long().contiguous().cpu(),
        }
        if self.soft_targets is not None:
            tensors["soft_targets"] = self.soft_targets.detach().float().contiguous().cpu()
        metadata = {"dcbench": json.dumps(self.header(), default=_json_default)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path.stat().st_size

    @classmethod
    def load(cls, path: str | os.PathLike) -> DistilledSet:
        """Read a set written by :meth:`save`; a foreign or corrupt file gives a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise InvalidDistilledSetError(f"no such file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise InvalidDistilledSetError(
                f"{path} is not a dcbench distilled set (safetensors could not read it: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "use --format dc|mtt|folder to import a release"
            ) from None
        try:
            header = json.loads(metadata["dcbench"])
            assert header["format"] == FORMAT_NAME
        except (KeyError, ValueError, AssertionError, TypeError):
            raise InvalidDistilledSetError(
                f"{path} is a safetensors file but not a dcbench distilled set (no dcbench header)"
            ) from None
        if header["version"] > FORMAT_VERSION:
            raise InvalidDistilledSetError(
                f"{path} has format version {header['version']}; this dcbench reads up to "
                f"{FORMAT_VERSION} (upgrade dcbench)"
            )
        if "images" not in tensors or "labels" not in tensors:
            raise InvalidDistilledSetError(f"{path} lacks the images or labels tensor")
        return cls(
            images=tensors["images"].float(),
            labels=tensors["labels"].long(),
            meta=header.get("meta", {}),
            soft_targets=tensors.get("soft_targets"),
            decoder=header.get("decoder"),
            train_lr=header.get("train_lr"),
            reference=header.get("reference"),
        )


def _json_default(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --- importers ---------------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and containers (never executes code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, forbidden globals
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidDistilledSetError(
            f"{path} could not be read as a tensor file (loaded with weights_only=True): {first}"
        ) from None


def import_dc(path: str | os.PathLike, *, experiment: int = -1) -> DistilledSet:
    """Import a DC/DSA/DM/IDM/BACON release (``res_*.pt``: a dict whose ``data`` is a list of
    (images, labels) pairs, one per experiment). The last experiment is taken by default, as
    DC-bench does. IDM/BACON sets are stored encoded: pass ``decoder="partition2x2"`` afterwards.
    """
    path = Path(path)
    blob = _torch_load(path)
    if not isinstance(blob, dict) or "data" not in blob or not isinstance(blob["data"], list):
        raise InvalidDistilledSetError(
            f"{path} is not in the DC release format (a dict with a 'data' list of "
            "(images, labels) pairs)"
        )
    runs = blob["data"]
    if not runs:
        raise InvalidDistilledSetError(f"{path} holds no experiments")
    try:
        images, labels = runs[experiment]
    except (IndexError, ValueError, TypeError):
        raise InvalidDistilledSetError(
            f"{path}: experiment {experiment} not found ({len(runs)} experiments)"
        ) from None
    return DistilledSet(
        images.float(), labels.long(), meta={"imported_from": str(path), "format": "dc"}
    )


def import_mtt(path: str | os.PathLike) -> DistilledSet:
    """Import MTT's ``images_best.pt`` + ``labels_best.pt`` (a folder, or the images file whose
    labels lie beside it). Sharded releases ``images_best_{0..k}.pt`` are concatenated.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    shards = sorted(folder.glob("images_best_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    image_files = [folder / "images_best.pt"] if (folder / "images_best.pt").is_file() else shards
    label_files = (
        [folder / "labels_best.pt"]
        if (folder / "labels_best.pt").is_file()
        else sorted(folder.glob("labels_best_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    )
    if not image_files or not label_files:
        raise InvalidDistilledSetError(
            f"no MTT release in {folder}: expected images_best.pt and labels_best.pt"
        )
    images = torch.cat([_as_tensor(_torch_load(f), f) for f in image_files]).float()
    labels = torch.cat([_as_tensor(_torch_load(f), f) for f in label_files])
    if labels.dim() == 2:  # one-hot or soft labels
        labels = labels.argmax(dim=1)
    train_lr = None
    lr_file = folder / "lr_best.pt"
    if lr_file.is_file():
        train_lr = float(_as_tensor(_torch_load(lr_file), lr_file).reshape(-1)[0])
    return DistilledSet(
        images,
        labels.long(),
        meta={"imported_from": str(folder), "format": "mtt"},
        train_lr=train_lr,
    )


def import_folder(path: str | os.PathLike, info: DatasetInfo) -> DistilledSet:
    """Import an image folder ``<path>/<class>/*.png|jpg`` (class folders sorted by name map to
    class indices 0..C−1 unless they are named by integer), normalised with ``info``'s mean/std.
    """
    from PIL import Image  # torchvision's dependency

    root = Path(path)
    if not root.is_dir():
        raise InvalidDistilledSetError(f"{root} is not a folder of class sub-folders")
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name)
    if not class_dirs:
        raise InvalidDistilledSetError(f"{root} has no class sub-folders")
    if all(d.name.isdigit() for d in class_dirs):
        class_dirs.sort(key=lambda d: int(d.name))
        index_of = {d: int(d.name) for d in class_dirs}
    else:
        index_of = {d: i for i, d in enumerate(class_dirs)}
    arrays, labels = [], []
    mode = "L" if info.channels == 1 else "RGB"
    for d in class_dirs:
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                continue
            with Image.open(f) as im:
                im = im.convert(mode).resize((info.width, info.height), Image.BILINEAR)
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            arrays.append(t.view(info.height, info.width, info.channels).permute(2, 0, 1))
            labels.append(index_of[d])
    if not arrays:
        raise InvalidDistilledSetError(f"{root} holds no images")
    images = normalize_uint8(torch.stack(arrays), info)
    return DistilledSet(
        images, torch.tensor(labels), meta={"imported_from": str(root), "format": "folder"}
    )


def _as_tensor(obj: Any, path: Path) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor):
        raise InvalidDistilledSetError(f"{path} does not hold a tensor")
    return obj


def read_distilled(
    path: str | os.PathLike, fmt: str = "auto", info: DatasetInfo | None = None
) -> DistilledSet:
    """Read a distilled set in any supported format (``auto`` guesses from the path)."""
    path = Path(path)
    if not path.exists():
        raise InvalidDistilledSetError(f"no such file or folder: {path}")
    if fmt == "auto":
        if path.is_dir():
            has_mtt = (path / "images_best.pt").is_file() or any(path.glob("images_best_*.pt"))
            fmt = "mtt" if has_mtt else "folder"
        elif path.name.startswith("images_best"):
            fmt = "mtt"
        elif path.suffix == ".pt":
            fmt = "dc"
        else:
            fmt = "dcbench"
    if fmt == "dcbench":
        return DistilledSet.load(path)
    if fmt == "dc":
        return import_dc(path)
    if fmt == "mtt":
        return import_mtt(path)
    if fmt == "folder":
        if info is None:
            raise InvalidDistilledSetError("importing an image folder needs --dataset")
        return import_folder(path, info)
    raise InvalidDistilledSetError(
        f"unknown format {fmt!r}; valid choices: auto, dcbench, dc, mtt, folder"
    )
