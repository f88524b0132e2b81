"""The one reader of sweep files (``params/*.yaml``): a grid of :class:`utae.config.run_config.RunConfig` values.

:func:`load_sweep` reads, expands and checks a sweep file; :func:`load_config_file` (the command line's
``--config``) is one point of a sweep. The keys a sweep may set are the RunConfig fields (derived from the
dataclass, :func:`utae.config.run_config.run_config_fields`) that the run notebook's parameters cell defines. A sweep
file is a YAML mapping::

    name: default                  # optional label (default: the file's stem)
    description: ...               # optional
    dataset_root: ${PASTIS_ROOT}   # any RunConfig field at the top level is a fixed value
    fixed:                         # fixed values of RunConfig fields, the same for every point
      epochs: 8
      test_noise_stds: [0.0, 0.5, 1.0]
    grid:                          # lists of values; the points are their Cartesian product
      noise_std: [0.0, 0.25, 0.5]
      seed: [0, 1, 2]
    timeout: 3600                  # optional: papermill's execution timeout per cell, in seconds
    synthetic:                     # optional: the dataset_root is synthetic data with these generator options
      t_range: [10, 14]            #   (utae.pastis.synthetic.generator_options), written before the first point runs
    seeds: {min: 3, max: 20, target_halfwidth: 3.0, comparisons: [...]}  # optional, instead of grid.seed:
                                   #   seeds chosen by precision (utae.config.seedrule, utae.sweep.rounds)

A grid key that is not a field names **cases**: a mapping of labels to the fields each case sets, for fields
that change together (a training augmentation is the noise or a corruption, never a product of both)::

    grid:
      aug:                         # a case key: its points are the labels
        none: {}                   #   the fixed values (or the defaults) as they are
        gaussian: {noise_std: 1.0}
        clouds: {train_corruption: {kind: clouds, severity: [1, 5], fraction: 0.25}}
      seed: [0, 1, 2]

A case's fields override ``fixed`` (which gives the value of the cases that do not set them); a field may belong
to one case key only and not be a plain grid key too. The run id names a case by its key and label
(``aug-clouds-seed0``, :func:`utae.config.run_config.run_id_for`); ``--set aug=clouds`` picks it in
:func:`load_config_file`.

A file with neither ``fixed`` nor ``grid`` is a single run: every top-level key is a field. ``${VAR}`` in a
string is replaced by the environment variable ``VAR`` (an unset one is an error that names it and the file).
Every key of ``fixed`` and ``grid`` must be a parameter of the parameters cell of the sweep's notebook and a
RunConfig field; ``out_dir`` and ``run_id`` are set by the sweep. Numbers are read as people type them:
``1e-3`` is a float (plain YAML 1.1 reads it as a string). A key given twice in one mapping (at any level) is an
error naming both lines, and so is a YAML tag (``!!python/object``, ``!foo``): a sweep file holds plain values only.
The command line's ``--set key=value`` values are read by the same reader (:func:`parse_set`).

Run ids have one rule, :func:`utae.config.run_config.run_id_for`: the grid values in grid order, e.g. ``noise0.5-seed1``; a run
outside a sweep is named from its fold, noise and seed (``fold1-noise0.5-seed0``).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import itertools
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from utae.config.run_config import RunConfig, run_config_fields, run_id_for
from utae.config.seedrule import SeedRule, read_seed_rule
from utae.pastis.synthetic import generator_options

__all__ = [
    "REPO_ROOT",
    "TRAIN_NOTEBOOK",
    "COMPARE_NOTEBOOK",
    "DEFAULT_TIMEOUT",
    "read_yaml",
    "parse_set",
    "SweepError",
    "SweepPoint",
    "Sweep",
    "expand_env",
    "notebook_parameters",
    "load_sweep",
    "load_config_file",
]

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
"""The repository root: notebooks run with it as their working directory."""
TRAIN_NOTEBOOK: Path = REPO_ROOT / "notebooks" / "train_eval.ipynb"
COMPARE_NOTEBOOK: Path = REPO_ROOT / "notebooks" / "compare.ipynb"
DEFAULT_TIMEOUT = 24 * 3600  # per cell: catches a hung kernel, never a long real-PASTIS training
_META_KEYS = frozenset({"name", "description", "notebook", "timeout", "fixed", "grid", "synthetic", "seeds"})
_SET_BY_SWEEP = frozenset({"out_dir", "run_id"})
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# --------------------------------------------------------------------------------------------------
# YAML: one loader for sweep files and --set values
# --------------------------------------------------------------------------------------------------


class SweepError(ValueError):
    """A sweep file or a sweep point that cannot be used; the message names the file and the key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (no python objects), with YAML 1.2's reading of plain words: ``1e-3`` and ``1E5``
    are floats (YAML 1.1 needs a dot in the mantissa), and only ``true``/``false`` are booleans (YAML 1.1 also
    reads ``off``, ``on``, ``yes`` and ``no`` as booleans, so ``amp: off`` would not be the string "off").

    Stricter than YAML: a key given twice in one mapping is an error (YAML would keep the last silently), and so
    is a tag that the safe loader does not know (``!!python/object``, ``!foo``), which would otherwise surface as
    PyYAML's multi-line ConstructorError."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a merge key (<<) may repeat keys on purpose; a list or mapping key is rare enough
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice, on lines {seen[key]} and {line} (YAML would "
                    "keep only the last); keep one", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_undefined(self, node: yaml.Node) -> Any:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise yaml.constructor.ConstructorError(
            None, None, f"the YAML tag {tag!r} is not allowed: write plain values (numbers, strings, lists, "
            "mappings) without tags", node.start_mark)


_Loader.add_constructor(None, _Loader.construct_undefined)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where (``line L, column C``) and what was expected or found."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = "; ".join(part for part in (exc.context, exc.problem) if part)
    return where + " ".join(what.split())


def read_yaml(text: str, source: str | os.PathLike[str] = "<yaml>") -> Any:
    """Parse YAML text safely (no code runs), reading ``1e-3`` as a float (see :class:`_Loader`).

    Raises:
        SweepError: one line naming ``source`` (the file, or the ``--set`` argument) and the line: not YAML, a key
            given twice in one mapping (both lines named), a YAML tag.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise SweepError(f"{source}: {_one_line(exc)}") from None


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """The command line's ``--set`` values: ``["lr=1e-3", "seed=2"]`` -> ``{"lr": 0.001, "seed": 2}`` (each value
    read by :func:`read_yaml`).

    Raises:
        SweepError: naming the ``--set`` argument: no ``=``, an empty key, a key given twice, or a value that is
            not YAML (what was expected, e.g. a list written ``[8, 8]``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"--set {item}: expected key=value, e.g. --set lr=1e-3")
        if key in out:
            raise SweepError(f"--set {item}: {key} is set twice; keep one")
        try:
            out[key] = read_yaml(value, source=f"--set {item}")
        except SweepError as exc:
            raise SweepError(f"{exc} (the value is read as YAML: a number, a string, a list [8, 8])") from None
    return out


