"""Widget state <-> URL (``st.query_params``), so that a view can be shared as a link.

Pattern for every widget that belongs in the URL::

    state.bind("atlas_metric", default="q_d", clean=lambda v: v if v in METRICS else "q_d")
    st.selectbox("Metric", METRICS, key="atlas_metric")      # no index=/value=: the state holds it
    state.publish("atlas_metric", default="q_d")

``bind`` gives the widget its value before it is drawn: the value it had when the user last saw
this page (pages' widgets are dropped from the session when another page runs) unless the URL now asks
for another one than the page last wrote there (a link from another page), else the URL's, else the
default. ``publish`` writes the value into the URL (or removes it when it is the default)
and keeps it for the next visit. Page-specific keys start with the page's prefix (``atlas_``,
``dir_``, ...); ``prune_params`` drops the other pages' keys from the URL on a page switch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import streamlit as st

MISSING: Any = object()
GLOBAL_PARAMS: set[str] = {"run"}  # plus the slice's (app.slice.PARAM_KEYS); the store root is never a URL parameter


def _kept(key: str) -> str:
    return f"_kept_{key}"


def _published(key: str) -> str:
    return f"_published_{key}"


def _link_asks(key: str, param: str) -> bool:
    """Whether the URL holds a value for ``param`` that this session did not write there: a link (from another page
    of the app, or pasted) asks for it, and it wins over the value kept from the page's last visit."""
    if param not in st.query_params or key in st.session_state:
        return False
    return st.query_params[param] != st.session_state.get(_published(key))


def bind(
    key: str,
    default: Any,
    *,
    param: str | None = None,
    parse: Callable[[str], Any] = str,
    clean: Callable[[Any], Any] | None = None,
) -> Any:
    """Set ``st.session_state[key]`` before its widget is created (see module doc); returns the value."""
    param = param or key
    if key in st.session_state:
        value = st.session_state[key]
    elif _kept(key) in st.session_state and not _link_asks(key, param):
        value = st.session_state[_kept(key)]
    elif param in st.query_params:
        try:
            value = parse(st.query_params[param])
        except (TypeError, ValueError):
            value = default
    else:
        value = default
    if clean is not None:
        try:
            value = clean(value)
        except (TypeError, ValueError):
            value = default
    if key not in st.session_state or st.session_state[key] != value:
        st.session_state[key] = value
    return value


def asked(key: str, *, param: str | None = None) -> str | None:
    """The URL's value for ``key`` when the widget takes it from the URL on this run (a link just opened), else None:
    call before :func:`bind`, compare after it, and say so when a link asked for a value the page cannot show."""
    param = param or key
    if key in st.session_state or (_kept(key) in st.session_state and not _link_asks(key, param)):
        return None
    return st.query_params.get(param)


def publish(key: str, *, param: str | None = None, fmt: Callable[[Any], str] = str, default: Any = MISSING) -> Any:
    """Write the widget's current value into the URL and keep it for the next visit of the page."""
    param = param or key
    value = st.session_state.get(key)
    st.session_state[_kept(key)] = value
    shown = None if (default is not MISSING and value == default) else fmt(value)
    st.session_state[_published(key)] = shown or None
    set_param(param, shown)
    return value


def set_param(name: str, value: str | None) -> None:
    """Set (or, with None/empty, remove) one URL parameter, touching the URL only on a change."""
    if value is None or value == "":
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != value:
        st.query_params[name] = value


def prune_params(keep: Iterable[str], prefix: str | None) -> None:
    """Remove URL parameters that are neither global (``keep``) nor the current page's (``prefix``)."""
    keep = set(keep)
    for name in list(st.query_params.keys()):
        if name in keep or (prefix and name.startswith(prefix)):
            continue
        del st.query_params[name]


def choice(options: list, default: Any) -> Callable[[Any], Any]:
    """A ``clean`` for selectboxes: the value if it is an option, else the default (or the first option)."""
    def _clean(value):
        if value in options:
            return value
        return default if default in options else (options[0] if options else None)
    return _clean


def subset(options: list) -> Callable[[Any], Any]:
    """A ``clean`` for multiselects: keep the values that are options (in the user's order, no repeats)."""
    allowed = set(options)

    def _clean(values):
        return list(dict.fromkeys(v for v in (values or []) if v in allowed))
    return _clean


def join(values) -> str:
    return ",".join(str(v) for v in values)


def split(raw: str) -> list[str]:
    return [v for v in raw.split(",") if v]
