"""Group attention gates: the gate network, its training on a frozen model, and the gates' statistics.

After Yang et al., "Data-Aware Adaptive Pruning Model Compression Algorithm Based on a Group
Attention Mechanism and Reinforcement Learning", IEEE Access 2022 (built from the paper's
description; the full text was not available).

For every pruning group a light squeeze-and-excitation gate scores the group's channels:

* **where**: the gate multiplies the group's channels at the *input of every layer that consumes
  them* (forward pre-hooks at :meth:`~pruning_env.engine.ModelGraph.consumers`). Removing a channel
  removes exactly those inputs, so a gate of 0 computes what the pruned network computes, and a
  residual group (the channels of a whole stage) is gated consistently at every block that reads
  the stream: the channel is scored as a whole.
* **squeeze**: global average pool of the group's feature map at its first consumer in forward
  order, standardised per channel with statistics of a few calibration batches.
* **excitation**: the ``C`` channels are split into ``G`` channel groups, each with its own tiny
  MLP (two grouped 1x1 convolutions, ``C -> G*h -> C``) and a sigmoid; per-channel biases start at
  ``logit(init_gate)`` so training starts from the unpruned network.
* **training** (:func:`train_group_attention`): backbone frozen, loss = cross-entropy +
  ``sparsity`` x mean gate, Adam on the gates only. The gates are keep probabilities: each step
  trains through one sampled sub-network (a hard 0/1 mask shared by the batch, straight-through
  gradient, logits shifted down by ``U(0, max_shift)`` so that sparse sub-networks are trained
  too), with BN using batch statistics, which is what a pruned and BN-recalibrated network
  computes. A moving average of the gate parameters gives the final gates.

The result is a :class:`GateStats`: per channel, the gate's mean and std over calibration data
(the attention features of the observations) and the ``activation`` criterion's score, which
:class:`~pruning_env.importance.attention.GroupAttentionImportance` combines into channel scores.
How these choices were made, with the numbers: docs/results.md ("How the gates are trained").
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning_env.cache import stable_hash
from pruning_env.calibration import calibration_batches, frozen, training_split
from pruning_env.engine import Consumer
from pruning_env.importance.classic import MeanActivationImportance

__all__ = ["ATTENTION_VERSION", "GateStats", "GroupAttention", "train_group_attention"]

log = logging.getLogger(__name__)
ATTENTION_VERSION = 3  # bump when training or the cached GateStats change (a new scoring reads the same stats)


# -- the gates ----------------------------------------------------------------------------------
class _ChannelGroupGate(nn.Module):
    """Sigmoid gates for ``channels`` channels from their squeezed features, per channel group."""

    def __init__(self, channels: int, channel_groups: int, hidden: int, init_gate: float) -> None:
        super().__init__()
        g = math.gcd(channels, max(1, channel_groups))
        self.fc1 = nn.Conv1d(channels, g * hidden, 1, groups=g)
        self.fc2 = nn.Conv1d(g * hidden, channels, 1, groups=g)
        nn.init.zeros_(self.fc2.weight)  # start data-independent: every gate = init_gate
        nn.init.constant_(self.fc2.bias, math.log(init_gate / (1.0 - init_gate)))
        self.register_buffer("mu", torch.zeros(channels))
        self.register_buffer("sigma", torch.ones(channels))

    def forward(self, squeeze: torch.Tensor) -> torch.Tensor:  # B x C -> B x C gate logits
        z = ((squeeze - self.mu) / self.sigma).clamp(-5.0, 5.0)
        return self.fc2(F.relu(self.fc1(z.unsqueeze(-1)))).squeeze(-1)


class GroupAttention(nn.Module):
    """One :class:`_ChannelGroupGate` per pruning group of ``graph``, attached by forward pre-hooks.

    Modes (attributes, set by the trainer): ``mask="soft"`` scales each channel by its gate;
    ``mask="subnet"`` samples one sub-network per forward pass, keeping channel ``c`` with
    probability ``g_c`` (a hard 0/1 mask shared by the batch, straight-through gradient), which is
    what pruning does; ``observe=True`` leaves the network untouched and records the squeezes
    (``self.observed``).

    Args:
        graph: the :class:`~pruning_env.engine.ModelGraph` of the model to score.
        channel_groups: channel groups per gate (``gcd`` with the width is used).
        reduction: hidden units per channel group = ``max(2, channels / (channel_groups * reduction))``.
        init_gate: initial value of every gate, in ``(0, 1)``.
    """

    def __init__(self, graph: Any, channel_groups: int = 4, reduction: int = 4, init_gate: float = 0.95) -> None:
        super().__init__()
        if not 0.0 < init_gate < 1.0:
            raise ValueError(f"init_gate must be in (0, 1), got {init_gate}")
        self.group_names = [g.name for g in graph.groups]
        self.channels = [g.channels for g in graph.groups]
        self.gates = nn.ModuleList(
            _ChannelGroupGate(c, channel_groups, max(2, c // (channel_groups * reduction)), init_gate)
            for c in self.channels
        )
        self.consumers = [graph.consumers(g.index) for g in graph.groups]
        for g, cons in zip(graph.groups, self.consumers):
            if not cons:
                log.warning("group %s has no consuming layer; its gates only see the sparsity pressure", g.name)
        self.mask = "soft"
        self.generator: torch.Generator | None = None  # draws the sub-network masks
        self.max_shift = 0.0  # sub-networks: logits shifted down by U(0, max_shift) per forward pass
        self.shift = 0.0
        self.observe = False
        self.observed: dict[int, list[torch.Tensor]] = {}  # group -> squeezes (observe mode)
        self.current: dict[int, torch.Tensor] = {}  # group -> multipliers of the running forward pass
        self.probs: dict[int, torch.Tensor] = {}  # group -> B x C gate values (keep probabilities)

    def _to_root(self, i: int, c: Consumer, s: torch.Tensor) -> torch.Tensor:
        """Consumer channels ``B x Cin`` -> the group's channels ``B x C`` (mean over repeats)."""
        if c.identity:
            return s
        out = s.new_zeros(s.shape[0], self.channels[i])
        return out.index_reduce_(1, c.root_idxs, s[:, c.idxs], "mean", include_self=False)

    def _gates(self, i: int, squeeze: torch.Tensor) -> torch.Tensor:
        logits = self.gates[i](squeeze)
        p = self.probs[i] = torch.sigmoid(logits)
        if self.mask == "soft":
            return p
        keep = torch.sigmoid(logits - self.shift) if self.shift else p  # a sparser sub-network
        u = torch.rand((1, p.shape[1]), generator=self.generator)  # one sub-network for the whole batch
        return (u < keep).to(p.dtype) + keep - keep.detach()  # forward: 0/1; backward: d/dkeep

    def _hook(self, i: int, c: Consumer):
        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            pooled = lambda t: t.mean((2, 3)) if not c.linear else t.reshape(t.shape[0], -1)
            if self.observe:
                with torch.no_grad():
                    if i not in self.current:
                        self.current[i] = x
                        self.observed.setdefault(i, []).append(self._to_root(i, c, pooled(x)))
                return None
            if i not in self.current:  # squeeze at the group's first consumer; the gradient flows via scaling
                self.current[i] = self._gates(i, self._to_root(i, c, pooled(x.detach())))
            gate = self.current[i]
            if not c.identity:
                mult = gate.new_ones(gate.shape[0], x.shape[1] if not c.linear else x.shape[-1])
                gate = mult.index_copy(1, c.idxs, gate[:, c.root_idxs])
            return (x * (gate[:, :, None, None] if not c.linear else gate), *args[1:])

        return pre_hook

    @contextmanager
    def attach(self, model: nn.Module):
        """Gate ``model`` (the graph's model or a same-architecture copy) while in the context."""

        def reset(module: nn.Module, args: tuple) -> None:  # a new forward pass
            self.current.clear()
            self.probs.clear()
            if self.mask == "subnet" and self.max_shift > 0:
                self.shift = float(torch.rand((), generator=self.generator)) * self.max_shift

        handles = [model.register_forward_pre_hook(reset)]
        try:
            for i, cons in enumerate(self.consumers):
                for c in cons:
                    handles.append(model.get_submodule(c.name).register_forward_pre_hook(self._hook(i, c)))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.current.clear()
            self.probs.clear()

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches) -> None:
        """Set the squeeze standardisation from calibration batches (network untouched)."""
        self.observe, self.observed = True, {}
        try:
            with self.attach(model):
                for x, _y in batches:
                    model(x)
        finally:
            self.observe = False
        for i, gate in enumerate(self.gates):
            if i not in self.observed:
                continue
            s = torch.cat(self.observed[i])
            gate.mu.copy_(s.mean(0))
            gate.sigma.copy_(s.std(0).clamp_min(1e-3 * (s.abs().mean() + 1e-6)))
        self.observed = {}


