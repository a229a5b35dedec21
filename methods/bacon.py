"""BACON: Bayesian Optimal Condensation (Zhou et al., arXiv 2406.01112).

Reference: ``zhouzhengqd/BACON`` @ 9c3f7af (spec dm_idm_bacon.md §4–§6). BACON's code is IDM's with
one change, the per-class matching term (§5.1); everything else — pool, 2×2 partition decoding,
mosaic initialisation, accuracy-weighted CE, per-class image steps — is shared with
``methods/idm.py``. With Z_R the real embeddings of class c, s_d their unbiased per-dimension std,
σ_d = exp(s_d) (the exponential of the std, as the code does) and Δ = μ_S − μ_R:

    L_NLL  = Σ_d [½·log 2π + s_d + ½·Δ_d²·exp(−2 s_d)]        (−log N(μ_S; μ_R, σ²), in log space)
    L_TV   = ½ Σ_d |Δ_d|                                       (half L1 of the mean difference)
    L_CLIP = (u − clamp(u, 0, 1))²,  u = (mean(softmax μ_S) − mean(softmax μ_R)) / std(softmax μ_R)
    L      = L_NLL + 0.8·L_TV + 0.2·L_CLIP

**What BACON's objective reduces to.** Both softmax vectors sum to one, so their means are both 1/d,
u = 0 up to rounding, the clamp is the identity and L_CLIP = 0 with zero gradient (§4.1, §9.1). The
½ log 2π + s_d part does not depend on the synthetic images. BACON therefore matches class means
with a precision-weighted half squared L2 distance (weight exp(−2 s_d)) plus 0.4·L1, i.e.
∂L/∂μ_S,d = Δ_d·exp(−2 s_d) + 0.4·sign(Δ_d), against IDM's 2·Δ_d.

Deviations from the reference code: those of IDM (see ``methods/idm.py``), plus the Gaussian term
computed in log space — the reference evaluates the density and then its log, which underflows to
an infinite loss when |Δ_d|/σ_d ≳ 13 in float32; the values agree wherever the reference is finite.
BACON's Tiny-ImageNet rows use the mosaic initialisation of HEAD (§9.8).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from dcbench.method import register_method
from methods.idm import IDM, _rows

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def bacon_nll(mu_syn: torch.Tensor, mu_real: torch.Tensor, std_real: torch.Tensor) -> torch.Tensor:
    """Per-class −Σ_d log N(μ_S,d; μ_R,d, exp(s_d)²), computed in log space (C×d → C)."""
    delta = mu_syn - mu_real
    return (HALF_LOG_2PI + std_real + 0.5 * delta.pow(2) * torch.exp(-2.0 * std_real)).sum(dim=1)


def bacon_tv(mu_syn: torch.Tensor, mu_real: torch.Tensor) -> torch.Tensor:
    """Per-class "total variation": half the L1 distance of the mean embeddings (C×d → C)."""
    return 0.5 * (mu_syn - mu_real).abs().sum(dim=1)


def bacon_clip(mu_syn: torch.Tensor, mu_real: torch.Tensor) -> torch.Tensor:
    """Per-class CLIP prior exactly as the reference computes it (C×d → C); numerically zero."""
    p_syn = torch.softmax(mu_syn, dim=1)
    p_real = torch.softmax(mu_real, dim=1)
    u = (p_syn.mean(dim=1) - p_real.mean(dim=1)) / p_real.std(dim=1)
    return (u - u.clamp(0.0, 1.0)).pow(2)


def bacon_matching_loss(
    mu_syn: torch.Tensor, mu_real: torch.Tensor, std_real: torch.Tensor
) -> torch.Tensor:
    """L_NLL + 0.8·L_TV + 0.2·L_CLIP per class (the weights are hard-coded in the reference)."""
    return (
        bacon_nll(mu_syn, mu_real, std_real)
        + 0.8 * bacon_tv(mu_syn, mu_real)
        + 0.2 * bacon_clip(mu_syn, mu_real)
    )


# spec §6: BACON's commands (command.txt; MNIST/Fashion-MNIST from the history, deleted 2025-04-21)
BACON_SETTINGS: dict[tuple[str, int], dict[str, Any]] = {
    ("svhn", 1): _rows(100, 0.5, 5000, 5, 10),
    ("svhn", 10): _rows(100, 0.5, 256, 30, 10),
    ("svhn", 50): _rows(500, 0.1, 256, 30, 10),
    ("cifar10", 1): _rows(100, 0.5, 5000, 5, 10),
    ("cifar10", 10): _rows(100, 0.5, 256, 30, 10),
    ("cifar10", 50): _rows(500, 0.1, 256, 30, 10),
    ("cifar100", 1): _rows(100, 0.5, 5000, 5, 10),
    ("cifar100", 10): _rows(100, 0.1, 256, 30, 50),
    ("cifar100", 50): _rows(500, 0.1, 256, 30, 50),  # IDM: 10 steps (§5.3)
    ("tinyimagenet", 1): {**_rows(100, 0.5, 256, 30, 10), "depth": 3},
    ("tinyimagenet", 10): {**_rows(500, 0.5, 256, 30, 50), "depth": 3},
    ("mnist", 1): _rows(100, 0.5, 5000, 5, 10),
    ("mnist", 10): _rows(100, 0.5, 256, 30, 10),
    ("mnist", 50): _rows(100, 0.5, 256, 30, 10),
    ("fashionmnist", 1): _rows(100, 0.5, 5000, 5, 10),
    ("fashionmnist", 10): _rows(100, 0.5, 256, 30, 10),
    ("fashionmnist", 50): _rows(100, 0.5, 256, 30, 10),
}


@register_method("bacon")
class BACON(IDM):
    """BACON: IDM with a Bayesian matching term (Gaussian NLL + 0.8·TV + 0.2·CLIP)."""

    paper_settings: ClassVar[dict] = BACON_SETTINGS
    needs_real_std: ClassVar[bool] = True

    def matching_loss(
        self, mu_syn: torch.Tensor, mu_real: torch.Tensor, std_real: torch.Tensor | None
    ) -> torch.Tensor:
        assert std_real is not None
        return bacon_matching_loss(mu_syn, mu_real, std_real)
