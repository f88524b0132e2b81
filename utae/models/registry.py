"""The model registry: a name maps to a builder, and every model follows one forward protocol.

**The protocol.** A model is an ``nn.Module`` whose ``forward(x, batch_positions, pad_mask)`` maps

* ``x`` ``(B, T, C, H, W)`` float: a batch of image series (``C`` = ``input_dim`` bands);
* ``batch_positions`` ``(B, T)`` int64: each date in days since the dataset's reference date (2018-09-01 for
  PASTIS); a model that ignores dates says so with ``uses_dates = False``;
* ``pad_mask`` ``(B, T)`` bool, True for padded frames (None: a frame is padding when all its values equal the
  model's pad value, 0.0, as in the official code);

to logits ``(B, num_classes, H, W)``. A builder takes the keywords ``input_dim`` and ``num_classes``,
``input_size`` (the patch side, H = W) when the model needs it at construction, then the model's own options;
a bad option is a one-line ``ValueError`` naming it. :func:`forward_logits` is the one call of the protocol.

**Names.** :data:`BUILTIN` holds this package's models (``list_models()``). A name may also be

* an import path ``"package.module:builder"`` (a class or function; importing it runs that code, like any
  Python config), or
* the name of an entry point in the group ``utae.models`` of an installed package
  (``[project.entry-points."utae.models"] mymodel = "mypackage.models:build"``).

Adding a model to this package takes one module in ``utae/models/`` and one line in :data:`BUILTIN`.

This module is torch-free (builders are imported when a model is built), so :mod:`utae.config` checks names.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "ModelError", "list_models", "check_model_name", "resolve_builder",
           "check_model_options", "needs_input_size", "create_model", "count_parameters", "forward_logits", "uses_dates"]


class ModelError(ValueError):
    """An unknown model name, a builder that cannot be imported, or a bad option: one line that suggests the fix."""


@dataclass(frozen=True)
class _Entry:
    target: str  #: ``module:attribute`` of the builder
    summary: str


#: This package's models: name -> builder (imported only when a model is built) and a one-line summary.
BUILTIN: dict[str, _Entry] = {
    "utae": _Entry("utae.models.utae:UTAE", "U-TAE: U-Net with a temporal attention encoder (Garnot & Landrieu 2021)"),
    "unet3d": _Entry("utae.models.unet3d:UNet3D", "U-Net3D: 3D convolutions over time and space (official baseline)"),
    "convlstm": _Entry("utae.models.convlstm:ConvLSTM", "ConvLSTM: one convolutional LSTM layer (official baseline)"),
    "convgru": _Entry("utae.models.convgru:ConvGRU", "ConvGRU: one convolutional GRU layer (official baseline)"),
    "fpn_convlstm": _Entry("utae.models.fpn_convlstm:FPNConvLSTM",
                           "FPN-ConvLSTM: a feature pyramid, then a ConvLSTM (official baseline)"),
    "uconvlstm": _Entry("utae.models.recunet:UConvLSTM",
                        "U-ConvLSTM: a U-Net with a ConvLSTM on its skips (official baseline)"),
    "buconvlstm": _Entry("utae.models.recunet:BUConvLSTM",
                         "BU-ConvLSTM: a U-Net with a bidirectional ConvLSTM (official baseline)"),
    "tsvit": _Entry("utae.models.tsvit:TSViT", "TSViT: temporo-spatial vision transformer (Tarasiou et al. 2023)"),
}
#: The entry-point group through which an installed package registers its models.
ENTRY_POINT_GROUP = "utae.models"
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """The names of the models one can build by name: this package's, then those of installed entry points."""
    return list(BUILTIN) + sorted(set(_entry_points()) - set(BUILTIN))


