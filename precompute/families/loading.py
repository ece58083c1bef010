"""Load a reranker (model, fast tokenizer, its family) on a device, ready for the probes.

What the input and the score are depends on the model's family (:mod:`precompute.families`): the single logit
of one-label cross-encoders (MiniLM MS MARCO), the log-probability of the positive class of two-label ones
(MonoBERT), the answer tokens of generative rerankers (MonoT5, yes/no decoders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelError(Exception):
    """A model that cannot be used (message is one line, for the CLI)."""


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, eval mode, on device
    tokenizer: Any
    spec: str
    device: str
    dtype: str
    family: Any = None  # precompute.families.Family
    settings: Any = None  # precompute.families.FamilySettings: template and answer tokens of template families
    footprint: Any = None  # precompute.memory.Footprint: weights' size and the device's free memory (None: unknown)

    def __post_init__(self):
        if self.family is None:  # a model built in code: its family from its config
            from precompute.families import family_for

            self.family = family_for(self.model.config, architecture=type(self.model).__name__)
        if self.settings is None:
            self.settings = self.family.settings(self.tokenizer, None, None)

    @property
    def config(self):
        return self.model.config

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads) of the summarised attention."""
        return self.family.shape(self.model)

    def encode(self, queries: list[str], docs: list[str], max_length: int):
        """The pairs as the family feeds them to the model: an EncodedBatch with the five segments (on the CPU)."""
        return self.family.encode(self, queries, docs, max_length)

    @property
    def name(self) -> str:
        """Short name for folder names: the last path component of the id or folder."""
        return Path(self.spec.rstrip("/")).name

    @property
    def score_kind(self) -> str:
        return self.family.score_kind(self)

    def describe(self) -> dict:
        cfg = self.config
        local = Path(self.spec)
        layers, heads = self.shape
        return {
            "id": self.spec,
            "path": str(local.resolve()) if local.exists() else None,
            "name": self.name,
            "revision": getattr(cfg, "_commit_hash", None),
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "layers": layers,
            "heads": heads,
            "hidden": getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None),
            "num_labels": cfg.num_labels,
            "score": self.score_kind,
            **self.family.describe(self),
        }


