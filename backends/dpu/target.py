"""``DPUTarget``: the DPU backend as circ-opt's ``--target=dpu(...)`` and circ-run's ``.dpu``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping, Optional

import attrs

from backends import Target
from backends.dpu import asm, encode, lower, sim
from circ.printer import format_table


def _positive(instance, attribute, value):
    if value < 1:
        raise ValueError(f"option {attribute.name!r} must be at least 1, got {value}")


@attrs.define
class DPUTarget(Target):
    """DeePhi-style int8 CNN engine; options are the hardware and the format choices."""

    name: ClassVar[str] = "dpu"
    extension: ClassVar[str] = ".dpu"

    mac_rows: int = attrs.field(default=16, validator=_positive, metadata={
        "help": "MAC array rows: input channels multiplied per cycle"})
    mac_cols: int = attrs.field(default=16, validator=_positive, metadata={
        "help": "MAC array columns: output channels per cycle"})
    ibuf_bytes: int = attrs.field(default=32 << 10, validator=_positive, metadata={
        "help": "input buffer bytes (per half of the double buffer)"})
    wbuf_bytes: int = attrs.field(default=32 << 10, validator=_positive, metadata={
        "help": "weight buffer bytes"})
    obuf_bytes: int = attrs.field(default=16 << 10, validator=_positive, metadata={
        "help": "output buffer bytes"})
    dram_bytes_per_cycle: int = attrs.field(default=8, validator=_positive, metadata={
        "help": "DRAM bandwidth in bytes per cycle"})
    weight_per_channel: bool = attrs.field(default=False, metadata={
        "help": "float weights quantized with one exponent per output channel (default: per layer)"})
    calibration: Literal["minmax", "percentile", "mse", "entropy"] = attrs.field(
        default="minmax", metadata={"help": "how --data chooses activation exponents"})

    @property
    def config(self) -> sim.Config:
        return sim.Config(self.mac_rows, self.mac_cols, self.ibuf_bytes, self.wbuf_bytes,
                          self.obuf_bytes, self.dram_bytes_per_cycle)

    def lower(self, graph, data: Optional[Mapping[str, Any]] = None):
        return lower.lower(graph, self.config, calibration=data, method=self.calibration,
                           weight_per_channel=self.weight_per_channel)

    def write(self, program, path: str) -> None:
        encode.write_program(program, path)

    def read(self, path: str):
        return encode.read_program(path)

    def asm(self, program) -> str:
        return asm.print_program(program)

    def inputs(self, program) -> list[str]:
        return [name for name, _ in program.inputs]

    def run(self, program, feeds: Mapping[str, Any]):
        return sim.run(program, feeds, self.config)

    def program_stats(self, program) -> dict:
        weights = sum(layer.weights.size + 4 * layer.bias.size + 4 * layer.w_exp.size
                      for layer in program.layers.values())
        return {"layer_count": len(program.layers), "instructions": len(program.instructions),
                "tensors": len(program.tensors), "weight_bytes": int(weights)}

    def format_stats(self, stats) -> str:
        headers = ["layer", "kind", "instr", "MACs", "cycles", "compute", "transfer", "reg B",
                   "SRAM rd B", "SRAM wr B", "DRAM rd B", "DRAM wr B", "energy uJ"]
        rows = [[s.layer, s.kind, s.instructions, s.macs, s.cycles, s.compute_cycles,
                 s.transfer_cycles, s.register_bytes, s.sram_read, s.sram_written, s.dram_read,
                 s.dram_written, f"{s.energy_pj / 1e6:.3f}"] for s in stats]
        total = self.stats_dict(stats)["total"]
        rows.append(["total", "", total["instructions"], total["macs"], total["cycles"],
                     total["compute_cycles"], total["transfer_cycles"], total["register_bytes"],
                     total["sram_read"], total["sram_written"], total["dram_read"],
                     total["dram_written"], f"{total['energy_pj'] / 1e6:.3f}"])
        return format_table(headers, rows, align="ll" + "r" * (len(headers) - 2))

    def stats_dict(self, stats) -> dict:
        layers = []
        for s in stats:
            row = attrs.asdict(s)
            row.update(cycles=s.cycles, energy_pj=s.energy_pj)
            layers.append(row)
        numeric = [field.name for field in attrs.fields(sim.LayerStats)
                   if field.name not in ("layer", "kind")] + ["cycles", "energy_pj"]
        total = {key: sum(row[key] for row in layers) for key in numeric}
        return {"layers": layers, "total": total, "energy_pj_per_op": dict(sim.ENERGY_PJ)}
