"""Every case of tests/reliability/*.toml: what users bring, and what gptclf must do with it.

A `cli` case runs `gptclf <command>` in-process and checks the exit code, that the output is one
`gptclf: error:` line (an error) or names the problem in a warning, never a traceback; an `http`
case sends one request to a served tiny classifier and checks the status and that a 4xx body is
JSON. `test` cases are covered by the test they name (listed here so the record is complete).
`make reliability` runs this file and writes docs/RELIABILITY.md from the outcomes.
"""

from __future__ import annotations

import importlib.util
import logging
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from fixtures_tool import TRAIN_FLAGS, write_reviews
from gptclf.cli import main

CASES_DIR = Path(__file__).parent / "reliability"
KINDS = ("cli", "http", "test")
EXPECT = ("ok", "warning", "error")


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    input: str
    command: str = ""
    kind: str = "cli"
    setup: str = ""
    body: str | None = None
    body_setup: str = ""
    expect: str = "ok"
    exit: int | None = None
    status: int | None = None
    message: str = ""
    check: str = ""
    test: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def exit_code(self) -> int:
        return self.exit if self.exit is not None else (2 if self.expect == "error" else 0)

    @property
    def user_command(self) -> str:
        """The command as a user would type it (placeholders left in), for the record."""
        if self.kind == "cli":
            return "gptclf " + self.command.replace("{train}", "…")
        if self.kind == "http":
            return f"{self.command} (gptclf serve RUN)"
        return self.test


def load_cases(folder: Path = CASES_DIR) -> list[Case]:
    """All cases, in file then row order; a malformed row fails loudly (the record must be true)."""
    cases, seen = [], set()
    names = {f.name for f in Case.__dataclass_fields__.values()} - {"area", "extra"}
    for path in sorted(folder.glob("*.toml")):
        for row in tomllib.loads(path.read_text(encoding="utf-8")).get("case", []):
            unknown = set(row) - names
            case = Case(area=path.stem, **{k: v for k, v in row.items() if k in names})
            assert not unknown, f"{path.name} {row.get('id')}: unknown keys {sorted(unknown)}"
            assert case.id not in seen, f"duplicate case id {case.id}"
            assert case.kind in KINDS and case.expect in EXPECT, case.id
            assert case.command or case.kind == "test", case.id
            assert case.test or case.kind != "test", case.id
            seen.add(case.id)
            cases.append(case)
    return cases


def function(name: str) -> Callable[..., Any]:
    """`area.function` from tests/reliability/area.py."""
    module_name, func = name.split(".")
    spec = importlib.util.spec_from_file_location(
        f"reliability_{module_name}", CASES_DIR / f"{module_name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, func)


CASES = load_cases()


@pytest.fixture
def case_dir(tmp_path: Path, reviews_run: Path) -> tuple[Path, Path]:
    """The case's folder and its own copy of the tiny classifier (cases may damage it)."""
    run = tmp_path / "run_copy"
    shutil.copytree(reviews_run, run)
    write_reviews(tmp_path / "data.csv")
    return tmp_path, run


def expand(command: str, tmp: Path, run: Path) -> list[str]:
    text = command.replace("{tmp}", str(tmp)).replace("{run}", str(run))
    text = text.replace(
        "{data}", f"{tmp}/data.csv --text-column review_body --label-column sentiment"
    )
    return [a for part in shlex.split(text) for a in (TRAIN_FLAGS if part == "{train}" else [part])]


@pytest.fixture(scope="module")
def served(reviews_run: Path) -> Iterator[str]:
    from gptclf import Classifier
    from gptclf.server import Limits, create_app, running

    app = create_app(Classifier.load(reviews_run), Limits(max_texts=8, max_chars=2000))
    with running(app) as url:
        yield url


def run_cli(case: Case, tmp: Path, run: Path, capsys, caplog) -> str:
    with caplog.at_level(logging.INFO):
        code = main(expand(case.command, tmp, run))
    out, err = capsys.readouterr()
    said = err + caplog.text
    assert "Traceback" not in out + said
    assert code == case.exit_code, f"exit {code}, expected {case.exit_code}:\n{said}"
    if case.expect == "error":
        errors = [line for line in err.splitlines() if line.startswith("gptclf:")]
        assert len(errors) == 1, err
        assert case.message.lower() in errors[0].lower(), errors[0]
    elif case.expect == "warning":
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(case.message.lower() in w.lower() for w in warned), warned
    return out


def run_http(case: Case, tmp: Path, run: Path, url: str) -> str:
    method, path = case.command.split(maxsplit=1)
    body = function(case.body_setup)(tmp, run) if case.body_setup else case.body
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        reply = client.request(method, path, content=body, headers=headers)
    assert reply.status_code == case.status, reply.text
    if 400 <= reply.status_code < 500:
        assert "error" in reply.json() or "detail" in reply.json(), reply.text
        assert case.message.lower() in reply.text.lower(), reply.text
    return reply.text


@pytest.mark.parametrize("case", [c for c in CASES if c.kind != "test"], ids=lambda c: c.id)
def test_case(case: Case, case_dir, capsys, caplog, request) -> None:
    tmp, run = case_dir
    if case.setup:
        function(case.setup)(tmp, run)
    if case.kind == "cli":
        output = run_cli(case, tmp, run, capsys, caplog)
    else:
        output = run_http(case, tmp, run, request.getfixturevalue("served"))
    if case.check:
        function(case.check)(tmp, output)


def test_named_tests_exist() -> None:
    """Each `test` case names a test that exists (so the record never points at nothing)."""
    root = Path(__file__).parent.parent
    for case in (c for c in CASES if c.kind == "test"):
        file, _, name = case.test.partition("::")
        source = (root / file).read_text(encoding="utf-8")
        assert f"def {name.split('[')[0]}(" in source, case.test
