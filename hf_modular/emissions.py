"""Time, energy and CO2e of a piece of work: codecarbon when it is installed, else the paper's formula.

The paper (after Strubell et al.) estimates energy as kWh = 1.58 * t * P / 1000, with t in hours, P the average power
of CPU and DRAM in watts and 1.58 the data-centre PUE, and CO2e = 0.954 * kWh in pounds; records here are in kg.
Without a power meter, P is an assumption: `HF_MODULAR_WATTS` (default 65 W) for a fully busy machine, scaled by the
measured CPU utilisation. Every record says which way it was made, and the formula's record says when a GPU did
work that it does not count (a GPU-bound run keeps the CPU mostly idle, so its estimate is far too low).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

PUE = 1.58
CO2E_POUNDS_PER_KWH = 0.954  # Strubell et al.'s US average, as the paper uses it
CO2E_PER_KWH = CO2E_POUNDS_PER_KWH * 0.45359237  # in kg
DEFAULT_WATTS = 65.0


@dataclass
class ComputeRecord:
    """What a measured block cost. `method` is "codecarbon" or "the paper's formula with an assumed power"."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    energy_kwh: float = 0.0
    co2e_kg: float = 0.0
    method: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.perf_counter, repr=False)
    _cpu_started: float = field(default_factory=time.process_time, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if not key.startswith("_")}

    def wall_seconds_so_far(self) -> float:
        """Inside the measured block: seconds since it started."""
        return time.perf_counter() - self._started

    def so_far(self) -> dict[str, Any]:
        """Inside the measured block: the record as `to_dict()` would give it if the block ended now. The energy is
        always the paper's formula's here: codecarbon's tracker can be read only once, when the block ends."""
        partial = ComputeRecord(
            wall_seconds=self.wall_seconds_so_far(), cpu_seconds=time.process_time() - self._cpu_started
        )
        _estimate_by_formula(partial)
        return partial.to_dict()


def paper_estimate(wall_seconds: float, cpu_seconds: float, watts: float | None = None) -> tuple[float, float, float]:
    """(kWh, kg CO2e, the average watts assumed) by the paper's formula, from measured times."""
    peak = float(os.environ.get("HF_MODULAR_WATTS", DEFAULT_WATTS)) if watts is None else watts
    utilisation = min(1.0, cpu_seconds / max(wall_seconds * (os.cpu_count() or 1), 1e-9))
    average_watts = peak * max(utilisation, 0.1)  # an idle machine still draws power
    kwh = PUE * (wall_seconds / 3600) * average_watts / 1000
    return kwh, CO2E_PER_KWH * kwh, average_watts


@contextmanager
def measure_compute(use_codecarbon: bool = True) -> Iterator[ComputeRecord]:
    """Measure the block's wall and CPU time, and its energy and CO2e; the record is filled when the block ends."""
    tracker = _codecarbon_tracker() if use_codecarbon else None
    record = ComputeRecord()
    try:
        yield record
    finally:
        record.wall_seconds = time.perf_counter() - record._started
        record.cpu_seconds = time.process_time() - record._cpu_started
        emissions = tracker.stop() if tracker is not None else None
        if tracker is not None and emissions is not None:
            data = tracker.final_emissions_data
            record.energy_kwh, record.co2e_kg, record.method = (
                float(data.energy_consumed),
                float(emissions),
                "codecarbon",
            )
        else:
            _estimate_by_formula(record)


def _estimate_by_formula(record: ComputeRecord) -> None:
    """Fill `record`'s energy, CO2e and method from its measured times by the paper's formula."""
    kwh, co2e, watts = paper_estimate(record.wall_seconds, record.cpu_seconds)
    record.energy_kwh, record.co2e_kg = kwh, co2e
    record.method = "the paper's formula with an assumed power"
    record.details["average_watts"] = watts
    if gpu := _cuda_device_in_use():
        record.method += " (CPU and DRAM only: the GPU's draw is not counted)"
        record.details["gpu_not_counted"] = gpu


def _cuda_device_in_use() -> str | None:
    """The name of the GPU this process has used so far, if any (torch is not imported for the question)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda.get_device_name()


def _codecarbon_tracker():
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        return None
    try:
        tracker = OfflineEmissionsTracker(
            country_iso_code=os.environ.get("HF_MODULAR_COUNTRY", "USA"), save_to_file=False, log_level="error"
        )
        tracker.start()
        return tracker
    except Exception:  # codecarbon cannot read this machine's sensors: fall back to the formula
        return None
