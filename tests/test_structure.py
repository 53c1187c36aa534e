"""The shape of the code: short functions, imports in one direction, a torch-free --help, one
flag per training option (and the same checks from the CLI and the API), no patched internals."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from gptclf.cli import build_parser, main
from gptclf.errors import GptclfError
from gptclf.train_config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "gptclf"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_function_is_longer_than_80_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def module_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Package modules `name` imports at module level (not inside functions, not for typing)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycle_between_package_modules():
    trees = sources()
    graph = {name: module_imports(name, tree, set(trees)) for name, tree in trees.items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["train", "--help"], ["train", "--recipe", "smollm2", "--help"], ["cv", "--help"]],
)
def test_help_does_not_import_torch(argv):
    code = (
        "import sys\n"
        "from gptclf.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def train_parser():
    subcommands = build_parser()._subparsers._group_actions[0]
    return subcommands.choices["train"]


def test_every_train_config_field_has_exactly_one_flag_and_back():
    actions = [a for a in train_parser()._actions if a.option_strings and a.dest != "help"]
    dests = [a.dest for a in actions if a.dest != "recipe"]  # --recipe picks defaults only
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(dests) == sorted(fields)
    assert len(dests) == len(set(dests))  # one flag each
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


BAD_VALUES = [
    ("epochs", "0", 0),
    ("lr", "-1", -1.0),
    ("lr", "nan", float("nan")),
    ("dropout", "inf", float("inf")),
    ("weight_decay", "-0.5", -0.5),
    ("batch_size", "0", 0),
    ("max_length", "0", 0),
    ("pool", "max", "max"),
    ("padding", "bogus", "bogus"),
    ("precision", "fp16", "fp16"),
    ("trainable", "last_x", "last_x"),
    ("select", "worst", "worst"),
    ("lora_alpha", "-2", -2.0),
    ("device", "tpu", "tpu"),
]


@pytest.mark.parametrize(("field", "text", "value"), BAD_VALUES)
def test_api_and_cli_reject_a_bad_value_with_the_same_message(field, text, value, capsys):
    with pytest.raises(GptclfError) as api_error:
        TrainConfig(**{field: value})
    try:  # a value its field's own check rejects stops argparse; the others stop TrainConfig
        code = main(["train", "--" + field.replace("_", "-"), text, "--no-progress"])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"gptclf: error: {api_error.value}"


def test_an_out_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(GptclfError, match="is a file"):
        TrainConfig(out=str(tmp_path / "f"))


def test_benchmarks_assign_no_package_attribute():
    """Benchmarks pass objects in (`train.TrainParts`); they never replace package internals."""
    offenders = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()  # names bound to gptclf modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptclf"):
                modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {
                    (a.asname or a.name).split(".")[0]
                    for a in node.names
                    if a.name.startswith("gptclf")
                }
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id in modules
                ):
                    offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(t)}")
    assert not offenders, offenders
