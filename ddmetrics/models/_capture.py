"""One hook mechanism for every method that reads a network's intermediate tensors: PCBN and SRe²L
(BatchNorm inputs), DataDAM (activation outputs), and whichever method comes next."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from torch import Tensor, nn

#: what :func:`capture` records of a layer: its first input or its output
CAPTURED = ("input", "output")


@contextmanager
def capture(layers: Sequence[nn.Module], what: str = "output") -> Iterator[List[Optional[Tensor]]]:
    """Record a tensor of each of ``layers`` during the forward passes inside the block.

    Parameters
    ----------
    layers : sequence of nn.Module
        The layers to hook (a layer listed twice gets two slots).
    what : {"output", "input"}
        The layer's output, or its first input (a forward pre-hook: the tensor before the layer).

    Yields
    ------
    list of Tensor or None
        One slot per layer, overwritten by each call of that layer (the tensor still attached to
        the autograd graph); ``None`` for a layer that has not run. The hooks are removed on exit,
        even on error.

    Examples
    --------
    >>> relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]   # doctest: +SKIP
    >>> with capture(relus) as acts:                                    # doctest: +SKIP
    ...     net(x)
    """
    if what not in CAPTURED:
        raise ValueError(f"what must be one of {CAPTURED}, got {what!r}")
    slots: List[Optional[Tensor]] = [None] * len(layers)

    def hook_for(i: int) -> Callable:
        if what == "input":
            def pre_hook(module: nn.Module, inputs: Tuple[Tensor, ...]) -> None:
                slots[i] = inputs[0]
            return pre_hook

        def hook(module: nn.Module, inputs: Tuple[Tensor, ...], output: Tensor) -> None:
            slots[i] = output
        return hook

    register = (lambda m, fn: m.register_forward_pre_hook(fn)) if what == "input" else \
        (lambda m, fn: m.register_forward_hook(fn))
    handles = [register(layer, hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield slots
    finally:
        for h in handles:
            h.remove()
