"""Module-name patterns: the same answers as Python's re.fullmatch on real networks' module names, in
time linear in the name whatever the pattern (an adapter config can come from anyone)."""

from __future__ import annotations

import re
import signal
import time

import pytest
from adapter_testing import small_swin, small_unetr
from monai.networks.nets import SegResNet, UNet

from tcurlora.adapters.config import CONV_TARGETS, DEFAULT_DECODER_MODULES, DEFAULT_TARGETS
from tcurlora.adapters.methods.baselines import CNN_DECODERS
from tcurlora.namepatterns import PatternError, check_pattern_list, compile_pattern, full_match

PATTERNS = (
    DEFAULT_TARGETS
    + DEFAULT_DECODER_MODULES
    + CONV_TARGETS
    + CNN_DECODERS["SegResNet"]
    + [
        r"decoder\d+",
        r".+",
        r"encoder1|decoder2",
        r"(?=.*conv).*\.\w+\b",
        r"^vit\.\B.*$",
        r"a{2,3}",
        r"[^a-c0-9]*",
        r"\W+",
        r".*?conv",
        r"(a|b)*c?",
        r"(?:x|)+",
        r"\s?\S+",
        r"[\d_a-z]+\.\d+",
        r"(?!.*norm).*\.conv",
        r"^(?=vit)(?!.*norm)(?=(?=v).*)vit.*",
        r"(?x) decoder \d",
        r"model\.\d+(\.submodule\.\d+){2,}.*",
        r"\Aup_\w+\Z",
    ]
)


@pytest.fixture(scope="module")
def names() -> list[str]:
    found: set[str] = {"", "a", "aaab", "x\n", "é1", "a_b.c"}
    for model in (
        small_unetr(),
        small_swin(),
        UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=2),
        SegResNet(),
    ):
        found |= {name for name, _ in model.named_modules()}
    return sorted(found)


def test_same_answers_as_re_on_real_module_names(names):
    differences = [(p, n) for p in PATTERNS for n in names if bool(re.fullmatch(p, n)) != full_match(p, n)]
    assert differences == []
    assert sum(full_match(DEFAULT_TARGETS[0], n) for n in names) == 48  # 12 blocks x qkv, out_proj, 2 mlp


def test_no_pattern_can_hang():
    def expire(signum, frame):
        raise TimeoutError("a pattern took more than 10 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        started = time.monotonic()
        for pattern in [
            "(.|.)*(.|.)*Z",
            "(a+)+$",
            "(a|aa)*b",
            ".*.*.*.*.*.*.*.*Z",
            "(x+x+)+y",
            "(?=(a*)*b)a*",
        ]:
            assert not full_match(pattern, "a" * 3000 + "!"), pattern
        assert full_match("(.|.)*(.|.)*Z", "x" * 3000 + "Z")
        assert time.monotonic() - started < 10
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"(a)\1", "uses a backreference"),
        (r"(?<=a)b", "uses a lookbehind"),
        (r"(?<!a)b", "uses a lookbehind"),
        (r"(?i)vit", "inline flags"),
        (r"(?i:vit)", "inline flags"),
        (r"(?>a)", "uses an atomic group"),
        (r"a*+", "uses a possessive repeat"),
        (r"(a)?(?(1)b|c)", "uses a conditional group"),
        ("(a{100}){100}", "more than 1000 states"),
        ("(?=a{600})(?=a{600})", "more than 1000 states"),  # lookahead programs count too
        ("(?:.(?=.*Z))*", "a lookahead is supported only at the start"),  # else quadratic in the name
        ("(?:){4294967}", "a repeat count above 1000"),
        ("a" * 501, "501 characters, more than 500"),
        ("(", "invalid regular expression"),
    ],
)
def test_what_a_linear_matcher_cannot_do_is_refused(pattern, problem):
    with pytest.raises(PatternError, match=re.escape(problem)):
        compile_pattern(pattern)


def test_a_list_costlier_than_the_bound_is_refused_and_the_costliest_allowed_is_quick():
    check_pattern_list(["(?:.?){127}X"])  # 128 positions: the most one list may have
    with pytest.raises(
        PatternError, match="129 character positions once repeats are unrolled, more than 128"
    ):
        check_pattern_list(["(?:.?){127}X", "a"])
    with pytest.raises(PatternError, match="101 patterns, more than 100"):
        check_pattern_list([f"layer{i}" for i in range(101)])
    names = [name for name, _ in small_unetr().named_modules()]
    started = time.process_time()
    assert not any(full_match(r"\b(?:.?){126}X", name) for name in names)  # nearly the costliest list allowed
    assert time.process_time() - started < 5  # under 1 s here
