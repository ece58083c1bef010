"""The job's stages, in the order they run. Each is a :class:`~precompute.stages.base.Stage` (check what
exists, compute what is missing, merge, record) over one :class:`~precompute.stages.context.RunContext`.

Adding a stage: one module here with a ``STAGE`` object, plus its entry below.
"""

from __future__ import annotations

from precompute.stages import (
    ablations_stage,
    component_means_stage,
    contrasts_stage,
    patching_stage,
    spectra_stage,
    summary_stage,
)
from precompute.stages.base import Stage

# Ablations and patching last: the longest, and the others need neither (component means: mean-mode components only).
STAGES: dict[str, Stage] = {s.name: s for s in (summary_stage.STAGE, spectra_stage.STAGE, contrasts_stage.STAGE,
                                                component_means_stage.STAGE, ablations_stage.STAGE,
                                                patching_stage.STAGE)}
