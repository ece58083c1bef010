"""Encoder cross-encoders: ``[CLS] query [SEP] document [SEP]`` through the tokenizer's pair template, scored by
a sequence-classification head (one logit, or the log-probability of the positive class of two).

* ``bert`` (BERT, MiniLM, RoBERTa, XLM-R, CamemBERT, ELECTRA), ``distilbert`` and ``modernbert`` (rotary, with
  sliding-window local layers: the window is in the mask transformers builds) through ``AttentionInterface``.
* ``deberta-v2``: DeBERTa-v2/v3 (disentangled attention: content-to-position and position-to-content terms).
* ``mpnet``: MPNet (relative position bias).

DeBERTa-v2 and MPNet compute their softmax inline in their own self-attention ``forward``; a hook could read
those probabilities but not change them, so while a probe runs each attention module's ``forward`` is replaced
by one that computes the same logits with the module's own projections and position terms, then hands them to
the kernel's :func:`~precompute.kernels.eager.attend` (summaries and interventions). The module's own forward
is restored when the probe exits. Tests compare both with the module's own output.
"""

from __future__ import annotations

import contextlib
import math
import types
from dataclasses import dataclass

from precompute.families.base import Family, FamilyError, two_way
from precompute.kernels.site import KernelError


CLASSIFIER_SCORE = "the head's logit (one label) or log-softmax of its positive class (two)"


