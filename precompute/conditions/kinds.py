"""Condition kinds as registered objects: the one place that says what each kind of ablation condition is.

A kind (``ablation_conditions.kind``) declares, once (as ir_measures declares a measure):

* its ``name``, its ``analysis`` (the Holm family its conditions are corrected in, per scope and measure; ``None`` for
  the baseline, which every family is tested against and which is tested in none) and its ``title`` (how the report
  and the app head its section);
* its id grammar: :meth:`ConditionKind.parse` reads an id (the form users type in flags and SQL, and the one the
  store keeps) into a :class:`~precompute.conditions.condition.Condition` whose parts are the store's columns, and
  :meth:`ConditionKind.format` prints it back to the same id;
* the ``--ablations`` set that asks for it, how that set (and the kind's other flags) expand into conditions
  (:meth:`ConditionKind.check` without a model, :meth:`ConditionKind.conditions` with one);
* how a condition is applied to a forward pass: what it contributes to the pass's
  :class:`~precompute.conditions.forward.Edits` (direction masks, head masks, component targets, QK edits) and the
  forward key that decides which conditions can share a forward.

Adding a kind is one :func:`register` call with a subclass of :class:`ConditionKind` (plus kernel support when it
needs a mechanism :class:`~precompute.conditions.forward.Edits` lacks); the CLI's ``--ablations``, ``--help``,
docs/store.md, the report and the stage read the registry. The built-in kinds live in
:mod:`precompute.conditions.attention_specs`, :mod:`~precompute.conditions.component_specs` and
:mod:`~precompute.conditions.subspace_specs`, registered in that order (the order ids are parsed in and the report
prints sections in). Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from precompute.conditions.vocabulary import AblationSpecError

NO_ABLATIONS = "none"  # the --ablations value that skips the stage


@dataclass(frozen=True)
class Analysis:
    """One analysis: its conditions are one Holm family (per scope and measure), stored as ``analysis``."""

    name: str  # ablation_conditions.analysis
    members: str  # how the report counts its conditions: "the run's 20 tested <members>"


ATTENTION = Analysis("attention", "attention conditions")
COMPONENTS = Analysis("components", "component conditions")
SUBSPACE = Analysis("subspace", "subspace conditions")


@dataclass(frozen=True)
class ModelShape:
    """What a kind needs of the loaded model to expand its set into conditions."""

    n_layers: int
    n_heads: int
    head_dim: int | None = None
    subspace_heads: tuple[tuple[int, int], ...] = ()  # the 'subspace' set's heads, resolved by the stage (top:N)
    # (layer, head, n) -> the alignments u_k . v_k of the n components an aligned subspace condition removes (the
    # stage reads them from the weights; None: not known, e.g. without a model)
    alignments: object = None


class ConditionKind:
    """One kind of condition. Subclasses set the class attributes and override what their kind does."""

    name: str = ""
    analysis: Analysis | None = None
    title: str = ""
    description: str = ""  # what one of its conditions removes (--help, docs/store.md)
    condition_set: str | None = None  # the --ablations set that asks for it; None: computed whenever ablations run
    set_help: str = ""  # what that set computes (--help)
    grammar: str = ""  # its id as --help and docs/store.md show it
    example: str = ""
    reserved: tuple[str, ...] = ()  # words its ids begin with: a user group (--ablation-group) may not take them
    measures_head: bool = False  # the pass also stores its own head's summary metrics (subspace_head_metrics)

    def parse(self, text: str, groups: dict[str, tuple[str, ...]] | None = None):
        """The condition ``text`` names, or None when ``text`` is not of this kind's grammar; AblationSpecError when
        it is but a part is bad. ``groups``: user group name -> directions (a stored id names a user group only)."""
        raise NotImplementedError

    def format(self, condition) -> str:
        """The condition's id (``parse(format(c)) == c``)."""
        raise NotImplementedError

    def check(self, request) -> None:
        """Validate the flags this kind reads (:class:`~precompute.conditions.request.AblationRequest`), no model."""

    def conditions(self, request, model: ModelShape) -> Iterable:
        """The conditions the request asks of this kind, resolved against the model."""
        return ()

    def forward_key(self, condition) -> str:
        """Conditions with one key may share a forward pass (:func:`precompute.conditions.forward.forward_groups`)."""
        return "_any"

    def forward_modes(self, condition) -> dict[str, str]:
        """Mechanism -> mode this condition sets for its whole forward (e.g. ``{"direction": "mask"}``)."""
        return {}

    def apply(self, condition, row: int, edits) -> None:
        """Write what the condition removes into row block ``row`` of ``edits`` (a forward's Edits)."""

    def uses_means(self, condition) -> bool:
        """Whether the pass needs the run's component means (component_means) for this condition."""
        return False

    def __repr__(self) -> str:
        return f"<condition kind {self.name}>"


