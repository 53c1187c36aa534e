"""`gptclf` command line. The only module that prints; user errors exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gptclf.choices import INFERENCE_PRECISIONS, SPLIT_MODES
from gptclf.errors import GptclfError, Interrupted

if TYPE_CHECKING:
    from gptclf.train_config import Range

log = logging.getLogger("gptclf")


def add_train_args(p: argparse.ArgumentParser, recipe: str = "book") -> None:
    """One flag per `TrainConfig` field, generated from its metadata (help, choices, flag name);
    defaults are the recipe's. Values are checked by `TrainConfig` itself, so a bad value gets
    the same message here and in the Python API."""
    from gptclf.train_config import RECIPES, TrainConfig, recipe_defaults

    # A recipe only changes the defaults: flags given explicitly still win.
    defaults = recipe_defaults(recipe if recipe in RECIPES else "book")
    p.add_argument(
        "--recipe",
        default=None,
        choices=sorted(RECIPES),
        help="named defaults: book (chapter 6) or smollm2 (the main job; the default, but for "
        "book where --model is given); auto: smollm2's defaults, then a few candidate settings "
        "(trained blocks, lr) tried and the best on validation kept (--time-budget)",
    )
    for f in dataclasses.fields(TrainConfig):
        add_field_flag(p, f, defaults[f.name])


def add_field_flag(p: argparse.ArgumentParser, f: dataclasses.Field, default: object) -> None:
    meta = f.metadata
    flag = meta.get("flag", "--" + f.name.replace("_", "-"))
    kw: dict = {"dest": f.name, "help": meta["help"]}
    if meta.get("tty_default"):
        default = sys.stderr.isatty()
    if f.type == "bool":
        if meta.get("negatable"):
            kw.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kw.update(action="store_false" if flag.startswith("--no-") else "store_true")
            kw["default"] = default
        p.add_argument(flag, **kw)
        return
    if f.type.startswith("list["):
        kw.update(nargs="+", action="extend")
    else:
        kw["type"] = checked(f, meta.get("parse") or NUMBER_TYPES.get(f.type.split(" | ")[0], str))
    if "choices" in meta:
        kw["metavar"] = "{" + ",".join(meta["choices"]) + "}"
    if "metavar" in meta:
        kw["metavar"] = meta["metavar"]
    p.add_argument(flag, default=default, **kw)


NUMBER_TYPES = {"int": int, "float": float}


def checked(f: dataclasses.Field, convert):
    """The flag's `type`: convert, then `TrainConfig`'s own check of the field (choices, number
    ranges), so a bad value stops argparse with the message the Python API gives."""
    from gptclf.train_config import NUMBER_RANGES, check_field, flag_name

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:  # not a number: the range's message, not "invalid int value"
            if f.name not in NUMBER_RANGES:
                raise
            message = NUMBER_RANGES[f.name].message(flag_name(f), text)
            raise argparse.ArgumentTypeError(message) from None
        try:
            check_field(f, value)
        except GptclfError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its own messages
    return parse


def number(flag: str, allowed: Range | None = None):
    """The `type` of a hand-written numeric flag: a number in `allowed` (default: at least 1),
    else one line naming the flag and the range, as for the generated train flags."""
    from gptclf.train_config import AT_LEAST_1

    allowed = allowed or AT_LEAST_1

    def parse(text: str):
        try:
            value = (int if allowed.integer else float)(text)
        except ValueError:
            raise argparse.ArgumentTypeError(allowed.message(flag, text)) from None
        if value not in allowed:
            raise argparse.ArgumentTypeError(allowed.message(flag, value))
        return value

    return parse


class Parser(argparse.ArgumentParser):
    """argparse, but every usage error is one line (a value `TrainConfig` or a range rejects:
    in its words), and a negative number such as -1e-3 or -inf is a flag's value."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes only -5 or -.5 for a value; "--lr -1e-3" was "expected one argument"
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.I
        )

    def error(self, message: str):
        # "argument --pool: --pool must be one of ...": the check's message names the flag
        own = re.fullmatch(r"argument (--[\w-]+)(?:/--[\w-]+)?: (\1 .*)", message, re.S)
        line = own.group(2) if own else f"{message} (see {self.prog} --help)"
        print(f"gptclf: error: {line}", file=sys.stderr)
        raise RejectedValue(2)


