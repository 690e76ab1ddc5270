"""``cwpo run [--config experiment.yaml]``: the whole CW-PO experiment, cached stage by stage.

With no config it runs the embedded default (the synthetic task, a tiny strong model pretrained on the task's
unlabelled text, Human / Human-100 / WS-DPO / DPO (c = 1) / CW-DPO / CW-IPO / CW-rDPO / top-30 %, five seeds, 500
test prompts) on a CPU in about ten minutes and prints the report, its wall time and its CPU time. Any field can be
overridden: ``cwpo run --seeds [0] --methods [cw-dpo,human] --policy.trainer.max_epochs 2``.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path


def parser():
    from cwpo.pipeline.config import parser as experiment_parser

    return experiment_parser("cwpo run", __doc__.split("\n\n")[0])


def load_config(argv: list[str]):
    """Parse ``argv`` (YAML and overrides) into an :class:`ExperimentConfig` and the config text it resolved to."""
    from jsonargparse import ArgumentError

    from cwpo.errors import argument_error

    p = parser()
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--verbose" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv[i] = "--verbose=true"  # a bare --verbose is the flag
    try:
        namespace = p.parse_args(argv)
    except ArgumentError as err:  # a bad or unknown argument: one line, not the usage text
        raise argument_error(err, "cwpo run") from None
    text = p.dump(namespace, skip_none=False)
    from cwpo.pipeline.config import from_namespace

    return from_namespace(p, namespace), text


def results_section(markdown: str) -> str:
    """The report's results table (its ``## ... mean ± std over seeds`` section, without the plot), for the console:
    the whole report, its commands and config are in the file whose path follows."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ") and "mean ± std over seeds" in line), 0)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(line for line in lines[start:end] if not line.startswith("![")).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``cwpo run``: a user error prints its message and returns 2 (``--debug``: its traceback)."""
    from cwpo.errors import run_command

    return run_command(_main, list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config, config_text = load_config(argv)

    from cwpo.evaluation.report import build_report
    from cwpo.pipeline.experiment import Experiment

    start, cpu_start = time.perf_counter(), time.process_time()
    experiment = Experiment(config)
    rows = experiment.run()
    elapsed = time.perf_counter() - start
    command = " ".join(["cwpo run", *map(shlex.quote, argv)])
    annotated = None
    annotate_dirs = experiment.annotated_files()
    if annotate_dirs:
        from cwpo.data.files import iter_rows

        annotated = [row for path in annotate_dirs for _, row in iter_rows(path)]  # every seed's weak labels
    report_dir = Path(config.run_dir) / "report"
    paths = build_report(rows, report_dir, commands=[command], config_text=config_text, annotated_records=annotated,
                         title=config.name, sections=experiment.report_sections(report_dir, rows))  # fmt: skip
    print(results_section(Path(paths["markdown"]).read_text()) if "markdown" in paths else "")
    cpu = time.process_time() - cpu_start
    print(f"stages computed: {len(experiment.stages.computed)}, reused: {len(experiment.stages.reused)}; "
          f"wall time {elapsed:.0f} s, CPU time of this process {cpu:.0f} s; report: {paths.get('markdown')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
