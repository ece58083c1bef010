"""Links from one page to another at a pair, a layer and a head: relative URLs that carry the run, the sidebar's
slice and the target page's own URL parameters (the ones its widgets bind through ``app.state``).

A link is built here and only here, so every page escapes the same way: each value is percent-encoded
(``urllib.parse.urlencode``), so a query id or a condition id from the store can neither add a parameter nor leave
the app (the URL always starts with one of the app's own page paths, never a scheme). The page that opens the link
treats it as any shared link: untrusted input that its widgets' ``clean`` functions check against the run's own
options, falling back to their defaults.

Links open in a new tab (``st.column_config.LinkColumn`` does that), so the page that receives them starts from
the URL and the view the visitor left stays as it was.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from app.slice import PARAM_KEYS
from precompute.conditions.subspace_specs import removed_components

# URL paths of the pages links lead to (app/main.py PAGES declares them; tests/app/test_links.py checks they agree).
PAIR_EXPLORER = "pair-explorer"
HEAD_ATLAS = "head-atlas"
SPECTRA = "spectra"
TARGETS: tuple[str, ...] = (PAIR_EXPLORER, HEAD_ATLAS, SPECTRA)

OPEN = ":material/open_in_new:"  # what a link cell shows


def url(page: str, **params: Any) -> str:
    """The relative URL of ``page`` with the current run and slice, then ``params`` (None: left out), escaped."""
    if page not in TARGETS:
        raise ValueError(f"{page!r} is not a page links lead to ({', '.join(TARGETS)})")
    carried = {name: st.query_params[name] for name in ("run", *PARAM_KEYS) if name in st.query_params}
    carried.update({name: str(value) for name, value in params.items() if value is not None})
    return f"{page}?{urlencode(carried)}" if carried else page


def to_pair(pair_id: int, qid: str, layer: int | None = None, head: int | None = None) -> str:
    """The Pair explorer at one pair (its query and passage), and at a head when given."""
    return url(PAIR_EXPLORER, pair_q=qid, pair_id=int(pair_id),
               pair_layer=None if layer is None else int(layer), pair_head=None if head is None else int(head))


def to_head(layer: int, head: int) -> str:
    """The Head atlas with one head open (its distributions and top pairs)."""
    return url(HEAD_ATLAS, atlas_head=f"{int(layer)}.{int(head)}")


def to_spectrum(layer: int, head: int, condition_id: str | None = None) -> str:
    """Spectra at one head; with a QK-subspace ``condition_id`` (``qk:3.5:k2/remove``, ``qk:3.5:a2/remove``) the
    page highlights the components that condition removes or scales."""
    return url(SPECTRA, spec_head=f"{int(layer)}.{int(head)}", spec_removed=condition_id)


def subspace_column(condition_ids) -> list[str | None]:
    """One Spectra link per QK-subspace condition id (None for an id of another kind)."""
    out = []
    for cid in condition_ids:
        parsed = removed_components(str(cid))
        out.append(None if parsed is None else to_spectrum(parsed[0], parsed[1], str(cid)))
    return out


def pair_column(frame: pd.DataFrame, layer: int | None = None, head: int | None = None,
                *, pair: str = "pair_id", qid: str = "qid") -> list[str | None]:
    """One Pair explorer link per row of ``frame`` (None where the row has no pair)."""
    return [None if pd.isna(p) or pd.isna(q) else to_pair(int(p), str(q), layer, head)
            for p, q in zip(frame[pair], frame[qid])]


def head_column(frame: pd.DataFrame, target=to_head) -> list[str | None]:
    """One link per row of ``frame`` to its (layer, head) on the page ``target`` builds (Head atlas by default)."""
    return [None if pd.isna(a) or pd.isna(b) else target(int(a), int(b)) for a, b in zip(frame["layer"], frame["head"])]


def column(label: str, help: str) -> Any:
    """The column_config of a link column: an icon that opens the link in a new tab."""
    return st.column_config.LinkColumn(label, help=help, display_text=OPEN, width="small")
