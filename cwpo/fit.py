"""``python -m cwpo.fit --model NAME``: train any registered cwpo module with LightningCLI.

``--model`` picks an entry of :data:`REGISTRY` (a LightningModule and the LightningDataModule that feeds
it); every other argument is LightningCLI's own: ``--config file.yaml``, ``--model.<arg>``,
``--data.<arg>``, ``--trainer.<arg>``, ``--seed_everything``, ``--ckpt_path last``.

Examples:
    python -m cwpo.fit --help
    python -m cwpo.fit --model annotator --config configs/annotator/synthetic.yaml
    python -m cwpo.fit --model policy --config configs/policy/synthetic.yaml --model.objective ipo
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cwpo.io import plain_data


@dataclass(frozen=True)
class Entry:
    """A trainable thing: ``module:Class`` paths, imported only when the entry is used."""

    module: str
    datamodule: str
    help: str
    links: tuple[tuple[str, str], ...] = field(default=())


REGISTRY: dict[str, Entry] = {}


def register(name: str, module: str, datamodule: str, help: str, links: tuple[tuple[str, str], ...] = ()) -> None:
    """Add a ``--model`` choice. ``links`` are LightningCLI argument links (``source``, ``target``)."""
    REGISTRY[name] = Entry(module, datamodule, help, tuple(links))


# Every module's model and its datamodule's tokenizer come from the same spec.
_TOKENIZER_LINK = (("model.backbone", "data.tokenizer"),)
register(
    "annotator",
    "cwpo.modules.annotator:AnnotatorModule",
    "cwpo.data.datamodules:PairDataModule",
    "weak annotator: scalar-head reward model trained with the Bradley-Terry loss (stage 1)",
    _TOKENIZER_LINK,
)
register(
    "pairrm",
    "cwpo.modules.annotator:PairRMModule",
    "cwpo.data.datamodules:PairDataModule",
    "weak annotator, PairRM style: one model reads both responses (appendix J.9)",
    _TOKENIZER_LINK,
)
register(
    "sft",
    "cwpo.modules.sft:SFTModule",
    "cwpo.data.datamodules:SFTDataModule",
    "supervised fine-tuning of the strong model on prompt + chosen, response tokens only",
    _TOKENIZER_LINK,
)
register(
    "policy",
    "cwpo.modules.policy:PolicyModule",
    "cwpo.data.datamodules:PairDataModule",
    "strong policy: (confidence-weighted) DPO / IPO / rDPO with LoRA against a frozen reference (stage 3)",
    _TOKENIZER_LINK,
)
register(
    "online",
    "cwpo.modules.online:OnlinePolicyModule",
    "cwpo.data.datamodules:PromptDataModule",
    "online CW-DPO: the policy samples two answers per prompt, the weak annotator labels them (appendix J.5)",
    _TOKENIZER_LINK,
)


def _load(path: str):
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def usage() -> str:
    width = max(len(name) for name in REGISTRY)
    lines = [
        "usage: python -m cwpo.fit --model NAME [--config FILE.yaml] [--model.ARG V] [--data.ARG V] [--trainer.ARG V]",
        "",
        "Train a cwpo module with LightningCLI. Registered models (--model NAME):",
    ]
    lines += [f"  {name:<{width}}  {entry.help}" for name, entry in REGISTRY.items()]
    lines += ["", "Run 'python -m cwpo.fit --model NAME --help' for that module's arguments."]
    return "\n".join(lines)


def split_model_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--model NAME`` (or ``--model=NAME``) out of ``argv``; ``--model.x`` arguments stay."""
    rest, name = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--model" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--model="):
            name, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    return name, rest


def trainer_defaults(name: str) -> dict:
    """The run's folder, ``runs/<model>`` unless ``--trainer.default_root_dir`` says otherwise: the CSV logs
    (``<default_root_dir>/lightning_logs/version_N``, unless ``--trainer.logger`` names another logger), the
    periodic ``last.ckpt`` beside them (the ``--checkpoint.*`` callback,
    :class:`cwpo.modules.checkpoint.PeriodicCheckpoint`, added by the CLI itself) and the saved config."""
    return {"default_root_dir": f"runs/{name}"}


