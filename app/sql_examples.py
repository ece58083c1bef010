"""The SQL page's example queries: the ``sql`` blocks of the "Example queries" section of docs/store.md, each titled
by the sentence before it, read from the document itself so that the page and the documentation cannot drift apart
(tests/app/test_links.py runs every one of them in the SQL console on a test store)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STORE_DOC = Path(__file__).resolve().parents[1] / "docs" / "store.md"
SECTION = "## Example queries"
_BLOCK = re.compile(r"```sql\n(.*?)```", re.S)


@dataclass(frozen=True)
class Example:
    title: str
    sql: str


def examples(doc: Path = STORE_DOC) -> list[Example]:
    """The section's queries in their order (none when the document is not beside the app, e.g. an installed wheel)."""
    try:
        text = doc.read_text(encoding="utf-8")
    except OSError:
        return []
    start = text.find(SECTION)
    if start < 0:
        return []
    body = text[start + len(SECTION):]
    body = body[:body.find("\n## ")] if "\n## " in body else body
    out, last = [], 0
    title = ""
    for block in _BLOCK.finditer(body):
        prose = " ".join(line.strip() for line in body[last:block.start()].splitlines() if line.strip())
        title = _plain(prose) or title  # a block right after another shares its title
        out.append(Example(title=title, sql=block.group(1).strip().rstrip(";")))
        last = block.end()
    return out


def _plain(prose: str) -> str:
    """One line of the doc's prose without its Markdown: links become their text, a trailing colon goes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", prose).replace("`", "")
    return text.rstrip(": ").strip()
