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

This module holds the table (loading, prediction, serialisation, the disk cache and the build
procedure); how its layers are timed and how its calibration is fitted is in
:mod:`pruning_env.latency_build`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .cache import cache_dir, cached_json, stable_hash
from .engine import ModelGraph, apply_plan
from .latency_build import calibration_anchors, fit_calibration, layer_spec, time_layers, timeable
from .macs import cost_units, kept_vector
from .measure import LatencyMeasurer
from .plan import PlanMismatchError, PruningPlan

__all__ = ["LatencyTable", "DEFAULT_GRID"]

log = logging.getLogger(__name__)

TABLE_FORMAT = "dataawareprune.latency_table"
TABLE_FORMAT_VERSION = 2  # 2: round_to grids, random calibration models, load reference
DEFAULT_GRID = (0.25, 0.5, 0.75, 1.0)  # kept fractions per channel axis; 1 channel is always added
LOAD_WARN = 1.25  # reference layer slower/faster by more than this across a build: the machine's load changed


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
    :func:`~pruning_env.latency_build.calibration_anchors`; an affine map or a power law, whichever fits
    them better: :func:`~pruning_env.latency_build.fit_calibration`). Layers timed alone do not cost what
    they cost inside the network (residual adds, memory traffic between layers,
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
        units = [u for u in cost_units(graph) if timeable(u)]
        specs = [layer_spec(u) for u in units]
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
        configs, rows, refs, n_points = time_layers(units, specs, measurer, grid, scan, round_to)
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
            anchors = calibration_anchors(full, round_to, [g.step for g in graph.groups])
            models = [apply_plan(graph.model, graph.plan_from_kept(kept), example_inputs=graph.example_inputs)
                      for kept in anchors]
            # one session, base and calibration models interleaved run by run: drift hits all alike
            base, *measured = (s["median_ms"] for s in measurer.measure_many([graph.model, *models]))
            t_anchor = np.array([probe.table_ms(kept) for kept in anchors])
            m_anchor = np.array(measured)
            form, scale, exponent, chosen, fit = fit_calibration(base, m_anchor, t_anchor, s_full)
            calibration = [{"kept": kept, "measured_ms": float(m), "table_ms": float(t), "predicted_ms": float(p)}
                           for kept, m, t, p in zip(anchors, m_anchor, t_anchor, chosen)]
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
