"""Every registered family resolves every architecture fact it declares on its tiny models, and each fact agrees with
an independent source: what the model's own attention is called with, the modules the model holds, transformers'
own pooling and grouped-query mapping."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from precompute.families import FAMILIES, FamilyError
from precompute.families.base import POOLINGS, POSITIONS, last_positions
from precompute.families.loading import load
from tests.tiny_families import FAMILY_KINDS, build_family
from tests.tiny_models import DOCS, QUERIES, build

MAX_LENGTH = 160
KINDS = [(f.name, kind) for f in FAMILIES for kind in FAMILY_KINDS.get(f.name, ())] + [("bert", "bert"), ("bert", "roberta")]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(kind)
            (build if kind in ("bert", "roberta") else build_family)(kind, folder)
            cache[kind] = load(str(folder), device="cpu", progress=False)
        return cache[kind]

    return get


def test_every_registered_family_has_a_tiny_model_and_declares_known_kinds():
    assert set(FAMILY_KINDS) == {f.name for f in FAMILIES}
    for f in FAMILIES:
        assert f.position in POSITIONS and f.pooling in POOLINGS, f.name
        assert bool(f.qkv_path) != bool(f.query_path and f.key_path), f"{f.name}: separate or fused q/k, not both"


@contextlib.contextmanager
def _captured_attention(model, modules):
    """Record what the model's own attention modules are called with: their hidden-state input (a pre-hook) and the
    query, key and keyword arguments transformers hands to the attention function (its eager function, unchanged)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    calls: dict[int, dict] = {}

    def attention(module, query, key, value, attention_mask, **kwargs):
        calls.setdefault(id(module), {}).update(query=query, key=key, kwargs=kwargs)
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, attention_mask, **kwargs)

    def pre_hook(module, args, kwargs):
        calls.setdefault(id(module), {})["hidden"] = args[0] if args else kwargs["hidden_states"]

    AttentionInterface.register("atlas_test_capture", attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("atlas_test_capture", eager_mask)
    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in modules]
    previous = model.config._attn_implementation
    model.set_attn_implementation("atlas_test_capture")
    try:
        yield calls
    finally:
        model.set_attn_implementation(previous or "eager")
        for handle in handles:
            handle.remove()


def _own_logits(lm, inputs):
    """The model's own forward (MonoT5: its first decoder step)."""
    model = lm.model
    if lm.family.name == "monot5":
        start = torch.full((len(inputs["input_ids"]), 1), model.config.decoder_start_token_id)
        return model(**inputs, decoder_input_ids=start, use_cache=False).logits
    return model(**inputs, use_cache=False).logits if lm.family.causal else model(**inputs).logits


def _position_evidence(model) -> str:
    """How positions enter, from the modules the model holds (not from the family's declaration)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if "rotary_emb" in names:
        return "rotary"
    if "rel_embeddings" in names:
        return "disentangled"
    if "relative_attention_bias" in names:
        return "bias"
    return "absolute"


@pytest.mark.parametrize("family,kind", KINDS, ids=[k for _, k in KINDS])
def test_every_fact_resolves_and_agrees_with_the_model(family, kind, loaded):
    lm = loaded(kind)
    model, arch = lm.model, lm.architecture
    assert lm.family.name == family
    attentions = lm.family.self_attentions(model)
    weights = lm.family.qk_weights(model)
    assert arch.layers == len(attentions) == len(weights) == model.config.num_hidden_layers
    assert arch.position == _position_evidence(model)
    for attention, w in zip(attentions, weights):
        norms = {name for name, child in attention.named_children() if "Norm" in type(child).__name__}
        assert set(arch.qk_norm) == norms
        params = [p for p in attention.parameters()]
        for tensor in (w.query, w.key, w.query_bias, w.key_bias):  # views of the module's own parameters
            if tensor is not None:
                assert any(p.data_ptr() <= tensor.data_ptr() < p.data_ptr() + p.numel() * p.element_size()
                           for p in params)
        assert w.query.shape == (arch.heads * arch.head_dim, arch.hidden)
        assert w.key.shape == (arch.kv_heads * arch.head_dim, arch.hidden)
    if arch.kv_heads < arch.heads:  # which key head each query head reads, as transformers' repeat_kv expands them
        from transformers.models.llama.modeling_llama import repeat_kv

        marks = torch.arange(arch.kv_heads, dtype=torch.float32)[None, :, None, None]
        assert weights[0].kv_head.tolist() == repeat_kv(marks, arch.heads // arch.kv_heads)[0, :, 0, 0].long().tolist()
    else:
        assert weights[0].kv_head.tolist() == list(range(arch.heads))

    batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
    if lm.family.attention == "swap":  # the swapped families' own forward reads these module fields
        assert (arch.heads, arch.head_dim) == (attentions[0].num_attention_heads, attentions[0].attention_head_size)
    else:
        with _captured_attention(model, attentions) as calls, torch.no_grad():
            _own_logits(lm, batch.inputs)
        assert [id(a) for a in attentions if "query" in calls.get(id(a), {})] == [id(a) for a in attentions]
        for attention, w in zip(attentions, weights):
            call = calls[id(attention)]
            x = call["hidden"][:, 0]  # position 0: rotary embeddings leave it unrotated
            assert call["query"].shape[1:] == (arch.heads, batch.segments.shape[1], arch.head_dim)
            assert call["key"].shape[1] == arch.kv_heads and x.shape[-1] == arch.hidden
            for proj, bias, heads, got, norm in ((w.query, w.query_bias, arch.heads, call["query"], "q_norm"),
                                                 (w.key, w.key_bias, arch.kv_heads, call["key"], "k_norm")):
                want = (x @ proj.T + (0 if bias is None else bias)).view(len(x), heads, arch.head_dim)
                if arch.qk_norm:
                    want = getattr(attention, norm)(want)
                torch.testing.assert_close(got[:, :, 0], want, atol=1e-5, rtol=1e-5)
            assert call["kwargs"].get("softcap") == arch.logit_softcapping

    _check_pooling(lm, batch)


def _last_layer_noise(lm, positions: torch.Tensor):
    """Add noise to the last summarised layer's output at ``positions`` ([batch, seq] bool), for a ``with`` block."""
    layer = lm.family.layers(lm.model)[-1]

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        noisy = hidden + 3.0 * positions[..., None] * torch.randn_like(hidden)
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    return layer.register_forward_hook(hook)


