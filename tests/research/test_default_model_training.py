"""The training script and the probes of the embedded default model (research/default_model/):
the targets, losses and adapters they build, on tiny models and the real shapes generator."""
from __future__ import annotations

import pytest
import torch

from research.default_model import lm_probe
from research.default_model import train_default_model as train_module
from topovlm.default_model import build as dm_build


def test_drop_layers_renumbers():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from research.default_model.quick_eval import drop_layers

    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                num_attention_heads=2, num_key_value_heads=1, vocab_size=64),
        image_token_id=63,
    )
    model = LlavaForConditionalGeneration(cfg)
    keep = drop_layers(model, [1, 4])
    assert keep == [0, 2, 3, 5]
    layers = model.model.language_model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    assert model.config.text_config.num_hidden_layers == 4


def _train_script():
    """research/default_model/train_default_model.py, imported as a module."""
    return train_module


def test_relation_targets_say_which_object_is_left_and_higher():
    from topovlm.data.shapes import Scene, ShapeObject

    train = _train_script()
    plain, with_rel = train._global_specs(), train._global_specs(relations=True)
    assert [n for n, _, _ in with_rel[: len(plain)]] == [n for n, _, _ in plain]  # a prefix
    rel = {n: fn for n, _, fn in with_rel[len(plain):]}
    assert len(rel) == 12 * 11 // 2 * 2
    # red circle at row 0, col 2; blue square at row 3, col 2; green triangle at row 1, col 0
    scene = Scene((ShapeObject(0, 2, "red", "circle"), ShapeObject(1, 0, "green", "triangle"),
                   ShapeObject(3, 2, "blue", "square")))
    assert rel["order:col:red circle|blue square"](scene) == 0  # same column
    assert rel["order:row:red circle|blue square"](scene) == 1  # red is higher
    assert rel["order:col:red circle|green triangle"](scene) == 2  # red is further right
    assert rel["order:row:red circle|green triangle"](scene) == 1
    assert rel["order:col:red square|blue square"](scene) == 0  # red square absent


def test_oversample_weights_categories_and_rejects_unknown_ones():
    from topovlm.data import shapes

    train = _train_script()
    assert train.parse_oversample("") == {}
    assert train.sampling_weights([], {}) is None  # uniform: the sampling of earlier runs
    samples = shapes.generate_split("train", 40, seed=3)
    w = train.sampling_weights(samples, train.parse_oversample("spatial=3"))
    assert {(s.category, float(x)) for s, x in zip(samples, w)} == \
        {(c, 3.0 if c == "spatial" else 1.0) for c in {s.category for s in samples}}
    for bad in ("spatail=2", "spatial=", "spatial=-1", "spatial=two"):
        with pytest.raises(SystemExit, match="--oversample: .*colour, shape, spatial"):
            train.parse_oversample(bad)


def test_where_questions_ask_an_objects_row_or_column_on_its_own_image():
    from topovlm.data import shapes

    train = _train_script()
    records = shapes.generate_records("train", 30, seed=5)
    where = train.where_questions(records, 60, seed=1)
    assert {q.category for _, q in where} == {"where"} and train.parse_oversample("where=2")
    kinds = set()
    for k, q in where:
        rec = records[k]
        assert q.image is rec.sample.image
        obj = next(o for o in rec.scene.objects if f"the {o.name}," in q.question)
        axis = "column" if "column" in q.question else "row"
        kinds.add(axis)
        assert q.answer == str(1 + (obj.col if axis == "column" else obj.row))
    assert kinds == {"row", "column"}
    assert [q.question for _, q in where] == [q.question for _, q in train.where_questions(records, 60, seed=1)]


def test_lora_from_a_weights_file_may_grow_its_rank_without_changing_the_model():
    train = _train_script()
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 7)
    old = train.LoRALinear(base, rank=4, alpha=16.0)
    old.B.data.normal_()
    x = torch.randn(5, 12)
    exported = {"A": old.A.data.clone(), "B_eff": old.B.data * old.scale}  # as export_state writes it
    for rank in (4, 8):
        new = {"m": train.LoRALinear(base, rank=rank, alpha=16.0)}
        train.load_lora_init(new, {"m": exported})
        assert torch.allclose(new["m"](x), old(x), atol=1e-5)
    with pytest.raises(AssertionError, match="below the earlier run's rank"):
        train.load_lora_init({"m": train.LoRALinear(base, rank=2, alpha=16.0)}, {"m": exported})


