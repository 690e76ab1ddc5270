"""The pipeline's Trainers announce nothing: no GPU/TPU lines, no litlogger tip, each on stderr zero times."""

from __future__ import annotations

import logging

from cwpo.pipeline.experiment import _quiet, _trainer


def test_quiet_trainer_prints_no_device_lines_or_tips(tmp_path, capfd):
    logging.basicConfig(level=logging.INFO, force=True)
    with _quiet():
        _trainer(tmp_path, 1, {})
    err = capfd.readouterr().err
    assert "GPU available" not in err and "TPU available" not in err and "litlogger" not in err
