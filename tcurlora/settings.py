"""One declaration per setting, and the one validator, JSON Schema writer and CLI builder derived from it.

A setting is a dataclass field whose metadata holds a `Setting` (made with `setting(...)`): its kind,
bounds, choices, help text and command-line flag. From the field (name, default) and its `Setting`:

- `read_fields` validates a JSON object into the field values (`SettingError` naming the key);
- `field_schema` / `object_schema` write the JSON Schema (draft 2020-12) of the object;
- `add_arguments` adds the argparse flags, `flag_values` reads them back as job keys;
- `dump_fields` turns the values back into JSON.

Standard library only and Python 3.9 syntax: the Slicer modules import it through `tcurlora.jobs`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REQUIRED: Any = dataclasses.MISSING
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
_DEVICE = re.compile(DEVICE_PATTERN)
NONBLANK = r"\S"  # what "must not be empty" means for a string (not only whitespace)

# Per kind: the JSON type checked first and how a wrong type is named in the error.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "string": ((str,), "a string"),
    "text": ((str,), "a string"),  # a string that may be empty
    "choice": ((str,), "a string"),
    "device": ((str,), "a string"),
    "reference": ((str,), "a string"),
    "path": ((str,), "a path string"),
    "boolean": ((bool,), "true or false"),
    "integer": ((int,), "an integer"),
    "number": ((int, float), "a number"),
    "strings": ((list,), "a list of strings"),
    "object": ((dict,), "an object"),
    "custom": ((object,), "a value"),
}


class SettingError(ValueError):
    """A value that breaks its declaration: the key as written in the file, and the problem."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"key {key!r}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Setting:
    """How one field is read, documented and offered on the command line."""

    kind: str
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # minimum itself refused ("must be > minimum")
    exclusive_maximum: bool = False
    label: str = ""  # how the expected type is named in errors (default: the kind's)
    nullable: bool = False  # null allowed although the default is not None (always when it is)
    check: Callable[[str, Any], Any] | None = None  # after the kind's checks: (key, value) -> value
    parse: Callable[[str, Any, Any], Any] | None = None  # custom kinds: (key, value, context) -> value
    dump: Callable[[Any], Any] | None = None  # value -> JSON (default: paths to str, tuples to lists)
    schema: dict[str, Any] | None = None  # the JSON Schema of a custom kind (or extra keywords)
    flag: str | None = None  # command-line flag; None: only in files
    aliases: tuple[str, ...] = ()
    dest: str | None = None  # argparse dest when it differs from the key
    cli: dict[str, Any] | None = None  # extra add_argument keywords (type, nargs, metavar, ...)
    negation: tuple[str, Any, str] | None = None  # a second flag: (flag, constant, help)
    from_cli: Callable[[Any], Any] | None = None  # flag value -> job value
    override: bool = False  # may accompany --job (how to run it, not what)
    slicer: bool = False  # one of the settings of the Slicer FineTune panel


