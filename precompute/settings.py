"""How a job setting is declared, once, and everything read from that declaration.

Every setting of ``python -m precompute`` is a field of :class:`precompute.config.JobConfig` whose metadata holds a
:class:`Setting` built by :func:`setting` (in the manner of Datasette's ``SETTINGS``): its flag, help text, argument
group, value kind (how the flag's text is parsed and written back, how the value is kept in the manifest, which
texts are malformed), whether it is part of the run identity and under which manifest key, and which field of the
ablation request it feeds. From these the CLI's parser (:mod:`precompute.cli`), the manifest's identity and its record
of every invocation's settings, :meth:`precompute.conditions.AblationRequest.from_config` and the rerun command the app
and the report print (:func:`rerun_command`) are generated; nothing else restates a flag, a default or a help text.

Imports nothing of precompute and nothing heavy: ``--help`` reads it.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRAM = "python -m precompute"


class SettingError(ValueError):
    """A malformed setting value; the message is one line that names the flag."""


# -- value kinds -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How one kind of value is written: ``parse`` reads the flag's text (ValueError saying what was expected),
    ``show`` writes a value back as that text (``parse(show(v)) == v``), ``json`` is its type in the manifest,
    ``malformed`` are texts the CLI refuses for the setting, by ``parse`` or by the checks of the settings together
    (the CLI test feeds each). ``repeat``: the flag may be given several
    times, one item each; ``switch``: a flag without a value that sets the opposite of the default."""

    parse: Callable[[str], Any]
    show: Callable[[Any], str] = str
    json: Any = str
    malformed: tuple[str, ...] = ()
    metavar: str | None = None
    repeat: bool = False
    switch: bool = False
    bounds: tuple | None = None  # (low, high) of a number, for the manifest's checks and docs
    recorded: Callable[[Any], Any] | None = None  # reads the manifest's value when writing it back as text would not do

    def to_json(self, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [self.to_json(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    def from_json(self, value: Any) -> Any:
        """The manifest's value as the setting's: lists as tuples, paths as Path; ValueError when it is not one the
        flag could have given (it is checked by writing it back as flag text and parsing that)."""
        if value is None:
            return None
        if self.switch:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if self.repeat:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {value!r}")
            return tuple(self.parse(str(v)) for v in value)
        if self.recorded is not None:
            return self.recorded(value)
        if isinstance(value, list):
            value = tuple(value)
        return self.parse(self.show(value))


def integer(low: int | None = None) -> Kind:
    """A whole number, at least ``low``."""
    expected = "an integer" if low is None else f"an integer of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected {expected}") from None
        if low is not None and value < low:
            raise ValueError(f"expected {expected}")
        return value

    return Kind(parse, json=int, malformed=("x", "1.5", "") + (() if low is None else (str(low - 1),)), metavar="N",
                bounds=None if low is None else (low, None))


def number(low: float | None = None) -> Kind:
    """A finite real number, at least ``low``."""
    expected = "a number" if low is None else f"a number of at least {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected {expected}") from None
        if value != value or value in (float("inf"), float("-inf")) or (low is not None and value < low):
            raise ValueError(f"expected {expected}")
        return value

    below = None if low is None else (low / 2 if low > 0 else low - 1)  # a value under the bound whatever its sign
    return Kind(parse, show=repr, json=float, malformed=("x", "", "nan", "inf") + (() if below is None else (repr(below),)),
                metavar="X", bounds=None if low is None else (low, None))


def text(*, expected: str = "a non-empty value", check: Callable[[str], bool] | None = None,
         malformed: tuple[str, ...] = ()) -> Kind:
    """A non-empty text (stripped), accepted by ``check`` when given."""

    def parse(value: str) -> str:
        value = value.strip()
        if not value or (check is not None and not check(value)):
            raise ValueError(f"expected {expected}")
        return value

    return Kind(parse, malformed=("", *malformed))


def choice(choices: Sequence[str]) -> Kind:
    """One of ``choices``."""
    choices = tuple(choices)

    def parse(value: str) -> str:
        if value.strip() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value.strip()

    return Kind(parse, malformed=("bogus", ""), metavar="{" + ",".join(choices) + "}")


def items(*, allowed: Sequence[str] | None = None, normalise: Callable[[tuple], tuple] | None = None,
          empty: str | None = None, malformed: tuple[str, ...] = (), metavar: str = "ITEMS") -> Kind:
    """A comma-separated list (items stripped, empty items dropped), each in ``allowed`` when given; ``normalise``
    checks and normalises the whole list (ValueError); ``empty`` is the text of an empty list (``none``), which
    otherwise is refused."""

    def parse(value: str) -> tuple[str, ...]:
        out = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in out if allowed is not None and v not in allowed]
        if bad:
            raise ValueError(f"{bad[0]!r} is not one of {', '.join(allowed)}")
        if normalise is not None:
            out = tuple(normalise(out))
        if not out and empty is None:
            raise ValueError("expected at least one item" + (f" of {', '.join(allowed)}" if allowed else ""))
        return out

    def show(value: Sequence[str]) -> str:
        return ",".join(value) if value else (empty or "")

    def recorded(value: Any) -> tuple[str, ...]:  # a list, empty for an empty default (no --patching)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of texts")
        return parse(",".join(value)) if value else ()

    bogus = ("bogus",) if allowed is not None else ()
    return Kind(parse, show, json=list[str], malformed=(*bogus, *malformed), metavar=metavar, recorded=recorded)


