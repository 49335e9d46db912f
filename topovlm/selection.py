"""Selection policies: turn per-layer redundancy into the set of layers to remove.

Scoring and selection are independent: any scorer works with any policy.

* ``topk``       the k most redundant layers, chosen independently;
* ``block``      the contiguous block of k layers with the lowest block cost
                 (``ScoreResult.block_cost`` if the scorer gives one, else minus the
                 summed redundancy);
* ``threshold``  adaptive (k is ignored): every unprotected layer whose redundancy is at
                 least ``lo + eps * (hi - lo)``, with ``lo`` / ``hi`` the lowest / highest
                 redundancy of the unprotected layers; nothing when they are all equal.
                 ``eps`` is a fraction of the range, so the rule means the same whatever
                 the sign, offset or scale of a scorer's values (``r -> a*r + b``, a > 0,
                 selects the same layers): eps = 1 removes the top layer(s) only, eps -> 0
                 every unprotected layer;
* ``adaptive``   the scorer's own decision rule (``ScoreResult.decision``), for methods
                 whose paper prunes by a rule of its own (k is ignored): ``topo`` and
                 ``topo_llm`` remove every layer with ``S >= eps * max S`` (``scorer.eps``),
                 as the ancestor's code does; other scorers have none (a config error);
* ``spacing``    top-k subject to a minimum gap between removed layers
                 (``min_gap``), or evenly spaced layers (``even: true``, which must
                 also respect ``min_gap``); an infeasible budget raises SelectionError;
* protected layers (``protect``, default the first) are never removed by any policy.

``k = floor(sparsity * L + 0.5)`` (half rounds up: 0.15 x 30 = 4.5 -> 5). Every policy
needs a redundancy for every layer: a NaN or +inf raises :class:`SelectionError` naming
the scorer and the layers; -inf is allowed and means "remove last" (``tail`` uses it
for the final layer; the threshold rule never selects it nor counts it in the range).
``spacing_above`` switches any policy to ``spacing`` when sparsity exceeds it.

Ties are broken by layer index: of equally redundant layers the lower index is removed
first (``topk``, ``spacing``), of equally costly blocks the first (``block``). Whenever
that rule, not the scores, decides what is removed (every unprotected layer scores the
same, or equal scores straddle the cut), :func:`select_layers` logs a warning naming the
rule and the tied layers, and appends it to ``notes`` for the job's result.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("topovlm.selection")

POLICIES = ("auto", "topk", "block", "threshold", "adaptive", "spacing")


class SelectionError(ValueError):
    """The requested budget cannot be met under the policy's constraints."""


@dataclass
class SelectionConfig:
    # auto (the scorer's default_policy) | topk | block | threshold | adaptive (the scorer's own
    # rule: topo, topo_llm) | spacing
    policy: str = "auto"
    protect: list[int] = field(default_factory=lambda: [0])  # never removed; negative indices count from the end
    # threshold policy: remove layers with redundancy >= lo + eps * (hi - lo) (range of the unprotected layers)
    eps: float = 0.9
    min_gap: int = 2  # spacing policy: removed layers are at least this far apart
    even: bool = False  # spacing policy: evenly spaced instead of top-k with a gap
    spacing_above: float | None = None  # use the spacing policy when sparsity > this (None: never)


def num_to_remove(sparsity: float, num_layers: int) -> int:
    """``floor(sparsity * L + 0.5)``; the 1e-9 absorbs binary fractions (0.15 * 30 = 4.4999...)."""
    return int(math.floor(sparsity * num_layers + 0.5 + 1e-9))


def check_finite(redundancy: np.ndarray, scorer: str = "the scorer") -> None:
    """NaN or +inf redundancy is an error; -inf is a scorer's explicit "remove last"."""
    r = np.asarray(redundancy, dtype=np.float64)
    bad = [int(i) for i in np.flatnonzero(np.isnan(r) | (r == np.inf))]
    if bad:
        raise SelectionError(
            f"scorer {scorer} gave non-finite redundancy for layers {bad} of {len(r)} "
            "(e.g. a statistic over tokens the calibration set does not have); no layer was selected")


def _protected(protect: list[int], n: int) -> set[int]:
    out = set()
    for p in protect:
        idx = p + n if p < 0 else p
        if not 0 <= idx < n:
            raise SelectionError(f"selection.protect: layer {p} is outside 0..{n - 1}")
        out.add(idx)
    return out


