"""`tcurlora info`: parameter counts of an adapter folder, or of what a method would train on a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tcurlora.adapters.methods.registry import METHODS, method_info
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

RANKED_METHODS = tuple(name for name in METHODS if method_info(name).ranked)  # rank means something
TABLE_RANKS = (4, 8, 16)
COLUMNS = [
    ("method", "method"),
    ("rank", "rank"),
    ("total", "total"),
    ("trainable", "trainable"),
    ("trainable_percent", "trainable %"),
    ("adapter", "adapter core"),
    ("modules", "train modules"),
    ("head", "head"),
]


def register(subparsers: Any) -> None:
    """Add the `info` sub-command."""
    p = subparsers.add_parser(
        "info",
        help="parameter counts of an adapter, or of what a method would train on a base model",
        description="TARGET is an adapter folder, or a base model (unetr-base, unetr-tiny, a built-in "
        "name, a model folder or a MONAI bundle) with --method/--rank or --table.",
    )
    p.add_argument("target", help="adapter folder or base model reference")
    p.add_argument("--method", choices=METHODS, default="tcur", help="method to count (default tcur)")
    p.add_argument("--rank", type=int, default=8, help="adapter rank (default 8)")
    p.add_argument("--num-classes", type=int, help="classes of a new head (default: keep the base head)")
    p.add_argument(
        "--conv-targets",
        action="store_const",
        const=True,
        help="adapt the encoder/decoder Conv3d kernels too (tcur, lora; the default for tcur, as in finetune)",
    )
    p.add_argument(
        "--no-conv-targets",
        dest="conv_targets",
        action="store_const",
        const=False,
        help="only the transformer's linear layers (tCURLoRA as in the paper)",
    )
    p.add_argument(
        "--train-modules",
        nargs="+",
        metavar="REGEX",
        help="extra modules trained in full, as in finetune ('decoder' = every decoderN block)",
    )
    p.add_argument(
        "--no-train-modules",
        dest="train_modules",
        action="store_const",
        const=[],
        help="no extra modules (tcur's default trains the full-resolution blocks)",
    )
    p.add_argument("--table", action="store_true", help="every method x ranks 4/8/16")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if (target / ADAPTER_CONFIG_FILE).is_file() or (
        target.is_dir() and (target / ADAPTER_WEIGHTS_FILE).exists()
    ):
        result: Any = adapter_info(target)
        rows = [result]
    else:
        if args.rank < 1:
            raise InputError(f"--rank must be positive, got {args.rank}")
        base = _load_base(args.target)
        for note in base.notes:  # e.g. an argument a newer MONAI removed, dropped from a zoo bundle
            print(f"note: {note}", file=sys.stderr)
        if args.table:
            plans = [(m, r) for m in METHODS for r in (TABLE_RANKS if m in RANKED_METHODS else (None,))]
        else:
            plans = [(args.method, args.rank if args.method in RANKED_METHODS else None)]
        rows = []
        for m, r in plans:
            try:
                rows.append(
                    model_info(
                        base,
                        m,
                        r,
                        num_classes=args.num_classes,
                        conv=args.conv_targets,
                        train_modules=args.train_modules,
                    )
                )
            except ConfigError as error:
                if not args.table:
                    raise
                print(f"note: {m} does not apply: {error}", file=sys.stderr)  # e.g. decoder on a UNet
        if not rows:
            raise InputError(
                "no adaptation method applies to this base model (see the notes above; is its "
                "segmentation head found? spec head_module: " + repr(base.spec.head_module) + ")",
                args.target,
            )
        result = rows if args.table else rows[0]
    if args.json:
        print(json.dumps(result, indent=2))
    elif "file_size" in rows[0]:  # an adapter folder
        print(format_table(rows, extra=("file_size",)))
        print(format_records(rows[0]))
    else:
        print(format_table(rows))
    return 0


def _load_base(reference: str):
    """A base model: bare preset names (unetr-base, unetr-tiny) or anything the registry loads."""
    from tcurlora.models.architectures import PRESETS
    from tcurlora.models.registry import load_base_model

    if reference in PRESETS and not Path(reference).exists():
        reference = f"preset:{reference}"
    return load_base_model(reference)


def model_info(
    base: Any,
    method: str,
    rank: int | None,
    *,
    num_classes: int | None,
    conv: bool | None,
    train_modules: list[str] | None = None,
) -> dict:
    """Counts of `method` at `rank` on the base model (a deep copy is adapted); conv None: finetune's default."""
    from tcurlora.adapters.config import AdapterConfig, default_train_modules, expand_train_modules
    from tcurlora.adapters.model import counts_for
    from tcurlora.adapters.targets import configure_targets

    config = AdapterConfig(
        method=method,
        rank=rank or 8,
        num_classes=num_classes,
        base_fingerprint=base.fingerprint,
        base_model_id=base.model_id,
        head_module=base.spec.head_module,
    )
    configure_targets(config, base.model, conv)
    if train_modules is None:  # as finetune: the method's default
        train_modules = default_train_modules(method, type(base.model).__name__)
    config.train_modules = expand_train_modules(train_modules)
    counts = counts_for(base.model, config)
    notes = {"notes": list(base.notes)} if base.notes else {}
    return {"target": base.model_id, "method": method, "rank": rank, **counts.to_dict(), **notes}


