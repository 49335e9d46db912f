"""Token-level statistics a scorer may ask the calibration capture for, and their registry.

A statistic reduces one decoder layer's call (:class:`LayerCall`: its input and output
hidden states, the token masks, optionally the attention map) to one number per sample,
inside the forward hook, so nothing token-sized is kept. ``STATISTICS`` names them;
scorers declare what they need with :class:`topovlm.api.StatRequest` and add their own
with :func:`register_statistic`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from topovlm.registry import Registry


@dataclass
class TokenMasks:
    """Boolean ``(B, T)`` masks of one batch: real tokens, vision tokens, text tokens.

    With ``device_map="auto"`` the decoder layers sit on several GPUs while the masks are
    built where the inputs are: hooks ask for ``masks.on(h.device)``, which moves them
    once per batch and device.
    """

    valid: torch.Tensor
    vision: torch.Tensor
    _copies: dict[str, "TokenMasks"] = field(default_factory=dict, repr=False, compare=False)

    def on(self, device: torch.device | str) -> "TokenMasks":
        """These masks on ``device`` (memoised per batch)."""
        key = str(device)
        if key not in self._copies:
            self._copies[key] = TokenMasks(self.valid.to(device), self.vision.to(device))
        return self._copies[key]

    @property
    def text(self) -> torch.Tensor:
        return self.valid & ~self.vision

    @property
    def last_index(self) -> torch.Tensor:
        """Position of the last real token of every row (works for left or right padding)."""
        t = self.valid.shape[1]
        positions = torch.arange(t, device=self.valid.device).expand_as(self.valid)
        return torch.where(self.valid, positions, -1).max(dim=1).values


@dataclass
class LayerCall:
    """What a statistic sees for one decoder layer on one batch."""

    layer: int
    h_in: torch.Tensor  # (B, T, d)
    h_out: torch.Tensor  # (B, T, d)
    masks: TokenMasks
    attention: torch.Tensor | None = None  # (B, heads, T, T) when a statistic asked for it


# ---------------------------------------------------------------- token statistics
# A statistic maps one LayerCall to a per-sample tensor of shape (B,) or (B, k).
# Register new ones in STATISTICS; ``needs_attention`` ones make the capture return
# attention maps for the decoder layers (eager attention during the calibration pass).


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    denom = mask.sum(dim=1).clamp_min(1.0)
    out = (values * mask).sum(dim=1) / denom
    return torch.where(mask.sum(dim=1) > 0, out, torch.full_like(out, float("nan")))


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine in float32; a zero vector gives cosine 1 with itself, 0 otherwise."""
    a = a.float()
    b = b.float()
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def token_cos(call: LayerCall, tokens: str = "all") -> torch.Tensor:
    """Mean over tokens of cos(h_in, h_out); ``tokens`` in {all, text, vision}."""
    mask = {"all": call.masks.valid, "text": call.masks.text, "vision": call.masks.vision}[tokens]
    return masked_mean(row_cosine(call.h_in, call.h_out), mask)


@dataclass(frozen=True)
class Statistic:
    fn: Callable[..., torch.Tensor]
    needs_attention: bool = False
    description: str = ""


STATISTICS: Registry = Registry("statistic")
STATISTICS.register("token_cos", Statistic(token_cos, description="mean over tokens of cos(h_in, h_out)"))


def register_statistic(name: str, fn: Callable[..., torch.Tensor], needs_attention: bool = False,
                       description: str = "") -> None:
    STATISTICS.register(name, Statistic(fn, needs_attention, description))
