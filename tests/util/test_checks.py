"""utae.util.checks.safe_path_name: the one rule for user-given names that become paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from utae.util.checks import MAX_PATH_NAME, safe_path_name
from utae.config.run_config import run_id_for


@pytest.mark.parametrize("name", ["cpu-amd-epyc-avx2", "noise0.5-seed1", "lr1e+06", "mac_m2", "A", "9", "x..y",
                                  "a" * MAX_PATH_NAME])
def test_safe_names_are_returned(name: str) -> None:
    assert safe_path_name(name, "--platform") == name


@pytest.mark.parametrize("name, why", [
    ("", "is empty"),
    (".", "names the current or the parent folder"),
    ("..", "names the current or the parent folder"),
    ("../../x", "holds a path separator"),
    ("a/b", "holds a path separator"),
    ("/tmp", "holds a path separator"),
    ("a\\b", "holds a path separator"),
    (".hidden", "starts with '.'"),
    ("-rf", "starts with '-'"),
    ("+x", "starts with '\\+'"),
    ("my machine", "holds ' '"),
    ("caf\u00e9", "holds '\u00e9'"),
    ("x\n", "holds '\\\\n'"),
    ("a\0b", "holds '\\\\x00'"),
    ("a" * (MAX_PATH_NAME + 1), f"is {MAX_PATH_NAME + 1} characters long"),
])
def test_unsafe_names_are_refused_naming_the_parameter(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=rf"^--platform '.*' {why}; expected a single folder name of ASCII letters, "
                                         rf"digits, '\.', '_', '\+', '-', starting with a letter or a digit, at most "
                                         rf"{MAX_PATH_NAME} characters$") as info:
        safe_path_name(name, "--platform")
    assert "\n" not in str(info.value)


def test_non_strings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^AS: expected a name \(str\), got NoneType None"):
        safe_path_name(None, "AS")
    with pytest.raises(ValueError, match=r"got PosixPath|got WindowsPath"):
        safe_path_name(Path("a"), "AS")


def test_a_safe_name_stays_inside_its_folder(tmp_path: Path) -> None:
    # whatever passes the rule names a direct child of the folder it is joined to
    for name in ("a", "a.b", "x..y", "lr1e+06", "Z-9_"):
        child = (tmp_path / safe_path_name(name, "name")).resolve()
        assert child.parent == tmp_path.resolve() and child.name == name


def test_run_ids_follow_the_rule() -> None:
    grids = [{"noise_std": 0.5, "seed": 1}, {"lr": 1e6}, {"lr": -0.001}, {"encoder_widths": [16, 32]},
             {"optimizer": "adam w/ decay"}, {}]
    for grid in grids:
        run_id = run_id_for(grid)
        assert safe_path_name(run_id, "run id") == run_id


def test_item_index_counts_from_the_end_and_names_the_size() -> None:
    from utae.util.checks import item_index

    assert [item_index(i, 3) for i in (0, 2, -1, -3)] == [0, 2, 2, 0]
    for bad in (3, -4):
        with pytest.raises(IndexError, match=rf"index {bad} out of range for a dataset of 3 items"):
            item_index(bad, 3)
