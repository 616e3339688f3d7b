"""Layer names a student can read, for the terms of a decomposition.

A :class:`~tgrad.decompose.Term` is named by the qualified name of the module that adds
its bias (``_blocks.1._bn1``) and typed by its kind (``BatchNorm2d+ReLU6``). For each
term :func:`layer_labels` gives a :class:`LayerLabel`: a ``title`` to show, e.g.
``"Block 2 · depthwise conv · 56 x 56"``, the module ``path`` and a technical ``detail``
line for a tooltip. The rules are generic over torchvision-style CNNs (no per-model
tables); a title is ``place · operation · size``:

* The input term is ``"Input · H x W"`` (path ``"input"``).
* **Place**, from the module path's prefixes (the final module excluded) whose module
  has children: the first all-digit segment (an element of a Sequential/ModuleList that
  is itself a block) gives ``"Block N"`` with N = index + 1, deeper digit segments are
  ignored; a word-and-number segment gives its words titled and its number
  (``layer2`` -> ``"Layer 2"``, ``denseblock3`` -> ``"Dense block 3"``, ``denselayer4``
  -> ``"Dense layer 4"``, ``transition1`` -> ``"Transition 1"``, ``stage_2`` ->
  ``"Stage 2"``, ``inception3a`` -> ``"Inception 3a"``). Several places are all shown,
  outermost first (``"Layer 2 · Block 1"``).
* A term with no place takes the role word of its conv's name when there is one
  (``_conv_stem`` -> ``"Stem"``, ``_conv_head`` -> ``"Head"``; the operation then says
  just ``conv``/``1x1 conv``). Otherwise, in a model where other terms have places, a
  term before all of them is ``"Stem"`` and one after all of them ``"Head"`` (ResNet's
  ``bn1``, DenseNet's ``norm0``/``norm5``), so that it cannot be mistaken for ResNet's
  ``"Layer 1"``; anywhere else (VGG, AlexNet: no places at all) it is ``"Layer k"``,
  k being its 1-based position among the layer terms (the input excluded).
* **Operation**: the module adding the bias is a BatchNorm (possibly with a saturating
  activation joined to its term) or a conv/Linear with a bias. A BatchNorm is named by
  the conv that feeds it: the Conv2d registered immediately before it among its
  parent's children with ``out_channels == num_features``; without one (DenseNet's
  pre-activation ``norm1``), or when that conv adds a bias term of its own, it is
  ``"batch norm"``. A conv is named by its role: ``groups == in == out > 1`` ->
  ``"depthwise conv"``; else a role word in its attribute name (``_expand_conv`` ->
  ``"expand conv"``, ``_project_conv`` -> ``"project conv"``, ``_conv_stem``,
  ``_conv_head``, ``squeeze``, ``conv_pw`` -> ``"pointwise conv"``) or a ``downsample``
  / ``shortcut`` module on its path (-> ``"shortcut conv"``); else ``"1x1 conv"`` for a
  1x1 kernel and ``"conv"`` otherwise. A saturating activation that is a term of its
  own (kind ``ReLU6``) is ``"ReLU6 clipping"``. Kernel, stride, groups and channels go
  into ``detail``, never into the title.
* A Linear bias outside any place is ``"Classifier bias"``, with ``" (layer k)"`` (k
  among those Linear terms) when there are several; ``detail`` names its in -> out
  features. A Linear inside a place is ``"place · linear layer"``.
* **Size**: ``" · h x w"`` from the term's grid (absent for non-spatial terms).

A term whose module is not found in the given model (terms from another model) still
gets a label, built from its kind: ``"Layer k · <kind>"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from tgrad.decompose import SATURATING, Term

__all__ = ["LayerLabel", "layer_labels"]

_INPUT_DETAIL = "the input image times the logit's gradient (x * dy/dx)"

SEPARATOR = " · "

_NUMBERED = re.compile(r"_*([A-Za-z][A-Za-z_]*?)_?(\d+)([a-z]?)")
"""A word-and-number path segment: ``layer2``, ``denseblock3``, ``stage_2``, ``inception3a``."""

_SUFFIX_WORDS = ("block", "layer", "stage", "unit", "group", "cell")
"""Words split off the end of a compound segment word: ``denseblock`` -> ``dense block``."""

_ROLES = {
    "stem": "stem",
    "head": "head",
    "expand": "expand",
    "project": "project",
    "proj": "project",
    "reduce": "reduce",
    "squeeze": "squeeze",
    "pointwise": "pointwise",
    "pw": "pointwise",
    "depthwise": "depthwise",
    "dw": "depthwise",
    "shortcut": "shortcut",
    "downsample": "shortcut",
}
"""Role words found in a conv's attribute name (split at non-letters), by the word shown."""

