"""ZCA whitening, as MTT uses it (spec mtt_and_benchmarks.md §3.2, §2.5, pitfall §3.10.1).

MTT fits kornia's ``ZCAWhitening(eps=0.1, compute_inv=True)`` on the whole train split as
**un-normalised** ``[0, 1]`` tensors (``ToTensor()`` without ``Normalize``) and applies it to the
train and the test split; a set distilled in that space must be evaluated on a test split
whitened with the same transform. With the flattened images X (N×D, D = C·H·W, features in C, H, W
order), μ their mean and C = (X − μ)ᵀ(X − μ) / (N − 1) = U diag(S) Uᵀ (unbiased, kornia's
default), the transform is

    z = (x − μ) · W,   W = U diag((S + ε)^−½) Uᵀ,   W⁻¹ = U diag((S + ε)^½) Uᵀ

so the whitened data have covariance U diag(S / (S + ε)) Uᵀ (the identity when ε → 0 and N > D).

Deviations from kornia (none changes the transform beyond floating-point rounding): the covariance
is accumulated in float64 from float32 chunks and diagonalised with ``torch.linalg.eigh`` in
float64 (kornia: one float32 product and a float32 SVD); eigenvalues are clamped at 0 before ε is
added (an SVD returns |λ| for the tiny negative eigenvalues rounding can produce).

A distilled set declares its input space in ``meta["zca"]`` (:func:`zca_meta`); evaluators get
the matching test split from :func:`evaluation_test_split`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError

log = logging.getLogger(__name__)

#: MTT's regulariser (``ZCAWhitening(eps=0.1)`` in ``utils.get_dataset``).
DEFAULT_EPS = 0.1

#: Rows per float32 block of the covariance accumulation (bounds the temporary memory).
CHUNK_ROWS = 4096


@dataclass(frozen=True, eq=False)  # tensors: no field-wise equality
class ZCA:
    """A fitted ZCA transform on flattened C×H×W images (features in C, H, W order)."""

    mean: torch.Tensor  # (D,) float32
    matrix: torch.Tensor  # (D, D) float32, symmetric: U diag((S + eps)^-1/2) Uᵀ
    inverse: torch.Tensor  # (D, D) float32, symmetric: U diag((S + eps)^1/2) Uᵀ
    eigenvalues: torch.Tensor  # (D,) float64, S (ascending), clamped at 0
    eps: float

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Whiten N×C×H×W (or N×D) images given in the fitted space ([0, 1] pixels for MTT)."""
        flat = images.reshape(images.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"ZCA was fitted on {self.dim} features, got {flat.shape[1]}")
        mean = self.mean.to(flat.device, flat.dtype)
        out = (flat - mean) @ self.matrix.to(flat.device, flat.dtype)
        return out.reshape(images.shape)

    def to(self, device: torch.device | str) -> ZCA:
        """The same transform with its tensors on ``device``."""
        return ZCA(
            self.mean.to(device), self.matrix.to(device), self.inverse.to(device),
            self.eigenvalues, self.eps,
        )  # fmt: skip

    def invert(self, whitened: torch.Tensor) -> torch.Tensor:
        """Map whitened images back to the fitted space (e.g. to display a ZCA-space set)."""
        flat = whitened.reshape(whitened.shape[0], -1)
        inverse = self.inverse.to(flat.device, flat.dtype)
        out = flat @ inverse + self.mean.to(flat.device, flat.dtype)
        return out.reshape(whitened.shape)


def fit_zca(images: torch.Tensor, eps: float = DEFAULT_EPS) -> ZCA:
    """Fit ZCA whitening on N×C×H×W (or N×D) images, kornia ``ZCAWhitening(eps)`` semantics.

    The covariance is the unbiased one (divided by N − 1), as kornia's default.
    """
    n = images.shape[0]
    if n < 2:
        raise DcbenchError(f"ZCA needs at least 2 images to fit, got {n}")
    if eps <= 0:
        raise DcbenchError(f"the ZCA regulariser eps must be positive, got {eps}")
    flat = images.reshape(n, -1)
    dim = flat.shape[1]
    mean = torch.zeros(dim, dtype=torch.float64)
    for chunk in flat.split(CHUNK_ROWS):
        mean += chunk.double().sum(0).cpu()
    mean /= n
    mean32 = mean.float()
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for chunk in flat.split(CHUNK_ROWS):
        centred = chunk.float().cpu() - mean32
        cov += (centred.T @ centred).double()
    cov /= n - 1
    eigenvalues, vectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp(min=0.0)
    matrix = (vectors * (eigenvalues + eps).rsqrt()) @ vectors.T
    inverse = (vectors * (eigenvalues + eps).sqrt()) @ vectors.T
    return ZCA(mean32, matrix.float(), inverse.float(), eigenvalues, float(eps))


def unit_pixels(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images → float32 in [0, 1] (``ToTensor()``, the space MTT fits ZCA in)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.to(device=device, dtype=torch.float32).div_(255.0)


#: Fitted transforms of the datasets in use: (train tensor, eps, ZCA). Bounded; the train tensor is
#: held so that an entry can never be matched by a different tensor reusing its id.
_FITTED: list[tuple[torch.Tensor, float, ZCA]] = []
_MAX_FITTED = 4


def dataset_zca(data: RealData, eps: float = DEFAULT_EPS) -> ZCA:
    """ZCA fitted on ``data``'s whole train split in [0, 1] pixels (memoised per process)."""
    for images, fitted_eps, zca in _FITTED:
        if images is data.train_images and fitted_eps == eps:
            return zca
    log.info("fitting ZCA (eps %g) on the %s train split", eps, data.info.name)
    zca = fit_zca(unit_pixels(data.train_images), eps)
    _FITTED.append((data.train_images, eps, zca))
    del _FITTED[:-_MAX_FITTED]
    return zca


def whiten(
    images: torch.Tensor,
    zca: ZCA,
    device: torch.device | str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> torch.Tensor:
    """uint8 images → whitened float32, computed in chunks on ``device`` (default: the CPU)."""
    device = torch.device(device) if device is not None else images.device
    on_device = zca.to(device)
    return torch.cat([on_device.apply(unit_pixels(x, device)) for x in images.split(chunk_rows)])


def zca_meta(data: RealData, eps: float) -> dict[str, Any]:
    """The ``meta["zca"]`` entry of a set distilled in ``data``'s ZCA space."""
    return {"eps": float(eps), "fit": "train", "input": "unit", "dataset": data.info.name}


def zca_from_meta(data: RealData, spec: Mapping[str, Any]) -> ZCA:
    """The transform a set's ``meta["zca"]`` names, refitted on ``data`` (memoised)."""
    if spec.get("fit", "train") != "train" or spec.get("input", "unit") != "unit":
        raise DcbenchError(f"unsupported ZCA specification {dict(spec)!r}")
    if spec.get("dataset", data.info.name) != data.info.name:
        raise DcbenchError(
            f"the set was whitened with {spec['dataset']}'s ZCA, not {data.info.name}'s"
        )
    return dataset_zca(data, float(spec["eps"]))


def evaluation_test_split(
    distilled: DistilledSet, data: RealData, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split in the input space of ``distilled``'s images, and its labels.

    Normalised as usual, or ZCA-whitened with the transform fitted on the train split when the set
    declares ``meta["zca"]`` (MTT's ZCA sets, spec §3.10.1).
    """
    spec = distilled.meta.get("zca") if distilled.reference is None else None
    if spec is None:
        return data.test(device)
    zca = zca_from_meta(data, spec)
    return whiten(data.test_images, zca, device), data.test_labels.to(device)
