"""The one way a benchmark reports: print its markdown table and, when asked, write it to a file."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: str | None) -> str:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text
