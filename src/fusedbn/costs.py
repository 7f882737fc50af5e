"""Which implementation is faster for a BatchNorm call on a GPU: a small cost model on measured data.

A call's time on one implementation (fusedbn's kernels "triton", torch's eager BatchNorm "torch", or
torch.compile's lowering "compile") is predicted as

    max(host time per call, bytes moved / measured throughput)

The host time per call is the implementation's floor in that mode (the least a call took in the
measured run: a small layer's wall time is the host's). The throughput is the implementation's
effective one (minimal bytes per measured time) at the measured case nearest to the call: same
layout, dtype and mode, nearest in log2 of the channel count and of the elements per channel. An
epilogue (residual add, ReLU) adds its bytes at that throughput for the fused kernels, and separate
elementwise kernels (bytes at ``elementwise_gbps``, ``elementwise_host_us`` each) for torch.

A table holds these numbers for one GPU kind, as JSON (``CostTable.to_json``): the tables shipped in
``fusedbn/cost_tables`` say which run each number comes from; ``fusedbn bench --calibrate`` measures
one for the GPU at hand, and ``FUSEDBN_COST_TABLE`` (or :func:`use_cost_table`) points fusedbn at it.
A GPU without a table gets the conservative one: fusedbn's kernels only where they are predicted
twice as fast.
"""

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRITON, TORCH, COMPILE = "triton", "torch", "compile"
IMPLEMENTATIONS = (TRITON, TORCH, COMPILE)
# Call modes: training with a backward to come, training without, and eval (a forward only). "bwd"
# appears in measured runs, not in calls.
MODES = ("fwd", "fwdbwd", "eval")
FORMAT = 1
TABLE_ENV = "FUSEDBN_COST_TABLE"
TABLE_FOLDER = Path(__file__).parent / "cost_tables"
CONSERVATIVE = "conservative"
# Passes over the tensor, in elements, that each mode must make at the least: read x and write y;
# then read x and dy and write dx.
PASSES = {"fwd": 2, "bwd": 3, "fwdbwd": 5, "eval": 2}


class CostTableError(ValueError):
    """A cost table that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Call:
    """What the prediction of one call depends on."""

    shape: tuple[int, ...]
    itemsize: int
    dtype: str  # "float16", "bfloat16", "float32", "float64"
    layout: str  # "nchw" or "channels_last"
    mode: str  # one of MODES
    residual: bool = False
    relu: bool = False

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_per_channel(self) -> int:
        return self.numel // max(self.channels, 1)


@dataclass(frozen=True)
class Point:
    """One measured case: an implementation's effective throughput there (GB/s of minimal bytes)."""

    layout: str
    dtype: str
    mode: str
    channels: int
    n_per_channel: int
    gbps: float


@dataclass(frozen=True)
class Prediction:
    """The predicted time of a call on each implementation, and the one chosen."""

    chosen: str
    times_us: dict[str, float]
    table: str  # where the numbers come from

    def __str__(self) -> str:
        times = ", ".join(f"{name} {us:.1f} us" for name, us in self.times_us.items())
        return f"{self.chosen} (predicted {times}; table: {self.table})"


