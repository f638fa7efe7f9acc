"""A CLIP BPE tokenizer in which every shapes-world word is a single token.

The vocabulary holds CLIP's 512 byte-level symbols (so any text tokenizes, unknown words falling back to
characters), the special tokens, and one merge chain per known word. `build_tokenizer` writes the stock
`vocab.json` + `merges.txt` files, so `CLIPTokenizer.from_pretrained` loads it with no custom code.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from analysis.toy.scenes import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 32  # longest caption is 17 tokens with BOS/EOS


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable-unicode map (same table as OpenAI's simple_tokenizer).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _write(out_dir: Path, merges: list[tuple[str, str]]) -> None:
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def _load(out_dir: Path) -> CLIPTokenizer:
    merges = [tuple(line.split()) for line in (out_dir / "merges.txt").read_text().splitlines()[1:] if line]
    return CLIPTokenizer(
        vocab=json.loads((out_dir / "vocab.json").read_text()),
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
    )


def _pieces(tokenizer: CLIPTokenizer, word: str) -> list[str]:
    return tokenizer.tokenize(word)


def build_tokenizer(out_dir: str | Path, words: list[str] | None = None) -> CLIPTokenizer:
    """Write a tokenizer whose vocabulary has each of `words` (default: the shapes world) as one token."""
    out_dir = Path(out_dir)
    words = words or vocabulary()
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    merges = list(dict.fromkeys(merges))
    # A merge from one word's chain can fire inside another word and strand it in several pieces;
    # appending a merge for the stranded pair (it has the lowest priority) fixes that word only.
    for _ in range(100):
        _write(out_dir, merges)
        tokenizer = _load(out_dir)
        broken = [(w, _pieces(tokenizer, w)) for w in words if len(_pieces(tokenizer, w)) != 1]
        if not broken:
            break
        for _, pieces in broken:
            merges.append((pieces[0], pieces[1]))
        merges = list(dict.fromkeys(merges))
    else:  # pragma: no cover - the loop converges in a few rounds for any word list
        raise RuntimeError("could not make every word a single token")
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def known_words(tokenizer: CLIPTokenizer) -> set[str]:
    """Words that are whole tokens of this vocabulary (byte-level single characters excluded)."""
    return {tok[: -len("</w>")] for tok in tokenizer.get_vocab() if tok.endswith("</w>") and len(tok) > 5}


def unknown_words(tokenizer: CLIPTokenizer, prompt: str) -> list[str]:
    """Words of `prompt` the model has never seen as a token: they reach it as characters."""
    known = known_words(tokenizer) | {"a"}
    return [w for w in prompt.lower().split() if w.strip(".,!?;:") not in known]
