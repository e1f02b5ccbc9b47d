"""Pruning engine: prunable groups, plans made from them, and surgery, all through Torch-Pruning.

:class:`ModelGraph` traces a model once with Torch-Pruning's ``DependencyGraph`` and lists its
prunable groups in forward order. A group is a set of coupled channels that must be removed
together (the outputs of every conv feeding one residual add, a depthwise conv and the conv
that expands into it, a squeeze-excitation gate and the branch it scales, ...). The classifier
output is never pruned.

Grouped convolutions (ResNeXt, RegNet: ``groups > 1`` but not depthwise) keep their number of conv
groups, as in Torch-Pruning's ``MetaPruner``: a group that feeds or leaves such a conv is cut into
as many equal blocks, and the same positions are kept in every block, so each conv group loses the
same channels. Its kept counts are multiples of :attr:`PruningGroup.step`.

A :class:`~pruning_env.plan.PruningPlan` (module :mod:`pruning_env.plan`) records which channels of
each group to keep. It is plain JSON, carries the signature of the graph it was made for, and
:func:`apply_plan` re-applies it to a fresh copy of the base model: the same plan always yields the
same pruned model. ``PruningPlan`` and ``PlanMismatchError`` are still importable from here.

The module stays one file (about 500 lines): group discovery and the surgery that replays a plan share
the group bookkeeping (Torch-Pruning groups by root name, conv-group steps, ignored layers); splitting
them would make that bookkeeping public.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from .cache import stable_hash
from .plan import PlanMismatchError, PruningPlan
from .tracing import LeafCall, trace_leaf_calls

__all__ = [
    "Consumer",
    "PruningGroup",
    "LayerInfo",
    "ModelGraph",
    "apply_plan",
    "count_macs_params",
    "zero_removed_channels",
]


@dataclass(frozen=True)
class LayerInfo:
    """A layer with parameters, as traced once at full width.

    ``in_groups`` / ``out_groups`` are the indices of the groups whose pruning removes input /
    output channels of this layer; ``kept = full - sum(removed of each group)``.
    """

    name: str
    kind: str  # "conv", "depthwise", "linear", "bn", "other"
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    groups: int
    in_shape: tuple[int, ...]  # without the batch dimension
    out_shape: tuple[int, ...]
    macs: int  # per sample, at full width
    in_groups: tuple[int, ...] = ()
    out_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Consumer:
    """A layer reading a group's channels: its input channels ``idxs`` carry group channels ``root_idxs``."""

    name: str
    linear: bool
    idxs: torch.Tensor
    root_idxs: torch.Tensor
    identity: bool  # idxs == root_idxs == arange(channels): the whole input is the group, as is


@dataclass(frozen=True)
class PruningGroup:
    """One prunable group: coupled channels pruned together."""

    index: int  # position in forward order
    name: str  # name of the root module (Torch-Pruning's root of the group)
    channels: int  # prunable channels at full width
    layer_type: str  # type of the root: "conv", "depthwise" or "linear"
    kernel_size: int
    stride: int
    in_channels: int
    feature_size: int  # spatial size (H) of the root's output; 1 for linear layers
    out_layers: tuple[str, ...]  # modules whose output channels this group removes
    in_layers: tuple[str, ...]  # modules whose input channels this group removes
    macs: int  # per-sample MACs of the layers this group touches, at full width
    # Kept counts must be multiples of ``step``: the number of equal blocks the channels fall into
    # (the conv groups of the grouped convs this group touches, their lcm if several); 1 otherwise.
    step: int = 1


def _leaf_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d) or isinstance(m, nn.Conv1d):
        if m.groups > 1 and m.groups == m.in_channels and m.out_channels % m.in_channels == 0:
            return "depthwise"
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn"
    return "other"


def _tp_depthwise(m: nn.Module) -> bool:
    # Torch-Pruning's own test: it prunes such a conv's groups together with its channels.
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels and m.out_channels > 1


