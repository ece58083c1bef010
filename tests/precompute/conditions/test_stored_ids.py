"""A job stores the documented ids (the form users type in flags and SQL) and every part of them as columns: each
stored row is exactly what its id parses to."""

from __future__ import annotations

from precompute import conditions as C
from precompute.store.connect import connect


def test_stored_rows_are_their_ids_parsed(tiny_bert_run):
    _, root = tiny_bert_run
    con = connect(root)
    cursor = con.execute("SELECT * FROM ablation_conditions")
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    assert {r["kind"] for r in rows} == {"baseline", "direction", "group", "component", "subspace"}
    for row in rows:
        parsed = C.Condition.from_row(row)
        assert parsed.row() == row and parsed.condition_id == row["condition_id"]
    ids = {r["condition_id"] for r in rows}
    assert {"mlp@0:d/mean", "attn@1/mean", "qk:0.0:k1/remove", "qk:1.1:k1/scale=2"} <= ids
    assert not any(":" in i.split("@")[0] for i in ids if i.startswith(("mlp", "attn")))  # never mlp:d@0/mean
    summary = con.execute("SELECT count(*) FROM ablation_summary s JOIN ablation_conditions c USING (condition_id) "
                          "WHERE s.analysis IS DISTINCT FROM c.analysis OR s.segment IS DISTINCT FROM c.segment "
                          "OR s.factor IS DISTINCT FROM c.factor").fetchone()
    assert summary == (0,)
