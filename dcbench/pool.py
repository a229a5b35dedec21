"""IDM/BACON's FIFO pool of partially trained networks (spec dm_idm_bacon.md §3.2).

The pool starts with a few fresh networks, receives a fresh one every ``push_interval`` iterations
(the oldest is evicted at capacity), lends uniformly chosen members to the matching step, and trains
a few uniformly chosen members a few SGD steps per iteration on real mini-batches drawn uniformly
from the whole train set (no augmentation). Each member keeps a running training-accuracy meter
(correct / seen over every step since the last reset, torchnet's ``ClassErrorMeter``), which sets
the weight of the synthetic cross-entropy term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcbench.data import RealData
from dcbench.protocol import seed_hash
from dcbench.training import init_model


@dataclass
class PoolMember:
    """A network, its own SGD optimiser and its accuracy meter."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    correct: int = 0
    seen: int = 0

    def accuracy_percent(self) -> float:
        """Training accuracy in percent since the last reset; 0 if not trained since then."""
        return 100.0 * self.correct / self.seen if self.seen else 0.0

    def reset_meter(self) -> None:
        self.correct = self.seen = 0


class NetworkPool:
    """The FIFO pool; every random choice comes from the generator passed in."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        data: RealData,
        *,
        capacity: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        seed: int,
        device: torch.device,
    ) -> None:
        self.build = build
        self.capacity = capacity
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.seed = seed
        self.device = device
        self.members: list[PoolMember] = []
        self.pushed = 0
        self.train_images = data.train_images.to(device)
        self.train_labels = data.train_labels.to(device)
        self.data = data

    def push(self) -> None:
        """Append a fresh network, dropping the oldest first when the pool is full."""
        if len(self.members) == self.capacity:
            self.members.pop(0)
        net = init_model(self.build, seed_hash(self.seed, "pool", self.pushed)).to(self.device)
        self.pushed += 1
        optimizer = torch.optim.SGD(
            net.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        self.members.append(PoolMember(net, optimizer))

    def choose(self, count: int, generator: torch.Generator) -> list[PoolMember]:
        """``min(count, size)`` distinct members, uniformly at random."""
        order = torch.randperm(len(self.members), generator=generator)[:count]
        return [self.members[i] for i in order.tolist()]

    def reset_meters(self) -> None:
        for member in self.members:
            member.reset_meter()

    def train(self, count: int, steps: int, batch_size: int, generator: torch.Generator) -> None:
        """Train ``count`` uniformly chosen members ``steps`` SGD steps each (plain CE, no
        augmentation, batches of distinct images uniform over the whole train set)."""
        n = self.train_labels.numel()
        for member in self.choose(count, generator):
            net = member.net
            net.train()
            net.requires_grad_(True)  # the matching step freezes the network it borrows
            for _ in range(steps):
                idx = torch.randperm(n, generator=generator)[:batch_size].to(self.device)
                x = self.data.normalize(self.train_images[idx])
                y = self.train_labels[idx]
                logits = net(x)
                loss = F.cross_entropy(logits, y)
                member.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                member.optimizer.step()
                member.correct += int((logits.detach().argmax(dim=1) == y).sum())
                member.seen += int(y.numel())
