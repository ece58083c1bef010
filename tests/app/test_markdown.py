"""Text from links and stores is never rendered as Markdown (app/text.py): a run name, a manifest field, a query, a
passage, a measure, a URL parameter or an error quoting user SQL shows as written, never as a link, an image, HTML,
bold, a colour or math. Checked on the Markdown source every Markdown-rendering element gets (AppTest), over every
page of runs whose strings are all hostile; tests/app/test_browser.py checks the rendered page."""

from __future__ import annotations

import re
import urllib.parse

import pytest

from app.text import code, escape
from tests.app.conftest import DL20
from tests.app.synthetic import HOSTILE, HOSTILE_FOLDER, HOSTILE_PIECES, HOSTILE_PLAIN, build_hostile_store
from tests.app.test_hardening import page

PAGES = ["overview", "findings", "head_atlas", "directions", "ablations", "patching", "spectra", "pair_explorer", "sql", "compare"]
LINK = HOSTILE_PIECES["link"][0]


def live(source: str) -> list[str]:
    """The hostile pieces that Markdown would render in ``source`` (code spans, which are literal, left out)."""
    text = re.sub(r"(`+)(.+?)\1", " ", source)
    found = [name for name, (_, pattern) in HOSTILE_PIECES.items() if re.search(pattern, text)]
    if re.search(r"(?<!\\)\[sign in(?<!\\)\]\(", text):  # the folder name's link
        found.append("folder link")
    return found


def markdown_sources(at) -> list[str]:
    """Every string of the page that Streamlit renders as Markdown: texts, titles, alerts, captions, labels and help
    of widgets and metrics, radio options, expander labels (selectbox and multiselect options are plain text)."""
    out = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "error", "warning", "info", "success",
                 "toast"):
        out += [str(e.value) for e in getattr(at, kind)]
    for kind in ("metric", "radio", "selectbox", "multiselect", "slider", "number_input", "text_area", "checkbox",
                 "expander", "download_button"):
        for e in getattr(at, kind):
            out += [str(getattr(e, "label", "") or ""), str(getattr(e.proto, "help", "") or "")]
            if kind == "radio":
                out += [str(o) for o in e.proto.options]  # the labels as drawn (format_func applied)
    return out


def assert_inert(at, where: str) -> list[str]:
    assert not at.exception, (where, [e.value for e in at.exception])
    sources = markdown_sources(at)
    bad = {s[:160]: live(s) for s in sources if live(s)}
    assert not bad, (where, bad)
    return sources


def test_the_helpers_leave_nothing_live():
    assert live(HOSTILE) == list(HOSTILE_PIECES)  # the detector sees every piece when nothing is escaped
    assert live(escape(HOSTILE)) == [] and live(code(HOSTILE)) == [] and live(f"a {code('x`y')} b") == []
    assert live(escape(HOSTILE_FOLDER)) == [] and live(HOSTILE_FOLDER) == ["bold", "colour", "folder link"]
    assert escape("trec-dl-2020__tiny-ce x_y 1.5") == "trec-dl-2020__tiny-ce x_y 1.5"  # plain names stay as they are
    assert escape("- a\n# b") == "\\- a # b" and escape("1. x") == "1\\. x"  # no list, heading or second line


def test_a_run_named_in_a_link_is_shown_as_text(store, monkeypatch):
    """?run=[Session expired: sign in](https://evil.example/x) rendered a live link in the sidebar warning."""
    at = page(store, "overview", monkeypatch, run=LINK)
    warnings = [w.value for w in at.sidebar.warning]
    assert len(warnings) == 1 and "does not list" in warnings[0] and "Session expired" in warnings[0]
    assert_inert(at, "?run=")


def test_the_sql_error_box_shows_a_quoted_identifier_as_text(store, monkeypatch):
    """A quoted identifier in ?sql_q= comes back in DuckDB's error message: it rendered as a link in the error box."""
    at = page(store, "sql", monkeypatch, run=DL20, sql_q=f'SELECT "{LINK}" FROM pairs')
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "Session expired" in errors[0] and "evil" in errors[0], errors
    assert_inert(at, "sql error")


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    return build_hostile_store(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("run", [HOSTILE_FOLDER, HOSTILE_PLAIN])
def test_every_page_shows_hostile_store_text_as_text(hostile_store, monkeypatch, run):
    """Every page of runs whose names, manifest fields, queries, passages and measures are all hostile: no
    Markdown-rendering element gets a live piece, and the hostile text does reach the pages (escaped)."""
    reached = 0
    for view in PAGES:
        at = page(hostile_store, view, monkeypatch, run=run)
        assert at.title and not at.error, (view, [e.value for e in at.error])
        reached += sum("evil" in s for s in assert_inert(at, view))
    assert reached >= 20, reached
    if run == HOSTILE_FOLDER:  # the query and passage texts and the ablation measure
        at = page(hostile_store, "pair_explorer", monkeypatch, run=run)
        assert any("evil" in m.value and "Query" in m.value for m in at.markdown)
        at = page(hostile_store, "ablations", monkeypatch, run=run)
        assert any("evil" in h.value for h in at.subheader)


def test_the_welcome_page_of_a_hostile_refused_run(hostile_store, tmp_path, monkeypatch):
    """A run that cannot be opened: its name and reason (which quotes the folder) on the welcome page, as text."""
    import shutil

    shutil.copytree(hostile_store / HOSTILE_FOLDER, tmp_path / HOSTILE_FOLDER)
    (tmp_path / HOSTILE_FOLDER / "svd.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    at = page(tmp_path, "overview", monkeypatch, run=HOSTILE_FOLDER)
    assert at.title[0].value == "Matching Atlas" and at.error
    assert_inert(at, "welcome")


def test_the_link_checks_fail_on_raw_text():
    """Positive control: the raw link, placed as the pages placed it before, is caught."""
    assert live(f"The link asks for a run this store does not list ({LINK!r}); showing x instead.") == ["link", "url"]
    assert "link" in live(urllib.parse.unquote(urllib.parse.quote(LINK)))


def test_head_atlas_stars_are_shown_not_read_as_emphasis(app, store, monkeypatch):
    """The head panel's p (Holm) metric once showed "↑" alone: Markdown read its "***" as emphasis. With the test's
    stars made "***" (the tiny store has too few queries for real ones), the metric's delta is them escaped, which
    renders as "***"."""
    import precompute.statistics

    monkeypatch.setattr(precompute.statistics, "stars", lambda p, **kwargs: "***")
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_easy")
    delta = next(m.proto.delta for m in at.metric if m.label == "p (Holm, run)")
    assert delta == escape("***") == r"\*\*\*"
