"""Every model family: the summary pass against plain scoring, and how far its numbers are from the architecture's own.

    python bench/families.py                    # tiny random models of every family (CPU, seconds)
    python bench/families.py --qwen2-05b        # a decoder of Qwen2-0.5B's size (random weights), DL20 pairs
    python bench/families.py --qwen2-05b --device cuda --dtype bfloat16

Tiny models: for each family a random model built from its config class (tests/tiny_families.py); prints the largest
difference between the stored masses / scores and the architecture's own attention probabilities and scores
(eager ``output_attentions``, tests/precompute/families/test_families.py), and pairs/s of the summary pass and plain scoring.

Qwen2-0.5B size (24 layers, 14 query heads sharing 2 key heads, hidden 896, intermediate 4864): a
``Qwen2ForSequenceClassification`` with random weights, fed real DL20 pairs through the decoder-classifier template
with the reference model's tokenizer (only the token counts matter for speed). Prints pairs/s of both passes and
their ratio, with the device and dtype.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, best_of, device_label, parser, spread  # noqa: E402


def _ratio_line(name: str, n: int, t_plain: float, t_summary: float, extra: str = "") -> str:
    return (f"{name:<22} {n / t_plain:9.1f} {n / t_summary:9.1f} {t_summary / t_plain:7.2f}x {extra}")


def tiny_table(repeats: int) -> None:
    import numpy as np

    from precompute.kernels.eager import SummaryProbe
    from precompute.families.loading import load
    from precompute.pairs import Pair
    from precompute.analyses.summaries import plain_scores, summarise_chunk
    from tests.precompute.families.test_families import MAX_LENGTH, _expected, own_outputs
    from tests.tiny_families import ALL_KINDS, build_family
    from tests.tiny_models import DOCS, QUERIES

    pairs = [Pair(i, f"q{i % 4}", f"d{i}", QUERIES[i % 4], DOCS[(i * 3) % 4], 1, "relevant") for i in range(64)]
    print(f"{'tiny model':<22} {'plain/s':>9} {'summary/s':>9} {'ratio':>8} max |mass err|, max |score err|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ALL_KINDS:
            lm = load(str(build_family(kind, Path(tmp) / kind)), device="cpu")
            batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
            with SummaryProbe(lm) as probe:
                scores, got, _ = probe.run(batch, summarise=True)
            want_scores, attentions, _ = own_outputs(lm, batch)
            want = _expected(lm, batch, attentions)
            mass_err = float(np.nanmax(np.abs(got.numpy() - want)))
            score_err = float((scores - want_scores).abs().max())
            kw = dict(batch_size=16, max_length=MAX_LENGTH)
            t_plain = best_of(lambda: plain_scores(lm, pairs, **kw), repeats, "cpu")
            t_summary = best_of(lambda: summarise_chunk(lm, pairs, **kw), repeats, "cpu")
            print(_ratio_line(f"{kind} ({lm.family.name})", len(pairs), t_plain, t_summary,
                              f"{mass_err:.1e}, {score_err:.1e}"))


def qwen2_05b(args) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    from precompute.families.loading import LoadedModel, pick_device, pick_dtype
    from precompute.analyses.summaries import plain_scores, summarise_chunk

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, tie_word_embeddings=True, num_labels=1, pad_token_id=0,
                         architectures=["Qwen2ForSequenceClassification"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = Qwen2ForSequenceClassification(config).to(device=device, dtype=getattr(torch, dtype)).eval()
    model.set_attn_implementation("eager")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
    tokenizer.eos_token = tokenizer.sep_token  # the template ends with {eos}: Qwen's is one special token, as [SEP] is
    lm = LoadedModel(model, tokenizer, "qwen2-0.5b-random", device, dtype)
    sample = spread(all_pairs(args), args.pairs)
    lengths = lm.family.token_lengths(lm, [p.query for p in sample], [p.doc for p in sample], args.max_length)
    print(f"Qwen2-0.5B-sized decoder classifier, random weights ({params:.0f}M parameters, built in "
          f"{time.perf_counter() - t0:.0f} s), {len(sample)} DL20 pairs, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"batch {args.batch_size}, {device_label(device)}, {dtype}, best of {args.repeats}")
    kw = dict(batch_size=args.batch_size, max_length=args.max_length)
    t_plain = best_of(lambda: plain_scores(lm, sample, **kw), args.repeats, device)
    t_summary = best_of(lambda: summarise_chunk(lm, sample, **kw), args.repeats, device)
    print(f"{'':<22} {'plain/s':>9} {'summary/s':>9} {'ratio':>8}")
    print(_ratio_line("qwen2-0.5b", len(sample), t_plain, t_summary))


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--qwen2-05b", action="store_true", help="the Qwen2-0.5B-sized decoder instead of the tiny table")
    p.set_defaults(pairs=32, batch_size=8, max_length=256, repeats=2)
    args = p.parse_args()
    if args.qwen2_05b:
        qwen2_05b(args)
    else:
        tiny_table(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
