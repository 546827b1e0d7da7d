"""A tiny document model: headings, paragraphs, lists, tables and figures, as Markdown and HTML.

The document is written as Markdown (GitHub shows it, figures as PNG files beside it); the HTML
page is that Markdown rendered by python-markdown with its tables and fenced-code extensions, in
one self-contained file: figures inlined as data URLs, CSS inline, no script.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown

from ..errors import ReportError

__all__ = ["Column", "Document", "code", "literal"]

@dataclass(frozen=True)
class Column:
    """A table column: its header, the cell it shows for an item, and whether it holds numbers
    (right-aligned)."""

    header: str
    cell: Callable[[Any], str]
    numeric: bool = False


# Markdown's punctuation that a backslash makes literal (in CommonMark and in python-markdown
# with its tables extension); "<", ">", "&" and "$" (GitHub's math) become character
# references, which both render as the character.
_BACKSLASHED = r"\\`*_\[\]#!|"
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "$": "&#36;"}


def literal(text: object) -> str:
    """Text from outside (a run folder's name, a config field) for a document: shown as it
    is in both renderings, never read as Markdown or HTML."""
    one_line = " ".join(str(text).split())
    escaped = re.sub(r"([" + _BACKSLASHED + r"])", r"\\\1", one_line)
    return "".join(_ENTITIES.get(ch, ch) for ch in escaped)


def code(text: object) -> str:
    """Text from outside as a code span (which Markdown shows verbatim: only a backtick could
    end it, so backticks become quotes)."""
    return "`" + " ".join(str(text).replace("`", "'").split()) + "`"

@dataclass
class _Heading:
    level: int
    text: str

    def markdown(self) -> str:
        return "#" * self.level + " " + self.text


@dataclass
class _Paragraph:
    text: str

    def markdown(self) -> str:
        return self.text


@dataclass
class _Bullets:
    items: list[str]

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # per column: right-aligned

    def markdown(self) -> str:
        align = "|" + "|".join("---:" if n else "---" for n in self.numeric) + "|"
        lines = [self._markdown_row(self.header), align]
        return "\n".join(lines + [self._markdown_row(r) for r in self.rows])

    @staticmethod
    def _markdown_row(cells: list[str]) -> str:
        return "| " + " | ".join(re.sub(r"(?<!\\)\|", r"\\|", c) for c in cells) + " |"


@dataclass
class _Figure:
    file: str  # a PNG file beside the document
    alt: str
    caption: str | None

    def markdown(self) -> str:
        alt = literal(self.alt)
        return f"![{alt}]({self.file})" + (f"\n\n*{self.caption}*" if self.caption else "")


class Document:
    """Headings, paragraphs, bulleted lists, tables and figures, in the order they are added,
    rendered as Markdown (:meth:`markdown`) and as one self-contained HTML page (:meth:`html`)."""

    def __init__(self):
        self.blocks: list[_Heading | _Paragraph | _Bullets | _Table | _Figure] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(_Heading(level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(_Paragraph(text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(_Bullets(items))

    def table(self, columns: Sequence[Column], items: Sequence[Any]) -> None:
        """One row per item, its cells made by the columns."""
        header = [c.header for c in columns]
        rows = [[c.cell(item) for c in columns] for item in items]
        self.blocks.append(_Table(header, rows, [c.numeric for c in columns]))

    def figure(self, file: str, alt: str, caption: str | None = None) -> None:
        """The PNG ``file`` (beside the document) with its alt text and an optional caption."""
        self.blocks.append(_Figure(file, alt, caption))

    def markdown(self) -> str:
        return "\n\n".join(b.markdown() for b in self.blocks) + "\n"

    def html(self, folder: Path, title: str) -> str:
        """The page: the Markdown rendered by python-markdown (tables, fenced code), with the
        figures read from ``folder`` and inlined."""
        body = markdown.markdown(self.markdown(), extensions=["tables", "fenced_code"])
        figures = {b.file for b in self.blocks if isinstance(b, _Figure)}
        body = _IMG_SRC.sub(lambda m: _inlined(m, folder, figures), body)
        body = body.replace("<table>", '<div class="table"><table>')
        body = body.replace("</table>", "</table></div>")
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="icon" href="data:,">\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + body
            + "\n</main>\n</body>\n</html>\n"
        )


_IMG_SRC = re.compile(r'<img ([^>]*?)src="([^"]*)"')


def _inlined(m: re.Match, folder: Path, figures: set[str]) -> str:
    """An <img> of one of the document's figures, its PNG inlined as a data URL with its size."""
    name = html.unescape(m.group(2))
    if name not in figures:
        raise ReportError(f"the report links {name!r}, which is not one of its figures")
    data = (folder / name).read_bytes()
    width, height = png_size(data)
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img {m.group(1)}width="{width}" height="{height}" src="{src}"'


CSS = """
body{margin:0;background:#fff;color:#1f2328;font:15px/1.5 -apple-system,"Segoe UI",
Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.4em;border-bottom:1px solid #d0d7de;padding-bottom:.25em;margin-top:1.8em}
code{font:0.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;
padding:.1em .3em;border-radius:4px}
.table{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tbody tr:nth-child(even){background:#fafbfc}
td[style*="right"]{white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:1.2em 0 .3em}
p>em:only-child{color:#59636e;font-size:.92em}
"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG file's bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ReportError("a figure is not a PNG file")
    return struct.unpack(">II", data[16:24])