def classifier_relevance(logits, scale: str = "score"):
    """[batch, labels] logits -> [batch] float32 on ``scale`` (families.base.SCALES): the score is the single logit,
    or log-softmax[1] of two labels."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        return logits[:, 0] if scale != "probability" else logits[:, 0].sigmoid()
    if logits.shape[-1] == 2:
        return two_way(logits, 1, scale)
    raise FamilyError(f"the model has {logits.shape[-1]} output labels; a cross-encoder has 1 (score) or 2 "
                      "(not relevant, relevant)")


@dataclass(frozen=True)
class PairEncoder(Family):
    def check(self, lm) -> None:
        super().check(lm)
        labels = lm.model.config.num_labels
        if labels not in (1, 2):
            raise FamilyError(f"model has {labels} labels; a cross-encoder has 1 (score) or 2 (not relevant, relevant)")
        check_token_types(lm)

    def encode(self, lm, queries, docs, max_length):
        import inspect

        from precompute.families.segments import encode

        batch = encode(lm.tokenizer, queries, docs, max_length)
        if "token_type_ids" not in inspect.signature(lm.model.forward).parameters:  # DistilBERT, ModernBERT, ...
            batch.inputs.pop("token_type_ids", None)  # a model without them would pass them on to its attention
        return batch

    def token_lengths(self, lm, queries, docs, max_length):
        return lm.tokenizer(queries, docs, truncation="only_second", max_length=max_length, return_length=True,
                            return_attention_mask=False, return_token_type_ids=False)["length"]

    def scores(self, lm, batch, scale="score"):
        return classifier_relevance(lm.model(**batch.inputs).logits, scale)

    def score_kind(self, lm) -> str:
        return "logit" if lm.model.config.num_labels == 1 else "log_softmax[1]"

    def position_of(self, config) -> str:
        """BERT-era configs may still ask for ``position_embedding_type`` relative_key(_query), which transformers 5
        no longer implements: such a checkpoint would run with absolute positions, not as it was trained."""
        asked = getattr(config, "position_embedding_type", None)
        if asked not in (None, "absolute"):
            raise FamilyError(f"its config asks for position_embedding_type={asked!r}, which transformers no longer "
                              "implements (the model would run with absolute positions, not as trained); use a model "
                              "trained with absolute positions")
        return self.position


@dataclass(frozen=True)
class ModernBert(PairEncoder):
    """ModernBERT reads its score at [CLS] or, with ``classifier_pooling: mean``, from the mean over its tokens."""

    def pooling_of(self, config) -> str:
        return "mean" if getattr(config, "classifier_pooling", "cls") == "mean" else self.pooling


def check_token_types(lm) -> None:
    """A model trained with token types (BERT, ELECTRA: ``type_vocab_size`` 2) reads the document through
    ``token_type_ids`` = 1; a tokenizer that gives none (a generic fallback, another model's tokenizer) makes every
    document token read as query and changes every score, silently. Refused when the tokenizer's pair encoding
    marks no token as the second segment."""
    import inspect

    types = getattr(lm.model.config, "type_vocab_size", None) or 0
    if types < 2 or "token_type_ids" not in inspect.signature(lm.model.forward).parameters:
        return
    batch = lm.encode(["query"], ["document"], 32)
    given = batch.inputs.get("token_type_ids")
    if given is None or not bool(given.any()):
        what = "gives no token_type_ids" if given is None else "gives token_type_ids of 0 for the document too"
        raise FamilyError(f"its tokenizer {what}, but the model was trained with {types} token types (the document "
                          f"as type 1); the tokenizer ({type(lm.tokenizer).__name__}) is not the model's: restore its "
                          "tokenizer files (model_input_names with token_type_ids, a pair template marking the "
                          "document)")


def _swap_forwards(model, family: Family, make_forward) -> contextlib.AbstractContextManager:
    """Replace every attention module's forward by ``make_forward(module, layer)`` for a ``with`` block."""

    @contextlib.contextmanager
    def swapped():
        modules = [module for module, _ in family.attention_sites(model)]
        try:
            for module in modules:
                module.forward = types.MethodType(make_forward(), module)
            yield
        finally:
            for module in modules:
                module.__dict__.pop("forward", None)  # the class's own forward again

    return swapped()


def _refuse_unknown(module, **kwargs) -> None:
    for name, value in kwargs.items():
        if value is not None and value is not False:
            raise KernelError(f"{type(module).__name__} was called with {name!r}, which the swapped forward does not "
                              "implement; refusing rather than computing attention without it")


def _deberta_forward():
    def forward(self, hidden_states, attention_mask, output_attentions=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        """DisentangledSelfAttention.forward (transformers 5.24) up to the softmax, then the kernel."""
        import torch
        from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

        from precompute.kernels.probe import current_state
        from precompute.kernels.eager import attend

        state = current_state()
        site = state.enter(self)
        _refuse_unknown(self, query_states=query_states)
        if state.qk_edits(site.layer):
            raise KernelError("QK-subspace interventions are not defined for disentangled attention (DeBERTa): its "
                              "position terms share the query projection")
        heads = self.num_attention_heads
        query = self.transpose_for_scores(self.query_proj(hidden_states), heads)
        key = self.transpose_for_scores(self.key_proj(hidden_states), heads)
        value = self.transpose_for_scores(self.value_proj(hidden_states), heads)
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        scale = scaled_size_sqrt(query, scale_factor)
        scores = query @ (key.transpose(-1, -2) / scale.to(dtype=query.dtype))
        if self.relative_attention:
            rel = self.disentangled_attention_bias(query, key, relative_pos, self.pos_dropout(rel_embeddings), scale_factor)
            scores = scores + rel
        b, s = hidden_states.shape[:2]
        scores = scores.view(b, heads, s, s)
        scores = scores.masked_fill(~attention_mask.bool(), torch.finfo(query.dtype).min)
        out = attend(state, site.layer, scores.float(), value.view(b, heads, s, -1))  # [b, h, s, dv]
        return out.permute(0, 2, 1, 3).reshape(b, s, -1), None

    return forward


def _mpnet_forward():
    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        """MPNetSelfAttention.forward (transformers 5.24) up to the softmax, then the kernel, then its output projection."""
        from precompute.kernels.probe import current_state
        from precompute.kernels.eager import attend

        state = current_state()
        site = state.enter(self)
        _refuse_unknown(self, **kwargs)
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        q = self.q(hidden_states).view(shape).transpose(1, 2)
        k = self.k(hidden_states).view(shape).transpose(1, 2)
        v = self.v(hidden_states).view(shape).transpose(1, 2)
        q, correction = state.edit_queries(site.layer, q)  # QK-subspace interventions (precompute.analyses.subspace)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        if correction is not None:
            scores = scores + correction[..., None] / math.sqrt(self.attention_head_size)
        if position_bias is not None:
            scores = scores + position_bias
        if attention_mask is not None:
            scores = scores + attention_mask
        c = attend(state, site.layer, scores.float(), v)  # [b, h, s, dh]
        c = c.permute(0, 2, 1, 3).reshape(*hidden_states.shape[:-1], self.all_head_size)
        return (self.o(c),)

    return forward


@dataclass(frozen=True)
class SwappedEncoder(PairEncoder):
    """A pair encoder whose attention modules compute their softmax inline (DeBERTa-v2, MPNet)."""

    forward_factory: str = ""  # name of the swapped forward's factory in this module

    def swap(self, model, probe):
        return _swap_forwards(model, self, _FACTORIES[self.forward_factory])


@dataclass(frozen=True)
class DebertaV2(SwappedEncoder):
    """DeBERTa-v2/v3: disentangled attention, unless the config turns its relative attention off."""

    def position_of(self, config) -> str:
        super().position_of(config)
        return self.position if getattr(config, "relative_attention", False) else "absolute"


_FACTORIES = {"deberta": _deberta_forward, "mpnet": _mpnet_forward}

_BERT_PATHS = dict(layers_path="encoder.layer", attention_path="attention.self",
                   attention_output_path="attention.output.dense", mlp_output_path="output.dense")
_HEAD = dict(architectures=("ForSequenceClassification",), score=CLASSIFIER_SCORE)

BERT = PairEncoder(
    name="bert", models="BERT, MiniLM, RoBERTa, XLM-R, CamemBERT, ELECTRA",
    model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"), **_HEAD, **_BERT_PATHS,
    query_path="query", key_path="key",
)
DISTILBERT = PairEncoder(
    name="distilbert", models="DistilBERT", model_types=("distilbert",), **_HEAD,
    layers_path="transformer.layer", attention_path="attention", attention_output_path="attention.out_lin",
    mlp_output_path="ffn.lin2", query_path="q_lin", key_path="k_lin",
)
MODERNBERT = ModernBert(
    name="modernbert", models="ModernBERT (global and sliding-window local layers: the window is in the mask)",
    model_types=("modernbert",), **_HEAD, layers_path="layers", attention_path="attn", attention_output_path="attn.Wo",
    mlp_output_path="mlp.Wo", qkv_path="Wqkv", position="rotary",
)
DEBERTA_V2 = DebertaV2(
    name="deberta-v2", models="DeBERTa-v2/v3", model_types=("deberta-v2",), **_HEAD, **_BERT_PATHS,
    query_path="query_proj", key_path="key_proj", head_dim_key="attention_head_size", position="disentangled",
    attention="swap", forward_factory="deberta",
)
MPNET = SwappedEncoder(
    name="mpnet", models="MPNet", model_types=("mpnet",), **_HEAD, layers_path="encoder.layer",
    attention_path="attention.attn", attention_output_path="attention.attn.o", mlp_output_path="output.dense",
    query_path="q", key_path="k", position="bias", attention="swap", forward_factory="mpnet",
)
