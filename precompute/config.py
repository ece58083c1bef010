"""The job's settings (every flag of ``python -m precompute``), with their defaults in one place.

The CLI builds a :class:`JobConfig`, the stages read it through the run context, and the app reads the
defaults (to print the command that resumes a run). Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "castorini/monobert-large-msmarco"


@dataclass
class JobConfig:
    dataset: str = "dl20"
    model: str = DEFAULT_MODEL
    out: Path | None = None
    store: Path = Path("data/store")
    cache: Path = Path("data/cache")
    easy_negatives: int = 20
    seed: int = 0
    candidates: str | None = None
    depth: int = 100
    max_queries: int | None = None
    max_length: int = 512
    batch_size: int = 32
    batch_tokens: int | None = None  # padded tokens per forward (None: batch_size pairs whatever their length)
    chunk_size: int = 256
    prompt_template: str | None = None  # template families: the input template (None = the family's default)
    answer_tokens: tuple[str, str] | None = None  # generative rerankers: (positive, negative) answer tokens
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True
    # Stages, run in this order (precompute.stages.STAGES). Ablations last: the longest, and the others need no scores.
    stages: tuple[str, ...] = ("summaries", "spectra", "contrasts", "component_means", "ablations", "patching")
    # Ablations (precompute.analyses.ablations). Not part of the run identity: conditions accumulate in the folder and a
    # rerun computes only the missing ones (kernel and stack must stay those of the folder).
    ablations: tuple[str, ...] = ("directions", "groups")  # condition sets; () = skip the stage (--ablations none)
    ablation_modes: tuple[str, ...] = ("zero",)  # 'zero' (the paper's) and/or 'mask'
    ablation_layers: tuple[str, ...] = ("all",)  # layer specs: 'all', '3', '0-5'
    ablation_groups: tuple[str, ...] = ()  # user groups: 'NAME=q_d,d_q' or 'Q->D,D->Q'
    ablation_sweep: tuple[str, ...] = ("q_d", "d_q", "cross")  # per-layer sweep targets (set 'layers')
    ablation_heads: tuple[str, ...] = ("all",)  # heads to zero one at a time (set 'heads'): 'all', '3.5', '3.*'
    ablation_stack: int = 1  # conditions sharing a forward pass
    ablation_kernel: str = "auto"  # 'sdpa' (fused), 'eager' (the summary kernel) or 'auto' (sdpa where exact)
    component_mode: str = "mean"  # the 'components' set's mode: 'zero' or 'mean' (precompute.conditions.component_specs)
    ablation_components: tuple[str, ...] = ()  # explicit component conditions: 'mlp@3:d/mean'
    subspace_heads: str = "top:5"  # heads of the 'subspace' set: top:N (Cohen's d of q_d, relevant vs easy) or L.H list
    subspace_k: str = "1-4"  # top singular components removed or scaled
    subspace_ops: tuple[str, ...] = ("remove", "scale=2")
    patching: tuple[str, ...] = ()  # activation-patching experiments: tfc1, tfc2, stmc1, cls (docs/patching.md)
    patching_pairs: int = 10  # input pairs per query of every experiment, drawn with the seed
    patching_method: str = "both"  # exact | attribution | both (attribution everywhere, exact for the top heads)
    patching_top: int = 10  # heads patched exactly per experiment under 'both'
    patching_score: str = "logit"  # logit | probability: the scale scores are patched on
    patching_min_delta: float | None = None  # None: the score scale's default (patching_ranking.MIN_DELTA)
    patching_graddrop: bool = False  # AtP*'s GradDrop score on attribution rows (a backward pass per layer)
    measures: tuple[str, ...] = ("nDCG@10",)  # ablation_metrics measures (ir_measures names)
    eval_scopes: tuple[str, ...] | None = None  # None: ('pairs',), plus 'run' with --candidates

    def pair_parameters(self) -> dict:
        """What fixes the pairs and their numbers: a run folder holds one such set."""
        return {
            "easy_negatives": self.easy_negatives, "seed": self.seed, "candidates": self.candidates,
            "depth": self.depth if self.candidates else None, "max_queries": self.max_queries,
            "max_length": self.max_length, "batch_size": self.batch_size, "batch_tokens": self.batch_tokens,
            "chunk_size": self.chunk_size,
        }
