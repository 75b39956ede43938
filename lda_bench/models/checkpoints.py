"""Checkpoint files: safe loading, format detection, model resolution, strict key checks, saving.

Accepted files:

* mmdet 2.x (mmcv 1.x ``save_checkpoint``): ``{"meta", "state_dict", ["optimizer"]}``; model keys
  without a ``module.`` prefix; ``meta`` holds ``config`` (the config text), ``CLASSES``, versions.
* mmdet 3.x (mmengine): the same plus ``message_hub``, ``param_schedulers``; class names in
  ``meta["dataset_meta"]["classes"]``. These pickle mmengine objects, so they do not load with
  ``weights_only=True`` and need ``trust=True`` (``--trust-checkpoint``); mmengine itself is not
  needed, its objects are replaced by inert placeholders.
* mmseg 0.x/1.x (SegFormer): ``{"meta", "state_dict", ...}`` with ``backbone.*`` / ``decode_head.*``
  keys; ``meta`` holds ``CLASSES`` (0.x) or ``dataset_meta`` (1.x, an mmengine file: trusted only).
* lda-bench's own format: the mmdet 2.x layout plus ``"lda_bench": {"model", "upsampler",
  "upsampler_options", "neck", "num_classes", "num_stuff_classes", "size_divisor"}``
  (:func:`save_checkpoint`).
* a bare state dict (name -> tensor).

Loading always tries ``torch.load(weights_only=True)`` first, which cannot run code from the file.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

import upsamplers

from .introspect import ModelInferenceError, infer_from_state_dict
from .registry import build_model, get_model_spec, model_names, resolve_neck, size_divisor

FORMAT_VERSION = 1

# Keys a checkpoint may carry that our modules do not have, and why they are harmless:
# mmcv 1.x saved LDA-AQU's non-persistent base_offset buffer (a constant grid we rebuild).
HARMLESS_EXTRA_KEYS = (re.compile(r"^neck\.upsample_modules\.\d+\.base_offset$"),)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or does not fit the model."""


class UnreadableCheckpointError(CheckpointError):
    """The file is no checkpoint this tool can read (the request is wrong, not the run)."""


class UntrustedCheckpointError(UnreadableCheckpointError):
    """The file needs arbitrary unpickling and the caller did not opt in."""


@dataclass
class Checkpoint:
    path: Path
    state_dict: dict[str, Tensor]
    meta: dict[str, Any]
    lda_bench: dict[str, Any] | None
    format: str  # "mmdet2" | "mmdet3" | "lda_bench" | "state_dict"
    weights_only: bool  # False when loaded with --trust-checkpoint
    notes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str] | None:
        names = self.meta.get("CLASSES")
        if names is None and isinstance(self.meta.get("dataset_meta"), Mapping):
            names = self.meta["dataset_meta"].get("classes")
        return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


class _Placeholder:
    """Stands in for a class the trusted file names but this environment lacks (e.g. mmengine's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": f"missing.{module}"})


class _LenientPickle:
    """A pickle module for torch.load whose Unpickler tolerates missing classes (trusted files only)."""

    Unpickler = _LenientUnpickler
    load = staticmethod(pickle.load)
    __name__ = "lda_bench_lenient_pickle"


def _unsafe_globals(path: Path) -> list[str]:
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return list(finder(str(path)))
    except Exception:  # the listing is a courtesy for the error message
        return []


def _numpy_scalar_globals() -> list[Any]:
    """Allow-list numpy *scalars* (e.g. a best score in mmdet 2.x meta): data, not code.

    Files saved under numpy 1.x name the reconstructor ``numpy.core.multiarray.scalar``, numpy 2
    ``numpy._core.multiarray.scalar``; both names map to the same function, whichever numpy is
    installed (numpy 1.26 has ``numpy._core.multiarray`` only as an importable alias, not as an
    attribute of ``numpy``).
    """
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 1.26
        multiarray = importlib.import_module("numpy.core.multiarray")
    scalar = multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes]


def _unpickler_reason(exc: BaseException) -> str:
    """The useful part of torch's weights-only refusal ("WeightsUnpickler error: ..."), one line."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    reason = text[text.index(marker) + len(marker):] if marker in text else text
    return " ".join(reason.split())[:200] or type(exc).__name__


