"""`gptclf` command line. The only module that prints; user errors exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from gptclf.batching import PADDING_MODES
from gptclf.classifier import POOL_MODES, TRAINABLE_HELP
from gptclf.errors import GptclfError

log = logging.getLogger("gptclf")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from gptclf.train import TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--model", default=d.model, help="model name (see `gptclf models`) or HF directory"
    )
    p.add_argument("--weights", default=d.weights, choices=["pretrained", "random"])
    p.add_argument(
        "--data",
        default=d.data,
        help="sms-spam | sms-spam-uci | a .csv/.tsv with Label,Text | a split directory",
    )
    p.add_argument("--split", default=d.split, choices=["book", "stratified"])
    p.add_argument("--trainable", default=d.trainable, help=TRAINABLE_HELP)
    p.add_argument("--pool", default=d.pool, choices=POOL_MODES)
    p.add_argument("--padding", default=d.padding, choices=PADDING_MODES)
    p.add_argument(
        "--no-causal-mask",
        dest="causal",
        action="store_false",
        help="let every token attend to every real token",
    )
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument(
        "--max-length",
        type=int,
        default=d.max_length,
        help="tokens kept per text (default: the model's context)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument(
        "--precision",
        default=d.precision,
        choices=["fp32", "bf16"],
        help="bf16: autocast with fp32 master weights",
    )
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="recompute frozen lower blocks every step (default: cache them once)",
    )
    p.add_argument(
        "--out", default="runs/latest", help="checkpoint directory (default runs/latest)"
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=sys.stderr.isatty(),
        help="no progress bar (default when not a terminal)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from gptclf.train import TrainConfig, fit

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    metrics = fit(cfg)
    summary = {
        name: {k: metrics[name][k] for k in ("accuracy", "precision", "recall", "f1", "n")}
        for name in ("train", "validation", "test")
    }
    summary.update(
        train_seconds=round(metrics["train_seconds"], 1),
        trainable_params=metrics["trainable_params"],
        out=cfg.out,
    )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gptclf.api import Classifier
    from gptclf.data import load_dataset, load_splits

    clf = Classifier.load(args.checkpoint)
    if args.data:
        result = clf.evaluate(load_dataset(args.data), batch_size=args.batch_size)
    else:  # the splits the checkpoint was trained on
        tc = clf.info.train_config
        splits = load_splits(tc["data"], tc["split"], seed=tc["seed"])
        result = {
            name: clf.evaluate(split, batch_size=args.batch_size)
            for name, split in zip(("train", "validation", "test"), splits, strict=True)
        }
    print(json.dumps(result, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from gptclf.api import Classifier

    clf = Classifier.load(args.checkpoint)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise GptclfError("no texts given (pass them as arguments or on stdin)")
    for pred in clf.predict(texts, batch_size=args.batch_size):
        print(
            json.dumps(
                {
                    "text": pred.text,
                    "label": pred.label,
                    "probability": pred.probability,
                    "probabilities": pred.probabilities,
                },
                ensure_ascii=False,
            )
        )
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from gptclf.data import load_splits, write_split

    splits = load_splits(args.data, args.split, seed=args.seed)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptclf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="finetune a classifier and evaluate it")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="print metrics of a saved classifier as JSON")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="labelled .csv/.tsv (default: the splits it was trained on)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify texts (arguments, or one per line on stdin)")
    p.add_argument("checkpoint")
    p.add_argument("texts", nargs="*")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("split", help="write train/validation/test.csv (Label,Text)")
    p.add_argument("--data", default="sms-spam")
    p.add_argument("--split", default="book", choices=["book", "stratified"])
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_split)

    p = sub.add_parser("models", help="list known models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("download", help="fetch a known model's weights into the cache")
    p.add_argument("name")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except GptclfError as exc:
        print(f"gptclf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line for users, the traceback on request
        if args.verbose or os.environ.get("GPTCLF_DEBUG"):
            raise
        print(
            f"gptclf: internal error: {type(exc).__name__}: {exc} "
            "(rerun with -v for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
