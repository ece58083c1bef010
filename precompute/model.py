"""Load a sequence-classification cross-encoder and turn its logits into a relevance score.

The score is what ranks: the single logit of one-label models (MiniLM MS MARCO cross-encoders),
the log-probability of the positive class for two-label models (MonoBERT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path



class ModelError(Exception):
    """A model that cannot be used (message is one line, for the CLI)."""


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel, eval mode, on device
    tokenizer: object
    spec: str
    device: str
    dtype: str

    @property
    def config(self):
        return self.model.config

    @property
    def name(self) -> str:
        """Short name for folder names: the last path component of the id or folder."""
        return Path(self.spec.rstrip("/")).name

    @property
    def score_kind(self) -> str:
        return "logit" if self.config.num_labels == 1 else "log_softmax[1]"

    def describe(self) -> dict:
        cfg = self.config
        local = Path(self.spec)
        return {
            "id": self.spec,
            "path": str(local.resolve()) if local.exists() else None,
            "name": self.name,
            "revision": getattr(cfg, "_commit_hash", None),
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads,
            "hidden": cfg.hidden_size,
            "num_labels": cfg.num_labels,
            "score": self.score_kind,
        }


def relevance(logits):
    """[batch, labels] logits -> [batch] relevance scores (float32)."""
    import torch

    logits = logits.float()
    if logits.shape[-1] == 1:
        return logits[:, 0]
    if logits.shape[-1] == 2:
        return torch.log_softmax(logits, dim=-1)[:, 1]
    raise ModelError(f"model has {logits.shape[-1]} output labels; a cross-encoder has 1 (score) or 2 (not relevant, relevant)")


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return requested


DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(requested: str, device: str) -> str:
    if requested == "auto":
        return "bfloat16" if device == "cuda" else "float32"
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


def load(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load model and fast tokenizer from a Hugging Face id or local folder, eval mode, on ``device``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    offline = not Path(spec).exists() and not _in_hub_cache(spec) and not _hub_reachable()
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=offline)
    except OSError as err:
        where = "folder" if Path(spec).exists() else "Hugging Face id (no network here?)"
        raise ModelError(f"model {spec!r} could not be loaded as a {where}: {str(err).splitlines()[0]}; pass a local model folder with --model") from err
    archs = config.architectures or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(f"model {spec!r} is a {archs[0]}, not a sequence-classification cross-encoder (no classification head); pass a *ForSequenceClassification model")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(spec, dtype=getattr(torch, dtype), attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise ModelError(f"model {spec!r} could not be loaded: {str(err).splitlines()[0]}") from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {spec!r} has no fast tokenizer (tokenizer.json); segments need one")
    if config.num_labels not in (1, 2):
        raise ModelError(f"model {spec!r} has {config.num_labels} labels; a cross-encoder has 1 or 2")
    model.eval().to(device)
    return LoadedModel(model, tokenizer, spec, device, dtype)
