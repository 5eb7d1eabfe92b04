"""A tiny, offline CLIP tokenizer for tests and the tiny backbone.

:func:`write_tiny_clip_tokenizer` writes the SD-1.5 tokenizer file layout (``vocab.json``,
``merges.txt``, ``tokenizer_config.json``) for a vocabulary made of the 256 GPT-2/CLIP byte symbols
(each also in its end-of-word form ``<sym></w>``), one whole-word token per listed word, and the
``<|startoftext|>`` / ``<|endoftext|>`` specials. ``transformers.CLIPTokenizer.from_pretrained(folder)``
loads it like the real one. Any text is encodable: words outside the list fall back to one token per
byte, so e.g. ``"spiderman"`` (listed) is one token and does *not* contain the token ``"man"``, just
as with the real CLIP vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DEFAULT_WORDS", "bytes_to_unicode", "write_tiny_clip_tokenizer"]

#: Words that become single tokens by default: enough for the tests and the demo prompts.
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "and", "the", "in", "on", "with", "of", "is", "at",
    "man", "woman", "spiderman", "polar", "bear", "iron", "cat", "cats", "dog", "red", "blue", "green",
    "tree", "trees", "cherry", "blossoms", "sunglasses", "car", "shirt", "hat", "street", "park",
    "snow", "grass", "sky", "road", "running", "walking", "wearing", "playing", "photo", "video",
)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP table mapping each byte to a printable unicode symbol."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _word_symbols(word: str, table: dict[int, str]) -> list[str]:
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    # Reference BPE: repeatedly merge the lowest-ranked adjacent pair (what CLIP's tokenizer does).
    parts = list(symbols)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def write_tiny_clip_tokenizer(folder: str | Path, words: Iterable[str] = DEFAULT_WORDS) -> int:
    """Write a CLIP tokenizer folder whose vocabulary has one token per word of ``words``.

    :param folder: created if missing; existing tokenizer files are overwritten.
    :param words: lower-case words made of letters (CLIP lower-cases text and splits on non-letters).
    :returns: the vocabulary size (pass it as ``vocab_size`` to a tiny ``CLIPTextConfig``; the last
        two ids are ``<|startoftext|>`` and ``<|endoftext|>``).
    :raises ValueError: for a word that is not lower-case letters, or one that the merge table could
        not turn into a single token.
    """
    table = bytes_to_unicode()
    symbols = list(table.values())
    vocab: dict[str, int] = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)

    unique = list(dict.fromkeys(words))
    for word in unique:
        if not word or not word.isalpha() or word != word.lower():
            raise ValueError(f"tokenizer word {word!r} must be lower-case letters only")
    # Longer words first: their merge chains then outrank any shorter word's pair inside them
    # (e.g. "spiderman" stays one token although "man" has merges of its own).
    # A word first takes the merges already made (they outrank its own), then its remaining pieces
    # are chained left to right; a new merge never applies to an earlier word, which always has an
    # older, better-ranked merge available until it is a single token.
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(unique, key=len, reverse=True):
        parts = _bpe(_word_symbols(word, table), ranks)
        current = parts[0]
        for right in parts[1:]:
            pair = (current, right)
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            current += right
            vocab.setdefault(current, len(vocab))

    for word in unique:
        if len(_bpe(_word_symbols(word, table), ranks)) != 1:
            raise ValueError(f"tokenizer word {word!r} does not become a single token with this word list")

    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    config = {
        "model_max_length": 77,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)
