"""The method plugin interface and the configuration flow.

A method is a class with a frozen config dataclass whose defaults are the paper's, a table of paper
settings per ``(dataset, ipc)``, a ``label_kind`` and ``distill``. Configuration resolves as
``--set key=value`` > config file > paper table > dataclass default; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError
from dcbench.protocol import Preset
from dcbench.registry import Registry

#: ``progress(done, total)`` callback a method may call during long work.
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """Config of a method without hyper-parameters."""


class Method(ABC):
    """Base class of every distillation method plugin (register with :func:`register_method`).

    Subclasses set ``name``, ``Config`` (a frozen dataclass, defaults = the paper's),
    ``paper_settings`` (``{(dataset, ipc): {field: value}}``), ``label_kind`` (``"hard"`` or
    ``"soft"``) and implement :meth:`distill`. Randomness only through generators derived from
    ``seed``.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    paper_settings: ClassVar[Mapping[tuple[str, int], Mapping[str, Any]]] = {}
    label_kind: ClassVar[str] = "hard"
    #: True for methods whose output does not depend on the IPC (the ``full`` upper bound).
    ipc_independent: ClassVar[bool] = False
    #: Datasets the method refuses (e.g. needs colour); empty = every dataset.
    unsupported_datasets: ClassVar[frozenset[str]] = frozenset()

    def resolve_config(
        self,
        dataset: str,
        ipc: int,
        overrides: Mapping[str, Any] | None = None,
        file_config: Mapping[str, Any] | None = None,
    ) -> Any:
        """The effective config: overrides > config file > paper table > dataclass defaults."""
        values: dict[str, Any] = dict(self.settings_for(dataset, ipc))
        for source in (file_config or {}, overrides or {}):
            values.update(_coerce_fields(self.Config, source, self.name))
        return self.Config(**values)

    def settings_for(self, dataset: str, ipc: int) -> Mapping[str, Any]:
        """The paper's settings for ``(dataset, ipc)``; methods may add a documented fallback."""
        return self.paper_settings.get((dataset, ipc), {})

    @abstractmethod
    def distill(
        self,
        data: RealData,
        ipc: int,
        config: Any,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        """Distil ``ipc`` images per class from ``data``.

        ``cache`` (given by the runner) stores intermediate artifacts such as trained networks
        under a content key, so they are computed once per store; ``None`` means no reuse.
        """


METHODS: Registry[type[Method]] = Registry("method", entry_point_group="dcbench.methods")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a method plugin under ``name``."""

    def decorate(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return decorate


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a plain JSON-serialisable dict (for records and keys)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _coerce_fields(config_cls: type, values: Mapping[str, Any], method: str) -> dict[str, Any]:
    """Validate keys against the dataclass and convert string values to the field types."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none: this method has no settings)"
            raise DcbenchError(f"unknown setting {key!r} for method {method!r}; valid: {valid}")
        out[key] = _coerce(value, hints[key], key) if isinstance(value, str) else value
    return out


def _coerce(text: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() in {"none", "null"}:
            return None
        return _coerce(text, args[0], key)
    try:
        if hint is bool:
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if hint in (int, float, str):
            return hint(text)
        return json.loads(text)
    except (ValueError, TypeError):
        raise DcbenchError(
            f"setting {key}={text!r}: expected {getattr(hint, '__name__', hint)}"
        ) from None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}`` (``--set`` options)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise DcbenchError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out
