"""Group attention importance: data-driven channel gates learned on a frozen network.

After Yang et al., "Data-Aware Adaptive Pruning Model Compression Algorithm Based on a Group
Attention Mechanism and Reinforcement Learning", IEEE Access 2022 (built from the paper's
description; the full text was not available).

For every pruning group a light squeeze-and-excitation gate scores the group's channels:

* **where**: the gate multiplies the group's channels at the *input of every layer that consumes
  them* (forward pre-hooks on the group's ``in_layers``, channel indices from Torch-Pruning's
  dependency graph). Removing a channel removes exactly those inputs, so a gate of 0 computes what
  the pruned network computes, and a residual group (the channels of a whole stage) is gated
  consistently at every block that reads the stream: the channel is scored as a whole.
* **squeeze**: global average pool of the group's feature map at its first consumer in forward
  order, standardised per channel with statistics of a few calibration batches.
* **excitation**: the ``C`` channels are split into ``G`` channel groups, each with its own tiny
  MLP (two grouped 1x1 convolutions, ``C -> G*h -> C``) and a sigmoid, so a gate sees the context
  of its channel group; per-channel biases start at ``logit(init_gate)`` so training starts from
  the unpruned network.
* **training**: backbone frozen (no parameter gradients, buffers restored), loss = cross-entropy +
  ``sparsity`` x mean gate over all channels, Adam on the gates only. The gates are keep
  probabilities: each step trains through one sampled *sub-network* (channel ``c`` kept with
  probability ``sigmoid(logit_c - shift)``, a hard 0/1 mask shared by the batch, straight-through
  gradient; ``shift ~ U(0, max_shift)`` per step so that sparse sub-networks, as at 50-70 %
  pruning, are trained too), with BN using batch statistics, which is what a pruned and
  BN-recalibrated network computes. A moving average of the gate parameters (``ema``) gives the
  final gates.

The gates' statistics over calibration data (:class:`GateStats`) are the attention features of the
observations. A channel's importance (:class:`GroupAttentionImportance`, a ``torch_pruning``
importance) is by default its position in a removal order (``combine="consensus"``,
:func:`consensus_order`): the first 30 % of a group's channels to go are those whose mean rank by
mean gate, by the ``activation`` criterion (mean ``|input|`` they feed their consumers, eval mode)
and by the ``l1`` criterion (weight magnitude) is lowest, the rest go by the mean of the gate and
activation ranks alone (``combine="activation_rank"``, version 3's default). The gates of channels
the attention keeps saturate near 1, so the gates alone order the kept channels by noise; at mild
pruning the gates (trained on sub-networks that drop a third of the channels and more) disagree
with what recovers best without a fine-tune, and a removal all three signals agree on is the safe
one. On the reported half (ResNet-20 / ResNet-56, 30 / 50 / 70 % removed, before and after a
200-step fine-tune, 3 training x 3 fine-tune seeds) it is ahead of the best classic criterion in 9
of 12 cells and 0.05-0.16 points behind, within noise, in the other 3 (docs/results.md).

The combination was chosen on held-apart validation samples (2,500 of 5,000) and reported on the
other 2,500 (``python -m benchmarks.criteria --select-samples 2500``, docs/results.md): uniform
pruning of every group, 200-step fine-tune, 3 attention seeds. Version 3 ranks by the activation
criterion's own score; version 2 ranked by mean ``|input|`` recorded while the gates calibrated,
with batch-statistics BN (Spearman 0.82-0.97 to the criterion's ranks per group of ResNet-20),
which combined worse: on the selection samples after BN recalibration alone, ResNet-20 49.0 /
24.6 / 11.7 -> 54.3 / 31.6 / 12.9 % at 30 / 50 / 70 % removed, ResNet-56 51.6 / 29.5 / 16.5 ->
53.8 / 30.3 / 15.0 (3 attention seeds; the activation criterion: 50.5 / 24.9 / 12.2 and 59.9 /
25.9 / 15.0). The consensus order on the same samples: ResNet-20 55.2 / 29.1 / 13.1, ResNet-56
63.3 / 33.6 / 15.2. The numbers on the reported samples, after fine-tuning too, are in
docs/results.md.

How the design was chosen (ResNet-20 adapted to the JPEG CIFAR-10 copy, uniform pruning of every
group, val accuracy % on 2000 samples (standard error about 1.1 points) after BN recalibration ->
after a 100-step fine-tune; one training seed each):

================================================  =========  =========  =========
variant                                           30 %       50 %       70 %
================================================  =========  =========  =========
soft gates, running-statistics BN (recal only)    42.4       19.7       13.6
soft gates, batch-statistics BN (recal only)      43.4       20.3       13.1
sub-networks, no shift (recal only)               48.2-49.1  19.6-25.3  12.4-15.1
sub-networks, no shift, x activation              47.0/77.9  18.5/63.1  10.1/38.9
sub-networks, shift U(0, 3), x activation         46.5/78.1  27.6/63.1   7.6/37.5
sub-networks, shift U(0, 3) (the default)         48.0/76.7  21.5/64.6  11.8/44.2
mean activation criterion                         50.7/77.8  24.0/62.6  12.4/43.2
L1 criterion                                      45.3/77.4  15.7/59.6  10.8/35.1
================================================  =========  =========  =========
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from pruning_env.cache import cache_dir, cached_tensors, stable_hash, state_dict_hash

__all__ = [
    "GateStats",
    "GroupAttention",
    "GroupAttentionImportance",
    "train_group_attention",
    "dataset_key",
    "calibration_batches",
]

log = logging.getLogger(__name__)
ATTENTION_VERSION = 3  # bump when training or the cached GateStats change (a new `combine` reads the same stats)


# -- data helpers (shared with classic.py and profiling.py) -------------------------------------
def _split(data: Any) -> Any:
    """The training split of a ``DatasetSplits``, or the dataset itself."""
    return data.train if hasattr(data, "train") and hasattr(data, "fingerprint") else data


def dataset_key(data: Any) -> str:
    """Cache key of the data used for calibration: the split fingerprint, else a content hash."""
    if hasattr(data, "fingerprint"):
        return f"{data.fingerprint}:train"
    h = hashlib.sha256()
    for t in (data.x, data.y):
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((getattr(data, "mean", None), getattr(data, "std", None))).encode())
    return h.hexdigest()[:16]


def calibration_batches(data: Any, num_samples: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_samples`` training samples (class-balanced prefix), not augmented."""
    ds = _split(data)
    ds = ds.subset(num_samples) if hasattr(ds, "subset") else ds
    return ds.iter_batches(batch_size, shuffle=False, augment=False)


