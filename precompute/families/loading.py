"""Load a reranker (model, fast tokenizer, its family) on a device, ready for the probes.

What the input and the score are depends on the model's family (:mod:`precompute.families`): the single logit
of one-label cross-encoders (MiniLM MS MARCO), the log-probability of the positive class of two-label ones
(MonoBERT), the answer tokens of generative rerankers (MonoT5, yes/no decoders).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from precompute.console import first_line


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
    adapter: Any = None  # precompute.families.adapters.Adapter merged into the weights (None: not an adapter)

    def __post_init__(self):
        if self.family is None:  # a model built in code: its family from its config
            from precompute.families import family_for

            self.family = family_for(self.model.config, architecture=type(self.model).__name__)
        if self.settings is None:
            self.settings = self.family.settings(self.tokenizer, None, None)

    @property
    def config(self):
        return self.model.config

    @cached_property
    def architecture(self):
        """The model's architecture facts, as its family resolves them (precompute.families.base.Architecture)."""
        return self.family.architecture(self.model)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads) of the summarised attention."""
        return self.architecture.layers, self.architecture.heads

    @property
    def head_dim(self) -> int:
        """Size of one head's query and key vectors (the rank bound of its W_Q W_K^T)."""
        return self.architecture.head_dim

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
            "adapter": None if self.adapter is None else self.adapter.describe(),
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "layers": layers,
            "heads": heads,
            "hidden": self.architecture.hidden,
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


def _in_hub_cache(spec: str, revision: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(spec, name, revision=revision), str)
                   for name in ("config.json", "adapter_config.json"))
    except ValueError:  # not a valid repo id
        return False


def check_revision(spec: str, revision: str | None) -> None:
    """--revision names a commit of a hub repository: a local folder has none (its files are what they are)."""
    if revision is not None and Path(spec).expanduser().exists():
        raise ModelError(f"--revision {revision} is for Hugging Face ids, but model {spec} is a local folder; drop "
                         "--revision (a folder is recorded by its path)")


def _has_tokenizer(spec: str) -> bool:
    """Whether an adapter ships its own tokenizer (a local folder with tokenizer files); else its base's is used."""
    folder = Path(spec)
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


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
    local = Path(spec).expanduser()
    return str(local.resolve()) if local.exists() else spec


def base_identity(spec: str, revision: str | None = None, base_model: str | None = None) -> str | None:
    """The base model a PEFT adapter ``spec`` is applied to, as the run identity records it (:func:`identity`);
    None when ``spec`` is not an adapter. Reads only adapter_config.json (ModelError when it cannot be used)."""
    from precompute.families.adapters import AdapterError, find

    offline = not Path(spec).exists() and not _in_hub_cache(spec, revision) and not _hub_reachable()
    try:
        adapter = find(spec, revision, base_model, offline)
    except AdapterError as err:
        raise ModelError(str(err)) from err
    return None if adapter is None else identity(adapter.base)


