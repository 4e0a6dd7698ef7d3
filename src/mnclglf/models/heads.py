"""The paper's MLP heads (Sec. 4.1, "Architecture"), shared by every method that has them."""

from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """[in→hidden→hidden→out], BN after each linear, ReLU after the first two BNs."""

    def __init__(self, in_dim: int, hidden: int = 2048, out_dim: int = 2048) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim, bias=False), nn.BatchNorm1d(out_dim),
        )


class Predictor(nn.Sequential):
    """[dim→hidden→dim] with BN + ReLU between the two linears."""

    def __init__(self, dim: int = 2048, hidden: int = 512) -> None:
        super().__init__(
            nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim),
        )
