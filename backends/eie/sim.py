"""Run an EIE program with NumPy, and model its cycles and energy.

Functional semantics: each :class:`~backends.eie.isa.SpMV` is decoded once into global
(row, column, weight) triples (vectorised: pointer differences, cumulative sums of the
relative indices), then for each sample only the columns whose activation is non-zero are
gathered and summed per row with ``np.bincount`` — EIE's activation sparsity (sec. III-A).
Sums are accumulated in float64 and rounded to float32, so results match the reference
interpreter's float32 matmul to float tolerance, not bit for bit.

Cycle model, per layer and sample (sec. IV, "activation queue"): the non-zero activations
are broadcast in column order, at most one per cycle, into a FIFO of ``fifo_depth`` slots in
every PE; a broadcast waits until every PE has a free slot. A PE dequeues a column when done
with the previous one and spends one cycle per stored entry (fillers included) of that
column; a column with no entries in a PE costs it nothing. After the last column, each PE
spends one cycle per local row on bias, ReLU and write-back. Load-balance efficiency is the
useful entry-cycles over ``pes x cycles``.

Energy uses Horowitz's 45 nm per-operation costs (ISSCC 2014, seeds/004): per stored entry
one SRAM read of (v+z)/32 of a word, one register-file codebook read, one float multiply and
add, and an accumulator read and write in the register file; per broadcast column one
register read of the activation and one SRAM read of the two column pointers in every PE;
per output row one float add (bias) and a register write. Weights beyond ``sram_bytes`` are
read from DRAM once per sample.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import numpy as np

from backends.eie.isa import Load, Program, SpMV, Store
from circ.errors import BackendError, DataError

# Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V), pJ per operation on 32 bits.
ENERGY_PJ = {
    "int_add": 0.1, "float_add": 0.9, "register": 1.0, "int_mult": 3.1, "float_mult": 3.7,
    "sram": 5.0, "dram": 640.0,
}
DEFAULT_FIFO_DEPTH = 8
DEFAULT_SRAM_BYTES = 8 << 20  # the paper's 8 MB of on-chip SRAM (Table II)


@attrs.define
class LayerStats:
    """What one layer cost over the whole batch."""

    layer: str
    pes: int
    nnz: int
    entries: int
    storage_bytes: int
    active_columns: int = 0
    work: int = 0  # entry-cycles done by all PEs
    cycles: int = 0
    register_accesses: int = 0
    sram_words: float = 0.0
    dram_words: float = 0.0
    float_mults: int = 0
    float_adds: int = 0

    @property
    def bytes_per_nonzero(self) -> float:
        return self.storage_bytes / max(self.nnz, 1)

    @property
    def efficiency(self) -> float:
        """Load-balance efficiency: busy PE-cycles over all PE-cycles."""
        return self.work / (self.pes * self.cycles) if self.cycles else 1.0

    @property
    def energy_pj(self) -> float:
        return (self.register_accesses * ENERGY_PJ["register"] + self.sram_words * ENERGY_PJ["sram"]
                + self.dram_words * ENERGY_PJ["dram"] + self.float_mults * ENERGY_PJ["float_mult"]
                + self.float_adds * ENERGY_PJ["float_add"])


@attrs.define(eq=False)
class _Decoded:
    """A layer's weights as global CSC: entries sorted by column."""

    row: np.ndarray  # int32: cheaper to gather than int64
    weight: np.ndarray
    col_start: np.ndarray  # (cols + 1,)
    entries_per_column: np.ndarray  # (pes, cols), fillers included

    @property
    def col_length(self) -> np.ndarray:
        return np.diff(self.col_start)


def decode_layer(ins: SpMV) -> _Decoded:
    """Decode the interleaved CSC streams of ``ins`` (vectorised); BackendError if corrupt."""
    pes, cols = ins.pes, ins.cols
    counts = np.diff(ins.col_ptr, axis=1)
    if (ins.col_ptr.shape != (pes, cols + 1) or ins.pe_ptr.shape != (pes + 1,)
            or np.any(counts < 0) or np.any(ins.col_ptr[:, 0] != 0)
            or np.any(np.diff(ins.pe_ptr) != ins.col_ptr[:, -1]) or ins.pe_ptr[0] != 0
            or ins.pe_ptr[-1] != ins.code.size or ins.rel.size != ins.code.size):
        raise BackendError(f"eie: SpMV {ins.layer!r}: inconsistent column pointers")
    filler = ins.filler
    flat_counts = counts.ravel()
    step = np.where(ins.rel == filler, filler, ins.rel.astype(np.int64) + 1)
    running = np.cumsum(step)
    group_end = np.cumsum(flat_counts)
    before_group = np.concatenate(([0], running))[group_end - flat_counts]
    local = running - np.repeat(before_group, flat_counts) - 1
    pe = np.repeat(np.repeat(np.arange(pes), cols), flat_counts)
    col = np.repeat(np.tile(np.arange(cols), pes), flat_counts)
    real = ins.rel != filler
    row = local[real] * pes + pe[real]
    col = col[real]
    code = ins.code[real]
    if row.size and (row.max() >= ins.rows or code.max() >= ins.codebook.size):
        raise BackendError(f"eie: SpMV {ins.layer!r}: an entry points past row {ins.rows - 1} "
                           "or past the codebook")
    order = np.argsort(col, kind="stable")
    col_start = np.searchsorted(col[order], np.arange(cols + 1))
    weight = ins.codebook.astype(np.float64)[code[order]]
    return _Decoded(row[order].astype(np.int32), weight, col_start, counts)