def _layer_macs(m: nn.Module, out_shape: Sequence[int]) -> int:
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size[0] * m.kernel_size[1]
        return int(math.prod(out_shape[1:]) * m.out_channels * k * m.in_channels // m.groups)
    if isinstance(m, nn.Linear):
        return int(m.in_features * m.out_features * math.prod(out_shape[:-1] or (1,)))
    return 0


class ModelGraph:
    """Prunable groups of a model, in forward order, from Torch-Pruning's dependency graph.

    Args:
        model: the model to analyse; it is traced, not modified.
        example_inputs: a batch the model accepts (e.g. ``torch.randn(1, 3, 32, 32)``).
        ignored_layers: modules whose output channels must never be pruned, in addition to the
            classifier (the last conv/linear layer to run), which is always ignored.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        ignored_layers: Sequence[nn.Module] | None = None,
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self._names = {m: n for n, m in model.named_modules()}
        order, shapes = self._forward_order(model, example_inputs)
        self._order = order
        prunable = [m for m in order if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not prunable:
            raise ValueError("the model has no Conv2d or Linear layer: nothing to prune")
        self.classifier_name = self._names[prunable[-1]]
        ignored = [prunable[-1], *(ignored_layers or [])]
        with torch.enable_grad():
            try:
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, ignored_layers=None, verbose=False
                )
            except Exception as exc:  # name the layer when tracing fails
                raise ValueError(
                    f"Torch-Pruning could not trace {type(model).__name__}: {exc}. Models must be "
                    "traceable by autograd with the example input; custom layers with their own "
                    "parameters need a Torch-Pruning customized pruner."
                ) from exc
        pos = {m: i for i, m in enumerate(order)}
        raw = []
        for g in self.dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
            root = g[0].dep.target.module
            outs, ins = [], []
            for dep, _idxs in g:
                mod = dep.target.module
                if not isinstance(mod, nn.Module) or mod not in self._names:
                    continue
                target = outs if self.dg.is_out_channel_pruning_fn(dep.handler) else ins
                name = self._names[mod]
                if name not in target:
                    target.append(name)
            channels = len(g[0].idxs)
            # Root the group at its first conv/linear in forward order (the stem conv rather than
            # the depthwise conv it feeds), when that layer carries exactly the group's channels.
            candidates = sorted(
                (pos[m], m) for m in (self._get(n) for n in outs)
                if m in pos and isinstance(m, (nn.Conv2d, nn.Linear))
            )
            for _p, m in candidates:
                width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                if width == channels:
                    root = m
                    break
            first = candidates[0][0] if candidates else pos.get(root, 0)
            raw.append((first, root, channels, tuple(outs), tuple(ins), self._channel_step(g, channels)))
        raw.sort(key=lambda r: r[0])

        groups: list[PruningGroup] = []
        for i, (_first, root, channels, outs, ins, step) in enumerate(raw):
            out_shape = shapes.get(root, ())
            kind = _leaf_kind(root)
            if isinstance(root, nn.Conv2d):
                k, s, cin = root.kernel_size[0], root.stride[0], root.in_channels
                fsize = int(out_shape[-1]) if len(out_shape) >= 3 else 1
            else:
                k, s, cin, fsize = 1, 1, root.in_features, 1
            macs = sum(
                _layer_macs(self._get(n), shapes.get(self._get(n), ()))
                for n in dict.fromkeys(outs + ins)
                if isinstance(self._get(n), (nn.Conv2d, nn.Linear))
            )
            groups.append(
                PruningGroup(
                    index=i, name=self._names[root], channels=int(channels), layer_type=kind,
                    kernel_size=int(k), stride=int(s), in_channels=int(cin), feature_size=fsize,
                    out_layers=outs, in_layers=ins, macs=int(macs), step=step,
                )
            )
        if not groups:
            raise ValueError("the model has no prunable group (only the classifier has output channels)")
        self.groups: list[PruningGroup] = groups
        self._by_name = {g.name: g for g in groups}
        self.layers: list[LayerInfo] = self._layer_table(order, shapes)
        self.signature = stable_hash([(g.name, g.channels) for g in groups])

    # -- tracing helpers ----------------------------------------------------------------------
    def _get(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _channel_step(self, group: tp.Group, channels: int) -> int:
        """Blocks a group's channels fall into: the lcm of the channel groups of the layers it touches.

        Torch-Pruning reports channel groups per layer (a grouped conv's ``groups``, a GroupNorm's
        ``num_groups``) and prunes the in-channels of a grouped conv by position inside its first
        group, so a plan is only correct when every block loses the same positions. That holds only
        when the layer sees this group's channels one to one; through a concatenation or a split
        it would tie this group's choice to another group's, which plans cannot express.
        """
        step = 1
        for dep, idxs in group:
            mod = dep.target.module
            if mod not in self._names or _tp_depthwise(mod):
                continue
            pruner = self.dg.get_pruner_of_module(mod)
            if pruner is None:
                continue
            out = self.dg.is_out_channel_pruning_fn(dep.handler)
            n = int(pruner.get_out_channel_groups(mod) if out else pruner.get_in_channel_groups(mod))
            if n <= 1:
                continue
            width = pruner.get_out_channels(mod) if out else pruner.get_in_channels(mod)
            if width != channels or list(idxs) != list(range(channels)):
                root = self._names.get(group[0].dep.target.module, "?")
                raise ValueError(
                    f"{self._names[mod]!r} ({type(mod).__name__}, {n} channel groups) shares only part of its "
                    f"{'output' if out else 'input'} channels with the pruning group of {root!r} (through a "
                    "concatenation or split), so its groups cannot be kept equal. Leave that group unpruned: "
                    f"ModelGraph(model, example_inputs, ignored_layers=[model.get_submodule({root!r})])."
                )
            step = math.lcm(step, n)
        return step

    @staticmethod
    def _forward_order(model: nn.Module, example_inputs: Any):
        """Leaf modules in the order of their first call, and the shapes of that call.

        Shapes map ``module`` to its output shape and ``("in", module)`` to its input shape (``()`` when
        its first input is not a tensor), both without the batch dimension.
        """
        first: dict[nn.Module, LeafCall] = {}
        for call in trace_leaf_calls(model, example_inputs):
            first.setdefault(call.module, call)
        shapes: dict[Any, tuple[int, ...]] = {m: c.out_shape for m, c in first.items()}
        shapes.update({("in", m): c.in_shape or () for m, c in first.items()})
        return list(first), shapes

    def _layer_table(self, order, shapes) -> list[LayerInfo]:
        ins: dict[str, list[int]] = {}
        outs: dict[str, list[int]] = {}
        for g in self.groups:
            for n in g.out_layers:
                outs.setdefault(n, []).append(g.index)
            for n in g.in_layers:
                ins.setdefault(n, []).append(g.index)
        table = []
        for m in order:
            kind = _leaf_kind(m)
            if kind == "other" or m not in self._names:
                continue
            name = self._names[m]
            if isinstance(m, nn.Conv2d):
                cin, cout, k, s, grp = m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups
            elif isinstance(m, nn.Linear):
                cin, cout, k, s, grp = m.in_features, m.out_features, 1, 1, 1
            else:
                cin = cout = m.num_features
                k = s = grp = 1
            o = tuple(outs.get(name, ()))
            i = tuple(ins.get(name, ()))
            if kind in ("depthwise", "bn"):
                i = o  # their input channels are their output channels
            table.append(
                LayerInfo(
                    name=name, kind=kind, in_channels=cin, out_channels=cout, kernel_size=k, stride=s,
                    groups=grp, in_shape=shapes.get(("in", m), ()), out_shape=shapes.get(m, ()),
                    macs=_layer_macs(m, shapes.get(m, ())), in_groups=i, out_groups=o,
                )
            )
        return table

    # -- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.groups)

    def group(self, key: int | str) -> PruningGroup:
        return self.groups[key] if isinstance(key, int) else self._by_name[key]

    def consumers(self, key: int | str) -> list[Consumer]:
        """The conv and linear layers reading group ``key``'s channels, each once.

        From Torch-Pruning's dependency group: every input-channel dependency on a conv or linear
        layer whose channels map back to the group's (a residual group has one per block of the stage).
        Calibration passes hook here: removing a channel removes exactly these inputs.
        """
        g = self.group(key)
        out, seen = [], set()
        tg = self.tp_group(g.index)
        for i, (dep, idxs) in enumerate(tg):
            mod = dep.target.module
            if self.dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            root_idxs = tg[i].root_idxs
            name = dep.target._name
            if name is None or name in seen or any(r is None for r in root_idxs):
                continue
            seen.add(name)
            idx = torch.as_tensor([int(j) for j in idxs], dtype=torch.long)
            ridx = torch.as_tensor([int(j) for j in root_idxs], dtype=torch.long)
            width = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
            ident = width == g.channels and bool((idx == torch.arange(g.channels)).all()) and bool((ridx == idx).all())
            out.append(Consumer(name, isinstance(mod, nn.Linear), idx, ridx, ident))
        return out

    def tp_group(self, key: int | str, idxs: Sequence[int] | None = None) -> tp.Group:
        """The Torch-Pruning group (on ``self.model``) with ``idxs`` or all channels.

        This is what ``torch_pruning.importance.Importance`` objects score.
        """
        g = self.group(key)
        root = self._get(g.name)
        pruner = self.dg.get_pruner_of_module(root)
        idxs = list(range(g.channels)) if idxs is None else [int(i) for i in idxs]
        return self.dg.get_pruning_group(root, pruner.prune_out_channels, idxs)

    def scores(self, importance: Callable[[tp.Group], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-channel importance of every group (higher = more important)."""
        out = {}
        for g in self.groups:
            s = importance(self.tp_group(g.index))
            if s is None or s.numel() != g.channels:
                raise ValueError(
                    f"importance {type(importance).__name__} returned "
                    f"{None if s is None else s.numel()} scores for group {g.name} with {g.channels} channels"
                )
            out[g.name] = s.detach().float().cpu()
        return out

    # -- plans --------------------------------------------------------------------------------
    @staticmethod
    def n_keep(channels: int, ratio: float, round_to: int = 1, min_channels: int = 1, step: int = 1) -> int:
        """Channels kept when pruning ``ratio`` of ``channels`` (nearest, multiple of ``round_to``).

        ``step`` is the group's :attr:`PruningGroup.step`: the count is rounded up to a multiple of
        both ``round_to`` and ``step``, and ``min_channels`` up to a multiple of ``step``.
        """
        keep = channels * (1.0 - float(ratio))
        unit = math.lcm(max(1, int(round_to)), max(1, int(step)))
        if unit > 1:
            keep = unit * math.ceil(keep / unit - 1e-9)
        keep = int(round(keep))
        floor = step * math.ceil(max(1, min_channels) / step) if step > 1 else min_channels
        return int(min(channels, max(floor, keep)))

    def plan_from_ratios(
        self,
        ratios: Sequence[float] | Mapping[str, float],
        scores: Mapping[str, torch.Tensor] | None = None,
        round_to: int = 1,
        min_channels: int = 1,
        seed: int | None = None,
        meta: dict | None = None,
    ) -> PruningPlan:
        """Keep the highest-scoring channels of each group; without scores, keep the first ones."""
        if not isinstance(ratios, Mapping):
            ratios = list(ratios)
            if len(ratios) != len(self.groups):
                raise ValueError(f"expected {len(self.groups)} ratios (one per group), got {len(ratios)}")
            ratios = {g.name: r for g, r in zip(self.groups, ratios)}
        kept = []
        for g in self.groups:
            r = float(ratios.get(g.name, 0.0))
            if not 0.0 <= r <= 1.0 or not math.isfinite(r):
                raise ValueError(f"prune ratio for group {g.name} must be in [0, 1], got {r}")
            kept.append(self.n_keep(g.channels, r, round_to, min_channels, g.step))
        return self.plan_from_kept(kept, scores, seed=seed, meta=meta)

    def plan_from_kept(
        self,
        kept: Sequence[int],
        scores: Mapping[str, torch.Tensor] | None = None,
        seed: int | None = None,
        meta: dict | None = None,
    ) -> PruningPlan:
        """Keep ``kept[i]`` highest-scoring channels of group ``i``; without scores, the first ones.

        A count that is not a multiple of the group's :attr:`PruningGroup.step` is rounded up to one
        (:meth:`kept_counts` of the plan gives the counts kept). Such a group is cut into ``step``
        equal blocks and keeps the same positions in each: those whose scores summed over the blocks
        are highest, as Torch-Pruning's ``MetaPruner`` does for grouped convs.
        """
        if len(kept) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} kept counts (one per group), got {len(kept)}")
        keep = {}
        for g, k in zip(self.groups, kept):
            k = int(k)
            if not 1 <= k <= g.channels:
                raise ValueError(f"group {g.name} must keep between 1 and {g.channels} channels, got {k}")
            block = g.channels // g.step
            per_block = math.ceil(k / g.step)
            if scores is not None:
                summed = scores[g.name].reshape(g.step, block).sum(dim=0)
                offsets = torch.topk(summed, per_block, largest=True, sorted=False).indices.tolist()
            else:
                offsets = range(per_block)
            keep[g.name] = sorted(b * block + int(o) for b in range(g.step) for o in offsets)
        return PruningPlan(
            keep=keep, channels={g.name: g.channels for g in self.groups},
            graph_signature=self.signature, seed=seed, meta=dict(meta or {}),
        )

    def full_plan(self) -> PruningPlan:
        return self.plan_from_ratios([0.0] * len(self.groups))

    def check_plan(self, plan: PruningPlan) -> None:
        """Raise :class:`PlanMismatchError` with the reason when ``plan`` does not fit this graph."""
        if plan.graph_signature and plan.graph_signature != self.signature:
            mine = {g.name: g.channels for g in self.groups}
            diff = sorted(set(mine.items()) ^ set(plan.channels.items()))[:5]
            raise PlanMismatchError(
                f"this plan was made for another model (graph signature {plan.graph_signature}, this "
                f"model's is {self.signature}); differing groups (name, channels): {diff}. Make the plan "
                "with the same architecture and num_classes."
            )
        for g in self.groups:
            if g.name not in plan.keep:
                raise PlanMismatchError(f"plan has no entry for group {g.name!r}")
            k = plan.keep[g.name]
            if not k:
                raise PlanMismatchError(f"plan keeps no channel of group {g.name!r}: keep at least one")
            if min(k) < 0 or max(k) >= g.channels or len(set(k)) != len(k):
                raise PlanMismatchError(
                    f"plan for group {g.name!r} has invalid channel indices (must be distinct, 0..{g.channels - 1})"
                )
            block = g.channels // g.step
            if g.step > 1 and len(k) != g.step * len({i % block for i in k}):
                raise PlanMismatchError(
                    f"plan for group {g.name!r} breaks its grouped convolutions: it must keep the same positions "
                    f"in each of its {g.step} blocks of {block} channels (ModelGraph.plan_from_kept does)"
                )
        extra = set(plan.keep) - set(self._by_name)
        if extra:
            raise PlanMismatchError(f"plan names groups this model does not have: {sorted(extra)[:5]}")

    def kept_counts(self, plan: PruningPlan) -> list[int]:
        return [len(plan.keep[g.name]) for g in self.groups]