def check_model_name(name: Any, field: str = "model") -> str:
    """``name`` if it is a registered model, an entry point of :data:`ENTRY_POINT_GROUP` or an import path
    ``module:attribute``; else a :class:`ModelError` naming ``field`` and the closest names. Imports nothing."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"{field} must be a model name ({', '.join(BUILTIN)}) or an import path "
                         f"'package.module:builder', got {name!r}")
    if name in BUILTIN or _IMPORT_PATH.match(name) or name in _entry_points():
        return name
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ModelError(f"{field}: unknown model {name!r}{hint} Known models: {', '.join(list_models())}; or give an "
                     "import path 'package.module:builder'")


def resolve_builder(name: str) -> Callable[..., Any]:
    """The builder (class or function) of a model name or import path, imported now."""
    check_model_name(name)
    if name in BUILTIN:
        target = BUILTIN[name].target
    elif _IMPORT_PATH.match(name):
        target = name
    else:
        return _entry_points()[name].load()
    module_name, _, attribute = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"model {name!r}: cannot import {target} ({type(exc).__name__}: {exc})") from exc
    if not callable(obj):
        raise ModelError(f"model {name!r}: {target} is not a class or function")
    return obj


def _parameters(builder: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keywords ``builder`` takes. A class whose ``__init__`` passes ``**options`` on to its base class's
    (``BUConvLSTM(temporal=..., **options)`` of ``RecUNet``) takes the base's keywords too: they are followed up
    the class's MRO until an ``__init__`` without ``**`` (``nn.Module``'s own takes ``**kwargs``: open)."""
    params = dict(inspect.signature(builder).parameters)
    bases = builder.__mro__[1:] if inspect.isclass(builder) else ()
    for base in bases:
        var = [k for k, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
        if not var or base is object:
            break
        if "__init__" not in vars(base):
            continue
        inherited = {k: p for k, p in inspect.signature(base.__init__).parameters.items()
                     if k != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL}
        own = {k: p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for k, p in params.items()
               if p.kind is not inspect.Parameter.VAR_KEYWORD}
        params = {**{k: p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for k, p in inherited.items()
                     if p.kind is not inspect.Parameter.VAR_KEYWORD}, **own,
                  **{k: p for k, p in inherited.items() if p.kind is inspect.Parameter.VAR_KEYWORD}}
    return params


def check_model_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an option that the model's builder does not take (a :class:`ModelError` naming it and the
    builder's options), or one of the keywords the tool passes itself (``input_dim``, ``num_classes``,
    ``input_size``). The values are checked by the model when it is built."""
    builder = resolve_builder(name)
    params = _parameters(builder)
    reserved = sorted(set(options) & {"input_dim", "num_classes", "input_size"})
    if reserved:
        raise ModelError(f"model_options: {reserved} are set by the tool from the dataset, not in model_options")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY) and p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        own = [k for k in known if k not in ("input_dim", "num_classes", "input_size")]
        raise ModelError(f"model_options: unknown option(s) {unknown} of model {name!r}; its options: {', '.join(own)}")


def needs_input_size(name: str) -> bool:
    """Whether the builder of ``name`` takes ``input_size`` (the patch side) at construction."""
    return "input_size" in _parameters(resolve_builder(name))


def create_model(name: str = "utae", *, input_dim: int = 10, num_classes: int = 20, input_size: int | None = None,
                 **options: Any) -> "nn.Module":
    """Build model ``name`` (a registered name, an entry point or an import path ``module:builder``).

    ``input_size`` (the patch side in pixels) is passed only to builders that take it; a builder that needs it
    gets a :class:`ModelError` when it is None. ``options`` are the model's own (its widths...); see each
    model's docstring for their official defaults.
    """
    check_model_options(name, options)
    builder = resolve_builder(name)
    params = _parameters(builder)
    kwargs: dict[str, Any] = {"input_dim": input_dim, "num_classes": num_classes, **options}
    if "input_size" in params:
        if input_size is None and params["input_size"].default is inspect.Parameter.empty:
            raise ModelError(f"model {name!r} needs input_size (the patch side in pixels) at construction")
        if input_size is not None:
            kwargs["input_size"] = input_size
    return builder(**kwargs)


def count_parameters(model: "nn.Module") -> int:
    """The number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def uses_dates(model: "nn.Module") -> bool:
    """Whether ``model`` reads ``batch_positions`` (its ``uses_dates`` attribute; a model without one is
    assumed to read them)."""
    return bool(getattr(model, "uses_dates", True))


def forward_logits(model: "nn.Module", x: "torch.Tensor", batch_positions: "torch.Tensor",
                   pad_mask: "torch.Tensor | None") -> "torch.Tensor":
    """The protocol's one call: ``x (B, T, C, H, W)``, ``batch_positions (B, T)``, ``pad_mask (B, T)`` ->
    logits ``(B, K, H, W)``."""
    return model(x, batch_positions=batch_positions, pad_mask=pad_mask)
