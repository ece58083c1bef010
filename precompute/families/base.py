"""What a model family is: how its input is built, where its five segments are, how its score is read, how its
attention is reached, where its components sit, and every architecture fact the analyses need.

The family declares where each fact lives (TransformerLens-adapter style) and :meth:`Family.architecture` resolves
them from the loaded model: layers, heads (and the key/value heads of grouped-query attention), head size, hidden
size, the position kind, per-head q/k normalisation, the pooling position of the score and logit soft-capping;
:meth:`Family.qk_weights` gives each layer's query and key projections (fused ``Wqkv`` split) and
:meth:`Family.output_weights` each layer's attention output projection split per head and
:meth:`Family.pooling_positions` where the score is read. The analyses (spectra, QK subspaces, patching, the
ablation stage) read these, never a config key or a family name.

The store keeps five segment columns (``cls``, ``q``, ``sep1``, ``d``, ``sep2``) for every family; what they
mean is the family's :attr:`Family.segment_labels`, written in the manifest and shown by the app.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from precompute.kernels.site import Site


class FamilyError(ValueError):
    """A model the families cannot run faithfully (message is one line, for the CLI)."""


PAIR_LABELS = {"cls": "CLS", "q": "Query", "sep1": "SEP1", "d": "Document", "sep2": "SEP2"}
TEMPLATE_LABELS = {"cls": "Prefix", "q": "Query", "sep1": "Middle", "d": "Document", "sep2": "Suffix"}


@dataclass(frozen=True)
class Segments:
    """How a kind of input splits into the five segments: its name, the input in words, what each segment is called
    (the manifest's ``model.segment_labels``, shown by the app) and what it holds (docs/store.md)."""

    name: str
    input: str
    labels: dict[str, str]
    holds: dict[str, str]


PAIR_SEGMENTS = Segments(
    "pair template", "the tokenizer's pair template `[CLS] q [SEP] d [SEP]` (RoBERTa-style `<s> q </s></s> d </s>`)", PAIR_LABELS,
    {"cls": "CLS", "q": "query tokens", "sep1": "the separator(s) between them", "d": "document tokens",
     "sep2": "the final separator"})
TEMPLATE_SEGMENTS = Segments(
    "text template", "a text template (`--prompt-template`; each family's default is in README's model families)", TEMPLATE_LABELS,
    {"cls": "Prefix: template text before the query (with any BOS)", "q": "query tokens",
     "sep1": "Middle: template text between", "d": "document tokens",
     "sep2": "Suffix: template text after (with any EOS), up to the scoring position"})

# How positions enter the attention logits: what the QK spectra of a head describe depends on it.
POSITIONS = {
    "absolute": "absolute embeddings",
    "bias": "relative position bias on the logits",
    "disentangled": "disentangled (content-to-position terms)",
    "rotary": "rotary",
}
# Where the score reads the last hidden states (the position the cls patching experiment patches).
POOLINGS = {
    "first": "the first token ([CLS])",
    "last-non-pad": "the last token whose id is not the pad id (transformers' pooling)",
    "last": "the last attended token",
    "mean": "the mean over the tokens, no single position",
    "none": "the decoder's first step, not in the encoder",
}


# What a family's ``scores`` return: 'score' is pairs.score (the logit of one-label classifiers, the log-probability
# of relevance of two-way ones); 'logit' the relevance logit (one label) or the log-odds of the positive class
# against the negative one (two labels, two answer tokens), unbounded; 'probability' the probability of relevance
# (the sigmoid of the logit, the softmax of the positive class).
SCALES = ("score", "logit", "probability")


def two_way(logits, positive: int, scale: str):
    """[batch, 2] float32 logits of a two-way choice -> [batch] relevance of class ``positive`` on ``scale``."""
    import torch

    if scale == "score":
        return torch.log_softmax(logits, dim=-1)[:, positive]
    log_odds = logits[:, positive] - logits[:, 1 - positive]
    if scale == "logit":
        return log_odds
    if scale == "probability":
        return log_odds.sigmoid()
    raise ValueError(f"score scale {scale!r}: expected one of {', '.join(SCALES)}")


def module_at(root, path: str):
    """The submodule at a dotted ``path`` ('' = root itself); FamilyError naming the path when it is missing."""
    module = root
    for part in (p for p in path.split(".") if p):
        child = getattr(module, part, None)
        if child is None and part.isdigit() and hasattr(module, "__getitem__"):
            child = module[int(part)]
        if child is None:
            raise FamilyError(f"{type(root).__name__} has no submodule {path!r}; the architecture differs from its family's")
        module = child
    return module


def last_positions(attention_mask):
    """[batch] index of each row's last attended token, whichever side the padding is on."""
    import torch

    index = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (index * attention_mask.long()).argmax(-1)


@dataclass(frozen=True)
class Architecture:
    """The architecture facts of one loaded model, as its family resolves them (:meth:`Family.architecture`)."""

    layers: int  # attention layers summarised (the encoder's, for encoder-decoders)
    heads: int  # query heads per layer
    kv_heads: int  # key/value heads per layer (fewer than heads under grouped-query attention)
    head_dim: int  # size of one head's query and key vectors (the rank bound of its W_Q W_K^T)
    hidden: int  # hidden size (d_model)
    position: str  # how positions enter the logits: a key of POSITIONS
    qk_norm: tuple[str, ...]  # per-head query/key normalisations of the attention (Qwen3, Gemma-3); () when none
    pooling: str  # where the score is read: a key of POOLINGS
    logit_softcapping: float | None  # attention logit soft-capping (Gemma-2), None when none


@dataclass(frozen=True)
class QKWeights:
    """One layer's query and key projections as its attention computes them: Linear weights [out, in] and biases
    (views of the model's parameters; a fused projection split), and the key head each query head reads."""

    query: Any  # [heads * head_dim, hidden]
    key: Any  # [kv_heads * head_dim, hidden]
    query_bias: Any  # [heads * head_dim] or None
    key_bias: Any  # [kv_heads * head_dim] or None
    kv_head: Any  # [heads] long: query head h reads key head kv_head[h]


@dataclass(frozen=True)
class Family:
    """A reranker family. Subclasses say how to encode and score; the fields declare where things are and what the
    docs say (the family tables of README, docs/store.md and :mod:`precompute.families` are generated from them)."""

    name: str
    models: str  # which models, in words (docs)
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]  # class-name suffixes the family loads, e.g. ('ForSequenceClassification',)
    score: str  # what the score is, in words (docs)
    layers_path: str  # dotted path, from the model's base model, of the ModuleList of layers
    attention_path: str  # within a layer: the module whose attention the kernels compute
    attention_output_path: str  # within a layer: the attention block's output projection W_O (before its residual add),
    # an nn.Linear reading the heads' outputs concatenated head-major (output_weights splits it per head)
    mlp_output_path: str  # within a layer: the MLP block's output projection (before its residual add)
    query_path: str = ""  # within the attention module: the query projection (nn.Linear); "" when fused
    key_path: str = ""  # within the attention module: the key projection (nn.Linear); "" when fused
    qkv_path: str = ""  # within the attention module: a fused [query; key; value] projection (ModernBERT's Wqkv)
    qk_norm_paths: tuple[str, ...] = ()  # within the attention module: per-head q/k norms, where a model has them
    head_dim_key: str = "head_dim"  # config key of the head size (hidden // heads where the config has none)
    position: str = "absolute"  # how positions enter the logits (POSITIONS)
    pooling: str = "first"  # where the score is read (POOLINGS)
    segments: Segments = PAIR_SEGMENTS
    causal: bool = False
    attention: str = "interface"  # 'interface' (AttentionInterface) or 'swap' (the attention module's forward)
    attention_note: str = ""  # what else the kernels apply or summarise (docs)
    input: str = ""  # the default input in words, where the default template is too long to show (docs)
    default_template: str | None = None  # text template (template families)
    answer_tokens: tuple[str, str] | None = None  # (positive, negative) token strings of generative scorers

    @property
    def segment_labels(self) -> dict[str, str]:
        return dict(self.segments.labels)

    # -- the model ---------------------------------------------------------------------------------
    def auto_class(self):
        """The transformers Auto class that loads this family's models."""
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def settings(self, tokenizer, template: str | None, answer_tokens: tuple[str, str] | None) -> "FamilySettings":
        """The run's template and answer tokens, resolved against the tokenizer; FamilyError when they do not fit."""
        if template is not None or answer_tokens is not None:
            raise FamilyError(f"family {self.name} takes its input from the tokenizer's pair template; "
                              "--prompt-template and --answer-tokens are for template families (MonoT5, decoders)")
        return FamilySettings()

    def check(self, lm) -> None:
        """Refuse, in one line, a model or tokenizer this family cannot score faithfully (before any work): every
        architecture fact must resolve."""
        self.qk_weights(lm.model)

    def layers(self, model) -> list:
        return list(module_at(model.base_model, self.layers_path))

    def component_modules(self, model) -> dict[tuple[str, int], Any]:
        """(kind, layer) -> module of every layer's output ('resid'), attention block output projection ('attn') and
        MLP block output projection ('mlp'): where component ablations and activation patching hook in."""
        out = {}
        for i, layer in enumerate(self.layers(model)):
            out[("resid", i)] = layer
            out[("attn", i)] = module_at(layer, self.attention_output_path)
            out[("mlp", i)] = module_at(layer, self.mlp_output_path)
        return out

    def attention_sites(self, model) -> list[tuple[Any, Site]]:
        """(attention module, site) of every layer: the probes map kernel calls to layers through these."""
        return [(module_at(layer, self.attention_path), Site("self", i)) for i, layer in enumerate(self.layers(model))]

    def self_attentions(self, model) -> list:
        """The self-attention module of every summarised layer, in layer order."""
        return [module for module, site in self.attention_sites(model) if site.role == "self"]

    def swap(self, model, probe) -> contextlib.AbstractContextManager:
        """Swap-family hook: replace each attention module's forward for the ``with`` block (see kernels.probe)."""
        raise FamilyError(f"family {self.name} reaches attention through AttentionInterface, not by swapping")

    def sdpa_ablation(self, model) -> bool:
        """Whether the SDPA ablation kernel computes this model's attention exactly: it is reached through the
        interface and has no logit soft-capping (which SDPA cannot express)."""
        return self.attention == "interface" and self.architecture(model).logit_softcapping is None

    # -- architecture facts ----------------------------------------------------------------------------
    def architecture(self, model) -> Architecture:
        """Every architecture fact of ``model`` (read from its config through transformers' standard names, which
        each config class maps to its own keys, and from the modules the paths declare); FamilyError when the
        model does not have them."""
        config = model.config
        layers, heads = len(self.layers(model)), int(config.num_attention_heads)
        if layers < 1 or heads < 1:
            raise FamilyError(f"it has {layers} attention layers of {heads} heads; a reranker has at least one of "
                              "each: its config.json is damaged (num_hidden_layers, num_attention_heads)")
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        if heads % kv_heads:
            raise FamilyError(f"its {heads} query heads do not share its {kv_heads} key/value heads evenly")
        hidden = int(config.hidden_size)
        head_dim = int(getattr(config, self.head_dim_key, None) or hidden // heads)
        attention = self.self_attentions(model)[0]
        norms = tuple(path for path in self.qk_norm_paths if getattr(attention, path, None) is not None)
        softcap = getattr(config, "attn_logit_softcapping", None)
        return Architecture(layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, hidden=hidden,
                            position=self.position_of(config), qk_norm=norms, pooling=self.pooling_of(config),
                            logit_softcapping=None if softcap is None else float(softcap))

    def position_of(self, config) -> str:
        """How positions enter this model's logits (the declared kind, unless the config changes it)."""
        return self.position

    def pooling_of(self, config) -> str:
        """Where this model's score is read (the declared kind, unless the config changes it)."""
        return self.pooling

    def qk_weights(self, model) -> list[QKWeights]:
        """The query and key projections of every summarised layer (module docstring); FamilyError when a declared
        projection is missing or its shape disagrees with the architecture's heads and head size."""
        import torch

        arch = self.architecture(model)
        q_rows, k_rows = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
        kv_head = torch.arange(arch.heads) // (arch.heads // arch.kv_heads)  # as transformers' repeat_kv
        out = []
        for i, attention in enumerate(self.self_attentions(model)):
            if self.qkv_path:
                fused = module_at(attention, self.qkv_path)
                w, b = fused.weight.detach(), None if fused.bias is None else fused.bias.detach()
                query, key = w[:q_rows], w[q_rows : q_rows + k_rows]
                q_bias, k_bias = (None, None) if b is None else (b[:q_rows], b[q_rows : q_rows + k_rows])
            else:
                q, k = module_at(attention, self.query_path), module_at(attention, self.key_path)
                query, key = q.weight.detach(), k.weight.detach()
                q_bias = None if q.bias is None else q.bias.detach()
                k_bias = None if k.bias is None else k.bias.detach()
            if tuple(query.shape) != (q_rows, arch.hidden) or tuple(key.shape) != (k_rows, arch.hidden):
                raise FamilyError(f"layer {i}: query {tuple(query.shape)} and key {tuple(key.shape)} projections do not "
                                  f"give {arch.heads} query and {arch.kv_heads} key heads of {arch.head_dim} over a "
                                  f"hidden size of {arch.hidden}; the architecture differs from its family's")
            out.append(QKWeights(query, key, q_bias, k_bias, kv_head))
        return out

    def output_weights(self, model) -> list:
        """Each summarised layer's attention output projection split per head: [heads, hidden, head_dim] per layer,
        where head h's slice W_O^h maps that head's attention output (its value vectors' weighted sum) into the
        residual stream. The projection (``attention_output_path``, an nn.Linear [hidden, heads * head_dim]) reads the
        heads' outputs concatenated head-major, as every family's attention lays them out (under grouped-query
        attention too: each query head has its own slice, reading the value head it shares); its bias is added once
        per token, not per attended token, so it is not part of any head's slice. FamilyError when the projection's
        shape disagrees with the architecture."""
        arch = self.architecture(model)
        out = []
        for i, layer in enumerate(self.layers(model)):
            weight = module_at(layer, self.attention_output_path).weight.detach()
            if tuple(weight.shape) != (arch.hidden, arch.heads * arch.head_dim):
                raise FamilyError(f"layer {i}: the attention output projection {tuple(weight.shape)} does not read "
                                  f"{arch.heads} heads of {arch.head_dim} into a hidden size of {arch.hidden}; the "
                                  "architecture differs from its family's")
            out.append(weight.view(arch.hidden, arch.heads, arch.head_dim).permute(1, 0, 2))
        return out

    def check_pooling(self, model) -> None:
        """FamilyError when the score is read at no single position of the summarised layers."""
        kind = self.architecture(model).pooling
        if kind not in ("first", "last-non-pad", "last"):
            raise FamilyError(f"{self.name} models have no pooling position: their score is read at {POOLINGS[kind]}")

    def pooling_positions(self, model, inputs) -> Any:
        """[batch] position each row's score is read at (``inputs``: the model inputs, padded either side);
        FamilyError when there is no single one."""
        import torch

        self.check_pooling(model)
        mask = inputs["attention_mask"]
        kind = self.architecture(model).pooling
        if kind == "first":
            return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        pad = model.config.get_text_config().pad_token_id
        if kind == "last" or pad is None:
            return last_positions(mask)
        index = torch.arange(mask.shape[1], device=mask.device)  # 'last-non-pad': transformers' pooling
        return (index * (inputs["input_ids"] != pad).long()).argmax(-1)

    # -- input and score -------------------------------------------------------------------------------
    def encode(self, lm, queries: list[str], docs: list[str], max_length: int):
        """An :class:`~precompute.families.segments.EncodedBatch` of the pairs (on the CPU)."""
        raise NotImplementedError

    def token_lengths(self, lm, queries: list[str], docs: list[str], max_length: int) -> list[int]:
        """Token count of each pair's input (at most ``max_length``): batches group pairs of similar length."""
        return self.encode(lm, queries, docs, max_length).inputs["attention_mask"].sum(1).tolist()

    def scores(self, lm, batch, scale: str = "score"):
        """[batch] float32 relevance scores of one forward pass of ``batch`` (run inside a probe, or plain), on
        ``scale`` (:data:`SCALES`: pairs.score by default)."""
        raise NotImplementedError

    def score_kind(self, lm) -> str:
        """What pairs.score is, as recorded in the manifest (names.SCORE_KINDS)."""
        raise NotImplementedError

    def describe(self, lm) -> dict[str, Any]:
        """The family's part of the manifest's model section."""
        return {"family": self.name, "segment_labels": dict(self.segment_labels), "causal": self.causal,
                "attention": self.attention, **lm.settings.describe()}


@dataclass(frozen=True)
class FamilySettings:
    """What a run fixes about a family's input and score: the template and the answer tokens (template families),
    resolved against the tokenizer (token ids) when the model loads."""

    template: str | None = None
    answer_tokens: tuple[str, str] | None = None
    answer_ids: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.template is not None:
            out["template"] = self.template
        if self.answer_tokens is not None:
            out["answer_tokens"] = list(self.answer_tokens)
            out["answer_ids"] = list(self.answer_ids or ())
        return out
