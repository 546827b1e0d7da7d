"""A tiny document model: headings, paragraphs, lists, tables and figures, as Markdown and HTML.

The HTML is one self-contained file: figures inlined as data URLs, CSS inline, no script.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from pathlib import Path

from ..errors import ReportError


class Document:
    """Headings, paragraphs, lists, tables and figures, rendered as Markdown and as HTML.

    Inline text may hold `code` and **bold**, the only markup both renderings share.
    """

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], numeric: list[bool]):
        self.blocks.append(("table", header, rows, numeric))

    def img(self, file: str, alt: str, caption: str | None = None):
        self.blocks.append(("img", file, alt, caption))

    # Markdown -------------------------------------------------------------------------
    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append("#" * b[1] + " " + b[2])
            elif kind == "p":
                out.append(b[1])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in b[1]))
            elif kind == "table":
                _, header, rows, numeric = b
                align = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
                lines = [self._md_row(header), align] + [self._md_row(r) for r in rows]
                out.append("\n".join(lines))
            elif kind == "img":
                _, file, alt, caption = b
                out.append(f"![{alt}]({file})" + (f"\n\n*{caption}*" if caption else ""))
        return "\n\n".join(out) + "\n"

    @staticmethod
    def _md_row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    # HTML -----------------------------------------------------------------------------
    def _html_row(self, cells: list[str], numeric: list[bool], tag: str) -> str:
        return (
            "<tr>"
            + "".join(
                f'<{tag} class="num">{self._inline(c)}</{tag}>'
                if n
                else f"<{tag}>{self._inline(c)}</{tag}>"
                for c, n in zip(cells, numeric)
            )
            + "</tr>"
        )

    @staticmethod
    def _inline(text: str) -> str:
        t = html.escape(text, quote=False)
        t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
        return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)

    def html(self, folder: Path, title: str) -> str:
        body: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                body.append(f"<h{b[1]}>{self._inline(b[2])}</h{b[1]}>")
            elif kind == "p":
                body.append(f"<p>{self._inline(b[1])}</p>")
            elif kind == "ul":
                items = "".join(f"<li>{self._inline(i)}</li>" for i in b[1])
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                _, header, rows, numeric = b
                body.append(
                    '<div class="table"><table><thead>'
                    + self._html_row(header, numeric, "th")
                    + "</thead><tbody>"
                    + "".join(self._html_row(r, numeric, "td") for r in rows)
                    + "</tbody></table></div>"
                )
            elif kind == "img":
                _, file, alt, caption = b
                data = (folder / file).read_bytes()
                w, h = _png_size(data)
                src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                cap = f"<figcaption>{self._inline(caption)}</figcaption>" if caption else ""
                body.append(
                    f'<figure><img src="{src}" alt="{html.escape(alt)}" width="{w}" '
                    f'height="{h}">{cap}</figure>'
                )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="icon" href="data:,">\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body)
            + "\n</main>\n</body>\n</html>\n"
        )


_CSS = """
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


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ReportError("a figure is not a PNG file")
    return struct.unpack(">II", data[16:24])
