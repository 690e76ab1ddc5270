"""The ``cwpo`` console script: ``cwpo fit|annotate|run ...`` dispatch to the module entry points."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "fit": ("cwpo.fit", "train a registered module (annotator, pairrm, sft, policy) with LightningCLI"),
    "annotate": ("cwpo.annotate", "label D_U with a trained weak annotator, with confidence (stage 2)"),
    "run": ("cwpo.run", "the whole pipeline from one experiment YAML (no config: the synthetic default)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cwpo COMMAND [ARGS...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<9} {help_text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    entry = importlib.import_module(COMMANDS[command][0])
    return int(entry.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
