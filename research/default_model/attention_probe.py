"""Does the language model look at the objects a spatial question names? Attention from the
prompt onto the named objects' own visual tokens, layer by layer.

``research/default_model/lm_probe.py`` finds that neither named object's position is readable at the text
positions. Fetching it needs attention that finds the object's visual token by what it shows.
For every spatial question of ``--n`` draws (training split, seed 30000), at the last prompt
position (where the answer is produced) and at the first object's mention, this measures the
share of the attention paid to the 16 visual tokens that falls on the first (``a``) and the
second (``b``) object's token, two ways:

* ``mean``: averaged over the layer's heads;
* ``best head``: the layer's head with the largest share, averaged over questions.

A lookup by content puts a share near 1 on the named object; attention that ignores which
object is named spreads over the tokens. Reference levels: ``1/16`` (uniform over the visual
tokens) and ``occupied`` (the object's share if the attention were uniform over the tokens that
show an object, averaged over questions).

    .venv/bin/python research/default_model/attention_probe.py                      # the committed weights
    .venv/bin/python research/default_model/attention_probe.py --weights runs/x/vision.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from research.default_model.lm_probe import _QUESTION  # noqa: E402 - after the sys.path set-up above
from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.build import build_model, visual_token_index  # noqa: E402 - after the sys.path set-up above
from research.default_model.quick_eval import build_prompt  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.smollm2 import ensure_language_model  # noqa: E402 - after the sys.path set-up above


@torch.no_grad()
def object_attention(model, processor, records, batch: int = 25) -> dict[str, np.ndarray]:
    """Shares of the visual-token attention on the named objects' tokens: ``{"<position> <a|b>":
    (questions, layers, heads)}`` for the last prompt position and the first object's mention,
    and ``occupied``: 1 / number of objects, per question."""
    processor.tokenizer.padding_side = "left"
    out: dict[str, list] = {f"{p} {o}": [] for p in ("last", "mention") for o in "ab"}
    occupied = []
    for i in range(0, len(records), batch):
        chunk = records[i: i + batch]
        texts = [build_prompt(processor, r.sample.question) for r in chunk]
        inputs = processor(images=[r.sample.image for r in chunk], text=texts,
                           return_tensors="pt", padding=True)
        att = torch.stack(model(**inputs, output_attentions=True).attentions, 1)  # B, L, H, Q, K
        for j, (r, text) in enumerate(zip(chunk, texts)):
            name_a, _, name_b = _QUESTION.match(r.sample.question).groups()
            prefix = text[: text.index(name_a) + len(name_a)]
            n_prefix = len(processor(images=[r.sample.image], text=[prefix])["input_ids"][0])
            pad = inputs["input_ids"].shape[1] - int(inputs["attention_mask"][j].sum())
            image = (inputs["input_ids"][j] == model.config.image_token_id).nonzero()[:, 0]
            objs = {o.name: o for o in r.scene.objects}
            for pos_name, q in (("last", -1), ("mention", pad + n_prefix - 1)):
                on_image = att[j, :, :, q][..., image]  # L, H, 16
                share = on_image / on_image.sum(-1, keepdim=True)
                for tag, name in (("a", name_a), ("b", name_b)):
                    k = visual_token_index(objs[name].row, objs[name].col, shapes.CELL)
                    out[f"{pos_name} {tag}"].append(share[..., k].float().numpy())
            occupied.append(1.0 / len(r.scene.objects))
    return {**{k: np.stack(v) for k, v in out.items()}, "occupied": np.array(occupied)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="default", help="a vision.safetensors (default: the committed one)")
    ap.add_argument("--n", type=int, default=1000,
                    help="questions drawn (training split, seed 30000); a fifth are spatial")
    ap.add_argument("--every", type=int, default=3, help="report every k-th layer")
    args = ap.parse_args()
    model, processor = build_model(ensure_language_model(None), weights=args.weights)
    model.set_attn_implementation("eager")  # attention weights are returned by the eager path only
    model.eval()
    records = [r for r in shapes.generate_records("train", args.n, seed=30_000)
               if r.sample.category == "spatial"]
    shares = object_attention(model, processor, records)
    n_layers = shares["last a"].shape[1]
    layers = list(range(0, n_layers, args.every)) + ([n_layers - 1] if (n_layers - 1) % args.every else [])
    print(f"weights {args.weights}; {len(records)} spatial questions (training split, seed 30000); "
          f"share of the attention on the visual tokens that falls on the named object's token, per "
          f"decoder layer (uniform: 1/16 = {1 / 16:.3f}; uniform over the tokens showing an object: "
          f"{shares['occupied'].mean():.3f})\n")
    print("| from | onto | heads | " + " | ".join(f"L{k}" for k in layers) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in layers) + " |")
    for key, label in (("last a", ("last prompt position", "first object")),
                       ("last b", ("last prompt position", "second object")),
                       ("mention a", ("first object's mention", "first object"))):
        s = shares[key]  # questions, layers, heads
        for heads, per_layer in (("mean", s.mean((0, 2))), ("best head", s.mean(0).max(-1))):
            cells = " | ".join(f"{per_layer[k]:.2f}" for k in layers)
            print(f"| {label[0]} | {label[1]} | {heads} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
