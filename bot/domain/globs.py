"""Questions about ``fnmatch`` globs as a whole, not about one value: can two globs match a common string?

The policy's globs (``match.environment``, ``scopes``, ``audiences``) are ``fnmatch`` patterns matched with
``fnmatchcase``: ``*`` any run of characters, ``?`` one character, ``[seq]`` / ``[!seq]`` one character in / not
in ``seq`` (ranges ``a-z`` allowed). ``policy check`` asks whether an auto-approve rule and a ``require_approval``
rule can both match one scope or audience, which is whether their globs' languages intersect.
"""

from __future__ import annotations

from dataclasses import dataclass

_MAX_CHAR = 0x10FFFF


@dataclass(frozen=True)
class _Chars:
    """One character position: the characters in ``ranges`` (inclusive code points), or not in them."""

    negated: bool
    ranges: tuple[tuple[int, int], ...]

    def meets(self, other: _Chars) -> bool:
        """Some character is accepted by both."""
        if self.negated and other.negated:
            return True  # two finite exclusions leave most of Unicode
        if not self.negated and not other.negated:
            return any(lo <= hi2 and lo2 <= hi for lo, hi in self.ranges for lo2, hi2 in other.ranges)
        positive, negative = (other, self) if self.negated else (self, other)
        return any(_outside(lo, hi, negative.ranges) for lo, hi in positive.ranges)


def _outside(lo: int, hi: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    """Some code point in ``lo..hi`` is in none of ``ranges``."""
    point = lo
    for start, end in sorted(ranges):
        if end < point:
            continue
        if start > point:
            return point <= hi
        point = end + 1
        if point > hi:
            return False
    return point <= hi


_ANY = _Chars(True, ())
_STAR = None  # a token that is ``*``


def _tokens(pattern: str) -> list[_Chars | None]:
    """``pattern`` as positions: ``None`` for ``*``, else the characters one position accepts (as ``fnmatch``
    reads them: an unclosed ``[`` is a literal ``[``; ``]`` right after ``[`` or ``[!`` is a member)."""
    out: list[_Chars | None] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if out and out[-1] is _STAR:
                continue
            out.append(_STAR)
        elif ch == "?":
            out.append(_ANY)
        elif ch == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(_Chars(False, ((ord("["), ord("[")),)))
                continue
            body, i = pattern[i:j], j + 1
            negated = body.startswith("!")
            if negated:
                body = body[1:]
            ranges = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = ord(body[k]), ord(body[k + 2])
                    if lo <= hi:  # fnmatch drops a reversed range
                        ranges.append((lo, hi))
                    k += 3
                else:
                    ranges.append((ord(body[k]), ord(body[k])))
                    k += 1
            out.append(_Chars(negated, tuple(ranges)))
        else:
            out.append(_Chars(False, ((ord(ch), ord(ch)),)))
    return out


def overlap(first: str, second: str) -> bool:
    """True when some string matches both globs (``fnmatchcase`` semantics).

    A walk over pairs of positions (the product of the two patterns' automata): ``*`` may match nothing (step
    past it) or one more character (stay on it); other positions consume one character both accept.
    """
    a, b = _tokens(first), _tokens(second)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] is _STAR:
            todo.append((i + 1, j))
        if j < len(b) and b[j] is _STAR:
            todo.append((i, j + 1))
        if i < len(a) and j < len(b):
            x, y = a[i], b[j]
            if (x or _ANY).meets(y or _ANY):
                todo.append((i if x is _STAR else i + 1, j if y is _STAR else j + 1))
    return False


def is_glob(pattern: str) -> bool:
    """The pattern has a wildcard (``*``, ``?`` or ``[``), so it may match more than itself."""
    return any(ch in pattern for ch in "*?[")


def literal(text: str) -> str:
    """A glob matching exactly ``text`` (its wildcard characters bracketed)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)


def matches_everything(pattern: str) -> bool:
    """The glob matches every string (``*``, ``**``…)."""
    return bool(pattern) and set(pattern) == {"*"}


__all__ = ["is_glob", "literal", "matches_everything", "overlap"]
