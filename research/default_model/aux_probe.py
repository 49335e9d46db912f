"""How much of each answer the vision tower alone carries: the auxiliary heads of a training
checkpoint, read on a separate draw of questions, against the language model's exact match.

For the spatial questions the relation targets (``--relation-targets``) give a yes/no
answer directly; for colour and shape questions ``colour_of`` / ``shape_of``; for counting
and arithmetic the ``count`` / ``sum`` / ``diff`` heads. If the heads
answer well where the model does not, the bottleneck is the language side reading the
visual tokens, not the vision tower.

    .venv/bin/python research/default_model/aux_probe.py --checkpoint runs/dm16rel/checkpoint.pt --relation-targets
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.build import build_model  # noqa: E402 - after the sys.path set-up above
from research.default_model import train_default_model as train  # noqa: E402 - after the sys.path set-up above
from research.default_model.quick_eval import evaluate  # noqa: E402 - after the sys.path set-up above

_REL = {"to the left of": ("col", 1), "to the right of": ("col", 2), "above": ("row", 1), "below": ("row", 2)}


def head_answer(sample, pred: dict[str, int]) -> str | None:
    """The answer the auxiliary heads give to ``sample`` (None: no head answers it)."""
    q = sample.question
    if sample.category == "spatial":
        m = re.match(r"Is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?", q)
        a, rel, b = m.groups()
        axis, want = _REL[rel]
        key, flip = f"order:{axis}:{a}|{b}", False
        if key not in pred:
            key, flip = f"order:{axis}:{b}|{a}", True
        if key not in pred:
            return None
        got = pred[key]
        if flip and got:
            got = 3 - got
        return "yes" if got == want else "no"
    if sample.category == "colour":
        shape = re.match(r"What color is the (\w+)\?", q).group(1)
        k = pred[f"colour_of:{shape}"]
        return list(shapes.COLOURS)[k - 1] if 1 <= k <= len(shapes.COLOURS) else None
    if sample.category == "shape":
        colour = re.match(r"What shape is the (\w+) object\?", q).group(1)
        k = pred[f"shape_of:{colour}"]
        return shapes.SHAPES[k - 1] if 1 <= k <= len(shapes.SHAPES) else None
    if sample.category == "count":
        m = re.match(r"How many (\w+?)s? (?:objects )?are there\?", q)
        word = m.group(1)
        key = "count:all" if word == "object" else f"count:{word}"
        return str(pred[key])
    if sample.category == "arithmetic":
        m = re.match(r"What is the number of (\w+?)s?(?: objects)? (plus|minus) the number of (\w+?)s?(?: objects)?\?", q)
        a, op, b = m.groups()
        if op == "plus":
            key = f"sum:{a}+{b}" if f"sum:{a}+{b}" in pred else f"sum:{b}+{a}"
            return str(pred[key])
        return str(pred[f"diff:{a}-{b}"] - 4)
    return None


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a training run's checkpoint.pt")
    ap.add_argument("--relation-targets", action="store_true", help="the run used --relation-targets")
    ap.add_argument("--n", type=int, default=500, help="questions of a separate draw (training split, seed 20000)")
    args = ap.parse_args()
    if args.relation_targets:
        train.use_relation_targets()
    state = torch.load(args.checkpoint, weights_only=False)
    lm_dir = train.ensure_language_model(None)
    # the whole model as the checkpoint left it (vision tower, projector, merged LoRA)
    weights = Path(args.checkpoint).with_name("vision.safetensors")
    model, processor = build_model(lm_dir, weights=weights)
    model.model.vision_tower.load_state_dict(state["vt"])  # float32, as the heads were trained on
    heads = train.AuxHeads(model.config.vision_config.hidden_size)
    heads.load_state_dict(state["heads"])
    model.eval()
    samples = shapes.generate_split("train", args.n, seed=20_000)
    names = [n for n, _, _ in train.GLOBAL_SPECS]
    head_right, answered = defaultdict(int), defaultdict(int)
    for s in range(0, len(samples), 100):
        batch = samples[s: s + 100]
        toks = train.visual_tokens(model, train.pixels([x.image for x in batch]))
        pred = heads.global_logits(toks).mean(1).argmax(-1)  # as the training script scores them
        for i, x in enumerate(batch):
            ans = head_answer(x, dict(zip(names, pred[i].tolist())))
            if ans is not None:
                answered[x.category] += 1
                head_right[x.category] += int(ans == x.answer)
    lm = evaluate(model, processor, samples, batch_size=25)
    n_cat = {c: sum(x.category == c for x in samples) for c in shapes.CATEGORIES}
    print(f"checkpoint {args.checkpoint} (stage-B step {state['step']}), {args.n} questions (training split, seed 20000)")
    print("| category | questions | auxiliary heads (exact) | model (greedy exact match) |")
    print("| --- | --- | --- | --- |")
    for cat in shapes.CATEGORIES:
        head = f"{head_right[cat] / answered[cat]:.3f}" if answered[cat] else "no head"
        print(f"| {cat} | {n_cat[cat]} | {head} | {lm[f'accuracy/{cat}']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
