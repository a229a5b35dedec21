"""Herding: the real images whose running mean best tracks the class mean in feature space.

The coreset baseline of DC (Zhao, Mopuri & Bilen, ICLR 2021, Table 1), after Welling's herding
(ICML 2009) as used by iCaRL: per class, on the embeddings of a ConvNet trained on the whole train
set, greedily add the image that brings the mean of the selected images closest (Euclidean) to the
class mean, without repeats. The authors' pseudocode (VICO-UoE/DatasetCondensation issue #15;
published_results.md §2) is what :func:`herding_select` computes.

The network is trained once per (dataset, model, preset, ``net_seed``) with the hard-label recipe
for the preset's ``full_epochs`` and cached (:func:`dcbench.matching.feature_network`); the
selection is deterministic given the network.

Deviations / unknowns: the DC paper does not state how its feature network was trained; we use the
benchmark's ``full`` recipe (DSA, ``full_epochs``). Features are the flattened input of the
classifier (2048-d at 28/32 px) in eval mode, without augmentation. Every distillation seed uses the
network ``net_seed`` (default 0), so replicates of one cell are the same set; vary ``net_seed`` for
independent networks.
"""

from __future__ import annotations

import torch

from dcbench.matching import CoresetMethod
from dcbench.method import register_method


def herding_select(features: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of ``n`` rows of ``features`` (N×d) chosen greedily by herding, in selection order.

    Step i adds the unselected row f minimising ‖(i+1)·μ − (Σ selected + f)‖, i.e. the one that
    makes the mean of the i+1 selected rows closest to the mean μ of all rows. Ties go to the
    lowest index.
    """
    num = features.shape[0]
    if not 0 <= n <= num:
        raise ValueError(f"cannot select {n} of {num} rows")
    mean = features.mean(dim=0)
    chosen = torch.zeros(num, dtype=torch.bool)
    total = torch.zeros_like(mean)
    picks: list[int] = []
    for i in range(n):
        target = mean * (i + 1) - total
        dist = (features - target).pow(2).sum(dim=1)  # squared: the same argmin
        dist[chosen] = float("inf")
        j = int(torch.argmin(dist))
        picks.append(j)
        chosen[j] = True
        total = total + features[j]
    return torch.tensor(picks, dtype=torch.long)


@register_method("herding")
class Herding(CoresetMethod):
    """Herding selection of real images per class on a trained ConvNet's features."""

    select = staticmethod(herding_select)