REGISTRY: dict[str, ConditionKind] = {}


def register(kind: ConditionKind) -> ConditionKind:
    """Add ``kind`` to the registry (after those registered before it); its name and set must be new."""
    if not kind.name or kind.name in REGISTRY:
        raise ValueError(f"condition kind {kind.name!r} is empty or already registered")
    if kind.condition_set is not None and kind.condition_set in condition_sets():
        raise ValueError(f"--ablations set {kind.condition_set!r} already asks for another kind")
    REGISTRY[kind.name] = kind
    return kind


def kind_of(name: str) -> ConditionKind:
    """The registered kind called ``name``; KeyError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown condition kind {name!r}; known: {', '.join(REGISTRY)}") from None


def analysis_of(kind: str) -> str | None:
    """The analysis (Holm family) of conditions of ``kind``; None for the baseline."""
    found = kind_of(kind).analysis
    return None if found is None else found.name


def analyses() -> tuple[Analysis, ...]:
    """Every analysis of a registered kind, in registry order."""
    return tuple(dict.fromkeys(k.analysis for k in REGISTRY.values() if k.analysis is not None))


def condition_sets() -> tuple[str, ...]:
    """The ``--ablations`` sets, in registry order, then ``none``."""
    return (*(k.condition_set for k in REGISTRY.values() if k.condition_set), NO_ABLATIONS)


def check_sets(sets: Iterable[str]) -> tuple[str, ...]:
    """Validate ``--ablations``; () means no ablation stage."""
    sets = tuple(s.strip() for s in sets if s.strip())
    known = condition_sets()
    bad = [s for s in sets if s not in known]
    if bad:
        raise AblationSpecError(f"--ablations {','.join(sets)}: unknown set {bad[0]!r}; use any of {', '.join(known)}")
    if NO_ABLATIONS in sets:
        if len(sets) > 1:
            raise AblationSpecError(f"--ablations {NO_ABLATIONS} cannot be combined with other sets")
        return ()
    return tuple(dict.fromkeys(sets))


def reserved_names() -> set[str]:
    return {name for k in REGISTRY.values() for name in k.reserved}


def parse(condition_id: str, kind: str | None = None, groups: dict[str, tuple[str, ...]] | None = None):
    """The condition an id names: by ``kind``'s grammar when given (a stored row names its kind), else by the first
    registered kind whose grammar reads it. AblationSpecError (one line) when no kind reads it."""
    text = condition_id.strip()
    for candidate in [kind_of(kind)] if kind is not None else REGISTRY.values():
        found = candidate.parse(text, groups)
        if found is not None:
            return found
    grammars = "; ".join(f"{k.grammar} (e.g. {k.example})" for k in REGISTRY.values() if kind in (None, k.name))
    raise AblationSpecError(f"condition {condition_id!r}: expected {grammars}")


def sets_help() -> str:
    """``--ablations``'s help: every set and what it computes."""
    sets = "; ".join(f"{k.condition_set} ({k.set_help})" for k in REGISTRY.values() if k.condition_set)
    return (f"comma-separated condition sets: {sets}; {NO_ABLATIONS} (skip ablations). Rerunning with more sets "
            "computes only what the folder lacks")


def ids_help() -> str:
    """The condition ids of every kind, one line each (the ablation flags' group description)."""
    width = max(len(k.grammar) for k in REGISTRY.values())
    return "\n".join(f"  {k.grammar:<{width}}  {k.description} (e.g. {k.example})" for k in REGISTRY.values())