def apply_plan(
    model: nn.Module, plan: PruningPlan, example_inputs: Any = None, graph: ModelGraph | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Physically prune a copy of ``model`` (unless ``inplace``) according to ``plan``.

    ``graph`` may be a :class:`ModelGraph` already built on the very module being pruned
    (only with ``inplace=True``); otherwise one is traced with ``example_inputs``.
    """
    target = model if inplace else copy.deepcopy(model)
    if graph is None or not inplace or graph.model is not target:
        if example_inputs is None:
            raise ValueError("apply_plan needs example_inputs (e.g. torch.randn(1, 3, 32, 32)) to trace the model")
        graph = ModelGraph(target, example_inputs)
    graph.check_plan(plan)
    for g in graph.groups:
        kept = set(plan.keep[g.name])
        removed = [i for i in range(g.channels) if i not in kept]
        if removed:
            graph.tp_group(g.index, removed).prune(record_history=False)
    return target


def zero_removed_channels(graph: ModelGraph, plan: PruningPlan) -> nn.Module:
    """Zero, in a copy of the unpruned model, the input weights of every consumer of removed channels.

    The result computes exactly what the physically pruned model computes; it is the reference of
    the engine's property test.
    """
    graph.check_plan(plan)
    model = copy.deepcopy(graph.model)
    shadow = ModelGraph(model, graph.example_inputs)
    with torch.no_grad():
        for g in shadow.groups:
            kept = set(plan.keep[g.name])
            removed = [i for i in range(g.channels) if i not in kept]
            if not removed:
                continue
            for dep, idxs in shadow.tp_group(g.index, removed):
                mod = dep.target.module
                if shadow.dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(mod, (nn.Conv2d, nn.Linear)):
                    continue
                if _tp_depthwise(mod):
                    continue  # a depthwise conv is pruned on its output side
                if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                    # weight is (out, in / groups, k, k): input channel i is column i % width of the
                    # output rows of conv group i // width.
                    width, rows = mod.in_channels // mod.groups, mod.out_channels // mod.groups
                    for i in idxs:
                        grp, col = divmod(int(i), width)
                        mod.weight[grp * rows:(grp + 1) * rows, col] = 0.0
                    continue
                mod.weight[:, list(idxs)] = 0.0
    return model


def count_macs_params(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """MACs per forward pass of ``example_inputs`` and parameter count (Torch-Pruning's counter)."""
    was_training = model.training
    model.eval()
    try:
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    finally:
        model.train(was_training)
    return int(macs), int(params)
