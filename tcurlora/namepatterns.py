"""Module-name patterns (`target_modules`, `train_modules`, ...) matched in time linear in the name.

An adapter config can come from anyone (adapters are exported and imported), and Python's backtracking
`re` needs hours for patterns like "(.|.)*(.|.)*Z". The patterns keep Python's regex syntax, but are
matched by a small Thompson-NFA simulation (every state advanced once per character): no pattern can
hang. What such a matcher cannot do (backreferences, lookbehind, atomic groups, possessive repeats,
inline flags) or only in quadratic time (a lookahead other than at the start) is refused when the
pattern is read, as are patterns over `MAX_PATTERN_CHARS` characters
or `MAX_STATES` states once counted repeats are unrolled ("a{1000}"), and lists whose matching would
cost more than `MAX_LIST_POSITIONS` steps per character of a name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

try:  # Python 3.11+
    from re import _constants as _sre  # type: ignore[attr-defined]
    from re import _parser as _parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _parse  # type: ignore[no-redef]

MAX_PATTERN_CHARS = 500
MAX_STATES = 1000  # NFA instructions of one pattern, lookaheads included
MAX_REPEAT = 1000  # largest count in {m,n}
MAX_PATTERNS = 100  # per list: target_modules, train_modules, ...
# Character positions (NFA states that read a character) summed over one list: the work of matching a
# name is at most this times its length (the defaults need 94; "(?:.?){127}X" is the costliest list allowed).
MAX_LIST_POSITIONS = 128

_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    _sre.CATEGORY_DIGIT: str.isdecimal,
    _sre.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
    _sre.CATEGORY_SPACE: str.isspace,
    _sre.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    _sre.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    _sre.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}
_UNSUPPORTED = {
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
    "ATOMIC_GROUP": "an atomic group",
    "POSSESSIVE_REPEAT": "a possessive repeat",
}


class PatternError(ValueError):
    """A module-name pattern this matcher refuses (the message says why)."""


def _positions(program: tuple) -> int:
    """The program's character-reading states, its lookaheads' included: its cost per character."""
    return sum(1 if op[0] == "char" else _positions(op[2]) if op[0] == "look" else 0 for op in program)


def check_pattern_list(patterns: list[str]) -> None:
    """PatternError unless every pattern compiles and the list's matching cost is within bounds."""
    if len(patterns) > MAX_PATTERNS:
        raise PatternError(f"{len(patterns)} patterns, more than {MAX_PATTERNS}")
    total = sum(_positions(compile_pattern(pattern)) for pattern in patterns)
    if total > MAX_LIST_POSITIONS:
        raise PatternError(
            f"the patterns have {total} character positions once repeats are unrolled, more than "
            f"{MAX_LIST_POSITIONS} (write plain module names, or fewer and shorter patterns)"
        )


def _is_word(text: str, pos: int) -> bool:
    return 0 <= pos < len(text) and (text[pos].isalnum() or text[pos] == "_")


def _char_set(items: list) -> Callable[[str], bool]:
    """The predicate of a `[...]` class (sre parser items: LITERAL, RANGE, CATEGORY, NEGATE)."""
    negate, tests = False, []
    for op, av in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            tests.append(chr(av).__eq__)
        elif op is _sre.RANGE:
            tests.append(lambda c, lo=av[0], hi=av[1]: lo <= ord(c) <= hi)
        elif op is _sre.CATEGORY and av in _CATEGORIES:
            tests.append(_CATEGORIES[av])
        else:
            raise PatternError(f"unsupported character class item {op}")
    return lambda c: any(t(c) for t in tests) != negate


class _Compiler:
    """Parsed regex -> NFA program: ("char", pred), ("split", a, b), ("jmp", a), ("at", kind),
    ("look", negate, program), ("match",)."""

    def __init__(self, budget: list[int]) -> None:
        self.code: list[list[Any]] = []
        self.budget = budget  # states left for the whole pattern, lookahead programs included

    def emit(self, *instruction: Any) -> int:
        if self.budget[0] <= 0:
            raise PatternError(f"the pattern unrolls to more than {MAX_STATES} states")
        self.budget[0] -= 1
        self.code.append(list(instruction))
        return len(self.code) - 1

    def sequence(self, items: Any) -> None:
        for op, av in items:
            self.item(op, av)

    def item(self, op: Any, av: Any) -> None:
        name = str(op)
        if name in _UNSUPPORTED:
            raise PatternError(f"uses {_UNSUPPORTED[name]}, which module-name patterns do not support")
        if op is _sre.LITERAL:
            self.emit("char", chr(av).__eq__)
        elif op is _sre.NOT_LITERAL:
            self.emit("char", chr(av).__ne__)
        elif op is _sre.ANY:
            self.emit("char", lambda c: c != "\n")
        elif op is _sre.IN:
            self.emit("char", _char_set(av))
        elif op is _sre.SUBPATTERN:
            if av[1] or av[2]:
                raise PatternError("inline flags such as (?i:...) are not supported in module-name patterns")
            self.sequence(av[3])
        elif op is _sre.BRANCH:
            self.branch(av[1])
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            self.repeat(*av)
        elif op is _sre.AT:
            self.emit("at", av)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            if av[0] != 1:
                raise PatternError("uses a lookbehind, which module-name patterns do not support")
            raise PatternError(
                "a lookahead is supported only at the start of a pattern (there it is checked once per name)"
            )
        else:
            raise PatternError(f"uses {name}, which module-name patterns do not support")

    def branch(self, alternatives: list) -> None:
        jumps = []
        for index, alternative in enumerate(alternatives):
            if index < len(alternatives) - 1:
                split = self.emit("split", len(self.code) + 1, None)
                self.sequence(alternative)
                jumps.append(self.emit("jmp", None))
                self.code[split][2] = len(self.code)
            else:
                self.sequence(alternative)
        for jump in jumps:
            self.code[jump][1] = len(self.code)

    def repeat(self, low: int, high: int, body: Any) -> None:
        if low > MAX_REPEAT or (high != _sre.MAXREPEAT and high > MAX_REPEAT):
            raise PatternError(f"a repeat count above {MAX_REPEAT}")
        for _ in range(low):
            self.sequence(body)
        if high == _sre.MAXREPEAT:
            loop = self.emit("split", len(self.code) + 1, None)
            self.sequence(body)
            self.emit("jmp", loop)
            self.code[loop][2] = len(self.code)
            return
        exits = []
        for _ in range(high - low):
            exits.append(self.emit("split", len(self.code) + 1, None))
            self.sequence(body)
        for split in exits:
            self.code[split][2] = len(self.code)