#: how each policy breaks ties, as the warnings name it
TIE_BREAK = {
    "topk": "lower layer index removed first",
    "spacing": "lower layer index removed first",
    "block": "the first (lowest-index) block of equal cost",
    "threshold": "none needed: equal scores are all removed or all kept",
}


def tie_note(redundancy: np.ndarray, removed: list[int], protected: set[int], policy: str, scorer: str,
             block_cost: np.ndarray | None = None) -> str | None:
    """A one-line warning when the tie-break rule, not the scores, decided which layers are
    removed; None when the scores decided. ``removed``: what ``policy`` selected."""
    r = np.asarray(redundancy, dtype=np.float64)
    free = [i for i in range(len(r)) if i not in protected and np.isfinite(r[i])]
    rule = TIE_BREAK.get(policy)
    if rule is None or len(free) < 2:
        return None
    values = r[free]
    if not removed and policy != "threshold":
        return None  # nothing to remove (k = 0): no tie can matter
    if np.ptp(values) == 0.0:
        if policy == "threshold":
            return (f"scorer {scorer} gave every unprotected layer the same redundancy ({values[0]:g}): "
                    "nothing stands out, so selection.policy=threshold removes nothing")
        return (f"scorer {scorer} gave every unprotected layer the same redundancy ({values[0]:g}): "
                f"layers {sorted(removed)} are removed by the tie-break rule of selection.policy={policy} "
                f"({rule}), not by the scores")
    if policy == "threshold":
        return None
    if policy == "block":
        k, start = len(removed), min(removed)
        costs = {s: _block_cost(r, k, s, protected, block_cost) for s in range(len(r) - k + 1)}
        tied = sorted(s for s, c in costs.items() if c is not None and s != start and c == costs[start])
        if tied:
            return (f"scorer {scorer}: blocks of {k} layers starting at {[start] + tied} have the same cost; "
                    f"layers {sorted(removed)} are removed by the tie-break rule of selection.policy=block ({rule})")
        return None
    chosen = set(removed)
    straddle = sorted({float(r[i]) for i in chosen if np.isfinite(r[i])}
                      & {float(r[j]) for j in free if j not in chosen})
    if not straddle:
        return None
    tied = sorted(i for i in free if float(r[i]) in straddle)
    return (f"scorer {scorer}: layers {tied} have equal redundancy ({', '.join(f'{v:g}' for v in straddle)}) "
            f"across the cut; which of them are removed ({sorted(chosen.intersection(tied))}) is decided by the "
            f"tie-break rule of selection.policy={policy} ({rule}), not by the scores")


def _block_cost(r: np.ndarray, k: int, start: int, protected: set[int], block_cost: np.ndarray | None) -> float | None:
    """What :func:`select_block` minimises for the block at ``start`` (None: not allowed)."""
    if protected.intersection(range(start, start + k)):
        return None
    if block_cost is not None and k < block_cost.shape[0] and not np.isnan(block_cost[k, start]):
        return float(block_cost[k, start])
    return -float(np.sum(np.nan_to_num(r, nan=-np.inf)[start:start + k]))


def _order(redundancy: np.ndarray) -> list[int]:
    """Layers from most to least redundant; NaN last; ties by index (deterministic)."""
    r = np.where(np.isnan(redundancy), -np.inf, redundancy)
    return sorted(range(len(r)), key=lambda i: (-r[i], i))


def select_topk(redundancy: np.ndarray, k: int, protected: set[int]) -> list[int]:
    candidates = [i for i in _order(redundancy) if i not in protected]
    if k > len(candidates):
        raise SelectionError(f"cannot remove {k} layers: only {len(candidates)} are not protected")
    return sorted(candidates[:k])


def select_block(redundancy: np.ndarray, k: int, protected: set[int], block_cost: np.ndarray | None) -> list[int]:
    n = len(redundancy)
    if k == 0:
        return []
    best, best_cost = None, np.inf
    for start in range(0, n - k + 1):
        cost = _block_cost(redundancy, k, start, protected, block_cost)
        if cost is not None and cost < best_cost:
            best, best_cost = start, cost
    if best is None:
        raise SelectionError(f"no contiguous block of {k} layers avoids the protected layers {sorted(protected)}")
    return list(range(best, best + k))


