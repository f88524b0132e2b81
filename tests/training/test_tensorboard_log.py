"""utae.training.tensorboard_log: a run's per-epoch scalars as TensorBoard event files, read back with TensorBoard's own
reader (EventAccumulator)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utae.training.run import HISTORY_COLUMNS
from utae.training.tensorboard_log import SCALAR_TAGS, EpochScalars, read_scalars, tensorboard_dir


def row(epoch: int, shift: float = 0.0) -> dict[str, float]:
    """A history.csv row with every column of the run's history, values that differ by epoch and column."""
    out: dict[str, float] = {"epoch": epoch}
    for i, col in enumerate(c for c in HISTORY_COLUMNS if c != "epoch"):
        out[col] = 1.0 / (epoch + 1) + 0.01 * i + shift
    return out


def test_every_history_column_has_a_tag() -> None:
    assert set(HISTORY_COLUMNS) - {"epoch"} == set(SCALAR_TAGS)


def test_three_epochs_read_back(tmp_path: Path) -> None:
    log_dir = tensorboard_dir(tmp_path / "run")
    rows = [row(e) for e in (1, 2, 3)]
    with EpochScalars(log_dir) as log:
        for r in rows:
            log.add(r)
    scalars = read_scalars(log_dir)
    assert set(scalars) == set(SCALAR_TAGS.values())
    for col, tag in SCALAR_TAGS.items():
        assert [s for s, _ in scalars[tag]] == [1, 2, 3]
        # event files hold float32: compare at float32 resolution
        np.testing.assert_array_equal([v for _, v in scalars[tag]], np.float32([r[col] for r in rows]))


def test_live_reading_sees_each_epoch_as_it_is_added(tmp_path: Path) -> None:
    log = EpochScalars(tmp_path)
    acc = EventAccumulator(str(tmp_path))
    log.add(row(1))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/val")] == [1]
    log.add(row(2))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2]
    log.close()


def test_a_resume_continues_without_duplicate_steps(tmp_path: Path) -> None:
    # The run wrote epochs 1..3, then was interrupted; its checkpoint holds epochs 1..2, so epoch 3 is trained
    # again (other values) and epoch 4 follows. A TensorBoard watching all along, and a fresh one, both show
    # epochs 1..4 once each, with epoch 3's new values.
    first = [row(1), row(2), row(3)]
    watcher = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    with EpochScalars(tmp_path) as log:
        for r in first:
            log.add(r)
    watcher.Reload()
    assert [e.step for e in watcher.Scalars("miou/val")] == [1, 2, 3]
    again = [row(3, shift=0.5), row(4, shift=0.5)]
    with EpochScalars(tmp_path, history=first[:2]) as log:
        for r in again:
            log.add(r)
    expected = first[:2] + again
    watcher.Reload()
    for scalars in (read_scalars(tmp_path), {t: [(e.step, e.value) for e in watcher.Scalars(t)]
                                             for t in SCALAR_TAGS.values()}):
        for col, tag in SCALAR_TAGS.items():
            assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4], (tag, scalars[tag])
            np.testing.assert_array_equal([v for _, v in scalars[tag]], np.float32([r[col] for r in expected]))
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # the earlier file stays: a live reader reads it


def test_reading_a_resumed_run_does_not_print_tensorboards_purge_warning(tmp_path: Path, capfd, caplog) -> None:
    first = [row(1), row(2), row(3)]
    with EpochScalars(tmp_path) as log:
        for r in first:
            log.add(r)
    with EpochScalars(tmp_path, history=first[:2]) as log:  # resumed from epoch 2: purges epoch 3 of the first file
        log.add(row(3, shift=0.5))
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        scalars = read_scalars(tmp_path)
    out, err = capfd.readouterr()
    assert "Removing" not in out + err and "out of order" not in out + err and caplog.records == []
    # the purge still happened: each epoch once, epoch 3 with the resumed run's value
    assert [s for s, _ in scalars["loss/val"]] == [1, 2, 3]
    assert scalars["loss/val"][-1][1] == float(np.float32(row(3, shift=0.5)["val_loss"]))
    # only during that read: TensorBoard's own reader still warns afterwards, as before
    with caplog.at_level(logging.WARNING):
        EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    assert any("Removing" in r.getMessage() and r.name == "tensorboard" for r in caplog.records)
    assert logging.getLogger("tensorboard").filters == []


def test_rows_out_of_order_nan_and_non_numbers(tmp_path: Path) -> None:
    with EpochScalars(tmp_path) as log:
        log.add({"epoch": 1, "val_loss": float("nan"), "train_loss": np.float32(0.5), "note": "text", "ok": True})
        with pytest.raises(ValueError, match=r"epoch 1 comes after epoch 1; each epoch is written once"):
            log.add({"epoch": 1, "val_loss": 1.0})
        with pytest.raises(ValueError, match=r"integer 'epoch'"):
            log.add({"epoch": 2.5, "val_loss": 1.0})
        with pytest.raises(ValueError, match=r"integer 'epoch'"):
            log.add({"val_loss": 1.0})
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"loss/val", "loss/train"}
    assert math.isnan(scalars["loss/val"][0][1]) and scalars["loss/train"] == [(1, 0.5)]


def test_an_evaluation_only_run_writes_epoch_0(tmp_path: Path) -> None:
    EpochScalars(tmp_path, history=[{"epoch": 0, "val_miou": 0.25, "val_loss": 1.5}]).close()
    assert read_scalars(tmp_path) == {"miou/val": [(0, 0.25)], "loss/val": [(0, 1.5)]}


def test_resumes_in_quick_succession_keep_the_file_order(tmp_path: Path) -> None:
    # TensorBoard reads event files in name order, and names start with the creation second: a resume within the
    # same second as the previous file must still come after it (each session here takes milliseconds).
    history: list[dict[str, float]] = []
    for session in range(3):
        with EpochScalars(tmp_path, history=history) as log:
            new = row(len(history) + 1, shift=session)
            log.add(new)
        history.append(new)
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 3 and len({n.split(".")[3] for n in names}) == 3  # three distinct seconds
    scalars = read_scalars(tmp_path)
    assert scalars["loss/val"] == [(r["epoch"], float(np.float32(r["val_loss"]))) for r in history]  # float32 events
