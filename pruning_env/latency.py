"""The per-layer latency lookup table: a plan's latency in ms without building the pruned model.

A plan can be priced three ways, from the most faithful to the cheapest:

* :class:`~pruning_env.measure.LatencyMeasurer` (:mod:`pruning_env.measure`) times a built (pruned)
  model: median of repeated runs after warm-up runs, with a fixed number of threads, in torch eager
  mode or in onnxruntime.
* :class:`LatencyTable` (this module) predicts a plan's latency without building the pruned model.
  Every cost unit (:func:`~pruning_env.macs.cost_units`: conv, depthwise conv, linear, BN, activation,
  pooling) is timed alone on a small grid of kept channel counts, once per architecture, input shape
  and measurer setting, and cached on disk. A plan costs the bilinearly interpolated sum of its layers,
  mapped to end-to-end milliseconds by a calibration through the measured full model (exact) and, by
  default, fitted to a dozen measured pruned models: the calibration absorbs what the table does not
  see (residual adds, memory traffic, framework dispatch).
* :class:`~pruning_env.macs.MacsModel` / :func:`~pruning_env.macs.macs_for_kept` (:mod:`pruning_env.macs`)
  count MACs analytically, the way Torch-Pruning's ``count_ops_and_params`` counts them on the
  physically pruned model.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import cache_dir, cached_json, stable_hash
from .engine import ModelGraph, apply_plan
from .macs import CostUnit, cost_units, kept_vector
from .measure import LatencyMeasurer
from .plan import PlanMismatchError, PruningPlan

__all__ = ["LatencyTable", "DEFAULT_GRID"]

log = logging.getLogger(__name__)

TABLE_FORMAT = "dataawareprune.latency_table"
TABLE_FORMAT_VERSION = 2  # 2: round_to grids, random calibration models, load reference
DEFAULT_GRID = (0.25, 0.5, 0.75, 1.0)  # kept fractions per channel axis; 1 channel is always added
CALIBRATION_KEEP = 0.5  # kept fraction of every group in the uniform calibration model
EXACT_POINTS = 8  # an axis with at most this many allowed widths (multiples of round_to) is timed at every one
CALIBRATION_PLANS = 6  # random calibration models (seeded), besides the uniform ones
LOAD_WARN = 1.25  # reference layer slower/faster by more than this across a build: the machine's load changed
_SCALE_BOUNDS = (0.1, 10.0)  # a calibration slope outside this range is noise, not a property of the model
_SCAN_BOUNDS = (0.25, 4.0)  # a scan ratio outside this range is a timing accident, not a kernel effect
_LAYER_ROUNDS = 3  # interleaved rounds over the grid points of one layer (10 back-to-back runs keep caches warm)

# ---------------------------------------------------------------------------------------------
# Latency lookup table
# ---------------------------------------------------------------------------------------------
def _spec(u: CostUnit) -> dict[str, Any]:
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


def _axis_points(full: int, vary: bool, grid: Sequence[float], step: int = 1, round_to: int = 1) -> list[int]:
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


def _timeable(u: CostUnit) -> bool:
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


def _calibration_anchors(
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


def _segments(xs: np.ndarray, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: index ``i`` of the grid segment ``xs[i] <= x <= xs[i+1]`` and the position ``t`` in it."""
    idx = (xs[:, 1:-1] < x[:, None]).sum(axis=1)
    x0, x1 = xs[rows, idx], xs[rows, idx + 1]
    width = x1 - x0
    t = np.where(width > 0, (x - x0) / np.where(width > 0, width, 1.0), 0.0)
    return idx, np.clip(t, 0.0, 1.0)


