"""Rewrite a model folder's card notes (model.json "card.notes") and re-render its MODEL_CARD.md.

    python scripts/update_model_card.py Resources/Models/segresnet-mri --notes notes.json

notes.json is a JSON list of strings (e.g. the transfer results measured by `tcurlora bench`); the weights
are not touched, and both files are written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tcurlora.filenames import MODEL_CARD_FILE, MODEL_SPEC_FILE
from tcurlora.fsutil import atomic_write_text
from tcurlora.models.registry import load_base_model
from tcurlora.pretraining.card import render_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--notes", type=Path, help="JSON list of strings for card.notes")
    args = parser.parse_args()
    record = json.loads((args.folder / MODEL_SPEC_FILE).read_text())
    if args.notes:
        notes = json.loads(args.notes.read_text())
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise SystemExit(f"{args.notes}: expected a JSON list of strings")
        record["card"]["notes"] = notes
    base = load_base_model(args.folder)
    atomic_write_text(args.folder / MODEL_SPEC_FILE, json.dumps(record, indent=2))
    atomic_write_text(args.folder / MODEL_CARD_FILE, render_card(base.spec, record["card"], base.fingerprint))
    print(f"updated {args.folder}")


if __name__ == "__main__":
    main()
