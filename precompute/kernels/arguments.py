"""Every argument an attention call can carry, applied or refused: never silently dropped.

Transformers passes an attention function the layer's query, key, value and mask plus model-specific
keywords. A kernel that ignored one (T5's ``position_bias``, Gemma-2's ``softcap``) would summarise
attention the model never computed: a wrong number with no error. :func:`parse_call` therefore sorts
every keyword into

* applied here: ``scaling``, ``position_bias`` (added to the logits), ``softcap`` (tanh soft-capping of
  the logits), grouped-query key/value heads (repeated to the query heads), ``is_causal`` without a mask;
* applied by the mask the kernel receives: ``sliding_window`` (transformers builds the window into the
  mask through the registered mask function; a call with a window and no mask is refused);
* without effect on attention weights, named in :data:`NO_EFFECT` with the reason;
* anything else that is not None: :class:`~precompute.kernels.state.KernelError`, naming the argument.

``dropout`` must be 0 (the model is in eval mode): a training-mode call is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from precompute.kernels.state import KernelError

# Keywords that carry no information about the attention weights of an eval-mode, cache-free forward pass.
NO_EFFECT: dict[str, str] = {
    "position_ids": "positions are already applied to the queries and keys (rotary) or to the embeddings",
    "use_cache": "no cache is used: every pair is one full forward pass",
    "deterministic": "a flash-attention setting",
    "cache_position": "no cache is used",
    "past_key_values": "no cache is used",
    "output_attentions": "the kernel returns no weights to the model",
}


@dataclass
class AttentionCall:
    """One attention call, with everything that shapes its weights made explicit."""

    query: torch.Tensor  # [batch, head, q, dh]
    key: torch.Tensor  # [batch, head, k, dh] (key/value heads repeated for grouped-query attention)
    value: torch.Tensor  # [batch, head, k, dv]
    mask: torch.Tensor | None  # additive float [b, 1|h, q, k] or bool (True = may attend), as the model built it
    scaling: float
    position_bias: torch.Tensor | None = None  # additive [1|b, h, q, k]
    softcap: float | None = None

    def logits(self, rows: slice = slice(None), out: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, head, q, k] float32 attention logits of the query rows ``rows``, exactly as the model's eager
        attention forms them. Every step after the product runs in place, and float32 products are written into
        ``out`` when given (a reused buffer): on the CPU a fresh [b, h, q, k] tensor per step costs more in page
        faults than the arithmetic (bench/precompute.py)."""
        query = self.query[:, :, rows]
        if out is not None and query.dtype == torch.float32:
            logits = torch.matmul(query, self.key.transpose(2, 3), out=out)
        else:
            logits = torch.matmul(query, self.key.transpose(2, 3)).float()
        logits.mul_(self.scaling)
        if self.softcap is not None and logits.requires_grad:  # autograd keeps tanh's output: not in place
            logits = torch.tanh(logits / self.softcap) * self.softcap
        elif self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        if self.position_bias is not None:
            logits.add_(_rows(self.position_bias, rows))
        if self.mask is not None:
            mask = _rows(self.mask, rows)
            if mask.dtype == torch.bool:
                logits.masked_fill_(~mask, torch.finfo(torch.float32).min)
            else:
                logits.add_(mask)
        return logits


def _rows(x: torch.Tensor, rows: slice) -> torch.Tensor:
    """Query rows of a [., ., q, k] mask or bias (one broadcast row stays as it is)."""
    return x if x.shape[-2] == 1 else x[..., rows, :]


def repeat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, kv_heads, s, d] -> [batch, heads, s, d]: grouped-query key/value heads shared by their query heads."""
    kv = x.shape[1]
    if kv == heads:
        return x
    if heads % kv:
        raise KernelError(f"{heads} query heads cannot share {kv} key/value heads evenly")
    return x.repeat_interleave(heads // kv, dim=1)


def parse_call(module, query, key, value, attention_mask, scaling, dropout, kwargs: dict) -> AttentionCall:
    """The call as an :class:`AttentionCall`; KernelError for anything the kernels do not implement."""
    if dropout and getattr(module, "training", False):
        raise KernelError(f"{type(module).__name__} runs attention dropout ({dropout}): the model must be in eval mode")
    kwargs = dict(kwargs)
    position_bias = kwargs.pop("position_bias", None)
    softcap = kwargs.pop("softcap", None)
    sliding_window = kwargs.pop("sliding_window", None)
    is_causal = kwargs.pop("is_causal", None)
    if kwargs.pop("encoder_hidden_states", None) is not None:
        raise KernelError(f"{type(module).__name__} was called as cross-attention over encoder_hidden_states, "
                          "which this model family does not map")
    for name, value_ in kwargs.items():
        if value_ is not None and name not in NO_EFFECT:
            raise KernelError(f"{type(module).__name__} passed the attention argument {name!r} "
                              f"({type(value_).__name__}), which Matching Atlas's kernels do not implement; refusing "
                              "rather than computing attention without it")
    if sliding_window is not None and attention_mask is None:
        raise KernelError(f"{type(module).__name__} asked for a sliding window of {sliding_window} without a mask "
                          "that carries it")
    heads = query.shape[1]
    mask = attention_mask
    if is_causal and mask is None:
        q_len, k_len = query.shape[-2], key.shape[-2]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    return AttentionCall(
        query=query, key=repeat_heads(key, heads), value=repeat_heads(value, heads), mask=mask,
        scaling=query.size(-1) ** -0.5 if scaling is None else scaling,
        position_bias=position_bias, softcap=softcap,
    )