# -- statistics and training --------------------------------------------------------------------
@dataclass
class GateStats:
    """Per-group, per-channel statistics of the trained gates over calibration data.

    ``mean``/``std``: mean and std over calibration samples of each channel's gate, a 1-D tensor
    (length = channels) per group name. ``activation``: the activation criterion's score of each
    channel (mean ``|input|`` it feeds its consumers in the ungated network in eval mode, relative
    to the group's mean; :class:`~pruning_env.importance.MeanActivationImportance`), which
    :class:`~pruning_env.importance.attention.GroupAttentionImportance` combines with the gates. ``aliases`` maps every
    out-layer name of a group (conv, BN, coupled convs of a residual stage) to the group name.
    ``meta`` records the settings, the final losses and the training time (s).
    """

    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    activation: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": dict(self.mean), "std": dict(self.std), "activation": dict(self.activation),
                "aliases": dict(self.aliases), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateStats:
        return cls(mean=dict(d["mean"]), std=dict(d["std"]), activation=dict(d.get("activation") or {}),
                   aliases=dict(d["aliases"]), meta=dict(d["meta"]))

    def fingerprint(self) -> str:
        return stable_hash({k: [round(float(v), 6) for v in t] for k, t in sorted(self.mean.items())})


def _endless(ds: Any, batch_size: int, augment: bool, gen: torch.Generator):
    """Shuffled training batches, one epoch after another, without end."""
    while True:
        yield from ds.iter_batches(batch_size, shuffle=True, augment=augment, generator=gen, drop_last=True)


