"""Record types shared by datasets, calibration and evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # PIL is only needed by callers that build images
    import PIL.Image


@dataclass(frozen=True)
class VQASample:
    id: str
    image: "PIL.Image.Image | None"
    question: str  # full question text shown to the model, incl. any answer-format instruction
    answer: str  # gold answer, already normalised
    domain: str  # e.g. "math" / "non_math"; used by domain-aware scoring and per-domain metrics
    category: str = ""  # question type: colour, shape, count, spatial, arithmetic