class RejectedValue(SystemExit):
    """argparse stopped on a value `TrainConfig` rejects: `main` returns 2, as for the API's
    errors (a SystemExit still, for code that calls `parse_args` directly)."""


def add_column_args(p: argparse.ArgumentParser, default: str | None = None, label=True) -> None:
    """--text-column (one or several) and --label-column; `default` describes the defaults."""
    p.add_argument(
        "--text-column",
        dest="text_columns",
        nargs="+",
        action="extend",
        metavar="COLUMN",
        help=f"text column(s), several joined by a newline; if not given: {default or 'Text'}",
    )
    if label:
        p.add_argument(
            "--label-column",
            metavar="COLUMN",
            help=f"label column; if not given: {default or 'Label'}",
        )


def add_table_args(p: argparse.ArgumentParser) -> None:
    """--encoding and --delimiter of the files read, as `train` has them (`TrainConfig`)."""
    from gptclf.train_config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name in ("encoding", "delimiter"):
            add_field_flag(p, f, None)


def train_config(args: argparse.Namespace):
    """The `TrainConfig` of the generated train flags (`train`, `cv`)."""
    from gptclf.train_config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def cmd_train(args: argparse.Namespace) -> int:
    from gptclf.out_dir import prepare_out

    cfg = train_config(args)
    if args.recipe == "auto":
        from gptclf.auto import check_budget, fit_auto

        check_budget(cfg)  # a budget too short is an error before torch loads
        prepare_out(cfg)
        metrics = fit_auto(cfg)
    else:
        if cfg.time_budget is not None:
            log.warning("--time-budget applies to --recipe auto only: ignored")
        prepare_out(cfg)  # an --out that cannot take this run: an error before torch loads
        from gptclf.train import fit  # torch: after the options are checked

        metrics = fit(cfg)
    keys = ("accuracy", "precision", "recall", "f1", "n")
    if cfg.multi_label:
        keys = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "roc_auc", "n")
    summary = {
        name: {k: metrics[name][k] for k in keys} for name in ("train", "validation", "test")
    }
    if "baseline" in metrics["validation"]:
        summary["baseline"] = {
            name: {k: metrics[name]["baseline"][k] for k in ("name", "accuracy", "f1")}
            for name in ("train", "validation", "test")
        }
    if cfg.multi_label:
        summary["thresholds"] = metrics["thresholds"]
    summary.update(
        labels=metrics["labels"],
        truncated=metrics["truncated"],
        train_seconds=round(metrics["train_seconds"], 1),
        trainable_params=metrics["trainable_params"],
        out=cfg.out,
    )
    if "winner" in metrics.get("auto", {}):
        summary["auto"] = {k: metrics["auto"][k] for k in ("winner", "why")}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    if args.recipe == "auto":
        raise GptclfError(
            "cv cross-validates one configuration; --recipe auto is a search over several "
            "(cross-validate the settings it chose, or each candidate's)"
        )
    cfg = train_config(args)
    from gptclf.cv import CV_FILE, cross_validate, format_table  # torch: after the checks

    record = cross_validate(cfg, folds=args.folds)
    print("\n".join(format_table(record)))
    if cfg.out is not None:
        print(f"written: {Path(cfg.out) / CV_FILE}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gptclf.api import Classifier

    clf = Classifier.load(args.checkpoint, precision=args.precision)
    dialect = {"encoding": args.encoding, "delimiter": args.delimiter}
    if args.data:
        data = clf.load_data(args.data, args.text_columns, args.label_column, **dialect)
        result = clf.evaluate(data, batch_size=args.batch_size, errors=args.errors)
    else:  # the splits the checkpoint was trained on (its table options, unless given here)
        splits = clf.training_splits(**dialect)
        result = {
            name: clf.evaluate(split, batch_size=args.batch_size, errors=args.errors)
            for name, split in zip(("train", "validation", "test"), splits, strict=True)
        }
    print(json.dumps(result, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from gptclf.api import Classifier

    if args.input or args.output:
        if not (args.input and args.output) or args.texts:
            raise GptclfError("--input FILE and --output FILE go together, without texts")
        clf = Classifier.load(args.checkpoint, precision=args.precision)
        summary = clf.predict_file(
            args.input,
            args.output,
            text_columns=args.text_columns,
            batch_size=args.batch_size,
            progress=args.progress,
            encoding=args.encoding,
            delimiter=args.delimiter,
        )
        print(json.dumps(summary))
        return 0
    clf = Classifier.load(args.checkpoint, precision=args.precision)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise GptclfError("no texts given (pass them as arguments or on stdin)")
    for pred in clf.predict(texts, batch_size=args.batch_size):
        print(json.dumps({"text": pred.text, **pred.to_dict()}, ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gptclf.server import Limits, serve

    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars)
    serve(
        args.checkpoint,
        args.host,
        args.port,
        limits,
        batch_size=args.batch_size,
        ui=args.ui,
        client_timeout=args.client_timeout,
    )
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from gptclf.data import load_splits, write_split

    splits = load_splits(
        args.data,
        args.split,
        seed=args.seed,
        text_columns=args.text_columns,
        label_column=args.label_column,
        encoding=args.encoding,
        delimiter=args.delimiter,
    )
    write_split(Path(args.out), *splits)
    sizes = {name: len(s) for name, s in zip(("train", "validation", "test"), splits, strict=True)}
    print(json.dumps({"out": args.out, **sizes}))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from gptclf.weights.registry import KNOWN_MODELS, availability

    print(f"{'name':14s} {'local':5s} {'description':46s} source / location")
    for m in KNOWN_MODELS.values():
        where = availability(m)
        print(f"{m.name:14s} {'yes' if where else 'no':5s} {m.description:46s} {where or m.source}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from gptclf.weights.registry import download, known_model

    print(download(known_model(args.name), progress=sys.stderr.isatty()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gptclf.export import export

    out = export(args.checkpoint, args.out, args.format, int8=args.int8, force=args.force)
    print(json.dumps({"out": str(out), "format": args.format, "files": sorted(os.listdir(out))}))
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from gptclf.ensemble import create_ensemble

    manifest = create_ensemble(args.runs, args.out, overwrite=args.overwrite)
    members = [m["source"] for m in manifest["members"]]
    summary = {"out": args.out, "members": members, "labels": manifest["labels"]}
    print(json.dumps({**summary, "multi_label": manifest["multi_label"]}, ensure_ascii=False))
    return 0


def cmd_experiments_list(args: argparse.Namespace) -> int:
    import torch

    from gptclf.experiments import runner
    from gptclf.inference import native_bf16

    experiments = runner.EXPERIMENTS
    seeds = runner.parse_seeds(args.seeds)
    found = runner.load_results(args.results, experiments)
    print(f"{'name':29s} {'question':12s} {'min/seed':>8s} {'cached':>6s}  label [why skipped]")
    per_seed = to_run = 0.0
    for e in experiments.values():
        reason = runner.skip_reason(e)
        done = {r["seed"] for r in found.get(e.name, [])} & set(seeds)
        if reason is None:
            per_seed += e.cpu_minutes or 0.0
            to_run += (e.cpu_minutes or 0.0) * (len(seeds) - len(done))
        cost = "-" if e.cpu_minutes is None else f"{e.cpu_minutes:g}"
        cached = f"{len(done)}/{len(seeds)}"
        skipped = f" [{reason}]" if reason else ""
        print(f"{e.name:29s} {e.question:12s} {cost:>8s} {cached:>6s}  {e.label}{skipped}")
    print(
        f"runnable here: about {per_seed:.0f} min per seed; not cached yet for seeds "
        f"{','.join(map(str, seeds))}: about {to_run:.0f} min (estimated for a 2-core CPU)"
    )
    bf16_rows = [n for n, e in experiments.items() if e.overrides.get("precision") == "bf16"]
    if bf16_rows and not torch.cuda.is_available() and not native_bf16("cpu"):
        print(
            f"note: this CPU has no native bf16; {', '.join(bf16_rows)} (precision=bf16) run "
            "several times slower here than estimated (python benchmarks/bf16_matmul.py)"
        )
    return 0


def cmd_experiments_run(args: argparse.Namespace) -> int:
    from gptclf.experiments.runner import parse_seeds, run

    if args.all == bool(args.names):
        raise GptclfError("give experiment names or --all (see `gptclf experiments list`)")
    names = "all" if args.all else args.names
    if args.cv:
        from gptclf.experiments.cv_rows import run_cv

        seeds = parse_seeds(args.seeds)
        outcomes = run_cv(names, seeds, args.folds, args.results, cache_dir=args.cache_dir)
    else:
        outcomes = run(names, parse_seeds(args.seeds), args.results, cache_dir=args.cache_dir)
    for o in outcomes:
        line = {"name": o.name, "seed": o.seed, "status": o.status, "path": str(o.path)}
        for key, value in (("test_accuracy", o.test_accuracy), ("reason", o.reason)):
            if value is not None:
                line[key] = value
        print(json.dumps(line))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_experiments_report(args: argparse.Namespace) -> int:
    from gptclf.experiments.report import write

    for path in write(args.results, args.out):
        print(path)
    return 0


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default=None,
        help="inference precision (default: the one it was trained with, but fp32 for bf16 "
        "where this machine has no native bf16); int8 = dynamic quantization of the linear layers",
    )


def build_parser(recipe: str = "book") -> argparse.ArgumentParser:
    parser = Parser(prog="gptclf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="finetune a classifier and evaluate it",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_args(p, recipe)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "cv",
        help="stratified k-fold cross-validation of a training config (writes OUT/cv.json)",
        description="Each fold trains on the other k-1 (epoch chosen on an inner validation "
        "split of them, or --select last) and is scored held out; over the config's train and "
        "validation texts, its test split unread. Takes every `gptclf train` flag.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (>= 2)")
    add_train_args(p, recipe)
    p.set_defaults(func=cmd_cv)
    add_inference_commands(sub)
    add_data_commands(sub)
    add_experiments_commands(sub)
    return parser


def add_inference_commands(sub) -> None:
    """evaluate, predict, serve: what reads a trained classifier."""
    from gptclf.train_config import Range

    p = sub.add_parser("evaluate", help="print metrics of a saved classifier as JSON")
    p.add_argument("checkpoint")
    add_precision_arg(p)
    p.add_argument(
        "--data", help="labelled .csv/.tsv/.jsonl/.parquet (default: the splits it was trained on)"
    )
    add_column_args(p, "the training columns")
    add_table_args(p)
    p.add_argument(
        "--errors",
        type=number("--errors", Range(0)),
        default=0,
        metavar="N",
        help="list the N most confident mistakes",
    )
    p.add_argument("--batch-size", type=number("--batch-size"), default=32)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict", help="classify texts (arguments, one per line on stdin, or --input FILE)"
    )
    p.add_argument("checkpoint")
    p.add_argument("texts", nargs="*")
    add_precision_arg(p)
    p.add_argument(
        "--input", metavar="FILE", help=".csv/.tsv/.jsonl/.parquet to classify, streamed"
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help=".csv/.tsv/.jsonl: the input columns + label + probabilities",
    )
    add_column_args(p, "the training columns", label=False)
    add_table_args(p)  # of --input; --output is UTF-8, delimited by its suffix
    p.add_argument("--batch-size", type=number("--batch-size"), default=32)
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=sys.stderr.isatty(),
        help="no progress bar (default when not a terminal)",
    )
    p.set_defaults(func=cmd_predict)
    add_serve_command(sub)
    add_export_command(sub)
    add_ensemble_command(sub)


def add_serve_command(sub) -> None:
    from gptclf.train_config import Range

    p = sub.add_parser(
        "serve", help="HTTP JSON service (POST /classify, GET /health, GET /info) and a page at /"
    )
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=number("--port", Range(0, 65535)), default=8000, help="0: any free port"
    )
    p.add_argument(
        "--max-texts", type=number("--max-texts"), default=64, help="texts per request (413 above)"
    )
    p.add_argument(
        "--max-chars",
        type=number("--max-chars"),
        default=100_000,
        help="characters per request, all texts (413 above)",
    )
    p.add_argument("--batch-size", type=number("--batch-size"), default=32)
    p.add_argument(
        "--client-timeout",
        type=number("--client-timeout", Range(0, low_open=True, integer=False)),
        default=30.0,
        metavar="SECONDS",
        help="seconds a client has to send a request's headers, and as many for its body (408 "
        "after); on SIGTERM, requests in flight get as long to finish (default: 30)",
    )
    p.add_argument(
        "--no-ui", dest="ui", action="store_false", help="no page at / (the JSON API only)"
    )
    p.set_defaults(func=cmd_serve)


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="write a classifier as ONNX or a transformers directory")
    p.add_argument("checkpoint")
    # Checked by `export` itself (not `choices`): a bad format is then one `gptclf: error:` line.
    p.add_argument("--format", required=True, metavar="{onnx,hf}", help="onnx | hf")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) directory")
    p.add_argument("--int8", action="store_true", help="onnx: also model_int8.onnx (dynamic)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_export)


def add_ensemble_command(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine classifiers trained on the same labels (the mean of their probabilities)",
        description="DIR holds a copy of every run and loads like one classifier: evaluate, "
        "predict and serve take it. Members may be different models; multi-label members: the "
        "mean of each label's probability, against the mean of their thresholds.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="classifier directories (at least 2)")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) directory")
    p.add_argument("--overwrite", action="store_true", help="replace an ensemble already in DIR")
    p.set_defaults(func=cmd_ensemble)


def add_data_commands(sub) -> None:
    """data split, models, download."""
    from gptclf.train_config import SEED

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("split", help="write train/validation/test.csv (Label,Text)")
    p.add_argument("--data", default="sms-spam")
    add_column_args(p)
    add_table_args(p)
    p.add_argument("--split", default="book", choices=SPLIT_MODES)
    p.add_argument("--seed", type=number("--seed", SEED), default=123)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_split)

    p = sub.add_parser("models", help="list known models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("download", help="fetch a known model's weights into the cache")
    p.add_argument("name")
    p.set_defaults(func=cmd_download)


def add_experiments_commands(sub) -> None:
    from gptclf.train_config import Range

    p = sub.add_parser("experiments", help="the results table: named runs, cached, and the report")
    exp_sub = p.add_subparsers(dest="experiments_command", required=True)
    p = exp_sub.add_parser(
        "list", help="named experiments, estimated CPU minutes, cached seeds, availability"
    )
    p.add_argument("--seeds", default="123,124,125", help="the seeds counted as cached")
    p.add_argument("--results", metavar="DIR", help="result cache (default experiments/results)")
    p.set_defaults(func=cmd_experiments_list)
    p = exp_sub.add_parser("run", help="run experiments for each seed, skipping cached results")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiment names (`experiments list`)")
    p.add_argument("--all", action="store_true", help="every named experiment")
    p.add_argument("--seeds", default="123,124,125", help="comma-separated (default 123,124,125)")
    p.add_argument("--results", metavar="DIR", help="result cache (default experiments/results)")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="frozen-prefix states shared by rows and seeds (default experiments/cache with the "
        "default --results, else none)",
    )
    p.add_argument(
        "--cv",
        action="store_true",
        help="cross-validate the rows instead (stratified k-fold over the train + validation "
        "texts, as `gptclf cv`; results/NAME/cv-seedS.json): the report chooses rows by it",
    )
    p.add_argument(
        "--folds",
        type=number("--folds", Range(2)),
        default=5,
        metavar="K",
        help="with --cv (default 5)",
    )
    p.set_defaults(func=cmd_experiments_run)
    p = exp_sub.add_parser("report", help="regenerate docs/RESULTS.md + charts from the results")
    p.add_argument("--results", metavar="DIR", help="result cache (default experiments/results)")
    p.add_argument("--out", metavar="FILE", help="Markdown file (default docs/RESULTS.md)")
    p.set_defaults(func=cmd_experiments_report)


def lost_peer(exc: Exception) -> bool:
    """Whether a collective failed because another process of the job is gone."""
    import torch.distributed

    text = str(exc).lower()
    return isinstance(exc, torch.distributed.DistError) or (
        isinstance(exc, RuntimeError)
        and any(s in text for s in ("closed by peer", "connection reset", "gloo", "nccl"))
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the `train` defaults of the recipe it names (or implies)."""
    from gptclf.train_config import default_recipe

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    pre.add_argument("--model")
    given = pre.parse_known_args(argv)[0]
    return build_parser(given.recipe or default_recipe(given.model is not None)).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except RejectedValue as stop:
        return stop.code
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun: only rank 0 logs
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    where = f"rank {rank}: " if "WORLD_SIZE" in os.environ else ""
    try:
        return args.func(args)
    except GptclfError as exc:
        print(f"gptclf: {where}error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # training stopped by a signal, its state saved
        print(f"gptclf: {where}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gptclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line for users, the traceback on request
        if args.verbose or os.environ.get("GPTCLF_DEBUG"):
            raise
        if where and lost_peer(exc):
            print(
                f"gptclf: {where}lost contact with the other processes of the job (one failed? "
                "see its message)",
                file=sys.stderr,
            )
            return 1
        print(
            f"gptclf: {where}internal error: {type(exc).__name__}: {exc} "
            "(rerun with -v for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