_SHORTCUT_MODULES = frozenset({"downsample", "shortcut"})
"""Path segments whose convs are a residual shortcut's (ResNet's ``downsample.0``)."""

_PLACE_ROLES = frozenset({"stem", "head"})
"""Roles that name a place of their own for a term outside any block."""


@dataclass(frozen=True)
class LayerLabel:
    """How one term is shown: a readable title, and its module path and details."""

    title: str
    """What a student reads, e.g. ``"Block 2 · depthwise conv · 56 x 56"``."""
    path: str
    """The module path, e.g. ``"_blocks.1._bn1"`` (``"input"`` for the input term)."""
    detail: str
    """One technical line, e.g. ``"Conv2d 3x3 depthwise, stride 2 (96 channels) ->
    BatchNorm2d -> ReLU6"``."""


@dataclass(frozen=True)
class _Operation:
    title: str
    detail: str
    role: str | None = None
    """The role word taken from the conv's name (``stem``, ``expand``, ...), if any."""
    plain: str | None = None
    """The title without that role word (``conv``, ``1x1 conv``)."""


def layer_labels(module: nn.Module, terms: Sequence[Term]) -> list[LayerLabel]:
    """One :class:`LayerLabel` per term, in order (see the module docstring for the rules).

    Args:
        module: the model the terms were computed on (term names are its module paths).
        terms: the terms of a decomposition, e.g. ``TGrad(module)(x).terms``.
    """
    modules = dict(module.named_modules())
    modules["<model>"] = module
    layer_terms = [t for t in terms if t.name != "input"]
    places = {id(t): _places(modules, _module_path(t.name)) for t in layer_terms}
    classifiers = [
        t
        for t in layer_terms
        if isinstance(modules.get(_module_path(t.name)), nn.Linear) and not places[id(t)]
    ]
    classifier_ids = {id(t) for t in classifiers}
    placed = [k for k, t in enumerate(layer_terms) if places[id(t)]]  # 0-based
    labels = []
    k = 0
    for term in terms:
        if term.name == "input":
            labels.append(_input_label(term))
            continue
        k += 1
        target = modules.get(_module_path(term.name))
        made_of = term.source or term.kind
        if target is None:
            title = SEPARATOR.join((f"Layer {k}", made_of.replace("+", " + ")))
            detail = made_of.replace("+", " -> ")
            labels.append(LayerLabel(title + _size(term), term.name, detail))
            continue
        if id(term) in classifier_ids:
            labels.append(_classifier_label(term, target, classifiers))
            continue
        operation = _operation(modules, _module_path(term.name), target, term)
        place = places[id(term)]
        op_title = operation.title
        if not place:
            if operation.role in _PLACE_ROLES and operation.plain is not None:
                place, op_title = [operation.role.capitalize()], operation.plain
            elif placed and k - 1 < placed[0]:
                place = ["Stem"]
            elif placed and k - 1 > placed[-1]:
                place = ["Head"]
            else:
                place = [f"Layer {k}"]
        in_se = _in_squeeze_excite(_module_path(term.name), modules)
        if in_se and not op_title.startswith("squeeze"):
            op_title = f"squeeze-excite {op_title}"
        title = SEPARATOR.join((*place, op_title)) + _size(term)
        labels.append(LayerLabel(title, term.name, operation.detail))
    return labels


def _size(term: Term) -> str:
    grid = term.grid
    return "" if grid is None else f"{SEPARATOR}{grid[0]} x {grid[1]}"


def _input_label(term: Term) -> LayerLabel:
    return LayerLabel("Input" + _size(term), "input", _INPUT_DETAIL)