def _check_pooling(lm, batch):
    """The pooling position is where the model's own output reads the last hidden states: noise everywhere else
    leaves the model's own logits unchanged, noise there changes them."""
    inputs = batch.inputs
    if lm.architecture.pooling in ("mean", "none"):
        with pytest.raises(FamilyError, match="no pooling position"):
            lm.family.pooling_positions(lm.model, inputs)
        return
    pooled = lm.family.pooling_positions(lm.model, inputs)
    if lm.architecture.pooling == "last":  # the answer is read at the last token of the prompt
        assert pooled.tolist() == (inputs["attention_mask"].sum(1) - 1).tolist()
    rows = torch.arange(len(pooled))

    def read(logits):
        return logits[rows, pooled] if logits.dim() == 3 else logits  # LM heads: the logits at the pooled position

    at = torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
    at[rows, pooled] = True
    with torch.no_grad():
        plain = read(_own_logits(lm, inputs))
        for where, changes in ((~at, False), (at, True)):
            handle = _last_layer_noise(lm, where)
            try:
                noisy = read(_own_logits(lm, inputs))
            finally:
                handle.remove()
            assert bool((noisy - plain).abs().max() > 1e-3) == changes, f"noise {'at' if changes else 'off'} pooling"


def test_decoder_classifier_with_pad_equal_to_eos_stores_the_models_own_score(tmp_path):
    """pad == eos and a template ending in eos: transformers pools the token before the eos, and so does the family,
    so the stored score is the model's own ``model(**inputs).logits``."""
    lm = load(str(build_family("llama-cls", tmp_path, pad_is_eos=True)), device="cpu", progress=False)
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token and lm.settings.template.endswith("{eos}")
    batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
    pooled = lm.family.pooling_positions(lm.model, batch.inputs)
    assert (pooled == last_positions(batch.inputs["attention_mask"]) - 1).all()  # the token before each row's eos
    with torch.no_grad():
        own = lm.model(**batch.inputs, use_cache=False).logits[:, 0]
        stored = lm.family.scores(lm, batch)
    torch.testing.assert_close(stored, own, atol=1e-5, rtol=0)


def _in_code(kind: str):
    """Models built in code whose head size is not hidden // heads (the config's head_dim / d_kv decides)."""
    import transformers as T

    torch.manual_seed(0)
    if kind == "monot5":
        return T.T5ForConditionalGeneration(T.T5Config(vocab_size=50, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                                       num_heads=4, decoder_start_token_id=0))
    config = T.Qwen3Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, intermediate_size=64, pad_token_id=0)
    return T.Qwen3ForSequenceClassification(config)


@pytest.mark.parametrize("kind", ["monot5", "qwen3-cls"])
def test_head_size_comes_from_the_config_where_it_is_not_hidden_over_heads(kind):
    from precompute.families import family_for

    model = _in_code(kind).eval()
    family = family_for(model.config, architecture=type(model).__name__)
    arch = family.architecture(model)
    assert arch.head_dim == 16 and arch.heads * arch.head_dim == 64 != arch.hidden
    w = family.qk_weights(model)[1]
    assert w.query.shape == (64, 32) and w.key.shape == (arch.kv_heads * 16, 32)
    assert w.kv_head.tolist() == [0, 0, 0, 0] if kind == "qwen3-cls" else list(range(4))


def test_a_bert_config_asking_for_relative_positions_is_refused(tmp_path):
    """transformers no longer implements position_embedding_type relative_key: the checkpoint would silently run
    with absolute positions, not as trained."""
    import json

    from precompute.families.loading import ModelError

    folder = build("bert", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    with pytest.raises(ModelError, match="position_embedding_type='relative_key'") as err:
        load(str(folder), device="cpu", progress=False)
    assert "\n" not in str(err.value)


def test_modernbert_mean_pooling_has_no_pooling_position():
    import transformers as T

    from precompute.families import BY_NAME

    model = T.ModernBertForSequenceClassification(T.ModernBertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        classifier_pooling="mean", pad_token_id=0))
    assert BY_NAME["modernbert"].architecture(model).pooling == "mean"
    with pytest.raises(FamilyError, match="mean over the tokens"):
        BY_NAME["modernbert"].check_pooling(model)