@attrs.define
class _State:
    """What a run has computed so far."""

    feeds: dict
    buffers: dict = attrs.field(factory=dict)
    outputs: dict = attrs.field(factory=dict)
    stats: list = attrs.field(factory=list)
    on_chip: int = 0  # weight bytes of the layers so far; past sram_bytes they spill to DRAM


class Simulator:
    """Runs a program on batches; keeps decoded layers between calls."""

    def __init__(self, program: Program, *, fifo_depth: int = DEFAULT_FIFO_DEPTH,
                 sram_bytes: int = DEFAULT_SRAM_BYTES):
        if fifo_depth < 1:
            raise BackendError(f"eie: option 'fifo_depth' must be at least 1, got {fifo_depth}")
        self.program = program
        self.fifo_depth = fifo_depth
        self.sram_bytes = sram_bytes
        self._decoded = {id(ins): decode_layer(ins) for ins in program.layers}

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict, list[LayerStats]]:
        """Outputs (name -> array) and per-layer statistics for the whole batch."""
        state = _State(dict(feeds))
        for ins in self.program.instructions:
            self._execute[type(ins)](self, ins, state)
        return state.outputs, state.stats

    def _load(self, ins: Load, state: "_State") -> None:
        state.buffers[ins.dst] = self._feed(ins, state.feeds)

    def _run_spmv(self, ins: SpMV, state: "_State") -> None:
        if ins.src not in state.buffers:
            raise BackendError(f"eie: SpMV {ins.layer!r}: buffer {ins.src!r} was never written")
        state.on_chip += ins.storage_bytes
        state.buffers[ins.dst], layer_stats = self._spmv(ins, state.buffers[ins.src], state.on_chip)
        state.stats.append(layer_stats)

    def _store(self, ins: Store, state: "_State") -> None:
        if ins.src not in state.buffers:
            raise BackendError(f"eie: Store {ins.name!r}: buffer {ins.src!r} was never written")
        state.outputs[ins.name] = state.buffers[ins.src]

    _execute = {Load: _load, SpMV: _run_spmv, Store: _store}

    @staticmethod
    def _feed(ins: Load, feeds) -> np.ndarray:
        if ins.name not in feeds:
            raise DataError(f"eie: missing input {ins.name!r}")
        array = np.asarray(feeds[ins.name], dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != ins.size:
            raise DataError(f"eie: input {ins.name!r} must have shape (batch, {ins.size}), "
                            f"got {array.shape}")
        return array

    def _spmv(self, ins: SpMV, x: np.ndarray, on_chip: int):
        if x.shape[1] != ins.cols:
            raise BackendError(f"eie: SpMV {ins.layer!r}: input has {x.shape[1]} columns, "
                               f"layer expects {ins.cols}")
        decoded = self._decoded[id(ins)]
        col_length = decoded.col_length
        out = np.empty((x.shape[0], ins.rows), dtype=np.float32)
        stats = LayerStats(ins.layer, ins.pes, ins.nnz, ins.entries, ins.storage_bytes)
        local_rows = -(-ins.rows // ins.pes)
        for sample, activations in enumerate(x):
            active = np.flatnonzero(activations)
            lengths = col_length[active]
            picked = _gather_columns(decoded.col_start, active, lengths)
            broadcast = np.repeat(activations[active].astype(np.float64), lengths)
            products = decoded.weight[picked] * broadcast
            total = np.bincount(decoded.row[picked], weights=products, minlength=ins.rows)
            # bincount returns int64 when nothing is picked
            total = total.astype(np.float64, copy=False) + ins.bias
            if ins.relu:
                np.maximum(total, 0.0, out=total)
            out[sample] = total

            work = decoded.entries_per_column[:, active]
            stats.cycles += column_cycles(work, self.fifo_depth) + local_rows
            stats.work += int(work.sum())
            stats.active_columns += active.size
            entries = int(work.sum())
            mults = int(picked.size)
            stats.float_mults += mults
            stats.float_adds += mults + ins.rows
            # codebook read + accumulator read/write per weight; activation read per column;
            # a register write per output row.
            stats.register_accesses += 3 * mults + active.size + ins.rows
            stats.sram_words += entries * (ins.v_bits + ins.z_bits) / 32 + active.size * ins.pes
            if on_chip > self.sram_bytes:
                stats.dram_words += ins.storage_bytes / 4
        return out, stats


def _gather_columns(col_start: np.ndarray, columns: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of every entry in ``columns`` (concatenated ranges, without a Python loop)."""
    offsets = np.cumsum(lengths) - lengths
    picked = np.repeat(col_start[columns] - offsets, lengths)
    picked += np.arange(picked.size)
    return picked


def column_cycles(work: np.ndarray, fifo_depth: int) -> int:
    """Cycles for PEs (rows of ``work``) to process broadcast columns (its columns) in order,
    each PE with a FIFO of ``fifo_depth`` columns; see the module docstring."""
    pes, columns = work.shape
    if columns == 0:
        return 0
    starts = np.empty((columns, pes), dtype=np.int64)
    finish = np.zeros(pes, dtype=np.int64)
    broadcast = -1
    for k in range(columns):
        broadcast += 1
        if k >= fifo_depth:
            # the slot this column needs was freed when column k - depth was dequeued
            broadcast = max(broadcast, int(starts[k - fifo_depth].max()))
        start = np.maximum(finish, broadcast)
        starts[k] = start
        finish = start + work[:, k]
    return int(max(finish.max(), broadcast + 1))


def run(program: Program, feeds: Mapping[str, np.ndarray], **options):
    """Run ``program`` on ``feeds``: (outputs, per-layer stats)."""
    return Simulator(program, **options).run(feeds)