@dataclass(frozen=True)
class CostTable:
    """The measured numbers of one GPU kind (see the module's docstring for the model)."""

    device: str  # the GPU's name as torch reports it, or "conservative"
    source: str  # which run (or derivation) the numbers come from
    host_us: Mapping[str, Mapping[str, float]]  # implementation -> mode -> floor
    points: Mapping[str, tuple[Point, ...]]  # implementation -> measured cases
    elementwise_gbps: float
    elementwise_host_us: float
    # fusedbn's kernels are chosen only when predicted faster by this factor (1: any faster).
    margin: float = 1.0

    def predict_us(self, call: Call, implementation: str) -> float:
        """Predicted wall time of ``call`` on ``implementation``, in microseconds."""
        mode = call.mode
        passes = PASSES[mode] + (1 if call.residual else 0)
        element_bytes = call.numel * call.itemsize
        throughput = self._throughput(call, implementation)
        device_us = passes * element_bytes / (throughput * 1e3)
        host_us = self.host_us[implementation][mode]
        if implementation == TRITON:
            if call.relu:  # the packed mask: a bit per element written (and read back)
                device_us += call.numel / 8 * (2 if mode == "fwdbwd" else 1) / (throughput * 1e3)
        elif implementation == TORCH:
            # torch's add reads two tensors and writes one, its ReLU reads one and writes one;
            # backward, the ReLU's gradient reads two and writes one.
            ops = (1 if call.residual else 0) + (1 if call.relu else 0)
            elementwise = (3 if call.residual else 0) + (2 if call.relu else 0)
            if mode == "fwdbwd" and call.relu:
                ops, elementwise = ops + 1, elementwise + 3
            device_us += elementwise * element_bytes / (self.elementwise_gbps * 1e3)
            host_us += ops * self.elementwise_host_us
        return max(host_us, device_us)

    def _throughput(self, call: Call, implementation: str) -> float:
        """The effective throughput at the nearest measured case of ``call``'s kind."""
        points = self.points[implementation]
        same = [p for p in points if (p.layout, p.dtype, p.mode) == (call.layout, call.dtype, call.mode)]
        if not same:  # no measurement of this dtype: the nearest of any dtype
            same = [p for p in points if (p.layout, p.mode) == (call.layout, call.mode)] or list(points)
        c, n = math.log2(max(call.channels, 1)), math.log2(max(call.n_per_channel, 1))
        nearest = min(
            same, key=lambda p: (math.log2(p.channels) - c) ** 2 + (math.log2(p.n_per_channel) - n) ** 2
        )
        return nearest.gbps

    def predict(self, call: Call, candidates: Iterable[str]) -> Prediction:
        """The predicted times of ``call`` on ``candidates`` (fusedbn's kernels first), and the
        implementation chosen: fusedbn's kernels only if faster than every other by ``margin``."""
        times = {name: self.predict_us(call, name) for name in candidates}
        best_other = min((name for name in times if name != TRITON), key=times.__getitem__)
        chosen = TRITON if times[TRITON] * self.margin < times[best_other] else best_other
        return Prediction(chosen, times, f"{self.device}: {self.source}")

    def to_json(self) -> str:
        """The table as JSON, one measured point per line."""
        fields = {"format": FORMAT, **dataclasses.asdict(self)}
        points = fields.pop("points")
        lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in fields.items()]
        blocks = [
            f"    {json.dumps(name)}: [\n"
            + ",\n".join(f"      {json.dumps(list(dataclasses.astuple(p)))}" for p in self.points[name])
            + "\n    ]"
            for name in points
        ]
        return "{\n" + "\n".join(lines) + '\n  "points": {\n' + ",\n".join(blocks) + "\n  }\n}\n"


def table_from_json(text: str, where: str) -> CostTable:
    """The table in ``text`` (read from ``where``, named in errors); raises CostTableError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CostTableError(f"cost table {where}: not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CostTableError(f"cost table {where}: not a fusedbn cost table of format {FORMAT}")
    try:
        host_us = {
            name: {mode: float(data["host_us"][name][mode]) for mode in MODES}
            for name in IMPLEMENTATIONS
        }
        points = {
            name: tuple(Point(str(layout), str(dtype), str(mode), int(c), int(n), float(gbps))
                        for layout, dtype, mode, c, n, gbps in data["points"][name])
            for name in IMPLEMENTATIONS
        }
        table = CostTable(
            device=str(data["device"]), source=str(data["source"]), host_us=host_us, points=points,
            elementwise_gbps=float(data["elementwise_gbps"]),
            elementwise_host_us=float(data["elementwise_host_us"]), margin=float(data["margin"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CostTableError(f"cost table {where}: missing or malformed entry ({error!r})") from None
    for name, points in table.points.items():
        if not points or any(p.gbps <= 0 or p.channels < 1 or p.n_per_channel < 1 for p in points):
            raise CostTableError(f"cost table {where}: no usable measurements for {name!r}")
    return table


def load_table(path: str | os.PathLike) -> CostTable:
    """The cost table in the file ``path``; raises CostTableError naming the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CostTableError(f"cost table {path}: cannot be read ({error.strerror or error})") from None
    return table_from_json(text, str(path))


def builtin_table_path(device_name: str) -> Path:
    """The shipped table of the GPU kind ``device_name`` names ("NVIDIA H100 80GB HBM3": h100), or
    the conservative one."""
    for path in sorted(TABLE_FOLDER.glob("nvidia-*.json")):
        kind = path.stem.removeprefix("nvidia-")
        if kind.upper() in device_name.upper().split() or f" {kind.upper()}" in device_name.upper():
            return path
    return TABLE_FOLDER / f"{CONSERVATIVE}.json"


def table_for(device_name: str) -> CostTable:
    """The table for a GPU named ``device_name``: the file FUSEDBN_COST_TABLE names, if its device
    is this one, else the shipped one. A table that cannot be used is reported in one warning line
    (naming the file and the problem) and replaced by the conservative table."""
    chosen = os.environ.get(TABLE_ENV)
    if not chosen:
        return load_table(builtin_table_path(device_name))
    try:
        table = load_table(chosen)
    except CostTableError as error:
        problem = error
    else:
        if table.device == device_name:
            return table
        problem = f"cost table {chosen}: measured on {table.device!r}, not on this {device_name!r}"
    warnings.warn(f"fusedbn: {problem}; using the conservative table", stacklevel=2)
    return load_table(TABLE_FOLDER / f"{CONSERVATIVE}.json")


