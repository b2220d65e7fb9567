"""What "Reload and Test" runs where the real data is absent (an installed extension): every
self-test body of both modules, on generated cases, headless against real MRML and the real worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from TCURFineTuneLib import testing as finetune_bodies
from TCURSegmenterLib import testing as segmenter_bodies

from TCURLoRACommon.testdata import decathlon_cases, self_test_data

# The bodies that train or segment for real take seconds each; the others check scene handling quickly.
SLOW_BODIES = {
    "test_finetune_end_to_end",
    "test_cancel_leaves_nothing",
    "test_resume_after_cancel",
    "test_segment_volumes_end_to_end",
}
BODIES = [
    pytest.param(body, marks=pytest.mark.slow) if body.__name__ in SLOW_BODIES else body
    for body in [*finetune_bodies.ALL_TESTS, *segmenter_bodies.ALL_TESTS]
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TCURLORA_DATA", raising=False)
        cache = tmp_path_factory.mktemp("cache")
        data = self_test_data("hippocampus", cache)
    assert data == cache / "generated-data", "without $TCURLORA_DATA the self-tests must use generated cases"
    cases, names = decathlon_cases(data)
    assert len(cases) == 5 and names == ["organ", "lesion"]
    return data


@pytest.mark.parametrize("body", BODIES, ids=lambda b: f"{b.__module__.split('.')[0]}.{b.__name__}")
def test_self_test_body_on_generated_cases(body, mrml, generated: Path, tmp_path: Path) -> None:
    body(generated, tmp_path / "work")