def _torch_load(path: Path, trust: bool) -> tuple[Any, bool]:
    # torch warns about pickle protocols and weights_only while refusing a file; the refusal is
    # reported here in one line instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                return torch.load(path, map_location="cpu", weights_only=True), True
        except pickle.UnpicklingError as exc:
            if "unsupported global" not in str(exc).lower():  # not a refused class: a corrupt or foreign file
                raise UnreadableCheckpointError(
                    f"cannot read checkpoint {path}: not a PyTorch checkpoint ({_unpickler_reason(exc)})") from None
            if not trust:
                names = _unsafe_globals(path)
                listed = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
                raise UntrustedCheckpointError(
                    f"{path} holds pickled Python objects{listed} that were not loaded, since unpickling "
                    "them can run code (mmdet 3.x / mmengine files do this); pass --trust-checkpoint only "
                    "if you trust where the file came from") from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise UnreadableCheckpointError(
                f"cannot read checkpoint {path}: not a PyTorch checkpoint ({' '.join(str(exc).split())[:200]})"
            ) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle), False
        except Exception as exc:
            raise UnreadableCheckpointError(
                f"cannot read checkpoint {path} even as a trusted file: {' '.join(str(exc).split())[:200]}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def load_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read a checkpoint file (safely unless ``trust``) and split it into state dict and metadata."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpointError(f"checkpoint {path} does not exist")
    obj, weights_only = _torch_load(path, trust)
    notes: list[str] = []
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
        extra = obj.get("lda_bench")
        if extra is not None:
            fmt = "lda_bench"
        elif "message_hub" in obj or "dataset_meta" in meta:
            fmt = "mmdet3"
        else:
            fmt = "mmdet2"
    elif _is_state_dict(obj):
        state, meta, extra, fmt = obj, {}, None, "state_dict"
    else:
        kind = type(obj).__name__
        keys = f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, Mapping) else ""
        raise CheckpointError(f"{path} holds a {kind}{keys}; expected an mmdet checkpoint with a 'state_dict'")
    if not _is_state_dict(state):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of parameter names to tensors")
    state = dict(state)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the 'module.' prefix (a DataParallel-wrapped model)")
    if not isinstance(meta, Mapping):
        meta = {}
    return Checkpoint(path, state, dict(meta), dict(extra) if isinstance(extra, Mapping) else None, fmt,
                      weights_only, notes)


@dataclass
class ModelConfig:
    """Everything needed to build the model a checkpoint belongs to, with where each value came from.

    ``neck`` and ``size_divisor`` (the test pipeline's pad) are None for models without an FPN
    (SegFormer); ``num_stuff_classes`` is set for Panoptic FPN only.
    """

    model: str
    upsampler: str
    upsampler_options: dict[str, Any]
    num_classes: int
    neck: str | None
    size_divisor: int | None
    sources: dict[str, str]
    notes: list[str] = field(default_factory=list)
    num_stuff_classes: int | None = None
    mask_head_upsampler: str | None = None  # Mask R-CNN only: "deconv" or "carafe"

    def as_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "upsampler": self.upsampler, "upsampler_options": dict(self.upsampler_options),
               "num_classes": self.num_classes, "neck": self.neck, "size_divisor": self.size_divisor,
               "sources": dict(self.sources), "notes": list(self.notes)}
        if self.num_stuff_classes is not None:
            out["num_stuff_classes"] = self.num_stuff_classes
        if self.mask_head_upsampler is not None:
            out["mask_head_upsampler"] = self.mask_head_upsampler
        return out


def resolve_model_config(
    ckpt: Checkpoint,
    model: str | None = None,
    upsampler: str | None = None,
    upsampler_options: Mapping[str, Any] | None = None,
    size_divisor: int | None = None,
) -> ModelConfig:
    """Combine, in priority order, the caller's choices, lda-bench metadata, and what the keys say."""
    inferred = infer_from_state_dict(ckpt.state_dict, ckpt.meta)
    saved = ckpt.lda_bench or {}
    sources: dict[str, str] = {}

    def pick(field_name: str, given: Any, fallback: Any = None) -> Any:
        for value, source in ((given, "option"), (saved.get(field_name), "lda_bench metadata"),
                              (getattr(inferred, field_name, None), "checkpoint keys"), (fallback, "default")):
            if value is not None:
                sources[field_name] = source
                return value
        return None

    model_name = pick("model", model)
    if model_name is None and any(k.startswith("decode_head.linear_c") for k in ckpt.state_dict):
        raise ModelInferenceError(
            f"{ckpt.path} is an NVlabs SegFormer checkpoint (decode_head.linear_c*, as the FADE/SAPA code saves); "
            "its head (MLPs without BN) is not mmseg's SegformerHead, and only mmseg's layout is supported"
        )
    if model_name is None:
        raise ModelInferenceError(
            f"{ckpt.path} has no roi_head.bbox_head, semantic_head or decode_head.conv_seg keys, so its model "
            f"cannot be told; pass --model ({', '.join(model_names())})"
        )
    spec = get_model_spec(model_name)
    if inferred.model is not None and sources["model"] != "checkpoint keys" and \
            get_model_spec(inferred.model).family != spec.family:
        raise ModelInferenceError(
            f"{ckpt.path} holds a {inferred.model} state dict, but the model was given as {model_name}"
        )
    if inferred.model is None and not spec.has_neck:
        inferred.upsampler = None  # read from neck keys, which a SegFormer does not have
    up_name = pick("upsampler", upsampler, spec.default_upsampler if inferred.model is None else None)
    if up_name is None:
        where = "decode_head" if spec.family == "segformer" else "neck"
        sample = sorted(k for k in ckpt.state_dict if k.startswith(f"{where}.upsample_modules.0."))[:4]
        raise ModelInferenceError(
            f"the {where}'s upsampler keys ({', '.join(sample)}) match no registered upsampler at its default "
            "options; pass --upsampler NAME (and --upsampler-option KEY=VALUE)"
        )
    upsamplers.get_spec(up_name)
    if upsampler_options is not None:
        options, sources["upsampler_options"] = dict(upsampler_options), "option"
    elif saved.get("upsampler") == up_name and "upsampler_options" in saved:
        options, sources["upsampler_options"] = dict(saved["upsampler_options"]), "lda_bench metadata"
    elif inferred.upsampler == up_name:
        options, sources["upsampler_options"] = dict(inferred.upsampler_options), "checkpoint keys"
    else:
        options, sources["upsampler_options"] = {}, "default"
    num_classes = pick("num_classes", None, spec.num_classes)
    stuff = pick("num_stuff_classes", None, spec.num_stuff_classes) if spec.num_stuff_classes is not None else None
    with_mask_head = spec.family == "detector" and spec.with_mask
    mask_up = pick("mask_head_upsampler", None, "deconv") if with_mask_head else None
    if spec.has_neck:
        neck = resolve_neck(spec, pick("neck", None, spec.default_neck))
        divisor = pick("size_divisor", size_divisor, _default_divisor(model_name, neck))
        if "config" in ckpt.meta and sources.get("size_divisor") == "checkpoint keys":
            sources["size_divisor"] = "checkpoint config"
    else:  # no FPN, no padding: a given size_divisor does not apply (the eval runner says so)
        neck = divisor = None
    return ModelConfig(model_name, up_name, options, int(num_classes), neck,
                       None if divisor is None else int(divisor), sources,
                       list(inferred.notes) + list(ckpt.notes), None if stuff is None else int(stuff), mask_up)


