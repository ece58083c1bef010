"""The job's stages, in the order they run. Each is a :class:`~precompute.stages.base.Stage` (check what
exists, compute what is missing, merge, record) over one :class:`~precompute.stages.context.RunContext`.

Adding a stage: one module here with a ``STAGE`` object, plus its entry below.
"""

from __future__ import annotations

from precompute.stages import ablations, component_means, contrasts, patching, spectra, summaries
from precompute.stages.base import Stage

# Ablations and patching last: the longest, and the others need neither (component means: mean-mode components only).
STAGES: dict[str, Stage] = {s.name: s for s in (summaries.STAGE, spectra.STAGE, contrasts.STAGE, component_means.STAGE,
                                                ablations.STAGE, patching.STAGE)}