def repeated(item: Callable[[str], str], *, malformed: tuple[str, ...] = (), metavar: str = "ITEM") -> Kind:
    """A flag given once per item (``--ablation-group A --ablation-group B``); ``item`` checks one."""

    def parse(value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("expected a value")
        item(value)
        return value

    return Kind(parse, json=list[str], malformed=("", *malformed), metavar=metavar, repeat=True)


def pair(*, expected: str, malformed: tuple[str, ...] = ()) -> Kind:
    """Two comma-separated items whose spaces are kept (``' yes, no'`` keeps the space of ``yes``)."""

    def parse(value: str) -> tuple[str, str]:
        out = tuple(v for v in value.split(",") if v.strip())
        if len(out) != 2:
            raise ValueError(f"expected {expected}")
        return out

    return Kind(parse, ",".join, json=list[str], malformed=(*malformed, "", "yes,no,maybe"), metavar="A,B")


def text_or_file(*, metavar: str = "TEXT") -> Kind:
    """A text, or ``@FILE``: the file's text (trailing newline dropped), recorded as the text itself."""

    def parse(value: str) -> str:
        if not value.startswith("@"):
            if not value.strip():
                raise ValueError("expected a non-empty text or @FILE")
            return value
        try:
            return Path(value[1:]).read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise ValueError(f"cannot read the file {value[1:]!r} ({reason})") from None

    def recorded(value: Any) -> str:  # the text itself: a manifest never makes the job or the app read a file
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a non-empty text")
        return value

    return Kind(parse, json=str, malformed=("", "@/nonexistent/template.txt"), metavar=metavar, recorded=recorded)


def folder() -> Kind:
    """A path (non-empty: an empty one would be the current folder)."""

    def parse(value: str) -> Path:
        if not str(value).strip():
            raise ValueError("expected a folder path")
        return Path(value)

    return Kind(parse, json=str, malformed=("",), metavar="DIR")


def switch() -> Kind:
    """A flag without a value (``--no-progress``): given, the setting takes the opposite of its default."""

    def parse(value: str) -> bool:
        raise ValueError("takes no value")

    return Kind(parse, json=bool, switch=True)


# -- the declaration -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting as :func:`setting` declares it; ``name`` is its JobConfig field (filled by :func:`declared`)."""

    default: Any
    kind: Kind
    flag: str
    help: str | Callable[[], str]  # a callable is read only when --help is printed (it may import something heavy)
    group: str
    identity: str | None = None  # its key in the manifest's identity (None: not part of the identity)
    identity_doc: str | None = None  # what the identity holds when it is not the value as given
    request: str | None = None  # the AblationRequest field it feeds
    needs: str | None = None  # a setting without which this one means nothing (depth needs candidates)
    shown: bool = False  # always written in rerun commands, even at its default (dataset, model)
    metavar: str | None = None
    name: str = ""

    def argv(self, value: Any) -> list[str]:
        """The command-line words that give ``value`` ([] for None)."""
        if value is None:
            return []
        if self.kind.switch:
            return [self.flag] if value != self.default else []
        if self.kind.repeat:
            return [w for v in value for w in (self.flag, self.kind.show(v))]
        return [self.flag, self.kind.show(value)]

    def parse(self, given: Any) -> Any:
        """The value of the flag's text as given (a list of texts for a repeated flag, True for a given switch);
        SettingError naming the flag otherwise."""
        if self.kind.switch:
            return not self.default
        try:
            if self.kind.repeat:
                return tuple(self.kind.parse(v) for v in given)
            return self.kind.parse(given)
        except ValueError as err:
            shown = " ".join(map(repr, given)) if self.kind.repeat else repr(given)
            raise SettingError(f"{self.flag} {shown}: {err}") from None

    def default_text(self) -> str | None:
        """The default as the flag's text, for --help (None: no default worth printing)."""
        if self.default is None or self.kind.switch:
            return None
        if self.kind.repeat:
            return " ".join(self.argv(self.default)) or None
        return self.kind.show(self.default) or None


def setting(default: Any, kind: Kind, *, flag: str, help: str, group: str, identity: bool | str = False,
            identity_doc: str | None = None, request: str | None = None, needs: str | None = None,
            shown: bool = False, metavar: str | None = None) -> Any:
    """A JobConfig field declaring one setting (see :class:`Setting`); ``identity=True`` keys it in the identity by
    its field name, a string by that key (kept from older manifests). Tuples and None are the only defaults a
    setting needs, so the field takes ``default`` as it is."""
    spec = Setting(default, kind, flag, help, group, identity or None, identity_doc, request, needs, shown, metavar)
    return field(default=default, metadata={"setting": spec})


def declared(config: type | object) -> tuple[Setting, ...]:
    """The settings a dataclass (or an instance of one) declares, in field order, each with its name."""
    return tuple(dataclasses.replace(f.metadata["setting"], name=f.name)
                 for f in dataclasses.fields(config) if "setting" in f.metadata)


def identity_key(s: Setting) -> str | None:
    return s.name if s.identity is True else s.identity


def applies(s: Setting, values: Mapping[str, Any]) -> bool:
    """Whether ``s`` means anything given the other settings (depth only with candidates)."""
    return s.needs is None or values.get(s.needs) is not None


def values_of(config: object) -> dict[str, Any]:
    return {s.name: getattr(config, s.name) for s in declared(config)}


def identity_values(config: object) -> dict[str, Any]:
    """The run identity of ``config`` as the manifest stores it (keys of older manifests kept; a setting that does
    not apply is null)."""
    values = values_of(config)
    return {identity_key(s): s.kind.to_json(values[s.name]) if applies(s, values) else None
            for s in declared(config) if s.identity}


def request_values(config: object) -> dict[str, Any]:
    """The AblationRequest fields ``config``'s settings feed, by request field name."""
    return {s.request: getattr(config, s.name) for s in declared(config) if s.request}


def to_record(config: object) -> dict[str, Any]:
    """Every setting of ``config`` as the manifest records an invocation's: field name -> JSON value."""
    return {s.name: s.kind.to_json(getattr(config, s.name)) for s in declared(config)}


def from_record(config_class: type, record: Mapping[str, Any], *, ignore_unknown: bool = False, **changes: Any) -> Any:
    """A ``config_class`` from a manifest's record of settings (:func:`to_record`), with ``changes`` applied;
    settings the record lacks take their defaults. SettingError naming the flag for a value the flag could not have
    given, or for a key no setting declares (a newer version's setting) unless ``ignore_unknown``."""
    settings = {s.name: s for s in declared(config_class)}
    unknown = sorted(set(record) - set(settings))
    record = {k: v for k, v in record.items() if k in settings}
    if unknown and not ignore_unknown:
        raise SettingError(f"the recorded settings hold {unknown[0]!r}, which this version does not declare")
    values = {}
    for name, value in record.items():
        try:
            values[name] = settings[name].kind.from_json(value)
        except ValueError as err:
            raise SettingError(f"{settings[name].flag} {value!r} as recorded: {err}") from None
    return config_class(**{**values, **changes})


def from_identity(config_class: type, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an identity (of any schema version) records, by field name: each declared identity key read
    back through its declaration (null values, and values its flag could not have given, left out)."""
    return _readable({s.name: (s, identity.get(identity_key(s))) for s in declared(config_class) if s.identity})


def from_request(config_class: type, request: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an ablation request records (a manifest's ``ablations.last_request``), by field name (as
    :func:`from_identity`)."""
    return _readable({s.name: (s, request.get(s.request)) for s in declared(config_class) if s.request})


def _readable(recorded: Mapping[str, tuple[Setting, Any]]) -> dict[str, Any]:
    out = {}
    for name, (s, value) in recorded.items():
        try:
            if value is not None:
                out[name] = s.kind.from_json(value)
        except ValueError:
            continue
    return out


def rerun_command(config_class: type, values: Mapping[str, Any], out: Path | str, *, leave_out: Sequence[str] = (),
                  show: Sequence[str] = ()) -> str:
    """``python -m precompute`` with every setting of ``values`` (field name -> value) that differs from its default,
    is always shown (dataset, model) or is named in ``show``, in declaration order, then ``--out out``; every word
    shell-quoted. ``leave_out``: settings not written (where the run folder is: --out replaces them)."""
    words = PROGRAM.split()
    for s in declared(config_class):
        if s.name in leave_out or s.name not in values or not applies(s, values):
            continue
        value = values[s.name]
        if value != s.default or s.shown or s.name in show:
            words += s.argv(value)
    words += ["--out", str(out)]
    return " ".join(shlex.quote(w) for w in words)
