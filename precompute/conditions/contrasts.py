"""Direct comparisons of two ablation conditions, as text: ``--contrasts q_d:d_q,cross:all`` (job, report, the
Ablations page). The vocabulary lives with the conditions so that the job's declared setting, the report and the app
parse it one way; the comparison itself is :func:`precompute.analyses.ranking_effects.compare_conditions`."""

from __future__ import annotations

DEFAULT_CONTRASTS = "q_d:d_q"  # the paper's central contrast: Query->Document hurts, Document->Query does not
EXPECTED = "A:B, two condition names or ids (q_d:d_q)"


def parse_contrasts(text: str | None) -> list[tuple[str, str]]:
    """``'q_d:d_q,cross:all'`` -> [('q_d', 'd_q'), ('cross', 'all')]; ValueError (one line) for a malformed item."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip() or ":" in b:
            raise ValueError(f"--contrasts {item!r}: expected {EXPECTED}")
        out.append((a.strip(), b.strip()))
    return list(dict.fromkeys(out))


def with_default(*texts: str | None) -> list[tuple[str, str]]:
    """``Q->D vs D->Q`` first, then the contrasts of each text in order, without repeats: what every view compares."""
    pairs = parse_contrasts(DEFAULT_CONTRASTS)
    for text in texts:
        pairs += parse_contrasts(text)
    return list(dict.fromkeys(pairs))


def normalise(items: tuple[str, ...]) -> tuple[str, ...]:
    """The declared setting's items checked and written one way (``a:b``); the settings framework names the flag and
    the value in its error, so the message here is what was expected."""
    pairs = []
    for item in items:
        try:
            pairs += parse_contrasts(item)
        except ValueError:
            raise ValueError(f"{item!r} is not {EXPECTED}") from None
    return tuple(dict.fromkeys(f"{a}:{b}" for a, b in pairs))
