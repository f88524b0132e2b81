"""What a config names of the corruptions of :mod:`utae.perturb.corruptions`: their kinds, severities and severity table,
the checks of a kind and a severity, and the parsing of the two config fields (torch-free, so that
:class:`utae.config.run_config.RunConfig` validates them without importing torch).

* ``RunConfig.train_corruption``: a training augmentation, :func:`parse_corruption_spec` with ``training=True``:
  ``{"kind": "clouds", "severity": 3 or [1, 5], "fraction": 0.25}`` (or ``"clouds:1-5"`` with a fraction given
  apart), stored as :meth:`CorruptionSpec.to_json`. Training also takes the kind :data:`MIX` (``"mix"``): each
  corrupted sample gets one of the realistic kinds :data:`MIX_KINDS`, drawn per sample
  (:meth:`CorruptionSpec.kind_for`).
* ``RunConfig.test_corruptions``: the test-time corruptions, :func:`parse_test_corruptions`: a list of
  ``"kind:severity"`` strings (or ``{"kind", "severity"}`` mappings), or ``"all"`` (:data:`ALL`) for every kind at
  every severity, stored as ``"kind:severity"`` strings in the given order.

Every error is one line that names the field and the allowed values.

Public names (import them from here; :mod:`utae.perturb.corruptions` holds only the torch code that draws the
corruptions): :data:`KINDS`, :data:`SEVERITIES`, :data:`SEVERITY_TABLE`, :func:`check_kind`,
:func:`check_severity`, :func:`corruption_params`, :func:`severity_table_rows`, :class:`CorruptionSpec`,
:func:`parse_corruption_spec`, :data:`ALL`, :func:`parse_test_corruptions`, :func:`all_test_corruptions`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "SEVERITIES",
    "SEVERITY_TABLE",
    "ALL",
    "MIX",
    "MIX_KINDS",
    "check_kind",
    "check_severity",
    "kind_seed",
    "corruption_params",
    "severity_table_rows",
    "CorruptionSpec",
    "parse_corruption_spec",
    "all_test_corruptions",
    "parse_test_corruptions",
]

#: The corruption kinds, in the order reports list them.
KINDS: tuple[str, ...] = ("gaussian", "clouds", "haze", "missing_dates", "band_dropout", "misregistration",
                          "date_shift")
#: The severities of every kind (0, or "none", is the identity and is not listed).
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: kind -> severity -> parameters (plain JSON types); see the module docstring for their meaning.
SEVERITY_TABLE: dict[str, dict[int, dict[str, float | int]]] = {
    "gaussian": {s: {"std": v} for s, v in zip(SEVERITIES, (0.1, 0.25, 0.5, 1.0, 2.0))},
    "clouds": {s: {"date_share": d, "cover": c}
               for s, d, c in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.45, 0.6), (0.3, 0.4, 0.5, 0.6, 0.7))},
    "haze": {s: {"date_share": d, "opacity": a}
             for s, d, a in zip(SEVERITIES, (0.2, 0.3, 0.45, 0.6, 0.8), (0.1, 0.2, 0.3, 0.45, 0.6))},
    "missing_dates": {s: {"drop_share": v} for s, v in zip(SEVERITIES, (0.1, 0.25, 0.4, 0.6, 0.8))},
    "band_dropout": {s: {"date_share": d, "n_bands": n}
                     for s, d, n in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.45, 0.6), (1, 2, 3, 4, 5))},
    "misregistration": {s: {"max_shift": k, "date_share": d}
                        for s, k, d in zip(SEVERITIES, (1, 1, 2, 3, 4), (0.25, 0.5, 0.5, 0.75, 1.0))},
    "date_shift": {s: {"days": v} for s, v in zip(SEVERITIES, (5, 10, 20, 30, 45))},
}
#: Keeps the severity draw of a training sample apart from every other seeded stream.
_SEVERITY_STREAM = 13
#: Keeps the kind draw of a :data:`MIX` training sample apart from every other seeded stream.
_KIND_STREAM = 14
#: The training kind that mixes the realistic corruptions: each corrupted sample gets one of :data:`MIX_KINDS`.
MIX = "mix"
#: The kinds of :data:`MIX`: every kind but ``gaussian`` (the failures real Sentinel-2 series have).
MIX_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "gaussian")


def kind_seed(kind: str) -> int:
    """The integer that stands for ``kind`` in a seed key: the CRC-32 of its name (never Python's ``hash()``, so
    the same in every process and version)."""
    return zlib.crc32(kind.encode("ascii"))


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def check_kind(kind: Any, field: str = "kind", allow_mix: bool = False) -> str:
    """``kind`` if it names a corruption (or, with ``allow_mix``, is :data:`MIX`); else a one-line ValueError
    naming ``field`` and the allowed kinds."""
    allowed = (*KINDS, MIX) if allow_mix else KINDS
    if not isinstance(kind, str) or kind not in allowed:
        hint = "" if allow_mix or kind != MIX else f" ({MIX!r} is a training augmentation only)"
        raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {kind!r}{hint}")
    return kind


def check_severity(severity: Any, field: str = "severity", allow_none: bool = True) -> int:
    """The severity as an int in 0..5 (0 for ``"none"`` when ``allow_none``); else a one-line ValueError."""
    if allow_none and (severity is None or (isinstance(severity, str) and severity.strip().lower() == "none")):
        return 0
    if isinstance(severity, str) and severity.strip().isdigit():
        severity = int(severity.strip())
    allowed = "0 (or 'none'), 1, 2, 3, 4, 5" if allow_none else "1, 2, 3, 4, 5"
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise ValueError(f"{field} must be an integer in {allowed}; got {severity!r}")
    low = 0 if allow_none else 1
    if not low <= int(severity) <= SEVERITIES[-1]:
        raise ValueError(f"{field} must be one of {allowed}; got {severity!r}")
    return int(severity)


def corruption_params(kind: str, severity: int | str | None) -> dict[str, float | int]:
    """The parameters of ``kind`` at ``severity`` (a copy of :data:`SEVERITY_TABLE`'s entry; ``{}`` for 0)."""
    check_kind(kind)
    sev = check_severity(severity)
    return {} if sev == 0 else dict(SEVERITY_TABLE[kind][sev])


def severity_table_rows() -> list[dict[str, Any]]:
    """The severity table as rows ``{"kind", "severity", **parameters}`` (for a README table or a CSV)."""
    return [{"kind": k, "severity": s, **p} for k in KINDS for s, p in SEVERITY_TABLE[k].items()]


# --------------------------------------------------------------------------------------------------
# A config field's value
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorruptionSpec:
    """A corruption as a config names it: ``kind``, a fixed ``severity`` or an inclusive range
    ``(low, high)`` (training draws one per sample), and for training the ``fraction`` of samples corrupted.
    A training ``kind`` may be :data:`MIX`: each sample's kind is then drawn from :data:`MIX_KINDS`
    (:meth:`kind_for`).

    :meth:`to_json` gives plain JSON types: ``{"kind": "clouds", "severity": 3}`` or
    ``{"kind": "clouds", "severity": [1, 5], "fraction": 0.25}``.
    """

    kind: str
    severity: int | tuple[int, int]
    fraction: float | None = None

    @property
    def severities(self) -> tuple[int, ...]:
        """The severities this spec may draw."""
        if isinstance(self.severity, tuple):
            return tuple(range(self.severity[0], self.severity[1] + 1))
        return (self.severity,)

    def severity_for(self, seed: int, index: int) -> int:
        """The severity of sample ``index`` (a fixed severity, or one drawn uniformly in the range from
        ``(seed, index, kind)`` alone, through ``numpy.random.SeedSequence``)."""
        sev = self.severities
        if len(sev) == 1:
            return sev[0]
        return _sample_choice(sev, seed, index, _SEVERITY_STREAM, kind_seed(self.kind))

    def kind_for(self, seed: int, index: int) -> str:
        """The kind of sample ``index``: ``kind``, or for :data:`MIX` one of :data:`MIX_KINDS` drawn uniformly
        from ``(seed, index)`` alone (a stream apart from the severity's)."""
        if self.kind != MIX:
            return self.kind
        return _sample_choice(MIX_KINDS, seed, index, _KIND_STREAM)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind,
                               "severity": list(self.severity) if isinstance(self.severity, tuple) else self.severity}
        if self.fraction is not None:
            out["fraction"] = self.fraction
        return out

    def label(self) -> str:
        """``"clouds:3"`` or ``"clouds:1-5"``."""
        s = self.severity
        return f"{self.kind}:{s[0]}-{s[1]}" if isinstance(s, tuple) else f"{self.kind}:{s}"


