"""``EIETarget``: the EIE backend as circ-opt's ``--target=eie(...)`` and circ-run's ``.eie``."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import attrs
import numpy as np

from backends import Target
from backends.eie import asm, encode, lower, sim
from circ.printer import format_table


def _at_least(minimum: int):
    def check(instance, attribute, value):
        if value < minimum:
            raise ValueError(f"option {attribute.name!r} must be at least {minimum}, got {value}")
    return check


def _within(low: int, high: int):
    def check(instance, attribute, value):
        if not low <= value <= high:
            raise ValueError(f"option {attribute.name!r} must be {low}..{high}, got {value}")
    return check


@attrs.define
class EIETarget(Target):
    """Han et al.'s Efficient Inference Engine: sparse, weight-shared matrix-vector layers
    on ``pes`` processing elements (convolutions by im2col). Options are the hardware and the
    storage format; ``fifo_depth`` and ``sram_bytes`` only change the cost model."""

    name: ClassVar[str] = "eie"
    extension: ClassVar[str] = ".eie"

    pes: int = attrs.field(default=lower.DEFAULT_PES, validator=_at_least(1), metadata={
        "help": "processing elements; row i of a layer lives in PE i % pes"})
    v_bits: int = attrs.field(default=lower.DEFAULT_V_BITS, validator=_within(1, 16), metadata={
        "help": "bits per codebook index (a layer needs 2**v_bits >= its clusters)"})
    z_bits: int = attrs.field(default=lower.DEFAULT_Z_BITS, validator=_within(2, 8), metadata={
        "help": "bits per relative row index (longer gaps take filler entries)"})
    widen: bool = attrs.field(default=False, metadata={
        "help": "give a layer with more clusters wider indices (with a warning) instead of refusing"})
    fifo_depth: int = attrs.field(default=sim.DEFAULT_FIFO_DEPTH, validator=_at_least(1), metadata={
        "help": "activation FIFO slots per PE (cycle model)"})
    sram_bytes: int = attrs.field(default=sim.DEFAULT_SRAM_BYTES, validator=_at_least(0), metadata={
        "help": "on-chip weight SRAM; layers past it are read from DRAM (energy model)"})

    def lower(self, graph, data: Optional[Mapping[str, Any]] = None):
        """``data`` is not needed: EIE computes in float with the clustered weights as they are."""
        return lower.lower(graph, pes=self.pes, v_bits=self.v_bits, z_bits=self.z_bits,
                           widen=self.widen)

    def write(self, program, path: str, protect=()) -> None:
        encode.write_program(program, path, protect=protect)

    def read(self, path: str):
        return encode.read_program(path)

    def asm(self, program) -> str:
        return asm.print_program(program)

    def inputs(self, program) -> list[str]:
        return [load.name for load in program.inputs]

    def run(self, program, feeds: Mapping[str, Any]):
        simulator = sim.Simulator(program, fifo_depth=self.fifo_depth, sram_bytes=self.sram_bytes)
        return simulator.run(feeds)

    def program_stats(self, program) -> dict:
        layers = program.layers
        nnz = sum(layer.nnz for layer in layers)
        storage = sum(layer.storage_bytes for layer in layers)
        # "layer_count" the number, "layers" the per-layer figures (one key each)
        return {"instructions": len(program.instructions), "layer_count": len(layers),
                "weights": sum(layer.rows * layer.cols for layer in layers), "nonzeros": nnz,
                "entries": sum(layer.entries for layer in layers), "storage_bytes": storage,
                "bytes_per_nonzero": round(storage / nnz, 4) if nnz else None,
                "file_bytes": len(encode.encode(program)),
                "layers": [_layer_figures(layer) for layer in layers]}

    def format_stats(self, stats) -> str:
        headers = ["instruction", "kind", "issues", "cycles", "LB eff", "reg rd", "reg wr",
                   "SRAM rd B", "SRAM wr B", "DRAM rd B", "DRAM wr B", "energy uJ"]
        rows = [[s.layer, s.kind, s.instructions, s.cycles,
                 f"{s.efficiency:.3f}" if s.kind == "spmv" else "",
                 s.register_reads, s.register_writes, _bytes(s.sram_read_bytes),
                 _bytes(s.sram_write_bytes), _bytes(s.dram_read_bytes), _bytes(s.dram_write_bytes),
                 f"{s.energy_pj / 1e6:.3f}"] for s in stats]
        total = self.stats_dict(stats)["total"]
        rows.append(["total", "", total["instructions"], total["cycles"],
                     f"{total['efficiency']:.3f}", total["register_reads"],
                     total["register_writes"], _bytes(total["sram_read_bytes"]),
                     _bytes(total["sram_write_bytes"]), _bytes(total["dram_read_bytes"]),
                     _bytes(total["dram_write_bytes"]), f"{total['energy_pj'] / 1e6:.3f}"])
        note = ("LB eff: load-balance efficiency, busy PE-cycles / (PEs x cycles); energy from "
                "Horowitz 45 nm costs (pJ): " + ", ".join(f"{k} {v}" for k, v in sim.ENERGY_PJ.items()))
        return format_table(headers, rows, align="ll" + "r" * (len(headers) - 2)) + "\n" + note

    def stats_dict(self, stats) -> dict:
        layers = []
        for s in stats:
            row = attrs.asdict(s)
            row.update(efficiency=s.efficiency, energy_pj=s.energy_pj,
                       bytes_per_nonzero=s.bytes_per_nonzero if s.kind == "spmv" else None)
            layers.append(row)
        numeric = [field.name for field in attrs.fields(sim.LayerStats)
                   if field.name not in ("layer", "kind", "pes")] + ["energy_pj"]
        total = {key: sum(row[key] for row in layers) for key in numeric}
        busy = sum(s.pes * s.cycles for s in stats if s.kind == "spmv")
        total["efficiency"] = total["work"] / busy if busy else 1.0
        return {"layers": layers, "total": total, "energy_pj_per_op": dict(sim.ENERGY_PJ)}


def _layer_figures(layer) -> dict:
    """One SpMV's size figures and how its weights spread over the PEs (its load balance)."""
    real = (layer.rel != layer.filler).astype(np.int64)
    per_pe = np.zeros(layer.pes, dtype=np.int64)
    starts = layer.pe_ptr[:-1]
    nonempty = starts < layer.pe_ptr[1:]
    if real.size:
        per_pe[nonempty] = np.add.reduceat(real, starts[nonempty])
    return {"layer": layer.layer, "rows": layer.rows, "cols": layer.cols, "nonzeros": layer.nnz,
            "entries": layer.entries, "storage_bytes": layer.storage_bytes,
            "v_bits": layer.v_bits, "nonzeros_per_pe": per_pe.tolist()}


def _bytes(value: float) -> str:
    return f"{value:.0f}"

