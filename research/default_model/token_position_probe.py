"""Where along the visual path a token's own grid position and content are lost: linear probes
of each vision-tower layer and of the projector output (what the language model reads).

``research/default_model/lm_probe.py`` finds that an object's row or column cannot be read from its own visual
token inside the language model. This follows the token back: for every visual token of
``--n`` images (training split, seed 30000), a logistic regression (scikit-learn, 3-fold
cross-validation) predicts the token's row and column (0-3, chance 0.25) from each layer's
hidden state, over all tokens and over the tokens that show an object, and the token's own
content: whether its cell holds an object, and that object's colour and shape.

    .venv/bin/python research/default_model/token_position_probe.py                      # the committed weights
    .venv/bin/python research/default_model/token_position_probe.py --weights runs/x/vision.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from research.default_model.lm_probe import probe  # noqa: E402 - after the sys.path set-up above
from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.build import IMAGE_SIZE, PATCH_SIZE, build_model, visual_token_index  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.smollm2 import ensure_language_model  # noqa: E402 - after the sys.path set-up above


@torch.no_grad()
def token_states(model, processor, images) -> list[tuple[str, np.ndarray]]:
    """(layer name, (images, tokens, width)) for every vision-tower layer and the projector."""
    pix = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    out = model.model.vision_tower(pix.to(model.dtype), output_hidden_states=True)
    states = [h[:, 1:] for h in out.hidden_states]  # the CLS token is dropped, as the model does
    layer = model.config.vision_feature_layer
    named = [(f"tower layer {k}" if k else "tower embeddings", h) for k, h in enumerate(states)]
    named.append(("projector output", model.model.multi_modal_projector(states[layer])))
    return [(name, h.float().numpy()) for name, h in named]


def _majority(labels: np.ndarray) -> float:
    return np.unique(labels, return_counts=True)[1].max() / len(labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="default", help="a vision.safetensors (default: the committed one)")
    ap.add_argument("--n", type=int, default=200, help="images (training split, seed 30000)")
    args = ap.parse_args()
    model, processor = build_model(ensure_language_model(None), weights=args.weights)
    model.eval()
    records = shapes.generate_records("train", args.n, seed=30_000)
    per_side = IMAGE_SIZE // PATCH_SIZE
    tokens = per_side * per_side
    shows = np.zeros((len(records), tokens), dtype=bool)
    colour = np.zeros((len(records), tokens), dtype=object)
    shape = np.zeros((len(records), tokens), dtype=object)
    for i, r in enumerate(records):
        for o in r.scene.objects:
            t = visual_token_index(o.row, o.col, shapes.CELL)
            shows[i, t], colour[i, t], shape[i, t] = True, o.colour, o.shape
    obj = shows.ravel()
    colour, shape = colour.ravel()[obj].astype(str), shape.ravel()[obj].astype(str)
    index = np.tile(np.arange(tokens), len(records))
    row, col = index // per_side, index % per_side
    print(f"weights {args.weights}; {len(records)} images x {tokens} visual tokens (training split, "
          "seed 30000); 3-fold cross-validated logistic regression accuracy; chance: row and "
          f"column 0.25, occupied {max(obj.mean(), 1 - obj.mean()):.2f}, the shown object's colour "
          f"{_majority(colour):.2f} and shape {_majority(shape):.2f}\n")
    # Position (where a token is) and content (what its own cell shows): a question's object can
    # only be found by attention if its token carries its own content, and read off if it
    # carries its own position.
    print("| layer | row | column | row (tokens showing an object) | column (tokens showing an object) "
          "| occupied | colour (tokens showing an object) | shape (tokens showing an object) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, h in token_states(model, processor, [r.sample.image for r in records]):
        x = h.reshape(len(index), -1)
        cells = [probe(x[m], y[m]) for m in (slice(None), obj) for y in (row, col)]
        cells += [probe(x, obj), probe(x[obj], colour), probe(x[obj], shape)]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