def load(spec: str, device: str = "auto", dtype: str = "auto", *, template: str | None = None,
         answer_tokens: tuple[str, str] | None = None, local_rank: int | None = None,
         progress: bool = True, revision: str | None = None, base_model: str | None = None,
         trust_remote_code: bool = False) -> LoadedModel:
    """Load model and fast tokenizer from a Hugging Face id (at ``revision``) or local folder, eval mode, on
    ``device``, with the family its config names (template and answer tokens for template families; their defaults
    when None). A PEFT adapter (:mod:`precompute.families.adapters`) is loaded on its base (``base_model``, else the
    one it names) and merged.

    Runs code shipped with a model only when ``trust_remote_code`` (--trust-remote-code) is given: otherwise a model
    whose config names its own classes (``auto_map``) is refused. transformers' own log is silenced while it loads
    (its report of unused weights becomes one line); ``progress`` keeps its loading bar."""
    import torch
    from transformers import AutoTokenizer

    from precompute.families import FamilyError, family_for
    from precompute.families.adapters import AdapterError, find
    from precompute.memory import footprint, refusal

    device = pick_device(device, local_rank)
    dtype = pick_dtype(dtype, device)
    check_local_path(spec)
    check_revision(spec, revision)
    offline = not Path(spec).exists() and not _in_hub_cache(spec, revision) and not _hub_reachable()
    try:
        adapter = find(spec, revision, base_model, offline)
    except AdapterError as err:
        raise ModelError(str(err)) from err
    weights, weights_revision = (adapter.base, adapter.base_revision) if adapter else (spec, revision)
    if adapter is not None:
        check_local_path(weights)
        offline = offline or (not Path(weights).exists() and not _in_hub_cache(weights, weights_revision)
                              and not _hub_reachable())
    tokenizer_spec, tokenizer_revision = (spec, revision) if adapter is None or _has_tokenizer(spec) \
        else (weights, weights_revision)
    hub = dict(trust_remote_code=trust_remote_code, local_files_only=offline)
    with quiet_transformers(progress):
        config = load_config(weights, offline, revision=weights_revision, trust_remote_code=trust_remote_code)
        try:
            if adapter is not None:
                adapter.prepare(config)
            family = family_for(config)
        except (FamilyError, AdapterError) as err:
            raise ModelError(f"model {spec!r}: {err}") from err
        check_tokenizer_files(tokenizer_spec)
        check_tokenizer_class(tokenizer_spec, config, offline, tokenizer_revision)
        fp = footprint(family.auto_class(), config, device, dtype)
        if fp is not None and not fp.fits:
            raise ModelError(refusal(spec, fp))
        try:
            model, info = family.auto_class().from_pretrained(
                weights, config=config, revision=weights_revision, dtype=getattr(torch, dtype),
                attn_implementation="eager", output_loading_info=True,
                ignore_mismatched_sizes=True, **hub)  # mismatched weights: refused below, by name
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_spec, revision=tokenizer_revision, **hub)
        except Exception as err:  # a damaged file: transformers, safetensors, torch and pickle raise unrelated classes
            raise ModelError(loading_error(weights, err)) from err
    if adapter is not None:
        try:
            model, info = adapter.apply(model, info)
        except AdapterError as err:
            raise ModelError(str(err)) from err
    check_loaded_weights(spec, info)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {spec!r} has no fast tokenizer (tokenizer.json); segments need one")
    check_vocabulary(spec, tokenizer, model)
    model.eval().to(device)
    check_finite_weights(spec, model)
    try:
        settings = family.settings(tokenizer, template, answer_tokens)
        lm = LoadedModel(model, tokenizer, spec, device, dtype, family, settings, fp, adapter)
        family.check(lm)  # every architecture fact resolves
    except FamilyError as err:
        raise ModelError(f"model {spec!r}: {err}") from err
    report_unused_weights(spec, model, info)
    return lm


