"""The run folder's ``manifest.json`` as typed sections: the one place that reads and writes it.

Every section is a dataclass whose fields carry a description (``field(metadata={"doc": ...})``);
``docs/store.md``'s manifest section is generated from them (``python -m precompute.store.docs``)
and a test fails when the two drift. The JSON layout is the one schema version 1 wrote, so older
manifests open unchanged; keys this checkout does not know are kept (``extra``) and written back.

Reading checks every known field against its declared type and, where the store schema limits it, its
bounds (``doc(..., bounds=(low, high))``: 1 to 128 layers and heads because head_attention.layer and .head are
int8, counts never negative): a manifest with ``model.heads = 30000000`` or ``"layers": "12"`` is refused with one
line naming the field, by the job and by the app alike, before anything is built from it.

    manifest = read_manifest(run)          # Manifest, or None when the folder has none
    manifest.counts.pairs, manifest.model.layers, manifest.ablations.conditions
    write_manifest(run, manifest)          # atomic (temporary file + rename)

Imports nothing heavy: the app and ``--help`` read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precompute import crash
from precompute.config import JobConfig
from precompute.settings import from_identity, from_record, from_request, identity_key, values_of

MANIFEST = "manifest.json"
STATUS_RUNNING, STATUS_COMPLETE = "running", "complete"
MAX_MANIFEST_BYTES = 64 * 2**20  # a real one is a few hundred KB (the ablation condition ids dominate)

# Bounds of the fields the store schema limits (inclusive; None = open). Layers and heads are stored as int8
# (head_attention.layer, .head: 0 to 127), pair ids as int32; a test checks these against precompute.store.schema.
MAX_LAYERS = MAX_HEADS = 128
MAX_PAIRS = 2**31 - 1
COUNT = (0, None)
POSITIVE = (1, None)


class ManifestError(Exception):
    """A manifest.json that cannot be read (message is one line and names the file)."""


def doc(text: str, default: Any = None, *, factory: Any = None, bounds: tuple | None = None) -> Any:
    """A dataclass field with its description (the generated docs read it) and, for a number or a mapping to numbers,
    the ``bounds`` (low, high) its values must lie in."""
    metadata = {"doc": text, "bounds": bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Section:
    """Base of every section: tolerant JSON round trip (missing keys take defaults, unknown keys are kept)."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"doc": None})

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> "Section":
        """The section from its JSON object; ValueError naming the field (``where``: the section's path) when a
        value is not of the field's type or outside its bounds."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"section {where.rstrip('.') or cls.__name__} is {_kind(data)}, expected an object")
        hints = typing.get_type_hints(cls)
        known, kwargs = set(), {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            known.add(f.name)
            if f.name in data:
                kwargs[f.name] = _load(hints[f.name], data[f.name], f"{where}{f.name}", f.metadata.get("bounds"))
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and any(_is_section(a) for a in typing.get_args(hints[f.name]))):
                continue  # an absent optional section stays absent, as schema version 1 wrote it
            out[f.name] = _dump(value)
        return out


def _load(hint: Any, value: Any, where: str, bounds: tuple | None = None) -> Any:
    """A JSON value as the field's type (``hint``): sections recursively, optional sections as None, mappings and
    lists element by element, scalars checked against their type and ``bounds``; ValueError naming ``where``."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):  # the first arm the value fits
            try:
                return _load(arm, value, where, bounds)
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    if _is_section(hint):
        return hint.from_dict(value, f"{where}.")
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} is {_kind(value)}, expected an object")
        return {k: _load(args[1], v, f"{where}.{k}", bounds) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} is {_kind(value)}, expected a list")
        return [_load(args[0], v, f"{where}[{i}]", bounds) for i, v in enumerate(value)]
    return _scalar(hint, value, where, bounds)


def _scalar(kind: type, value: Any, where: str, bounds: tuple | None) -> Any:
    numeric = kind in (int, float)
    ok = (isinstance(value, kind) and not isinstance(value, bool)) if numeric else isinstance(value, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)  # JSON writes 2.0 as 2 in some tools
    if ok and kind is float and not math.isfinite(value):
        ok = False
    low, high = bounds or (None, None)
    if ok and numeric and not ((low is None or value >= low) and (high is None or value <= high)):
        ok = False
    if not ok:
        raise ValueError(f"{where} is {_shown(value)}, expected {_expected(kind, bounds)}")
    return value


