"""The configuration of a run: one validated dataclass, :class:`RunConfig` (one field per parameter of
``notebooks/train_eval.ipynb``), torch-free so that a sweep's process checks its points without importing torch.

Sweep files (``params/*.yaml``) are read by :mod:`utae.config.sweepfile`. Run ids have one rule, :func:`run_id_for`: the
grid values in grid order, e.g. ``noise0.5-seed1`` (a sweep's case key reads ``key-label``: ``aug-clouds-seed0``);
a run outside a sweep is named from its fold, noise and seed (``fold1-noise0.5-seed0``). Which fields may differ
within one run (paths, workers) is :data:`HARMLESS_FIELDS`, used by the same-run rule
(:func:`utae.rundir.same_run.config_differences`).

Adding a field (three places): (1) here, the field with its default, its line in the docstring and its check in
``__post_init__`` (a choice list as a tuple constant, next to the others); (2) where it is used (the engine, the
loaders...); (3) the parameters cell of ``notebooks/train_eval.ipynb``, one variable of the same name and default.
The sweep-file reader, the notebook's ``from_namespace``, config.json, the same-run rule (an old run without the
field counts as its default) and the command line's ``--set`` follow from the dataclass; a field that does not
change the arithmetic (a path, a worker count) also goes into :data:`HARMLESS_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from utae.util.checks import is_int, is_number
from utae.pastis.classes import N_CLASSES
from utae.perturb.kinds import ALL as ALL_CORRUPTIONS
from utae.perturb.kinds import KINDS as CORRUPTION_KINDS
from utae.perturb.kinds import parse_corruption_spec, parse_test_corruptions
from utae.models.registry import check_model_name

__all__ = [
    "RunConfig",
    "HARMLESS_FIELDS",
    "LR_SCHEDULES",
    "NORM_STATS",
    "FOLD_PLACEHOLDER",
    "AMP_MODES",
    "GPU_AMP_MODES",
    "NOISE_SPACES",
    "CORRUPTION_KINDS",
    "ALL_CORRUPTIONS",
    "STREAM_SEED_FIELDS",
    "plain_value",
    "run_config_fields",
    "run_id_for",
    "stream_seeds",
]

#: Fields that do not change a run's arithmetic: paths of a machine, worker processes, progress bars. They may
#: differ between two configs of the same run (the same-run rule, :func:`utae.rundir.same_run.config_differences`;
#: of ``init_weights`` only whether it is set counts there, the file is identified by its recorded sha256).
HARMLESS_FIELDS: frozenset[str] = frozenset({"dataset_root", "out_dir", "init_weights", "num_workers", "progress"})
#: The seeds of the training run's independent streams (docs/seeds.md): None takes the run's ``seed``.
STREAM_SEED_FIELDS: tuple[str, ...] = ("weights_seed", "data_seed", "augment_seed")
#: The precision modes of ``RunConfig.amp`` (see :mod:`utae.training.precision`).
AMP_MODES: tuple[str, ...] = ("off", "tf32", "bf16", "fp16", "auto")
#: The modes that need a GPU, with what they need: refused at once for device ``"cpu"``.
GPU_AMP_MODES: dict[str, str] = {"fp16": "a CUDA GPU", "tf32": "an Ampere or newer CUDA GPU"}
#: The units of ``RunConfig.noise_space`` (see :mod:`utae.perturb.noise`, whose NOISE_SPACES must equal it).
NOISE_SPACES: tuple[str, ...] = ("normalized", "raw")
#: The learning-rate schedules of ``RunConfig.lr_schedule`` (see :func:`utae.training.engine.make_scheduler`).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "onecycle")
#: The normalisation statistics of ``RunConfig.norm_stats`` (see :func:`utae.training.loaders.make_datasets`).
NORM_STATS: tuple[str, ...] = ("train_folds", "own_folds")
#: The placeholder of ``RunConfig.init_weights`` that is replaced by the run's fold.
FOLD_PLACEHOLDER = "{fold}"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_ID_PREFIX = {"noise_std": "noise", "noise_fraction": "frac", "noise_space": "space", "noise_resample": "resample",
              "batch_size": "bs", "encoder_widths": "enc", "decoder_widths": "dec",
              "weights_seed": "wseed", "data_seed": "dseed", "augment_seed": "aseed"}



# --------------------------------------------------------------------------------------------------
# RunConfig
# --------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that defines a run; validated on creation (a ``ValueError`` names the bad field).

    Attributes:
        dataset_root: PASTIS-format dataset folder (required; ``$VAR`` / ``${VAR}`` are expanded).
        fold: fold rotation 1 to 5 (``utae.pastis.metadata.FOLD_ROTATIONS[fold - 1]`` = train, val, test folds).
        epochs, batch_size, lr, seed: training length, batch size, Adam learning rate, the run seed: of the
            test-time draws (noise, corruptions) and the validation and test subsets, and of each stream below
            left None. ``epochs`` 0 (only with ``init_weights``) evaluates the given weights without training.
        weights_seed, data_seed, augment_seed: the seeds of the three independent streams of a training run
            (docs/seeds.md, :meth:`stream_seeds`): the initial weights; the data stream (the training subset of
            ``train_limit``, the order of the batches, the DataLoader workers' seeds and the dropout masks);
            the augmentation draws (which training samples are noisy or corrupted, the noise values, the
            corruptions' kinds, severities and draws). None (the default, and what a config.json without the
            field means) takes ``seed``, which is the run of before the fields existed, bit for bit.
        eval_batch_size: validation and test run each patch on its own dates only (no padded step reaches the
            model), in groups of up to this many patches of the same series length (:func:`utae.training.engine.evaluate`).
            1 (the default, and what a run's config.json without the field means) is one patch per forward; a
            larger group is faster and changes only the rounding of float sums (a patch's logits by about 1e-7),
            never with the loader's batch size.
        init_weights: None (random initial weights), or the file of the initial weights: official U-TAE
            weights (``Fold_k/model.pth.tar`` or a ``.npz`` state dict) or a run checkpoint of this tool
            (``checkpoint.pt``: the weights of its best epoch). ``$VAR`` / ``${VAR}`` and ``~`` are expanded
            here; ``{fold}`` stays in the field and is replaced by ``fold`` when the file is used
            (:meth:`init_weights_path`), so that :meth:`replace` of the fold picks that fold's weights.
            The file must exist (a directory is an error). The architecture must match the weights'
            (see :func:`utae.training.weights.load_init_weights`).
        lr_schedule, lr_warmup: the per-batch learning-rate schedule: ``"constant"``, ``"cosine"`` (linear
            warm-up over the ``lr_warmup`` fraction of the steps, then cosine decay to 0) or ``"onecycle"``
            (``torch.optim.lr_scheduler.OneCycleLR`` peaking at ``lr`` after ``lr_warmup``; 0 means 0.3).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        model: the model, a name of :func:`utae.models.registry.list_models` (``"utae"``, the default and what a
            config.json without the field means; ``"convlstm"``, ``"tsvit"``...) or an import path
            ``"package.module:builder"`` of a user's model (importing it runs that code).
        model_options: the model's own options (its widths...), checked by the model's own rules when it is
            built; for ``"utae"`` the widths have their own fields below, and model_options holds the others
            (``agg_mode``, ``encoder_norm``...).
        encoder_widths, decoder_widths, out_conv, n_head, d_model, d_k: the U-TAE widths (``out_conv[-1]``
            is the number of classes, 20); with another model they keep their defaults.
        noise_std, noise_fraction, noise_space, noise_resample: the training noise: N(0, noise_std) on a
            seeded ``noise_fraction`` of the training samples, in the ``"normalized"`` input or in ``"raw"``
            reflectance x 10,000 units, the same every epoch or fresh each epoch.
        test_noise_stds: noise levels (in ``noise_space`` units) at which the best model is tested.
        train_corruption: None (no corruption in training), or a corruption of :mod:`utae.perturb.corruptions` as a
            training augmentation: ``{"kind": one of CORRUPTION_KINDS or "mix", "severity": 1..5 or [low, high],
            "fraction": f in (0, 1]}``: exactly ``round(f * n_train)`` training samples, chosen by
            ``augment_seed``, are corrupted, each at its severity (drawn per sample in a range) and, for
            ``"mix"``, with a kind drawn per sample among the realistic ones (every kind but ``gaussian``), the same every epoch
            (:class:`utae.perturb.wrappers.CorruptedDataset`); the Gaussian noise fields keep their meaning and
            apply on top. Stored as that mapping (``severity`` a list for a range).
        test_corruptions: the ``"kind:severity"`` corruptions (severity 1..5) at which the best model is also
            tested, in this order (``"all"``: every kind at every severity, 35 entries); ``()`` none.
        train_limit, val_limit, test_limit: size of a seeded random subset of each split (None: all).
        norm_stats: the statistics each split is normalised with: ``"train_folds"`` (all three splits with the
            training folds' NORM_S2_patch.json statistics) or ``"own_folds"`` (each split with its own folds'
            statistics, as the official code's ``PASTIS_Dataset(folds=...)`` does). Test-time noise in
            ``"raw"`` units uses the test split's std.
        deterministic: deterministic algorithms (``warn_only=False``); False turns ``cudnn.benchmark`` on.
        amp: ``"off"`` (IEEE float32, no TensorFloat-32), ``"tf32"`` (Ampere+ GPUs), ``"bf16"``, ``"fp16"``
            (CUDA only, with a grad scaler) or ``"auto"``; see :mod:`utae.training.precision`.
        channels_last, compile: channels-last memory format; ``torch.compile``.
        num_workers: DataLoader worker processes.
        out_dir: the run directory (None: ``results/runs/<platform>/<run_id>``).
        progress: tqdm progress bars.
        run_id: label of the run (None: derived from fold, noise_std and seed).
        n_examples: number of test patches saved in predictions.npz.
    """

    dataset_root: str | None = None
    fold: int = 1
    epochs: int = 15
    init_weights: str | None = None
    batch_size: int = 2
    eval_batch_size: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_warmup: float = 0.0
    seed: int = 0
    weights_seed: int | None = None
    data_seed: int | None = None
    augment_seed: int | None = None
    device: str = "auto"
    model: str = "utae"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    encoder_widths: tuple[int, ...] = (64, 64, 64, 128)
    decoder_widths: tuple[int, ...] = (32, 32, 64, 128)
    out_conv: tuple[int, ...] = (32, 20)
    n_head: int = 16
    d_model: int = 256
    d_k: int = 4
    noise_std: float = 0.0
    noise_fraction: float = 0.25
    noise_space: str = "normalized"
    noise_resample: bool = False
    test_noise_stds: tuple[float, ...] = (0.0,)
    train_corruption: dict[str, Any] | None = None
    test_corruptions: tuple[str, ...] = ()
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    norm_stats: str = "train_folds"
    deterministic: bool = True
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 0
    out_dir: str | None = None
    progress: bool = True
    run_id: str | None = None
    n_examples: int = 4

    # -- validation --------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._check_dataset_root()
        self._check_ints()
        self._check_floats()
        self._check_widths()
        self._check_model()
        self._check_choices()
        self._check_corruptions()
        self._check_flags()
        self._check_init_weights()
        for name in ("out_dir", "run_id"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, os.PathLike):
                    value = os.fspath(value)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
                setattr(self, name, value)
        if self.run_id is not None and ("/" in self.run_id or "\\" in self.run_id):
            raise ValueError(f"run_id must not contain a path separator, got {self.run_id!r}")

    def _check_dataset_root(self) -> None:
        root = self.dataset_root
        if root is None or (isinstance(root, str) and not root.strip()):
            raise ValueError("dataset_root is missing: give the folder of a PASTIS-format dataset")
        if not isinstance(root, (str, os.PathLike)):
            raise ValueError(f"dataset_root must be a path, got {type(root).__name__} {root!r}")
        expanded = os.path.expanduser(os.path.expandvars(os.fspath(root)))
        unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
        if unset:
            raise ValueError(f"dataset_root {os.fspath(root)!r} uses environment variable(s) {unset} that are not set")
        if not Path(expanded).is_dir():
            raise ValueError(f"dataset_root {expanded!r} is missing: no such directory")
        self.dataset_root = expanded

    def _check_ints(self) -> None:
        bounds = {"fold": (1, 5), "epochs": (0, None), "batch_size": (1, None), "eval_batch_size": (1, None), "seed": (0, None),
                  "n_head": (1, None), "d_model": (1, None), "d_k": (1, None), "num_workers": (0, None),
                  "n_examples": (0, None)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not is_int(value):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < lo or (hi is not None and value > hi):
                span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be {span}, got {value}")
            setattr(self, name, int(value))
        if self.epochs == 0 and self.init_weights is None:
            raise ValueError("epochs must be >= 1, got 0: epochs 0 evaluates given weights without training, so it "
                             "needs init_weights (e.g. init_weights: ${UTAE_WEIGHTS}/Fold_{fold}/model.pth.tar); "
                             "set epochs >= 1 to train")
        for name in ("train_limit", "val_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None:
                if not is_int(value) or value < 1:
                    raise ValueError(f"{name} must be None (the whole split) or an int >= 1, got {value!r}")
                setattr(self, name, int(value))
        for name in STREAM_SEED_FIELDS:
            value = getattr(self, name)
            if value is not None:
                if not is_int(value) or value < 0:
                    raise ValueError(f"{name} must be None (derived from seed) or an int >= 0, got {value!r}")
                setattr(self, name, int(value))

    def _check_floats(self) -> None:
        for name in ("lr", "lr_warmup", "noise_std", "noise_fraction"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lr_warmup < 1.0:
            raise ValueError(f"lr_warmup must lie in [0, 1) (a fraction of the training steps), got {self.lr_warmup}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0 (a standard deviation), got {self.noise_std}")
        if not 0.0 <= self.noise_fraction <= 1.0:
            raise ValueError(f"noise_fraction must lie in [0, 1], got {self.noise_fraction}")
        stds = self.test_noise_stds
        if is_number(stds):
            stds = (stds,)
        if isinstance(stds, (str, bytes)) or not isinstance(stds, Sequence) or len(stds) == 0:
            raise ValueError(f"test_noise_stds must be a non-empty list of numbers >= 0, got {self.test_noise_stds!r}")
        for s in stds:
            if not is_number(s) or not math.isfinite(s) or s < 0:
                raise ValueError(f"test_noise_stds must hold finite numbers >= 0, got {s!r} in {self.test_noise_stds!r}")
        self.test_noise_stds = tuple(float(s) for s in stds)
        if len(set(self.test_noise_stds)) != len(self.test_noise_stds):
            raise ValueError(f"test_noise_stds has duplicates: {self.test_noise_stds}")

    def _check_widths(self) -> None:
        for name in ("encoder_widths", "decoder_widths", "out_conv"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise ValueError(f"{name} must be a non-empty list of ints, got {value!r}")
            if not all(is_int(v) and v >= 1 for v in value):
                raise ValueError(f"{name} must hold ints >= 1, got {value!r}")
            setattr(self, name, tuple(int(v) for v in value))
        if len(self.encoder_widths) < 2:
            raise ValueError(f"encoder_widths needs at least 2 stages, got {self.encoder_widths}")
        if len(self.decoder_widths) != len(self.encoder_widths):
            raise ValueError(f"decoder_widths {self.decoder_widths} must have as many stages as encoder_widths "
                             f"{self.encoder_widths}")
        if self.decoder_widths[-1] != self.encoder_widths[-1]:
            raise ValueError(f"decoder_widths[-1] ({self.decoder_widths[-1]}) must equal encoder_widths[-1] "
                             f"({self.encoder_widths[-1]})")
        if len(self.out_conv) != 2 or self.out_conv[-1] != N_CLASSES:
            raise ValueError(f"out_conv must be (hidden width, {N_CLASSES}), got {self.out_conv}")
        if any(w % self.n_head for w in self.encoder_widths):
            raise ValueError(f"n_head ({self.n_head}) must divide every encoder width {self.encoder_widths}")

    def _check_model(self) -> None:
        """``model`` a known name or an import path; ``model_options`` a mapping of option names to plain
        values; U-TAE's width fields only with U-TAE (another model's widths go into ``model_options``)."""
        self.model = check_model_name(self.model, field="model")
        options = {} if self.model_options is None else self.model_options
        if not isinstance(options, Mapping) or not all(isinstance(k, str) and k for k in options):
            raise ValueError(f"model_options must be a mapping of option names to values, got {options!r}")
        self.model_options = {k: plain_value(v) for k, v in options.items()}
        own = [f for f in _UTAE_FIELDS if f in self.model_options]
        if self.model == "utae" and own:
            raise ValueError(f"model_options: {own} of U-TAE have their own RunConfig fields; set them there")
        changed = [f for f in _UTAE_FIELDS if getattr(self, f) != _FIELD_DEFAULTS[f]]
        if self.model != "utae" and changed:
            raise ValueError(f"{', '.join(changed)}: U-TAE's widths, but model is {self.model!r}; give that model's "
                             f"widths in model_options (and leave {changed[0]} at its default)")

    def _check_choices(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r} (unknown device)")
        if self.noise_space not in NOISE_SPACES:
            raise ValueError(f"noise_space must be one of {NOISE_SPACES}, got {self.noise_space!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.norm_stats not in NORM_STATS:
            raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {self.norm_stats!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.device == "cpu" and self.amp in GPU_AMP_MODES:  # a GPU's own modes are known at run time
            raise ValueError(f"amp={self.amp!r} needs {GPU_AMP_MODES[self.amp]}, got device cpu; use amp='off'")

    def _check_corruptions(self) -> None:
        """``train_corruption`` and ``test_corruptions`` through :mod:`utae.perturb.kinds`'s checks (the errors
        name the field and the allowed kinds and severities)."""
        value = self.train_corruption
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            self.train_corruption = None
        else:
            self.train_corruption = parse_corruption_spec(value, training=True, field="train_corruption").to_json()
        self.test_corruptions = parse_test_corruptions(self.test_corruptions, field="test_corruptions")

    def _check_flags(self) -> None:
        for name in ("noise_resample", "deterministic", "channels_last", "compile", "progress"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            setattr(self, name, bool(value))

    def _check_init_weights(self) -> None:
        value = self.init_weights
        if value is None:
            return
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"init_weights must be None or the path of a weights file, got {value!r}")
        expanded = os.path.expanduser(os.path.expandvars(value))
        unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
        if unset:
            raise ValueError(f"init_weights {value!r} uses environment variable(s) {unset} that are not set")
        self.init_weights = expanded
        path = self.init_weights_path()
        assert path is not None
        where = f"init_weights (fold {self.fold})"
        if path.is_dir():
            fold_dir = re.fullmatch(r"Fold_\d+", path.name) is not None
            base = path.parent if fold_dir else path
            raise ValueError(f"{where} points at a directory, {path}; give the file, e.g. "
                             f"{base / 'Fold_{fold}' / 'model.pth.tar'}")
        if not path.is_file():
            template = f" (from {expanded!r})" if FOLD_PLACEHOLDER in expanded else ""
            raise ValueError(f"{where}: no such file {path}{template}")

    def init_weights_path(self) -> Path | None:
        """The file of ``init_weights`` for this run's fold (``{fold}`` replaced), or None without one."""
        if self.init_weights is None:
            return None
        return Path(self.init_weights.replace(FOLD_PLACEHOLDER, str(self.fold)))

    # -- conversion --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {f.name: plain_value(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Build from a mapping of field values; an unknown key raises a ValueError that names it."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a run config must be a mapping of field values, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "RunConfig":
        """A validated copy with some fields changed."""
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def stream_seeds(self) -> dict[str, int]:
        """The effective seed of each stream (docs/seeds.md): ``{"seed": ..., "weights_seed": ...,
        "data_seed": ..., "augment_seed": ...}``, a stream field left None taking ``seed`` (:func:`stream_seeds`)."""
        return stream_seeds(self.to_dict())

    def default_run_id(self) -> str:
        """``run_id`` if set, else :func:`run_id_for` of fold, noise_std and seed (``fold1-noise0.5-seed0``)."""
        return self.run_id or run_id_for({"fold": self.fold, "noise_std": self.noise_std, "seed": self.seed})

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "RunConfig":
        """Build the RunConfig of a notebook from its parameters (``globals()``, one variable per field).

        Raises:
            ValueError: naming the fields that the namespace lacks, or RunConfig's own validation error.
        """
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in namespace]
        if missing:
            raise ValueError(f"the parameters cell lacks RunConfig field(s) {missing}")
        return cls.from_dict({n: namespace[n] for n in names})



def plain_value(value: Any) -> Any:
    """A field's value as JSON types: tuples become lists, mappings new dicts (nothing shared with the config)."""
    if isinstance(value, (tuple, list)):
        return [plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    return value


#: U-TAE's width fields (the U-TAE options that are RunConfig fields of their own).
_UTAE_FIELDS: tuple[str, ...] = ("encoder_widths", "decoder_widths", "out_conv", "n_head", "d_model", "d_k")


def run_config_fields() -> dict[str, Any]:
    """The fields of :class:`RunConfig` with their defaults (tuples for sequences)."""
    out = {}
    for f in dataclasses.fields(RunConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = None
    return out


def stream_seeds(config: Mapping[str, Any]) -> dict[str, int]:
    """The effective seeds of a config (a ``config.json`` dict, or ``RunConfig.to_dict()``): ``seed`` (0 when
    absent, its default) and each of :data:`STREAM_SEED_FIELDS`, a field that is absent or None taking ``seed``.
    The derivation is the identity on purpose: with every stream field None, each stream is seeded exactly as it
    was before the fields existed, so an old run is the run of its config with the fields set to ``seed``."""
    seed = config.get("seed")
    seed = 0 if seed is None else int(seed)
    out = {"seed": seed}
    for name in STREAM_SEED_FIELDS:
        value = config.get(name)
        out[name] = seed if value is None else int(value)
    return out


def _id_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "_".join(_id_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+]+", "_", str(value)).strip("_") or "none"


def run_id_for(grid_values: Mapping[str, Any]) -> str:
    """A filesystem-safe run id from the grid values, in order: ``{"noise_std": 0.5, "seed": 1}`` ->
    ``"noise0.5-seed1"``; a key that is no RunConfig field is a case key of a sweep (its value the case's label,
    see :mod:`utae.config.sweepfile`) and reads ``key-label``: ``{"aug": "clouds", "seed": 0}`` -> ``"aug-clouds-seed0"``;
    no grid -> ``"run"``."""
    names = {f.name for f in fields(RunConfig)}
    parts = [f"{_ID_PREFIX.get(k, k.replace('_', ''))}{_id_value(v)}" if k in names
             else f"{_id_value(k)}-{_id_value(v)}" for k, v in grid_values.items()]
    return "-".join(parts) or "run"


_FIELD_DEFAULTS: dict[str, Any] = run_config_fields()