def train_group_attention(
    model: nn.Module,
    graph: Any,
    train_data: Any,
    steps: int = 300,
    lr: float = 0.05,
    sparsity: float = 2.0,
    batch_size: int = 64,
    seed: int = 0,
    mask: str = "subnet",
    batch_norm: str = "batch",
    ema: float = 0.98,
    max_shift: float = 3.0,
    channel_groups: int = 4,
    reduction: int = 4,
    init_gate: float = 0.95,
    augment: bool = True,
    calib_samples: int = 1024,
) -> GateStats:
    """Train group attention on ``train_data`` with ``model`` frozen; return gate statistics.

    Args:
        model: the network; its parameters, buffers and modes are left unchanged.
        graph: its :class:`~pruning_env.engine.ModelGraph`.
        train_data: a ``DatasetSplits`` (its train split is used) or a ``TensorImageDataset``.
        steps, lr, batch_size: Adam steps on the gate parameters, learning rate, batch size.
        sparsity: weight of the mean gate (over all channels of all groups) in the loss.
        seed: seeds gate initialisation, shuffling, augmentation and sub-network draws.
        mask: ``"subnet"`` (each step trains through one sampled sub-network, see
            :class:`GroupAttention`) or ``"soft"`` (gates scale the channels).
        batch_norm: ``"batch"`` (BN uses batch statistics while training, as after recalibration)
            or ``"frozen"`` (running statistics).
        ema: decay of the moving average of the gate parameters used for the statistics (0 = off).
        max_shift: sub-networks are drawn with logits shifted down by ``U(0, max_shift)`` per step.
        channel_groups, reduction, init_gate: see :class:`GroupAttention`.
        augment: random crops/flips while training.
        calib_samples: training samples (unaugmented) for the squeeze standardisation and the statistics.
    """
    if mask not in ("subnet", "soft"):
        raise ValueError(f"mask must be 'subnet' or 'soft', got {mask!r}")
    ds = training_split(train_data)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    att = GroupAttention(graph, channel_groups=channel_groups, reduction=reduction, init_gate=init_gate)
    t0, c0 = time.perf_counter(), time.process_time()
    ce_hist, gate_hist = [], []
    with frozen(model, batch_norm):
        att.calibrate(model, calibration_batches(ds, calib_samples, 256))
        opt = torch.optim.Adam(att.parameters(), lr=lr)
        averaged = [p.detach().clone() for p in att.parameters()]
        batches = _endless(ds, batch_size, augment, gen)
        att.mask, att.generator, att.max_shift = mask, gen, max_shift
        with att.attach(model):
            for step in range(steps):
                x, y = next(batches)
                ce = F.cross_entropy(model(x), y)
                gates = torch.cat([att.probs[i].mean(0) for i in sorted(att.probs)])
                loss = ce + sparsity * gates.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():  # moving average of the gate parameters: less optimiser noise
                    d = min(ema, (1.0 + step) / (10.0 + step))
                    for e, p in zip(averaged, att.parameters()):
                        e.mul_(d).add_(p, alpha=1.0 - d)
                ce_hist.append(float(ce.detach()))
                gate_hist.append(float(gates.detach().mean()))
        att.mask, att.shift = "soft", 0.0
        with torch.no_grad():
            for e, p in zip(averaged, att.parameters()):
                p.copy_(e)
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        mean, std = _gate_statistics(model, att, ds, calib_samples)
    tail = max(1, steps // 10)
    meta = {
        "version": ATTENTION_VERSION, "steps": steps, "lr": lr, "sparsity": sparsity, "batch_size": batch_size,
        "seed": seed, "mask": mask, "batch_norm": batch_norm, "ema": ema, "max_shift": max_shift,
        "channel_groups": channel_groups, "reduction": reduction, "init_gate": init_gate, "augment": augment,
        "calib_samples": calib_samples,
        "train_seconds": round(train_s, 2), "train_cpu_seconds": round(train_cpu, 2),
        "final_ce": sum(ce_hist[-tail:]) / tail if ce_hist else float("nan"),
        "final_mean_gate": sum(gate_hist[-tail:]) / tail if gate_hist else float("nan"),
        "torch_threads": torch.get_num_threads(),
    }
    aliases = {n: g.name for g in graph.groups for n in (g.name, *g.out_layers)}
    act = _activation_scores(model, graph, ds)
    log.info("group attention: %d steps in %.1f s (%.1f s CPU), CE %.3f, mean gate %.3f", steps, train_s,
             train_cpu, meta["final_ce"], meta["final_mean_gate"])
    return GateStats(mean=mean, std=std, activation=act, aliases=aliases, meta=meta)


def _activation_scores(model: nn.Module, graph: Any, ds: Any) -> dict[str, torch.Tensor]:
    """The activation criterion's scores of every group (all ones for a group without consumers).

    Eval mode, running BN statistics, its default calibration samples: the combined criterion
    orders channels by exactly the ranks the ``activation`` criterion uses. (Mean ``|input|``
    recorded while the gates calibrate, with batch-statistics BN, ranked channels differently:
    Spearman 0.82-0.97 per group on ResNet-20, and combined worse: docs/results.md.)
    """
    imp = MeanActivationImportance().calibrate(model, ds)
    out = {}
    for g in graph.groups:
        s = imp(graph.tp_group(g.index))
        out[g.name] = s.detach().float().cpu() if s is not None and s.numel() == g.channels else torch.ones(g.channels)
    return out


@torch.no_grad()
def _gate_statistics(model, att: GroupAttention, ds, calib_samples: int):
    """Mean and std over calibration samples of every channel's gate (deterministic, soft gates)."""
    sums = [torch.zeros(c, dtype=torch.float64) for c in att.channels]
    sq = [torch.zeros(c, dtype=torch.float64) for c in att.channels]
    n = 0
    with att.attach(model):
        for x, _y in calibration_batches(ds, calib_samples, 256):
            model(x)
            for i, gate in enumerate(att.gates):
                # a group without consumers never ran its gate: its data-independent part
                g = att.probs[i].double() if i in att.probs else torch.sigmoid(gate.fc2.bias).double()[None]
                g = g.expand(x.shape[0], -1)
                sums[i] += g.sum(0)
                sq[i] += (g * g).sum(0)
            n += x.shape[0]
    mean, std = {}, {}
    for i, name in enumerate(att.group_names):
        m = sums[i] / n
        mean[name] = m.float()
        std[name] = (sq[i] / n - m * m).clamp_min(0).sqrt().float()
    return mean, std
