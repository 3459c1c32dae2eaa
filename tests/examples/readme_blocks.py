"""The fenced code blocks of README.md, and which of them are fragments.

Every fence names its language. A ``python`` or ``bash`` block is run by the tests unless the line just
before its fence is a fragment marker, an HTML comment that renders as nothing but is read in the source::

    <!-- fragment: the synopsis of each command, with [optional] arguments -->
    ```bash

A marker must say why and must stand right before a fence; anything else is an error, so no block is
skipped without a reason written next to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
RUN_LANGUAGES = ("python", "bash")
FENCE = re.compile(r"^```(?P<language>[A-Za-z0-9_+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*fragment:\s*(?P<reason>.*?)\s*-->\s*$")
ANY_MARKER = re.compile(r"^<!--\s*fragment\b")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    fragment: str | None  # the reason, for a block marked as a fragment

    @property
    def id(self) -> str:
        return f"{self.language}-line{self.line}"


class ReadmeError(AssertionError):
    """The README's blocks break the rules above (the message names the line)."""


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path``, in order; raises ReadmeError for an untagged fence or a stray marker."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if ANY_MARKER.match(line) and not _marks_fence(lines, index):
            raise ReadmeError(f"{path.name}:{index + 1}: a fragment marker must be '<!-- fragment: WHY -->' "
                              "on the line right before a fence")
        fence = FENCE.match(line)
        if fence is None:
            index += 1
            continue
        if not fence.group("language"):
            raise ReadmeError(f"{path.name}:{index + 1}: a fence without a language (write ```text for output "
                              "or ```bash with a fragment marker)")
        end = _closing(lines, index, path)
        marker = MARKER.match(lines[index - 1]) if index > 0 else None
        found.append(Block(index + 1, fence.group("language"), "\n".join(lines[index + 1:end]) + "\n",
                           marker.group("reason") if marker else None))
        index = end + 1
    return found


def _marks_fence(lines: list[str], index: int) -> bool:
    marker = MARKER.match(lines[index])
    return bool(marker and marker.group("reason") and index + 1 < len(lines)
                and FENCE.match(lines[index + 1]) and FENCE.match(lines[index + 1]).group("language"))  # type: ignore[union-attr]


def _closing(lines: list[str], start: int, path: Path) -> int:
    for index in range(start + 1, len(lines)):
        if lines[index].strip() == "```":
            return index
    raise ReadmeError(f"{path.name}:{start + 1}: the fence is never closed")


def runnable(all_blocks: list[Block]) -> list[Block]:
    return [block for block in all_blocks if block.language in RUN_LANGUAGES and block.fragment is None]


def fragments(all_blocks: list[Block]) -> list[Block]:
    return [block for block in all_blocks if block.language in RUN_LANGUAGES and block.fragment is not None]
