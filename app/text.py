"""Text that comes from a link or from a store, made safe to put inside the app's Markdown (no Streamlit here).

Streamlit renders Markdown in ``st.markdown``, ``st.caption``, titles, alerts, widget labels, radio options and help
texts. A run folder's name, a manifest field, a query text, an error message quoting user SQL or a URL parameter
is none of the app's own text: rendered as Markdown, ``[Session expired: sign in](https://evil.example/x)`` becomes
a live link, ``![x](https://...)`` an image fetched from elsewhere. Every such value goes through one of

* :func:`escape`: the text as it reads, every Markdown-active character backslash-escaped, and the literal
  autolinks of GitHub Markdown (``https://...``, ``www.``, ``name@host``), which backslashes do not stop, broken by
  an invisible word joiner (U+2060);
* :func:`code`: the text as an inline code span (a backtick fence longer than any run of backticks inside), for
  identifiers and paths that the app shows in code style.

Newlines become spaces: a value never starts a heading, a list or a second paragraph. A browser test checks that
neither form renders a link or an image (tests/app/test_browser.py).
"""

from __future__ import annotations

import re

# CommonMark escapes any ASCII punctuation; these are the ones Markdown, GitHub's extensions, Streamlit's colour
# directives (:red[...]) and its math ($...$) give a meaning to anywhere in a line ("(" only means something after
# "]", escaped here), plus "_" where it can open or close emphasis (not inside a word: snake_case stays readable)
# and the ":" that opens an icon or emoji code (:material/lock:, :smile:). A few more mean something at the start
# of a line only.
_ACTIVE = re.compile(r"[\\`*{}\[\]<!|~$&]|:(?=[\w+/-]+:)|(?<![A-Za-z0-9_])_+|_+(?![A-Za-z0-9_])")
_LINE_START = re.compile(r"^(?:[-+#=>]|\d+(?=[.)]))")
_WORD_JOINER = "\u2060"
# Where GitHub's literal autolinks start: a scheme before its colon, "www" before its dot, the "@" of an address.
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=mailto)(?=:)|(?<=xmpp)(?=:)|(?<=www)(?=\.)|(?=@)")
_SPACES = re.compile(r"\s+")


def escape(value: object) -> str:
    """``value`` as text that Markdown shows as it is (see the module doc)."""
    text = _ACTIVE.sub(lambda m: "".join("\\" + c for c in m.group()),
                       _AUTOLINK.sub(_WORD_JOINER, _SPACES.sub(" ", str(value)).strip()))
    start = _LINE_START.match(text)  # "- x", "# x", "1. x": a list item or a heading at the start of a line
    if start is None:
        return text
    cut = start.end() if start.group().isdigit() else 0  # the marker: after a number, its "." or ")"
    return text[:cut] + "\\" + text[cut:]


def code(value: object) -> str:
    """``value`` as an inline code span, whatever backticks it holds (see the module doc)."""
    text = _SPACES.sub(" ", str(value)).strip()
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"
