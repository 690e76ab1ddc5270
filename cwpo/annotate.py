"""``python -m cwpo.annotate`` / ``cwpo annotate``: label D_U with a trained weak annotator (stage 2 of CW-PO).

Examples:
    # the unlabelled 70 % of the synthetic task, with the annotator trained by `python -m cwpo.fit --model annotator`
    python -m cwpo.annotate --annotator runs/annotator/lightning_logs/version_0/checkpoints/last.ckpt \\
        --data synthetic --part d_u --output runs/d_u_annotated.jsonl --max_length 64

    # a local file, 4 GPUs, hard top-N confidence later from the `rank` scheme
    python -m cwpo.annotate --annotator ann.ckpt --data d_u.jsonl --output d_u_labelled.parquet \\
        --accelerator gpu --devices 4 --strategy ddp --confidence rank

An interrupted run is resumed by running the same command again (``--resume false`` starts over). The arguments are
:func:`cwpo.annotation.annotate_dataset`'s, read from its signature and docstring by jsonargparse (``--help`` lists
them, ``--config`` reads a YAML of them, ``--print_config`` writes one), plus the Trainer's ``--accelerator``,
``--devices``, ``--strategy``, ``--num_nodes`` and ``--precision``. Flags are spelled with underscores like every
cwpo command's (``--split_ratio``); the older ``--split-ratio`` and ``--no-resume`` / ``--no-report`` /
``--no-progress`` forms still work. The logic is in :mod:`cwpo.annotation`.
"""

from __future__ import annotations

import sys
from typing import Any

# Flags of the argparse version of this command, still accepted: ``--no-resume`` is ``--resume false``.
_NEGATED = {"--no_resume": "--resume=false", "--no_report": "--report=false", "--no_progress": "--progress=false"}


def _modern(argv: list[str]) -> list[str]:
    """``argv`` in the one flag style: ``--split-ratio`` -> ``--split_ratio``, ``--no-resume`` -> ``--resume=false``."""
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, sep, value = arg.partition("=")
            name = "--" + name[2:].replace("-", "_")
            arg = _NEGATED.get(name, name + sep + value)
        out.append(arg)
    return out


def build_parser():
    """The ``cwpo annotate`` parser: ``annotate_dataset``'s arguments, and the Trainer's device settings."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from cwpo.annotation.annotate import _annotate_dataset

    parser = ArgumentParser(
        prog="cwpo annotate", exit_on_error=False,
        description="Label preference pairs with a trained weak annotator: weak order (Eq. 6) and confidence (Eq. 8).",
    )  # fmt: skip
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML of these arguments")
    parser.add_argument("--annotator", type=str, required=True,
                        help="a Lightning .ckpt of the annotator, or a folder from export_annotator()")  # fmt: skip
    parser.add_argument("--data", type=Any, required=True,
                        help="loader name (synthetic, harmless-base, ...), a data file, or a DatasetSpec mapping "
                             "({name: local, path: pairs.jsonl})")  # fmt: skip
    parser.add_argument("--output", type=str, required=True, help="output .jsonl, .jsonl.gz or .parquet")
    parser.add_function_arguments(_annotate_dataset, None, as_group=False,
                                  skip={"annotator", "pairs", "output", "trainer"})  # fmt: skip
    group = parser.add_argument_group("Trainer", "Where the annotator runs (lightning.Trainer's arguments).")
    group.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu, auto")
    group.add_argument("--devices", type=int | str, default=1, help="devices per node: a number, 'auto' or '0,1'")
    group.add_argument("--strategy", type=str, default="auto", help="auto, ddp, ...")
    group.add_argument("--num_nodes", type=int, default=1, help="nodes")
    group.add_argument("--precision", type=str, default="auto",
                       help="auto (bf16 autocast where the hardware runs bf16 fast and the annotator is >= 256 "
                            "wide), fp32, bf16, or a Lightning precision (32-true, bf16-mixed, ...)")  # fmt: skip
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
    from jsonargparse import ArgumentError

    from cwpo.annotation import annotate_dataset
    from cwpo.errors import argument_error

    parser = build_parser()
    try:
        args = parser.parse_args(_modern(argv)).as_dict()
    except ArgumentError as err:
        raise argument_error(err, "cwpo annotate") from None
    args.pop("config", None)
    trainer = {name: args.pop(name) for name in ("accelerator", "devices", "strategy", "num_nodes", "precision")}
    trainer["precision"] = _precision(trainer["precision"], args["annotator"], trainer["accelerator"])
    result = annotate_dataset(args.pop("annotator"), args.pop("data"), args.pop("output"), trainer=trainer, **args)
    if result is not None:
        agreement = "n/a" if result.agreement is None else f"{100 * result.agreement:.1f} %"
        print(
            f"annotated {result.n_pairs} pairs -> {result.path} (dropped {result.n_dropped}; "
            f"agreement with human labels {agreement}; {result.pairs_per_second:.1f} pairs/s this run)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
