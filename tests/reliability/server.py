"""Request bodies for server.toml (`body_setup`): bytes a TOML string cannot hold, or too long to
write out."""

from __future__ import annotations

import json
from pathlib import Path


def latin1_body(tmp: Path, run: Path) -> bytes:
    return '{"texts": ["Café was fine."]}'.encode("latin-1")  # é as the one byte 0xE9


def utf16_body(tmp: Path, run: Path) -> bytes:
    return '{"texts": ["It was fine."]}'.encode("utf-16")  # with its byte order mark


def utf8_bom_body(tmp: Path, run: Path) -> bytes:
    return '{"texts": ["It was fine."]}'.encode("utf-8-sig")  # as Windows Notepad saves it


def nested_100k(tmp: Path, run: Path) -> bytes:
    return b"[" * 100_000  # over the served body limit (16,160 bytes): refused by size


def nested_15k(tmp: Path, run: Path) -> bytes:
    return b"[" * 7_500 + b"]" * 7_500  # within the limit, far past the parser's recursion limit


def nested_objects(tmp: Path, run: Path) -> bytes:
    return b'{"texts": ' + b'{"a": ' * 2_000 + b"null" + b"}" * 2_000 + b"}"


def huge_integer(tmp: Path, run: Path) -> bytes:
    return b'{"texts": ' + b"9" * 5_000 + b"}"


def many_numbers(tmp: Path, run: Path) -> bytes:
    return json.dumps({"texts": [1] * 5_000}).encode()


def long_extra_key(tmp: Path, run: Path) -> bytes:
    return json.dumps({"texts": ["It was fine."], "k" * 10_000: 1}).encode()


def over_limit(tmp: Path, run: Path) -> bytes:
    return json.dumps({"texts": ["x" * 20_000]}).encode()
