"""A small Markdown-to-reStructuredText converter for the benchmark READMEs.

It covers what ``bench/README*.md`` use: ATX headings, paragraphs, pipe tables, fenced code,
bullet and numbered lists, inline code, bold/italic and links. No dependency (the docs do not
need ``myst-parser``); anything it does not understand is kept as escaped text.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["markdown_to_rst", "benchmark_include"]

_HEADING_CHARS = ["-", "~", "^", '"', "'"]
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")
_INLINE = re.compile(
    r"(?P<code>`+)(?P<codetext>.+?)(?P=code)"
    r"|!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)"
    r"|\[(?P<text>[^\]]+)\]\((?P<url>[^)\s]+)\)"
    r"|\*\*(?P<bold>[^*]+?)\*\*"
    r"|(?<![\w*])\*(?P<em>[^*\s][^*]*?)\*(?![\w*])"
    r"|(?<!\w)_(?P<em2>[^_\s][^_]*?)_(?!\w)"
)


def _escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|").replace("`", "\\`")
    text = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", text)  # 'word_' would be a reference
    return re.sub(r"(?<!\w)_(?=\w)", r"\\_", text)  # '_word' could start a target


def _inline(text: str) -> str:
    out, pos = [], 0
    for match in _INLINE.finditer(text):
        out.append(_escape(text[pos : match.start()]))
        piece = ""
        if match.group("code"):
            code = match.group("codetext").strip().replace("`", "")
            piece = f":code:`{code}`" if code else ""
        elif match.group("src") is not None:
            out.append(_escape(match.group("alt")))
        elif match.group("url") is not None:
            label = _escape(match.group("text")).replace("<", "\\<")
            url = match.group("url")
            if url.startswith(("http://", "https://")):
                piece = f"`{label} <{url}>`__"
            else:
                out.append(label)  # a relative link to a file that is not part of the docs
        elif match.group("bold") is not None:
            piece = f"**{_escape(match.group('bold').strip())}**"
        else:
            em = match.group("em") if match.group("em") is not None else match.group("em2")
            piece = f"*{_escape(em.strip())}*"
        if piece:
            # inline markup must be delimited by whitespace or punctuation: glue it with '\ '
            before = "".join(out)[-1:]
            if before and (before.isalnum() or before in "_"):
                piece = "\\ " + piece
            after = text[match.end() : match.end() + 1]
            if after and (after.isalnum() or after in "_"):
                piece += "\\ "
            out.append(piece)
        pos = match.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row.removeprefix("|").removesuffix("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)]


def _table(rows: list[str]) -> list[str]:
    header = _cells(rows[0])
    body = [_cells(r) for r in rows[2:]]
    width = len(header)
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for cells in [header, *body]:
        cells = (cells + [""] * width)[:width]
        for i, cell in enumerate(cells):
            lines.append(("   * - " if i == 0 else "     - ") + _inline(cell))
    return [*lines, ""]


def markdown_to_rst(text: str, top_level: int = 1, drop_title: bool = False) -> str:
    """Convert Markdown to reStructuredText.

    Args:
        text: the Markdown source.
        top_level: the heading level (0 = ``-``, 1 = ``~``, ...) that the shallowest Markdown
            heading maps to; deeper headings follow, never skipping a level.
        drop_title: drop the first heading if it is the first line (the page has a title).

    Returns:
        reStructuredText.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    text = re.sub(r"<!--.*?-->", "", "\n".join(lines), flags=re.S)
    lines = text.split("\n")
    if drop_title:
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is not None and re.match(r"^#\s", lines[first]):
            lines = lines[first + 1 :]
    levels = sorted({len(m.group(1)) for line in lines if (m := re.match(r"^(#{1,6})\s", line))})
    out: list[str] = []
    # a paragraph or list item being collected: (prefix, raw text, kind); inline markup may span
    # line breaks in Markdown, so it is converted once the whole block is known
    pending: list | None = None
    last_kind = ""

    def flush() -> None:
        nonlocal pending, last_kind
        if pending is not None:
            prefix, raw, kind = pending
            out.append(prefix + _inline(raw))
            last_kind = kind
            pending = None

    prev_level = top_level - 1
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        fence = re.match(r"^\s*(```|~~~)\s*([\w+-]*)", line)
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        is_table = "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1])
        item = _LIST_ITEM.match(line)
        if fence or heading or is_table or item or not stripped or re.match(r"^\s*<[^>]+>\s*$", line):
            flush()
        if fence:
            language = fence.group(2) or "text"
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                body.append(lines[i])
                i += 1
            i += 1
            out += ["", f".. code-block:: {language}", ""]
            out += [f"   {b}" if b.strip() else "" for b in body] or ["   "]
            out.append("")
            last_kind = "block"
            continue
        if heading:
            level = top_level + levels.index(len(heading.group(1)))
            level = min(level, prev_level + 1, len(_HEADING_CHARS) - 1)
            prev_level = level
            title = _inline(heading.group(2))
            out += ["", title, _HEADING_CHARS[level] * max(len(title), 4), ""]
            last_kind = "block"
            i += 1
            continue
        if is_table:
            rows = [line, lines[i + 1]]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(lines[i])
                i += 1
            out += ["", *_table(rows)]
            last_kind = "block"
            continue
        if item:
            if out and out[-1].strip() and last_kind != "item":
                out.append("")
            indent = "  " * (len(item.group(1)) // 2)
            bullet = "-" if item.group(2) in "-*+" else "#."
            pending = [f"{indent}{bullet} ", item.group(3), "item"]
            i += 1
            continue
        if not stripped:
            out.append("")
            last_kind = ""
            i += 1
            continue
        if re.match(r"^\s*<[^>]+>\s*$", line):  # raw HTML line
            i += 1
            continue
        if pending is not None and (pending[2] == "para" or line.startswith(" ")):
            pending[1] += " " + stripped  # the block goes on
        else:
            flush()
            if last_kind == "item":
                out.append("")  # a paragraph right after a list
            pending = ["", stripped, "para"]
        i += 1
    flush()
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def benchmark_include(bench_dir: str | Path) -> str:
    """reStructuredText of the benchmark results in ``bench_dir``.

    ``bench/README.md`` when it exists (the merged tables), otherwise every
    ``bench/README_*.md`` as its own section, otherwise a note that nothing is measured yet.

    Args:
        bench_dir: the repository's ``bench`` folder.

    Returns:
        reStructuredText to include under a page title.
    """
    bench_dir = Path(bench_dir)
    main = bench_dir / "README.md"
    if main.is_file():
        return markdown_to_rst(main.read_text(encoding="utf-8"), top_level=0, drop_title=True)
    parts = sorted(bench_dir.glob("README_*.md"))
    if not parts:
        return ".. note::\n\n   No benchmark results are recorded yet (``bench/README.md``).\n"
    chunks = []
    for path in parts:
        text = path.read_text(encoding="utf-8")
        match = re.search(r"^#\s+(.*)$", text, flags=re.M)
        title = _inline(match.group(1).strip()) if match else path.stem.removeprefix("README_")
        body = markdown_to_rst(text, top_level=1, drop_title=bool(match))
        chunks.append(f"{title}\n{'-' * max(len(title), 4)}\n\n*From* ``bench/{path.name}``.\n\n{body}")
    return "\n".join(chunks)
