"""Small Streamlit building blocks shared by the pages: a chart with its downloads, empty states,
the run context the sidebar computed, a run verified before it is shown, and the head selection of a clicked
heatmap cell."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app import charts, state
from matching_atlas import verification
from app.slice import Slice
from matching_atlas.opening import RunInfo, inspect_run
from app.text import code

CONTEXT_KEY = "_atlas_context"


@dataclass
class Context:
    """What the sidebar decided this run: the store root (fixed by the server), its runs, the chosen run, the slice."""

    store: Path
    runs: list[RunInfo] = field(default_factory=list)
    run: RunInfo | None = None
    slice: Slice = field(default_factory=Slice)
    layers: int = 0
    heads: int = 0

    @property
    def ok_runs(self) -> list[RunInfo]:
        return [r for r in self.runs if r.ok]


def context() -> Context:
    ctx = st.session_state.get(CONTEXT_KEY)
    if ctx is None:
        st.error("The app's sidebar did not run: start the app with `streamlit run app/main.py`.")
        st.stop()
    return ctx


def verified(run: RunInfo) -> RunInfo:
    """``run`` once every file of it is verified (``matching_atlas.verification``), with a progress bar meanwhile (a first
    opening of a large run); nothing of the run is drawn before. The returned run may carry a problem instead."""
    for _ in range(3):  # a file replaced after it was verified is verified again in its new state
        if run.verified or not run.ok:
            return run
        job = verification.start(run.key, run.unverified)
        bar = st.progress(0.0, text=_verifying(run, job))
        while not job.finished.wait(0.25):
            bar.progress(min(1.0, job.rows_done / max(1, job.rows_total)), text=_verifying(run, job))
        bar.empty()
        run = inspect_run(run.path)
        if job.problem and run.ok and not run.verified:  # not cached: a file changed meanwhile, or the check failed
            return dataclasses.replace(run, problem=job.problem)
    if run.ok and not run.verified:
        return dataclasses.replace(run, problem=f"the files of {run.path} keep changing while they are verified: "
                                                "reload the page once the job writing them has finished")
    return run


def _verifying(run: RunInfo, job: verification.Verification) -> str:
    eta = job.eta_s
    return (f"Checking every page of {code(run.name)} before showing it (first opening of these files; later "
            f"openings reuse the result): {job.rows_done:,} of {job.rows_total:,} rows"
            + (f", about {eta:.0f} s left" if eta is not None else ""))


def require_run() -> tuple[Context, RunInfo]:
    ctx = context()
    if ctx.run is None or not ctx.run.ok:
        st.info("Choose a run in the sidebar.")
        st.stop()
    return ctx, ctx.run


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "chart"


def chart(
    ch: alt.TopLevelMixin,
    data: pd.DataFrame,
    name: str,
    *,
    key: str,
    select: str | None = None,
) -> Any:
    """Draw an Altair chart with PNG, SVG and CSV downloads under it; returns the selection event. A chart sized
    per category (a step width: one column per category, see charts.x_band) is drawn at its own width, which
    Streamlit's stretching would replace by the column's."""
    stepped = isinstance(getattr(ch, "width", None), alt.Step)
    kwargs: dict[str, Any] = {"key": key, "width": "content" if stepped else "stretch"}
    if select:
        kwargs.update(on_select="rerun", selection_mode=[select])
    event = st.altair_chart(ch, **kwargs)
    fname = _slug(name)
    row = st.container(horizontal=True, gap="small")
    row.download_button("PNG", data=lambda: charts.to_png(ch), file_name=f"{fname}.png", mime="image/png",
                        key=f"{key}__png", on_click="ignore", icon=":material/image:", type="tertiary",
                        help="Download the chart as a PNG image")
    row.download_button("SVG", data=lambda: charts.to_svg(ch), file_name=f"{fname}.svg", mime="image/svg+xml",
                        key=f"{key}__svg", on_click="ignore", icon=":material/draw:", type="tertiary",
                        help="Download the chart as an SVG image")
    row.download_button("CSV", data=lambda: data.to_csv(index=False), file_name=f"{fname}.csv", mime="text/csv",
                        key=f"{key}__csv", on_click="ignore", icon=":material/table:", type="tertiary",
                        help="Download the chart's data as CSV")
    return event


def table_download(df: pd.DataFrame, name: str, *, key: str, label: str = "CSV") -> None:
    st.download_button(label, data=lambda: df.to_csv(index=False), file_name=f"{_slug(name)}.csv", mime="text/csv",
                       key=key, on_click="ignore", icon=":material/table:")


def missing_table(what: str, command: str) -> None:
    """The empty state of a page whose table the run does not have yet."""
    st.info(f"This run has no {what} yet. Compute them with:")
    st.code(command, language="bash", wrap_lines=True)


def cell_from_event(event: Any) -> tuple[int, int] | None:
    """The (layer, head) of a click on a head heatmap, from ``st.altair_chart``'s event (or its session state)."""
    try:
        sel = event["selection"][charts.CELL]
    except (KeyError, TypeError, IndexError):
        return None
    if isinstance(sel, dict):  # {"layer": [1], "head": [2]} or {"layer": 1, "head": 2}
        layer, head = sel.get("layer"), sel.get("head")
        layer = layer[0] if isinstance(layer, list) and layer else layer
        head = head[0] if isinstance(head, list) and head else head
    elif isinstance(sel, list) and sel and isinstance(sel[0], dict):
        layer, head = sel[0].get("layer"), sel[0].get("head")
    else:
        return None
    try:
        return int(layer), int(head)
    except (TypeError, ValueError):
        return None


def point_from_event(event: Any, name: str, fields: tuple[str, ...]) -> tuple | None:
    """The values of ``fields`` of a click on a chart's point selection ``name`` (e.g. charts.POINT), or None."""
    try:
        sel = event["selection"][name]
    except (KeyError, TypeError, IndexError):
        return None
    if isinstance(sel, list) and sel and isinstance(sel[0], dict):
        sel = sel[0]
    if not isinstance(sel, dict) or not sel:
        return None
    out = []
    for f in fields:
        v = sel.get(f)
        v = v[0] if isinstance(v, list) and v else v
        if v is None or isinstance(v, list):
            return None
        out.append(v)
    return tuple(out)


def selected_head(map_key: str, head_key: str, heads: list[str], default: str) -> tuple[int, int]:
    """The head a page shows: the last clicked cell of the heatmap ``map_key``, else the ``head_key``
    selectbox / URL value, else ``default``. A click's event is in the session state before the chart is
    drawn, so it selects the head in the same rerun."""
    clicked = cell_from_event(st.session_state.get(map_key))
    last = f"_{map_key}_last_click"
    if clicked is not None and clicked != st.session_state.get(last):
        st.session_state[last] = clicked
        if head_label(*clicked) in heads:
            st.session_state[head_key] = head_label(*clicked)
    state.bind(head_key, default, clean=state.choice(heads, default))
    return parse_head(st.session_state[head_key])


def pick_one(key: str, options: list, label: str) -> Any:
    """The chosen one of ``options``: a horizontal radio mirrored in the URL when there is a choice, else the only one."""
    if len(options) == 1:
        return options[0]
    state.bind(key, options[0], clean=state.choice(options, options[0]))
    st.radio(label, options, key=key, horizontal=True)
    state.publish(key, default=options[0])
    return st.session_state[key]


def head_label(layer: int, head: int) -> str:
    return f"{int(layer)}.{int(head)}"


def parse_head(label: str) -> tuple[int, int]:
    layer, _, head = str(label).partition(".")
    return int(layer), int(head)

