"""The pipeline's Trainers announce nothing: no GPU/TPU lines, no litlogger tip, each on stderr zero times."""

from __future__ import annotations

import logging

from cwpo.pipeline.experiment import _quiet, _trainer


def test_quiet_trainer_prints_no_device_lines_or_tips(tmp_path, capfd):
    logging.basicConfig(level=logging.INFO, force=True)
    with _quiet():
        _trainer(tmp_path, {"max_epochs": 1})
    err = capfd.readouterr().err
    assert "GPU available" not in err and "TPU available" not in err and "litlogger" not in err


def test_quiet_turns_off_transformers_and_datasets_bars_and_restores_them():
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as hf_logging

    with _quiet():
        assert not hf_logging.is_progress_bar_enabled() and not datasets_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() and datasets_logging.is_progress_bar_enabled()


def test_quiet_lets_each_log_message_through_once_and_hides_deprecations(capfd):
    import warnings

    logging.basicConfig(level=logging.INFO, force=True, format="%(message)s")
    log = logging.getLogger("cwpo.data.report")
    with _quiet():
        for _ in range(3):
            log.info("synthetic train: kept 240 of 240")
        log.info("synthetic test: kept 12 of 12")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    log.info("synthetic train: kept 240 of 240")  # outside: as before
    err = capfd.readouterr().err.splitlines()
    assert err == [
        "synthetic train: kept 240 of 240",
        "synthetic test: kept 12 of 12",
        "synthetic train: kept 240 of 240",
    ]


def test_verbose_changes_nothing(capfd):
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.INFO, force=True, format="%(message)s")
    with _quiet(verbose=True):
        assert hf_logging.is_progress_bar_enabled()
        for _ in range(2):
            logging.getLogger("cwpo.data.report").info("kept 240 of 240")
    assert capfd.readouterr().err.splitlines() == ["kept 240 of 240"] * 2
