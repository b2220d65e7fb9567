"""What a loaded base model is, and how weights go into its network: shared by the model-folder loader
(tcurlora.models.registry) and the MONAI bundle loader (tcurlora.models.bundle), which the registry
dispatches to; kept apart so that neither loader imports the other for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tcurlora.errors import InputError
from tcurlora.models.fingerprint import state_dict_fingerprint
from tcurlora.models.spec import ModelSpec


@dataclass
class BaseModel:
    """A loaded base model: the network in eval mode, its spec, and what identifies its weights."""

    model: nn.Module
    spec: ModelSpec
    model_id: str
    fingerprint: str
    source: str
    # What was changed or assumed to load it (an argument a newer MONAI removed, a preprocessing step
    # read differently): logged when loaded, printed by `info`, logged by finetune.
    notes: list[str] = field(default_factory=list)


def load_weights(model: nn.Module, state: dict, path: Path | str) -> None:
    """Load a state dict strictly (upcasting fp16 storage), naming the file on any mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}", path
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InputError(
                f"weight {name} has shape {tuple(tensor.shape)}, the architecture needs {tuple(expected[name].shape)}",
                path,
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def finish_base_model(
    model: nn.Module, spec: ModelSpec, *, model_id: str, source: str, notes: list[str] | None = None
) -> BaseModel:
    """The network in eval mode, wrapped with its spec and the fingerprint of its weights."""
    model.eval()
    return BaseModel(
        model=model,
        spec=spec,
        model_id=model_id,
        fingerprint=state_dict_fingerprint(model),
        source=source,
        notes=list(notes or []),
    )