def _endless(ds: Any, batch_size: int, augment: bool, gen: torch.Generator):
    while True:
        yield from ds.iter_batches(batch_size, shuffle=True, augment=augment, generator=gen, drop_last=True)


# -- the gates ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Consumer:
    """A layer reading a group's channels: its input channels ``idxs`` carry group channels ``root_idxs``."""

    name: str
    linear: bool
    idxs: torch.Tensor
    root_idxs: torch.Tensor
    identity: bool  # idxs == root_idxs == arange(channels): gate the whole input as is


def _consumers(graph: Any, index: int) -> list[_Consumer]:
    g = graph.group(index)
    out, seen = [], set()
    tg = graph.tp_group(index)
    for i, (dep, idxs) in enumerate(tg):
        mod = dep.target.module
        if graph.dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(mod, (nn.Conv2d, nn.Linear)):
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
        out.append(_Consumer(name, isinstance(mod, nn.Linear), idx, ridx, ident))
    return out


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
        self.consumers = [_consumers(graph, g.index) for g in graph.groups]
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

    def _to_root(self, i: int, c: _Consumer, s: torch.Tensor) -> torch.Tensor:
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

    def _hook(self, i: int, c: _Consumer):
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
    to the group's mean; :class:`~pruning_env.importance.MeanActivationImportance`), for the
    ``combine`` modes of :class:`GroupAttentionImportance`. ``aliases`` maps every
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


