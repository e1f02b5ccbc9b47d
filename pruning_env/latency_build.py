"""Building a :class:`~pruning_env.latency.LatencyTable`: timing its layers and fitting its calibration.

:mod:`pruning_env.latency` holds the table itself (prediction, serialisation, the disk cache) and its
:meth:`~pruning_env.latency.LatencyTable.build`, which calls on this module for the measurement:

* :func:`layer_spec` says what a cost unit's latency depends on (the key that deduplicates timings and
  enters the table's cache key), :func:`timeable` which units are timed;
* :func:`time_layers` times every distinct configuration on its grid of kept channel counts
  (:func:`axis_points`), beside a fixed reference layer that shows whether the machine's load changed;
* :func:`calibration_anchors` picks the pruned models the table is calibrated on, and
  :func:`fit_calibration` fits the map from the table's sum to their measured latency.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import stable_hash
from .engine import ModelGraph
from .macs import CostUnit
from .measure import LatencyMeasurer

__all__ = ["layer_spec", "timeable", "axis_points", "time_layers", "calibration_anchors", "fit_calibration"]

CALIBRATION_KEEP = 0.5  # kept fraction of every group in the uniform calibration model
EXACT_POINTS = 8  # an axis with at most this many allowed widths (multiples of round_to) is timed at every one
CALIBRATION_PLANS = 6  # random calibration models (seeded), besides the uniform ones
_SCALE_BOUNDS = (0.1, 10.0)  # a calibration slope outside this range is noise, not a property of the model
_SCAN_BOUNDS = (0.25, 4.0)  # a scan ratio outside this range is a timing accident, not a kernel effect
_LAYER_ROUNDS = 3  # interleaved rounds over the grid points of one layer (10 back-to-back runs keep caches warm)


def layer_spec(u: CostUnit) -> dict[str, Any]:
    """What determines a unit's latency, apart from its kept channels (the dedup key of measurements)."""
    m = u.module
    spec: dict[str, Any] = {"kind": u.kind, "type": type(m).__name__, "in": u.in_channels, "out": u.out_channels,
                            "in_shape": list(u.in_shape), "vary_in": bool(u.two_axes and u.in_groups),
                            "vary_out": bool(u.out_groups)}
    if u.kind in ("conv", "depthwise"):
        spec.update(kernel=list(m.kernel_size), stride=list(m.stride), padding=m.padding, dilation=list(m.dilation),
                    groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    elif u.kind == "linear":
        spec.update(bias=m.bias is not None)
    elif u.kind == "bn":
        spec.update(affine=m.affine, eps=m.eps)
    else:
        spec.update(module=repr(m))
    return spec


def axis_points(full: int, vary: bool, grid: Sequence[float], step: int = 1, round_to: int = 1) -> list[int]:
    """Kept channels timed on one axis.

    The widths a plan can have are multiples of ``unit = lcm(step, round_to)`` and ``full`` itself. When
    there are at most :data:`EXACT_POINTS` of them, every one is timed (the table is then exact on that
    axis: no interpolation across the kernels' block effects); otherwise ``unit``, multiples of ``unit``
    near the ``grid`` fractions of ``full``, and ``full``.
    """
    if not vary:
        return [full]
    unit = step * round_to // math.gcd(step, round_to)
    n = full // unit
    if n == 0:  # narrower than one unit: the group can only stay whole
        return [full]
    if round_to > 1 and n <= EXACT_POINTS:
        return sorted({unit * i for i in range(1, n + 1)} | {full})
    return sorted({unit * max(1, min(n, round(f * n))) for f in grid} | {unit, full})


def timeable(u: CostUnit) -> bool:
    return not (u.kind == "act" and any(True for _ in u.module.parameters()))  # e.g. per-channel PReLU


def _layer_instance(u: CostUnit, k_in: int, k_out: int, batch: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh layer like ``u`` with ``k_in`` / ``k_out`` channels and the shape of its input batch."""
    m = u.module
    if u.kind in ("conv", "depthwise"):
        if u.kind == "depthwise":
            k_in = k_out // (m.out_channels // m.in_channels)
            groups = k_in
        else:
            groups = m.groups if k_in % m.groups == 0 and k_out % m.groups == 0 else 1
        layer = type(m)(k_in, k_out, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                        groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode)
        return layer, (batch, k_in, *u.in_shape[1:])
    if u.kind == "linear":
        return nn.Linear(k_in, k_out, bias=m.bias is not None), (batch, *u.in_shape[:-1], k_in)
    if u.kind == "bn":
        return type(m)(k_out, eps=m.eps, affine=m.affine), (batch, k_out, *u.in_shape[1:])
    return copy.deepcopy(m), (batch, k_out, *u.in_shape[1:])


def _reference(measurer: LatencyMeasurer) -> tuple[nn.Module, torch.Tensor]:
    """The load canary: a fixed 32-channel 3x3 conv on 16x16 maps, timed with every configuration."""
    layer = nn.Conv2d(32, 32, 3, padding=1, bias=False).to(measurer.device).eval()
    return layer, torch.randn(measurer.batch_size, 32, 16, 16, generator=torch.Generator().manual_seed(0))


def _time_points(u: CostUnit, points: Sequence[tuple[int, int]], measurer: LatencyMeasurer,
                 reference: tuple[nn.Module, torch.Tensor]) -> tuple[list[float], float]:
    """Median ms of fresh layers like ``u`` at each ``(k_in, k_out)``, and of the ``reference`` layer.

    All are measured in interleaved rounds, so that a burst of machine load does not bend one part of the
    grid; the reference shows how fast the machine was while this configuration was timed.
    """
    layers, inputs = [reference[0]], [reference[1]]
    for j, (k_in, k_out) in enumerate(points):
        layer, shape = _layer_instance(u, k_in, k_out, measurer.batch_size)
        layers.append(layer.to(measurer.device).eval())
        inputs.append(torch.randn(*shape, generator=torch.Generator().manual_seed(j)))
    ref, *ms = (s["median_ms"] for s in measurer.measure_many(layers, inputs, rounds=_LAYER_ROUNDS))
    return ms, ref


def time_layers(
    units: Sequence[CostUnit], specs: Sequence[dict[str, Any]], measurer: LatencyMeasurer, grid: Sequence[float],
    scan: bool, round_to: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[float], int]:
    """Time every distinct configuration of ``units`` (``specs``: their :func:`layer_spec`) on its grid.

    Returns the table's ``configs`` (spec, grid points, monotone ms grid, scan ratios with ``scan``), its
    ``units`` rows (name, kind, configuration, full widths, groups), the reference layer's median ms
    beside each timing, and the number of points timed.
    """
    configs: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    rows = []
    for u, spec in zip(units, specs):
        key = stable_hash(spec)
        if key not in index:
            # depthwise: whole channel multipliers; grouped conv: the same count per conv group
            step = u.out_channels // u.in_channels if u.kind == "depthwise" else getattr(u.module, "groups", 1)
            index[key] = len(configs)
            configs.append({
                "spec": spec, "unit": u,
                "in_points": axis_points(u.in_channels, spec["vary_in"], grid, step if u.kind == "conv" else 1,
                                         round_to),
                "out_points": axis_points(u.out_channels, spec["vary_out"], grid, step, round_to),
            })
        rows.append({"name": u.name, "kind": u.kind, "config": index[key],
                     "in": u.in_channels, "out": u.out_channels,
                     "in_groups": list(u.in_groups) if spec["vary_in"] else [],
                     "out_groups": list(u.out_groups)})
    # Every configuration is timed together with a fixed reference layer: how much its speed varies
    # across the build shows whether the machine's load changed meanwhile. The layers' times are not
    # divided by it: the reference's own speed depends on what it runs beside (caches), and dividing
    # by it doubled the table's error on a quiet machine (ResNet-20, 20 plans: worst 18.6% vs 7.5%).
    reference = _reference(measurer)
    refs: list[float] = []

    def timed(u, points):
        ms, ref = _time_points(u, points, measurer, reference)
        refs.append(ref)
        return np.asarray(ms)

    n_points = 0
    for c in configs:
        u = c.pop("unit")
        pi, po = c["in_points"], c["out_points"]
        points = [(k_in, k_out) for k_in in pi for k_out in po]
        ms = timed(u, points).reshape(len(pi), len(po))
        n_points += len(points)
        # More channels never cost less on the grid: a dip is timing noise the agent must not
        # exploit; the running maximum keeps the grid monotone in every group.
        c["ms"] = np.maximum.accumulate(np.maximum.accumulate(ms, axis=0), axis=1).tolist()
        for axis, pts in (("in", pi), ("out", po)):
            if not scan or len(pts) < 2:
                continue
            ks = list(range(pts[0], pts[-1] + 1, pts[0]))  # every count: the grid's points are among them
            scan_points = [(k, po[-1]) if axis == "in" else (pi[-1], k) for k in ks]
            t = timed(u, scan_points)
            smooth = np.interp(ks, pts, t[[ks.index(p) for p in pts]])  # 1.0 at the grid's points
            c[f"scan_{axis}"] = np.clip(t / smooth, *_SCAN_BOUNDS).tolist()
            n_points += len(ks)
    return configs, rows, refs, n_points


def calibration_anchors(
    channels: np.ndarray, round_to: int = 1, steps: Sequence[int] | None = None
) -> list[list[int]]:
    """Kept counts of the calibration models (deterministic).

    Uniform models keeping 1/4, 1/2 and 3/4 of every group, :data:`CALIBRATION_PLANS` random ones (half
    keeping 20-100% of each group, half 20-60%: the range that plans at a 2x target live in), all rounded
    to ``round_to`` (and each group's ``steps``: grouped convs) as the environment rounds. With
    ``round_to == 1`` also the half-width model plus one channel (one ``step``) per group: kernels work
    on blocks of 8 or 16 channels, so 8/16/32 channels per stage of a CIFAR ResNet is unusually fast for
    its size and 9/17/33 unusually slow (1.8x at batch 64 in torch).
    """
    rng = np.random.default_rng(0)
    n = len(channels)
    steps = [1] * n if steps is None else [int(s) for s in steps]

    def keep(fractions) -> list[int]:
        return [ModelGraph.n_keep(int(c), 1.0 - float(f), round_to, 1, s)
                for c, f, s in zip(channels, fractions, steps)]

    anchors = [keep([f] * n) for f in (0.25, CALIBRATION_KEEP, 0.75)]
    anchors += [keep(rng.uniform(0.2, 1.0, n)) for _ in range(CALIBRATION_PLANS - CALIBRATION_PLANS // 2)]
    anchors += [keep(rng.uniform(0.2, 0.6, n)) for _ in range(CALIBRATION_PLANS // 2)]
    if round_to == 1:
        anchors.append([min(int(c), k + s) for k, c, s in zip(anchors[1], channels, steps)])
    full = [int(c) for c in channels]
    unique = []
    for a in anchors:
        if a != full and a not in unique:
            unique.append(a)
    return unique


def fit_calibration(
    base: float, measured: np.ndarray, table: np.ndarray, table_full: float,
) -> tuple[str, float, float, np.ndarray, dict[str, Any]]:
    """The map from table sums to end-to-end ms: ``(form, scale, exponent, predicted, error)``.

    ``base``: the measured full model; ``measured`` / ``table``: measured ms and uncalibrated table sums
    of the calibration models; ``table_full``: the table sum of the full model.

    Two one-parameter maps through the (exact) full-model point, each fitted robustly (median of the
    per-model estimates, so one model timed during a burst of load cannot tilt it): affine,
    ``base + scale * (table - table_full)``, and a power law, ``base * (table / table_full) ** exponent``.
    The one with the smaller median error on the calibration models is kept (``form``: ``"affine"`` or
    ``"power"``): on the development CPU the ResNets fit the affine map within 2%, the 32/64-channel
    default network the power law (exponent ~0.75; affine: 6% median, 31% worst). ``predicted``: the
    chosen map at the calibration models; ``error``: its median and worst relative error, the map
    chosen, and the median error of each map.
    """
    scale = 1.0
    ok = np.abs(table - table_full) > 1e-9
    if ok.any():
        scale = float(np.clip(np.median((measured[ok] - base) / (table[ok] - table_full)), *_SCALE_BOUNDS))
    affine = base + scale * (table - table_full)
    ratio_ok = ok & (table > 0) & (measured > 0)
    exponent = float(np.median(np.log(measured[ratio_ok] / base) / np.log(table[ratio_ok] / table_full))) \
        if ratio_ok.any() else 1.0
    power = base * (np.maximum(table, 1e-12) / table_full) ** exponent
    err = {name: np.abs(pred / measured - 1.0) for name, pred in (("affine", affine), ("power", power))}
    form = "power" if np.median(err["power"]) < np.median(err["affine"]) else "affine"
    chosen = power if form == "power" else affine
    fit = {"median": float(np.median(err[form])), "worst": float(np.max(err[form])), "form": form,
           "affine_median": float(np.median(err["affine"])), "power_median": float(np.median(err["power"]))}
    return form, scale, exponent, chosen, fit
