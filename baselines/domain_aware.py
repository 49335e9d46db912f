"""Domain-aware layer selection (arXiv 2603.20275).

For a domain D, ``s_D[l]`` is the mean over the calibration samples of D of
cos(h_in[l], h_out[l]): how little layer l changes activations on that domain. Layers that
change least on the target domain are pruned first. Rankings:

* ``math`` / ``non_math``: ``s_D`` of that domain alone;
* ``mixed``: ``mix_weight * s_math + (1 - mix_weight) * s_non_math``, each domain first
  averaged over its own samples, so the weight, not the domains' sample counts, sets the
  balance (with ``mix_weight`` equal to the math share of the calibration set, ``mixed``
  is the cosine scorer over all samples).

``domains`` maps each ranking domain to the calibration samples' ``domain`` labels it
covers. The embedded benchmark labels samples ``math`` / ``non_math`` (the default
mapping); for other tasks map their labels, e.g. ``{math: [mathvista, chartqa], non_math:
[pope, mme]}``. ``pooling`` is the per-sample cosine of the cosine scorer (``all_tokens``:
the mean over tokens, as ShortGPT; ``last``: the last token, ...). The paper's third
regime, evenly spaced removals at high budgets, is the shared ``selection.spacing_above``
switch, not part of this scorer.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from baselines.cosine import check_pooling, layer_cosine, token_spec
from topovlm.registry import register_scorer
from topovlm.api import CaptureLike, CaptureSpec, LayerScorer, ScoreResult, ScoringContext

RANKINGS = ("math", "non_math", "mixed")
DEFAULT_DOMAINS = {"math": ["math"], "non_math": ["non_math"]}


def domain_scores(cos: np.ndarray, sample_domains: list[str], labels: list[str]) -> tuple[np.ndarray, int]:
    """``(L,)`` mean cosine over the samples whose domain is one of ``labels``, and their number."""
    idx = [i for i, d in enumerate(sample_domains) if d in set(labels)]
    if not idx:
        return np.full(cos.shape[0], np.nan), 0
    return np.nanmean(cos[:, idx], axis=1), len(idx)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return None
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@register_scorer("domain_aware")
class DomainAwareScorer(LayerScorer):
    """Prune the layers that change activations least on the target domain (or a weighted mix)."""

    def __init__(
        self,
        ranking: str = "mixed",  # math | non_math | mixed
        mix_weight: float = 0.5,  # mixed = mix_weight * s_math + (1 - mix_weight) * s_non_math
        # per-sample cosine: all_tokens | text_tokens | vision_tokens | last | text_mean | vision_mean
        pooling: str = "all_tokens",
        # ranking domain -> the calibration samples' `domain` labels it covers. The embedded shapes
        # benchmark labels samples math / non_math; for other data map their labels, e.g.
        # scorer.domains='{math: [mathvista, chartqa], non_math: [pope, mme]}'
        domains: dict[str, list[str]] = DEFAULT_DOMAINS,
    ) -> None:
        if ranking not in RANKINGS:
            raise ValueError(f"ranking={ranking!r}; allowed: {', '.join(RANKINGS)}")
        if not 0.0 <= float(mix_weight) <= 1.0:
            raise ValueError(f"mix_weight={mix_weight} must be in [0, 1]")
        check_pooling(pooling)
        given = dict(domains if domains is not None else DEFAULT_DOMAINS)
        if set(given) != {"math", "non_math"}:
            raise ValueError(f"domains must map exactly math and non_math to sample domain labels; got {sorted(given)}")
        for k, v in given.items():
            if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"domains.{k} must be a list of sample domain labels, got {v!r}")
        mapping = {k: list(v) for k, v in given.items()}
        self.ranking = ranking
        self.mix_weight = float(mix_weight)
        self.pooling = pooling
        self.domains = mapping

    def capture_spec(self) -> CaptureSpec:
        return token_spec(self.pooling)

    def weights(self) -> dict[str, float]:
        if self.ranking == "mixed":
            return {"math": self.mix_weight, "non_math": 1.0 - self.mix_weight}
        return {self.ranking: 1.0}

    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        cos = layer_cosine(capture, self.pooling)  # (L, N)
        per_domain: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for name, labels in self.domains.items():
            per_domain[name], counts[name] = domain_scores(cos, capture.domains, labels)
        present = sorted(set(capture.domains))
        combined = np.zeros(capture.num_layers)
        for name, w in self.weights().items():
            if w == 0.0:
                continue
            if counts[name] == 0:
                raise ValueError(
                    f"domain_aware ranking={self.ranking!r} needs calibration samples of domain {name!r} "
                    f"(labels {self.domains[name]}); the calibration set has domains {present}: "
                    "set scorer.domains to map them"
                )
            combined = combined + w * per_domain[name]
        extra: dict[str, Any] = {"domain_aware": {
            "ranking": self.ranking,
            "weights": self.weights(),
            "samples_per_domain": counts,
            "calibration_domains": present,
            "scores_per_domain": {k: v.tolist() for k, v in per_domain.items()},
            "spearman_math_vs_non_math": _spearman(per_domain["math"], per_domain["non_math"]),
        }}
        return ScoreResult(scores=combined, redundancy=combined, extra=extra)
