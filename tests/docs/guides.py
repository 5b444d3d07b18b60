"""Reading the guides' fenced blocks and turning a guide into the script a reader would type.

Used by ``tests/docs/test_guides.py``; the rules for each kind of fence are
listed there.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

RUN = {"sh", "python"}  # run, in order
SKIP = {"console-noexec", "python-noexec", "text", ""}  # shown, never run
FILE_ONLY = {"python", "toml", "ini", "yaml", "sh"}  # with a title="PATH": written to PATH, not run
KNOWN = RUN | SKIP | FILE_ONLY

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    """One fenced block of a guide."""

    guide: Path
    line: int  # 1-based line of the opening fence
    lang: str
    title: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.guide.name}:{self.line}"

    @property
    def runs(self) -> bool:
        """Whether the guide test executes (or, with a title, writes) this block."""
        return self.lang in RUN or (bool(self.title) and self.lang in FILE_ONLY)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, indented ones (inside admonitions and tabs) included."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        lang = info.split()[0] if info else ""
        title_match = _TITLE.search(info)
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j >= len(lines):
            raise ValueError(f"{path.name}:{i + 1}: fence {fence} is never closed")
        out.append(Block(path, i + 1, lang, title_match["title"] if title_match else "", "\n".join(body) + "\n"))
        i = j + 1
    return out


def _heredoc(text: str, tag: str) -> str:
    if any(line.strip() == tag for line in text.splitlines()):
        raise ValueError(f"a block contains the heredoc tag {tag}")
    return f"<<'{tag}'\n{text}{tag}\n"


def script(guide: Path) -> str:
    """The guide as one bash script: its blocks in order, each announced on stderr (``@@block FILE:LINE TIME``)."""
    parts = ["set -euo pipefail\n"]
    for b in blocks(guide):
        if not b.runs:
            continue
        parts.append(f"echo \"@@block {b.where} $(date +%s.%N)\" >&2\n")
        if b.title:
            target = shlex.quote(b.title)
            parts.append(f"mkdir -p \"$(dirname {target})\"\ncat > {target} " + _heredoc(b.text, "__GUIDE_FILE__"))
        elif b.lang == "python":
            parts.append("python - " + _heredoc(b.text, "__GUIDE_PY__"))
        else:
            parts.append(b.text)
    parts.append("echo \"@@block end $(date +%s.%N)\" >&2\n")
    return "".join(parts)