def _classifier_label(term: Term, linear: nn.Linear, classifiers: list[Term]) -> LayerLabel:
    title = "Classifier bias"
    if len(classifiers) > 1:
        index = next(i for i, c in enumerate(classifiers) if c is term)
        title += f" (layer {index + 1})"
    detail = f"Linear {linear.in_features} -> {linear.out_features} features"
    return LayerLabel(title, term.name, detail + _activations(term))


def _words(word: str) -> str:
    """``denseblock`` -> ``Dense block``, ``layer`` -> ``Layer``, ``my_stage`` -> ``My stage``."""
    word = word.strip("_").replace("_", " ").lower()
    for suffix in _SUFFIX_WORDS:
        if word.endswith(suffix) and len(word) > len(suffix) and word[-len(suffix) - 1] != " ":
            word = f"{word[: -len(suffix)]} {suffix}"
            break
    return word[:1].upper() + word[1:]


def _places(modules: dict[str, nn.Module], path: str) -> list[str]:
    """The places of a module path, outermost first (see the module docstring)."""
    parts = path.split(".") if path else []
    places: list[str] = []
    block_seen = False
    for i in range(1, len(parts)):  # the prefixes, the final module excluded
        segment = parts[i - 1]
        container = modules.get(".".join(parts[:i]))
        if container is None or next(container.children(), None) is None:
            continue
        if segment.isdigit():
            if not block_seen:
                places.append(f"Block {int(segment) + 1}")
                block_seen = True
        elif match := _NUMBERED.fullmatch(segment):
            word, number, letter = match.groups()
            places.append(f"{_words(word)} {int(number)}{letter}")
    return places


def _module_path(name: str) -> str:
    """The module path of a term's name: ``_blocks.1._bn1#2`` -> ``_blocks.1._bn1``,
    ``block:2`` -> ``block`` (its second output shape)."""
    return name.split("#", 1)[0].split(":", 1)[0]


def _activations(term: Term) -> str:
    """The activations joined to a term, as ``" -> ReLU6"`` (from its source
    ``"BatchNorm2d+ReLU6"``)."""
    return "".join(f" -> {part}" for part in (term.source or term.kind).split("+")[1:])


_SQUEEZE_EXCITE = re.compile(r"squeeze_?excit|excitation|(^|_)se($|_|\d)", re.IGNORECASE)

_NORMS = (
    (nn.GroupNorm, "group norm"),
    (nn.modules.instancenorm._InstanceNorm, "instance norm"),
)


def _norm_title(module: nn.Module) -> str:
    for base, title in _NORMS:
        if isinstance(module, base):
            return title
    name = type(module).__name__.lower()
    if "layernorm" in name or isinstance(module, nn.LayerNorm):
        return "layer norm"
    return "rms norm" if "rms" in name else "normalisation"


def _in_squeeze_excite(path: str, modules: dict[str, nn.Module]) -> bool:
    """Whether the module at ``path``, or one that holds it, is a squeeze-excite block
    (by its type's name or its attribute name)."""
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        module = modules.get(".".join(parts[:i]))
        if _SQUEEZE_EXCITE.search(parts[i - 1]) or (
            module is not None and _SQUEEZE_EXCITE.search(type(module).__name__)
        ):
            return True
    return False


_ROLE_DETAILS = {
    "gate": "the product of input-dependent tensors",
    "norm": "a normalisation, whose output is nearly all intercept",
    "activation": "a smooth activation's tangent intercept",
    "saturation": "clipped units, constant where saturated",
    "bias": "a constant added",
}


def _intercept_operation(
    modules: dict[str, nn.Module], path: str, module: nn.Module, term: Term
) -> _Operation:
    """A term made by a module without a bias of its own: a gate, a norm, an activation."""
    name = type(module).__name__
    roles = term.kind.split("+")
    made_of = (term.source or term.kind).replace("+", " + ")
    detail = f"{name}: {', '.join(_ROLE_DETAILS.get(r, r) for r in roles)}"
    if made_of != name:
        detail += f" ({made_of})"
    if "gate" in roles:
        squeeze = _in_squeeze_excite(path, modules)
        return _Operation("squeeze-excite gate" if squeeze else "gate", detail)
    if "norm" in roles:
        return _Operation(_norm_title(module), detail)
    if roles == ["saturation"]:
        return _Operation(f"{name} clipping", detail)
    return _Operation(f"{name} activation", detail)


