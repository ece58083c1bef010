"""The GPU check: plain scoring vs the summary pass vs the ablation pass, with peak memory, on random-weight models.

    bash bench/gpu.sh               # on a CUDA machine (installs the carried wheels first, if any)
    bash bench/gpu.sh --cpu-smoke   # the same script end to end on the CPU, tiny sizes (seconds)

Models are built from configs with random weights (no download): a MonoBERT-large-shaped BERT (24 layers x 16
heads, hidden 1024), a MiniLM-L6-shaped BERT (6 x 12, hidden 384) and a Qwen2-0.5B-shaped decoder classifier (24
layers, 14 query heads on 2 key heads). Inputs are synthetic pairs at the full length (``--seq``, default 512: a
16-token query and the rest document, random token ids), so no tokenizer, dataset or network is needed; only torch,
transformers and this repository's precompute package (no pyarrow, no duckdb).

For each model and bfloat16 it prints pairs/s of
* plain scoring (the stock SDPA attention),
* the summary pass (the 29 metrics of every head, reduced inside the attention call),
* one ablation condition (Query -> Document removed at every layer, SDPA ablation kernel),
* the authors' way (one pair per forward at 128 tokens, output_attentions, masses in numpy),
their ratios to plain scoring, and the peak GPU memory of each pass (torch.cuda.max_memory_allocated); then, for
the MonoBERT-large shape (every model with ``--patching-all``), activation patching of every head (the tfc1 head
sweep, docs/patching.md) on ``--patch-pairs`` synthetic (clean, corrupted) pairs whose documents differ in their
first 4 tokens: attribution patching (AtP*, one clean and one corrupted forward and one backward pass per batch),
exact patching batched (all heads of a layer as rows of one forward, the layers below resumed) and, for one pair,
the plain loop of one full forward per (pair, head); pairs/s of each and the speed-ups over the loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_batch(batch: int, seq: int, vocab: int, device, *, query: int = 16, seed: int = 0):
    """An EncodedBatch of ``batch`` pairs of ``seq`` tokens: [CLS] 16 query tokens [SEP] document [SEP]."""
    import torch

    from precompute.families.segments import CLS, D, Q, SEP1, SEP2, EncodedBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    segments = torch.full((batch, seq), D, dtype=torch.int8)
    segments[:, 0], segments[:, 1 : 1 + query], segments[:, 1 + query], segments[:, -1] = CLS, Q, SEP1, SEP2
    inputs = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    doc = seq - query - 3
    return EncodedBatch(inputs, segments, [query] * batch, [doc] * batch, [doc] * batch).to(device)


def models(small: bool):
    """(name, config) of the models measured."""
    from transformers import BertConfig, Qwen2Config

    if small:
        return [("bert-tiny", BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                         vocab_size=30522, num_labels=1, architectures=["BertForSequenceClassification"])),
                ("qwen2-tiny", Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           intermediate_size=128, vocab_size=30522, num_labels=1, pad_token_id=0,
                                           architectures=["Qwen2ForSequenceClassification"]))]
    return [
        ("monobert-large-shaped", BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                             intermediate_size=4096, vocab_size=30522, num_labels=2,
                                             architectures=["BertForSequenceClassification"])),
        ("minilm-l6-shaped", BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                        intermediate_size=1536, vocab_size=30522, num_labels=1,
                                        architectures=["BertForSequenceClassification"])),
        ("qwen2-0.5b-shaped", Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                          num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                          num_labels=1, pad_token_id=0, tie_word_embeddings=True,
                                          architectures=["Qwen2ForSequenceClassification"])),
    ]


def measure(name: str, config, args, device, dtype) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from precompute import conditions as C
    from precompute.kernels.sdpa import AblationProbe
    from precompute.kernels.state import Intervention
    from precompute.kernels.eager import SummaryProbe
    from precompute.families import FamilySettings
    from precompute.families.loading import LoadedModel
    from precompute.analyses.summaries import plain_attention

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager", trust_remote_code=False)
    model = model.to(device, dtype).eval()
    # no tokenizer: the inputs are built as token ids (synthetic_batch), so no template is ever filled in
    lm = LoadedModel(model, None, name, str(device), str(dtype).removeprefix("torch."), settings=FamilySettings())
    batch = synthetic_batch(args.batch, args.seq, config.vocab_size, device)
    layers, heads = lm.shape
    q_d = next(c for c in C.AblationRequest(sets=("directions",)).conditions(layers, heads) if c.condition == "q_d")
    dirs = C.forward_edits([q_d], layers, heads).directions
    iv = Intervention("zero", dirs.to(device).repeat_interleave(args.batch, 0))
    cuda = device.type == "cuda"

    def timed(fn):
        """(seconds per batch, peak bytes) of ``fn`` after a warm-up."""
        fn()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.repeats, torch.cuda.max_memory_allocated() if cuda else 0

    def plain():
        with plain_attention(lm, "sdpa"), torch.inference_mode():
            lm.family.scores(lm, batch)

    summary_probe, ablation_probe = SummaryProbe(lm), AblationProbe(lm)
    with torch.inference_mode():
        t_plain, m_plain = timed(plain)
        with summary_probe:
            t_summary, m_summary = timed(lambda: summary_probe.run(batch, summarise=True))
        with ablation_probe:
            t_ablation, m_ablation = timed(lambda: ablation_probe.run(batch, intervention=iv))
    t_authors = authors_way(lm, config.vocab_size, device, args)
    n = args.batch
    print(f"{name:<22} {layers:>2}x{heads:<2} plain {n / t_plain:8.1f}/s  summary {n / t_summary:8.1f}/s "
          f"({t_summary / t_plain:4.2f}x)  ablation {n / t_ablation:8.1f}/s ({t_ablation / t_plain:4.2f}x)  "
          f"authors {1 / t_authors:6.1f}/s (the summary pass is {t_authors / (t_summary / n):5.1f}x faster per pair)",
          flush=True)
    if cuda:
        gib = 2**30
        print(f"{'':<22} peak GPU memory: plain {m_plain / gib:.2f} GiB, summary {m_summary / gib:.2f} GiB "
              f"({m_summary / m_plain:.2f}x), ablation {m_ablation / gib:.2f} GiB ({m_ablation / m_plain:.2f}x)", flush=True)
    if args.patching_all or name.startswith(("monobert-large", "bert-tiny")):
        patching(name, lm, config.vocab_size, device, args)


def patching(name: str, lm, vocab: int, device, args) -> None:
    """pairs/s of attribution, batched exact and the one-forward-per-(pair, head) loop over every head (tfc1)."""
    import torch

    from precompute.analyses import attribution as A
    from precompute.analyses import patching as P

    n, seq = args.patch_pairs, min(args.seq, args.patch_seq)
    clean = synthetic_batch(n, seq, vocab, device)
    corrupted = synthetic_batch(n, seq, vocab, device)
    ids = corrupted.inputs["input_ids"]
    ids[:, 18:22] = torch.randint(1000, vocab, (n, 4), generator=torch.Generator().manual_seed(1)).to(device)
    layers, heads = lm.shape
    sites = P.head_sites("tfc1", layers, heads)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def seconds(fn) -> float:
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    with P.Patcher(lm, eager=True) as patcher:
        t_attr = seconds(lambda: A.attribute_batch(patcher, "tfc1", clean, corrupted, sites))
    with P.Patcher(lm) as patcher, torch.inference_mode():
        t_exact = seconds(lambda: P.patch_batch(patcher, "tfc1", clean, corrupted, sites,
                                                rows_per_forward=args.patch_rows))
        one_c, one_k = synthetic_batch(1, seq, vocab, device), synthetic_batch(1, seq, vocab, device)
        one_k.inputs["input_ids"][:, 18:22] = ids[:1, 18:22]
        t_loop = seconds(lambda: P.patch_batch(patcher, "tfc1", one_c, one_k, sites, rows_per_forward=1,
                                               resume=False))
    print(f"{'':<22} patching {layers * heads} heads, {n} pairs x {seq} tokens: attribution {n / t_attr:8.2f} pairs/s, "
          f"exact batched {n / t_exact:8.3f} pairs/s, loop {1 / t_loop:8.4f} pairs/s: attribution "
          f"{t_loop * n / t_attr:6.1f}x and exact {t_loop * n / t_exact:5.1f}x the loop", flush=True)


def authors_way(lm, vocab: int, device, args) -> float:
    """Seconds per pair, one pair per forward at 128 tokens, output_attentions, the 25 masses in numpy."""
    import torch

    one = synthetic_batch(1, min(128, args.seq), vocab, device)
    seg = one.segments[0].cpu().numpy()
    previous = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        def pair():
            with torch.inference_mode():
                attentions = lm.model(**one.inputs, output_attentions=True).attentions
            for a in attentions:
                a = a[0].float().cpu().numpy()
                for s in range(5):
                    for t in range(5):
                        a[:, seg == s][:, :, seg == t].sum(-1).mean(-1)
        pair()
        t0 = time.perf_counter()
        for _ in range(args.authors_pairs):
            pair()
        return (time.perf_counter() - t0) / args.authors_pairs
    finally:
        lm.model.set_attn_implementation(previous)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: checks the script end to end")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--authors-pairs", type=int, default=20)
    p.add_argument("--patch-pairs", type=int, default=8, help="synthetic tfc1 pairs of the patching figures")
    p.add_argument("--patch-seq", type=int, default=256, help="tokens per patching pair (at most --seq)")
    p.add_argument("--patch-rows", type=int, default=128, help="patched rows per forward of exact patching")
    p.add_argument("--patching-all", action="store_true", help="patching figures for every model, not only MonoBERT-large")
    args = p.parse_args(argv)

    import torch

    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.float32
        args.seq, args.batch, args.repeats, args.authors_pairs, args.patch_pairs = 64, 4, 1, 2, 2
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA device visible; run with --cpu-smoke to check the script on the CPU",
                  file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
    label = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    import transformers

    print(f"{label}; torch {torch.__version__}, transformers {transformers.__version__}; {dtype}, {args.batch} pairs x "
          f"{args.seq} tokens per batch, mean of {args.repeats}", flush=True)
    for name, config in models(args.cpu_smoke):
        measure(name, config, args, device, dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous model is gone with measure()'s frame
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