def _default_divisor(model_name: str, neck: str) -> int:
    divisor = size_divisor(model_name, neck)
    assert divisor is not None  # every model with a neck pads
    return divisor


@dataclass
class KeyReport:
    missing: list[str]
    unexpected: list[str]
    ignored: list[str]  # harmless extras, listed in the report
    mismatched: list[str]  # "key: checkpoint shape vs model shape"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 6) -> str:
        parts = []
        for label, items in (("missing from the checkpoint", self.missing),
                             ("not used by the model", self.unexpected), ("with a different shape", self.mismatched)):
            if items:
                more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{len(items)} key(s) {label}: {', '.join(items[:limit])}{more}")
        return "; ".join(parts)


def check_keys(model: nn.Module, state: Mapping[str, Tensor]) -> KeyReport:
    """Compare a state dict with a model's, without loading anything."""
    own = model.state_dict()
    ignored = [k for k in state if k not in own and any(p.match(k) for p in HARMLESS_EXTRA_KEYS)]
    unexpected = [k for k in state if k not in own and k not in ignored]
    missing = [k for k in own if k not in state]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return KeyReport(missing, unexpected, ignored, mismatched)


def load_weights(model: nn.Module, state: Mapping[str, Tensor]) -> KeyReport:
    """Load ``state`` with strict key matching (harmless extras aside); raise on any other difference."""
    report = check_keys(model, state)
    if not report.ok:
        raise CheckpointError(f"checkpoint does not fit the model: {report.describe()}")
    model.load_state_dict({k: v for k, v in state.items() if k not in report.ignored}, strict=True)
    return report


def build_from_checkpoint(ckpt: Checkpoint, config: ModelConfig) -> tuple[nn.Module, KeyReport]:
    model = build_model(config.model, config.upsampler, config.upsampler_options, config.num_classes, config.neck,
                        num_stuff_classes=config.num_stuff_classes, mask_head_upsampler=config.mask_head_upsampler)
    return model, load_weights(model, ckpt.state_dict)


def _model_metadata(model: nn.Module, model_name: str, divisor: int | None) -> dict[str, Any]:
    """The lda-bench metadata that rebuilds ``model``: upsampler and options, neck, class counts."""
    spec = get_model_spec(model_name)
    if spec.has_neck:
        neck = model.neck
        return {"upsampler": neck.upsampler, "upsampler_options": dict(neck.upsampler_options),
                "neck": neck.neck_type, "num_classes": model.num_classes,
                **({"num_stuff_classes": model.num_stuff_classes} if spec.num_stuff_classes is not None else {}),
                **({"mask_head_upsampler": model.mask_head_upsampler}
                   if spec.family == "detector" and spec.with_mask else {}),
                "size_divisor": divisor or size_divisor(model_name, neck.neck_type)}
    head = model.decode_head
    return {"upsampler": head.upsampler, "upsampler_options": dict(head.upsampler_options),
            "num_classes": head.num_classes}


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    model_name: str,
    meta: Mapping[str, Any] | None = None,
    size_divisor: int | None = None,
) -> Path:
    """Save ``model`` in mmdet / mmseg layout plus lda-bench metadata (loads with weights_only=True)."""
    payload = {
        "meta": dict(meta or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "lda_bench": {"format_version": FORMAT_VERSION, "model": model_name,
                      **_model_metadata(model, model_name, size_divisor)},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path
