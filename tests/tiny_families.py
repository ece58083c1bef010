"""Tiny random rerankers of every supported family, built in code from each architecture's config class and saved
as model folders with a word-level fast tokenizer (offsets included), so the real loading path runs offline.

Weights are drawn larger than the default init (as ``tests/precompute/analyses/test_ablations.py:sensitive_model`` does), so
attention is far from uniform, T5's relative position bias matters and ablations move the scores.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import WORDS

SPECIALS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TEMPLATE_WORDS = ("query document relevant true false yes no answer instruct judge whether requirements based "
                  "meets provided note only can be given web search retrieve passages that system user assistant "
                  ": ? . , < > \" -").split()

# kind -> (config class, model class, tokenizer template, extra config)
PAIR_KINDS = ("distilbert", "electra", "modernbert", "xlm-roberta", "deberta-v2", "mpnet")
DECODER_KINDS = ("llama", "qwen2", "mistral", "gemma2")
ALL_KINDS = (*PAIR_KINDS, "monot5", *(f"{k}-cls" for k in DECODER_KINDS), "qwen3-yesno", "llama-yesno")
EXTRA_KINDS = ("qwen2-yesno",)  # built on request (spectra of a grouped-query generative model)
# Every registered family (precompute.families.FAMILIES) -> the tiny kinds that load as it; tests walk this, and
# tests/tiny_models.py's 'bert' and 'roberta' load as 'bert' too.
FAMILY_KINDS = {
    "bert": ("electra", "xlm-roberta"), "distilbert": ("distilbert",), "modernbert": ("modernbert",),
    "deberta-v2": ("deberta-v2",), "mpnet": ("mpnet",), "monot5": ("monot5",),
    "decoder-classifier": ("llama-cls", "qwen2-cls", "mistral-cls", "gemma2-cls"),
    "qwen-yes-no": ("qwen3-yesno", "qwen2-yesno"), "yes-no": ("llama-yesno",),
}


def _vocab() -> dict[str, int]:
    words = list(dict.fromkeys(WORDS + TEMPLATE_WORDS))
    return {tok: i for i, tok in enumerate(SPECIALS + words)}


def _byte_level_bpe():
    """A byte-level BPE tokenizer trained on the tiny vocabulary (as Qwen's: spaces attach to the next word). Qwen
    model types load their tokenizer through transformers' own Qwen2Tokenizer, which only keeps a byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    words = list(dict.fromkeys(WORDS + TEMPLATE_WORDS))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(words)] * 50 + words * 50 + [w.capitalize() for w in words] * 20
    tok.train_from_iterator(corpus, trainer)
    return tok, tok.get_vocab()


def tokenizer(style: str, padding_side: str = "right", pad_token: str = "<pad>"):
    """A fast tokenizer: ``style`` bert ([CLS] q [SEP] d [SEP]), roberta (<s> q </s></s> d </s>), t5 (text </s>),
    llama (<s> text): word level, lower-cased; bpe: byte-level BPE, text as is (Qwen)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "bpe":
        tok, vocab = _byte_level_bpe()
    else:
        vocab = _vocab()
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = lambda *names: [(n, vocab[n]) for n in names]  # noqa: E731
    names = dict(pad_token=pad_token, unk_token="<unk>")
    inputs = ["input_ids", "attention_mask"]
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                           special_tokens=special("[CLS]", "[SEP]"))
        names.update(cls_token="[CLS]", sep_token="[SEP]")
        inputs = ["input_ids", "token_type_ids", "attention_mask"]
    elif style == "roberta":
        tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]))
        names.update(cls_token="<s>", sep_token="</s>", bos_token="<s>", eos_token="</s>")
    elif style == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=special("</s>"))
        names.update(eos_token="</s>")
    elif style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=special("<s>"))
        names.update(bos_token="<s>", eos_token="</s>")
    else:
        names.update(eos_token="</s>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=inputs, padding_side=padding_side,
                                   additional_special_tokens=[t for t in SPECIALS[6:]], **names)
    return fast, vocab


def _perturb(model, seed: int = 1, scale: float = 0.25) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (scale if p.dim() > 1 else 0.1))


def build_family(kind: str, folder: Path, *, layers: int = 2, heads: int = 4, hidden: int = 32,
                 padding_side: str = "right", num_labels: int = 1, pad_is_eos: bool = False) -> Path:
    """Save a tiny random ``kind`` (one of ALL_KINDS) reranker with its tokenizer into ``folder`` (``pad_is_eos``:
    a decoder whose pad token is its eos, as many decoder checkpoints are)."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    bpe = kind.startswith(("qwen2", "qwen3"))
    vocab = _byte_level_bpe()[1] if bpe else _vocab()
    n = len(vocab)
    common = dict(vocab_size=n, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=hidden * 2, max_position_embeddings=128, num_labels=num_labels)
    ids = dict(pad_token_id=vocab["</s>" if pad_is_eos else "<pad>"])
    style = "bert"
    if kind == "distilbert":
        model = T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=n, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=hidden * 2, max_position_embeddings=128,
            num_labels=num_labels, **ids))
    elif kind == "electra":
        model = T.ElectraForSequenceClassification(T.ElectraConfig(**common, embedding_size=hidden, **ids))
    elif kind == "modernbert":
        model = T.ModernBertForSequenceClassification(T.ModernBertConfig(
            **{**common, "num_hidden_layers": 3}, global_attn_every_n_layers=2, local_attention=4,
            cls_token_id=vocab["[CLS]"], sep_token_id=vocab["[SEP]"], bos_token_id=vocab["[CLS]"],
            eos_token_id=vocab["[SEP]"], **ids))
    elif kind == "xlm-roberta":
        style = "roberta"
        model = T.XLMRobertaForSequenceClassification(T.XLMRobertaConfig(
            **common, type_vocab_size=1, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], **ids))
    elif kind == "deberta-v2":
        model = T.DebertaV2ForSequenceClassification(T.DebertaV2Config(
            **common, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
            max_relative_positions=-1, type_vocab_size=0, **ids))
    elif kind == "mpnet":
        style = "roberta"
        model = T.MPNetForSequenceClassification(T.MPNetConfig(
            **common, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], **ids))
    elif kind == "monot5":
        style = "t5"
        model = T.T5ForConditionalGeneration(T.T5Config(
            vocab_size=n, d_model=hidden, d_kv=hidden // heads, d_ff=hidden * 2, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, relative_attention_num_buckets=8,
            decoder_start_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"], **ids))
    else:
        arch, _, head = kind.partition("-")
        style = "bpe" if bpe else "llama"
        decoder = dict(vocab_size=n, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads // 2, intermediate_size=hidden * 2, max_position_embeddings=128,
                       bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], num_labels=num_labels, **ids)
        if arch == "mistral":
            decoder["sliding_window"] = 6
        if arch == "gemma2":
            decoder.update(head_dim=hidden // heads, sliding_window=6, attn_logit_softcapping=2.0,
                           final_logit_softcapping=5.0, query_pre_attn_scalar=hidden // heads)
        if arch in ("qwen3",):
            decoder["head_dim"] = hidden // heads
        config = {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config, "qwen3": T.Qwen3Config, "mistral": T.MistralConfig,
                  "gemma2": T.Gemma2Config}[arch](**decoder)
        config._attn_implementation = "eager"
        auto = T.AutoModelForSequenceClassification if head == "cls" else T.AutoModelForCausalLM
        model = auto.from_config(config)
    _perturb(model)
    model.eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tok, _ = tokenizer(style, padding_side, "</s>" if pad_is_eos else "<pad>")
    tok.save_pretrained(folder)
    return folder
