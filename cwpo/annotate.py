"""``python -m cwpo.annotate`` / ``cwpo annotate``: label D_U with a trained weak annotator (stage 2 of CW-PO).

Examples:
    # the unlabelled 70 % of the synthetic task, with the annotator trained by `python -m cwpo.fit --model annotator`
    python -m cwpo.annotate --annotator runs/annotator/lightning_logs/version_0/checkpoints/last.ckpt \\
        --data synthetic --part d_u --output runs/d_u_annotated.jsonl --max_length 64

    # a local file, 4 GPUs, hard top-N confidence later from the `rank` scheme
    python -m cwpo.annotate --annotator ann.ckpt --data d_u.jsonl --output d_u_labelled.parquet \\
        --accelerator gpu --devices 4 --strategy ddp --confidence rank

An interrupted run is resumed by running the same command again (``--no_resume`` starts over). Flags are spelled
with underscores like every cwpo command's (``--split_ratio``); the older dashed forms still work. The logic is in
:mod:`cwpo.annotation`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _data_spec(value: str):
    # A JSON object is a DatasetSpec ({"name": ..., "path": ..., "args": {...}}); anything else a name or a path.
    return json.loads(value) if value.lstrip().startswith("{") else value


def _devices(value: str):
    return value if value == "auto" or "," in value else int(value)


def _add(parser: argparse.ArgumentParser, dashed: str, **kwargs) -> None:
    """``--split_ratio`` (the flag style of every cwpo command); the older ``--split-ratio`` still works, unlisted."""
    name = dashed.replace("-", "_").replace("__", "--", 1)
    action = parser.add_argument(name, **kwargs)
    alias = {k: v for k, v in kwargs.items() if k in ("action", "type", "choices")}
    parser.add_argument(dashed, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **alias)


def build_parser() -> argparse.ArgumentParser:
    from cwpo.losses import CONFIDENCE_SCHEMES

    parser = argparse.ArgumentParser(
        prog="cwpo annotate",
        description="Label preference pairs with a trained weak annotator: weak order (Eq. 6) and confidence (Eq. 8).",
    )
    parser.add_argument("--annotator", required=True, help="a Lightning .ckpt of the annotator, or an exported folder")
    parser.add_argument(
        "--data",
        required=True,
        type=_data_spec,
        help="loader name (synthetic, harmless-base, ...), a data file, or a JSON DatasetSpec",
    )
    parser.add_argument(
        "--part",
        default="all",
        choices=("all", "d_u", "d_l", "train", "test"),
        help="which part of --data to label (default: all of it; d_u: the unlabelled split)",
    )
    _add(parser, "--split-ratio", type=float, default=0.3, help="labelled share of train for d_l/d_u")
    _add(parser, "--split-seed", type=int, default=0, help="seed of the D_L / D_U split")
    parser.add_argument("--output", required=True, help="output .jsonl, .jsonl.gz or .parquet")
    parser.add_argument(
        "--confidence",
        default="cw",
        choices=sorted(CONFIDENCE_SCHEMES),
        help="confidence scheme (default cw: 2*sigmoid(margin) - 1, Eq. 8)",
    )
    _add(parser, "--batch-size", type=int, default=32, help="pairs per scoring batch")
    _add(parser, "--max-length", type=int, default=512, help="token budget of prompt + longer response")
    parser.add_argument(
        "--truncation",
        default="keep_end",
        choices=("keep_end", "drop"),
        help="over-long pairs: keep their end (default) or drop them",
    )
    _add(parser, "--chat-template-for-text", action="store_true", help="text prompts through the chat template")
    _add(parser, "--work-dir", default=None, help="folder of the part files (default: <output>.parts)")
    _add(parser, "--no-resume", action="store_true", help="discard part files of an earlier run")
    _add(parser, "--keep-parts", action="store_true", help="keep the part files after merging")
    _add(parser, "--no-report", action="store_true", help="skip the agreement report")
    _add(parser, "--report-dir", default=None, help="where the report goes (default: beside --output)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--devices", type=_devices, default=1, help="devices per node (an int, 'auto' or '0,1')")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy (auto, ddp, ...)")
    _add(parser, "--num-nodes", type=int, default=1, help="nodes")
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16 autocast where the hardware runs bf16 fast and the annotator is >= 256 wide), fp32, bf16, "
        "or a Lightning precision (32-true, bf16-mixed, ...)",
    )
    _add(parser, "--num-workers", type=int, default=0, help="DataLoader workers per rank")
    _add(parser, "--no-progress", action="store_true", help="no progress bar")
    return parser


def _precision(precision: str, annotator: str, accelerator: str) -> str:
    """A Lightning precision: ``auto``/``fp32``/``bf16`` resolved for the annotator's width, others as given."""
    from cwpo.models import ModelSpec, hidden_size
    from cwpo.precision import PRECISIONS, resolve_precision

    if precision not in PRECISIONS:
        return precision
    try:
        width = hidden_size(ModelSpec(annotator))
    except Exception:  # not a model folder (yet): annotate_dataset says what is wrong with it
        width = None
    return resolve_precision(precision, hidden_size=width, accelerator=accelerator)


def main(argv: list[str] | None = None) -> int:
    """``cwpo annotate``: a user error prints one line and returns 2 (``--debug``: its traceback)."""
    from cwpo.errors import run_command

    return run_command(_main, list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from cwpo.annotation import annotate_dataset

    trainer = {
        "accelerator": args.accelerator,
        "devices": args.devices,
        "strategy": args.strategy,
        "num_nodes": args.num_nodes,
    }
    trainer["precision"] = _precision(args.precision, args.annotator, args.accelerator)
    result = annotate_dataset(
        args.annotator,
        args.data,
        args.output,
        part=args.part,
        split_ratio=args.split_ratio,
        split_seed=args.split_seed,
        confidence=args.confidence,
        batch_size=args.batch_size,
        max_length=args.max_length,
        truncation=args.truncation,
        chat_template_for_text=args.chat_template_for_text,
        work_dir=args.work_dir,
        resume=not args.no_resume,
        keep_parts=args.keep_parts,
        report=not args.no_report,
        report_dir=args.report_dir,
        trainer=trainer,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    if result is not None:
        agreement = "n/a" if result.agreement is None else f"{100 * result.agreement:.1f} %"
        print(
            f"annotated {result.n_pairs} pairs -> {result.path} (dropped {result.n_dropped}; "
            f"agreement with human labels {agreement}; {result.pairs_per_second:.1f} pairs/s this run)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
