"""Re-encode a model folder's weights as int8 (one scale per output channel), so a base fits the tree.

    python scripts/quantize_base.py Resources/Models/unetr-small-acdc-brats            # in place
    python scripts/quantize_base.py MODEL_FOLDER -o NEW_FOLDER --json errors.json

Large float tensors become int8 + a float32 scale per first-dimension slice; norms, biases and other
small tensors stay fp16 (tcurlora/models/int8_weights.py). The folder's other files are copied, the card
records the storage and MODEL_CARD.md is re-rendered with the new fingerprint (that of the dequantized
float32 weights, which is what users run). The output folder is written atomically. Prints the size and
the relative weight error (||dequantized - original|| / ||original|| per tensor): max and mean.
Exit codes: 2 for a bad input folder, 3 when the output cannot be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tcurlora.errors import TCURLoRAError
from tcurlora.filenames import MODEL_CARD_FILE as CARD_FILE
from tcurlora.filenames import MODEL_SPEC_FILE
from tcurlora.filenames import MODEL_WEIGHTS_FILE as WEIGHTS_FILE
from tcurlora.fsutil import atomic_dir
from tcurlora.models.fingerprint import state_dict_fingerprint
from tcurlora.models.int8_weights import read_model_weights, relative_errors, save_int8_weights
from tcurlora.models.registry import load_model_folder
from tcurlora.outputs import check_model_output
from tcurlora.pretraining.card import render_card

INT8_STORAGE = "int8: symmetric, one float32 scale per output channel; tensors under 4,096 values in fp16"


def quantize_folder(source: Path, output: Path, *, force: bool = False) -> dict:
    """Write `output`: `source` with int8 weights and a re-rendered card; returns the measurements."""
    base = load_model_folder(source)
    original = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
    record = json.loads((source / MODEL_SPEC_FILE).read_text(encoding="utf-8"))
    check_model_output(output, force or output.resolve() == source.resolve())
    with atomic_dir(output, "the model folder") as temp:
        save_int8_weights(original, temp / WEIGHTS_FILE)
        restored = read_model_weights(temp / WEIGHTS_FILE)
        base.model.load_state_dict(restored)
        fingerprint = state_dict_fingerprint(base.model)
        if record.get("card"):
            record["card"]["weights_storage"] = INT8_STORAGE
        (temp / MODEL_SPEC_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        for path in sorted(source.iterdir()):
            if path.name not in (WEIGHTS_FILE, MODEL_SPEC_FILE, CARD_FILE) and path.is_file():
                (temp / path.name).write_bytes(path.read_bytes())
        if record.get("card"):
            card_text = render_card(base.spec, record["card"], fingerprint)
            (temp / CARD_FILE).write_text(card_text, encoding="utf-8")
        size = (temp / WEIGHTS_FILE).stat().st_size
    errors = relative_errors(original, restored)
    return {
        "source": str(source),
        "output": str(output),
        "bytes": size,
        "fingerprint": fingerprint,
        "source_fingerprint": base.fingerprint,
        "tensors": len(original),
        "max_relative_error": max(errors.values()),
        "worst_tensor": max(errors, key=errors.__getitem__),
        "mean_relative_error": sum(errors.values()) / len(errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder (model.json + model.safetensors)")
    parser.add_argument("-o", "--output", type=Path, help="the new model folder (default: replace FOLDER)")
    parser.add_argument("--force", action="store_true", help="replace an existing output model folder")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    try:
        result = quantize_folder(args.folder, args.output or args.folder, force=args.force)
    except TCURLoRAError as error:  # a bad input folder: 2; an output that exists or cannot be written: 3
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
