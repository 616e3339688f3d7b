"""The one place that registers hooks, runs forward + backward and removes hooks.

Every method in the engine (T-Grad, and the gradient and CAM baselines) is a pure
function of the :class:`Record` that one :func:`capture` call returns.

How gradients are recorded, and why:

* A *forward* hook on each watched module sees every call of that module (a module
  used twice in one forward, such as ResNet's shared ``relu``, gives two calls, each
  kept apart) and registers a *tensor* hook on that call's output. Calls are keyed by
  module identity and call order, never by the position of a layer in a list.
* A tensor hook registered before a later in-place operation (``ReLU(inplace=True)``,
  ResNet's ``out += identity``) receives the gradient with respect to the value
  *before* that operation, which is the one the decomposition needs. Module backward
  hooks are not used.
* The backward pass is ``torch.autograd.grad(y, x)``: no ``.grad`` of any parameter
  is touched and no weight gradient is computed.
* On CUDA the pass runs in true float32 (TF32 off for convolutions and matmuls, restored
  afterwards): TF32 rounds the forward and backward differently and breaks completeness
  by up to 5e-4 of the logit (measured on an H200: ``benchmarks/gpu_precision.py``).
* Hooks are registered per call and removed in ``finally``, so none survives an
  exception, and none exists between calls. A hook ignores forwards run by other
  threads, so several threads may explain with one model at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

Target = int | Sequence[int] | Tensor | None
"""A target class: None (top-1 of each sample), one int for the whole batch, or one per sample."""

OnGrad = Callable[["Call", Tensor], Tensor | None]
"""Called during the backward pass with a call and dy/d(its output), as soon as that
gradient is complete; what it returns is kept in :attr:`Call.grad`. Returning None lets
the gradient be freed at once, as in a plain backward pass, so a method that reduces
each gradient as it arrives keeps the memory (and the speed) of a plain backward."""

Keep = Callable[[nn.Module, tuple, Tensor], Tensor | None]
"""Called at forward time with (module, inputs, output); what it returns is kept in
:attr:`Call.value`. Use it to keep activations, or values derived from them, before a
later in-place operation can change them."""


@dataclass
class Call:
    """One call of a watched module during the recorded forward pass."""

    name: str
    """Qualified module name; the k-th call (k >= 2) of a reused module gets ``#k``."""
    module: nn.Module
    value: Tensor | None
    """What the watch's ``keep`` function returned for this call (detached), or None."""
    index: int
    """Position of the call in :attr:`Record.calls` (forward order)."""
    source: Call | None
    """The watched call whose output is this call's first input (same tensor), or None."""
    grad: Tensor | None = None
    """dy/d(output of this call), as the output was when the module returned (or what
    ``on_grad`` made of it). None if the output does not influence y."""


@dataclass
class Record:
    """What one forward + backward pass recorded. All tensors are detached."""

    input: Tensor
    """The model's input ``x`` [B,C,H,W], normalised as the model expects."""
    logits: Tensor
    """The model's output [B,K] (logits, before softmax)."""
    target: Tensor
    """The explained class of each sample [B] (long)."""
    input_grad: Tensor
    """dy/dx [B,C,H,W], with y the target logit of each sample."""
    calls: list[Call] = field(default_factory=list)

    @property
    def logit(self) -> Tensor:
        """The explained logit y of each sample [B]."""
        return self.logits.gather(1, self.target[:, None])[:, 0]


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Turn a target given by the caller into a long tensor [B] on the logits' device.

    ``None`` picks the top-1 class of each sample.
    """
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch} samples")
    if bool(((t < 0) | (t >= classes)).any()):
        raise ValueError(f"target class out of range 0..{classes - 1}: {t.tolist()}")
    return t


_precision_lock = threading.Lock()
_precision_users = 0
_saved_tf32: tuple[bool, bool] = (False, False)


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Turn TF32 off for CUDA convolutions and matmuls while the block runs.

    The flags are process-wide, so overlapping users (threads) are counted: the first
    one in saves and clears them, the last one out restores them. A no-op off CUDA.
    """
    global _precision_users, _saved_tf32
    if device.type != "cuda":
        yield
        return
    with _precision_lock:
        if _precision_users == 0:
            _saved_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _saved_tf32


def capture(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    watch: Mapping[nn.Module, Keep | None] | None = None,
    on_grad: OnGrad | None = None,
) -> Record:
    """Run ``model(x)`` forward and ``d logit_target / d(...)`` backward, recording calls.

    Args:
        model: the classifier; it must return logits [B,K].
        x: the input [B,C,H,W], normalised as the model expects.
        target: the explained class (see :data:`Target`).
        watch: the modules to record, each with an optional ``keep`` function.
        on_grad: what to keep of each watched call's gradient (default: all of it).

    Returns:
        a :class:`Record` with dy/dx and, for every call of a watched module, dy/d(output).
        The samples of a batch are independent: y is summed over the batch, which leaves
        each sample's gradients its own (the model must be in eval mode).
    """
    watch = dict(watch or {})
    names = {m: n for n, m in model.named_modules() if m in watch}
    owner = threading.get_ident()
    calls: list[Call] = []
    producer: dict[int, Call] = {}  # id(output tensor) -> the call that made it
    outputs: list[Tensor] = []  # keeps the outputs alive, so their ids stay unique
    counts: dict[nn.Module, int] = {}

    def on_forward(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if threading.get_ident() != owner or not isinstance(output, Tensor):
            return
        counts[module] = counts.get(module, 0) + 1
        name = names[module] + (f"#{counts[module]}" if counts[module] > 1 else "")
        keep = watch[module]
        value = keep(module, inputs, output) if keep is not None else None
        first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        call = Call(
            name=name,
            module=module,
            value=None if value is None else value.detach(),
            index=len(calls),
            source=producer.get(id(first)) if first is not None else None,
        )
        calls.append(call)
        outputs.append(output)
        producer[id(output)] = call
        if output.requires_grad:
            output.register_hook(
                lambda g, c=call: setattr(c, "grad", g if on_grad is None else on_grad(c, g))
            )

    handles = [m.register_forward_hook(on_forward) for m in names]
    try:
        with torch.enable_grad(), exact_float32(x.device):
            x_in = x.detach().requires_grad_(True)
            logits = model(x_in)
            if logits.dim() != 2:
                raise ValueError(f"the model must return logits [B,K], got {tuple(logits.shape)}")
            t = resolve_target(target, logits.detach())
            y = logits.gather(1, t[:, None]).sum()
            (input_grad,) = torch.autograd.grad(y, x_in)
    finally:
        for h in handles:
            h.remove()
    return Record(
        input=x.detach(), logits=logits.detach(), target=t, input_grad=input_grad, calls=calls
    )
