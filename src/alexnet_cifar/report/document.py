"""A tiny document model: headings, paragraphs, lists, tables and figures, as Markdown and HTML.

Inline text may hold `code` and **bold**, the only markup both renderings share. The HTML is one
self-contained file: figures inlined as data URLs, CSS inline, no script.
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

from ..errors import ReportError

__all__ = ["Column", "Document", "code", "literal"]


@dataclass(frozen=True)
class Column:
    """A table column: its header, the cell it shows for an item, and whether it holds numbers
    (right-aligned)."""

    header: str
    cell: Callable[[Any], str]
    numeric: bool = False


# Markdown's punctuation that a backslash makes literal (CommonMark), and a code span.
_ESCAPABLE = r"\\`*_\[\]<>|#&!$"
_ESCAPED = re.compile(r"\\([" + _ESCAPABLE + r"])")
_CODE_SPAN = re.compile(r"(?<!\\)`([^`]*)`")


def literal(text: object) -> str:
    """Text from outside (a run folder's name, a config field) for a document: shown as it
    is in both renderings, never read as Markdown or HTML."""
    one_line = " ".join(str(text).split())
    return re.sub(r"([" + _ESCAPABLE + r"])", r"\\\1", one_line)


def code(text: object) -> str:
    """Text from outside as a code span (which Markdown shows verbatim: only a backtick could
    end it, so backticks become quotes)."""
    return "`" + " ".join(str(text).replace("`", "'").split()) + "`"


def _inline_html(text: str) -> str:
    """Escaped text with `code` and **bold** as HTML; backslash-escaped punctuation literal."""
    parts = []
    last = 0
    for m in _CODE_SPAN.finditer(text):
        parts.append(_text_html(text[last : m.start()]))
        parts.append(f"<code>{html.escape(m.group(1), quote=False)}</code>")
        last = m.end()
    parts.append(_text_html(text[last:]))
    return "".join(parts)


def _text_html(text: str) -> str:
    kept: list[str] = []

    def keep(m: re.Match) -> str:
        kept.append(m.group(1))
        return f"\x00{len(kept) - 1}\x00"

    t = html.escape(_ESCAPED.sub(keep, text), quote=False)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"\x00(\d+)\x00", lambda m: html.escape(kept[int(m.group(1))]), t)


@dataclass
class _Heading:
    level: int
    text: str

    def markdown(self) -> str:
        return "#" * self.level + " " + self.text

    def html(self, folder: Path) -> str:
        return f"<h{self.level}>{_inline_html(self.text)}</h{self.level}>"


@dataclass
class _Paragraph:
    text: str

    def markdown(self) -> str:
        return self.text

    def html(self, folder: Path) -> str:
        return f"<p>{_inline_html(self.text)}</p>"


@dataclass
class _Bullets:
    items: list[str]

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self, folder: Path) -> str:
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in self.items) + "</ul>"


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

    def html(self, folder: Path) -> str:
        return (
            '<div class="table"><table><thead>'
            + self._html_row(self.header, "th")
            + "</thead><tbody>"
            + "".join(self._html_row(r, "td") for r in self.rows)
            + "</tbody></table></div>"
        )

    def _html_row(self, cells: list[str], tag: str) -> str:
        return (
            "<tr>"
            + "".join(
                f'<{tag} class="num">{_inline_html(c)}</{tag}>'
                if numeric
                else f"<{tag}>{_inline_html(c)}</{tag}>"
                for c, numeric in zip(cells, self.numeric)
            )
            + "</tr>"
        )


@dataclass
class _Figure:
    file: str  # a PNG file beside the document
    alt: str
    caption: str | None

    def markdown(self) -> str:
        alt = literal(self.alt)
        return f"![{alt}]({self.file})" + (f"\n\n*{self.caption}*" if self.caption else "")

    def html(self, folder: Path) -> str:
        data = (folder / self.file).read_bytes()
        width, height = png_size(data)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        caption = f"<figcaption>{_inline_html(self.caption)}</figcaption>" if self.caption else ""
        return (
            f'<figure><img src="{src}" alt="{html.escape(self.alt)}" width="{width}" '
            f'height="{height}">{caption}</figure>'
        )


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
        """The page, with the figures read from ``folder`` and inlined."""
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="icon" href="data:,">\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(b.html(folder) for b in self.blocks)
            + "\n</main>\n</body>\n</html>\n"
        )


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
.num{text-align:right}
td.num{white-space:nowrap}
figure{margin:1.2em 0}
img{max-width:100%;height:auto;display:block}
figcaption{color:#59636e;font-size:.92em;margin-top:.3em}
"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG file's bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ReportError("a figure is not a PNG file")
    return struct.unpack(">II", data[16:24])
