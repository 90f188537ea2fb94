"""A small CLIP tokenizer the project writes itself (no download).

The files are in CLIP's byte-level BPE format (``vocab.json`` + ``merges.txt``) so the
stock :class:`transformers.CLIPTokenizer` reads them. The vocabulary holds every byte
symbol (alone and word-final ``</w>``), so *any* text tokenizes without unknown
tokens, plus one whole-word token for each word of the world's captions (built by a
chain of merges, as CLIP's own merges build words). New tokens added later (textual
inversion's ``<c>``) go through ``tokenizer.add_tokens`` as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and ordered merges that tokenize each of ``words`` as one token."""
    symbols = list(bytes_to_unicode().values())
    vocab: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)
    for word in words:
        enc = "".join(bytes_to_unicode()[b] for b in word.lower().encode("utf-8"))
        if len(enc) < 2:
            continue
        # Merge left to right: ((p h) o) t ... then the word-final symbol.
        parts = list(enc[:-1]) + [enc[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merged = left + right
            if (left, right) not in merges:
                merges.append((left, right))
            if merged not in seen:
                vocab.append(merged)
                seen.add(merged)
            left = merged
    vocab += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer_files(folder: str | Path, words: list[str]) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` for ``words`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab_file, merges_file


def build_clip_tokenizer(folder: str | Path, words: list[str], model_max_length: int = 32):
    """A :class:`transformers.CLIPTokenizer` over the project vocabulary.

    ``vocab.json`` and ``merges.txt`` are written to ``folder``; the tokenizer's own
    ``save_pretrained`` adds ``tokenizer.json`` next to them.
    """
    from transformers import CLIPTokenizer  # deferred: heavy model library, only the DDB stages need it

    vocab, merges = build_vocab(words)
    write_tokenizer_files(folder, words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )
