"""bench/gpu_validate.py on a saved tiny LLaVA replica on CPU: its table and exit code, and a
reload that does not give back the pruned model (a weight changed on disk) failing it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

# small enough for a CPU: three scorers (one refused by its own check), four questions
ARGS = ["--device", "cpu", "--task", "shapes", "--limit", "4", "--calibration-n", "17", "--scorers", "cosine,topo,ppl",
        "--parity-n", "4", "--parity-max-new-tokens", "4", "--no-write"]
ROWS = ["load", "capture", "score: cosine", "score: topo", "score: ppl", "reference eval (unpruned)", "protocol parity",
        "pruned eval", "save + reload"]


def _main(script: str = "gpu_validate"):
    """A bench script's ``main`` (bench/ is no package: loaded from its file, registered for its dataclasses)."""
    if script not in sys.modules:
        spec = importlib.util.spec_from_file_location(script, ROOT / "bench" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[script] = module
        spec.loader.exec_module(module)
    return sys.modules[script].main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from topovlm.adapters.tiny import tiny_llava

    model, processor = tiny_llava(num_layers=6)
    path = tmp_path_factory.mktemp("tiny_llava_ckpt")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _table(out: str) -> dict[str, tuple[str, str]]:
    """step -> (status, detail) of the printed markdown table."""
    rows = {}
    for line in out[out.index("| step |"):].splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = (cells[1], cells[-1])
    return rows


def test_validates_a_saved_replica(checkpoint, tmp_path, capsys):
    code = _main()([str(checkpoint), *ARGS, "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = _table(out)
    assert code == 0, out[-3000:]
    assert list(rows) == ROWS
    assert {step: status for step, (status, _) in rows.items()} == {
        **{step: "ok" for step in ROWS}, "score: ppl": "skip"}
    assert "num_samples=32 > calibration.n=17" in rows["score: ppl"][1]  # a skip says why
    assert "every tensor bit-equal, 4 answers equal" in rows["save + reload"][1]
    assert "lmms_exact = lmms-eval's own class" in rows["protocol parity"][1]
    assert "**PASS**" in out
    # the parity row prints both prompts and their ids before the table
    assert "lmms-eval's own class, as it called the processor:" in out and "ids: [" in out


def test_a_changed_weight_after_saving_fails_the_run(checkpoint, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    from topovlm import export

    write = export.write_checkpoint
    changed = []

    def write_then_corrupt(adapter, out_dir, results):
        path = write(adapter, out_dir, results)
        file = Path(out_dir) / "model.safetensors"
        tensors = load_file(file)
        name = next(k for k in sorted(tensors) if ".layers.0." in k and k.endswith("q_proj.weight"))
        tensors[name] = tensors[name] + 1e-3  # one weight of the saved model, a little off
        save_file(tensors, file, metadata={"format": "pt"})
        changed.append(name)
        return path

    monkeypatch.setattr(export, "write_checkpoint", write_then_corrupt)
    code = _main()([str(checkpoint), *ARGS, "--cache-dir", str(tmp_path)])
    captured = capsys.readouterr()
    rows = _table(captured.out)
    assert code == 1
    status, detail = rows["save + reload"]
    # the file's legacy key names differ from the model's: the layer and module are what must match
    assert status == "FAIL" and "1 tensors differ after reload" in detail
    assert changed[0].split("layers.", 1)[1] in detail.split("layers.", 1)[1]
    assert "FAILED: save + reload" in captured.err and "**FAIL (save + reload)**" in captured.out


def test_gpu_smoke_parity_prints_both_prompts_on_a_saved_qwen_replica(tmp_path, capsys):
    from topovlm.adapters.tiny import tiny_qwen2_vl

    model, processor = tiny_qwen2_vl(num_layers=4)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    code = _main("gpu_smoke")(["--parity", "--model", "qwen2-vl-7b", "--path", str(tmp_path), "--device", "cpu",
                               "--dtype", "float32", "--parity-n", "2", "--parity-max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    harness = out[out.index("harness prompt"):out.index("lmms_exact prompt")]
    lmms = out[out.index("lmms-eval's own class, as it called the processor:"):out.index("| doc |")]
    # lmms-eval's qwen2_vl sends its system message; the replica's template adds none of its own
    assert "You are a helpful assistant." in lmms and "You are a helpful assistant." not in harness
    assert harness.count(" ids: [") == 1 and lmms.count(" ids: [") == 1
    assert "| 1 |" in out and "lmms_exact = lmms-eval's own class" in out
