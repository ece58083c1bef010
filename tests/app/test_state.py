"""URL state (app.state): a link that asks for a value wins over the value a page kept from its last visit."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _page():
    import streamlit as st

    from app import state

    if st.session_state.get("_show", True):  # False: "another page" runs, so the widget's state is dropped
        state.bind("atlas_x", "a", clean=state.choice(["a", "b", "c"], "a"))
        st.selectbox("x", ["a", "b", "c"], key="atlas_x")
        state.publish("atlas_x", default="a")


def test_a_link_wins_over_the_value_kept_from_the_last_visit():
    at = AppTest.from_function(_page).run()
    at.selectbox(key="atlas_x").select("b").run()
    assert at.query_params["atlas_x"] == "b"
    at.session_state["_show"] = False  # the user goes to another page...
    at.run()
    at.session_state["_show"] = True  # ...and comes back through the navigation: the kept value
    at.run()
    assert at.selectbox(key="atlas_x").value == "b"
    at.session_state["_show"] = False
    at.run()
    at.query_params["atlas_x"] = "c"  # a link from another page asks for c
    at.session_state["_show"] = True
    at.run()
    assert at.selectbox(key="atlas_x").value == "c" and at.query_params["atlas_x"] == "c"