def _sample_choice(options: tuple[Any, ...], seed: int, index: int, stream: int, *extra: int) -> Any:
    """One of ``options``, drawn uniformly for training sample ``index`` from ``(seed, stream, index, *extra)``
    alone, through ``numpy.random.SeedSequence``."""
    if isinstance(seed, bool) or isinstance(index, bool) or int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be ints >= 0; got seed={seed!r}, index={index!r}")
    key = [int(seed), stream, int(index), *extra]
    return options[int(np.random.default_rng(np.random.SeedSequence(key)).integers(len(options)))]


def _parse_severity(value: Any, field: str) -> int | tuple[int, int]:
    if isinstance(value, str) and "-" in value:
        value = value.split("-", 1)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{field} must be a severity 1..5 or a range [low, high] within 1..5; got {value!r}")
        low, high = (check_severity(v, field, allow_none=False) for v in value)
        if low > high:
            raise ValueError(f"{field} range must have low <= high within 1..5; got {value!r}")
        return low if low == high else (low, high)
    return check_severity(value, field, allow_none=False)


def parse_corruption_spec(value: Any, *, training: bool = False, field: str = "corruption") -> CorruptionSpec:
    """A :class:`CorruptionSpec` from a config value: ``"kind:severity"``, ``"kind:low-high"``, or a mapping
    ``{"kind": ..., "severity": s | [low, high], "fraction": f}``.

    ``training=True`` (an augmentation) requires ``fraction`` in (0, 1]; a test-time spec takes no fraction and a
    fixed severity. Errors are one line and name ``field``: an unknown kind, a severity outside 1..5, a training
    augmentation without a fraction.
    """
    if isinstance(value, CorruptionSpec):
        value = value.to_json()
    if isinstance(value, str):
        kind, sep, sev = value.partition(":")
        if not sep:
            raise ValueError(f"{field} must read 'kind:severity' (e.g. 'clouds:3' or 'clouds:1-5'); got {value!r}")
        value = {"kind": kind.strip(), "severity": sev.strip()}
    if not isinstance(value, Mapping):
        raise ValueError(f"{field} must be 'kind:severity' or a mapping with kind, severity (and fraction for "
                         f"training); got {type(value).__name__}")
    unknown = sorted(set(value) - {"kind", "severity", "fraction"})
    if unknown:
        raise ValueError(f"{field} has unknown keys {unknown}; allowed: kind, severity, fraction")
    if "kind" not in value or "severity" not in value:
        raise ValueError(f"{field} needs 'kind' (one of {', '.join(KINDS)}) and 'severity' (1..5 or [low, high])")
    kind = check_kind(value["kind"], f"{field}.kind", allow_mix=training)
    severity = _parse_severity(value["severity"], f"{field}.severity")
    fraction = value.get("fraction")
    if training:
        if fraction is None:
            raise ValueError(f"{field}.fraction is required for a training augmentation: the share of training "
                             "samples corrupted, in (0, 1]")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"{field}.fraction must be a number in (0, 1]; got {fraction!r}")
        fraction = float(fraction)
    else:
        if fraction is not None:
            raise ValueError(f"{field}.fraction applies to training augmentations only; a test-time corruption "
                             f"takes kind and severity; got fraction={fraction!r}")
        if isinstance(severity, tuple):
            raise ValueError(f"{field}.severity must be a single severity 1..5 at test time; got {value['severity']!r}")
    return CorruptionSpec(kind=kind, severity=severity, fraction=fraction)



