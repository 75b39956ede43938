"""Name -> upsampler spec, with third-party registration.

Three ways to name an upsampler wherever a name is accepted:

* a built-in or ``register``-ed name (``"lda_aqu"``);
* a name published by an installed package in the entry-point group ``lda_bench.upsamplers``
  (the entry point loads either a factory or an :class:`UpsamplerSpec`);
* an import string ``"package.module:factory"``.

A factory is any callable ``factory(channels, scale=2, **options) -> nn.Module`` (usually the
module class itself). Its keyword defaults are the upsampler's documented defaults.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Mapping

from torch import nn

ENTRY_POINT_GROUP = "lda_bench.upsamplers"

# Arguments every factory takes positionally or by the interface; they are not "options".
_INTERFACE_ARGS = ("channels", "scale")


@dataclass(frozen=True)
class UpsamplerSpec:
    """What the registry knows about one upsampler."""

    name: str
    factory: Callable[..., nn.Module]
    needs_guide: bool = False
    reference: str = ""
    backends: tuple[str, ...] = ("pytorch",)
    description: str = ""
    source: str = "builtin"
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def option_names(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def accepts_any_option(self) -> bool:
        """True when the factory takes ``**kwargs`` (then options are not checked here)."""
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return True
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


_REGISTRY: dict[str, UpsamplerSpec] = {}
_entry_points_loaded = False


def _factory_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in params
        if p.name not in _INTERFACE_ARGS
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.default is not inspect.Parameter.empty
    }


def _make_spec(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    needs_guide: bool | None = None,
    reference: str | None = None,
    backends: tuple[str, ...] | None = None,
    description: str | None = None,
    source: str = "builtin",
) -> UpsamplerSpec:
    # Attributes on the factory let third-party classes describe themselves without importing us.
    doc = inspect.getdoc(factory) or ""
    return UpsamplerSpec(
        name=name,
        factory=factory,
        needs_guide=bool(getattr(factory, "needs_guide", False) if needs_guide is None else needs_guide),
        reference=reference if reference is not None else getattr(factory, "reference", ""),
        backends=tuple(backends if backends is not None else getattr(factory, "backends", ("pytorch",))),
        description=description if description is not None else (doc.splitlines()[0] if doc else ""),
        source=source,
        defaults=_factory_defaults(factory),
    )


def register(
    name: str,
    *,
    needs_guide: bool = False,
    reference: str = "",
    backends: tuple[str, ...] = ("pytorch",),
    description: str | None = None,
    overwrite: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers an upsampler factory (usually an ``nn.Module`` class) under ``name``.

    >>> @register("my_up", reference="Me et al., 2026")
    ... class MyUp(nn.Module):
    ...     def __init__(self, channels, scale=2, width=16): ...
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not overwrite and name in _REGISTRY:
            raise ValueError(f"upsampler {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = _make_spec(
            name,
            factory,
            needs_guide=needs_guide,
            reference=reference,
            backends=backends,
            description=description,
            source="builtin" if factory.__module__.startswith("upsamplers.") else factory.__module__,
        )
        return factory

    return decorator


def unregister(name: str) -> None:
    """Remove a registered upsampler (mainly for tests and plugins that replace one)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue  # built-ins and explicit registrations win over plugins
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the tool
            import warnings

            warnings.warn(f"could not load upsampler plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)
            continue
        if isinstance(obj, UpsamplerSpec):
            _REGISTRY[ep.name] = obj
        elif callable(obj):
            _REGISTRY[ep.name] = _make_spec(ep.name, obj, source=f"entry-point {ep.value}")


def _import_factory(target: str) -> UpsamplerSpec:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"import string {target!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for upsampler {target!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from upsampler {target!r})")
        obj = getattr(obj, part)
    if isinstance(obj, UpsamplerSpec):
        return obj
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable; expected a factory(channels, scale=2, **options)")
    return _make_spec(target, obj, source=f"import {target}")


def get_spec(name: str) -> UpsamplerSpec:
    """Resolve a registered name, an entry-point name or a ``package.module:factory`` string."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"upsampler name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _import_factory(name)
    _load_entry_points()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(
        f"unknown upsampler {name!r}; {hint}available: {', '.join(sorted(_REGISTRY))} "
        "(or give 'package.module:factory')"
    )


def available() -> list[UpsamplerSpec]:
    """Specs of every registered upsampler (built-ins and installed plugins), sorted by name."""
    _load_entry_points()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def names() -> list[str]:
    return [spec.name for spec in available()]


def build(name: str, channels: int, scale: int = 2, **options: Any) -> nn.Module:
    """Build the upsampler ``name`` for ``channels`` input channels and integer ``scale``.

    Unknown options raise ``ValueError`` naming the valid ones.
    """
    spec = get_spec(name)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    if not spec.accepts_any_option():
        unknown = [k for k in options if k not in spec.defaults]
        if unknown:
            valid = ", ".join(spec.option_names()) or "none"
            suggestions = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(spec.defaults), n=1)
                suggestions.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(suggestions)} for upsampler "
                f"{spec.name!r}; valid options: {valid}"
            )
    return spec.factory(channels, scale=scale, **options)
