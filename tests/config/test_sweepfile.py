"""The one reader of sweep files and ``--set`` values: what YAML would accept silently (a key given twice) or
only with a traceback (a tag, a malformed value) is a one-line error naming the file or argument and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from utae.config.sweepfile import SweepError, load_sweep, parse_set, read_yaml


def _one_line(exc: pytest.ExceptionInfo[SweepError]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("body, key, lines", [
    ("dataset_root: {root}\nfixed:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\ngrid:\n  seed: [0]\n", "epochs", (3, 5)),
    ("dataset_root: {root}\ngrid:\n  seed: [0]\ngrid:\n  seed: [1]\n", "grid", (2, 4)),
    ("dataset_root: {root}\nsynthetic:\n  t_range: [3, 5]\n  seed: 1\n  seed: 2\n", "seed", (4, 5)),
    ("dataset_root: {root}\nfixed:\n  test_noise_stds: [0.0, {{a: 1, a: 2}}]\n", "a", (3, 3)),
])
def test_a_key_given_twice_names_the_file_the_key_and_both_lines(tmp_path: Path, data_root: Path, body: str,
                                                                  key: str, lines: tuple[int, int]) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(body.format(root=data_root))
    with pytest.raises(SweepError) as exc:
        load_sweep(path)
    message = _one_line(exc)
    assert message.startswith(f"{path}: line {lines[1]}, ")
    assert f"the key {key!r} is given twice, on lines {lines[0]} and {lines[1]}" in message


@pytest.mark.parametrize("value, shown", [
    ("!!python/object:os.system 1", "'!!python/object:os.system'"),
    ("!!python/object/apply:os.system ['true']", "'!!python/object/apply:os.system'"),
    ("!foo 1", "'!foo'"),
])
def test_a_yaml_tag_is_a_one_line_error_naming_the_file_and_line(tmp_path: Path, data_root: Path, value: str,
                                                                  shown: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"dataset_root: {data_root}\nfixed:\n  epochs: {value}\n")
    with pytest.raises(SweepError) as exc:
        load_sweep(path)
    message = _one_line(exc)
    assert message.startswith(f"{path}: line 3, column 11: the YAML tag {shown} is not allowed")


def test_plain_yaml_still_reads_as_before() -> None:
    # a merge key repeats keys on purpose; the same key in two different mappings is no repetition
    assert read_yaml("base: &b {lr: 1e-3}\nrun:\n  <<: *b\n  seed: 1\nother: {seed: 2}\n") == {
        "base": {"lr": 0.001}, "run": {"lr": 0.001, "seed": 1}, "other": {"seed": 2}}
    assert read_yaml("amp: off\nx: [8, 8]\n") == {"amp": "off", "x": [8, 8]}


@pytest.mark.parametrize("item, expected", [
    ("encoder_widths=[8,8", "expected ',' or ']', but got '<stream end>'"),
    ("lr={a: 1", "expected ',' or '}'"),
    ("seed", "expected key=value"),
    ("=3", "expected key=value"),
    ("lr=!!python/object:os.system 1", "the YAML tag '!!python/object:os.system' is not allowed"),
])
def test_a_malformed_set_value_names_the_argument_and_what_was_expected(item: str, expected: str) -> None:
    with pytest.raises(SweepError) as exc:
        parse_set([item])
    message = _one_line(exc)
    assert message.startswith(f"--set {item}: ")
    assert expected in message


def test_a_set_key_given_twice_is_an_error() -> None:
    with pytest.raises(SweepError, match=r"^--set seed=2: seed is set twice; keep one$"):
        parse_set(["seed=1", "seed=2"])
    assert parse_set(["encoder_widths=[8, 8]", "amp=off"]) == {"encoder_widths": [8, 8], "amp": "off"}
