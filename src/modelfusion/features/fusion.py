"""Feature fusion: several backbones' features, projected to one width and fused inside one network."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._modules import freeze, output_width, truncate
from ..errors import ConfigError, InvalidInputError
from ..registry import Registry

__all__ = ["FUSIONS", "FeatureFusion", "Concat", "Sum", "Attention", "Gating"]

FUSIONS: Registry = Registry("feature fusion")


class _Fusion(nn.Module):
    """Fuses `[N, K, W]` (K sources projected to width W) into `[N, out_width]`."""

    def __init__(self, num_sources: int, width: int) -> None:
        super().__init__()
        self.out_width = width


@FUSIONS.register("concat")
class Concat(_Fusion):
    """Concatenation of the projected features (the width grows with the number of sources)."""

    def __init__(self, num_sources: int, width: int) -> None:
        super().__init__(num_sources, width)
        self.out_width = num_sources * width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1)


@FUSIONS.register("sum")
class Sum(_Fusion):
    """Element-wise sum of the projected features."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.sum(dim=1)


@FUSIONS.register("attention")
class Attention(_Fusion):
    """Additive attention over sources (Bahdanau et al., 2015): a learned score per source and per sample,
    `s_k = v^T tanh(U z_k)`, softmax-normalized over the sources; the fused feature is `sum_k a_k z_k`.

    The last forward pass's weights `[N, K]` are kept in `last_weights` for inspection.
    """

    def __init__(self, num_sources: int, width: int, hidden: int = 32) -> None:
        super().__init__(num_sources, width)
        self.score = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        self.last_weights: torch.Tensor | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(z).squeeze(-1), dim=1)  # [N, K]
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * z).sum(dim=1)


@FUSIONS.register("gating")
class Gating(_Fusion):
    """Gated fusion (after Arevalo et al., 2017, gated multimodal units): from all sources together, a sigmoid
    gate per source and per feature, `g = sigmoid(W [z_1, ..., z_K])`; the fused feature is `sum_k g_k * z_k`.
    Unlike attention the gates are not normalized: a source can be switched off feature by feature."""

    def __init__(self, num_sources: int, width: int) -> None:
        super().__init__(num_sources, width)
        self.gate = nn.Linear(num_sources * width, num_sources * width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.gate(z.flatten(1))).view_as(z)  # [N, K, W]
        return (gates * z).sum(dim=1)


def _mlp(width: int, sizes: Sequence[int]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers), width


def _head(head: int | nn.Module, width: int) -> nn.Module:
    return nn.Linear(width, head) if isinstance(head, int) else head


class FeatureFusion(nn.Module):
    """Several backbones' features fused into one network.

    Each backbone (any `nn.Module`; all take the same input) is cut at a named layer (or used whole), its
    output flattened and projected to `width` by Linear + ReLU; the projections are fused (`FUSIONS`:
    concat, sum, attention, gating), passed through optional shared layers, and into one head or several
    (multi-task: several heads over one shared trunk, `forward` then returns a dict of outputs).

    Args:
        backbones: the feature extractors, a list or a name -> module mapping (names appear in errors).
        example_input: a small batch every backbone accepts; widths are inferred from it.
        layers: per backbone, the module whose output is the feature (None: the backbone's output).
        fusion: a `FUSIONS` name.
        width: the common width of the projected features.
        shared: widths of shared ReLU layers after the fusion.
        head: number of outputs, a module taking the fused width, or a name -> either mapping (multi-task).
        freeze_backbones: freeze the backbones (no gradients, kept in eval mode so BatchNorm statistics stay).

    The fusion holds copies of the backbones: training it never changes the caller's models.

    Example:
        >>> fused = FeatureFusion([cnn, mlp], data.train.X[:8], layers=["10", "1"], fusion="attention", head=10)
    """

    def __init__(
        self,
        backbones: Sequence[nn.Module] | Mapping[str, nn.Module],
        example_input: torch.Tensor,
        *,
        layers: Sequence[str | None] | None = None,
        fusion: str = "attention",
        width: int = 64,
        shared: Sequence[int] = (),
        head: int | nn.Module | Mapping[str, int | nn.Module] = 10,
        freeze_backbones: bool = True,
    ) -> None:
        super().__init__()
        named = dict(backbones) if isinstance(backbones, Mapping) else {str(i): b for i, b in enumerate(backbones)}
        if len(named) < 1:
            raise ConfigError("feature fusion needs at least one backbone")
        layers = list(layers) if layers is not None else [None] * len(named)
        if len(layers) != len(named):
            raise ConfigError(f"got {len(layers)} layer names for {len(named)} backbones; give one per backbone")
        fusion_class = FUSIONS[fusion]
        self.trunks = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        for (name, backbone), layer in zip(named.items(), layers, strict=True):
            backbone = copy.deepcopy(backbone)  # freezing or training the fusion leaves the caller's model alone
            trunk = truncate(backbone, layer) if layer is not None else backbone
            features = output_width(trunk, example_input, f"backbone {name!r}")
            self.trunks[name] = trunk
            self.projections[name] = nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU())
        self.frozen = freeze_backbones
        if freeze_backbones:
            freeze(self.trunks.values())
        self.fusion = fusion_class(len(named), width)
        self.shared, fused_width = _mlp(self.fusion.out_width, shared)
        self.multi_task = isinstance(head, Mapping)
        heads = head if isinstance(head, Mapping) else {"out": head}
        self.heads = nn.ModuleDict({task: _head(h, fused_width) for task, h in heads.items()})
        with torch.no_grad():
            was_training = self.training
            self.eval()
            try:
                self(example_input[:2])
            except RuntimeError as err:
                raise InvalidInputError(f"a head does not take the fused width {fused_width}: {err}") from None
            self.train(was_training)

    def train(self, mode: bool = True) -> FeatureFusion:
        super().train(mode)
        if self.frozen:  # frozen backbones keep their BatchNorm statistics and skip dropout
            self.trunks.eval()
        return self

    def sources(self, x: torch.Tensor) -> torch.Tensor:
        """The projected features of every backbone: `[N, K, width]`."""
        return torch.stack([self.projections[name](trunk(x)) for name, trunk in self.trunks.items()], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        body = self.shared(self.fusion(self.sources(x)))
        if self.multi_task:
            return {task: head(body) for task, head in self.heads.items()}
        return self.heads["out"](body)
