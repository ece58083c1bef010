"""Token-level attention of one pair, computed live from the run's model when this machine can load it.

Nothing heavy is imported at module import: torch and transformers are imported inside the
functions, and only after ``availability`` found the model folder named in the manifest and both
packages installed. The model is loaded once per process (``st.cache_resource``) with
``attn_implementation="eager"`` so that ``output_attentions=True`` returns the weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.store import RunInfo, model_folder


@dataclass
class PairAttention:
    tokens: list[str]
    ids: list[int]
    segments: list[str]  # one of cls, q, sep1, d, sep2 per token
    attention: np.ndarray  # [head, query_pos, key_pos] of the requested layer
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
def _load(folder: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    model.eval()
    return tok, model


def segments_of(input_ids: list[int], sep_id: int) -> list[str]:
    """Segment name of every token of ``[CLS] query [SEP] document [SEP]``."""
    seps = [i for i, t in enumerate(input_ids) if t == sep_id]
    first, last = (seps[0], seps[-1]) if seps else (len(input_ids), len(input_ids))
    out = []
    for i in range(len(input_ids)):
        if i == 0:
            out.append("cls")
        elif i < first:
            out.append("q")
        elif i == first:
            out.append("sep1")
        elif i < last:
            out.append("d")
        elif i == last:
            out.append("sep2")
        else:
            out.append("d")
    return out


@st.cache_data(max_entries=64, show_spinner="Running the model on the pair ...")
def pair_attention(folder: str, query: str, doc: str, layer: int, max_length: int, score_kind: str) -> PairAttention:
    import torch

    tok, model = _load(folder)
    enc = tok(query, doc, truncation="only_second", max_length=int(max_length), return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    logits = out.logits[0]
    if logits.numel() == 1:
        score = float(logits[0])
    else:
        score = float(torch.log_softmax(logits, dim=-1)[-1])
    att = out.attentions[int(layer)][0].float().numpy()  # [head, query_pos, key_pos]
    ids = enc["input_ids"][0].tolist()
    return PairAttention(tokens=tok.convert_ids_to_tokens(ids), ids=ids, segments=segments_of(ids, tok.sep_token_id),
                         attention=att, score=score)


def attention_frame(pa: PairAttention, head: int, src: str, dst: str) -> pd.DataFrame:
    """Long frame of the weights from ``src`` tokens to ``dst`` tokens on one head (for the token heatmap)."""
    seg = np.array(pa.segments)
    rows = np.where(seg == src)[0]
    cols = np.where(seg == dst)[0]
    a = pa.attention[int(head)]
    src_ids = {pa.ids[i] for i in rows}
    dst_ids = {pa.ids[j] for j in cols}
    out = [
        {"src_pos": int(i), "src_token": pa.tokens[i], "dst_pos": int(j), "dst_token": pa.tokens[j],
         "weight": float(a[i, j]),
         "exact": (pa.ids[j] in src_ids) if src == "q" else (pa.ids[i] in dst_ids)}
        for i in rows for j in cols
    ]
    return pd.DataFrame(out, columns=["src_pos", "src_token", "dst_pos", "dst_token", "weight", "exact"])


def segment_masses(pa: PairAttention, head: int) -> pd.DataFrame:
    """The 25 masses of one head recomputed from the live weights (mean over src tokens of summed weight)."""
    from precompute.names import SEGMENTS

    seg = np.array(pa.segments)
    a = pa.attention[int(head)]
    rows = []
    for s in SEGMENTS:
        si = np.where(seg == s)[0]
        for d in SEGMENTS:
            di = np.where(seg == d)[0]
            mass = float(a[np.ix_(si, di)].sum(axis=1).mean()) if len(si) and len(di) else float("nan")
            rows.append({"src": s, "dst": d, "direction": f"{s}_{d}", "mean": mass})
    return pd.DataFrame(rows)
