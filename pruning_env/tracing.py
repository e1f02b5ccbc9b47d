"""The layer tracer: every leaf-module call of one forward pass, in order, with its shapes.

:class:`~pruning_env.engine.ModelGraph` orders its groups and layers by it (first call of each
module) and :func:`~pruning_env.macs.cost_units` lists the layers a plan's cost is the sum of (every
call, activations and pools included), so both see the same calls with the same shapes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["LeafCall", "trace_leaf_calls"]


class LeafCall(NamedTuple):
    """One call of a leaf module; shapes are without the batch dimension."""

    name: str  # the module's name in ``model.named_modules()``
    module: nn.Module
    in_shape: tuple[int, ...] | None  # of the first positional input; None when that is not a tensor
    out_shape: tuple[int, ...]


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)


def trace_leaf_calls(model: nn.Module, example_inputs: Any) -> list[LeafCall]:
    """Every call of a leaf module (one without children) that returns a tensor, in the order they run.

    The model runs once on ``example_inputs`` (a tensor, or a list/tuple of positional arguments) in
    eval mode under ``torch.no_grad()``; its training mode is restored afterwards. A module called
    twice appears twice. When the forward pass fails, a ``ValueError`` names the layer that raised.
    """
    calls: list[LeafCall] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(m, inp, out):
        if torch.is_tensor(out):
            x = inp[0] if inp and torch.is_tensor(inp[0]) else None
            calls.append(LeafCall(names[m], m, tuple(x.shape[1:]) if x is not None else None, tuple(out.shape[1:])))

    entered: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    handles += [m.register_forward_pre_hook(lambda m, inp: entered.append(m)) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*_as_tuple(example_inputs))
    except Exception as exc:  # name the layer that failed (the last one entered that did not return)
        returned = {c.module for c in calls}
        failed = next((m for m in reversed(entered) if m not in returned), None)
        where = (f"layer {names.get(failed, '?')!r} ({type(failed).__name__})" if failed is not None
                 else "code outside any leaf layer (the model's own forward)")
        shape = tuple(example_inputs.shape) if torch.is_tensor(example_inputs) else "?"
        raise ValueError(
            f"{type(model).__name__} cannot run the example input of shape {shape}: {where} raised "
            f"{type(exc).__name__}: {exc}. Pass example inputs the model accepts (input_size / the "
            "dataset's image size) and make sure its forward runs on them."
        ) from exc
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls
