"""The JSON payloads the endpoints return beside their pictures: ``/explain``'s
decomposition, ``/compare``'s timings, ``/sanity``'s similarities (and the class they
all name, written once)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from explorer.draw import NORMALISATION, STOPPED
from explorer.explanation import Explanation, MethodMap, SanityRun
from tgrad.decompose import how_exact


def target(explanation: Explanation) -> dict[str, Any]:
    """The explained class: ``{"index": 967, "name": "espresso"}``."""
    return {"index": explanation.target, "name": explanation.categories[explanation.target]}


def decomposition(explanation: Explanation) -> dict[str, Any]:
    """The logit's terms as plain JSON (what the ``/explain`` API returns).

    ``kind`` is what the term is made of (SPEC 2's roles: ``input``, ``bias``,
    ``bias+saturation``, ``bias+activation``, ``gate``, ``norm``), ``source`` the module
    types or operations behind it (``"Conv2d+BatchNorm2d+SiLU"``; empty for the input);
    ``contribution`` is in logit units; ``share`` is ``contribution / total_size``, with
    ``total_size`` the sum of the absolute contributions of all terms (a signed fraction
    that stays meaningful when the logit is small or negative; None when every term is
    0); ``grid`` is [h, w] or None for a non-spatial (classifier) term. The contributions
    plus ``gap`` sum to ``logit``.
    """
    logit = explanation.logit
    total = explanation.total_size
    rows = []
    for term in explanation.result.terms:
        value = float(term.contribution[0])
        rows.append(
            {
                "term": term.name,
                "kind": term.kind,
                "source": term.source,
                "grid": list(term.grid) if term.grid else None,
                "contribution": value,
                "share": value / total if total else None,
            }
        )
    return {
        "model": explanation.model,
        "target": target(explanation),
        "logit": logit,
        "probability": explanation.probability,
        "gap": explanation.gap,
        "exactness": how_exact(explanation.result.terms),
        "total_size": total,
        "terms": rows,
    }


def compare_timings(
    explanation: Explanation,
    methods: Sequence[str],
    done: Mapping[str, MethodMap],
    stopped: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``/compare`` API's JSON: for each method its status (``done``, ``pending``
    or ``stopped``) and time in milliseconds (for methods computed in one shared pass,
    the time of that pass and how many shared it; for Integrated Gradients its
    ``convergence_delta`` in logit units, SPEC 3), plus the model, the class and the
    normalisation of the grid."""
    rows = {}
    for method in methods:
        found = done.get(method)
        if found is None:
            rows[method] = {"status": STOPPED if method in stopped else "pending"}
            continue
        rows[method] = {
            "status": "done",
            "ms": round(found.seconds * 1000, 3),
            "shared_pass_of": found.shared_with,
            "layer": found.layer,
        }
        if found.convergence_delta is not None:
            rows[method]["convergence_delta"] = found.convergence_delta
    return {
        "model": explanation.model,
        "target": target(explanation),
        "normalisation": NORMALISATION,
        "methods": rows,
    }


def sanity_numbers(
    explanation: Explanation, run: SanityRun, stopped: bool = False
) -> dict[str, Any]:
    """The ``/sanity`` API's JSON: the run's status (``running``, ``done`` or
    ``stopped``), then each step's group (module names and readable name) and every
    similarity."""
    names = ("original", *run.names)
    return {
        "model": explanation.model,
        "target": target(explanation),
        "groups": run.groups,
        "status": STOPPED if stopped else "done" if run.complete else "running",
        "steps": [
            {
                "group": step.group,
                "name": names[index] if index < len(names) else step.group,
                "seconds": round(step.seconds, 3),
                "similarity": step.similarity,
            }
            for index, step in enumerate(run.steps)
        ],
    }
