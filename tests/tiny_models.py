"""Tiny random cross-encoders built in code (BERT-style and RoBERTa-style), saved as model folders.

They exercise the real loading path (``precompute.families.loading.load`` on a folder) without ../shared or a
network: a word-level fast tokenizer over a small vocabulary, plus the architecture's own special
token template ([CLS] q [SEP] d [SEP] for BERT, <s> q </s></s> d </s> for RoBERTa).
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "what is a the cat dog animal purrs barks hello there my friend you are hi salary dental hygienist in "
    "nebraska average cost wedding dress records public information of and to for on with how why when"
).split()

# A few pairs in that vocabulary: different lengths (padding), exact matches and unknown words.
QUERIES = ["what is a cat", "hi", "average salary dental hygienist in nebraska", "why dog"]
DOCS = [
    "a cat is an animal that purrs a cat",
    "hello there my friend you are hi",
    "the average salary of a dental hygienist in nebraska is high",
    "dog barks",
]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        cls, sep, pad, unk = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
    else:
        specials = ["<pad>", "<unk>", "<s>", "</s>"]
        cls, sep, pad, unk = "<s>", "</s>", "<pad>", "<unk>"
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    else:
        tok.post_processor = processors.RobertaProcessing((sep, vocab[sep]), (cls, vocab[cls]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, cls_token=cls, sep_token=sep, pad_token=pad, unk_token=unk,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"] if kind == "bert" else ["input_ids", "attention_mask"],
    )
    return fast, len(vocab)


def build(kind: str, folder: Path, *, num_labels: int = 1, layers: int = 2, heads: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` ('bert' or 'roberta') cross-encoder with its tokenizer into ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    tokenizer, vocab_size = _tokenizer(kind)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=hidden * 2, num_labels=num_labels, max_position_embeddings=514)
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(**common, pad_token_id=0))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(**common, pad_token_id=0, bos_token_id=2, eos_token_id=3, type_vocab_size=1))
    model.eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