class LatencyTable:
    """Per-layer latency lookup table: a plan's latency in ms without building the pruned model.

    Build it with :meth:`build`. Each distinct layer configuration is timed alone on a grid of kept
    (input, output) channel counts (every multiple of ``round_to`` on narrow axes; otherwise the smallest
    width and ``grid`` fractions of the full width; one axis for depthwise convs, BN, activations and
    pools), made monotone (more channels never cost less), and interpolated bilinearly.
    ``predict(kept) = offset_ms + scale * table_ms(kept)``: ``scale`` and ``offset_ms`` map the table's sum
    onto measured end-to-end latency, exactly at the full model (``predict(full) == base_ms``) and, with
    calibration (the default), as close as possible at a dozen measured pruned models (see
    :func:`_calibration_anchors`; an affine map or a power law, whichever fits them better). Layers timed
    alone do not cost what they cost inside the network (residual adds, memory traffic between layers,
    framework dispatch), so an uncalibrated constant offset overestimated speedups by up to 86% at batch
    64 on the development CPU; calibrated, with ``round_to=8``, predicted speedups of 20 random plans were
    within 1.4% (median) / 6.0% (worst) of the measured ones on ResNet-20, 0.8% / 2.8% on ResNet-56.
    Without calibration ``scale = 1`` and ``offset_ms`` is the constant overhead the table does not see.
    With scans (see :meth:`build`), every configuration is also timed at every channel count along each
    axis (the other at full width); the ratio of that scan to its own interpolation multiplies the grid's
    prediction, so kernel effects between grid points (a 33-channel conv slower than a 40-channel one,
    because kernels work on blocks of 8 or 16 channels) are priced. Predictions are then no longer monotone.

    Attributes: ``base_ms`` (measured full model), ``scale``, ``offset_ms``, ``channels`` (per group),
    ``group_names``, ``settings`` (the measurer's :meth:`~pruning_env.measure.LatencyMeasurer.describe`),
    ``unit_names`` and ``unit_ms`` (table latency of every priced layer at full width), ``build_seconds``,
    ``from_cache``, ``round_to``, ``exponent`` (None for the affine map), ``calibration_error`` (median and
    worst relative error on the calibration models and the map chosen, or None) and ``load_spread`` (how
    much the reference layer's speed varied during the build; 1.0 on a quiet machine).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping) or data.get("format") != TABLE_FORMAT:
            raise ValueError(f"not a latency table: expected a mapping with format {TABLE_FORMAT!r}")
        if data.get("version") != TABLE_FORMAT_VERSION:
            raise ValueError(f"latency table version {data.get('version')} != {TABLE_FORMAT_VERSION}; rebuild it")
        self._data = dict(data)
        self.graph_signature: str = str(data["graph_signature"])
        self.group_names: list[str] = [str(g["name"]) for g in data["groups"]]
        self.channels = np.array([int(g["channels"]) for g in data["groups"]], dtype=np.float64)
        self.settings: dict[str, Any] = dict(data["settings"])
        self.base_ms = float(data["base_ms"])
        self.scale = float(data["scale"])
        self.offset_ms = float(data["offset_ms"])
        # "power": base_ms * (table_ms / table_full_ms) ** exponent, chosen when it fits the calibration
        # models better than the affine map (small networks, whose full-width layers cost less inside
        # the network than alone)
        self.exponent = float(data["exponent"]) if data.get("form") == "power" else None
        self._table_full = float(data.get("table_full_ms", 0.0))
        self.build_seconds = float(data.get("build_seconds", 0.0))
        self.round_to = int(data.get("round_to", 1))
        self.calibration_error: dict[str, float] | None = data.get("calibration_error")
        self.load_spread = float(data.get("load_spread", 1.0))
        self.from_cache = False
        configs, units = data["configs"], data["units"]
        n = max(max(len(c["in_points"]), len(c["out_points"])) for c in configs)
        xs_in, xs_out, vals = [], [], []
        for c in configs:  # pad every grid to n x n by repeating its last point (zero-width segments)
            pi, po = list(c["in_points"]), list(c["out_points"])
            v = np.asarray(c["ms"], dtype=np.float64).reshape(len(pi), len(po))
            v = np.pad(v, ((0, n - len(pi)), (0, n - len(po))), mode="edge")
            xs_in.append(pi + [pi[-1]] * (n - len(pi)))
            xs_out.append(po + [po[-1]] * (n - len(po)))
            vals.append(v)
        cfg = np.array([int(u["config"]) for u in units], dtype=np.int64)
        # scan ratios of all configurations in one flat array; entry 0 is the 1.0 of axes without a scan
        flat, offsets = [1.0], {}
        for ci, c in enumerate(configs):
            for axis in ("in", "out"):
                ratios = c.get(f"scan_{axis}") or []
                if ratios:
                    offsets[ci, axis] = len(flat)
                    flat.extend(float(r) for r in ratios)
        self.scanned = len(flat) > 1
        self._scan = np.asarray(flat)
        for axis in ("in", "out"):
            first = np.array([float(c[f"{axis}_points"][0]) for c in configs])
            off = np.array([offsets.get((ci, axis), 0) for ci in range(len(configs))], dtype=np.int64)
            setattr(self, f"_scan_{axis}", (off[cfg], (off > 0)[cfg].astype(np.int64), first[cfg]))
        g = len(self.channels)
        self._xs_in = np.asarray(xs_in, dtype=np.float64)[cfg]
        self._xs_out = np.asarray(xs_out, dtype=np.float64)[cfg]
        self._vals = np.asarray(vals)[cfg]
        self._rows = np.arange(len(units))
        self._in_full = np.array([float(u["in"]) for u in units])
        self._out_full = np.array([float(u["out"]) for u in units])
        self._a_in, self._a_out = np.zeros((len(units), g)), np.zeros((len(units), g))
        for i, u in enumerate(units):
            for j in u["in_groups"]:
                self._a_in[i, j] += 1.0
            for j in u["out_groups"]:
                self._a_out[i, j] += 1.0
        self.unit_names = [str(u["name"]) for u in units]
        self.unit_ms = self._unit_ms(self.channels)  # per unit, at full width
        self._share: list[float] | None = None

    # -- prediction -------------------------------------------------------------------------------
    def _unit_ms(self, kept: np.ndarray) -> np.ndarray:
        removed = self.channels - kept
        x_in, x_out = self._in_full - self._a_in @ removed, self._out_full - self._a_out @ removed
        i, ti = _segments(self._xs_in, x_in, self._rows)
        o, to = _segments(self._xs_out, x_out, self._rows)
        v, r = self._vals, self._rows
        ms = ((1 - ti) * (1 - to) * v[r, i, o] + ti * (1 - to) * v[r, i + 1, o]
              + (1 - ti) * to * v[r, i, o + 1] + ti * to * v[r, i + 1, o + 1])
        if self.scanned:  # scan entry j of an axis holds (j + 1) * step channels
            for x, (off, on, step) in ((x_in, self._scan_in), (x_out, self._scan_out)):
                ms = ms * self._scan[off + on * (np.rint(x / step).astype(np.int64) - 1)]
        return ms

    def table_ms(self, kept: Sequence[int] | np.ndarray) -> float:
        """Sum of the interpolated per-layer latencies (ms), before calibration."""
        return float(self._unit_ms(kept_vector(self.channels, kept)).sum())

    def predict(self, kept: Sequence[int] | np.ndarray) -> float:
        """Predicted end-to-end latency (ms) when group ``i`` keeps ``kept[i]`` channels."""
        if self.exponent is not None:
            return self.base_ms * (self.table_ms(kept) / self._table_full) ** self.exponent
        return self.offset_ms + self.scale * self.table_ms(kept)

    def predict_plan(self, plan: PruningPlan) -> float:
        """Predicted latency (ms) of ``plan``; only the number of channels kept per group matters."""
        if plan.graph_signature and plan.graph_signature != self.graph_signature:
            raise PlanMismatchError(f"plan is for graph {plan.graph_signature}, this table for {self.graph_signature}")
        missing = [n for n in self.group_names if n not in plan.keep]
        if missing:
            raise PlanMismatchError(f"plan has no entry for groups {missing[:5]}")
        return self.predict([len(plan.keep[n]) for n in self.group_names])

    def group_share(self) -> list[float]:
        """Per group: full-width latency of the layers it prunes (inputs or outputs) / ``base_ms``.

        A conv belongs to the group of its inputs and to the group of its outputs, so shares sum to
        more than 1; each is at most 1.
        """
        if self._share is None:
            touch = (self._a_in + self._a_out) > 0
            ms = self.scale * (touch * self.unit_ms[:, None]).sum(axis=0)
            self._share = [float(min(1.0, s / self.base_ms)) if self.base_ms > 0 else 0.0 for s in ms]
        return list(self._share)

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        try:
            return cls(data)
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed latency table: {exc!r}") from exc

    def __repr__(self) -> str:
        s = self.settings
        fit = f"exponent={self.exponent:.3f}" if self.exponent is not None else \
            f"scale={self.scale:.3f}, offset_ms={self.offset_ms:.3f}"
        return (f"LatencyTable(groups={len(self.channels)}, layers={len(self.unit_names)}, base_ms={self.base_ms:.3f}, "
                f"{fit}, backend={s.get('backend')}, "
                f"batch_size={s.get('batch_size')}, threads={s.get('threads')})")

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        graph: ModelGraph,
        measurer: LatencyMeasurer,
        cache: bool = True,
        grid: Sequence[float] = DEFAULT_GRID,
        calibrate: bool = True,
        scan: bool | None = None,
        round_to: int = 1,
    ) -> LatencyTable:
        """Measure (or load from the disk cache) the table of ``graph``'s model under ``measurer``.

        The cache key covers the layer configurations and their group wiring, the input shape, the
        measurer's settings (backend, device, hardware, batch, threads, versions), ``grid``, ``calibrate``,
        ``scan`` and ``round_to``; weights do not matter. A corrupt or malformed cache file is rebuilt.

        ``round_to``: the multiple of channels plans will keep (the environment's ``round_to``). Axes with
        few such widths are timed at every one of them, and the calibration models are rounded the same
        way, so the table is fitted to the widths it will be asked about.

        ``scan``: also time every channel count along each axis of each configuration (about 4x the
        measurements), for backends whose latency is a jagged function of the channel count because their
        kernels work on blocks of 8 or 16 channels. Default: on for onnxruntime with ``round_to == 1`` (a
        63-channel conv there is ~30% slower than a 64-channel one), off otherwise (with ``round_to`` > 1
        the grid already holds the widths plans use; in torch at batch 1 latency is smooth in the count).
        """
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        scan = (measurer.backend != "torch" and round_to == 1) if scan is None else bool(scan)
        ex = graph.example_inputs
        if torch.is_tensor(ex) and tuple(ex.shape[1:]) != measurer.input_shape:
            raise ValueError(f"the graph was traced with input {tuple(ex.shape[1:])} but the measurer's "
                             f"input_shape is {measurer.input_shape}")
        units = [u for u in cost_units(graph) if _timeable(u)]
        specs = [_spec(u) for u in units]
        key = stable_hash({
            "version": TABLE_FORMAT_VERSION, "signature": graph.signature, "settings": measurer.describe(),
            "grid": [float(f) for f in grid], "calibrate": bool(calibrate), "scan": scan, "round_to": int(round_to),
            "units": [(s, u.in_groups, u.out_groups) for s, u in zip(specs, units)],
        })
        make = lambda: cls._measure(graph, measurer, units, specs, grid, calibrate, scan, int(round_to))  # noqa: E731
        if not cache:
            return cls(make())
        path = cache_dir("latency") / f"table_{key}.json"
        built = []

        def build_fresh():
            built.append(True)
            log.info("latency table: timing %d layers of %s (once per model and measurer; cached in %s)",
                     len(units), type(graph.model).__name__, path.parent)
            return make()

        for _attempt in range(2):
            data = cached_json(path, build_fresh)
            try:
                table = cls.from_dict(data)
            except ValueError as exc:  # valid JSON, wrong content: rebuild once
                log.warning("latency table %s is malformed (%s); rebuilding it", path, exc)
                path.unlink(missing_ok=True)
                continue
            table.from_cache = not built
            if table.from_cache:
                log.info("latency table loaded from the cache (%s)", path.name)
            return table
        raise RuntimeError(f"could not build a valid latency table at {path}")

    @classmethod
    def _measure(cls, graph, measurer, units, specs, grid, calibrate, scan, round_to) -> dict[str, Any]:
        t_start = time.perf_counter()
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
                    "in_points": _axis_points(u.in_channels, spec["vary_in"], grid, step if u.kind == "conv" else 1,
                                              round_to),
                    "out_points": _axis_points(u.out_channels, spec["vary_out"], grid, step, round_to),
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
        load_spread = max(refs) / min(refs) if refs else 1.0
        data: dict[str, Any] = {
            "format": TABLE_FORMAT, "version": TABLE_FORMAT_VERSION, "graph_signature": graph.signature,
            "groups": [{"name": g.name, "channels": g.channels} for g in graph.groups],
            "settings": measurer.describe(), "grid": [float(f) for f in grid], "scan": scan, "round_to": round_to,
            "configs": configs, "units": rows, "scale": 1.0, "offset_ms": 0.0, "base_ms": 0.0,
            "reference_ms": float(np.median(refs)) if refs else None, "load_spread": load_spread,
        }
        probe = cls(data)  # to evaluate the uncalibrated table sum
        full = probe.channels
        s_full = probe.table_ms(full)
        scale, calibration, fit = 1.0, None, None
        if not calibrate:
            base = measurer.measure_many([graph.model])[0]["median_ms"]
        else:
            anchors = _calibration_anchors(full, round_to, [g.step for g in graph.groups])
            models = [apply_plan(graph.model, graph.plan_from_kept(kept), example_inputs=graph.example_inputs)
                      for kept in anchors]
            # one session, base and calibration models interleaved run by run: drift hits all alike
            base, *measured = (s["median_ms"] for s in measurer.measure_many([graph.model, *models]))
            t_anchor = np.array([probe.table_ms(kept) for kept in anchors])
            m_anchor = np.array(measured)
            # Two one-parameter maps through the (exact) full-model point, each fitted robustly (median
            # of the per-model estimates, so one model timed during a burst of load cannot tilt it):
            # affine, base + scale * (table - table_full), and a power law, base * (table / table_full)
            # ** exponent. The one with the smaller median error on the calibration models is kept: on
            # the development CPU the ResNets fit the affine map within 2%, the 32/64-channel default
            # network the power law (exponent ~0.75; affine: 6% median, 31% worst).
            ok = np.abs(t_anchor - s_full) > 1e-9
            if ok.any():
                scale = float(np.clip(np.median((m_anchor[ok] - base) / (t_anchor[ok] - s_full)), *_SCALE_BOUNDS))
            affine = base + scale * (t_anchor - s_full)
            ratio_ok = ok & (t_anchor > 0) & (m_anchor > 0)
            exponent = float(np.median(np.log(m_anchor[ratio_ok] / base) / np.log(t_anchor[ratio_ok] / s_full))) \
                if ratio_ok.any() else 1.0
            power = base * (np.maximum(t_anchor, 1e-12) / s_full) ** exponent
            err = {name: np.abs(pred / m_anchor - 1.0) for name, pred in (("affine", affine), ("power", power))}
            form = "power" if np.median(err["power"]) < np.median(err["affine"]) else "affine"
            chosen = power if form == "power" else affine
            calibration = [{"kept": kept, "measured_ms": float(m), "table_ms": float(t), "predicted_ms": float(p)}
                           for kept, m, t, p in zip(anchors, m_anchor, t_anchor, chosen)]
            fit = {"median": float(np.median(err[form])), "worst": float(np.max(err[form])), "form": form,
                   "affine_median": float(np.median(err["affine"])), "power_median": float(np.median(err["power"]))}
            if form == "power":
                data.update(form="power", exponent=exponent)
        data.update(base_ms=base, scale=scale, offset_ms=base - scale * s_full, table_full_ms=s_full,
                    calibration=calibration, calibration_error=fit, measured_points=n_points,
                    build_seconds=time.perf_counter() - t_start)
        log.info("latency table: %d layers, %d configs, %d points, %.1f s", len(rows), len(configs), n_points,
                 data["build_seconds"])
        if load_spread > LOAD_WARN:
            log.warning("the machine's speed changed by %.0f%% while the latency table was built (another process "
                        "competing for the cores?): its predictions may be off; rebuild it on a quiet machine "
                        "(delete %s)", 100 * (load_spread - 1), cache_dir("latency"))
        if fit is not None and fit["worst"] > 0.2:
            log.warning("the latency table misses its own calibration models by up to %.0f%% (median %.0f%%): "
                        "its predictions are rough on this machine; time plans with LatencyMeasurer before "
                        "trusting a speedup", 100 * fit["worst"], 100 * fit["median"])
        return data