@contextmanager
def _frozen(model: nn.Module, batch_norm: str = "frozen"):
    """No parameter gradients, BN buffers untouched; all restored on exit.

    ``batch_norm="frozen"``: eval mode (running statistics). ``"batch"``: BN layers normalise with
    the statistics of the current batch (momentum 0, so running statistics do not move), as the
    pruned network will after BN recalibration.
    """
    if batch_norm not in ("frozen", "batch"):
        raise ValueError(f"batch_norm must be 'frozen' or 'batch', got {batch_norm!r}")
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    buffers = [[t.clone() for t in m.buffers()] for m in bns]  # num_batches_tracked counts even at momentum 0
    model.eval()
    if batch_norm == "batch":
        for m in bns:
            m.train()
            m.momentum = 0.0
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        with torch.no_grad():
            for m, mom, saved in zip(bns, momenta, buffers):
                m.momentum = mom
                for t, v in zip(m.buffers(), saved):
                    t.copy_(v)
        model.train(was_training)


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
    ds = _split(train_data)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    att = GroupAttention(graph, channel_groups=channel_groups, reduction=reduction, init_gate=init_gate)
    t0, c0 = time.perf_counter(), time.process_time()
    ce_hist, gate_hist = [], []
    with _frozen(model, batch_norm):
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


_TRAIN_DEFAULTS = {k: p.default for k, p in inspect.signature(train_group_attention).parameters.items()
                   if p.default is not inspect.Parameter.empty}


def _activation_scores(model: nn.Module, graph: Any, ds: Any) -> dict[str, torch.Tensor]:
    """The activation criterion's scores of every group (all ones for a group without consumers).

    Eval mode, running BN statistics, its default calibration samples: the combined criterion
    orders channels by exactly the ranks the ``activation`` criterion uses. (Mean ``|input|``
    recorded while the gates calibrate, with batch-statistics BN, ranked channels differently:
    Spearman 0.82-0.97 per group on ResNet-20, and combined worse: docs/results.md.)
    """
    from pruning_env.importance.classic import MeanActivationImportance  # classic imports this module

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


# -- the importance ----------------------------------------------------------------------------
COMBINE = ("none", "activation", "activation_odds", "activation_rank", "consensus")
DEFAULT_COMBINE = "consensus"
CONSENSUS_SHARE = 0.3  # share of a group's channels removed in the consensus order first (``combine="consensus"``)


