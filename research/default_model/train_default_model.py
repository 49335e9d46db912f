#!/usr/bin/env python
"""Train the default model's vision tower and projector (one command, reproducible).

    python research/default_model/train_default_model.py --out runs/default_model

Recipe (defaults):

1. Stage A, auxiliary pretraining of the vision tower (no language model): every
   visual token predicts its cell's colour and shape, and every token also predicts
   the image's global counts (per colour, per shape, total), so that the 16 tokens
   carry both local and global, answer-relevant information.
2. Stage B, alignment through SmolLM2-135M-Instruct: the prompt is built
   exactly as at evaluation time (``processor.apply_chat_template`` with an image and
   the question, generation prompt, then the answer and ``<|im_end|>``); the loss is
   cross-entropy on the answer tokens and the end-of-turn token only, plus the stage-A
   auxiliary loss (weight ``--aux-weight``). Trainable: vision tower, projector and
   rank-8 LoRA adapters on the language model's q/v/o/up/down projections
   (``--lora-rank``, ``--lora-targets``; rank 0 keeps the language model frozen).
   Options the committed weights' last run used: ``--relation-targets`` (the auxiliary
   targets also say, for every pair of colour-shape combinations, which one is further
   left and which one is higher) and ``--oversample spatial=2`` (stage B draws spatial
   questions twice as often); ``--init-from`` continues an earlier run's checkpoint, or
   a weights file such as the committed one (its auxiliary heads are not in the file:
   stage A then fits them on the frozen vision tower; ``--lora-rank`` may grow).
   ``--where-questions N`` adds N training-only questions about one object's row or
   column (category ``where``), the lookups that every spatial question is made of.
   ``--ground-heads H --ground-layer L`` supervises that lookup's attention (GroundingLoss:
   at each object a spatial or where-question names, heads H of layer L attend to the
   object's own visual token), and ``--ground-position`` makes what they fetch carry the
   object's row and column; ``research/default_model/grounding_heads.py`` measures which heads look at the
   image there.
3. The result (``vision.safetensors``; float16 vision tower + projector [+ LoRA]) and
   ``meta.json`` (recipe, timings, accuracies) are written to ``--out``; copy them to
   ``topovlm/default_model/weights/`` to make them the default.

Accuracy during training is teacher-forced exact match (every answer token and the
end-of-turn token are the argmax), which equals greedy-decoding exact match.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model.build import (  # noqa: E402 - after the sys.path set-up above
    IMAGE_TOKEN, NUM_IMAGE_TOKENS, PATCH_SIZE, build_model, visual_token_index,
)
from topovlm.default_model.smollm2 import ensure_language_model  # noqa: E402 - after the sys.path set-up above

COLOUR_IDS = {c: i + 1 for i, c in enumerate(shapes.COLOURS)}
SHAPE_IDS = {s: i + 1 for i, s in enumerate(shapes.SHAPES)}


def _global_specs(relations: bool = False):
    """Image-level auxiliary targets: (name, number of classes, function of a scene).

    Besides counts they include the values that questions ask for (sums and
    differences of counts, the colour of each shape, the shape of each colour, the row
    and column of each colour-shape combination), so the visual tokens carry
    answer-relevant global information that the language model only has to look up.
    With ``relations`` they also include, for every pair of colour-shape combinations,
    which one is further left and which one is higher (the spatial questions' answers).
    """
    specs = []
    attrs = list(shapes.COLOURS) + list(shapes.SHAPES)
    specs.append(("count:all", shapes.MAX_OBJECTS + 1, lambda sc: sc.count(None)))
    for a in attrs:
        specs.append((f"count:{a}", shapes.MAX_OBJECTS + 1, lambda sc, a=a: sc.count(a)))
    for group in (list(shapes.COLOURS), list(shapes.SHAPES)):
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                specs.append((f"sum:{a}+{b}", shapes.MAX_OBJECTS + 1,
                              lambda sc, a=a, b=b: sc.count(a) + sc.count(b)))
            for b in group:
                if b != a:
                    specs.append((f"diff:{a}-{b}", 9,
                                  lambda sc, a=a, b=b: sc.count(a) - sc.count(b) + 4))

    def colour_of(sc, shape):
        hits = [o.colour for o in sc.objects if o.shape == shape]
        return 0 if not hits else (COLOUR_IDS[hits[0]] if len(hits) == 1 else len(COLOUR_IDS) + 1)

    def shape_of(sc, colour):
        hits = [o.shape for o in sc.objects if o.colour == colour]
        return 0 if not hits else (SHAPE_IDS[hits[0]] if len(hits) == 1 else len(SHAPE_IDS) + 1)

    def where(sc, c, s, axis):
        hits = [o for o in sc.objects if o.colour == c and o.shape == s]
        return 0 if not hits else 1 + (hits[0].row if axis == "row" else hits[0].col)

    for sh in shapes.SHAPES:
        specs.append((f"colour_of:{sh}", len(COLOUR_IDS) + 2, lambda sc, sh=sh: colour_of(sc, sh)))
    for c in shapes.COLOURS:
        specs.append((f"shape_of:{c}", len(SHAPE_IDS) + 2, lambda sc, c=c: shape_of(sc, c)))
    for c in shapes.COLOURS:
        for sh in shapes.SHAPES:
            for axis in ("row", "col"):
                specs.append((f"{axis}:{c} {sh}", shapes.GRID + 1,
                              lambda sc, c=c, sh=sh, axis=axis: where(sc, c, sh, axis)))
    if relations:
        # appended last, so that a run without them is a prefix (see --init-from)
        combos = [(c, sh) for c in shapes.COLOURS for sh in shapes.SHAPES]

        def order(sc, a, b, axis):
            pa, pb = where(sc, *a, axis), where(sc, *b, axis)
            return 0 if not (pa and pb) or pa == pb else (1 if pa < pb else 2)

        for i, a in enumerate(combos):
            for b in combos[i + 1:]:
                for axis in ("col", "row"):
                    specs.append((f"order:{axis}:{' '.join(a)}|{' '.join(b)}", 3,
                                  lambda sc, a=a, b=b, axis=axis: order(sc, a, b, axis)))
    return specs


GLOBAL_SPECS = _global_specs()


def use_relation_targets() -> None:
    """Switch the auxiliary targets to :func:`_global_specs` with relations."""
    global GLOBAL_SPECS
    GLOBAL_SPECS = _global_specs(relations=True)


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


# ----------------------------------------------------------------------------- data
def pixels(images) -> torch.Tensor:
    """CLIPImageProcessor-equivalent preprocessing for 64x64 RGB images."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def token_cell(o) -> tuple[int, int]:
    """(visual token index, slot within the token) of an object's cell."""
    k = PATCH_SIZE // shapes.CELL  # cells per patch side
    per_side = shapes.IMAGE_SIZE // PATCH_SIZE
    tok = (o.row // k) * per_side + (o.col // k)
    return tok, (o.row % k) * k + (o.col % k)


def aux_targets(scenes) -> dict[str, torch.Tensor]:
    n = len(scenes)
    slots = (PATCH_SIZE // shapes.CELL) ** 2
    colour = torch.zeros(n, NUM_IMAGE_TOKENS, slots, dtype=torch.long)
    shape = torch.zeros(n, NUM_IMAGE_TOKENS, slots, dtype=torch.long)
    counts = torch.zeros(n, len(GLOBAL_SPECS), dtype=torch.long)
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            t, j = token_cell(o)
            colour[i, t, j] = COLOUR_IDS[o.colour]
            shape[i, t, j] = SHAPE_IDS[o.shape]
        for j, (_, _, fn) in enumerate(GLOBAL_SPECS):
            counts[i, j] = fn(sc)
    return {"colour": colour, "shape": shape, "counts": counts}


WHERE_CATEGORY = "where"  # training-only questions; never in a benchmark split


def where_questions(records, n: int, seed: int) -> list:
    """``n`` training-only questions about one object's row or column, asked on the
    images of ``records`` ("In which column is the red circle, counting from the left?"),
    as (index of the record, question) pairs.

    The spatial questions compare two objects' positions: 264 ordered pairs and axes,
    each rarely seen. These questions teach the 24 single-object position lookups
    that every spatial question is made of, shared across all pairs.
    """
    from topovlm.data.types import VQASample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(len(records))
        r = records[k]
        o = rng.choice(r.scene.objects)
        if rng.random() < 0.5:
            q, a = f"In which column is the {o.name}, counting from the left?", o.col + 1
        else:
            q, a = f"In which row is the {o.name}, counting from the top?", o.row + 1
        out.append((k, VQASample(id=f"where-{seed}-{i:06d}", image=r.sample.image,
                                 question=f"{q} Answer with a number.", answer=str(a),
                                 domain="non_math", category=WHERE_CATEGORY)))
    return out


def prompt(processor, question: str) -> str:
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)


class Tokenized:
    """Token ids + label masks of training prompts (exactly the evaluation prompt path)."""

    def __init__(self, processor, samples):
        tok = processor.tokenizer
        end = "<|im_end|>"
        self.ids, self.n_target = [], []
        expanded = IMAGE_TOKEN * NUM_IMAGE_TOKENS
        for s in samples:
            p = prompt(processor, s.question).replace(IMAGE_TOKEN, expanded)
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            a_ids = tok(s.answer + end, add_special_tokens=False)["input_ids"]
            self.ids.append(p_ids + a_ids)
            self.n_target.append(len(a_ids))

    def batch(self, idx, pad_id: int):
        L = max(len(self.ids[i]) for i in idx)
        input_ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), L), dtype=torch.long)
        labels = torch.full((len(idx), L), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            ids = self.ids[i]
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attn[r, : len(ids)] = 1
            k = self.n_target[i]
            labels[r, len(ids) - k: len(ids)] = torch.tensor(ids[-k:])
        return input_ids, attn, labels


def check_prompt_path(processor, samples, tokd: Tokenized) -> None:
    """Our cached inputs must equal what the processor produces at evaluation time."""
    for j, s in enumerate(samples[:8]):
        text = prompt(processor, s.question) + s.answer + "<|im_end|>"
        ref = processor(images=[s.image], text=[text], return_tensors="pt")
        assert ref["input_ids"][0].tolist() == tokd.ids[j], "token ids differ from processor"
        assert torch.allclose(ref["pixel_values"][0].float(), pixels([s.image])[0], atol=1e-5), \
            "pixel values differ from processor"


# ----------------------------------------------------------------------------- model parts
class AuxHeads(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.slots = (PATCH_SIZE // shapes.CELL) ** 2
        self.colour = nn.Linear(width, self.slots * (len(COLOUR_IDS) + 1))
        self.shape = nn.Linear(width, self.slots * (len(SHAPE_IDS) + 1))
        self.sizes = [k for _, k, _ in GLOBAL_SPECS]
        self.kmax = max(self.sizes)
        self.counts = nn.Linear(width, len(self.sizes) * self.kmax)
        mask = torch.zeros(len(self.sizes), self.kmax)
        for j, k in enumerate(self.sizes):
            mask[j, k:] = -1e4
        self.register_buffer("mask", mask, persistent=False)

    def global_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, n_specs, kmax) logits of the image-level targets, every token predicting all."""
        B, T, _ = tokens.shape
        return self.counts(tokens).view(B, T, len(self.sizes), self.kmax) + self.mask

    def loss(self, tokens: torch.Tensor, tgt: dict[str, torch.Tensor]):
        """tokens: (B, T, W) visual tokens before the projector."""
        B, T, _ = tokens.shape
        col = self.colour(tokens).view(B, T, self.slots, -1)
        shp = self.shape(tokens).view(B, T, self.slots, -1)
        lc = F.cross_entropy(col.flatten(0, 2), tgt["colour"].flatten())
        ls = F.cross_entropy(shp.flatten(0, 2), tgt["shape"].flatten())
        glob = self.global_logits(tokens)
        lcount = F.cross_entropy(glob.flatten(0, 2),
                                 tgt["counts"][:, None, :].expand(B, T, -1).flatten())
        pred = glob.mean(1).argmax(-1)
        with torch.no_grad():
            acc = {
                "cell": ((col.argmax(-1) == tgt["colour"])
                         & (shp.argmax(-1) == tgt["shape"])).float().mean().item(),
                "global": (pred == tgt["counts"]).float().mean().item(),
            }
        return lc + ls + lcount, acc


class TokenPositionHead(nn.Module):
    """Each projected visual token (what the language model reads) predicts its own patch's
    row and column, and with ``content`` also what its own cell shows (colour and shape, or
    empty).

    The vision tower keeps each token's position and content, but the projector of the
    committed weights drops the position and most of the content
    (``research/default_model/token_position_probe.py``), so attention cannot find an object's token by its
    content, nor fetch a position from it. This head makes both part of what the language
    model reads.
    """

    def __init__(self, width: int, content: bool = False):
        super().__init__()
        self.per_side = shapes.IMAGE_SIZE // PATCH_SIZE
        self.linear = nn.Linear(width, 2 * self.per_side)
        self.content = content
        if content:
            self.slots = (PATCH_SIZE // shapes.CELL) ** 2
            self.colour = nn.Linear(width, self.slots * (len(COLOUR_IDS) + 1))
            self.shape = nn.Linear(width, self.slots * (len(SHAPE_IDS) + 1))

    def targets(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) of each visual token, in the vision tower's row-major patch order."""
        t = torch.arange(n_tokens)
        return t // self.per_side, t % self.per_side

    def loss(self, feats: torch.Tensor, cells: dict[str, torch.Tensor] | None = None):
        """feats: (B, T, W) projected visual tokens; ``cells``: the images' ``aux_targets``
        (``colour`` and ``shape``, (B, T, slots), 0 = empty), needed with ``content``.
        Returns the loss and the accuracies: ``token_position`` (row and column both right)
        and, with ``content``, ``token_content`` (colour and shape of every slot right)."""
        B, T, _ = feats.shape
        logits = self.linear(feats).view(B, T, 2, self.per_side)
        row, col = self.targets(T)
        tgt = torch.stack([row, col], -1).expand(B, T, 2)
        loss = F.cross_entropy(logits.flatten(0, 2), tgt.flatten())
        with torch.no_grad():
            acc = {"token_position": (logits.argmax(-1) == tgt).all(-1).float().mean().item()}
        if self.content:
            right = torch.ones(B, T, self.slots, dtype=torch.bool)
            for name in ("colour", "shape"):
                lg = getattr(self, name)(feats).view(B, T, self.slots, -1)
                loss = loss + F.cross_entropy(lg.flatten(0, 2), cells[name].flatten())
                right &= lg.argmax(-1) == cells[name]
            acc["token_content"] = right.all(-1).float().mean().item()
        return loss, acc


def load_heads_prefix(heads: AuxHeads, state: dict[str, torch.Tensor]) -> None:
    """Load auxiliary heads trained on a prefix of the current ``GLOBAL_SPECS``."""
    own = heads.state_dict()
    for k, v in state.items():
        if own[k].shape == v.shape:
            own[k] = v
        else:  # counts head: rows are (spec, class), the earlier specs come first
            own[k][: v.shape[0]] = v
    heads.load_state_dict(own)


def load_init(path: str) -> dict:
    """An earlier run to continue: its ``checkpoint.pt``, or a weights file / directory
    (``vision.safetensors``, e.g. the committed default), which has no auxiliary heads."""
    p = Path(path)
    if p.is_dir():
        p = p / "vision.safetensors"
    if p.suffix != ".safetensors":
        init = torch.load(p, weights_only=False)
        assert init.get("stage") == "B" and "proj" in init, f"{path}: no stage-B checkpoint"
        return init
    from safetensors.torch import load_file

    sd = {k: v.float() for k, v in load_file(str(p)).items()}
    lora = {}
    for k, v in sd.items():
        if k.startswith("lora."):
            name, part = k[len("lora."):].rsplit(".", 1)
            lora.setdefault(name, {})[part] = v
    scale = float(sd["lora_scale"].item()) if "lora_scale" in sd else 1.0
    for ab in lora.values():  # the file holds B * scale; "B_eff" is the product the model uses
        ab["B_eff"] = ab.pop("B") * scale
    return {
        "stage": "B", "step": 0, "heads": None,
        "vt": {k[len("vision_tower."):]: v for k, v in sd.items() if k.startswith("vision_tower.")},
        "proj": {k[len("multi_modal_projector."):]: v for k, v in sd.items()
                 if k.startswith("multi_modal_projector.")},
        "lora": lora,
    }


def load_lora_init(loras: dict[str, LoRALinear], init_lora: dict) -> None:
    """Copy earlier adapters into ``loras``. From a weights file the rank may grow: the
    earlier adapter fills the first rows and the extra rows start as a fresh adapter
    (random A, zero B), so the model computes the same function at the start. For the
    same reason targets may be added (they start fresh), never dropped."""
    dropped = sorted({n.rsplit(".", 1)[-1] for n in set(init_lora) - set(loras)})
    assert not dropped, f"--lora-targets must keep the earlier run's targets; missing: {dropped}"
    for name, m in loras.items():
        if name not in init_lora:
            continue  # an added target: random A, zero B
        a = init_lora[name]["A"]
        if "B_eff" in init_lora[name]:
            b = init_lora[name]["B_eff"] / m.scale
        else:  # a checkpoint's B goes with its own scale, alpha / rank
            b = init_lora[name]["B"]
            assert a.shape == m.A.shape, "--init-from a checkpoint.pt needs the same --lora-rank"
        r = a.shape[0]
        assert r <= m.A.shape[0], f"--lora-rank {m.A.shape[0]} is below the earlier run's rank {r}"
        m.A.data[:r].copy_(a)
        m.B.data.zero_()
        m.B.data[:, :r].copy_(b)


def visual_tokens(model, pix: torch.Tensor) -> torch.Tensor:
    out = model.model.vision_tower(pix, output_hidden_states=True)
    return out.hidden_states[-1][:, 1:]


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(model, rank: int, alpha: float, targets: tuple[str, ...]) -> dict[str, LoRALinear]:
    lm = model.model.language_model
    added = {}
    for name, mod in list(lm.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                wrapped = LoRALinear(child, rank, alpha)
                setattr(mod, child_name, wrapped)
                added[f"{name}.{child_name}" if name else child_name] = wrapped
    return added


def export_state(model, loras: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in model.model.vision_tower.state_dict().items():
        sd[f"vision_tower.{k}"] = v.detach().to(torch.float16).contiguous()
    for k, v in model.model.multi_modal_projector.state_dict().items():
        sd[f"multi_modal_projector.{k}"] = v.detach().to(torch.float16).contiguous()
    for name, m in loras.items():
        sd[f"lora.{name}.A"] = m.A.detach().to(torch.float16).contiguous()
        sd[f"lora.{name}.B"] = (m.B.detach() * m.scale).to(torch.float16).contiguous()
    if loras:
        sd["lora_scale"] = torch.tensor([1.0])
    return sd


@torch.no_grad()
def match_projector_scale(model, pix, fh=None) -> None:
    """Rescale the freshly initialised projector so that its inputs are O(1) per unit
    and its outputs have the norm of the language model's word embeddings.

    The vision tower's last hidden states (pre-norm residual stream) have norms around
    100 after stage A; unscaled, the visual tokens would enter the language model about
    60x larger than text tokens and barely be updated by its layers, which slows
    alignment down considerably.
    """
    proj = model.model.multi_modal_projector
    v = visual_tokens(model, pix)
    proj.linear_1.weight.mul_(math.sqrt(v.shape[-1]) / v.norm(dim=-1).mean())
    f = proj(v)
    target = model.model.language_model.embed_tokens.weight.norm(dim=-1).mean()
    ratio = target / f.norm(dim=-1).mean()
    proj.linear_2.weight.mul_(ratio)
    proj.linear_2.bias.mul_(ratio)
    log(f"projector rescaled: visual token norm {v.norm(dim=-1).mean():.1f}, "
        f"projected {proj(v).norm(dim=-1).mean():.2f} (word embeddings {target:.2f})", fh)


def fit_token_positions(model, pos_head, pix, steps: int, lr: float, batch: int, seed: int,
                        drift_weight: float = 10.0, fh=None, cells=None) -> dict[str, float]:
    """Teach the projector to carry each visual token's position (and with a content head its
    own cell's content, from ``cells``, the images' ``aux_targets``) before stage B.

    The projector and the position head are trained alone (the vision tower and the language
    model are frozen), with the position loss plus a loss that keeps the projector's output
    where the language model has learnt to read it: the squared distance to the initial
    projector's output, relative to that output's mean squared norm. Without it the position
    would be learnt through stage B's language-model steps (about 500 on the committed weights,
    half an hour here) before the language model could start to use it.
    """
    proj = model.model.multi_modal_projector
    base_proj = copy.deepcopy(proj).requires_grad_(False)  # the output to stay close to
    params = list(proj.parameters()) + list(pos_head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 3)
    t0 = time.time()
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, min(50, steps // 10), lr)
        idx = torch.randint(0, len(pix), (batch,), generator=g)
        with torch.no_grad():  # the tower and the reference projector are not trained
            toks = visual_tokens(model, pix[idx])
            ref = base_proj(toks)
        feats = proj(toks)
        keep = (feats - ref).pow(2).sum(-1).mean() / ref.pow(2).sum(-1).mean()
        pos_loss, accs = pos_head.loss(feats, _cells_of(cells, idx, pos_head))
        opt.zero_grad(set_to_none=True)
        (pos_loss + drift_weight * keep).backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"P {step:5d} {_fmt_accs(accs)} position_loss={pos_loss.item():.4f} "
                f"drift={keep.item():.4f} ({time.time() - t0:.0f}s)", fh)
    return {**accs, "drift": keep.item(), "seconds": time.time() - t0}


def _cells_of(cells, idx, pos_head):
    """The content targets of images ``idx``, where the head predicts content."""
    return {k: cells[k][idx] for k in ("colour", "shape")} if pos_head.content else None


def _fmt_accs(accs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in accs.items())


# ----------------------------------------------------------------------------- grounding
GROUNDED_CATEGORIES = ("spatial", WHERE_CATEGORY)  # questions whose answer is a named object's position


def named_objects(question: str, scene) -> list:
    """The objects of ``scene`` that ``question`` names ("the red circle"), in the order named."""
    found = sorted((question.find(f"the {o.name}"), k) for k, o in enumerate(scene.objects))
    return [scene.objects[k] for at, k in found if at >= 0]


def grounding_pairs(processor, samples, scenes, tokd: Tokenized) -> list[list[tuple[int, int, int]]]:
    """For every sample of a grounded category, one (query, key, token) triple per named object:
    the positions of the last token of the object's name in the prompt and of the object's own
    visual token, and that token's index among the image's (:func:`visual_token_index`). Other
    samples: none."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    expanded = IMAGE_TOKEN * NUM_IMAGE_TOKENS
    out = []
    for s, scene, ids in zip(samples, scenes, tokd.ids):
        pairs = []
        if s.category in GROUNDED_CATEGORIES:
            p = prompt(processor, s.question).replace(IMAGE_TOKEN, expanded)
            first_image = ids.index(image_id)
            for o in named_objects(s.question, scene):
                head = p[: p.index(f"the {o.name}") + len(f"the {o.name}")]
                head_ids = tok(head, add_special_tokens=False)["input_ids"]
                assert head_ids == ids[: len(head_ids)], f"{s.id}: the name does not end on a token boundary"
                token = visual_token_index(o.row, o.col, shapes.CELL)
                pairs.append((len(head_ids) - 1, first_image + token, token))
        out.append(pairs)
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class GroundingLoss:
    """Attention supervision of a lookup: heads ``heads`` of decoder layer ``layer``, at the
    last token of a named object's name, attend to that object's own visual token.

    Every spatial question is made of two such lookups, and stage B alone forms them too slowly
    here (``research/default_model/attention_probe.py``: twice uniform after 1000 steps). The loss is the negative
    log of the attention probability on the object's token, over all keys the query sees,
    recomputed from the layer's own (LoRA-adapted) query and key projections and rotary
    embeddings, so it trains exactly the attention the model runs. At inference the model is
    unchanged: nothing is added to it.

    With ``position`` a linear head (``self.head``, trained with the adapters) also reads the
    named object's row and column from the layer's attention output at the mention: attention
    alone fetches what the object is, not where it is (``research/default_model/lm_probe.py``: the position is
    not readable at the mention after the heads attend to the object), and this makes the
    fetched value carry the position.
    """

    def __init__(self, model, layer: int, heads: tuple[int, ...], position: bool = False):
        layers = model.model.language_model.layers
        n_heads = model.config.text_config.num_attention_heads
        if not 0 <= layer < len(layers):
            raise SystemExit(f"--ground-layer {layer}: the language model has layers 0-{len(layers) - 1}")
        if not heads or not all(0 <= h < n_heads for h in heads):
            raise SystemExit(f"--ground-heads {','.join(map(str, heads))}: heads are 0-{n_heads - 1}")
        self.attn = layers[layer].self_attn
        self.heads = torch.tensor(heads)
        self.n_heads = n_heads
        self.pairs = None  # (row in batch, query position, key position, visual token), set per step
        self.result = self.probs = self.position_acc = None
        self.per_side = shapes.IMAGE_SIZE // PATCH_SIZE
        self.head = (nn.Linear(model.config.text_config.hidden_size, 2 * self.per_side)
                     if position else None)
        self.hooks = [self.attn.register_forward_pre_hook(self._attention_hook, with_kwargs=True)]
        if position:
            self.hooks.append(self.attn.register_forward_hook(self._position_hook))

    def remove(self) -> None:
        """Detach from the layer (the model then runs as if never supervised)."""
        for h in self.hooks:
            h.remove()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters()) if self.head is not None else []

    def set(self, batch_pairs: list[list[tuple[int, int, int]]]) -> None:
        rows = [(r, *t) for r, pairs in enumerate(batch_pairs) for t in pairs]
        self.pairs = torch.tensor(rows, dtype=torch.long).view(-1, 4) if rows else None
        self.result = self.position_acc = None

    def _position_hook(self, module, args, output):
        if self.pairs is None:
            return
        b, q, _, token = self.pairs.unbind(1)
        logits = self.head(output[0][b, q].float()).view(-1, 2, self.per_side)
        target = torch.stack([token // self.per_side, token % self.per_side], -1)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        self.position_acc = (logits.argmax(-1) == target).all(-1).float().mean().item()
        self.result = (self.result[0] + loss, self.result[1])

    def _attention_hook(self, module, args, kwargs):
        if self.pairs is None:
            return
        hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
        b, q, k, _ = self.pairs.unbind(1)
        B, T, _ = hs.shape
        cos, sin = cos.expand(B, T, -1), sin.expand(B, T, -1)  # one row when positions are shared
        hd = module.head_dim
        keys = module.k_proj(hs).view(B, T, -1, hd)
        keys = keys * cos[:, :, None] + _rotate_half(keys) * sin[:, :, None]
        query = module.q_proj(hs[b, q]).view(len(b), self.n_heads, hd)[:, self.heads]
        query = query * cos[b, q][:, None] + _rotate_half(query) * sin[b, q][:, None]
        kv = self.heads // (self.n_heads // keys.shape[2])  # grouped-query attention
        scores = torch.einsum("nhd,nthd->nht", query.float(), keys[b][:, :, kv].float()) * hd ** -0.5
        causal = torch.arange(T)[None, :] > q[:, None]  # keys after the query are not seen
        logp = scores.masked_fill(causal[:, None], float("-inf")).log_softmax(-1)
        on_target = logp[torch.arange(len(b)), :, k]  # n, heads
        self.probs = on_target.detach().exp()
        self.result = (-on_target.mean(), self.probs.mean().item())


# ----------------------------------------------------------------------------- LM step
def lm_forward(model, input_ids, attn, labels, pix, autocast: bool):
    """Answer-token loss and per-sample exact match; the LM head runs on target rows only."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        vis_tokens = visual_tokens(model, pix)
        feats = model.model.multi_modal_projector(vis_tokens)
        embeds = model.model.language_model.embed_tokens(input_ids)
        mask = (input_ids == model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attn,
                                            use_cache=False).last_hidden_state
        # position t predicts token t+1
        tgt = labels[:, 1:]
        sel = tgt != -100
        h = hidden[:, :-1][sel]
        logits = model.lm_head(h).float()
    y = tgt[sel]
    loss = F.cross_entropy(logits, y)
    correct = torch.ones(input_ids.shape[0], dtype=torch.bool)
    rows = sel.nonzero()[:, 0]
    wrong = logits.argmax(-1) != y
    correct[rows[wrong]] = False
    return loss, correct, vis_tokens, feats


@torch.no_grad()
def evaluate(model, tokd, pix_all, samples, pad_id, autocast, batch=64, grounding=None, pairs=None):
    """Exact match overall and per domain and category; with ``grounding`` and the samples'
    ``pairs`` also ``ground_share``, the mean attention of the grounded heads on the named
    objects' tokens."""
    model.eval()
    correct, shares = [], []
    for s in range(0, len(samples), batch):
        idx = list(range(s, min(len(samples), s + batch)))
        ids, attn, labels = tokd.batch(idx, pad_id)
        if grounding is not None:
            grounding.set([pairs[i] for i in idx])
        _, c, _, _ = lm_forward(model, ids, attn, labels, pix_all[idx], autocast)
        correct.append(c)
        if grounding is not None and grounding.result is not None:
            shares.append((grounding.result[1], int(grounding.pairs.shape[0])))
    if grounding is not None:
        grounding.set([])
    correct = torch.cat(correct)
    res = {"overall": correct.float().mean().item()}
    for key in list(shapes.DOMAINS) + list(shapes.CATEGORIES):
        m = torch.tensor([key in (x.domain, x.category) for x in samples])
        res[key] = correct[m].float().mean().item() if m.any() else float("nan")
    if shares:
        res["ground_share"] = sum(v * n for v, n in shares) / sum(n for _, n in shares)
    return res


def fmt(res):
    return " ".join(f"{k}={v:.3f}" for k, v in res.items())


def lr_at(step, total, warmup, base, final_frac=0.05, progress=0.0):
    """Linear warm-up, then cosine decay over max(step progress, ``progress``)."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = max((step - warmup) / max(1, total - warmup), progress)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _non_negative(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _heads(text: str) -> tuple[int, ...]:
    try:
        heads = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        heads = ()
    if not heads or min(heads) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated head indices, got {text!r}")
    return heads


def parse_oversample(spec: str) -> dict[str, float]:
    """``'spatial=2,count=0.5'`` -> {category: sampling factor}; checked before any model loads."""
    factors = {}
    for item in filter(None, spec.split(",")):
        cat, _, text = item.partition("=")
        try:
            factor = float(text)
        except ValueError:
            factor = 0.0
        allowed = (*shapes.CATEGORIES, WHERE_CATEGORY)
        if cat not in allowed or not factor > 0:  # also rejects nan
            raise SystemExit(f"--oversample: {item!r} is not CATEGORY=FACTOR with a positive FACTOR "
                             f"and CATEGORY one of {', '.join(allowed)}")
        factors[cat] = factor
    return factors


def sampling_weights(samples, factors: dict[str, float]) -> torch.Tensor | None:
    """Per-sample stage-B sampling weights (None: uniform, the sampling of runs without them)."""
    if not factors:
        return None
    return torch.tensor([factors.get(s.category, 1.0) for s in samples], dtype=torch.double)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache-dir", default=None, help="cache for the converted SmolLM2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--val-size", type=int, default=160)
    ap.add_argument("--aux-steps", type=int, default=500)
    ap.add_argument("--aux-batch", type=int, default=128)
    ap.add_argument("--aux-lr", type=float, default=2e-3)
    ap.add_argument("--lm-steps", type=int, default=400)
    ap.add_argument("--lm-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="projector / LoRA learning rate")
    ap.add_argument("--vision-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--aux-weight", type=float, default=0.2)
    ap.add_argument("--lora-rank", type=int, default=8, help="0 = frozen language model")
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--lora-targets", default="q_proj,v_proj,o_proj,up_proj,down_proj")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                    help="bfloat16 autocast (slower than float32 on CPUs without native bf16)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--ckpt-every", type=int, default=20)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="time budget of stage B: the LR schedule follows max(step, time) progress")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stage-a", default=None, help="reuse a stage_a.pt from an earlier run")
    ap.add_argument("--oversample", default="",
                    help="stage-B sampling weights per category, e.g. 'spatial=2' (default: uniform "
                         "over training questions)")
    ap.add_argument("--where-questions", type=_non_negative, default=0,
                    help="add this many training-only questions about one object's row or column "
                         "(category 'where', also accepted by --oversample)")
    ap.add_argument("--relation-targets", action="store_true",
                    help="auxiliary targets also say which of two objects is left of / above the other")
    ap.add_argument("--token-positions", action="store_true",
                    help="stage B: each projected visual token also predicts its own row and "
                         "column (TokenPositionHead), weighted as the auxiliary loss")
    ap.add_argument("--token-content", action="store_true",
                    help="with --token-positions: the head also predicts each token's own cell "
                         "content (colour and shape, or empty), so that attention can find an "
                         "object's token by what it shows")
    ap.add_argument("--position-steps", type=_non_negative, default=0,
                    help="with --token-positions: steps fitting the projector and the position "
                         "head alone before stage B (see fit_token_positions)")
    ap.add_argument("--position-lr", type=float, default=2e-3,
                    help="learning rate of those steps")
    ap.add_argument("--position-drift-weight", type=float, default=10.0,
                    help="weight of the projector-drift loss in those steps")
    ap.add_argument("--ground-heads", type=_heads, default=(),
                    help="stage B: these heads of --ground-layer, at each object a spatial or "
                         "where-question names, are trained to attend to that object's own visual "
                         "token (GroundingLoss), e.g. '0,4'; default: none")
    ap.add_argument("--ground-layer", type=_non_negative, default=8,
                    help="decoder layer of --ground-heads")
    ap.add_argument("--ground-weight", type=float, default=1.0,
                    help="weight of the grounding loss")
    ap.add_argument("--ground-position", action="store_true",
                    help="with --ground-heads: the layer's attention output at each mention also "
                         "predicts the named object's row and column (a linear head), so that the "
                         "lookup fetches where the object is")
    ap.add_argument("--init-from", default=None,
                    help="start from an earlier run's checkpoint.pt or continuation.pt (vision tower, "
                         "heads, projector, LoRA); stage A then runs --aux-steps on top of it")
    args = ap.parse_args(argv)
    args.command = "python research/default_model/train_default_model.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    if args.position_steps and not args.token_positions:
        ap.error("--position-steps needs --token-positions (it fits the token-position head)")
    if args.ground_position and not args.ground_heads:
        ap.error("--ground-position needs --ground-heads (it reads what those heads fetch)")
    if args.token_content and not args.token_positions:
        ap.error("--token-content needs --token-positions (it extends the token-position head)")
    oversample = parse_oversample(args.oversample)
    if args.relation_targets:
        use_relation_targets()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / "train.log", "a")
    t_start = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    log(f"args: {vars(args)}", fh)

    lm_dir = ensure_language_model(args.cache_dir)
    model, processor = build_model(lm_dir, weights=None, seed=args.seed)
    pad_id = processor.tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)

    t0 = time.time()
    train = shapes.generate_records("train", args.train_size, seed=args.seed)
    val_records = shapes.generate_records("train", args.val_size, seed=10_000 + args.seed)
    val = [r.sample for r in val_records]
    train_samples = [r.sample for r in train]
    record_of = list(range(len(train)))  # training question -> its image / scene
    val_where = []
    if args.where_questions:
        where = where_questions(train, args.where_questions, seed=args.seed)
        train_samples += [q for _, q in where]
        record_of += [i for i, _ in where]
        # the same kind of question on validation images, to watch it being learnt
        val_where = [q for _, q in where_questions(val_records, args.val_size // 2, seed=args.seed + 1)]
    record_of = torch.tensor(record_of)
    train_pix = pixels([r.sample.image for r in train])
    val_pix = pixels([s.image for s in val])
    val_where_pix = pixels([s.image for s in val_where]) if val_where else None
    train_aux = aux_targets([r.scene for r in train])
    tok_train = Tokenized(processor, train_samples)
    tok_val = Tokenized(processor, val)
    tok_val_where = Tokenized(processor, val_where) if val_where else None
    check_prompt_path(processor, train_samples, tok_train)
    log(f"data: {len(train)} train (+{len(train_samples) - len(train)} where-questions), "
        f"{len(val)} val in {time.time() - t0:.1f}s", fh)

    vt = model.model.vision_tower
    proj = model.model.multi_modal_projector
    heads = AuxHeads(model.config.vision_config.hidden_size)
    ckpt_path = out / "checkpoint.pt"
    state = torch.load(ckpt_path, weights_only=False) if (args.resume and ckpt_path.exists()) else None
    timings = state["timings"] if state else {}
    init = None
    if args.init_from and state is None:
        init = load_init(args.init_from)
        vt.load_state_dict(init["vt"])
        if init["heads"] is not None:
            load_heads_prefix(heads, init["heads"])
            log(f"initialised from {args.init_from} (its step {init['step']})", fh)
        else:
            log(f"initialised from {args.init_from} (a weights file: stage A fits the auxiliary "
                "heads on the frozen vision tower)", fh)

    # ---------------- stage A
    if state is None and args.stage_a:
        sa = torch.load(args.stage_a, weights_only=False)
        state = {"stage": "B", "step": 0, "vt": sa["vt"], "heads": sa["heads"], "timings": {}}
        log(f"stage A weights from {args.stage_a}", fh)
    if state is None or state["stage"] == "A":
        # new heads on a trained tower (a weights file): fit the heads alone first, so
        # their random start does not disturb the features the language model reads
        heads_only = init is not None and init["heads"] is None
        for p in vt.parameters():
            p.requires_grad_(not heads_only)
        opt = torch.optim.AdamW(list(heads.parameters()) + ([] if heads_only else list(vt.parameters())),
                                lr=args.aux_lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(args.seed + 1)
        tA = time.time()
        vt.train()
        for step in range(args.aux_steps):
            for pg in opt.param_groups:
                pg["lr"] = lr_at(step, args.aux_steps, 50, args.aux_lr)
            idx = torch.randint(0, len(train), (args.aux_batch,), generator=g)
            with torch.set_grad_enabled(not heads_only):
                toks = visual_tokens(model, train_pix[idx])
            loss, acc = heads.loss(toks, {k: v[idx] for k, v in train_aux.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == args.aux_steps - 1:
                log(f"A {step:5d} loss={loss.item():.4f} cell={acc['cell']:.3f} "
                    f"global={acc['global']:.3f} ({time.time() - tA:.0f}s)", fh)
        timings["stage_a_s"] = time.time() - tA
        state = None
        torch.save({"vt": vt.state_dict(), "heads": heads.state_dict()}, out / "stage_a.pt")
        torch.save({"stage": "B", "step": 0, "vt": vt.state_dict(), "heads": heads.state_dict(),
                    "timings": timings}, ckpt_path)
    elif state is not None:
        vt.load_state_dict(state["vt"])
        heads.load_state_dict(state["heads"])

    # ---------------- stage B
    loras = {}
    if args.lora_rank > 0:
        loras = add_lora(model, args.lora_rank, args.lora_alpha,
                         tuple(args.lora_targets.split(",")))
    for p in vt.parameters():
        p.requires_grad_(True)
    for p in proj.parameters():
        p.requires_grad_(True)
    lora_params = [p for m in loras.values() for p in (m.A, m.B)]
    pos_head = (TokenPositionHead(model.config.text_config.hidden_size, content=args.token_content)
                if args.token_positions else None)
    grounding = (GroundingLoss(model, args.ground_layer, args.ground_heads, position=args.ground_position)
                 if args.ground_heads else None)
    groups = [
        {"params": list(vt.parameters()) + list(heads.parameters()), "lr": args.vision_lr,
         "base": args.vision_lr},
        {"params": list(proj.parameters()) + (list(pos_head.parameters()) if pos_head else [])
         + (grounding.parameters() if grounding else []), "lr": args.lr, "base": args.lr},
    ]
    if lora_params:
        groups.append({"params": lora_params, "lr": args.lr, "base": args.lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    start = 0
    if state is not None and state.get("stage") == "B" and "proj" in state:
        vt.load_state_dict(state["vt"])
        heads.load_state_dict(state["heads"])
        proj.load_state_dict(state["proj"])
        for name, m in loras.items():
            m.A.data.copy_(state["lora"][name]["A"])
            m.B.data.copy_(state["lora"][name]["B"])
        if (state.get("pos_head") is not None) != args.token_positions:
            raise SystemExit(f"--resume: {ckpt_path} was written "
                             f"{'without' if args.token_positions else 'with'} --token-positions; "
                             "resume with the same flags")
        if pos_head is not None:
            pos_head.load_state_dict(state["pos_head"])
        if (state.get("ground_head") is not None) != bool(grounding and grounding.head is not None):
            raise SystemExit(f"--resume: {ckpt_path} was written with other --ground-position; "
                             "resume with the same flags")
        if state.get("ground_head") is not None:
            grounding.head.load_state_dict(state["ground_head"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        log(f"resumed stage B at step {start}", fh)
    elif init is not None:
        proj.load_state_dict(init["proj"])
        load_lora_init(loras, init["lora"])
        if pos_head is not None and init.get("pos_head") is not None:
            # an earlier run's head may lack the content part, which then starts fresh
            missing, unexpected = pos_head.load_state_dict(init["pos_head"], strict=False)
            assert not unexpected and all(k.split(".")[0] in ("colour", "shape") for k in missing), \
                f"--init-from: position head mismatch ({missing + unexpected})"
        if grounding is not None and grounding.head is not None and init.get("ground_head") is not None:
            grounding.head.load_state_dict(init["ground_head"])
    else:
        match_projector_scale(model, train_pix[:256], fh)
    if args.position_steps and start == 0:
        fit = fit_token_positions(model, pos_head, train_pix, args.position_steps, args.position_lr,
                                  args.aux_batch, args.seed, args.position_drift_weight, fh,
                                  cells=train_aux)
        timings["position_fit_s"] = fit["seconds"]
    ground_pairs = None
    val_ground = {}  # evaluate() keywords: held-out attention on the named objects
    if grounding is not None:
        ground_pairs = grounding_pairs(processor, train_samples, [train[i].scene for i in record_of.tolist()],
                                       tok_train)
        val_ground = {"grounding": grounding,
                      "pairs": grounding_pairs(processor, val, [r.scene for r in val_records], tok_val)}
        log(f"grounding: layer {args.ground_layer} heads {list(args.ground_heads)}, "
            f"{sum(map(len, ground_pairs))} lookups in {sum(1 for p in ground_pairs if p)} questions", fh)
    n_trainable = sum(p.numel() for g_ in groups for p in g_["params"])
    log(f"stage B: {n_trainable} trainable parameters, lora={len(loras)} modules", fh)

    history = []
    if init is not None and start == 0:  # the run continued, as loaded: its accuracy before any step
        res = evaluate(model, tok_val, val_pix, val, pad_id, args.bf16, **val_ground)
        history.append({"step": 0, **res})
        log(f"B     0 VAL (as initialised) {fmt(res)}", fh)
    g = torch.Generator().manual_seed(args.seed + 2 + start)
    weights = sampling_weights(train_samples, oversample)
    tB = time.time()
    prev_b = timings.get("stage_b_s", 0.0)
    step = start
    while step < args.lm_steps:
        model.train()
        elapsed = prev_b + time.time() - tB
        progress = elapsed / (args.max_minutes * 60) if args.max_minutes else 0.0
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.lm_steps, args.warmup, pg["base"], progress=progress)
        if weights is None:
            idx = torch.randint(0, len(train_samples), (args.lm_batch,), generator=g).tolist()
        else:
            idx = torch.multinomial(weights, args.lm_batch, replacement=True, generator=g).tolist()
        ids, attn, labels = tok_train.batch(idx, pad_id)
        rec = record_of[idx]
        if grounding is not None:
            grounding.set([ground_pairs[i] for i in idx])
        loss, correct, toks, feats = lm_forward(model, ids, attn, labels, train_pix[rec], args.bf16)
        aux_loss, _ = heads.loss(toks.float(), {k: v[rec] for k, v in train_aux.items()})
        pos_accs = None
        if pos_head is not None:
            pos_loss, pos_accs = pos_head.loss(feats.float(), _cells_of(train_aux, rec, pos_head))
            aux_loss = aux_loss + pos_loss
        total = loss + args.aux_weight * aux_loss
        if grounding is not None and grounding.result is not None:
            ground_loss, ground_share = grounding.result
            total = total + args.ground_weight * ground_loss
            pos_accs = {**(pos_accs or {}), "ground_share": ground_share}
            if grounding.position_acc is not None:
                pos_accs["ground_position"] = grounding.position_acc
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for g_ in groups for p in g_["params"]], 1.0)
        opt.step()
        step += 1
        elapsed = prev_b + time.time() - tB
        if step % 10 == 0:
            log(f"B {step:5d} loss={loss.item():.4f} aux={aux_loss.item():.3f} "
                f"train_em={correct.float().mean().item():.3f}"
                + ("" if pos_accs is None else " " + _fmt_accs(pos_accs))
                + f" ({elapsed:.0f}s, "
                f"{elapsed / max(1, step - 0):.2f}s/step)", fh)
        stop = args.max_minutes and elapsed > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.lm_steps or stop:
            res = evaluate(model, tok_val, val_pix, val, pad_id, args.bf16, **val_ground)
            if val_where:
                res[WHERE_CATEGORY] = evaluate(model, tok_val_where, val_where_pix, val_where,
                                               pad_id, args.bf16)["overall"]
            history.append({"step": step, **res})
            log(f"B {step:5d} VAL {fmt(res)}", fh)
            (out / "history.json").write_text(json.dumps(history, indent=1))
        if step % args.ckpt_every == 0 or step == args.lm_steps or stop:
            timings["stage_b_s"] = elapsed
            trained = {"stage": "B", "step": step, "vt": vt.state_dict(),
                       "heads": heads.state_dict(), "proj": proj.state_dict(),
                       "lora": {n: {"A": m.A.data, "B": m.B.data} for n, m in loras.items()},
                       "pos_head": pos_head.state_dict() if pos_head is not None else None,
                       "ground_head": (grounding.head.state_dict()
                                       if grounding is not None and grounding.head is not None else None)}
            torch.save({**trained, "opt": opt.state_dict(), "timings": timings}, ckpt_path)
            # what a later run needs to continue (--init-from), without the optimizer's state and
            # in float16: a quarter of checkpoint.pt, small enough to keep with the results
            torch.save({**_half(trained), "timings": timings}, out / "continuation.pt")
            save_weights(model, loras, out, args, timings, step, history)
        if stop:
            log("time budget reached", fh)
            break
    timings["stage_b_s"] = prev_b + time.time() - tB
    timings["total_s"] = time.time() - t_start
    save_weights(model, loras, out, args, timings, step, history)
    log(f"done in {timings['total_s']:.0f}s; weights in {out / 'vision.safetensors'}", fh)
    return out


def _half(state):
    """``state`` with every floating-point tensor in float16 (nested dicts kept)."""
    if isinstance(state, dict):
        return {k: _half(v) for k, v in state.items()}
    if isinstance(state, torch.Tensor) and state.is_floating_point():
        return state.to(torch.float16)
    return state


def save_weights(model, loras, out: Path, args, timings, step, history) -> None:
    from safetensors.torch import save_file

    save_file(export_state(model, loras), str(out / "vision.safetensors"))
    meta = {
        "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "cache_dir", "resume", "command")},
        "lm_steps_done": step,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                    f"torch {torch.__version__} threads={torch.get_num_threads()}",
        "command": args.command,
        "val_history": history,  # every validation point: where accuracy was heading when the run stopped
        "frozen_language_model": not loras,
    }
    if args.init_from:  # the run this one continued, so the whole chain stays reproducible
        init_path = Path(args.init_from)
        earlier = init_path / "meta.json" if init_path.is_dir() else init_path.with_name("meta.json")
        meta["init_from"] = json.loads(earlier.read_text()) if earlier.exists() else str(args.init_from)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
