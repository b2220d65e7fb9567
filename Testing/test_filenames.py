"""Artifact file names and format tags live in tcurlora/filenames.py only: users, scripts and older
versions read these names, so they must not change by accident, and a second spelling elsewhere is how
two parts of the code drift apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tcurlora import filenames

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "tcurlora" / "filenames.py"
SCANNED = ("tcurlora", "Testing", "scripts", "TCURLoRACommon", "TCURFineTune", "TCURSegmenter")

# What users, older adapters and other clients see; changing one breaks them (the one place they are
# spelled out a second time, on purpose).
PUBLISHED = {
    "ADAPTER_CONFIG_FILE": "adapter_config.json",
    "ADAPTER_WEIGHTS_FILE": "adapter.safetensors",
    "TRAINING_LOG_FILE": "training_log.jsonl",
    "ADAPTER_ARCHIVE_SUFFIX": ".tcuradapter.zip",
    "MODEL_SPEC_FILE": "model.json",
    "MODEL_WEIGHTS_FILE": "model.safetensors",
    "MODEL_CARD_FILE": "MODEL_CARD.md",
    "BUNDLE_SAFETENSORS_FILE": "models/model.safetensors",
    "BUNDLE_TORCH_FILE": "models/model.pt",
    "CHECKPOINT_SUFFIX": ".checkpoint",
    "CHECKPOINT_FILE": "checkpoint.json",
    "BEST_WEIGHTS_FILE": "best_adapter.safetensors",
    "TEACHER_WEIGHTS_FILE": "teacher.safetensors",
    "PRETRAIN_STATE_FILE": "training_state.json",
    "OPTIMIZER_FILE": "optimizer.pt",
    "FEDERATION_SUFFIX": ".federation",
    "FEDERATION_STATE_DIR": "state",
    "FEDERATION_STATE_FILE": "state.json",
    "FEDERATION_WEIGHTS_FILE": "global.safetensors",
    "DOWNLOAD_RECORD_FILE": "tcurlora_download.json",
    "MODEL_FOLDERS_FILE": "model_folders.json",
    "INTERRUPTED_RUNS_FILE": "interrupted_runs.json",
    "RUN_INFO_FILE": "run.json",
    "DEMO_SUMMARY_FILE": "summary.json",
    "BENCH_REPORT_FILE": "report.json",
    "BENCH_MARKDOWN_FILE": "report.md",
    "SEGMENTATION_SUFFIX": "_seg",
    "JOB_SCHEMA": "tcurlora.job/1",
    "EVENT_SCHEMA_NAME": "tcurlora.events/1",
    "ADAPTER_FORMAT": "tcurlora.adapter/1",
    "MODEL_FORMAT": "tcurlora.model/1",
    "PRETRAIN_RECIPE_FORMAT": "tcurlora.pretrain/1",
    "PRETRAIN_STATE_FORMAT": "tcurlora.pretrain-state/1",
    "EVALUATION_SCHEMA": "tcurlora.evaluation/1",
    "RANKING_SCHEMA": "tcurlora.suggest/1",
    "BENCH_SCHEMA": "tcurlora.bench/1",
    "BENCH_REPORT_SCHEMA": "tcurlora.bench-report/1",
}


def named_strings() -> dict[str, str]:
    """Every upper-case string constant of filenames.py: name -> value."""
    return {k: v for k, v in vars(filenames).items() if k.isupper() and isinstance(v, str)}


def policed(names: dict[str, str]) -> dict[str, str]:
    """The names a literal elsewhere must not repeat: a bare word ("state", a folder) is too common a string."""
    return {k: v for k, v in names.items() if not v.isalpha()}


def docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (prose may name files)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def stray_literals(path: Path, names: dict[str, str]) -> list[str]:
    """'file:line: "value" (use NAME)' for each plain string literal equal to a known name or tag.

    f-string pieces are not checked: they compose a name from a variable ("{name}.checkpoint")."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    by_value = {v: k for k, v in names.items()}
    skip = docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
    return [
        f"{shown}:{node.lineno}: {node.value!r} (use filenames.{by_value[node.value]})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and id(node) not in skip and node.value in by_value
    ]


def test_published_names_and_tags_keep_their_values():
    assert {k: v for k, v in named_strings().items() if k in PUBLISHED} == PUBLISHED
    assert filenames.ADAPTER_FILES == ("adapter_config.json", "adapter.safetensors", "training_log.jsonl")
    assert filenames.MODEL_FILES == {"model.json", "model.safetensors", "training_log.jsonl", "MODEL_CARD.md"}


def test_every_name_and_tag_is_spelled_out_only_in_filenames_py():
    names = named_strings()
    assert set(PUBLISHED) <= set(names), sorted(set(PUBLISHED) - set(names))
    assert len(set(names.values())) == len(names), "two constants of filenames.py share a value"
    files = [
        p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py")) if "__pycache__" not in p.parts
    ]
    assert len(files) > 100, "the scan found too few files to be looking at the repository"
    own = (HOME, Path(__file__).resolve())
    strays = [hit for p in files if p not in own for hit in stray_literals(p, policed(names))]
    assert strays == [], "\n".join(strays)


def test_the_scan_finds_a_stray_literal(tmp_path):
    """The check above can fail: a copied name in code is reported, a docstring naming it is not."""
    sample = tmp_path / "stray.py"
    sample.write_text('"""Reads adapter_config.json."""\nCONFIG = "adapter_config.json"\nLOG = f"{1}_seg"\n')
    assert stray_literals(sample, policed(named_strings())) == [
        f"{sample}:2: 'adapter_config.json' (use filenames.ADAPTER_CONFIG_FILE)"
    ]


def test_filenames_imports_neither_torch_nor_the_rest_of_the_backend():
    """The Slicer panels import it before their dependencies are installed."""
    code = "import sys, tcurlora.filenames; print(sorted(m for m in sys.modules if m.startswith(('torch', 'tcurlora.'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['tcurlora.filenames']"