def table_from_results(rows: Iterable[Mapping[str, Any]], source: str, margin: float = 1.0) -> CostTable:
    """Fit a table to the measured rows of one ``fusedbn bench`` run (columns device, copy_gbps,
    shape, dtype, layout, mode, provider, status, median_ms; provider eager, fusedbn or compile).

    Every row is a point, and each implementation's host floor per mode is its fastest row in that
    mode; where compile was not measured in a mode, torch's eager numbers stand in for it. torch's
    separate elementwise kernels get 85% of the measured copy bandwidth and half the host floor of
    its eager BatchNorm forward (derived, not measured).
    """
    providers = {"fusedbn": TRITON, "eager": TORCH, "compile": COMPILE}
    points: dict[str, list[Point]] = {name: [] for name in IMPLEMENTATIONS}
    floors: dict[str, dict[str, float]] = {name: {} for name in IMPLEMENTATIONS}
    devices, copy_gbps = set(), []
    for row in rows:
        name, mode = providers.get(row["provider"]), row["mode"]
        if name is None or mode not in MODES or row["status"] != "ok":
            continue
        devices.add(row["device"])
        copy_gbps.append(float(row["copy_gbps"]))
        shape = tuple(int(size) for size in str(row["shape"]).split("x"))
        us = float(row["median_ms"]) * 1e3
        itemsize = 2 if row["dtype"] in ("float16", "bfloat16") else 4 if row["dtype"] == "float32" else 8
        call = Call(shape, itemsize, row["dtype"], row["layout"], mode)
        gbps = PASSES[mode] * call.numel * itemsize / (us * 1e3)
        points[name].append(Point(call.layout, call.dtype, mode, call.channels, call.n_per_channel, gbps))
        floors[name][mode] = min(floors[name].get(mode, math.inf), us)
    if len(devices) != 1:
        raise CostTableError(f"{source}: the rows must come from one device, not {sorted(devices)}")
    for mode in MODES:  # a mode compile was not measured in: torch's eager numbers stand in
        if mode not in floors[COMPILE] and mode in floors[TORCH]:
            floors[COMPILE][mode] = floors[TORCH][mode]
            points[COMPILE] += [p for p in points[TORCH] if p.mode == mode]
    missing = [f"{name} {mode}" for name in IMPLEMENTATIONS for mode in MODES if mode not in floors[name]]
    if missing:
        raise CostTableError(f"{source}: no measurement of {', '.join(missing)}")
    return CostTable(
        device=devices.pop(), source=source, host_us=floors,
        points={name: tuple(found) for name, found in points.items()},
        elementwise_gbps=0.85 * max(copy_gbps), elementwise_host_us=0.5 * floors[TORCH]["fwd"],
        margin=margin,
    )


def describe_run(row: Mapping[str, Any], where: str) -> str:
    """Where a table's rows come from: ``where`` and the run's device, versions and commit (read
    from one of its rows)."""
    return (
        f"{where} ({row['device']}, torch {row['torch']}, triton {row['triton']}, "
        f"fusedbn at {str(row['commit']).split()[-1]})"
    )


# Peak memory bandwidths (vendor data sheets, TB/s) of the GPU kinds whose tables are derived from
# the H200's measurements.
HBM_TBPS = {"NVIDIA H200": 4.8, "NVIDIA H100": 3.35, "NVIDIA A100": 2.039}


def shipped_tables(h200_rows: list[Mapping[str, Any]], run: str) -> dict[str, CostTable]:
    """The tables fusedbn ships, by file name, from the rows of the H200 run in the folder ``run``:
    the H200's measured, the H100's and A100's derived from it, and the conservative one (the H200's
    numbers, fusedbn's kernels only where predicted twice as fast)."""
    measured = describe_run(h200_rows[0], f"{run}/results.csv")
    h200 = table_from_results(h200_rows, f"measured: {measured}")
    tables = {"nvidia-h200.json": h200}
    for device in ("NVIDIA H100", "NVIDIA A100"):
        ratio = HBM_TBPS[device] / HBM_TBPS["NVIDIA H200"]
        source = (
            f"derived from {measured}: throughputs scaled by the peak memory bandwidths' ratio "
            f"{ratio:.3f}, host times kept"
        )
        points = {
            name: tuple(dataclasses.replace(p, gbps=p.gbps * ratio) for p in found)
            for name, found in h200.points.items()
        }
        tables[f"nvidia-{device.split()[1].lower()}.json"] = dataclasses.replace(
            h200, device=device, source=source, points=points,
            elementwise_gbps=h200.elementwise_gbps * ratio,
        )
    tables[f"{CONSERVATIVE}.json"] = dataclasses.replace(
        h200, device=CONSERVATIVE, margin=2.0,
        source=f"for GPUs without a table: the numbers of {measured}, fusedbn's kernels only where "
        "predicted twice as fast",
    )
    return tables
