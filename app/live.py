"""One pair run live through the run's model, when this machine can load it: token weights and summaries.

The pair goes through the job's own code, so the live numbers and the stored ones are one computation:
``precompute.families.loading.load`` (CPU, float32), the model's own encoding (``LoadedModel.encode``: segments from
the tokenizer's sequence ids, so RoBERTa's ``</s></s>`` between query and document is SEP1) and the
summary kernel (``precompute.kernels.eager.SummaryProbe``: the score, and the 25 masses and matching
signals in ``metrics.METRICS`` order). The token heatmap's weights are the same loaded model's eager
attention (``output_attentions=True``).

Every torch / precompute-model call is in :func:`_load_model` and :func:`_run_pair`; torch and
transformers are imported there only, and only the Pair explorer calls them, after
:func:`availability` found the model folder and both packages.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.runs import RunInfo, model_folder
from precompute.metrics import METRICS
from precompute.names import PADDING, SEGMENTS

# AtlasProbe swaps the attention implementation of the one cached model: one pair at a time per process.
_MODEL_LOCK = threading.Lock()


@dataclass
class PairAttention:
    tokens: list[str]
    ids: list[int]
    segments: list[str]  # one of names.SEGMENTS per token ("pad" for padding: none for a single pair)
    attention: np.ndarray  # [head, query_pos, key_pos] eager weights of the requested layer
    summaries: np.ndarray  # [layer, head, metric] from the summary kernel, in metrics.METRICS order
    score: float


def availability(run: RunInfo) -> tuple[Path | None, str]:
    """The model folder if the model can be loaded here, else None and the reason, in words."""
    folder, reason = model_folder(run)
    if folder is None:
        return None, reason
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            return None, f"the Python package {module} is not installed on this machine"
    return folder, ""


@st.cache_resource(max_entries=2, show_spinner="Loading the model ...")
def _load_model(folder: str):
    from precompute.families.loading import load

    return load(folder, device="cpu", dtype="float32")


def _run_pair(folder: str, query: str, doc: str, layer: int, max_length: int) -> PairAttention:
    """The pair through the job's encoding, summary kernel and score, plus one layer's eager weights."""
    import torch

    from precompute.kernels.eager import SummaryProbe

    lm = _load_model(folder)
    batch = lm.encode([query], [doc], int(max_length))
    with _MODEL_LOCK, torch.inference_mode():
        with SummaryProbe(lm) as probe:
            scores, summaries, _ = probe.run(batch, summarise=True)
        weights = lm.model(**batch.inputs, output_attentions=True).attentions[int(layer)][0]
    ids = batch.inputs["input_ids"][0].tolist()
    return PairAttention(tokens=lm.tokenizer.convert_ids_to_tokens(ids), ids=ids,
                         segments=[SEGMENTS[s] if s != PADDING else "pad" for s in batch.segments[0].tolist()],
                         attention=weights.float().numpy(), summaries=summaries[0].float().numpy(),
                         score=float(scores[0]))


@st.cache_data(max_entries=8, show_spinner="Running the model on the pair ...")
def pair_attention(folder: str, query: str, doc: str, layer: int, max_length: int) -> PairAttention:
    """:func:`_run_pair`, cached per pair and layer (one layer's weights: a few MB for a 512-token pair)."""
    return _run_pair(folder, query, doc, layer, max_length)


def metrics(pa: PairAttention, layer: int, head: int) -> dict[str, float]:
    """Every summary metric of one head, live (metrics.METRICS -> value)."""
    return {m: float(v) for m, v in zip(METRICS, pa.summaries[int(layer), int(head)])}


def largest_gap(live: dict[str, float], stored: dict[str, float]) -> float:
    """The largest |live - stored| over the metrics both hold; a metric defined (not NaN) on one side only: inf."""
    gaps = [0.0]
    for name, value in stored.items():
        a, b = live[name], value
        gaps.append(abs(a - b) if not (math.isnan(a) or math.isnan(b)) else 0.0 if math.isnan(a) and math.isnan(b)
                    else math.inf)
    return max(gaps)


def attention_frame(pa: PairAttention, head: int, src, dst) -> pd.DataFrame:
    """Long frame of the weights from ``src`` tokens to ``dst`` tokens on one head (for the token heatmap); ``src``
    and ``dst`` are a segment or several (``("cls", "sep1", "d", "sep2")``: [CLS] and [SEP] as attended tokens too).
    ``exact``: the document-side token of the cell is a query token (same token id), for cells between the query
    and the document."""
    src, dst = ({s} if isinstance(s, str) else set(s) for s in (src, dst))
    seg = np.array(pa.segments)
    rows = np.where(np.isin(seg, sorted(src)))[0]
    cols = np.where(np.isin(seg, sorted(dst)))[0]
    a = pa.attention[int(head)]
    query_ids = {pa.ids[i] for i in np.where(seg == "q")[0]}

    def exact(i: int, j: int) -> bool:
        kinds = (pa.segments[i], pa.segments[j])
        if kinds == ("q", "d"):
            return pa.ids[j] in query_ids
        return kinds == ("d", "q") and pa.ids[i] in query_ids

    out = [
        {"src_pos": int(i), "src_token": pa.tokens[i], "dst_pos": int(j), "dst_token": pa.tokens[j],
         "weight": float(a[i, j]), "exact": exact(i, j)}
        for i in rows for j in cols
    ]
    return pd.DataFrame(out, columns=["src_pos", "src_token", "dst_pos", "dst_token", "weight", "exact"])
