"""The reports' Markdown as one self-contained HTML page."""

from __future__ import annotations

import base64

from cropmodels.html import markdown_to_html, write_html

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def test_headings_tables_lists_and_inline_markup():
    page = markdown_to_html(
        "# Report\n\nSome `code` and **bold** <b>escaped</b>\ntext.\n\n"
        "| class | F |\n|:---|---:|\n| Maize | 81.0 |\n\n- one\n- two\n",
        title="T",
    )
    assert "<title>T</title>" in page
    assert "<h1>Report</h1>" in page
    assert (
        "<p>Some <code>code</code> and <strong>bold</strong> &lt;b&gt;escaped&lt;/b&gt; text.</p>"
        in page
    )
    assert '<tr><th>class</th><th class="r">F</th></tr>' in page
    assert '<tr><td>Maize</td><td class="r">81.0</td></tr>' in page
    assert "<ul><li>one</li><li>two</li></ul>" in page


def test_images_are_embedded(tmp_path):
    (tmp_path / "cm.png").write_bytes(PNG)
    md = tmp_path / "r.md"
    md.write_text("## Figure\n\n![confusion](cm.png)\n\n![missing](nope.png)\n", encoding="utf-8")
    page = write_html(md, tmp_path / "r.html").read_text(encoding="utf-8")
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    assert 'src="nope.png"' in page  # a missing image stays a link