# --------------------------------------------------------------------------------------------------
# The test-time list
# --------------------------------------------------------------------------------------------------

#: The shorthand of ``test_corruptions`` for every kind at every severity (:func:`all_test_corruptions`).
ALL = "all"


def all_test_corruptions() -> tuple[str, ...]:
    """Every kind of :data:`KINDS` at every severity of :data:`SEVERITIES`, as ``"kind:severity"`` (35 entries)."""
    return tuple(f"{k}:{s}" for k in KINDS for s in SEVERITIES)


def parse_test_corruptions(value: Any, field: str = "test_corruptions") -> tuple[str, ...]:
    """The test-time corruptions of a config as ``"kind:severity"`` strings, in the given order.

    ``value``: None or an empty list (none), ``"all"`` (:func:`all_test_corruptions`), one ``"kind:severity"``
    string, or a list of ``"kind:severity"`` strings, ``{"kind", "severity"}`` mappings or ``"all"``. A range or a
    ``fraction`` is an error (a test names single severities), as is an entry listed twice.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field} must be a list of 'kind:severity' strings (kind one of {', '.join(KINDS)}; "
                         f"severity 1..5) or {ALL!r}; got {value!r}")
    out: list[str] = []
    for entry in value:
        if isinstance(entry, str) and entry.strip().lower() == ALL:
            names = list(all_test_corruptions())
        else:
            names = [parse_corruption_spec(entry, training=False, field=field).label()]
        for name in names:
            if name in out:
                raise ValueError(f"{field} lists {name} more than once; got {value!r}")
            out.append(name)
    return tuple(out)
