"""No committed test fixture names a path of a machine: a fixture that records /tmp/..., /home/..., C:\\... can make
a test pass only where that path exists (or fail only where it does not).

Every file that git tracks under tests/, except the test modules, is scanned: its bytes as they are (UTF-8,
UTF-16 and UTF-32 text, as JSON, pickles and numpy string arrays store it), the members of zip containers
(torch .pt checkpoints, .npz archives) decompressed, and the strings of JSON documents (.json, .ipynb) decoded
(JSON escapes backslashes: C:\\\\Users)."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Folders that exist on some machine: Linux and macOS homes and temporary folders, this project's work folder,
#: Windows drives. The look-behind keeps relative paths such as data/tmp/x out.
#: A Windows path needs a drive and two components (C:\\Users\\..., or with the backslashes escaped as in JSON
#: and Python source): three characters alone occur by chance in binary data.
MACHINE_PATH = re.compile(r"(?<![A-Za-z0-9._-])(?:/(?:tmp|root|home|work|Users|mnt)/|/var/folders/|/private/var/"
                          r"|[A-Za-z]:\\{1,2}[\w .-]+\\{1,2})[^\s\"'<>|]*")
#: Runs of at least 6 printable ASCII characters in each encoding that stores text (as `strings` finds them):
#: a path is text, and scanning runs only keeps the random bytes of tensors and compressed data out.
_TEXT_RUNS = {
    "ascii": re.compile(rb"[\x20-\x7e]{6,}"),
    "utf-16-le": re.compile(rb"(?:[\x20-\x7e]\x00){6,}"),
    "utf-16-be": re.compile(rb"(?:\x00[\x20-\x7e]){6,}"),
    "utf-32-le": re.compile(rb"(?:[\x20-\x7e]\x00\x00\x00){6,}"),
    "utf-32-be": re.compile(rb"(?:\x00\x00\x00[\x20-\x7e]){6,}"),
}
_MAX_MEMBER = 64 * 2**20  # test fixtures are small; a larger member is reported rather than read


def _paths_in_bytes(data: bytes) -> set[str]:
    found: set[str] = set()
    for encoding, runs in _TEXT_RUNS.items():
        for run in runs.finditer(data):
            text = run.group(0).decode(encoding)
            found.update(m.group(0) for m in MACHINE_PATH.finditer(text))
    return found


def _json_strings(doc: object) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield str(key)
            yield from _json_strings(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _json_strings(value)


def machine_paths(path: Path) -> list[str]:
    """Each machine path that ``path`` names, as ``"<where>: <path>"`` (where: the file or its member)."""
    found: list[str] = []
    data = path.read_bytes()
    found += [f"{path.name}: {p}" for p in sorted(_paths_in_bytes(data))]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.file_size > _MAX_MEMBER:
                    found.append(f"{path.name}[{info.filename}]: a {info.file_size}-byte member, too large to scan")
                    continue
                found += [f"{path.name}[{info.filename}]: {p}" for p in sorted(_paths_in_bytes(zf.read(info)))]
    if path.suffix in (".json", ".ipynb"):
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            found.append(f"{path.name}: not valid JSON ({exc})")
        else:
            for text in _json_strings(doc):
                found += [f"{path.name} (JSON string): {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    return sorted(set(found))


def committed_fixtures() -> list[Path]:
    """The files under tests/ that git tracks, test modules left out (every file under tests/ outside caches
    when this is not a git checkout)."""
    proc = subprocess.run(["git", "ls-files", "-z", "tests"], cwd=REPO_ROOT, capture_output=True)
    if proc.returncode == 0 and proc.stdout:
        names = [REPO_ROOT / n for n in proc.stdout.decode().split("\0") if n]
    else:
        names = [p for p in (REPO_ROOT / "tests").rglob("*")
                 if not {"__pycache__", ".pytest_cache"} & set(p.relative_to(REPO_ROOT).parts)]
    return sorted(p for p in names if p.is_file() and p.suffix != ".py")


def test_no_committed_fixture_names_a_machine_path() -> None:
    fixtures = committed_fixtures()
    assert fixtures, "no test fixture found under tests/ (expected at least tests/data/checkpoint_v1/checkpoint.pt)"
    problems = [f"{f.relative_to(REPO_ROOT)}: {hit}" for f in fixtures for hit in machine_paths(f)]
    assert not problems, ("committed test fixtures name paths of a machine (record a relative or obviously "
                          "nonexistent path instead):\n  " + "\n  ".join(problems))


# The scanner itself: each way a fixture can hold a path is found, relative paths are not.


@pytest.mark.parametrize("kind", ["torch", "npz", "json", "ipynb", "text", "utf16"])
def test_the_scan_finds_paths_in_every_container(tmp_path: Path, kind: str) -> None:
    bad, fine = "/tmp/v1fix/pastis", "v1fix/pastis"
    for value, expected in ((bad, True), (fine, False), ("C:\\Users\\me\\data", True), ("results/tmp/x", False)):
        if kind == "torch":
            path = tmp_path / "c.pt"
            torch.save({"config": {"dataset_root": value}, "w": torch.zeros(3)}, path)
        elif kind == "npz":
            path = tmp_path / "a.npz"
            np.savez_compressed(path, roots=np.array([value, "x"]))  # a numpy 'U' array: UTF-32 inside deflate
        elif kind in ("json", "ipynb"):
            path = tmp_path / f"d.{kind}"
            path.write_text(json.dumps({"cells": [{"source": [f"root = {value!r}"]}]}))
        elif kind == "text":
            path = tmp_path / "t.yaml"
            path.write_text(f"dataset_root: {value}\n")
        else:
            path = tmp_path / "t.txt"
            path.write_bytes(value.encode("utf-16-le"))
        hits = machine_paths(path)
        assert bool(hits) == expected, (kind, value, hits)
        if expected:
            assert path.name in hits[0] and value.split("\\")[0][:4] in " ".join(hits)