def pick_device(requested: str, local_rank: int | None = None) -> str:
    """'cpu' or 'cuda' ('cuda:<local_rank>' for one rank of a distributed job: one GPU per rank)."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if requested == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise ModelError(f"rank {local_rank} of this node has no GPU of its own ({torch.cuda.device_count()} "
                             "visible); start one process per GPU (torchrun --nproc-per-node)")
        return f"cuda:{local_rank}"
    return requested


def pick_dtype(requested: str, device: str) -> str:
    if requested == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if requested in ("bfloat16", "float16") and device == "cpu":
        raise ModelError(f"--dtype {requested} is for GPUs; on the CPU use --dtype float32")
    return requested


def _in_hub_cache(spec: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub, so an offline machine fails in seconds, not after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def identity(spec: str) -> str:
    """What names a model across working directories: the absolute path of a local folder, else the hub id."""
    local = Path(spec)
    return str(local.resolve()) if local.exists() else spec


def load(spec: str, device: str = "auto", dtype: str = "auto", *, template: str | None = None,
         answer_tokens: tuple[str, str] | None = None, local_rank: int | None = None) -> LoadedModel:
    """Load model and fast tokenizer from a Hugging Face id or local folder, eval mode, on ``device``, with the
    family its config names (template and answer tokens for template families; their defaults when None)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from precompute.families import FamilyError, family_for
    from precompute.memory import footprint, refusal

    device = pick_device(device, local_rank)
    dtype = pick_dtype(dtype, device)
    check_local_path(spec)
    offline = not Path(spec).exists() and not _in_hub_cache(spec) and not _hub_reachable()
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=offline)
    except OSError as err:
        where = "folder" if Path(spec).exists() else "Hugging Face id (no network here?)"
        raise ModelError(f"model {spec!r} could not be loaded as a {where}: {str(err).splitlines()[0]}; pass a local model folder with --model") from err
    try:
        family = family_for(config)
    except FamilyError as err:
        raise ModelError(f"model {spec!r}: {err}") from err
    check_tokenizer_files(spec)
    fp = footprint(family.auto_class(), config, device, dtype)
    if fp is not None and not fp.fits:
        raise ModelError(refusal(spec, fp))
    try:
        model, info = family.auto_class().from_pretrained(spec, dtype=getattr(torch, dtype), attn_implementation="eager",
                                                          output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except Exception as err:  # a damaged file: transformers, safetensors, torch and pickle raise unrelated classes
        raise ModelError(loading_error(spec, err)) from err
    check_loaded_weights(spec, info)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {spec!r} has no fast tokenizer (tokenizer.json); segments need one")
    check_vocabulary(spec, tokenizer, model)
    model.eval().to(device)
    try:
        settings = family.settings(tokenizer, template, answer_tokens)
        lm = LoadedModel(model, tokenizer, spec, device, dtype, family, settings, fp)
        family.check(lm)
    except FamilyError as err:
        raise ModelError(f"model {spec!r}: {err}") from err
    return lm


# -- loading checks: each refuses, in one line, a model that would load but give numbers of nothing ---------------

# A tokenizer needs one of these in a local folder; without them transformers builds a tokenizer from the config
# alone whose vocabulary is its special tokens, so every word becomes [UNK] and every pair scores alike.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def _looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (./x, /x, ~/x, a/b/c, x/) can only be a folder."""
    return spec.startswith((".", "/", "~")) or spec.endswith("/") or spec.count("/") > 1


def check_local_path(spec: str) -> None:
    """A folder that does not exist is not a hub id: say so, rather than report a failed download of 'repo id'."""
    if _looks_like_path(spec) and not Path(spec).expanduser().exists():
        raise ModelError(f"model folder {spec} does not exist; pass an existing model folder or a Hugging Face id with --model")


def check_tokenizer_files(spec: str) -> None:
    folder = Path(spec)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"model folder {spec} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                         "copy the tokenizer the model was trained with into it")


def check_loaded_weights(spec: str, info: dict) -> None:
    """Weights the checkpoint lacks are initialised at random (a classifier without ``classifier.*``, a base model
    loaded as a cross-encoder): refuse, naming them, instead of scoring with noise."""
    fresh = sorted(info.get("missing_keys") or ()) + sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                                                           for k in info.get("mismatched_keys") or ())
    if fresh:
        shown = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
        raise ModelError(f"model {spec!r} lacks trained weights for {shown} (they would be random); pass a fine-tuned "
                         "cross-encoder whose checkpoint holds its classification head")


def check_vocabulary(spec: str, tokenizer, model) -> None:
    """Every id the tokenizer can produce must index the model's embeddings (which are often padded, so ``<``,
    not ``==``), and the vocabulary must hold more than the special tokens."""
    vocab = tokenizer.get_vocab()
    if len(vocab) <= len(set(tokenizer.all_special_ids)):
        raise ModelError(f"model {spec!r} has a tokenizer with only its {len(vocab)} special tokens (every word would be "
                         "unknown); its tokenizer files are missing or empty")
    size = model.get_input_embeddings().num_embeddings
    top = max(vocab.values())
    if top >= size:
        word = next(w for w, i in vocab.items() if i == top)
        raise ModelError(f"model {spec!r}: its tokenizer produces token id {top} ({word!r}) but the model has {size} "
                         "embeddings; the tokenizer belongs to another model")


def learned_positions(model) -> int | None:
    """Tokens a model with absolute position embeddings can take (None: relative or rotary positions, no limit
    here). RoBERTa-style embeddings start counting after the padding id: max_position_embeddings - pad - 1."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if positions is None or not hasattr(positions, "num_embeddings"):
        return None
    if getattr(model.config, "position_embedding_type", None) not in (None, "absolute"):
        return None
    offset = 0 if positions.padding_idx is None else positions.padding_idx + 1
    return positions.num_embeddings - offset


def loading_error(spec: str, err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    hint = ""
    if type(err).__name__ == "SafetensorError" or "deserializ" in text.lower():
        hint = "; a weights file is truncated or damaged (an interrupted download?): download it again"
    return f"model {spec!r} could not be loaded: {text}{hint}"
