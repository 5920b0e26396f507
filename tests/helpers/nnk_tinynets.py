"""Tiny torch models for the extraction tests, importable as ``nnk_tinynets:FACTORY``.

Tests put this folder on ``sys.path`` (or ``PYTHONPATH`` for subprocesses). Every
factory seeds its own initialisation, so separate processes build identical models.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

FEATURE_DIM = 6


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> global average pool -> ``fc`` (3 classes)."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, FEATURE_DIM, kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(FEATURE_DIM)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, n_classes)

    def features(self, x):
        return torch.flatten(self.avgpool(self.relu(self.bn1(self.conv1(x)))), 1)

    def forward(self, x):
        return self.fc(self.features(x))


def _seeded(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    # non-trivial BatchNorm statistics, so that eval() vs train() mode matters
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model


def tiny_backbone() -> nn.Module:
    """The pooled 6-d feature (head already removed)."""
    model = _seeded()
    model.fc = nn.Identity()
    return model


def tiny_classifier() -> nn.Module:
    """With its 3-class ``fc`` head, as torchvision builds architectures."""
    return _seeded()


class SlowNet(TinyNet):
    """Logs every forward pass to $NNK_TEST_FORWARD_LOG, sleeps $NNK_TEST_FORWARD_SLEEP
    seconds, and hangs once $NNK_TEST_FORWARD_HANG_AFTER passes are logged, so that a
    test can kill it at a known point."""

    def forward(self, x):
        log = os.environ.get("NNK_TEST_FORWARD_LOG")
        done = 0
        if log:
            with open(log, "a+") as fh:
                fh.seek(0)
                done = len(fh.read().splitlines())
                fh.write(f"{x.shape[0]}\n")
        hang_after = int(os.environ.get("NNK_TEST_FORWARD_HANG_AFTER", "-1"))
        if 0 <= hang_after <= done:
            time.sleep(120)  # until the test kills the process
        time.sleep(float(os.environ.get("NNK_TEST_FORWARD_SLEEP", "0")))
        return super().forward(x)


def slow_backbone() -> nn.Module:
    """``tiny_backbone`` (same keys and weights) that can be slowed down or made to hang."""
    torch.manual_seed(0)
    model = SlowNet()
    model.load_state_dict(_seeded().state_dict())
    model.fc = nn.Identity()
    return model


def spatial_backbone() -> nn.Module:
    """Returns an unpooled (n, c, h, w) map: not a feature vector."""
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, kernel_size=3)


def not_a_module():
    return {"weights": 1}


def broken_factory():
    raise RuntimeError("factory exploded")


class ToyBlock(nn.Module):
    """A residual block: like a transformer block, its output is the whole token state."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())

    def forward(self, x):
        return x + self.mlp(x)


class ToyViT(nn.Module):
    """A Vision Transformer's outline, DINO's names: tokens from 4x4 patches, a class token and
    ``num_register_tokens`` registers in front, residual ``blocks``, a final ``norm``; the forward
    returns the class token after the norm (DINO's ``vision_transformer.py``)."""

    def __init__(self, dim: int = 8, depth: int = 5, num_register_tokens: int = 2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.num_register_tokens = num_register_tokens
        self.registers = nn.Parameter(torch.randn(1, num_register_tokens, dim))
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def tokens(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        n = x.shape[0]
        return torch.cat([self.cls_token.expand(n, -1, -1), self.registers.expand(n, -1, -1), x], dim=1)

    def forward(self, x):
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def toy_vit() -> nn.Module:
    torch.manual_seed(1)
    model = ToyViT()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    return model
