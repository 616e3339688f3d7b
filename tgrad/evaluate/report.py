"""The evaluation job's report: the table (means over the images, in float64 with
:func:`math.fsum`), the per-image file and the two charts (see :mod:`tgrad.evaluate`)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tgrad.methods.controls import is_control

TABLE_COLUMNS: tuple[str, ...] = (
    "method",
    "n",
    "insertion",
    "deletion",
    "insertion_minus_deletion",
    "average_drop",
    "increase_in_confidence",
    "ms_per_image",
    "control",
)
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "image",
    "method",
    "target",
    "target_from",
    "insertion",
    "deletion",
    "average_drop",
    "increase_in_confidence",
    "ms_map",
    "ms_total",
)


class NothingEvaluatedError(ValueError):
    """No unit of the sample has a result (every image failed to load): no report."""


@dataclass(frozen=True)
class Report:
    """What :func:`evaluate` wrote (rank 0 only)."""

    rows: list[dict]
    """One row per method, with the keys of :data:`TABLE_COLUMNS`."""
    out: Path
    files: list[Path]
    images: int
    """The size of the sample."""
    failed: list[str]
    """Images that could not be read (left out of the means)."""
    ms_per_unit: dict[str, float]
    """Per method: the mean time of one image's whole unit (map + both metrics), in ms;
    1000 / it is the job's images per second for that method."""


def summarize(
    records: dict[tuple[str, str], dict], keys: Iterable[str], methods: Sequence[str]
) -> list[dict]:
    """The table: per method, means over the sample's images that have a record.

    Sums are :func:`math.fsum` over the records sorted by image key, in float64, so the
    result does not depend on the order in which records were made or read.
    """
    keys = sorted(keys)
    rows = []
    for method in methods:
        done = [records[(k, method)] for k in keys if (k, method) in records]
        done = [r for r in done if "error" not in r]
        count = len(done)

        def mean(values: Iterable[float], count: int = count) -> float:
            return math.fsum(values) / count if count else math.nan

        rows.append(
            {
                "method": method,
                "n": count,
                "insertion": mean(r["insertion"] for r in done),
                "deletion": mean(r["deletion"] for r in done),
                "insertion_minus_deletion": mean(r["insertion"] - r["deletion"] for r in done),
                "average_drop": mean(r["average_drop"] for r in done),
                "increase_in_confidence": mean(r["increase_in_confidence"] for r in done),
                "ms_per_image": mean(r["ms_map"] for r in done),
                "control": is_control(method),
            }
        )
    return rows


def _write_report(
    out: Path,
    rows: list[dict],
    records: dict[tuple[str, str], dict],
    keys: Sequence[str],
    methods: Sequence[str],
    title: str,
) -> list[Path]:
    from tgrad import viz  # matplotlib only once there is something to draw

    table_csv, table_md = out / "table.csv", out / "table.md"
    with open(table_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        for row in rows:  # repr: the shortest text that reads back as the same float
            writer.writerow([row["method"], row["n"], *(repr(row[c]) for c in TABLE_COLUMNS[2:])])
    formats = {
        "insertion": ".4f",
        "deletion": ".4f",
        "insertion_minus_deletion": ".4f",
        "average_drop": ".2f",
        "increase_in_confidence": ".2f",
        "ms_per_image": ".1f",
        "control": "",
    }
    lines = [
        f"{title}",
        "",
        "AUCs in [0, 1] (insertion: higher is better, deletion: lower); Average Drop and "
        "Increase in Confidence in %; ms_per_image: the map alone; control: a reference "
        "that knows nothing of the model (random, edge), the floor to beat.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1),
    ]
    for row in rows:
        cells = [row["method"], str(row["n"])]
        cells += [format(row[c], formats[c]) for c in TABLE_COLUMNS[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    table_md.write_text("\n".join(lines) + "\n", encoding="utf-8")

    per_image = out / "per_image.csv"
    with open(per_image, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PER_IMAGE_COLUMNS)
        for key in sorted(keys):
            for method in methods:
                record = records.get((key, method))
                if record is None or "error" in record:
                    continue
                writer.writerow([record.get(c, "") for c in PER_IMAGE_COLUMNS])

    names = [row["method"] for row in rows]
    time_png, auc_png = out / "time_per_method.png", out / "insertion_deletion.png"
    viz.method_times(names, [row["ms_per_image"] for row in rows], title).savefig(time_png, dpi=120)
    viz.method_scores(
        names,
        {
            "insertion": [row["insertion"] for row in rows],
            "deletion": [row["deletion"] for row in rows],
            "insertion - deletion": [row["insertion_minus_deletion"] for row in rows],
        },
        title,
    ).savefig(auc_png, dpi=120)
    return [table_csv, table_md, per_image, time_png, auc_png]
