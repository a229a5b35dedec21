"""k-center: real images that cover the class in feature space (greedy farthest-point selection).

The coreset baseline of DC (Zhao, Mopuri & Bilen, ICLR 2021, Table 1), after the greedy k-center of
Sener & Savarese (ICLR 2018): per class, on the embeddings of a ConvNet trained on the whole train
set, start from the image nearest the class mean, then repeatedly add the image farthest from its
nearest selected image. The authors' pseudocode (VICO-UoE/DatasetCondensation issue #21;
published_results.md §2) is what :func:`kcenter_select` computes.

The network is trained once per (dataset, model, preset, ``net_seed``) with the hard-label recipe
for the preset's ``full_epochs`` and cached (:func:`dcbench.matching.feature_network`), shared
with herding; the selection is deterministic given the network.

Deviations / unknowns: as for herding (the feature network's training is not stated in the paper;
we use the benchmark's ``full`` recipe). Already selected images are excluded explicitly, so exact
duplicates in feature space cannot be picked twice (the pseudocode relies on their distance 0).
"""

from __future__ import annotations

import torch

from dcbench.matching import CoresetMethod
from dcbench.method import register_method


def kcenter_select(features: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of ``n`` rows of ``features`` (N×d) by greedy k-center, in selection order.

    The first is the row nearest (Euclidean) the mean of all rows; each next one is the unselected
    row with the largest distance to its nearest selected row. Ties go to the lowest index.
    """
    num = features.shape[0]
    if not 0 <= n <= num:
        raise ValueError(f"cannot select {n} of {num} rows")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    mean = features.mean(dim=0)
    first = int(torch.argmin((features - mean).pow(2).sum(dim=1)))
    picks = [first]
    # squared distance of every row to its nearest selected row (squares: the same argmax)
    nearest = (features - features[first]).pow(2).sum(dim=1)
    chosen = torch.zeros(num, dtype=torch.bool)
    chosen[first] = True
    for _ in range(n - 1):
        j = int(torch.argmax(nearest.masked_fill(chosen, float("-inf"))))
        picks.append(j)
        chosen[j] = True
        nearest = torch.minimum(nearest, (features - features[j]).pow(2).sum(dim=1))
    return torch.tensor(picks, dtype=torch.long)


@register_method("kcenter")
class KCenter(CoresetMethod):
    """Greedy k-center selection of real images per class on a trained ConvNet's features."""

    select = staticmethod(kcenter_select)
