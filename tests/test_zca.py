"""ZCA whitening (dcbench/zca.py) against a direct eigendecomposition, and its evaluation hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError
from dcbench.zca import (
    dataset_zca,
    evaluation_test_split,
    fit_zca,
    unit_pixels,
    whiten,
    zca_meta,
)


def _correlated(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Images with a strongly non-diagonal covariance (a random mixing of iid features)."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    mixing = torch.randn(d, d, generator=g) * torch.linspace(0.05, 1.0, d)
    flat = torch.randn(n, d, generator=g) @ mixing + torch.rand(d, generator=g)
    return flat.reshape(n, *shape)


def _direct(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kornia's zca_mean in float64 numpy: unbiased covariance, W = U (S + eps)^-1/2 Uᵀ."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / (flat.shape[0] - 1)
    s, u = np.linalg.eigh(cov)
    w = u @ np.diag(1.0 / np.sqrt(s + eps)) @ u.T
    return centred @ w, w, cov


@pytest.mark.parametrize("eps", [0.1, 1e-3])
def test_fit_matches_direct_computation(eps):
    x = _correlated(300, (3, 2, 2))
    zca = fit_zca(x, eps)
    expected, w, _ = _direct(x.numpy(), eps)
    np.testing.assert_allclose(zca.matrix.numpy(), w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(zca.mean.numpy(), x.reshape(300, -1).double().mean(0), atol=1e-6)
    out = zca.apply(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.reshape(300, -1).numpy(), expected, rtol=1e-4, atol=1e-4)
    # the transform is symmetric and the inverse undoes it
    assert torch.allclose(zca.matrix, zca.matrix.T, atol=1e-5)
    assert torch.allclose(zca.invert(out), x, atol=1e-4)


def test_whitened_covariance_is_identity_up_to_the_regulariser():
    x = _correlated(2000, (2, 2, 3), seed=1)
    flat = x.reshape(2000, -1)
    for eps in (1e-7, 0.1):
        z = fit_zca(x, eps).apply(x).reshape(2000, -1).double()
        cov_z = torch.cov(z.T)  # unbiased, as the fit
        cov_x = torch.cov(flat.double().T)
        s, u = torch.linalg.eigh(cov_x)
        expected = (u * (s / (s + eps))) @ u.T  # U diag(S / (S + eps)) Uᵀ
        assert torch.allclose(cov_z, expected, atol=2e-4)
        assert z.mean(0).abs().max() < 1e-4
    # with a negligible regulariser (N > D) the covariance is the identity
    z = fit_zca(x, 1e-7).apply(x).reshape(2000, -1).double()
    assert torch.allclose(torch.cov(z.T), torch.eye(12, dtype=torch.float64), atol=1e-3)
    # MTT's eps = 0.1 shrinks low-variance directions (eigenvalues S/(S+eps) < 1)
    z = fit_zca(x, 0.1).apply(x).reshape(2000, -1).double()
    assert torch.linalg.eigvalsh(torch.cov(z.T)).max() < 1.0


def test_fit_rejects_bad_input():
    with pytest.raises(DcbenchError, match="at least 2"):
        fit_zca(torch.zeros(1, 3))
    with pytest.raises(DcbenchError, match="positive"):
        fit_zca(torch.zeros(4, 3), eps=0.0)


def test_dataset_zca_is_fitted_on_unit_pixels_and_memoised(tiny):
    zca = dataset_zca(tiny, 0.1)
    assert dataset_zca(tiny, 0.1) is zca
    assert dataset_zca(tiny, 0.2) is not zca
    expected, _, _ = _direct(tiny.train_images.double().numpy() / 255.0, 0.1)
    out = whiten(tiny.train_images, zca)
    np.testing.assert_allclose(out.reshape(out.shape[0], -1).numpy(), expected, atol=2e-4)
    assert torch.allclose(zca.apply(unit_pixels(tiny.train_images[:5])), out[:5], atol=1e-5)


def test_test_split_follows_the_set(tiny):
    images = torch.zeros(4, *tiny.info.image_shape)
    plain = DistilledSet(images, torch.arange(4))
    x, y = evaluation_test_split(plain, tiny)
    assert torch.equal(x, tiny.test()[0]) and torch.equal(y, tiny.test_labels)
    whitened = DistilledSet(images, torch.arange(4), meta={"zca": zca_meta(tiny, 0.1)})
    x, y = evaluation_test_split(whitened, tiny)
    expected = dataset_zca(tiny, 0.1).apply(unit_pixels(tiny.test_images))
    assert torch.allclose(x, expected) and torch.equal(y, tiny.test_labels)
    other = DistilledSet(images, torch.arange(4), meta={"zca": {"eps": 0.1, "dataset": "cifar10"}})
    with pytest.raises(DcbenchError, match="cifar10"):
        evaluation_test_split(other, tiny)