def threshold_cut(redundancy: np.ndarray, eps: float, protected: set[int]) -> float | None:
    """``lo + eps * (hi - lo)`` over the unprotected layers; None when nothing stands out."""
    r = np.asarray(redundancy, dtype=np.float64)
    values = [r[i] for i in range(len(r)) if i not in protected and np.isfinite(r[i])]
    if not values:
        return None
    lo, hi = float(min(values)), float(max(values))
    if hi == lo:
        return None
    return lo + eps * (hi - lo)


def select_threshold(redundancy: np.ndarray, eps: float, protected: set[int]) -> list[int]:
    cut = threshold_cut(redundancy, eps, protected)
    if cut is None:
        return []
    r = np.asarray(redundancy, dtype=np.float64)
    return sorted(i for i in range(len(r)) if i not in protected and np.isfinite(r[i]) and r[i] >= cut)


def select_spaced(redundancy: np.ndarray, k: int, protected: set[int], min_gap: int, even: bool) -> list[int]:
    n = len(redundancy)
    if k == 0:
        return []
    allowed = [i for i in range(n) if i not in protected]
    if even:
        # k evenly spaced positions over the unprotected layers, centred in their strides
        if k > len(allowed):
            raise SelectionError(f"cannot remove {k} evenly spaced layers out of {len(allowed)} unprotected")
        pos = np.floor((np.arange(k) + 0.5) * len(allowed) / k).astype(int)
        spaced = sorted(allowed[p] for p in pos)
        closest = min((b - a for a, b in zip(spaced, spaced[1:])), default=min_gap)
        if closest < min_gap and k > 1:  # spread over the full range instead: the widest even spacing
            pos = np.floor(np.arange(k) * (len(allowed) - 1) / (k - 1)).astype(int)
            spaced = sorted(allowed[p] for p in pos)
            closest = min(b - a for a, b in zip(spaced, spaced[1:]))
        if closest < min_gap:
            raise SelectionError(
                f"cannot remove {k} evenly spaced layers at least {min_gap} apart among {n} layers "
                f"(protected: {sorted(protected)}): the closest would be {closest} apart; "
                "lower selection.min_gap or the sparsity"
            )
        return spaced
    # greedy top-k with the gap constraint, then an exact feasibility check on failure
    chosen: list[int] = []
    for i in _order(redundancy):
        if i in protected or any(abs(i - j) < min_gap for j in chosen):
            continue
        chosen.append(i)
        if len(chosen) == k:
            return sorted(chosen)
    capacity = _max_spaced(allowed, min_gap)
    if capacity < k:
        raise SelectionError(
            f"cannot remove {k} layers at least {min_gap} apart: at most {capacity} fit among {n} layers "
            f"(protected: {sorted(protected)}); lower selection.min_gap or the sparsity"
        )
    # greedy got stuck although k fit: fall back to the feasible set that keeps most redundancy
    return _best_spaced(redundancy, allowed, k, min_gap)


def _max_spaced(allowed: list[int], gap: int) -> int:
    count, last = 0, None
    for i in allowed:
        if last is None or i - last >= gap:
            count, last = count + 1, i
    return count


def _best_spaced(redundancy: np.ndarray, allowed: list[int], k: int, gap: int) -> list[int]:
    """Max-sum subset of ``allowed`` of size k with pairwise gaps >= gap (dynamic programme)."""
    r = np.nan_to_num(redundancy, nan=-1e9, posinf=1e9, neginf=-1e9)  # finite: sums must not overflow
    m = len(allowed)
    neg = -np.inf
    best = np.full((m + 1, k + 1), neg)
    best[:, 0] = 0.0
    take = np.zeros((m + 1, k + 1), dtype=bool)
    prev_idx = [0] * m
    for a in range(m):  # prev_idx[a] = number of allowed layers usable before allowed[a]
        p = a
        while p > 0 and allowed[a] - allowed[p - 1] < gap:
            p -= 1
        prev_idx[a] = p
    for a in range(1, m + 1):
        for j in range(1, k + 1):
            skip = best[a - 1, j]
            use = best[prev_idx[a - 1], j - 1] + r[allowed[a - 1]]
            if use > skip:
                best[a, j], take[a, j] = use, True
            else:
                best[a, j] = skip
    out, a, j = [], m, k
    while j > 0:
        if take[a, j]:
            out.append(allowed[a - 1])
            a, j = prev_idx[a - 1], j - 1
        else:
            a -= 1
    return sorted(out)