def _program(items: Any, budget: list[int]) -> tuple[tuple[Any, ...], ...]:
    """Leading lookaheads (and anchors) run at one position per run of this program; anywhere else a
    lookahead would run at every position, each time to the end of the name: quadratic work."""
    compiler = _Compiler(budget)
    items = list(items)
    lead = 0
    while lead < len(items) and items[lead][0] in (_sre.ASSERT, _sre.ASSERT_NOT, _sre.AT):
        op, av = items[lead]
        if op is _sre.AT:
            compiler.emit("at", av)
        elif av[0] != 1:
            raise PatternError("uses a lookbehind, which module-name patterns do not support")
        else:
            compiler.emit("look", op is _sre.ASSERT_NOT, _program(av[1], budget))
        lead += 1
    compiler.sequence(items[lead:])
    compiler.emit("match")
    return tuple(tuple(instruction) for instruction in compiler.code)


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> tuple[tuple[Any, ...], ...]:
    """The NFA program of `pattern`; PatternError when it is too long, invalid or uses what a linear-time
    matcher cannot do."""
    if not isinstance(pattern, str):
        raise PatternError(f"expected a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"the pattern has {len(pattern)} characters, more than {MAX_PATTERN_CHARS}")
    try:
        parsed = _parse.parse(pattern)
    except Exception as error:  # noqa: BLE001 - re.error, RecursionError, OverflowError
        raise PatternError(f"invalid regular expression: {error}") from None
    if parsed.state.flags & ~(_sre.SRE_FLAG_UNICODE | _sre.SRE_FLAG_VERBOSE):
        raise PatternError("inline flags such as (?i) are not supported in module-name patterns")
    return _program(parsed, [MAX_STATES])


def _at(kind: Any, text: str, pos: int) -> bool:
    if kind in (_sre.AT_BEGINNING, _sre.AT_BEGINNING_STRING):
        return pos == 0
    if kind is _sre.AT_END:
        return pos == len(text) or (pos == len(text) - 1 and text[pos] == "\n")
    if kind is _sre.AT_END_STRING:
        return pos == len(text)
    if kind is _sre.AT_BOUNDARY:
        return _is_word(text, pos - 1) != _is_word(text, pos)
    if kind is _sre.AT_NON_BOUNDARY:
        return bool(text) and _is_word(text, pos - 1) == _is_word(text, pos)
    return False  # MULTILINE / LOCALE anchors cannot be parsed without the flags refused above


def _run(program: tuple, text: str, start: int, whole: bool, memo: dict) -> bool:
    """Does `program` match text[start:] (to its end when `whole`, else any prefix)? Each state is
    visited at most once per position, so the cost is O(len(text) x len(program))."""
    matched = False

    def close(states: list[int], pc: int, pos: int, seen: set[int]) -> None:
        nonlocal matched
        stack = [pc]
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = program[pc]
            kind = op[0]
            if kind == "char":
                states.append(pc)
            elif kind == "jmp":
                stack.append(op[1])
            elif kind == "split":
                stack.extend((op[2], op[1]))
            elif kind == "at":
                if _at(op[1], text, pos):
                    stack.append(pc + 1)
            elif kind == "look":
                key = (id(op[2]), pos)
                if key not in memo:
                    memo[key] = _run(op[2], text, pos, False, memo)
                if memo[key] != op[1]:
                    stack.append(pc + 1)
            elif whole is False or pos == len(text):  # "match"
                matched = True

    states: list[int] = []
    close(states, 0, start, set())
    for pos in range(start, len(text)):
        if matched and not whole:
            return True
        following: list[int] = []
        seen: set[int] = set()
        char = text[pos]
        for pc in states:
            if program[pc][1](char):
                close(following, pc + 1, pos + 1, seen)
        states = following
        if not states and not matched:
            return False
    return matched


@lru_cache(maxsize=65536)
def full_match(pattern: str, name: str) -> bool:
    """True when `pattern` matches the whole of `name` (as `re.fullmatch`, in linear time)."""
    return _run(compile_pattern(pattern), name, 0, True, {})


def full_match_any(patterns: list[str], name: str) -> bool:
    """True when `name` full-matches one of `patterns`."""
    return any(full_match(pattern, name) for pattern in patterns)