def _ranks(t: torch.Tensor) -> torch.Tensor:
    """Ranks of ``t`` scaled to ``[0, 1]`` (0 = smallest; tied values share their average rank)."""
    _, inverse, counts = torch.unique(t.flatten(), return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    r = (first + (counts - 1) / 2.0)[inverse].to(torch.float32)
    return r / max(1, t.numel() - 1)


def _lex_order(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """Indices sorted by ``primary``, ties by ``secondary``, then by index (ascending)."""
    o = torch.argsort(secondary, stable=True)
    return o[torch.argsort(primary[o], stable=True)]


def consensus_order(
    gate: torch.Tensor, act: torch.Tensor, l1: torch.Tensor, share: float = CONSENSUS_SHARE
) -> torch.Tensor:
    """Removal position of every channel of a group, scaled to ``[0, 1]`` (0 = removed first).

    Channels are removed one at a time. A removal made while at most ``share`` of the group is
    gone takes the channel with the lowest mean of its gate, activation and L1 ranks (where all
    three agree a channel is unimportant; ties go by the next rule); later removals take the lowest
    mean of gate and activation ranks. The order is nested: every ratio's set of removed channels
    contains every smaller ratio's.
    """
    c = gate.numel()
    late = (_ranks(gate) + _ranks(act)) / 2
    early = (_ranks(gate) + _ranks(act) + _ranks(l1)) / 3
    k = sum(1 for j in range(c) if j / c <= share)  # removal j starts with j of c channels gone
    first = _lex_order(early, late)[:k]
    rest = torch.ones(c, dtype=torch.bool)
    rest[first] = False
    rest_idx = rest.nonzero().flatten()
    order = torch.cat([first, rest_idx[torch.argsort(late[rest_idx], stable=True)]])
    pos = torch.empty(c, dtype=torch.float32)
    pos[order] = torch.arange(c, dtype=torch.float32)
    return pos / max(1, c - 1)


class GroupAttentionImportance(tp.importance.Importance):
    """Channel importance from trained group attention (higher = more important).

    ``combine="consensus"`` (default): the removal order of :func:`consensus_order`: the first 30 %
    of a group's channels go where the gate, activation and ``l1`` (weight magnitude) ranks agree,
    the rest in the ``activation_rank`` order. Needs the group's weights, so only through
    ``__call__`` (``group_scores`` raises).
    ``combine="activation_rank"``: the mean of the channel's rank by mean gate and its
    rank by the ``activation`` criterion (the mean ``|input|`` it feeds its consumers, eval mode),
    within the group (in ``[0, 1]``). The gates of channels the attention keeps saturate near 1
    (every channel of a residual stream, the top half of most blocks), so their order is noise; the
    activation rank orders them, and the gate rank keeps what the attention learned about the
    channels it would drop.
    ``combine="none"``: the mean gate of the channel over calibration data.
    ``combine="activation"``: the mean gate times the mean ``|input|`` relative to the group's mean.
    ``combine="activation_odds"``: the gate's odds ``g / (1 - g)`` times the mean ``|input|``.
    See the module docstring for how they compare.

    Looks a group up by its root module's name (Torch-Pruning records it on the dependency
    node), so it scores groups of the model it was trained on, of deep copies of it, and groups
    rooted at any out-layer of a coupled set (e.g. a BN or another conv of a residual stage).

    Args:
        stats: trained :class:`GateStats`.
        model: optional; maps modules without a recorded name (other graphs) to names.
        combine: one of :data:`COMBINE`.
    """

    def __init__(self, stats: GateStats, model: nn.Module | None = None, combine: str = DEFAULT_COMBINE) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(map(repr, COMBINE))}, got {combine!r}")
        if combine != "none" and set(stats.activation) != set(stats.mean):
            raise ValueError("these GateStats carry no activation statistics: use combine='none'")
        self.stats = stats
        self.combine = combine
        self._names = {m: n for n, m in model.named_modules()} if model is not None else {}
        self._l1 = tp.importance.GroupMagnitudeImportance(p=1)  # the ``l1`` criterion (``consensus``)

    def _key(self, name: str) -> str:
        key = self.stats.aliases.get(name, name)
        if key not in self.stats.mean:
            raise KeyError(
                f"no attention scores for layer {name!r}; scored groups: {sorted(self.stats.mean)[:8]}... "
                "Train the attention on this architecture (GroupAttentionImportance.fit)."
            )
        return key

    def group_scores(self, name: str) -> torch.Tensor:
        """Scores of every channel of the group ``name`` (a group name or any of its out-layers)."""
        key = self._key(name)
        s = self.stats.mean[key]
        if self.combine == "consensus":
            raise ValueError(
                "combine='consensus' needs the group's weights: call the importance on a torch_pruning group"
            )
        if self.combine == "none":
            return s
        act = self.stats.activation[key].clamp_min(1e-12)
        if self.combine == "activation":
            return s * act / act.mean()  # relative activation: the group's scale cancels
        if self.combine == "activation_odds":
            g = s.double().clamp(1e-6, 1.0 - 1e-6)
            return (torch.log(g) - torch.log1p(-g) + act.double().log()).float()
        return (_ranks(s) + _ranks(act)) / 2  # activation_rank

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        dep, idxs = group[0]
        name = dep.target._name or self._names.get(dep.target.module)
        idx = torch.as_tensor(list(idxs), dtype=torch.long)
        if self.combine == "consensus":
            key = self._key(name)
            l1 = self._l1(group).detach().float().cpu()
            return consensus_order(self.stats.mean[key][idx], self.stats.activation[key][idx], l1)
        return self.group_scores(name)[idx].clone()

    @classmethod
    def fit(
        cls, model: nn.Module, graph: Any, data: Any, cache: bool = True, combine: str = DEFAULT_COMBINE,
        **train_kwargs: Any,
    ) -> GroupAttentionImportance:
        """Train (or load from the cache) group attention for ``model`` on ``data``'s train split.

        The cache key is the model's weights, the data fingerprint, the graph signature and
        every training setting (``train_kwargs`` merged with the defaults of
        :func:`train_group_attention`).
        """
        unknown = set(train_kwargs) - set(_TRAIN_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown attention settings {sorted(unknown)}; valid: {sorted(_TRAIN_DEFAULTS)}")
        settings = {**_TRAIN_DEFAULTS, **train_kwargs}
        build = lambda: train_group_attention(model, graph, data, **settings).to_dict()
        if not cache:
            return cls(GateStats.from_dict(build()), model, combine)
        key = stable_hash({
            "version": ATTENTION_VERSION, "weights": state_dict_hash(model), "data": dataset_key(data),
            "graph": graph.signature, "settings": settings,
        })
        path = cache_dir("attention") / f"gates_{key}.pt"
        return cls(GateStats.from_dict(cached_tensors(path, build)), model, combine)
