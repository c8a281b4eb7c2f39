"""The Markdown of the core's reports as one self-contained HTML page.

Reports are written as Markdown (readable as text, rendered by code hosts); QGIS shows HTML
in its Results Viewer. This converts the small subset the reports use (headings, paragraphs,
pipe tables, bullet lists, images, inline code and bold) with the standard library only, and
embeds the images as data URIs so the page is one file that can be moved or mailed.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from .files import write_text_atomic

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 1em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; }
td.r, th.r { text-align: right; }
code { background: #f2f2f2; padding: 0 0.2em; }
img { max-width: 100%; }
"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<strong>\1</strong>", out)


def _image(alt: str, src: str, folder: Path | None) -> str:
    path = (folder / src) if folder is not None else Path(src)
    if folder is not None and path.is_file():
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:{kind};base64,{data}"
    else:
        src = html.escape(src)
    return f'<p><img src="{src}" alt="{html.escape(alt)}"></p>'


def _table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = cells(lines[0])
    rules = cells(lines[1]) if len(lines) > 1 else []
    right = [r.endswith(":") and not r.startswith(":") for r in rules]
    body = lines[2:] if rules and all(set(r) <= set(":-") for r in rules) else lines[1:]

    def row(values: list[str], tag: str) -> str:
        parts = []
        for i, v in enumerate(values):
            klass = ' class="r"' if i < len(right) and right[i] else ""
            parts.append(f"<{tag}{klass}>{_inline(v)}</{tag}>")
        return "<tr>" + "".join(parts) + "</tr>"

    rows = [row(header, "th")] + [row(cells(line), "td") for line in body]
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def markdown_to_html(text: str, title: str = "", folder: str | Path | None = None) -> str:
    """A full HTML page; images are read from ``folder`` (relative paths) and embedded."""
    base = Path(folder) if folder is not None else None
    blocks: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    table: list[str] = []

    def close() -> None:
        if paragraph:
            blocks.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            blocks.append(_table(table))
            table.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            close()
            continue
        if line.startswith("|"):
            if not table:
                close()
            table.append(line)
            continue
        if table:
            close()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        image = _IMAGE.match(line)
        if heading:
            close()
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            close()
            blocks.append(_image(image.group("alt"), image.group("src"), base))
        elif line.startswith(("- ", "* ")):
            if paragraph:
                close()
            items.append(line[2:])
        else:
            if items:
                close()
            paragraph.append(line)
    close()
    head = f"<title>{html.escape(title)}</title>" if title else ""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{head}<style>{_STYLE}</style>'
        "</head><body>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )


def write_html(markdown_path: str | Path, out: str | Path, title: str = "") -> Path:
    """Convert a Markdown report (images beside it) into one HTML file at ``out``."""
    markdown_path = Path(markdown_path)
    page = markdown_to_html(
        markdown_path.read_text(encoding="utf-8"), title, folder=markdown_path.parent
    )
    return write_text_atomic(out, page)


__all__ = ["markdown_to_html", "write_html"]
