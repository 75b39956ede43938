"""Profiling cases: one upsampler configuration on one input shape, dtype and device."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

import upsamplers
from lda_bench.core.devices import DTYPES, resolve_device
from lda_bench.core.errors import UsageError

from .suites import Suite


def _format_options(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={options[k]}" for k in sorted(options))


@dataclass
class Case:
    """What one measurement is about. ``id`` is stable across runs and machines of one device type."""

    upsampler: str
    options: dict[str, Any]
    label: str
    batch: int
    channels: int
    height: int
    width: int
    scale: int
    dtype: str
    device: str
    needs_guide: bool
    guide_channels: int | None = None
    count: int = 1
    model: str | None = None  # a whole model (lda_bench.models) with this upsampler inside

    @property
    def id(self) -> str:
        opts = _format_options(self.options)
        name = f"{self.upsampler}[{opts}]" if opts else self.upsampler
        if self.model is not None:
            return f"{self.model}+{name}/{self.batch}x{self.channels}x{self.height}x{self.width}/{self.dtype}/{self.device}"
        return f"{name}/{self.batch}x{self.channels}x{self.height}x{self.width}/x{self.scale}/{self.dtype}/{self.device}"

    @property
    def input_shape(self) -> list[int]:
        return [self.batch, self.channels, self.height, self.width]

    @property
    def output_shape(self) -> list[int] | None:
        if self.model is not None:
            return None  # a model returns several tensors
        return [self.batch, self.channels, self.height * self.scale, self.width * self.scale]

    @property
    def output_pixels(self) -> int:
        """Pixels produced per call (upsampler output, or the model's input image)."""
        if self.model is not None:
            return self.batch * self.height * self.width
        return self.batch * self.height * self.scale * self.width * self.scale

    @property
    def guide_shape(self) -> list[int] | None:
        if not self.needs_guide or self.model is not None:
            return None
        gc = self.guide_channels or self.channels
        return [self.batch, gc, self.height * self.scale, self.width * self.scale]

    def build(self) -> torch.nn.Module:
        if self.model is not None:
            from lda_bench.models import build_model

            module = build_model(self.model, upsampler=self.upsampler, upsampler_options=dict(self.options))
            return module.to(device=self.device, dtype=DTYPES[self.dtype]).eval()
        options = dict(self.options)
        if self.needs_guide and self.guide_channels and "guide_channels" not in options:
            options["guide_channels"] = self.guide_channels
        module = upsamplers.build(self.upsampler, self.channels, scale=self.scale, **options)
        return module.to(device=self.device, dtype=DTYPES[self.dtype]).eval()

    def inputs(self, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        dtype = DTYPES[self.dtype]
        if self.model is not None:  # the padded image the model takes; its size is already padded
            from lda_bench.models import example_inputs

            image = example_inputs(self.model, self.height, self.width, self.batch)
            return (image.to(self.device, dtype).requires_grad_(requires_grad),)
        x = torch.randn(self.input_shape, generator=gen).to(self.device, dtype).requires_grad_(requires_grad)
        if self.guide_shape is None:
            return (x,)
        guide = torch.randn(self.guide_shape, generator=gen).to(self.device, dtype).requires_grad_(requires_grad)
        return (x, guide)


def seeded_module(case: Case, **override: Any) -> torch.nn.Module:
    """``case``'s module built after ``torch.manual_seed(0)`` (identical weights for every backend
    of one configuration), with options in ``override`` replacing the case's."""
    torch.manual_seed(0)
    if override:
        case = dataclasses.replace(case, options={**case.options, **override})
    return case.build()


def backend_of(module: torch.nn.Module) -> str | None:
    """The ``backend`` option of the (first) module inside that has one: the upsampler itself, or
    the upsamplers of a whole model."""
    return next((m.backend for m in module.modules() if isinstance(getattr(m, "backend", None), str)), None)


@dataclass(frozen=True)
class UpsamplerEntry:
    """An upsampler to measure: name, options, and optionally the input labels it is limited to."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] | None = None


def expand_upsamplers(names: list[str]) -> list[str]:
    """``all`` -> every registered upsampler; other names are checked (close matches on error)."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(upsamplers.names())
        else:
            try:
                upsamplers.get_spec(name)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            out.append(name)
    return list(dict.fromkeys(out))


def backends_for(name: str, requested: list[str] | None) -> list[str | None]:
    """The backends to measure for ``name``: None for upsamplers without selectable backends."""
    spec = upsamplers.get_spec(name)
    selectable = [b for b in spec.backends if b != "pytorch"]
    if not selectable or not requested:
        return [None]
    valid = ["auto", *selectable]
    for b in requested:
        if b not in valid:
            raise UsageError(f"unknown backend {b!r} for {name}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(requested))


def build_model_cases(
    model: str,
    upsampler_entries: list[UpsamplerEntry],
    *,
    size: tuple[int, int] | None,
    batch: int,
    dtypes: list[str],
    devices: list[str],
    backends: list[str] | None = None,
) -> list[Case]:
    """One case per upsampler (and backend) with the whole ``model`` around it."""
    from lda_bench.models import example_inputs, get_model_spec

    try:
        get_model_spec(model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # The model's own default input (padded as its test pipeline pads), or the requested size padded.
    height, width = example_inputs(model, *(size or ()), batch=1).shape[-2:]
    cases = []
    for device in dict.fromkeys(resolve_device(d) for d in devices):
        for dtype in dtypes:
            for entry in upsampler_entries:
                for backend in backends_for(entry.name, backends):
                    opts = dict(entry.options)
                    if backend is not None:
                        opts["backend"] = backend
                    cases.append(Case(upsampler=entry.name, options=opts, label=model, batch=batch, channels=3,
                                      height=int(height), width=int(width), scale=1, dtype=dtype, device=device,
                                      needs_guide=False, model=model))
    return cases


def build_cases(
    suite: Suite,
    upsampler_entries: list[UpsamplerEntry],
    *,
    backends: list[str] | None = None,
) -> list[Case]:
    """Cross product of upsamplers (with options and backends) x inputs x dtypes x devices."""
    devices = [resolve_device(d) for d in suite.devices]
    cases: list[Case] = []
    for device in dict.fromkeys(devices):
        for dtype in suite.dtypes:
            for inp in suite.inputs:
                for entry in upsampler_entries:
                    if entry.inputs is not None and inp.label not in entry.inputs:
                        continue
                    name = entry.name
                    spec = upsamplers.get_spec(name)
                    for backend in backends_for(name, backends):
                        opts = dict(entry.options)
                        if backend is not None:
                            opts["backend"] = backend
                        cases.append(Case(
                            upsampler=name,
                            options=opts,
                            label=inp.label,
                            batch=inp.batch,
                            channels=inp.channels,
                            height=inp.height,
                            width=inp.width,
                            scale=suite.scale,
                            dtype=dtype,
                            device=device,
                            needs_guide=spec.needs_guide,
                            guide_channels=inp.guide_channels,
                            count=inp.count,
                        ))
    return cases


def input_output_bytes(case: Case) -> int:
    """Bytes of the case's inputs and output alone: a lower bound of what running it needs."""
    element = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    shapes = [case.input_shape, case.guide_shape, case.output_shape]
    return element * sum(math.prod(s) for s in shapes if s)


def device_memory_bytes(device: str) -> int | None:
    """The device's memory (CUDA) or the machine's (CPU); None when unknown."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_gib(n: int) -> str:
    return f"{n / 2**40:.2f} TiB" if n >= 2**40 else f"{n / 2**30:.2f} GiB"


def check_cases(cases: list[Case]) -> None:
    """Refuse, before anything runs, what cannot work: an upsampler option its module rejects (the
    module is built once per configuration on the meta device: no memory, no compute) and a case
    whose input and output tensors alone exceed the device's memory. Raises :class:`UsageError`."""
    seen: set[tuple[Any, ...]] = set()
    for case in cases:
        key = (case.upsampler, _format_options(case.options), case.channels, case.scale, case.guide_channels,
               case.model)
        if key not in seen:
            seen.add(key)
            _check_builds(case)
        needed, available = input_output_bytes(case), device_memory_bytes(case.device)
        if available is not None and needed > available:
            raise UsageError(f"{case.id}: its input and output tensors alone need {_fmt_gib(needed)} "
                             f"({case.dtype}); {case.device} has {_fmt_gib(available)} of memory")


def _check_builds(case: Case) -> None:
    options = dict(case.options)
    try:
        with torch.device("meta"):
            if case.model is not None:
                from lda_bench.models import build_model

                build_model(case.model, upsampler=case.upsampler, upsampler_options=options)
            else:
                if case.needs_guide and case.guide_channels and "guide_channels" not in options:
                    options["guide_channels"] = case.guide_channels
                upsamplers.build(case.upsampler, case.channels, scale=case.scale, **options)
    except (ValueError, TypeError) as exc:
        shown = f" with {_format_options(case.options)}" if case.options else ""
        raise UsageError(f"{case.upsampler}{shown} at {case.channels} channels: {exc}") from None
