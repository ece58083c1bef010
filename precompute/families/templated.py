"""Template families: the input is a text prompt (``Query: {query} Document: {document} Relevant:``), its five
segments are prefix, query, middle, document and suffix (:func:`precompute.families.segments.encode_template`), and the
score is read off the model's output tokens.

* ``monot5``: T5ForConditionalGeneration (MonoT5). Relevance = log-softmax over {"true", "false"} of "true" at
  the first decoder step. Encoder self-attention is summarised and ablated like any encoder (T5's relative
  position bias applied); the decoder's cross-attention from its scoring position onto the encoder's five
  segments is summarised on its own (``decoder_cross_attention`` table).
* ``decoder-classifier``: decoder-only ``*ForSequenceClassification`` rerankers (RankLLaMA style; Llama, Qwen2/3,
  Mistral, Gemma, Gemma-2), scored by the model's classification head where transformers pools it (the last token
  that is not padding by id), so the stored score is the model's own output.
* ``qwen-yes-no`` / ``yes-no``: decoder-only ``*ForCausalLM`` rerankers (Qwen3-Reranker style): an instruction
  template, score = log-softmax over {yes, no} of "yes" at the last position.

Decoders are causal: a segment cannot attend to a later one (``Family.causal``). The answer tokens of a
generative scorer are recorded in the manifest with their ids; a tokenizer where either is not one token is
refused before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

from precompute.families.base import TEMPLATE_SEGMENTS, Family, FamilyError, FamilySettings, module_at, two_way
from precompute.families.encoders import CLASSIFIER_SCORE, classifier_relevance
from precompute.kernels.site import Site

ANSWER_SCORE = "log_softmax[answer]"  # names.SCORE_KINDS: log-probability of the positive answer token vs the negative


def _substitute_specials(template: str, tokenizer) -> str:
    """``{bos}`` / ``{eos}`` in a template -> the tokenizer's own special token text (FamilyError if it has none)."""
    for slot, name in (("{bos}", "bos_token"), ("{eos}", "eos_token")):
        if slot in template:
            token = getattr(tokenizer, name, None)
            if not token:
                raise FamilyError(f"the template uses {slot} but the tokenizer has no {name}")
            template = template.replace(slot, token)
    return template


def _answer_ids(tokenizer, tokens: tuple[str, str]) -> tuple[int, int]:
    ids = []
    for token in tokens:
        got = tokenizer.encode(token, add_special_tokens=False)
        if len(got) != 1:
            raise FamilyError(f"answer token {token!r} is {len(got)} tokens for this tokenizer ({got}); a generative "
                              "scorer needs single-token answers: pass --answer-tokens with ones that are")
        ids.append(got[0])
    if ids[0] == ids[1]:
        raise FamilyError(f"answer tokens {tokens!r} map to the same id {ids[0]}")
    return ids[0], ids[1]


def decoder_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over attended tokens only, so a left-padded row has the positions of its unpadded self."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class TemplateFamily(Family):
    def settings(self, tokenizer, template, answer_tokens) -> FamilySettings:
        from precompute.families.segments import split_template

        template = template if template is not None else self.default_template
        try:
            split_template(_substitute_specials(template, tokenizer))
        except ValueError as err:  # a template without both slots, or with them out of order
            raise FamilyError(str(err)) from err
        if self.answer_tokens is None:
            if answer_tokens is not None:
                raise FamilyError(f"family {self.name} scores with a classification head; --answer-tokens does not apply")
            return FamilySettings(template=template)
        tokens = tuple(answer_tokens) if answer_tokens is not None else self.answer_tokens
        return FamilySettings(template=template, answer_tokens=tokens, answer_ids=_answer_ids(tokenizer, tokens))

    def encode(self, lm, queries, docs, max_length):
        from precompute.families.segments import encode_template

        return encode_template(lm.tokenizer, _substitute_specials(lm.settings.template, lm.tokenizer), queries, docs,
                               max_length)

    def score_kind(self, lm) -> str:
        return ANSWER_SCORE if self.answer_tokens is not None else ("logit" if lm.model.config.num_labels == 1
                                                                     else "log_softmax[1]")


def _answer_relevance(logits: torch.Tensor, ids: tuple[int, int], scale: str = "score") -> torch.Tensor:
    """[batch, vocab] -> [batch] float32 on ``scale``: the score is the log-softmax over the two answer tokens, of the
    positive one."""
    return two_way(logits[:, list(ids)].float(), 0, scale)


@dataclass(frozen=True)
class MonoT5(TemplateFamily):
    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def attention_sites(self, model):
        sites = [(module_at(block, self.attention_path), Site("self", i))
                 for i, block in enumerate(module_at(model, "encoder.block"))]
        for i, block in enumerate(module_at(model, "decoder.block")):
            sites.append((module_at(block, "layer.0.SelfAttention"), Site("decoder", i)))
            sites.append((module_at(block, "layer.1.EncDecAttention"), Site("cross", i)))
        return sites

    def scores(self, lm, batch, scale="score"):
        import torch
        inputs = batch.inputs
        start = lm.model.config.decoder_start_token_id
        decoder = torch.full((inputs["input_ids"].shape[0], 1), start, dtype=torch.long, device=inputs["input_ids"].device)
        logits = lm.model(**inputs, decoder_input_ids=decoder, use_cache=False).logits[:, 0]  # [batch, vocab]: the first decoder step
        return _answer_relevance(logits, lm.settings.answer_ids, scale)


