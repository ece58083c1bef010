"""Model families: which rerankers the atlas runs, and how (:class:`~precompute.families.base.Family`).

A family is picked from the model's config (``model_type`` and the architecture's class name); a model no
family knows is refused in one line naming the supported families, before any work.

| family | models | input | score |
| --- | --- | --- | --- |
| bert | BERT, MiniLM, RoBERTa, XLM-R, CamemBERT, ELECTRA | pair template | classification head |
| distilbert | DistilBERT | pair template | classification head |
| modernbert | ModernBERT | pair template | classification head |
| deberta-v2 | DeBERTa-v2/v3 | pair template | classification head |
| mpnet | MPNet | pair template | classification head |
| monot5 | T5 / mT5 (MonoT5) | text template | true vs false, first decoder step |
| decoder-classifier | Llama, Qwen2/3, Mistral, Gemma(-2) ``*ForSequenceClassification`` | text template | head at the last token |
| qwen-yes-no, yes-no | the same decoders as ``*ForCausalLM`` | text template | yes vs no, last token |

Adding a family: one instance (of an existing class, or a small subclass) plus its entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from precompute.families.base import Architecture, Family, FamilyError, FamilySettings, QKWeights
from precompute.families.encoders import BERT, DEBERTA_V2, DISTILBERT, MODERNBERT, MPNET
from precompute.families.templated import DECODER_CLASSIFIER, MONOT5, QWEN_YES_NO, YES_NO

FAMILIES: tuple[Family, ...] = (BERT, DISTILBERT, MODERNBERT, DEBERTA_V2, MPNET, MONOT5, DECODER_CLASSIFIER,
                                QWEN_YES_NO, YES_NO)
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

__all__ = ["FAMILIES", "BY_NAME", "Architecture", "Family", "FamilyError", "FamilySettings", "QKWeights", "family_for",
           "supported"]


def supported() -> str:
    """One line naming every family and its model types."""
    return "; ".join(f"{f.name} ({', '.join(f.model_types)}, *{'/*'.join(f.architectures)})" for f in FAMILIES)


def family_for(config, architecture: str | None = None) -> Family:
    """The family of a model config (``architecture``: the class of a model built in code, whose config names
    none); FamilyError (naming the supported families) when none fits."""
    model_type = getattr(config, "model_type", None)
    archs = list(getattr(config, "architectures", None) or ([architecture] if architecture else []))
    if not archs:
        raise FamilyError(f"the model's config.json names no architectures (model_type {model_type!r}), so its head "
                          "cannot be known; add the architecture, e.g. \"architectures\": [\"BertForSequenceClassification\"]")
    same_type = [f for f in FAMILIES if model_type in f.model_types]
    for family in same_type:
        if any(a.endswith(family.architectures) for a in archs):
            return family
    if same_type:
        heads = " or ".join(f"*{a} ({f.name})" for f in same_type for a in f.architectures)
        raise FamilyError(f"the model is a {archs[0]}, not a sequence-classification cross-encoder or generative "
                          f"reranker of its type (no scoring head): a {model_type} model runs as {heads}")
    raise FamilyError(f"no model family runs a {archs[0]} (model_type {model_type!r}); supported: {supported()}")