def _expected(kind: type, bounds: tuple | None) -> str:
    noun = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(kind, kind.__name__)
    low, high = bounds or (None, None)
    if low is not None and high is not None:
        return f"{noun} from {low} to {high}"
    if low is not None:
        return f"{noun} of at least {low}"
    return noun if high is None else f"{noun} of at most {high}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"the number {value}" if isinstance(value, (int, float)) else type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else _kind(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


def _dump(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    return value


# -- sections --------------------------------------------------------------------------------------


def _identity_fields() -> list[tuple]:
    """The identity's fields, one per setting declared part of it (precompute.config), under the key manifests have
    always used for it (``template`` for --prompt-template)."""
    out = []
    for s in JobConfig.settings():
        key = identity_key(s)
        if key:
            text = s.identity_doc or f"{s.flag} as given: {s.help}."
            out.append((key, s.kind.json | None, doc(text, bounds=s.kind.bounds)))
    return out


Identity = dataclasses.make_dataclass("Identity", _identity_fields(), bases=(Section,), namespace={
    "__module__": __name__,
    "__doc__": "What a run folder holds one of: a rerun with another value of any field is refused. One field per "
               "setting declared part of the identity (precompute.config.JobConfig).",
})


@dataclass
class ModelInfo(Section):
    """The model that scored the pairs, as loaded."""

    id: str | None = doc("--model as given (hub id or folder).")
    path: str | None = doc("Absolute path of the model folder when local; null for a hub id.")
    name: str | None = doc("Short name (last path component), used in run folder names.")
    revision: str | None = doc("Hub commit hash when known.")
    architecture: str | None = doc("Transformers class, e.g. BertForSequenceClassification.")
    model_type: str | None = doc("config.model_type, e.g. bert, roberta.")
    layers: int | None = doc("Number of attention layers (head_attention.layer is 0..layers-1).",
                              bounds=(1, MAX_LAYERS))
    heads: int | None = doc("Attention heads per layer.", bounds=(1, MAX_HEADS))
    hidden: int | None = doc("Hidden size (d_model).", bounds=POSITIVE)
    num_labels: int | None = doc("Output labels of the classification head (1 or 2).", bounds=POSITIVE)
    score: str | None = doc("What pairs.score is (names.SCORE_KINDS): 'logit' (one label), 'log_softmax[1]' (two labels: "
                            "log-probability of relevance), 'log_softmax[answer]' (generative rerankers: log-probability "
                            "of the positive answer token against the negative one).")
    family: str | None = doc("The model family (precompute.families), e.g. bert, deberta-v2, monot5, decoder-classifier. "
                             "Absent from schema-version-1 manifests (all of them bert-style encoders).")
    segment_labels: dict[str, str] = doc("What the five segment columns (cls, q, sep1, d, sep2) mean for this family: "
                                         "CLS/Query/SEP1/Document/SEP2 for pair templates, Prefix/Query/Middle/"
                                         "Document/Suffix for text templates.", factory=dict)
    causal: bool | None = doc("Whether a token attends only to earlier ones (decoders): directions into a later "
                              "segment are then NULL in head_attention.")
    attention: str | None = doc("How the kernels reach attention: 'interface' (transformers' AttentionInterface) or "
                                "'swap' (the attention module's forward, replaced while a probe runs).")
    template: str | None = doc("The input template of template families ({query}, {document} slots; {bos}/{eos} for "
                               "the tokenizer's special tokens).")
    answer_tokens: list[str] = doc("Generative rerankers: the (positive, negative) answer token strings.", factory=list)
    answer_ids: list[int] = doc("Their token ids.", factory=list, bounds=COUNT)
    adapter: dict | None = doc("A PEFT adapter --model, merged into its base before anything ran: id, peft_type, "
                               "task_type, base (the base model's folder or hub id), base_revision, r, target_modules; "
                               "null for a model that is not an adapter.")


@dataclass
class DatasetInfo(Section):
    """The dataset the pairs come from."""

    spec: str | None = doc("--dataset as given (dl19, dl20, an ir_datasets id or a folder).")
    name: str | None = doc("Short name used in run folder names, e.g. trec-dl-2020.")
    source: str | None = doc("Resolved source: the ir_datasets id or the folder's absolute path.")


@dataclass
class Counts(Section):
    """How many pairs and queries the run holds, and what was left out."""

    pairs: int | None = doc("Pairs scored (rows of the pairs table).", bounds=(0, MAX_PAIRS))
    queries: int | None = doc("Queries with at least one pair.", bounds=(0, MAX_PAIRS))
    neg_type: dict[str, int] = doc("Pairs per pairs.neg_type.", factory=dict, bounds=COUNT)
    skipped: dict[str, int] = doc("Judged pairs left out for missing passage text, per kind.", factory=dict, bounds=COUNT)
    truncated: int | None = doc("Pairs whose document was truncated to --max-length.", bounds=COUNT)


@dataclass
class TableInfo(Section):
    """One finished table of the run folder."""

    rows: int | None = doc("Rows of the table when it was written.", bounds=COUNT)


@dataclass
class SpectraInfo(Section):
    """The spectra stage's outcome."""

    computed: bool | None = doc("Whether the svd table was computed (false: the model's attention is not a plain bilinear form).")
    rows: int | None = doc("Rows of the svd table.", bounds=COUNT)
    matrix: str | None = doc("Which matrix the spectrum is of.")
    reason: str | None = doc("Why the spectra were not computed (when computed is false).")


@dataclass
class ContrastsInfo(Section):
    """The matching-head statistics stage's outcome."""

    rows: int | None = doc("Rows of head_contrasts.", bounds=COUNT)
    test: str | None = doc("The test and its multiple-testing correction.")


@dataclass
class AblationsInfo(Section):
    """The ablation stage: how the scores were computed and which conditions the folder holds."""

    kernel: str | None = doc("--ablation-kernel the scores were computed with (sdpa or eager); fixed for the folder.")
    stack: int | None = doc("--ablation-stack: conditions sharing a forward pass; fixed for the folder.",
                             bounds=POSITIVE)
    conditions: list[str] = doc("Condition ids in ablation_scores, sorted.", factory=list)
    counts: dict[str, int] = doc("Conditions per ablation_conditions.kind.", factory=dict, bounds=COUNT)
    measures: list[str] = doc("ir_measures names in ablation_metrics.", factory=list)
    scopes: list[str] = doc("Scopes in ablation_metrics (pairs, judged, run).", factory=list)
    groups: dict[str, list[str]] = doc("User and built-in groups computed: name -> directions.", factory=dict)
    last_request: dict[str, Any] = doc("The ablation request of the last job that ran the stage (every field of "
                                       "precompute.conditions.AblationRequest: sets, modes, layers, groups, sweep, heads, "
                                       "component_mode, components, subspace_heads, subspace_k, subspace_ops; older "
                                       "versions recorded the first six), how many conditions it requested "
                                       "(requested) and how many it computed (computed_now).", factory=dict)
    holm_families: dict[str, int] = doc("Per analysis (attention, components, subspace: each is its own Holm family), "
                                        "the largest number of tested conditions in one of its families (per scope x "
                                        "measure).", factory=dict, bounds=COUNT)
    refused: list[str] = doc("Conditions refused before the run because they remove only directions the model cannot "
                             "attend (causal models: into a later segment); they are not in the Holm families.",
                             factory=list)


@dataclass
class PatchingInfo(Section):
    """The patching stage: which experiments the folder holds, how they were computed and summarised."""

    experiments: list[str] = doc("Experiments in patching_effects (tfc1, tfc2, stmc1, cls).", factory=list)
    pairs: dict[str, int] = doc("Input pairs per experiment.", factory=dict, bounds=COUNT)
    skipped: dict[str, int] = doc("Run pairs drawn for an experiment but left out for want of aligned inputs (no "
                                  "content word with a filler of its token count; docs/patching.md).", factory=dict,
                                  bounds=COUNT)
    null_effects: dict[str, int] = doc("Rows whose effect is NULL (|clean - corrupted| < epsilon), per experiment.",
                                       factory=dict, bounds=COUNT)
    epsilon: float | None = doc("Score difference below which an effect is NULL.", bounds=(0, None))
    cls_pairs_per_query: int | None = doc("--patching-pairs of stores of schema version 3 and older: (relevant, hard) "
                                          "combinations drawn per query (cls; tfc1 then ran on every pair).",
                                          bounds=POSITIVE)
    pairs_per_query: int | None = doc("--patching-pairs: input pairs drawn per query for every experiment (with "
                                      "--seed); null in older stores.", bounds=POSITIVE)
    score: str | None = doc("--patching-score: the scale of clean, corrupted and patched ('logit': the relevance "
                            "logit, or the log-odds of relevance for two-label and answer-token models; "
                            "'probability'); null in older stores (the pairs.score scale).")
    methods: dict[str, str] = doc("--patching-method each experiment was computed with: 'exact', 'attribution', or "
                                  "'both' (attribution for every site, exact for the top heads).", factory=dict)
    top: int | None = doc("--patching-top: heads patched exactly per experiment under method 'both'.",
                          bounds=POSITIVE)
    exact_heads: dict[str, list[str]] = doc("Per experiment computed with 'both': the heads patched exactly ('L.H'), "
                                            "the top --patching-top by attribution's ratio_low.", factory=dict)
    graddrop: bool | None = doc("--patching-graddrop: whether attribution rows carry AtP*'s GradDrop score.")
    min_delta: float | None = doc("--patching-min-delta: |clean - corrupted| below which a pair is left out of the "
                                  "thresholded mean (patching_summary.tmean).", bounds=(0, None))
    resamples: int | None = doc("Bootstrap resamples of the intervals of patching_summary (queries resampled).",
                                bounds=POSITIVE)
    seed: int | None = doc("Seed of those resamples (the run's --seed).")
    level: float | None = doc("Coverage of those intervals (percentile bootstrap).", bounds=(0, 1))


@dataclass
class Invocation(Section):
    """One job that worked on the run folder (``invocations``, oldest first)."""

    started: str | None = doc("When the job started (UTC, ISO 8601); null for a job an older version recorded only in "
                              "the top-level timings.")
    status: str | None = doc("'complete' when it finished every requested stage; 'running' while it runs, and for a "
                             "job that was interrupted (a later job resumed its work).")
    timings: dict[str, float] = doc("Seconds per stage it ran (<stage>_s) and in all (total_s, once it finished).",
                                    factory=dict)
    computed: dict[str, int | None] = doc("Per stage it ran: the units it computed (ablation conditions, pairs of "
                                          "component means or patching); 0 when the stage found its work done, null "
                                          "when it computed but does not count.", factory=dict)
    settings: dict[str, Any] = doc("Every setting of the job, recorded as it started, by JobConfig field name: the "
                                   "flags' values as given, defaults included (comma lists as lists, an @FILE "
                                   "template as its text, folders as given). The job can be rebuilt from them "
                                   "(precompute.settings.from_record); the app's and the report's rerun command is "
                                   "written from the last job's. Absent from manifests of older versions.",
                                   factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> "Invocation":
        """As every section, and each recorded setting this version declares must be one its flag could give."""
        invocation = super().from_dict(data, where)
        declared = {s.name: s for s in JobConfig.settings()}
        for name, value in invocation.settings.items():
            if name in declared:
                try:
                    declared[name].kind.from_json(value)
                except ValueError as err:
                    raise ValueError(f"{where}settings.{name} is {_shown(value)}: {err}") from None
        return invocation


@dataclass
class Manifest(Section):
    """``manifest.json``: written first with status 'running', rewritten after every stage, 'complete' last."""

    schema_version: int | None = doc("Store schema version the folder was written with (precompute.store.schema.SCHEMA_VERSION).",
                                     bounds=POSITIVE)
    status: str | None = doc("'running' while a job writes the folder, 'complete' when every requested stage finished.")
    created: str | None = doc("When the folder's first job started (UTC, ISO 8601).")
    identity: Identity = doc("What fixes the run's numbers; a rerun with other values is refused.", factory=Identity)
    model: ModelInfo = doc("The model, as loaded.", factory=ModelInfo)
    dataset: DatasetInfo = doc("The dataset.", factory=DatasetInfo)
    parameters: dict[str, Any] = doc("Settings of the last job: the identity's (but model and dataset, whose sections "
                                     "say more) with device and dtype as resolved, and the number of ranks.",
                                     factory=dict)
    counts: Counts = doc("Pair and query counts.", factory=Counts)
    metrics: dict[str, Any] = doc("Effectiveness of the stored scores over the run's pairs (ir_measures): measure -> value, plus 'scope'.", factory=dict)
    tables: dict[str, TableInfo] = doc("Finished tables and their row counts.", factory=dict)
    timings: dict[str, float] = doc("Seconds per stage of the last job (<stage>_s) and in all (total_s): the last "
                                    "entry of invocations.", factory=dict)
    invocations: list[Invocation] = doc("Every job that worked on the folder, oldest first: when it started, its "
                                        "timings and what it computed (a folder resumed three times has four). Absent "
                                        "from manifests of older versions, which kept only the last job's timings.",
                                        factory=list)
    versions: dict[str, str] = doc("Python and package versions of the last job.", factory=dict)
    spectra: SpectraInfo | None = doc("The spectra stage's outcome; absent before it ran.")
    contrasts: ContrastsInfo | None = doc("The contrasts stage's outcome; absent before it ran.")
    ablations: AblationsInfo | None = doc("The ablation stage's settings and conditions; absent before it ran.")
    patching: PatchingInfo | None = doc("The patching stage's experiments; absent before it ran.")

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    def job_settings(self) -> dict[str, Any]:
        """The settings of the folder's last job, by JobConfig field name: as it recorded them when it started, or,
        for a manifest older than that record, what the manifest says of them (the dataset and model as given, the
        identity's other settings, the ablation request of the last job that ran the ablations)."""
        recorded = self.invocations[-1].settings if self.invocations else {}
        if recorded:
            return values_of(from_record(JobConfig, recorded, ignore_unknown=True))
        identity = {k: v for k, v in self.identity.to_dict().items() if k not in ("model", "dataset")}
        values = {**from_identity(JobConfig, identity),
                  **from_request(JobConfig, self.ablations.last_request if self.ablations else {})}
        for name, given in (("dataset", self.dataset.spec or self.identity.dataset),
                            ("model", self.model.id or self.identity.model)):
            if given:
                values[name] = given
        return values


# -- reading and writing -------------------------------------------------------------------------------


def manifest_path(run: Path | str) -> Path:
    return Path(run) / MANIFEST


def parse_manifest(text: str, *, source: str = MANIFEST) -> Manifest:
    """A manifest from its JSON text; ManifestError (naming ``source``) when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ManifestError(f"{source} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{source} holds a JSON {type(data).__name__}, expected an object")
    try:
        return Manifest.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ManifestError(f"{source} is not a Matching Atlas manifest ({err})") from err


def read_manifest(run: Path | str) -> Manifest | None:
    """The run folder's manifest, None when it has none; ManifestError when it cannot be read."""
    path = manifest_path(run)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is {path.stat().st_size:,} bytes, more than a manifest can be "
                                f"({MAX_MANIFEST_BYTES:,}): it is not one the job wrote")
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path} cannot be read ({err})") from err
    return parse_manifest(text, source=str(path))


def write_manifest(run: Path | str, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (temporary file, then rename)."""
    path = manifest_path(run)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    crash.point("manifest.temporary")
    os.replace(tmp, path)


def field_docs(section: type[Section]) -> list[tuple[str, str, str]]:
    """(field, type, description) of a section, for the generated docs."""
    hints = typing.get_type_hints(section)
    out = []
    for f in dataclasses.fields(section):
        text = f.metadata.get("doc")
        if text is None:
            continue
        out.append((f.name, _type_name(hints[f.name]) + bounds_text(f.metadata.get("bounds")), text))
    return out


def bounds_text(bounds: tuple | None) -> str:
    """``bounds`` as the generated docs write them after a type: ", 0 to 1", ", at least 0", "" when unbounded."""
    low, high = bounds or (None, None)
    if low is None and high is None:
        return ""
    if low is None:
        return f", at most {high:g}"
    return f", at least {low:g}" if high is None else f", {low:g} to {high:g}"


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return f"`{hint.__name__}` section" if issubclass(hint, Section) else hint.__name__
    text = str(hint).replace("typing.", "")
    for name in ("precompute.store.manifest.",):
        text = text.replace(name, "")
    return text.replace("NoneType", "null")