def adapter_info(folder: Path) -> dict:
    """What an adapter folder says about itself, plus its weight file size (weights verified first)."""
    from tcurlora.adapters.io import read_adapter_config, read_adapter_weights

    record = read_adapter_config(folder)
    weights = folder / ADAPTER_WEIGHTS_FILE
    read_adapter_weights(
        folder, record
    )  # InputError when missing, empty, corrupt or not the recorded SHA-256
    counts = dict(record.get("parameter_counts") or {})
    return {
        "target": str(folder),
        "method": record.get("method"),
        "rank": record.get("rank") if record.get("method") in RANKED_METHODS else None,
        "base_model_id": record.get("base_model_id"),
        "label_names": record.get("label_names"),
        "train_modules": record.get("train_modules") or [],
        **{
            k: counts.get(k)
            for k in ("total", "trainable", "trainable_percent", "adapter", "modules", "head")
        },
        "file_size": weights.stat().st_size,
        **inference_records(record),
    }


def inference_records(record: dict) -> dict:
    """What `segment` and a reader of the adapter need beyond the counts: the working spacing, the mirror
    axes of test-time augmentation, the classes the largest-component cleanup keeps in one piece, and the
    semi-supervised settings (None where an older tcurlora did not record them)."""
    training = record.get("training") if isinstance(record.get("training"), dict) else {}
    preprocessing = record.get("preprocessing") if isinstance(record.get("preprocessing"), dict) else {}
    return {
        "spacing": preprocessing.get("spacing"),
        "flip_axes": training.get("flip_axes"),
        "single_piece_classes": record.get("single_piece_classes"),
        "semi_supervised": training.get("semi_supervised"),
    }


def format_records(row: dict) -> str:
    """The adapter's recorded inference and training settings, one "name: value" line each ("-": not
    recorded, an adapter of an older tcurlora)."""
    return "\n".join(
        f"{key.replace('_', ' ')}: {'-' if row.get(key) is None else json.dumps(row[key])}"
        for key in inference_records({})
    )


def _cell(key: str, value: Any) -> str:
    from tcurlora.adapters.counts import human_size

    if value is None:
        return "-"
    if key == "trainable_percent":
        return f"{value:.4f}"
    if key == "file_size":
        return human_size(int(value))
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict], extra: tuple[str, ...] = ()) -> str:
    """Rows of counts as an aligned text table."""
    columns = COLUMNS + [(key, key.replace("_", " ")) for key in extra]
    cells = [[title for _, title in columns]] + [[_cell(k, row.get(k)) for k, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = rows[0].get("target") if rows else ""
    return f"{title}\n" + "\n".join(line.rstrip() for line in lines)