@contextmanager
def quiet_transformers(progress: bool):
    """transformers' log off for a ``with`` block (its load report is a 20-line table of missing and unexpected
    weights, which the loading checks refuse or summarise in one line); its progress bars too unless ``progress``."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_config(spec: str, offline: bool, revision: str | None = None, trust_remote_code: bool = False):
    """The model's config, read without running any code of the model's unless ``trust_remote_code``: its JSON is
    read first and a config that names classes of its own (``auto_map``, which transformers would import from the
    model's files) is refused, naming --trust-remote-code; then transformers builds it."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    from precompute.console import one_line

    try:
        raw, _ = PretrainedConfig.get_config_dict(spec, local_files_only=offline, revision=revision)
    except OSError as err:  # no config.json, not JSON, no network
        where = "folder" if Path(spec).exists() else "Hugging Face id (no network here?)"
        raise ModelError(f"model {spec!r} could not be loaded as a {where}: {first_line(err)}; pass a local model folder with --model") from err
    try:
        tokenizer_raw = get_tokenizer_config(spec, local_files_only=offline, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelError(f"model {spec!r}: its tokenizer_config.json cannot be read ({one_line(err)}); restore it") from err
    for name, data in (("config.json", raw), ("tokenizer_config.json", tokenizer_raw)):
        if isinstance(data, dict) and data.get("auto_map") and not trust_remote_code:
            classes = ", ".join(sorted(str(v) for v in _flat(data["auto_map"])))[:120]
            raise ModelError(f"model {spec!r}: its {name} names code of its own (auto_map: {classes}), which would run "
                             "Python from the model's files; refused by default: pass --trust-remote-code if you "
                             "trust them, or use a model whose architecture transformers ships")
    try:
        return AutoConfig.from_pretrained(spec, local_files_only=offline, revision=revision,
                                          trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers' validation raises ValueError, TypeError, AttributeError, its own classes
        raise ModelError(f"model {spec!r}: transformers rejects its config.json ({one_line(err)}); restore the "
                         "config the model was saved with") from err


def _flat(value) -> list:
    """The class names of an ``auto_map`` (a value may be a list: slow and fast tokenizer)."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in _flat(item)]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item) if v]
    return [value]


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


def check_tokenizer_class(spec: str, config, offline: bool, revision: str | None = None) -> None:
    """A ``tokenizer_class`` transformers does not know makes it fall back, silently, to a generic tokenizer that may
    differ from the trained one (no ``token_type_ids``: different scores); refuse it by name."""
    from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

    name = get_tokenizer_config(spec, local_files_only=offline, revision=revision).get("tokenizer_class") or getattr(config, "tokenizer_class", None)
    if name and tokenizer_class_from_name(name) is None:
        raise ModelError(f"model {spec!r}: its tokenizer_class {name!r} is not a tokenizer transformers knows (it would "
                         "fall back to a generic one that may encode pairs differently from training); set "
                         "tokenizer_class in tokenizer_config.json to the model's tokenizer, e.g. BertTokenizer")


def check_finite_weights(spec: str, model) -> None:
    """Every weight is a number: a NaN or inf anywhere (a diverged training run, a damaged conversion) makes the
    scores, the attention or the spectra NaN. A weight whose sum is finite has none (a NaN or inf would propagate):
    one vectorised sum per weight, 0.1 s for MonoBERT-large's 335M on 2 CPU cores; only a weight whose sum is not
    (or overflows) is counted element by element, in slices so no copy of a large weight is made."""
    import torch

    for name, weight in model.named_parameters():
        flat = weight.detach().reshape(-1)
        if bool(torch.isfinite(flat.sum())):
            continue
        bad = sum(int((~torch.isfinite(part)).sum()) for part in flat.split(1 << 24))
        if bad:
            raise ModelError(f"model {spec!r}: its weight {name} holds {bad} NaN or infinite value(s); the checkpoint "
                             "is damaged or comes from a diverged training run: use another checkpoint")


def report_unused_weights(spec: str, model, info: dict) -> None:
    """Weights of the checkpoint the architecture does not use (transformers' load report): one line, not a table."""
    from precompute.console import log

    unused = sorted(info.get("unexpected_keys") or ())
    if unused:
        log(f"model {spec!r}: {len(unused)} weight(s) of its checkpoint are not used by {type(model).__name__} "
            f"({_some(unused)}); they are ignored")


def check_loaded_weights(spec: str, info: dict) -> None:
    """Weights the checkpoint lacks, or holds in another shape than the config says, are initialised at random (a
    classifier without ``classifier.*``, a base model loaded as a cross-encoder, a config edited after training):
    refuse, naming them, instead of scoring with noise."""
    missing = sorted(info.get("missing_keys") or ())
    resized = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
    if missing:
        raise ModelError(f"model {spec!r} lacks trained weights for {_some(missing)} (they would be random); pass a "
                         "fine-tuned cross-encoder whose checkpoint holds its classification head")
    if resized:
        raise ModelError(f"model {spec!r}: its checkpoint holds {_some(resized)} in another shape than its config.json "
                         "says (they would be random); restore the config the model was saved with")


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


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
    """Tokens a model with learned position embeddings can take (None: relative or rotary positions only, no limit
    here). RoBERTa-style embeddings start counting after the padding id: max_position_embeddings - pad - 1."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if positions is None or not hasattr(positions, "num_embeddings"):
        return None
    offset = 0 if positions.padding_idx is None else positions.padding_idx + 1
    return positions.num_embeddings - offset


def loading_error(spec: str, err: Exception) -> str:
    text = first_line(err)
    hint = ""
    if type(err).__name__ == "SafetensorError" or "deserializ" in text.lower():
        hint = "; a weights file is truncated or damaged (an interrupted download?): download it again"
    return f"model {spec!r} could not be loaded: {text}{hint}"