def _conv_type(conv: _ConvNd) -> str:
    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(conv, base):
            return base.__name__
    return type(conv).__name__


def _depthwise(conv: _ConvNd) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels > 1


def _conv_detail(conv: _ConvNd) -> str:
    kernel = "x".join(map(str, conv.kernel_size))
    text = f"{_conv_type(conv)} {kernel}"
    if _depthwise(conv):
        text += " depthwise"
    stride = tuple(conv.stride)
    if any(s != 1 for s in stride):
        text += f", stride {stride[0] if len(set(stride)) == 1 else 'x'.join(map(str, stride))}"
    if conv.groups > 1 and not _depthwise(conv):
        text += f", groups {conv.groups}"
    if _depthwise(conv):
        return f"{text} ({conv.out_channels} channels)"
    return f"{text} ({conv.in_channels} -> {conv.out_channels} channels)"


def _conv_role(path: str, conv: _ConvNd) -> str | None:
    """The role word taken from a conv's attribute name or its shortcut module, if any."""
    parts = path.split(".")
    for word in re.findall(r"[a-z]+", parts[-1].lower()):
        if word in _ROLES:
            return _ROLES[word]
    if _SHORTCUT_MODULES.intersection(p.strip("_").lower() for p in parts[:-1]):
        return "shortcut"
    return None


def _conv_operation(path: str, conv: _ConvNd, after: str = "") -> _Operation:
    """Name a conv by its role; ``after`` is what follows it in the detail line."""
    plain = "1x1 conv" if all(k == 1 for k in conv.kernel_size) else "conv"
    detail = _conv_detail(conv) + after
    if _depthwise(conv):
        return _Operation("depthwise conv", detail)
    role = _conv_role(path, conv)
    if role == "depthwise":  # named so, but not one filter per channel: keep it plain
        role = None
    if role is None:
        return _Operation(plain, detail)
    return _Operation(f"{role} conv", detail, role, plain)


def _feeding_conv(
    modules: dict[str, nn.Module], path: str, norm: _BatchNorm
) -> tuple[str, nn.Conv2d] | None:
    """The Conv2d registered immediately before a BatchNorm in its parent, when its output
    channels are the BatchNorm's features; else None."""
    if not path:
        return None
    parent_path, _, name = path.rpartition(".")
    parent = modules.get(parent_path)
    if parent is None:
        return None
    previous: tuple[str, nn.Module] | None = None
    for child_name, child in parent.named_children():
        if child_name == name:
            break
        previous = (child_name, child)
    else:
        return None
    if previous is None or not isinstance(previous[1], nn.Conv2d):
        return None
    if previous[1].out_channels != norm.num_features:
        return None
    prefix = f"{parent_path}." if parent_path else ""
    return prefix + previous[0], previous[1]


def _operation(
    modules: dict[str, nn.Module], path: str, module: nn.Module, term: Term
) -> _Operation:
    """What a term's module does: its title word(s) and its detail line."""
    after = _activations(term)
    if isinstance(module, SATURATING):
        name = type(module).__name__
        bounds = " and ".join(f"{b:g}" for b in (module.min_val, module.max_val) if b != 0)
        return _Operation(f"{name} clipping", f"{name} clipping at {bounds}")
    if isinstance(module, _BatchNorm):
        norm = f"{type(module).__name__}"
        fed = _feeding_conv(modules, path, module)
        if fed is not None and fed[1].bias is None:
            return _conv_operation(fed[0], fed[1], f" -> {norm}{after}")
        return _Operation("batch norm", f"{norm} ({module.num_features} channels){after}")
    if isinstance(module, _ConvNd):
        return _conv_operation(path, module, after)
    if isinstance(module, nn.Linear):
        detail = f"Linear {module.in_features} -> {module.out_features} features{after}"
        return _Operation("linear layer", detail)
    return _intercept_operation(modules, path, module, term)
