"""What the language model's hidden states carry about the two objects a spatial question
names: linear probes, layer by layer, at two positions of the prompt.

``research/default_model/aux_probe.py`` shows that the visual tokens carry each spatial answer. This asks
whether the language side ever fetches it: at the first object's mention ("... the red
circle") and at the last prompt position (where the answer is produced), a logistic
regression (scikit-learn, 3-fold cross-validation) is fitted to the hidden states of
every third layer, for four labels:

* ``answer``: yes / no;
* ``comparison``: the first object is further left (or higher) than the second;
* ``position_a`` / ``position_b``: the first / second object's column (or row), 0-3;

and two controls, which show that the probe reads what is there:

* ``relation`` (from the text): left of, right of, above or below;
* ``objects`` (from the image): how many objects the image holds, 2-5.

A third position, the first object's own visual token (the one covering its grid cell),
asks whether its position is there to be fetched. The text comes later in the causal order, so
the question's axis is unknown there: the probes read the object's ``column_a`` and ``row_a``
(0-3), with ``objects`` as the control.

Accuracy at the majority-class level means the label is not linearly readable there.

    .venv/bin/python research/default_model/lm_probe.py                      # the committed weights
    .venv/bin/python research/default_model/lm_probe.py --weights runs/x/vision.safetensors
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.build import build_model, visual_token_index  # noqa: E402 - after the sys.path set-up above
from research.default_model.quick_eval import build_prompt  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.smollm2 import ensure_language_model  # noqa: E402 - after the sys.path set-up above

_QUESTION = re.compile(r"Is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?")
RELATIONS = ("to the left of", "to the right of", "above", "below")
LABELS = ("answer", "comparison", "position_a", "position_b", "relation", "objects")
TOKEN_LABELS = ("column_a", "row_a", "objects")  # at the first object's visual token


def labels_of(record) -> dict[str, int]:
    a, rel, b = _QUESTION.match(record.sample.question).groups()
    objs = {o.name: o for o in record.scene.objects}
    axis = "col" if rel in ("to the left of", "to the right of") else "row"
    pa, pb = getattr(objs[a], axis), getattr(objs[b], axis)
    return {"answer": int(record.sample.answer == "yes"), "comparison": int(pa < pb),
            "position_a": pa, "position_b": pb, "relation": RELATIONS.index(rel),
            "objects": len(record.scene.objects), "column_a": objs[a].col, "row_a": objs[a].row}


@torch.no_grad()
def hidden_states(model, processor, records, batch: int = 50):
    """(n, layers + 1, width) hidden states at the first object's mention, at the last position
    and at the first object's visual token."""
    processor.tokenizer.padding_side = "left"
    at_a, at_end, at_token = [], [], []
    for i in range(0, len(records), batch):
        chunk = records[i: i + batch]
        texts = [build_prompt(processor, r.sample.question) for r in chunk]
        inputs = processor(images=[r.sample.image for r in chunk], text=texts,
                           return_tensors="pt", padding=True)
        hs = torch.stack(model(**inputs, output_hidden_states=True).hidden_states, 1)
        for j, (r, text) in enumerate(zip(chunk, texts)):
            name_a = _QUESTION.match(r.sample.question).group(1)
            prefix = text[: text.index(name_a) + len(name_a)]  # up to the first object's last word
            n_prefix = len(processor(images=[r.sample.image], text=[prefix])["input_ids"][0])
            pad = inputs["input_ids"].shape[1] - int(inputs["attention_mask"][j].sum())
            at_a.append(hs[j, :, pad + n_prefix - 1].float())
            at_end.append(hs[j, :, -1].float())
            image_positions = (inputs["input_ids"][j] == model.config.image_token_id).nonzero()[:, 0]
            obj_a = next(o for o in r.scene.objects if o.name == name_a)
            token = image_positions[visual_token_index(obj_a.row, obj_a.col, shapes.CELL)]
            at_token.append(hs[j, :, token].float())
    return torch.stack(at_a).numpy(), torch.stack(at_end).numpy(), torch.stack(at_token).numpy()


def probe(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    return float(cross_val_score(clf, x, y, cv=3).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="default", help="a vision.safetensors (default: the committed one)")
    ap.add_argument("--n", type=int, default=4000,
                    help="questions drawn (training split, seed 30000); a fifth are spatial")
    ap.add_argument("--every", type=int, default=3, help="probe every k-th layer")
    args = ap.parse_args()
    model, processor = build_model(ensure_language_model(None), weights=args.weights)
    model.eval()
    records = [r for r in shapes.generate_records("train", args.n, seed=30_000)
               if r.sample.category == "spatial"]
    at_a, at_end, at_token = hidden_states(model, processor, records)
    layers = list(range(0, at_end.shape[1], args.every))
    print(f"weights {args.weights}; {len(records)} spatial questions (training split, seed 30000); "
          f"3-fold cross-validated logistic regression accuracy per layer (0 = embeddings)\n")
    print("| position | label | majority class | " + " | ".join(f"L{k}" for k in layers) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in layers) + " |")
    for where, states, names in (("first object's mention", at_a, LABELS),
                                 ("last prompt position", at_end, LABELS),
                                 ("first object's visual token", at_token, TOKEN_LABELS)):
        for name in names:
            y = np.array([labels_of(r)[name] for r in records])
            majority = np.bincount(y).max() / len(y)  # bincount over 0..max: empty classes add nothing
            cells = " | ".join(f"{probe(states[:, k], y):.2f}" for k in layers)
            print(f"| {where} | {name} | {majority:.2f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
