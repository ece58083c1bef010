"""PEFT adapters as models: a folder or hub id with ``adapter_config.json`` (RankLLaMA: LoRA, task type SEQ_CLS, on
Llama-2) is its base model with the adapter applied and merged into the weights, so the kernels see one ordinary
model of the base's family and the score is the merged model's own output.

The base is the one ``adapter_config.json`` names (``base_model_name_or_path`` at its ``revision``), or
``--base-model`` (a local copy of it, for a machine without the hub). A SEQ_CLS adapter on a causal-LM base (the
base checkpoint of RankLLaMA is LlamaForCausalLM) runs as the base's ``*ForSequenceClassification``, with as many
labels as the adapter's trained head has rows. peft is an optional dependency (``pip install 'matching-atlas[peft]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precompute.console import first_line

# The classification heads PEFT saves in full beside the adapter for SEQ_CLS (its modules_to_save default).
_HEADS = ("score", "classifier")
_PREFIX = "base_model.model."  # the key prefix of every weight PEFT saves


class AdapterError(Exception):
    """An adapter that cannot be applied (message is one line)."""


@dataclass(frozen=True)
class Adapter:
    spec: str  # --model: the adapter's folder or hub id
    revision: str | None  # --revision: the adapter's
    config: dict  # its adapter_config.json
    base: str  # the base model's folder or hub id (--base-model, else the one the adapter names)
    base_revision: str | None  # None for --base-model (a folder) or when the adapter names none

    @property
    def task_type(self) -> str | None:
        return self.config.get("task_type")

    def weights(self) -> dict[str, Any]:
        """The adapter's saved tensors, keys as the base model names them (PEFT's prefix dropped)."""
        from peft.utils import load_peft_weights

        kwargs = {"revision": self.revision} if self.revision else {}
        try:
            tensors = load_peft_weights(self.spec, device="cpu", **kwargs)
        except Exception as err:  # a missing or damaged adapter_model file: peft, safetensors and torch raise their own
            raise AdapterError(f"adapter {self.spec!r}: its weights cannot be read ({first_line(err)})") from err
        return {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in tensors.items()}

    def prepare(self, config) -> None:
        """Fit the base's config to the adapter: a SEQ_CLS adapter makes a causal-LM base a sequence classifier with
        its head's rows as labels."""
        if self.task_type != "SEQ_CLS":
            return
        archs = list(getattr(config, "architectures", None) or [])
        config.architectures = [a.replace("ForCausalLM", "ForSequenceClassification") for a in archs]
        heads = [v for k, v in self.weights().items() if k.rsplit(".", 1)[0] in _HEADS and k.endswith(".weight")]
        if heads:
            config.num_labels = heads[0].shape[0]

    def apply(self, model, info: dict) -> tuple[Any, dict]:
        """The base ``model`` with the adapter applied and merged (eval mode), and transformers' load report of the
        base with the weights the adapter supplies (its trained head) no longer missing."""
        from peft import PeftModel

        kwargs = {"revision": self.revision} if self.revision else {}
        try:
            merged = PeftModel.from_pretrained(model, self.spec, is_trainable=False, **kwargs).merge_and_unload()
        except Exception as err:  # an adapter for other module names or shapes: peft raises ValueError, KeyError, ...
            raise AdapterError(f"adapter {self.spec!r} cannot be applied to its base {self.base!r}: "
                               f"{first_line(err)}") from err
        supplied = set(self.weights())
        missing = [k for k in info.get("missing_keys") or () if k not in supplied]
        return merged, {**info, "missing_keys": missing}

    def describe(self) -> dict:
        """The manifest's record of the adapter (model.adapter)."""
        return {"id": self.spec, "peft_type": self.config.get("peft_type"), "task_type": self.task_type,
                "base": self.base, "base_revision": self.base_revision, "r": self.config.get("r"),
                "target_modules": _json_list(self.config.get("target_modules"))}


def _json_list(value):
    return sorted(value) if isinstance(value, (list, set, tuple)) else value


def find(spec: str, revision: str | None, base_model: str | None, offline: bool) -> Adapter | None:
    """The adapter ``spec`` is (None when it has no adapter_config.json). AdapterError when it is one that names no
    base and none was given, or when peft is not installed."""
    import json

    from transformers.utils.peft_utils import find_adapter_config_file

    try:
        path = find_adapter_config_file(spec, revision=revision, local_files_only=offline)
    except Exception:  # no network, an invalid id: not an adapter as far as can be known; loading says why
        path = None
    if path is None:
        if base_model is not None:
            raise AdapterError(f"--base-model {base_model} is for PEFT adapters, but model {spec!r} has no "
                               "adapter_config.json; drop --base-model")
        return None
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise AdapterError(f"model {spec!r} is a PEFT adapter (adapter_config.json) and peft is not installed; "
                           "pip install 'matching-atlas[peft]' (or peft)") from err
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AdapterError(f"adapter {spec!r}: its adapter_config.json cannot be read ({first_line(err)})") from err
    named = config.get("base_model_name_or_path")
    if base_model is None and not named:
        raise AdapterError(f"adapter {spec!r} names no base model (base_model_name_or_path); pass it with --base-model")
    if base_model is not None:
        return Adapter(spec, revision, config, base_model, None)
    return Adapter(spec, revision, config, named, config.get("revision"))