def setting(
    default: Any = REQUIRED, kind: str = "string", factory: Callable[[], Any] | None = None, **options: Any
) -> Any:
    """A dataclass field declaring one setting; list and dict defaults are copied per instance, `factory`
    makes the default of each instance (a nested declared dataclass)."""
    meta = {"setting": Setting(kind=kind, **options)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings_of(cls: Any) -> list[tuple[dataclasses.Field, Setting]]:
    """The declared settings of a dataclass, in field order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (REQUIRED when it has none)."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


# ------------------------------------------------------------------------------------- validation
def type_error(key: str, value: Any, label: str) -> SettingError:
    return SettingError(key, f"expected {label}, got {type(value).__name__} {value!r}")


def expect(key: str, value: Any, kinds: tuple[type, ...], label: str) -> Any:
    """`value` if it is of one of the JSON `kinds` (a bool is not a number, infinities are not JSON)."""
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise type_error(key, value, label)
    return value


def _bounds(key: str, value: float, s: Setting) -> None:
    low, high = s.minimum, s.maximum
    if s.kind == "integer":
        if low is not None and value < low:
            raise SettingError(key, f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise SettingError(key, f"must be <= {high}, got {value}")
        return
    if (low is not None and value < low) or (
        high is not None and (value > high or (s.exclusive_maximum and value == high))
    ):
        bracket = ")" if s.exclusive_maximum else "]"
        raise SettingError(key, f"must be in [{low}, {high}{bracket}, got {value}")
    if s.exclusive_minimum and value == low:
        raise SettingError(key, f"must be > {low:g}")


def looks_like_path(value: str, base_dir: Path) -> bool:
    """Whether a model reference names a file or folder rather than a built-in or library name."""
    return (
        any(sep in value for sep in ("/", "\\"))
        or value.startswith((".", "~"))
        or (base_dir / value).exists()
    )


def resolve_path(key: str, value: Any, base_dir: Path | None) -> Path:
    """A non-empty path string -> Path, relative ones resolved against `base_dir`."""
    expect(key, value, (str,), "a path string")
    if not value.strip():
        raise SettingError(key, "must not be empty")
    path = Path(value).expanduser()
    if path.is_absolute() or base_dir is None:
        return path
    try:
        return (base_dir / path).resolve()
    except (RuntimeError, OSError) as error:  # Python < 3.13: RuntimeError "Symlink loop from ..."
        raise SettingError(key, f"{value!r} is a symbolic link that leads back to itself (a loop)") from error


def check_value(key: str, value: Any, s: Setting, base_dir: Path | None = None) -> Any:
    """The checked (and converted) value of one setting; SettingError naming `key` otherwise."""
    if s.kind == "custom":
        assert s.parse is not None, f"custom setting {key!r} needs a parse function"
        value = s.parse(key, value, base_dir)
    elif s.kind == "path":
        value = resolve_path(key, value, base_dir)
    else:
        kinds, label = _KINDS[s.kind]
        expect(key, value, kinds, s.label or label)
        if s.kind in ("string", "choice", "device", "reference") and not value.strip():
            raise SettingError(key, "must not be empty")
        if s.kind == "choice" and value not in s.choices:
            raise SettingError(key, f"must be one of {', '.join(s.choices)}; got {value!r}")
        if s.kind == "device" and not _DEVICE.match(value):
            raise SettingError(key, f"must be auto, cpu, cuda or cuda:N; got {value!r}")
        if s.kind == "reference" and base_dir is not None and looks_like_path(value, base_dir):
            value = str(resolve_path(key, value, base_dir))
        if s.kind == "number":
            value = float(value)
        if s.kind in ("integer", "number"):
            _bounds(key, value, s)
        if s.kind == "strings":
            value = [expect(f"{key}[{i}]", item, (str,), "a string") for i, item in enumerate(value)]
    return s.check(key, value) if s.check is not None else value


def positive_triple(cast: type) -> Callable[[str, Any, Any], tuple]:
    """A custom-kind parser: a list of 3 positive integers (cast int) or numbers (cast float) -> tuple."""
    kind = "integers" if cast is int else "numbers"

    def parse(key: str, value: Any, base_dir: Any = None) -> tuple:
        ok = (
            isinstance(value, list)
            and len(value) == 3
            and all(
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
                and (cast is float or isinstance(v, int))
                for v in value
            )
        )
        if not ok:
            raise SettingError(
                key, f"expected a list of 3 positive {kind}, got {type(value).__name__} {value!r}"
            )
        return tuple(cast(v) for v in value)

    return parse


def triple_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of `positive_triple`: 3 positive integers or numbers."""
    return {"type": "array", "items": {"type": kind, "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3}


def check_keys(data: Any, allowed: set, what: str = "a job") -> dict:
    """`data` if it is an object with only `allowed` keys."""
    if not isinstance(data, dict):
        raise SettingError("", f"{what} must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SettingError(unknown[0], f"unknown key (allowed keys: {', '.join(sorted(allowed))})")
    return data


def read_field(f: dataclasses.Field, s: Setting, data: dict, base_dir: Path | None = None) -> Any:
    """One field's value from `data`: its default when absent, None when null and the default is None."""
    default = default_of(f)
    if f.name not in data:
        if default is REQUIRED:
            raise SettingError(f.name, "missing (required)")
        return default
    value = data[f.name]
    if value is None and (default is None or s.nullable):
        return None
    return check_value(f.name, value, s, base_dir)


def read_fields(cls: Any, data: dict, base_dir: Path | None = None) -> dict[str, Any]:
    """Every declared field of `cls` read out of `data` (unknown keys are the caller's to refuse)."""
    return {f.name: read_field(f, s, data, base_dir) for f, s in settings_of(cls)}


def read_object(
    cls: Any, data: Any, what: str, where: str = "", extra: tuple[str, ...] = (), base_dir: Path | None = None
) -> dict[str, Any]:
    """The declared fields of `cls` out of the JSON object `data` (`what` names it in errors), refusing
    unknown keys (`extra`: other allowed keys); errors name the key under `where` ("cost.steps")."""
    try:
        check_keys(data, {f.name for f, _ in settings_of(cls)} | set(extra), what)
        return read_fields(cls, data, base_dir)
    except SettingError as error:
        if not where:
            raise
        raise SettingError(f"{where}.{error.key}" if error.key else where, error.problem) from None


def to_json(value: Any) -> Any:
    """Paths to strings, tuples to lists, dataclasses to their declared fields."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump_fields(value)
    return value


def dump_fields(obj: Any) -> dict[str, Any]:
    """The declared fields of a dataclass instance as JSON values."""
    out = {}
    for f, s in settings_of(type(obj)):
        value = getattr(obj, f.name)
        out[f.name] = s.dump(value) if s.dump is not None and value is not None else to_json(value)
    return out


# ------------------------------------------------------------------------------------ JSON Schema
def _base_schema(s: Setting) -> dict[str, Any]:
    nonblank = {"type": "string", "minLength": 1, "pattern": NONBLANK}
    if s.kind in ("string", "reference", "path"):
        schema: dict[str, Any] = dict(nonblank)
    elif s.kind == "text":
        schema = {"type": "string"}
    elif s.kind == "choice":
        schema = {"enum": list(s.choices)}
    elif s.kind == "device":
        schema = {"type": "string", "pattern": DEVICE_PATTERN}
    elif s.kind == "boolean":
        schema = {"type": "boolean"}
    elif s.kind == "strings":
        schema = {"type": "array", "items": {"type": "string"}}
    elif s.kind == "object":
        schema = {"type": "object"}
    elif s.kind in ("integer", "number"):
        schema = {"type": s.kind}
        if s.minimum is not None:
            schema["exclusiveMinimum" if s.exclusive_minimum else "minimum"] = s.minimum
        if s.maximum is not None:
            schema["exclusiveMaximum" if s.exclusive_maximum else "maximum"] = s.maximum
    else:
        schema = {}
    schema.update(s.schema or {})
    return schema


def field_schema(f: dataclasses.Field, s: Setting) -> dict[str, Any]:
    """The JSON Schema of one field: its kind's, `null` allowed when the default is None."""
    schema = _base_schema(s)
    default = default_of(f)
    if default is None or s.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    if s.help:
        schema["description"] = s.help
    if default is not REQUIRED:
        schema["default"] = to_json(default)
    return schema


def object_schema(
    cls: Any, extra: dict[str, Any] | None = None, extra_required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The JSON Schema of a dataclass's declared fields as a closed object; `extra`: more properties
    (`extra_required` of them required), the description: the class's first docstring paragraph."""
    properties = dict(extra or {})
    required = list(extra_required)
    for f, s in settings_of(cls):
        properties[f.name] = field_schema(f, s)
        if default_of(f) is REQUIRED:
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object"}
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    if doc:
        schema["description"] = " ".join(doc.split())
    schema.update({"properties": properties, "required": required, "additionalProperties": False})
    return schema


# --------------------------------------------------------------------------------- command line
def _help(f: dataclasses.Field, s: Setting) -> str:
    """The help text, with the default added when it is a plain value the text does not state."""
    default = default_of(f)
    plain = default not in (REQUIRED, None) and not isinstance(default, (bool, list, dict))
    return f"{s.help} (default {default})" if plain and "default" not in s.help else s.help


def add_arguments(parser: Any, cls: Any) -> None:
    """One argparse flag per declared setting with a `flag` (and its `negation`); every default None,
    so that only the flags given become job keys."""
    for f, s in settings_of(cls):
        if s.flag is None:
            continue
        options: dict[str, Any] = {"dest": s.dest or f.name, "help": _help(f, s)}
        if s.kind == "boolean":
            options.update(
                action="store_const", const=not default_of(f) if default_of(f) is not None else True
            )
        elif s.kind == "choice":
            options["choices"] = s.choices
        elif s.kind == "integer":
            options["type"] = int
        elif s.kind == "number":
            options["type"] = float
        elif s.kind == "strings":
            options["nargs"] = "+"
        options.update(s.cli or {})
        parser.add_argument(s.flag, *s.aliases, **options)
        if s.negation is not None:
            flag, const, text = s.negation
            parser.add_argument(flag, dest=s.dest or f.name, action="store_const", const=const, help=text)


def job_flags(cls: Any) -> dict[str, str]:
    """argparse dest -> flag of every declared setting offered on the command line."""
    return {s.dest or f.name: s.flag for f, s in settings_of(cls) if s.flag is not None}


def override_dests(cls: Any) -> tuple[str, ...]:
    """The dests of the flags that may accompany --job (how to run it, not what)."""
    return tuple(s.dest or f.name for f, s in settings_of(cls) if s.flag is not None and s.override)


def flag_values(args: Any, cls: Any) -> dict[str, Any]:
    """Job key -> value of every declared flag given on the command line (converted by `from_cli`)."""
    out = {}
    for f, s in settings_of(cls):
        if s.flag is None:
            continue
        value = getattr(args, s.dest or f.name, None)
        if value is not None:
            out[f.name] = s.from_cli(value) if s.from_cli is not None else value
    return out
