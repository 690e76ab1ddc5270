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


def test_quiet_turns_off_transformers_and_datasets_bars_and_restores_them():
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as hf_logging

    with _quiet():
        assert not hf_logging.is_progress_bar_enabled() and not datasets_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() and datasets_logging.is_progress_bar_enabled()