# --------------------------------------------------------------------------------------------------
# Sweep files
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its ``run_id`` and the notebook parameters (RunConfig fields, no out_dir)."""

    run_id: str
    params: dict[str, Any]
    grid_values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep file (see the module docstring)."""

    path: Path
    name: str
    description: str
    notebook: Path
    timeout: int
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    points: tuple[SweepPoint, ...]
    #: the ``synthetic:`` key: full generator options of the sweep's synthetic dataset_root, or None
    synthetic: dict[str, Any] | None = None
    #: the case keys of the grid: key -> label -> the fields that case sets (``grid[key]`` lists the labels)
    cases: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    #: the ``seeds:`` key (utae.config.seedrule): seeds 0 .. max - 1 in the grid, run in rounds; None without it
    seed_rule: SeedRule | None = None

    def point(self, run_id: str) -> SweepPoint:
        """The point named ``run_id``; a SweepError lists the known ids otherwise."""
        for p in self.points:
            if p.run_id == run_id:
                return p
        close = difflib.get_close_matches(run_id, [p.run_id for p in self.points], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SweepError(f"{self.path}: no point {run_id!r}{hint}; points: {', '.join(p.run_id for p in self.points)}")


# --------------------------------------------------------------------------------------------------
# Loading and validating
# --------------------------------------------------------------------------------------------------


def expand_env(value: Any, env: Mapping[str, str], source: str | os.PathLike[str]) -> Any:
    """``value`` with every ``${VAR}`` in its strings replaced from ``env`` (recursing into lists and dicts).

    Raises:
        SweepError: naming the variable and ``source`` when a variable is unset or empty.
    """
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if not env.get(name):
                raise SweepError(f"{source}: environment variable {name} is not set (used in {value!r}); "
                                 f"set it, e.g. `make reproduce SWEEP={source} {name}=/path/to/...`")
            return env[name]
        return _ENV_RE.sub(repl, value)
    if isinstance(value, list):
        return [expand_env(v, env, source) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env, source) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _quiet_papermill() -> Iterator[None]:
    """Papermill's INFO lines ("Input Notebook: ...") are no news to a person who only reads a parameters cell."""
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def notebook_parameters(notebook: str | os.PathLike[str] = TRAIN_NOTEBOOK) -> dict[str, Any]:
    """The parameters defined by the cell tagged ``parameters`` of ``notebook``, with their defaults.

    Raises:
        SweepError: when the notebook is missing or has no parameters cell.
    """
    import papermill  # imported here: it is slow to import, and only sweeps need it

    notebook = Path(notebook)
    if not notebook.is_file():
        raise SweepError(f"notebook {notebook} not found")
    try:
        with _quiet_papermill():
            params = papermill.inspect_notebook(str(notebook))
    except (ValueError, OSError) as exc:
        raise SweepError(f"cannot read the parameters cell of {notebook}: {exc}") from exc
    if not params:
        raise SweepError(f"{notebook} has no cell tagged 'parameters' (or it defines nothing)")
    out = {}
    for name, info in params.items():
        default = info.get("default")
        try:
            out[name] = ast.literal_eval(default) if isinstance(default, str) else default
        except (ValueError, SyntaxError):
            out[name] = default
    return out



def _unknown_key_error(path: Path, section: str, key: str, valid: Sequence[str], notebook: Path) -> SweepError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return SweepError(f"{path}: unknown parameter {key!r} in {section}: the parameters cell of {notebook} "
                      f"(and RunConfig) define no such name.{hint} Valid names: {', '.join(sorted(valid))}")


def load_sweep(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    notebook: str | os.PathLike[str] | None = None,
    check_run_config: bool = True,
) -> Sweep:
    """Read, expand and validate a sweep file (see the module docstring).

    Args:
        path: the YAML file.
        env: the environment for ``${VAR}`` (default ``os.environ``).
        notebook: the run notebook whose parameters cell the keys are checked against (default the
            sweep's ``notebook`` key, else ``notebooks/train_eval.ipynb``).
        check_run_config: also check the keys against :class:`utae.config.run_config.RunConfig`.

    Raises:
        SweepError: unreadable file, unknown or misplaced key, empty grid list, duplicate run ids,
            unset environment variable; the message names the file and the key.
    """
    path = Path(path)
    env = os.environ if env is None else env
    doc = _read_sweep_doc(path)
    nb_path = Path(notebook) if notebook is not None else Path(doc.get("notebook") or TRAIN_NOTEBOOK)
    if not nb_path.is_absolute() and not nb_path.is_file():
        nb_path = REPO_ROOT / nb_path
    valid = set(notebook_parameters(nb_path))
    if check_run_config:
        valid &= set(run_config_fields())

    fixed_raw = doc.get("fixed") or {}
    grid_raw = doc.get("grid") or {}
    if not isinstance(fixed_raw, dict):
        raise SweepError(f"{path}: 'fixed' must be a mapping of parameter: value, got {type(fixed_raw).__name__}")
    if not isinstance(grid_raw, dict):
        raise SweepError(f"{path}: 'grid' must be a mapping of parameter: [values], got {type(grid_raw).__name__}")
    fixed = _read_fixed(path, doc, fixed_raw, valid, nb_path)
    grid, cases = _read_grid(path, grid_raw, fixed, valid, nb_path)
    single_run = "fixed" not in doc and "grid" not in doc  # a file of one run may name its out_dir and run_id
    case_fields = _check_case_fields(path, cases, grid)
    for key in () if single_run else _SET_BY_SWEEP:
        if key in fixed or key in grid or key in case_fields:
            raise SweepError(f"{path}: {key!r} is set by the sweep (results/runs/<platform>/<run_id>); remove it")
    fixed = expand_env(fixed, env, path)
    grid = expand_env(grid, env, path)
    cases = expand_env(cases, env, path)

    timeout = doc.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise SweepError(f"{path}: timeout must be a positive number of seconds, got {timeout!r}")
    synthetic = _read_synthetic(path, doc.get("synthetic"), grid, case_fields)
    seed_rule = None
    if "seeds" in doc:  # seeds chosen by precision: the grid gets seeds 0 .. max - 1, run_all runs them in rounds
        if "seed" in fixed:
            raise SweepError(f"{path}: seed is fixed and seeds is given; remove one")
        try:
            seed_rule = read_seed_rule(path, doc["seeds"], grid)
        except ValueError as exc:
            raise SweepError(str(exc)) from None
        grid["seed"] = list(range(seed_rule.max))
    points = _grid_points(path, fixed, grid, cases)
    return Sweep(path=path, name=str(doc.get("name") or path.stem), description=str(doc.get("description") or ""),
                 notebook=nb_path, timeout=timeout, fixed=fixed, grid=grid, points=tuple(points),
                 synthetic=synthetic, cases=cases, seed_rule=seed_rule)


def _read_sweep_doc(path: Path) -> dict[Any, Any]:
    """The sweep file's YAML mapping; a SweepError names the file when it is missing, unreadable or no mapping."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SweepError(f"sweep file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepError(f"{path}: cannot read the sweep file: {exc}") from None
    doc = read_yaml(text, source=path)
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: a sweep file must be a YAML mapping (fixed:, grid:), got {type(doc).__name__}")
    return doc


def _read_fixed(path: Path, doc: Mapping[Any, Any], fixed_raw: Mapping[Any, Any], valid: set[str],
                notebook: Path) -> dict[str, Any]:
    """The fixed values: the top-level fields, then those of ``fixed:`` (a field may be in one place only)."""
    fixed: dict[str, Any] = {}
    for key, value in doc.items():  # top-level RunConfig fields are fixed values
        if key in _META_KEYS:
            continue
        if key not in valid:
            raise _unknown_key_error(path, "the top level", str(key), sorted(valid | _META_KEYS), notebook)
        fixed[key] = value
    for key, value in fixed_raw.items():
        if key not in valid:
            raise _unknown_key_error(path, "fixed", str(key), sorted(valid), notebook)
        if key in fixed:
            raise SweepError(f"{path}: {key!r} is given both at the top level and in fixed")
        fixed[key] = value
    return fixed


def _read_grid(path: Path, grid_raw: Mapping[Any, Any], fixed: Mapping[str, Any], valid: set[str],
               notebook: Path) -> tuple[dict[str, list[Any]], dict[str, dict[str, dict[str, Any]]]]:
    """The grid (key -> its values; a case key -> its labels) and the cases (case key -> label -> fields)."""
    grid: dict[str, list[Any]] = {}
    cases: dict[str, dict[str, dict[str, Any]]] = {}
    for key, values in grid_raw.items():
        if key not in valid and isinstance(values, dict):
            cases[str(key)] = _read_cases(path, str(key), values, valid, notebook)
            grid[str(key)] = list(cases[str(key)])
            continue
        if key not in valid:
            raise _unknown_key_error(path, "grid", str(key), sorted(valid), notebook)
        if key in fixed:
            raise SweepError(f"{path}: {key!r} is both fixed and in the grid; keep one")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list of values, got {values!r}")
        grid[key] = values
    return grid, cases


def _read_synthetic(path: Path, synthetic: Any, grid: Mapping[str, list[Any]],
                    case_fields: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``synthetic:`` key as full generator options (None when absent); it excludes a grid of dataset_root."""
    if synthetic is None:
        return None
    if not isinstance(synthetic, dict):
        raise SweepError(f"{path}: 'synthetic' must be a mapping of generator options (e.g. t_range: [10, 14]), "
                         f"got {type(synthetic).__name__}")
    try:
        synthetic = generator_options(synthetic, source=f"{path}: synthetic")
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    if "dataset_root" in grid or "dataset_root" in case_fields:
        raise SweepError(f"{path}: 'synthetic' describes one dataset_root; it cannot be combined with "
                         "dataset_root in the grid")
    return synthetic


def _grid_points(path: Path, fixed: Mapping[str, Any], grid: Mapping[str, list[Any]],
                 cases: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[SweepPoint]:
    """The points of the grid's Cartesian product, in grid order; two points with one run id are an error."""
    points = []
    seen: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        run_id = run_id_for(values)
        if run_id in seen:
            raise SweepError(f"{path}: grid points {seen[run_id]} and {values} both get run_id {run_id!r}")
        seen[run_id] = values
        params = dict(fixed)
        for key, value in values.items():
            params.update(cases[key][value] if key in cases else {key: value})
        points.append(SweepPoint(run_id=run_id, params=params, grid_values=values))
    return points


def _read_cases(path: Path, key: str, values: dict, valid: set[str], notebook: Path) -> dict[str, dict[str, Any]]:
    """The cases of grid key ``key`` (a name that is no field): label -> the fields that case sets."""
    if not values:
        raise SweepError(f"{path}: grid.{key} must map case labels to the fields each sets, got an empty mapping")
    out: dict[str, dict[str, Any]] = {}
    for label, case in values.items():
        if not isinstance(label, (str, int, float)) or isinstance(label, bool) or not str(label).strip():
            raise SweepError(f"{path}: grid.{key} labels must be names (e.g. none, gaussian, clouds), got {label!r}")
        case = {} if case is None else case
        if not isinstance(case, dict):
            raise SweepError(f"{path}: grid.{key}.{label} must be a mapping of field: value (or {{}} for the fixed "
                             f"values), got {case!r}")
        for field in case:
            if field not in valid:
                raise _unknown_key_error(path, f"grid.{key}.{label}", str(field), sorted(valid), notebook)
        out[str(label)] = dict(case)
    return out


def _check_case_fields(path: Path, cases: Mapping[str, Mapping[str, Mapping[str, Any]]],
                       grid: Mapping[str, list[Any]]) -> dict[str, str]:
    """field -> the case key that sets it; a field set by two case keys, or also a plain grid key, is an error."""
    owner: dict[str, str] = {}
    for key, labelled in cases.items():
        for field in dict.fromkeys(f for case in labelled.values() for f in case):
            if field in grid and field not in cases:
                raise SweepError(f"{path}: {field!r} is set by the cases of grid.{key} and is a grid key too; keep one")
            if field in owner:
                raise SweepError(f"{path}: {field!r} is set by the cases of both grid.{owner[field]} and grid.{key}; "
                                 "one case key per field")
            owner[field] = key
    return owner



def load_config_file(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The RunConfig of one point of a sweep file (or of a single-run file), read by :func:`load_sweep`.

    ``overrides`` (the command line's ``--set``) must pin every grid key, and may override any field.

    Raises:
        SweepError: naming the file and the key (see :func:`load_sweep`), or the grid keys not pinned.
        ValueError: the point is not a valid RunConfig (the message names the field).
    """
    sweep = load_sweep(path)
    overrides = dict(overrides or {})
    known = set(run_config_fields())
    unknown = sorted(set(overrides) - known - set(sweep.cases))
    if unknown:
        raise SweepError(f"--set: unknown RunConfig field(s) {unknown}; known fields: {sorted(known)}")
    missing = [k for k in sweep.grid if k not in overrides]
    if missing:
        raise SweepError(f"{path} is a sweep: choose its grid point with --set {missing[0]}=... "
                         f"for every grid key {list(sweep.grid)} (missing {missing})")
    chosen: dict[str, Any] = {}
    for key, labelled in sweep.cases.items():
        label = str(overrides.pop(key))
        if label not in labelled:
            raise SweepError(f"--set {key}={label}: {path} has no such case; cases of {key}: {', '.join(labelled)}")
        chosen.update(labelled[label])
    return RunConfig.from_dict({**sweep.fixed, **chosen, **overrides})
