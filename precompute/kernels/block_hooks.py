"""Hooks on a family's components, for one forward pass at a time: the residual stream entering each layer
(``resid``, TransformerLens' ``resid_pre``), the attention block's output projection (``attn``), the MLP block's
output projection (``mlp``) and the last layer's output (``resid_post``, the stream the score is read from).

What the hooks do is read from the batch state in flight (:class:`~precompute.kernels.state.BatchState`):

* **remove** (component ablations): replace ``attn`` or ``mlp`` output rows by zero or by the component's mean
  over the run's pairs (per layer and segment), at every token or at one segment's tokens, per batch row. The
  removal point is the projection's output, before the block adds it to the residual stream (post-LN BERT:
  ``LayerNorm(dense(x) + residual)`` keeps its residual and LayerNorm; pre-LN decoders: the block's
  ``o_proj``/``down_proj`` output before the add);
* **capture** (activation patching): keep the activations of a clean or corrupted run (and every layer's whole
  output, ``output``, for resuming);
* **patch**: replace the activations of chosen rows at chosen positions by captured ones;
* **resume**: layers below a patched one return the corrupted run's captured output instead of computing
  (their activations are the corrupted run's anyway), which is where batched patching saves its time;
* **gradients** (attribution patching): the first layer's input becomes a leaf that requires grad, so every
  activation after it is in the autograd graph; each block output passes a gate whose backward can drop that
  layer's gradient (AtP*'s GradDrop, :class:`GradGates`);
* **stop**: a forward pass ends right after one layer's attention, for the attention weights of a patched input
  (:class:`Stopped`).

Head outputs (a head's attention output before the output projection) are captured and patched inside the
attention kernels (:func:`head_outputs`), not by a module hook.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Any

import torch

from precompute.kernels.probe import current_state
from precompute.names import FINAL_COMPONENT

COMPONENTS: tuple[str, ...] = ("attn", "mlp")  # what component ablations remove
FINAL = FINAL_COMPONENT  # the last layer's output: patched at that layer only (it is the next layer's resid elsewhere)
OUTPUT = "output"  # capture kind of every layer's whole output (what a resumed layer returns)
ALL_TOKENS = -2  # component target: every (non-padding) token; 0..4 = one segment's tokens; -1 = nothing


@dataclass
class PatchOp:
    """Replace the ``kind`` output of ``layer`` (head ``head`` for kind 'head') of the batch rows ``rows`` at
    ``positions`` by ``source`` (both given for those rows only)."""

    kind: str  # 'resid' | 'attn' | 'mlp' | 'resid_post' | 'head'
    layer: int
    rows: slice  # the batch rows patched (one variant's block of rows = pairs x variants, variant-major)
    positions: torch.Tensor  # [rows, seq] bool
    source: torch.Tensor  # [rows, seq, hidden] (or [rows, seq, head_dim] for 'head')
    head: int | None = None

    def apply(self, out: torch.Tensor) -> None:
        """Patch ``out`` ([batch, seq, dim] of the op's rows, already selected for a head) in place."""
        out[self.rows] = torch.where(self.positions[..., None], self.source.to(out.dtype), out[self.rows])


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states inside a module's output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def repeat_rows(output: Any, k: int, batch: int) -> Any:
    """A captured output for ``k`` times as many rows (condition-major): every tensor with ``batch`` rows is repeated."""
    if isinstance(output, tuple):
        return tuple(repeat_rows(x, k, batch) for x in output)
    if isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[0] == batch and k > 1:
        return output.repeat(k, *[1] * (output.dim() - 1))
    return output


def head_outputs(state, layer: int, out: torch.Tensor) -> torch.Tensor:
    """The heads' outputs [batch, head, q, dv] of ``layer`` with the state's head patches applied (and captured when
    asked): called by both attention kernels right after their attention product."""
    ops = [op for op in state.patches if op.kind == "head" and op.layer == layer]
    if ops:
        out = out.clone()
        for op in ops:
            op.apply(out[:, op.head])  # a view of one head: patched in place
    if "head" in state.capture:
        state.captured[("head", layer)] = out
    return out


def _remove(state, kind: str, layer: int, out: torch.Tensor) -> torch.Tensor:
    iv = state.intervention
    target = iv.components[:, layer, COMPONENTS.index(kind)]  # [batch] int
    if not bool((target != -1).any()):
        return out
    seg = state.segments  # [batch, seq]
    where = ((target[:, None] == ALL_TOKENS) & (seg >= 0)) | (seg == target[:, None])  # [batch, seq]
    if iv.component_mode == "zero":
        replacement = torch.zeros_like(out)
    else:  # mean: each token gets its segment's mean output of this layer and component
        means = iv.means[layer, COMPONENTS.index(kind)].to(out.dtype)  # [5, hidden]
        replacement = means[seg.clamp(min=0)]  # [batch, seq, hidden]
    return torch.where(where[..., None], replacement, out)


class Stopped(Exception):
    """Raised after the attention of ``state.stop_after`` ran: the rest of the forward pass is not needed. Carries
    the pass's state (what it captured)."""

    def __init__(self, state):
        super().__init__(f"stopped after the attention of layer {state.stop_after}")
        self.state = state


class GradGates:
    """AtP*'s GradDrop: every block output of the forward pass goes through an identity whose backward multiplies
    the gradient by 0 while ``dropped`` is its layer, so one forward pass serves a backward pass per dropped layer
    (set ``dropped``, then ask autograd for the gradients again)."""

    def __init__(self):
        self.dropped: int | None = None

    def __call__(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        return _Gate.apply(x, self, layer)


class _Gate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gates, layer):
        ctx.gates, ctx.layer = gates, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad * 0 if ctx.gates.dropped == ctx.layer else grad), None, None


