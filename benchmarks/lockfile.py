"""Read the pins of ``requirements.lock``, the hashed lock that ``make lock`` compiles from ``requirements.in``.

Asks no registry: the versions are the lock's own text. Used by :mod:`benchmarks.fetch_wheels` (the GPU machine's
wheels) and by ``tests/test_environment.py`` (the venv is the lock's).
"""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements.lock"


def locked_versions(path: Path = LOCK) -> dict[str, str]:
    """Map each distribution pinned in the lock ``path`` (its canonical name) to its exact version.

    Every requirement of the lock must read ``name==version`` (hashes may follow, markers may not: the lock is
    compiled for one Python); ``-``options and comments are skipped. A bad line or a second pin of one name is a
    ValueError naming the file and the line.
    """
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the lock ({err.strerror}); make lock writes it") from None
    versions: dict[str, str] = {}
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            continue
        spec = line.split(" --hash", 1)[0].strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            raise ValueError(f"{path}:{number}: expected name==version, got {spec!r}") from None
        pins = list(req.specifier)
        if req.marker is not None or req.url or len(pins) != 1 or pins[0].operator != "==" or "*" in pins[0].version:
            raise ValueError(f"{path}:{number}: expected name==version with no marker, got {spec!r}")
        name = canonicalize_name(req.name)
        if name in versions:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        versions[name] = pins[0].version
    return versions


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """The lock's lines with comments removed and backslash continuations joined, each with its first line number."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if content.rstrip().endswith("\\"):
            pending += content.rstrip()[:-1] + " "
            continue
        joined = (pending + content).strip()
        pending = ""
        if joined:
            lines.append((start, joined))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines
