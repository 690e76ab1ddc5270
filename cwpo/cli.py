"""The ``cwpo`` console script: ``cwpo fit|annotate|run|evaluate|export ...`` dispatch to the module entry points.

Every command takes ``--name value`` flags (``--data.split_ratio 0.3``, ``--split_ratio 0.3``), reports a user
error as ``error: <message>`` with exit status 2 and no traceback, and shows the traceback with ``--debug``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "fit": ("cwpo.fit", "train a registered module (annotator, pairrm, sft, policy) with LightningCLI"),
    "annotate": ("cwpo.annotate", "label D_U with a trained weak annotator, with confidence (stage 2)"),
    "run": ("cwpo.run", "the whole pipeline from one experiment YAML (no config: the synthetic default)"),
    "evaluate": ("cwpo.evaluate", "a trained adapter or model against its reference: GRA, gold reward, held-out acc."),
    "export": ("cwpo.modules.export", "merge an exported adapter into its base model (export merge ADAPTER OUT)"),
}


def main(argv: list[str] | None = None) -> int:
    from cwpo.errors import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cwpo COMMAND [ARGS...] [--debug]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<9} {help_text}")
        print("\n'cwpo COMMAND --help' lists a command's arguments; --debug shows the traceback of an error.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    entry = importlib.import_module(COMMANDS[command][0])
    return run_command(entry.main, rest)


if __name__ == "__main__":
    sys.exit(main())
