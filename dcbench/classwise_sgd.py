"""Per-class SGD steps on one shared image tensor, computed for all classes in one pass.

IDM and BACON (spec dm_idm_bacon.md §3.3, §9.6) keep **one** SGD optimiser (momentum μ, lr η, no
weight decay, no dampening) over the whole synthetic tensor and call ``step()`` after *each class's*
loss, in class order 0…C−1. Class c's loss depends only on its own rows, and its gradient is zero on
every other row, so between its own steps a row only moves by its momentum buffer. Every row's path
through one iteration therefore has a closed form. With ``B₀`` a row's buffer at the start of the
iteration and ``g`` the gradient of its class's loss at the position it has when its class's turn
comes:

    at its turn (after c foreign steps):  S_c = S₀ − η·B₀·(μ + μ² + … + μ^c)
    its own step:                         V = μ^(c+1)·B₀ + g;   S ← S_c − η·V
    the C−1−c foreign steps after it:      S_end = S_c − η·V·(1 + μ + … + μ^(C−1−c))
                                           B_end = μ^(C−1−c)·V

So one forward/backward of the *sum* of the class losses, evaluated at every class's turn position,
gives exactly the gradients of the reference's C sequential steps — and the reference's C small
forward passes become one large one. (Summing the losses and taking one SGD step, instead, would
not be equivalent: the momentum carried between a class's consecutive gradients differs.)
"""

from __future__ import annotations

import torch


class ClasswiseSGD:
    """The reference's ``for c in classes: loss_c.backward(); opt.step()`` in closed form.

    ``row_class[i]`` is the class (= turn index, classes stepped in order 0…C−1) of row i of the
    image tensor. :meth:`turn_positions` gives the tensor at which to evaluate all class losses;
    :meth:`step` takes the gradient of their sum w.r.t. those positions.
    """

    def __init__(
        self, images: torch.Tensor, row_class: torch.Tensor, num_classes: int, lr: float,
        momentum: float,
    ) -> None:  # fmt: skip
        self.images = images  # updated in place
        self.lr = lr
        self.momentum = momentum
        self.num_classes = num_classes
        self.buffer = torch.zeros_like(images)
        shape = (-1,) + (1,) * (images.dim() - 1)
        c = row_class.to(images.device, torch.float64)
        mu = torch.tensor(momentum, dtype=torch.float64)
        before = c  # foreign steps before the turn
        after = (num_classes - 1) - c  # foreign steps after it

        def geometric(first: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            # Σ_{j=first}^{first+count−1} μ^j
            if momentum == 1.0:
                return count
            return mu.pow(first) * (1 - mu.pow(count)) / (1 - mu)

        def as_rows(t: torch.Tensor) -> torch.Tensor:
            return t.to(images.dtype).view(shape)

        self._drift_before = as_rows(geometric(torch.ones_like(c), before))  # μ + … + μ^c
        self._decay_turn = as_rows(mu.pow(c + 1))  # μ^(c+1)
        self._drift_after = as_rows(geometric(torch.zeros_like(c), after + 1))  # 1 + … + μ^(C−1−c)
        self._decay_after = as_rows(mu.pow(after))  # μ^(C−1−c)

    def turn_positions(self) -> torch.Tensor:
        """Every row where it stands when its class's turn comes (a new tensor, no graph)."""
        return self.images - self.lr * self.buffer * self._drift_before

    @torch.no_grad()
    def step(self, turn_positions: torch.Tensor, grad: torch.Tensor) -> None:
        """Finish the iteration: apply every class's own step and the momentum drift around it."""
        velocity = self._decay_turn * self.buffer + grad
        self.images.copy_(turn_positions - self.lr * velocity * self._drift_after)
        self.buffer.copy_(velocity * self._decay_after)
