"""What a model family is: how its input is built, where its five segments are, how its score is read, how its
attention is reached, and where its components sit.

The store keeps five segment columns (``cls``, ``q``, ``sep1``, ``d``, ``sep2``) for every family; what they
mean is the family's :attr:`Family.segment_labels`, written in the manifest and shown by the app.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from precompute.kernels.state import Site


class FamilyError(ValueError):
    """A model the families cannot run faithfully (message is one line, for the CLI)."""


PAIR_LABELS = {"cls": "CLS", "q": "Query", "sep1": "SEP1", "d": "Document", "sep2": "SEP2"}
TEMPLATE_LABELS = {"cls": "Prefix", "q": "Query", "sep1": "Middle", "d": "Document", "sep2": "Suffix"}


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


@dataclass(frozen=True)
class Family:
    """A reranker family. Subclasses say how to encode and score; the paths say where things are."""

    name: str
    description: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]  # class-name suffixes the family loads, e.g. ('ForSequenceClassification',)
    layers_path: str  # dotted path, from the model's base model, of the ModuleList of layers
    attention_path: str  # within a layer: the module whose attention the kernels compute
    attention_output_path: str  # within a layer: the attention block's output projection (before its residual add)
    mlp_output_path: str  # within a layer: the MLP block's output projection (before its residual add)
    segment_labels: dict[str, str] = field(default_factory=lambda: dict(PAIR_LABELS))
    causal: bool = False
    attention: str = "interface"  # 'interface' (AttentionInterface) or 'swap' (the attention module's forward)
    default_template: str | None = None  # text template (template families)
    answer_tokens: tuple[str, str] | None = None  # (positive, negative) token strings of generative scorers

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
        """Refuse, in one line, a model or tokenizer this family cannot score faithfully (before any work)."""

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

    def swap(self, model, probe) -> contextlib.AbstractContextManager:
        """Swap-family hook: replace each attention module's forward for the ``with`` block (see kernels.probe)."""
        raise FamilyError(f"family {self.name} reaches attention through AttentionInterface, not by swapping")

    def sdpa_ablation(self, model) -> bool:
        """Whether the SDPA ablation kernel computes this model's attention exactly: it is reached through the
        interface and has no logit soft-capping (which SDPA cannot express)."""
        return self.attention == "interface" and getattr(model.config, "attn_logit_softcapping", None) is None

    def shape(self, model) -> tuple[int, int]:
        """(layers, heads) of the summarised attention."""
        return len(self.layers(model)), int(model.config.num_attention_heads)

    # -- input and score -------------------------------------------------------------------------------
    def encode(self, lm, queries: list[str], docs: list[str], max_length: int):
        """An :class:`~precompute.families.segments.EncodedBatch` of the pairs (on the CPU)."""
        raise NotImplementedError

    def token_lengths(self, lm, queries: list[str], docs: list[str], max_length: int) -> list[int]:
        """Token count of each pair's input (at most ``max_length``): batches group pairs of similar length."""
        return self.encode(lm, queries, docs, max_length).inputs["attention_mask"].sum(1).tolist()

    def scores(self, lm, batch):
        """[batch] float32 relevance scores of one forward pass of ``batch`` (run inside a probe, or plain)."""
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
