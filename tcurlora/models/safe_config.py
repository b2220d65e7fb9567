"""Build one item of a MONAI bundle config (the network) without running anything the config names.

MONAI's config syntax lets `_target_` name any importable callable (`os.system`, `subprocess.run`,
a module shipped in the bundle's `scripts/`), and `$...` strings are Python. Here a config item is
first resolved into a plan, with every `_target_` checked against an allow-list, and only then is
anything instantiated:

- `_target_`: a subclass of `torch.nn.Module` defined in `monai.networks.nets`, `monai.networks.blocks`,
  `monai.networks.layers` or `torch.nn` (not `torch.nn.parallel`); a short name ("UNet") is looked up
  in those MONAI packages only. Anything else is refused before it is imported.
- `@id` references are followed (cycles refused) and checked the same way.
- `$` expressions, `%` macros, `_requires_` and a `_mode_` other than "default" are refused, and so
  are arguments that make a network fetch or read weights (`pretrained`, `weights`, `*_url`, `*_path`,
  `*_file`, `path_or_repo_id`, ...). They are checked on the class's effective arguments: the config's
  values over the class's own defaults (`EfficientNetBN` defaults to `pretrained=True`, which downloads
  from GitHub), and classes that always load weights from elsewhere (`Transchex`: Hugging Face) are refused.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tcurlora.errors import InputError

ALLOWED_MODULES = ("monai.networks.nets", "monai.networks.blocks", "monai.networks.layers", "torch.nn")
REFUSED_MODULES = ("torch.nn.parallel",)
SHORT_NAME_MODULES = ("monai.networks.nets", "monai.networks.blocks", "monai.networks.layers")
# Arguments MONAI removed from a network class that published zoo configs still pass.
REMOVED_ARGUMENTS = {"SwinUNETR": ("img_size",)}
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_RESERVED = {"_target_", "_desc_", "_disabled_", "_mode_", "_requires_"}
# Network arguments that make a MONAI / torchvision class download or read weights when set.
_FETCHING = re.compile(
    r"^(?!drop)(pretrained\w*|weights\w*|\w+_(url|path|file|dir)|url|path|filename|path_or_repo_id|repo_id|cache_dir)$"
)
# Allowed-module classes that load weights from the network or a folder whatever their arguments say.
REFUSED_CLASSES = {"Transchex": "it loads BERT weights from Hugging Face or a folder (path_or_repo_id)"}


@dataclass
class Component:
    """A checked `_target_` item: the class and its (already checked) arguments."""

    cls: type
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Arguments the config passes that this MONAI version's class no longer accepts (REMOVED_ARGUMENTS).
    dropped: dict[str, Any] = field(default_factory=dict)


def _allowed_module(module: str) -> bool:
    inside = any(module == m or module.startswith(m + ".") for m in ALLOWED_MODULES)
    refused = any(module == m or module.startswith(m + ".") for m in REFUSED_MODULES)
    return inside and not refused


def resolve_target(name: Any, where: str, config_path: Path) -> type:
    """The allowed class that `name` stands for; InputError naming it (nothing imported) otherwise."""
    rule = "only MONAI network classes (monai.networks.nets/blocks/layers) and torch.nn modules are built"
    if not isinstance(name, str) or not _DOTTED.match(name):
        raise InputError(f"refused _target_ {name!r} at {where}: not a class name; {rule}", config_path)
    module_name, _, attr = name.rpartition(".")
    candidates = [module_name] if module_name else list(SHORT_NAME_MODULES)
    if module_name and not _allowed_module(module_name):
        raise InputError(
            f"refused _target_ {name!r} at {where}: {rule}; nothing was imported or run", config_path
        )
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
        except ImportError:
            continue
        value = getattr(module, attr, None)
        if (
            isinstance(value, type)
            and issubclass(value, nn.Module)
            and _allowed_module(getattr(value, "__module__", ""))
        ):
            return value
    raise InputError(f"refused _target_ {name!r} at {where}: {rule}; nothing was run", config_path)


class PlanBuilder:
    """Turns a raw config item into a plan of literals and Components, refusing what could run code."""

    def __init__(self, config: dict[str, Any], config_path: Path):
        self.config = config
        self.config_path = config_path
        self._refs: dict[str, Any] = {}

    def fail(self, where: str, problem: str) -> None:
        raise InputError(f"{problem} at {where}; refused for safety, nothing was run", self.config_path)

    def lookup(self, ref: str, where: str) -> Any:
        value: Any = self.config
        for part in re.split(r"::|#", ref):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                self.fail(where, f"reference '@{ref}' points to no config item")
        return value

    def plan(self, value: Any, where: str, stack: tuple[str, ...] = ()) -> Any:
        """The checked plan of `value` (found at `where`)."""
        if isinstance(value, str):
            return self._string(value, where, stack)
        if isinstance(value, list):
            return [self.plan(v, f"{where}::{i}", stack) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if "_target_" not in value:
                return {k: self.plan(v, f"{where}::{k}", stack) for k, v in value.items()}
            return self._component(value, where, stack)
        return value

    def _string(self, value: str, where: str, stack: tuple[str, ...]) -> Any:
        if value.startswith("$"):
            self.fail(
                where,
                f"config expression {value[:60]!r} (config expressions are Python code, never evaluated)",
            )
        if value.startswith("%"):
            self.fail(where, f"config macro {value[:60]!r} (it reads other files)")
        if not value.startswith("@"):
            return value
        ref = value[1:]
        if ref in stack:
            self.fail(where, f"circular reference {' -> '.join('@' + r for r in (*stack, ref))}")
        if ref not in self._refs:
            self._refs[ref] = self.plan(self.lookup(ref, where), f"{where} -> @{ref}", (*stack, ref))
        return self._refs[ref]

    def _component(self, item: dict[str, Any], where: str, stack: tuple[str, ...]) -> Component | None:
        if "_requires_" in item:
            self.fail(where, "_requires_ (it runs other config items for their side effects)")
        mode = item.get("_mode_", "default")
        if mode != "default":
            self.fail(where, f"_mode_ {mode!r} (only 'default' instantiation is supported)")
        disabled = item.get("_disabled_", False)
        if disabled not in (False, True, "false", "true", "False", "True"):
            self.fail(where, f"_disabled_ {disabled!r} (expected true or false)")
        name = item["_target_"]
        cls = resolve_target(name, where, self.config_path)
        if cls.__name__ in REFUSED_CLASSES:
            self.fail(where, f"network class {name!r} ({REFUSED_CLASSES[cls.__name__]})")
        kwargs = {k: self.plan(v, f"{where}::{k}", stack) for k, v in item.items() if k not in _RESERVED}
        for key, (value, default) in _effective_arguments(cls, kwargs).items():
            if _FETCHING.match(str(key)) and not _inert(value):
                source = f"{name}'s default, not set in the config" if default else "set in the config"
                self.fail(
                    f"{where}::{key}",
                    f"argument {key!r} = {value!r} ({source}; it would download or read weights from "
                    f"elsewhere; a bundle's weights come from its models/ folder: set {key} to false/null)",
                )
        if disabled in (True, "true", "True"):
            return None
        kept, dropped = _drop_removed_arguments(cls, kwargs)
        return Component(cls=cls, name=str(name), kwargs=kept, dropped=dropped)


def _inert(value: Any) -> bool:
    """True for the values that switch a fetching argument off."""
    return value is None or value is False or (isinstance(value, (str, int, float)) and not value)


def _effective_arguments(cls: type, kwargs: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """name -> (value, taken from the class's default): what the class will actually be called with."""
    effective: dict[str, tuple[Any, bool]] = {}
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    for parameter in parameters:
        if parameter.default is not inspect.Parameter.empty and parameter.name not in kwargs:
            effective[parameter.name] = (parameter.default, True)
    effective.update({k: (v, False) for k, v in kwargs.items()})
    return effective


def _drop_removed_arguments(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kept, dropped): arguments a newer MONAI removed from `cls` are dropped when it rejects them."""
    removed = REMOVED_ARGUMENTS.get(cls.__name__, ())
    if not removed:
        return kwargs, {}
    accepted = inspect.signature(cls).parameters
    dropped = {k: v for k, v in kwargs.items() if k in removed and k not in accepted}
    return {k: v for k, v in kwargs.items() if k not in dropped}, dropped


def dropped_argument_notes(plan: Any) -> list[str]:
    """One sentence per argument dropped anywhere in a plan, naming the class and this MONAI version."""
    import monai

    notes: list[str] = []
    if isinstance(plan, Component):
        for key, value in plan.dropped.items():
            notes.append(
                f"{plan.name}: argument {key}={value!r} dropped: MONAI {monai.__version__} no longer accepts "
                f"it (removed in MONAI 1.5; the network it builds does not depend on it)"
            )
        for value in plan.kwargs.values():
            notes += dropped_argument_notes(value)
    elif isinstance(plan, dict):
        for value in plan.values():
            notes += dropped_argument_notes(value)
    elif isinstance(plan, list):
        for value in plan:
            notes += dropped_argument_notes(value)
    return notes


def instantiate(plan: Any, config_path: Path, built: dict[int, Any] | None = None) -> Any:
    """Build a checked plan bottom-up (a Component used twice through `@` is built once)."""
    built = {} if built is None else built
    if isinstance(plan, list):
        return [instantiate(v, config_path, built) for v in plan]
    if isinstance(plan, dict):
        return {k: instantiate(v, config_path, built) for k, v in plan.items()}
    if not isinstance(plan, Component):
        return plan
    if id(plan) not in built:
        kwargs = {k: instantiate(v, config_path, built) for k, v in plan.kwargs.items()}
        try:
            built[id(plan)] = plan.cls(**kwargs)
        except InputError:  # e.g. refused by a build budget (models/build_budget.py)
            raise
        except Exception as error:  # noqa: BLE001 - a network class raises many types for bad arguments
            raise InputError(
                f"cannot build {plan.name}: {type(error).__name__}: {error}", config_path
            ) from error
    return built[id(plan)]


def literal_arguments(plan: Component) -> dict[str, Any]:
    """The plan's arguments as JSON-able values (nested components as {"_target_": name, ...})."""

    def literal(value: Any) -> Any:
        if isinstance(value, Component):
            return {"_target_": value.name, **literal(value.kwargs)}
        if isinstance(value, dict):
            return {k: literal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [literal(v) for v in value]
        return value

    return literal(plan.kwargs)


def plan_item(config: dict[str, Any], item: str, config_path: Path) -> Component:
    """The checked plan of the top-level `item` (which must be a `_target_` component)."""
    if item not in config:
        raise InputError(f"the bundle config has no {item!r} item", config_path)
    plan = PlanBuilder(config, config_path).plan(config[item], item, (item,))
    if not isinstance(plan, Component):
        raise InputError(f"{item} is not a network (a dict with an allowed _target_)", config_path)
    return plan


def build_item(config: dict[str, Any], item: str, config_path: Path) -> nn.Module:
    """Check every target reachable from `item`, then instantiate it; InputError for anything refused."""
    module = instantiate(plan_item(config, item, config_path), config_path)
    if not isinstance(module, nn.Module):
        raise InputError(f"{item} is not a torch module but {type(module).__name__}", config_path)
    return module
