"""Attention kernels: the functions that compute a layer's attention inside the model's forward pass and,
on the way, summarise it (:mod:`~precompute.kernels.eager`) or apply ablations to it
(:mod:`~precompute.kernels.sdpa`, and the eager path of the summary kernel).

* :mod:`~precompute.kernels.state`: the one batch state both kernels read (segments, masks, interventions).
* :mod:`~precompute.kernels.arguments`: every argument an attention call may carry, applied or refused.
* :mod:`~precompute.kernels.probe`: installs a kernel into a model for a ``with`` block (through transformers'
  ``AttentionInterface`` or by swapping an attention module's forward) and always restores it; maps each call
  to its layer by module.
"""
