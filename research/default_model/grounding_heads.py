"""Which attention heads look at the image where a question names an object? The measurement
behind ``--ground-heads`` / ``--ground-layer`` of ``research/default_model/train_default_model.py``.

For the spatial questions among ``--n`` draws (training split, seed 30000), at the last token of
each named object's name, per decoder layer and head: the attention probability on all 16
visual tokens (``image``) and on the named object's own token (``target``), computed by the
training script's ``GroundingLoss`` (the same recomputation of the layer's attention that the
grounding loss trains). Uniform attention over the visual tokens puts ``image / 16`` on the target.

    .venv/bin/python research/default_model/grounding_heads.py                                   # committed weights
    .venv/bin/python research/default_model/grounding_heads.py --weights runs/x/vision.safetensors --layers 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.build import NUM_IMAGE_TOKENS, build_model  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.smollm2 import ensure_language_model  # noqa: E402 - after the sys.path set-up above


def _train_script():
    from research.default_model import train_default_model

    return train_default_model


@torch.no_grad()
def head_attention(train, model, processor, records, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, target): mean attention probability per head of ``layer``, over every named object."""
    samples = [r.sample for r in records]
    tokd = train.Tokenized(processor, samples)
    pairs = train.grounding_pairs(processor, samples, [r.scene for r in records], tokd)
    pix = train.pixels([s.image for s in samples])
    n_heads = model.config.text_config.num_attention_heads
    ground = train.GroundingLoss(model, layer, tuple(range(n_heads)))
    ids, attn, labels = tokd.batch(list(range(len(samples))), processor.tokenizer.pad_token_id)
    first = (ids == model.config.image_token_id).float().argmax(1).tolist()

    def probs(batch_pairs):
        ground.set(batch_pairs)
        train.lm_forward(model, ids, attn, labels, pix, False)
        return ground.probs

    target = probs(pairs).mean(0)
    every_token = [[(q, first[r] + j, j) for q, _, _ in ps for j in range(NUM_IMAGE_TOKENS)]
                   for r, ps in enumerate(pairs)]
    image = probs(every_token).view(-1, NUM_IMAGE_TOKENS, n_heads).sum(1).mean(0)
    ground.remove()
    return image, target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="default", help="a vision.safetensors (default: the committed one)")
    ap.add_argument("--n", type=int, default=400, help="questions drawn (training split, seed 30000)")
    ap.add_argument("--layers", default="2,4,6,8,10,12,14,16,18", help="decoder layers to report")
    args = ap.parse_args()
    train = _train_script()
    model, processor = build_model(ensure_language_model(None), weights=args.weights)
    model.eval()
    records = [r for r in shapes.generate_records("train", args.n, seed=30_000)
               if r.sample.category == "spatial"]
    n_heads = model.config.text_config.num_attention_heads
    print(f"weights {args.weights}; {len(records)} spatial questions, two named objects each; attention "
          "probability at the last token of an object's name: image / target per head\n")
    print("| layer | " + " | ".join(f"head {h}" for h in range(n_heads)) + " |")
    print("| --- | " + " | ".join("---" for _ in range(n_heads)) + " |")
    for layer in (int(x) for x in args.layers.split(",")):
        image, target = head_attention(train, model, processor, records, layer)
        print(f"| {layer} | " + " | ".join(f"{i:.2f} / {t:.3f}" for i, t in zip(image, target)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
