"""The closed-form per-class stepping equals the reference's sequential ``opt.step()`` per class."""

from __future__ import annotations

import torch

from dcbench.classwise_sgd import ClasswiseSGD


def _class_losses(x: torch.Tensor, targets: torch.Tensor, row_class: torch.Tensor, c: int):
    rows = row_class == c
    # a non-quadratic per-class loss whose gradient depends on the position
    return ((x[rows] - targets[rows]).pow(2).sum() + x[rows].sin().sum()) * (c + 1)


def test_matches_sequential_torch_sgd_over_several_iterations():
    gen = torch.Generator().manual_seed(0)
    num_classes, per_class = 4, 3
    row_class = torch.arange(num_classes).repeat_interleave(per_class)
    start = torch.randn(num_classes * per_class, 2, 3, 3, generator=gen, dtype=torch.float64)
    targets = torch.randn(start.shape, generator=gen, dtype=torch.float64)

    # the reference: one SGD over the whole tensor, one step after each class's loss
    ref = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.2, momentum=0.5)
    ours = ClasswiseSGD(start.clone(), row_class, num_classes, lr=0.2, momentum=0.5)
    for _ in range(5):
        for c in range(num_classes):
            opt.zero_grad()
            _class_losses(ref, targets, row_class, c).backward()
            opt.step()
        x = ours.turn_positions().requires_grad_(True)
        total = sum(_class_losses(x, targets, row_class, c) for c in range(num_classes))
        (grad,) = torch.autograd.grad(total, x)
        ours.step(x.detach(), grad)
        assert torch.allclose(ours.images, ref.detach(), atol=1e-12, rtol=0)


def test_summed_single_step_is_not_the_reference():
    """Why the closed form exists: one step on the summed loss moves the images differently."""
    row_class = torch.arange(3).repeat_interleave(2)
    start = torch.linspace(-1, 1, 6, dtype=torch.float64).view(6, 1)
    ours = ClasswiseSGD(start.clone(), row_class, 3, lr=0.1, momentum=0.5)
    naive = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([naive], lr=0.1, momentum=0.5)
    for _ in range(2):
        x = ours.turn_positions().requires_grad_(True)
        (g,) = torch.autograd.grad(x.pow(3).sum(), x)
        ours.step(x.detach(), g)
        opt.zero_grad()
        naive.pow(3).sum().backward()
        opt.step()
    assert not torch.allclose(ours.images, naive.detach())