def test_lora_from_a_weights_file_may_add_targets_but_not_drop_them():
    train = _train_script()
    torch.manual_seed(0)
    q, k = torch.nn.Linear(12, 7), torch.nn.Linear(12, 3)
    old = train.LoRALinear(q, rank=4, alpha=16.0)
    old.B.data.normal_()
    x = torch.randn(5, 12)
    exported = {"layers.0.q_proj": {"A": old.A.data.clone(), "B_eff": old.B.data * old.scale}}
    new = {"layers.0.q_proj": train.LoRALinear(q, rank=8, alpha=16.0),
           "layers.0.k_proj": train.LoRALinear(k, rank=8, alpha=16.0)}
    train.load_lora_init(new, exported)
    assert torch.allclose(new["layers.0.q_proj"](x), old(x), atol=1e-5)
    assert torch.equal(new["layers.0.k_proj"](x), k(x))  # the added target starts as a no-op
    with pytest.raises(AssertionError, match=r"missing: \['q_proj'\]"):
        train.load_lora_init({"layers.0.k_proj": train.LoRALinear(k, rank=8, alpha=16.0)}, exported)


def _lm_probe():
    return lm_probe


def test_lm_probe_labels_follow_the_question_and_the_scene():
    from topovlm.data import shapes

    lm_probe = _lm_probe()
    records = [r for r in shapes.generate_records("train", 60, seed=2) if r.sample.category == "spatial"]
    assert records
    for r in records:
        lab = lm_probe.labels_of(r)
        below_or_right = any(w in r.sample.question for w in (" below ", " to the right of "))
        holds = (lab["position_a"] > lab["position_b"]) if below_or_right else lab["comparison"]
        assert lab["answer"] == int(holds)  # the benchmark's answer, recomputed from the labels
        assert lab["comparison"] == int(lab["position_a"] < lab["position_b"])
        horizontal = any(w in r.sample.question for w in (" to the left of ", " to the right of "))
        assert lab["position_a"] == lab["column_a" if horizontal else "row_a"]


def test_token_position_head_targets_are_each_tokens_own_cell_and_can_be_learnt():
    import torch

    from topovlm.data import shapes
    from topovlm.default_model.build import visual_token_index

    train = _train_script()
    head = train.TokenPositionHead(width=24)
    row, col = head.targets(train.NUM_IMAGE_TOKENS)
    for r in shapes.generate_records("train", 10, seed=4):
        for o in r.scene.objects:  # one token per cell: the token showing the object is at its cell
            t = visual_token_index(o.row, o.col, shapes.CELL)
            assert (row[t].item(), col[t].item()) == (o.row, o.col)
    # features that hold the position (with noise) are learnt to 1.0; shuffled rows are not
    torch.manual_seed(0)
    T = train.NUM_IMAGE_TOKENS
    feats = torch.eye(T, 24).expand(8, T, 24) + 0.1 * torch.randn(8, T, 24)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first, _ = head.loss(feats)
    for _ in range(200):
        loss, acc = head.loss(feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert acc["token_position"] == 1.0 and loss.item() < 0.1 * first.item()
    _, shuffled = head.loss(feats[:, torch.randperm(T)])
    assert shuffled["token_position"] < 0.5


def test_token_content_head_reads_each_tokens_own_cell():
    import torch

    from topovlm.data import shapes

    train = _train_script()
    scenes = [r.scene for r in shapes.generate_records("train", 64, seed=4)]
    cells = train.aux_targets(scenes)
    assert sorted(cells["colour"][cells["colour"] > 0].unique().tolist()) == [1, 2, 3, 4]
    # features holding each token's own colour and shape (one-hot, with noise) are learnt to 1.0;
    # the same features with the images' tokens shuffled are not
    torch.manual_seed(0)
    onehot = torch.cat([torch.nn.functional.one_hot(cells[k][..., 0], n) for k, n in (("colour", 5), ("shape", 4))], -1)
    feats = onehot.float() + 0.1 * torch.randn(onehot.shape)
    head = train.TokenPositionHead(width=feats.shape[-1], content=True)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        loss, acc = head.loss(feats, cells)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert acc["token_content"] == 1.0
    _, shuffled = head.loss(feats[:, torch.randperm(feats.shape[1])], cells)
    assert shuffled["token_content"] < 0.8


def test_token_positions_are_fitted_into_the_projector_without_moving_its_output():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from topovlm.data import shapes

    train = _train_script()
    pix = train.pixels([r.sample.image for r in shapes.generate_records("train", 64, seed=5)])

    cells = train.aux_targets([r.scene for r in shapes.generate_records("train", 64, seed=5)])

    def fit(drift_weight, content=False):
        torch.manual_seed(0)
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(**{**dm_build.VISION_CONFIG, "num_hidden_layers": 1}),
            text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2, vocab_size=64),
            vision_feature_layer=-1)
        model = LlavaForConditionalGeneration(cfg)
        for p in model.parameters():
            p.requires_grad_(False)
        tower = model.model.vision_tower
        # a tower whose tokens keep their position, as the trained one does (0.82-0.92 readable)
        tower.embeddings.position_embedding.weight.mul_(50)
        before = {k: v.clone() for k, v in tower.state_dict().items()}
        head = train.TokenPositionHead(width=32, content=content)
        res = train.fit_token_positions(model, head, pix, steps=100, lr=1e-2, batch=32, seed=0,
                                        drift_weight=drift_weight, cells=cells)
        assert all(torch.equal(v, before[k]) for k, v in tower.state_dict().items())
        return res

    kept, free = fit(10.0), fit(0.0)
    assert kept["token_position"] > 0.4  # chance: 1/16 for row and column both right
    assert kept["drift"] < 0.05  # the language model's view of the tokens barely moves
    assert free["drift"] > 5 * kept["drift"]  # and it is the drift loss that holds it
    # a content head reads each token's own cell only if its targets follow the drawn images
    # (a token shows nothing 78% of the time); without the drift loss the tiny random tower
    # learns it within the same steps
    content = fit(0.0, content=True)
    assert content["token_content"] > 0.95


