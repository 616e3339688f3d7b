"""The evaluation job's results files: one JSON record per unit (image, method), checked
as read, appended with a flush and fsync; ``run.json``, the settings that change numbers
(see :mod:`tgrad.evaluate`)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

_SETTINGS_FILE = "run.json"


def _results_file(out: Path, rank: int, world: int) -> Path:
    return out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")


_UNIT_RANGES: dict[str, tuple[float, float]] = {
    "insertion": (0.0, 1.0),
    "deletion": (0.0, 1.0),
    "average_drop": (0.0, 100.0),
    "increase_in_confidence": (0.0, 100.0),
    "original": (0.0, 1.0),
    "masked": (0.0, 1.0),
    "ms_map": (0.0, math.inf),
    "ms_total": (0.0, math.inf),
}
"""The numbers of a unit's record and their ranges (AUCs and probabilities in [0, 1],
percentages in [0, 100], times in ms)."""
_TIMES = ("ms_map", "ms_total")  # differ between runs; every other field is a result


class RecordError(ValueError):
    """A results file holds a record that cannot be trusted (named by file and line)."""


def check_record(record: object) -> str | None:
    """What is wrong with one record of a results file, or None when it is valid.

    A record is a JSON object with a non-empty ``image`` and ``method`` (strings), and
    either an ``error`` (a string: the image could not be read) or a unit's numbers: an
    integer ``target`` >= 0, ``target_from`` ``"top1"`` or ``"wnid"``, and each number of
    :data:`_UNIT_RANGES` finite and in its range.
    """
    if not isinstance(record, dict):
        return f"a record is a JSON object, got {type(record).__name__}"
    for key in ("image", "method"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"{key!r} must be a non-empty string"
    if "error" in record:
        return None if isinstance(record["error"], str) else "'error' must be a string"
    target = record.get("target")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        return f"'target' must be a class index (an integer >= 0), got {_excerpt(target)}"
    if record.get("target_from") not in ("top1", "wnid"):
        return f"'target_from' must be 'top1' or 'wnid', got {_excerpt(record.get('target_from'))}"
    for key, (low, high) in _UNIT_RANGES.items():
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key!r} must be a number, got {_excerpt(value)}"
        if not math.isfinite(value) or not low <= value <= high:
            return f"{key!r} must be a finite number in [{low:g}, {high:g}], got {value!r}"
    return None


def _excerpt(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _same_result(a: dict, b: dict) -> bool:
    """Two records of one unit that agree on everything but the times."""
    return {k: v for k, v in a.items() if k not in _TIMES} == {
        k: v for k, v in b.items() if k not in _TIMES
    }


def read_records(
    out: str | Path, warn: Callable[[str], None] | None = None
) -> dict[tuple[str, str], dict]:
    """Every record in ``out/results*.jsonl``, keyed by (image, method); files in sorted
    order.

    A line that is not UTF-8 or not complete JSON (a write torn by a kill) is skipped with
    a warning naming the file and line (``warn``, default: stderr), and its unit is done
    again. A record that parses but is not valid (:func:`check_record`), or a second
    record of a unit with other results than the first, is a :class:`RecordError` naming
    both lines: it cannot be told which to trust. A second record with the same results
    (a copied file; only the times may differ) is harmless, and the first is kept.
    """
    say = warn or (lambda line: print(line, file=sys.stderr))
    records: dict[tuple[str, str], dict] = {}
    where: dict[tuple[str, str], str] = {}
    for path in sorted(Path(out).glob("results*.jsonl")):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                here = f"{path.name} line {number}"
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    say(f"warning: {path}: line {number} is not UTF-8 text; skipped")
                    continue
                except ValueError:
                    say(f"warning: {path}: line {number} is not a complete JSON record; skipped")
                    continue
                problem = check_record(record)
                if problem is not None:
                    raise RecordError(
                        f"{path}: line {number}: {problem}; delete that line (its unit is "
                        "then done again) or choose another --out"
                    )
                key = (record["image"], record["method"])
                if key not in records:
                    records[key], where[key] = record, here
                elif not _same_result(records[key], record):
                    raise RecordError(
                        f"{path}: line {number} gives other results for image "
                        f"{_excerpt(key[0])} and method {_excerpt(key[1])} than {where[key]}; "
                        "delete the one not to trust (or both: the unit is then done again)"
                    )
    return records


def _open_for_append(path: Path):
    """Open a results file for appending, first cutting off a torn last line."""
    if path.exists():
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
    return open(path, "a", encoding="utf-8")


def _append(f, record: dict) -> None:
    f.write(json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _check_settings(out: Path, settings: dict, write: bool) -> None:
    path = out / _SETTINGS_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = None
        if before is not None and before != settings:
            changed = sorted(
                k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k)
            )
            raise ValueError(
                f"{out} holds results of another run (different {', '.join(changed)}); "
                "choose another --out or delete it"
            )
    if write:
        path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