def _patched(state, kind: str, layer: int, out: torch.Tensor) -> torch.Tensor:
    """``out`` with the state's patches of (kind, layer) applied, captured when asked."""
    ops = [op for op in state.patches if op.kind == kind and op.layer == layer]
    if ops:
        out = out.clone()
        for op in ops:
            op.apply(out)
    if kind in state.capture:
        state.captured[(kind, layer)] = out
    return out


def _block_hook(kind: str, layer: int):
    def hook(module, args, output):
        state = current_state()
        out = hidden_of(output)
        if state.intervention is not None and state.intervention.components is not None:
            out = _remove(state, kind, layer, out)
        out = _patched(state, kind, layer, out)
        if state.gates is not None:  # after the capture: dropping this layer drops the gradient of its outputs too
            out = state.gates(out, layer)
        return with_hidden(output, out)

    return hook


def _input_hook(layer: int):
    """The residual stream entering ``layer``: its first argument (or ``hidden_states``)."""

    def hook(module, args, kwargs):
        state = current_state()
        positional = bool(args)
        hidden = args[0] if positional else kwargs["hidden_states"]
        if layer == 0 and state.gates is not None:  # attribution: the graph starts here
            hidden = hidden.detach().requires_grad_(True)
        hidden = _patched(state, "resid", layer, hidden)
        if positional:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return hook


def _output_hook(layer: int, last: bool):
    def hook(module, args, output):
        state = current_state()
        if last:
            output = with_hidden(output, _patched(state, FINAL, layer, hidden_of(output)))
        if OUTPUT in state.capture:
            state.captured[(OUTPUT, layer)] = output
        return output

    return hook


def _attention_hook(layer: int):
    def hook(module, args, output):
        state = current_state()
        if state.stop_after == layer:
            raise Stopped(state)

    return hook


class ComponentHooks:
    """Installs the component hooks of a loaded model for a ``with`` block and always removes them."""

    def __init__(self, lm):
        self.layers = lm.family.layers(lm.model)
        self.modules: dict[tuple[str, int], torch.nn.Module] = lm.family.component_modules(lm.model)
        self.attentions = lm.family.self_attentions(lm.model)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        last = len(self.layers) - 1
        for (kind, layer), module in self.modules.items():
            if kind == "resid":  # the layer itself: its input is the stream entering it, its output the next one's
                self._stack.callback(module.register_forward_pre_hook(_input_hook(layer), with_kwargs=True).remove)
                self._stack.callback(module.register_forward_hook(_output_hook(layer, layer == last)).remove)
            else:
                self._stack.callback(module.register_forward_hook(_block_hook(kind, layer)).remove)
        for layer, module in enumerate(self.attentions):
            self._stack.callback(module.register_forward_hook(_attention_hook(layer)).remove)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def resume_above(self, first: int, output: Any):
        """Layers below ``first`` return ``output`` (the corrupted run's output of layer ``first - 1``, for the
        forward's rows) instead of computing: each ignores its input, so the layers before the last resumed one can
        return the same object (a T5 block also passes on the position bias, the same at every layer)."""
        swapped = self.layers[:first]
        try:
            for layer in swapped:
                layer.forward = types.MethodType(lambda self, *a, **k: output, layer)
            yield
        finally:
            for layer in swapped:
                layer.__dict__.pop("forward", None)