def _tiny_llama_lm(seed: int = 0):
    """A 3-layer Llama with grouped-query attention (4 query heads on 2 key-value heads)."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, attn_implementation="eager")
    lm = LlamaModel(cfg).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm


class _AsLlava:
    """The attribute path GroundingLoss reads (``model.model.language_model``) around a bare LM."""

    def __init__(self, lm):
        self.model = type("Inner", (), {"language_model": lm})()
        self.config = type("Config", (), {"text_config": lm.config})()


def test_grounding_loss_recomputes_the_attention_the_model_runs():
    train = _train_script()
    lm = _tiny_llama_lm()
    ground = train.GroundingLoss(_AsLlava(lm), layer=1, heads=(0, 3))
    embeds = torch.randn(2, 12, 32)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 10:] = 0  # a right-padded row, as in training batches
    pairs = [[(5, 2, 0), (9, 7, 5)], [(8, 1, 15)]]  # (query, key, visual token index)
    ground.set(pairs)
    att = lm(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions[1]
    want = torch.stack([att[0, [0, 3], 5, 2], att[0, [0, 3], 9, 7], att[1, [0, 3], 8, 1]])
    loss, share = ground.result
    assert torch.allclose(ground.probs, want, atol=1e-5)  # rotary, grouped-query and causal mask right
    assert share == pytest.approx(want.mean().item(), abs=1e-5)
    assert loss.item() == pytest.approx(-want.log().mean().item(), abs=1e-4)
    ground.set([[], []])  # a batch without grounded questions adds no loss
    lm(inputs_embeds=embeds, attention_mask=mask)
    assert ground.result is None
    # with the position head, its cross-entropy on each named object's row and column is added
    torch.manual_seed(0)
    with_position = train.GroundingLoss(_AsLlava(lm), layer=1, heads=(0, 3), position=True)
    with_position.set(pairs)
    lm(inputs_embeds=embeds, attention_mask=mask)
    extra = with_position.result[0] - ground_loss_of(train, lm, pairs, embeds, mask)
    assert extra.item() > 0.5  # about 2 * log(4) for a fresh head
    assert with_position.position_acc is not None


def ground_loss_of(train, lm, pairs, embeds, mask):
    ground = train.GroundingLoss(_AsLlava(lm), layer=1, heads=(0, 3))
    ground.set(pairs)
    lm(inputs_embeds=embeds, attention_mask=mask)
    return ground.result[0]


def test_grounding_loss_teaches_a_head_to_find_the_named_token():
    train = _train_script()
    lm = _tiny_llama_lm(seed=1)
    ground = train.GroundingLoss(_AsLlava(lm), layer=2, heads=(1,), position=True)
    table = torch.randn(8, 32)  # eight "objects"; the query position names one of them
    slot = torch.randn(4, 32) * 0.5  # what each slot's token carries about where it is
    torch.manual_seed(2)

    def batch(n=32):
        objs = torch.stack([torch.randperm(8)[:4] for _ in range(n)])  # 4 objects in slots 0-3
        named = torch.randint(0, 4, (n,))
        x = torch.randn(n, 6, 32) * 0.1
        x[:, :4] += table[objs] + slot
        x[:, 5] += table[objs[torch.arange(n), named]]  # the mention, at the last position
        return x, [[(5, int(k), int(k))] for k in named]  # slot k: row 0, column k

    params = list(ground.parameters())
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        lin = getattr(lm.layers[2].self_attn, name)
        lin.weight.requires_grad_(True)
        params.append(lin.weight)
    opt = torch.optim.Adam(params, lr=1e-2)

    def share(x, pairs):
        ground.set(pairs)
        lm(inputs_embeds=x)
        return ground.result

    x_val, p_val = batch(256)
    with torch.no_grad():
        before = share(x_val, p_val)[1]
        position_before = ground.position_acc
    for _ in range(150):
        loss, _ = share(*batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = share(x_val, p_val)[1]
    assert before < 0.3 and after > 0.6  # 4 candidates and 2 other keys: chance about 1/6
    # and the attention output at the mention says where the named object is (chance 1/4)
    assert position_before < 0.5 and ground.position_acc > 0.8
    with pytest.raises(SystemExit, match="heads are 0-3"):
        train.GroundingLoss(_AsLlava(lm), layer=0, heads=(4,))
    with pytest.raises(SystemExit, match="layers 0-2"):
        train.GroundingLoss(_AsLlava(lm), layer=3, heads=(0,))