@dataclass(frozen=True)
class DecoderClassifier(TemplateFamily):
    """``*ForSequenceClassification`` decoders: the head applied where transformers pools (the last token that is
    not padding by id: with pad == eos and a template ending in eos, the token before it), so the score is the
    model's own ``model(**inputs).logits``."""

    def check(self, lm) -> None:
        import torch
        super().check(lm)
        if not isinstance(getattr(lm.model, "score", None), torch.nn.Linear):
            raise FamilyError(f"{type(lm.model).__name__} has no linear 'score' head over the hidden states; "
                              "decoder classifiers are read at the last token through it")
        if lm.model.config.num_labels not in (1, 2):
            raise FamilyError(f"model has {lm.model.config.num_labels} labels; a reranker has 1 or 2")

    def scores(self, lm, batch, scale="score"):
        import torch
        mask = batch.inputs["attention_mask"]
        hidden = lm.model.base_model(**batch.inputs, position_ids=decoder_position_ids(mask), use_cache=False).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), self.pooling_positions(lm.model, batch.inputs)]
        return classifier_relevance(lm.model.score(pooled), scale)


@dataclass(frozen=True)
class YesNoLM(TemplateFamily):
    """``*ForCausalLM`` decoders with a prompt: the answer tokens' logits at each row's last attended token."""

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def scores(self, lm, batch, scale="score"):
        import torch
        mask = batch.inputs["attention_mask"]
        last = self.pooling_positions(lm.model, batch.inputs)
        keep, where = torch.unique(last, return_inverse=True)  # the model's own head (soft-capping included), only there
        logits = lm.model(**batch.inputs, position_ids=decoder_position_ids(mask), logits_to_keep=keep,
                          use_cache=False).logits
        return _answer_relevance(logits[torch.arange(len(last), device=logits.device), where], lm.settings.answer_ids,
                                 scale)


_DECODER_PATHS = dict(layers_path="layers", attention_path="self_attn", attention_output_path="self_attn.o_proj",
                      mlp_output_path="mlp.down_proj", query_path="q_proj", key_path="k_proj",
                      qk_norm_paths=("q_norm", "k_norm"), position="rotary", causal=True, segments=TEMPLATE_SEGMENTS,
                      attention_note="grouped-query heads, sliding windows and logit soft-capping applied")
DECODER_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2")

MONOT5 = MonoT5(
    name="monot5", models="T5 / mT5 (MonoT5)", model_types=("t5", "mt5"), architectures=("ForConditionalGeneration",),
    score="log-softmax over {`true`, `false`} of `true`",
    layers_path="encoder.block", attention_path="layer.0.SelfAttention", attention_output_path="layer.0.SelfAttention.o",
    mlp_output_path="layer.1.DenseReluDense.wo", query_path="q", key_path="k", position="bias", pooling="none",
    segments=TEMPLATE_SEGMENTS,
    attention_note="T5's position bias applied; the decoder's cross-attention onto the five segments in "
                   "`decoder_cross_attention`",
    default_template="Query: {query} Document: {document} Relevant:", answer_tokens=("true", "false"),
)
DECODER_CLASSIFIER = DecoderClassifier(
    name="decoder-classifier", models="Llama, Qwen2/3, Mistral, Gemma, Gemma-2 (RankLLaMA style)",
    model_types=DECODER_TYPES, architectures=("ForSequenceClassification",),
    score=CLASSIFIER_SCORE, **_DECODER_PATHS,
    pooling="last-non-pad", default_template="query: {query} document: {document}{eos}",
)
QWEN_YES_NO = YesNoLM(
    name="qwen-yes-no", models="Qwen2/3 (Qwen3-Reranker style)", model_types=("qwen2", "qwen3"),
    architectures=("ForCausalLM",), score="log-softmax over {`yes`, `no`} of `yes`",
    **_DECODER_PATHS, pooling="last", input="Qwen3-Reranker's instruction template",
    default_template=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: "
        "Given a web search query, retrieve relevant passages that answer the query\n<Query>: {query}\n<Document>: "
        "{document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ),
    answer_tokens=("yes", "no"),
)
YES_NO = YesNoLM(
    name="yes-no", models="Llama, Mistral, Gemma, Gemma-2", model_types=("llama", "mistral", "gemma", "gemma2"),
    architectures=("ForCausalLM",), score="log-softmax over {` yes`, ` no`} of ` yes`",
    **_DECODER_PATHS, pooling="last",
    default_template="Query: {query}\nDocument: {document}\nIs the document relevant to the query? Answer yes or no.\nAnswer:",
    answer_tokens=(" yes", " no"),
)