def select_layers(
    redundancy: np.ndarray,
    sparsity: float,
    cfg: SelectionConfig,
    default_policy: str = "topk",
    block_cost: np.ndarray | None = None,
    scorer: str = "the scorer",
    decision: list[int] | None = None,
    notes: list[str] | None = None,
    warn: bool = True,
) -> tuple[list[int], str]:
    """Layers to remove (original indices, sorted) and the policy that chose them.
    ``decision``: the scorer's own adaptive choice (``ScoreResult.decision``), if it makes one.
    When ties decided the choice (:func:`tie_note`) the warning is logged (``warn``) and
    appended to ``notes`` (for the job's result)."""
    removed, policy = _select(redundancy, sparsity, cfg, default_policy, block_cost, scorer, decision)
    # the scorer's own rule reports its own ties (topo: constant_scores); even spacing ignores scores
    if policy != "adaptive" and not (policy == "spacing" and cfg.even):
        note = tie_note(np.asarray(redundancy, dtype=np.float64), removed, _protected(list(cfg.protect), len(redundancy)),
                        policy, scorer, block_cost)
        if note is not None:
            if warn:
                log.warning(note)
            if notes is not None:
                notes.append(note)
    return removed, policy


def resolve_policy(cfg: SelectionConfig, sparsity: float, default_policy: str) -> str:
    """The policy a job applies: ``auto`` is the scorer's default; above ``spacing_above``, spacing."""
    policy = default_policy if cfg.policy == "auto" else cfg.policy
    if cfg.spacing_above is not None and sparsity > cfg.spacing_above:
        policy = "spacing"
    if policy not in POLICIES:
        raise SelectionError(f"selection.policy={policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def no_decision(scorer: str) -> str:
    """The message for ``selection.policy=adaptive`` with a scorer that has no rule of its own."""
    return (f"selection.policy=adaptive: {scorer} makes no decision of its own (topo and topo_llm do); "
            "allowed policies for it: topk, block, threshold, spacing")


def _select(redundancy: np.ndarray, sparsity: float, cfg: SelectionConfig, default_policy: str,
            block_cost: np.ndarray | None, scorer: str, decision: list[int] | None) -> tuple[list[int], str]:
    redundancy = np.asarray(redundancy, dtype=np.float64)
    check_finite(redundancy, scorer)
    n = len(redundancy)
    k = num_to_remove(sparsity, n)
    policy = resolve_policy(cfg, sparsity, default_policy)
    protected = _protected(list(cfg.protect), n)
    if policy == "threshold":
        return select_threshold(redundancy, cfg.eps, protected), policy
    if policy == "adaptive":
        if decision is None:
            raise SelectionError(no_decision(scorer))
        return sorted(int(i) for i in decision if int(i) not in protected), policy
    if k == 0:
        return [], policy
    if policy == "topk":
        return select_topk(redundancy, k, protected), policy
    if policy == "block":
        return select_block(redundancy, k, protected, block_cost), policy
    return select_spaced(redundancy, k, protected, cfg.min_gap, cfg.even), policy


def check_budget(sparsity: float, num_layers: int, cfg: SelectionConfig, default_policy: str = "topk") -> None:
    """Raise :class:`SelectionError` if no redundancy profile can meet the budget (config only:
    the number of layers, ``protect``, the policy and its constraints)."""
    policy = resolve_policy(cfg, sparsity, default_policy)
    protected = _protected(list(cfg.protect), num_layers)
    if len(protected) >= num_layers and (policy == "threshold" or num_to_remove(sparsity, num_layers) > 0):
        raise SelectionError(f"selection.protect={list(cfg.protect)} protects all {num_layers} layers: nothing can be removed")
    if policy == "adaptive":
        if len(protected) >= num_layers:
            raise SelectionError(f"selection.protect={list(cfg.protect)} protects all {num_layers} layers")
        return  # the scorer's rule decides how many
    k = num_to_remove(sparsity, num_layers)
    if k >= num_layers:
        raise SelectionError(f"sparsity={sparsity:g} removes k={k} of {num_layers} layers: at least one must stay")
    select_layers(np.zeros(num_layers), sparsity, cfg, default_policy, warn=False)
