"""Derived results the Findings page reads that no other group of the reader holds: the no-op check of [CLS] and the
separators (how much attention Query and Document tokens give them, beside the value-weighted share of the head's
output those targets contribute, Kobayashi et al., EMNLP 2020).

A target that receives much attention but contributes a small share of the output is read as a no-op, measured rather
than inferred from attention weights. The shares are the ``vw_<src>_<dst>`` columns of head_attention (store schema
version 7); a run without them gets the masses and NaN shares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from matching_atlas import sqltext as sq
from matching_atlas.reading import Reader
from precompute.analyses.lexical_layers import KINDS, layer_means

NOOP_SOURCES = ("q", "d")  # the tokens whose attention is read: query and document
NOOP_TARGETS = {"cls": ("cls",), "sep": ("sep1", "sep2")}  # 'sep': both separators together
VALUE_WEIGHTED_PREFIX = "vw_"  # value-weighted share of a mass (schema version 7)
VALUE_WEIGHTED_SCHEMA = 7


class FindingTables(Reader):
    """Methods of :class:`matching_atlas.Run` for results only the Findings page needs."""

    def has_value_weighted(self) -> bool:
        """Whether head_attention_agg holds value-weighted shares (columns ``vw_*`` present and not all NULL)."""
        if not self._defined("head_attention_agg"):
            return False
        found = self._frame("SELECT count(*) AS n FROM duckdb_columns() WHERE table_name = 'head_attention_agg' "
                            "AND column_name = ?", [f"{VALUE_WEIGHTED_PREFIX}q_cls_sum"])
        if not int(found["n"].iloc[0]):
            return False
        return bool(self._frame(f"SELECT count({VALUE_WEIGHTED_PREFIX}q_cls_sum) AS n FROM head_attention_agg")["n"]
                    .iloc[0])

    def noop_targets(self) -> pd.DataFrame:
        """Per source (``q``, ``d``), target (``cls``; ``sep`` = both separators) and layer, over relevant pairs:
        ``mass`` (the attention mass the source's tokens give the target: per query the mean over the layer's heads and
        the query's relevant pairs, then the mean over queries), ``share`` (the same of the value-weighted share; NaN
        without the ``vw_*`` columns) and ``n_queries``. Empty without head_attention_agg."""
        columns = ["source", "target", "layer", "mass", "share", "n_queries"]
        if not self._defined("head_attention_agg"):
            return pd.DataFrame(columns=columns)
        shares = self.has_value_weighted()
        relevant = KINDS.index("relevant")
        rows = []
        cur = self.connection.cursor()
        try:
            for src in NOOP_SOURCES:
                for target, dsts in NOOP_TARGETS.items():
                    values = {}
                    for prefix in ("", VALUE_WEIGHTED_PREFIX) if shares else ("",):
                        total = None
                        for dst in dsts:
                            layers, _, means = layer_means(cur, f"{prefix}{src}_{dst}")
                            part = means[:, :, relevant]
                            total = part if total is None else total + part
                        values[prefix] = total
                    keep = ~np.isnan(values[""]).any(axis=0)
                    for i, layer in enumerate(layers):
                        mass = float(values[""][i, keep].mean()) if keep.any() else float("nan")
                        share = (float(values[VALUE_WEIGHTED_PREFIX][i, keep].mean())
                                 if shares and keep.any() else float("nan"))
                        rows.append({"source": src, "target": target, "layer": layer, "mass": mass, "share": share,
                                     "n_queries": int(keep.sum())})
        finally:
            cur.close()
        return sq.ints(pd.DataFrame(rows, columns=columns), "layer", "n_queries")
