"""A small CLIP BPE tokenizer over a fixed word list, written in the Hugging Face file layout.

CLIP's BPE splits a word into byte-level characters (the last one suffixed with `</w>`) and
applies merges by rank. Writing, for every word, the chain of left-to-right merges that
rebuilds it makes each listed word a single token; every byte-level character (with and
without `</w>`) is in the vocabulary too, so unknown words still tokenize (into pieces).
The shipped solids prior and the tests' tiny pipelines use this; Stable Diffusion ships its own.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_chars() -> list[str]:
  """GPT-2/CLIP's reversible byte -> printable unicode map, in byte order."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return [chars[b] for b in range(256)]


def build_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """Vocabulary and ranked merges that make each of `words` (lowercase ASCII) one token."""
  byte_chars = _byte_chars()
  vocab: dict[str, int] = {}
  for c in byte_chars:
    vocab.setdefault(c, len(vocab))
  for c in byte_chars:
    vocab.setdefault(c + "</w>", len(vocab))
  merges: list[tuple[str, str]] = []
  seen = set()
  for word in dict.fromkeys(w.lower() for w in words):
    if len(word) < 2:
      continue
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    left = pieces[0]
    for right in pieces[1:]:
      pair = (left, right)
      if pair not in seen:
        seen.add(pair)
        merges.append(pair)
      left = left + right
      vocab.setdefault(left, len(vocab))
  vocab[BOS] = len(vocab)
  vocab[EOS] = len(vocab)
  return vocab, merges


def write_clip_tokenizer(folder: str, words: Iterable[str], max_length: int = 16) -> None:
  """Writes vocab.json, merges.txt and the configs `CLIPTokenizer.from_pretrained` reads."""
  vocab, merges = build_vocab(words)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
    for a, b in merges:
      f.write(f"{a} {b}\n")
  specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
  with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
    json.dump(specials, f, indent=2)
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({**specials, "model_max_length": max_length, "do_lower_case": True,
               "tokenizer_class": "CLIPTokenizer", "clean_up_tokenization_spaces": True},
              f, indent=2)


def vocab_size(words: Iterable[str]) -> int:
  return len(build_vocab(words)[0])