def check_export_dir(export_dir: str | None, trainer, ckpt_path: str | None, *, overwrite: bool = False) -> None:
    """Before training: an export never replaces an earlier run's (unless ``--overwrite_export true``), and its
    folder can be written. A resumed run (``--ckpt_path``) may rewrite the export of the run it continues; a
    ``fast_dev_run`` writes none."""
    import os

    from cwpo.errors import ConfigError

    if not export_dir or trainer.fast_dev_run:
        return
    path = Path(export_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and ckpt_path is None and not overwrite:
        raise ConfigError(f"{export_dir} holds an earlier run's export; give another --model.export_dir, or pass "
                          "--overwrite_export true to replace it")  # fmt: skip
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write the export to {export_dir}: {parent} is not writable")


def _init_arguments(cls) -> set[str] | None:
    """The names ``cls.__init__`` accepts; None when it takes ``**kwargs``."""
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters} - {"self"}


def build_cli(name: str, args: list[str], *, run: bool = True):
    """Build (and by default run ``fit`` of) the LightningCLI for registry entry ``name``."""
    from lightning.pytorch.cli import LightningCLI

    from cwpo.modules.checkpoint import PeriodicCheckpoint

    entry = REGISTRY[name]

    class CwpoCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            for source, target in entry.links:
                parser.link_arguments(source, target, compute_fn=plain_data)
            # Defaults given as class_path dicts stay overridable from YAML and the command line.
            parser.set_defaults({f"trainer.{key}": value for key, value in trainer_defaults(name).items()})
            # last.ckpt every N steps and M minutes: --checkpoint.every_n_steps N --checkpoint.every_minutes M
            parser.add_lightning_class_args(PeriodicCheckpoint, "checkpoint")
            parser.add_argument("--overwrite_export", type=bool, default=False,
                                help="let this run replace the export an earlier run left in --model.export_dir")  # fmt: skip

        def before_fit(self) -> None:
            config = self.config.get("fit", {})
            check_export_dir(getattr(self.model.hparams, "export_dir", None), self.trainer, config.get("ckpt_path"),
                             overwrite=bool(config.get("overwrite_export")))  # fmt: skip

        def _parse_ckpt_path(self) -> None:
            # A checkpoint's hyper-parameters become the model's arguments; keys a module records for its own
            # loaders (the annotator's ``annotator_type``) are no ``__init__`` argument and must not reach the parser.
            ckpt_path = self.config.get("subcommand") and self.config[self.config.subcommand].get("ckpt_path")
            if not ckpt_path or not Path(ckpt_path).is_file():
                return super()._parse_ckpt_path()
            import torch

            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
            accepted = _init_arguments(_load(entry.module))
            hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if accepted is None or k in accepted}
            if hparams:
                from jsonargparse import ArgumentError

                from cwpo.errors import ConfigError

                try:
                    self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
                except (SystemExit, ArgumentError) as err:
                    problem = " ".join(str(err).split())
                    raise ConfigError(
                        f"{ckpt_path}: its hyper-parameters do not fit --model {name} ({problem})"
                    ) from None

        def _instantiate_trainer(self, config, callbacks):
            # No periodic checkpoint where checkpointing is off, or where the run brings its own ModelCheckpoint.
            from lightning.pytorch.callbacks import ModelCheckpoint

            own = [c for c in (config.get("callbacks") or []) if isinstance(c, ModelCheckpoint)]
            if config.get("enable_checkpointing") is False or own:
                callbacks = [c for c in callbacks if not isinstance(c, PeriodicCheckpoint)]
            if config.get("logger") in (None, True):  # the default logger: CSV, in the run's folder
                from lightning.pytorch.loggers import CSVLogger

                config = {**config, "logger": CSVLogger(save_dir=config.get("default_root_dir") or ".")}
            return super()._instantiate_trainer(config, callbacks)

    import warnings

    with warnings.catch_warnings():  # cwpo passes its own argv to LightningCLI on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return CwpoCLI(
            _load(entry.module),
            _load(entry.datamodule),
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # a bad argument raises: _main prints it as one line
            args=(["fit", *args] if run else args),
            run=run,
            auto_configure_optimizers=False,
        )


def main(argv: list[str] | None = None) -> int:
    """``cwpo fit``: a user error prints one line and returns 2 (``--debug``: its traceback)."""
    from cwpo.errors import run_command

    return run_command(_main, list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    name, rest = split_model_arg(argv)
    if name is None:
        print(usage())
        return 0 if any(a in ("-h", "--help") for a in rest) or not rest else 2
    if name not in REGISTRY:
        print(f"error: unknown --model {name!r}; registered: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    from jsonargparse import ArgumentError

    from cwpo.errors import argument_error

    try:
        build_cli(name, rest)
    except ArgumentError as err:
        raise argument_error(err, f"cwpo fit --model {name}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
