"""Run an EIE program with NumPy, and model its cycles, memory traffic and energy.

Functional semantics: each :class:`~backends.eie.isa.SpMV` is decoded once per program
(vectorised: pointer differences, cumulative sums of the relative indices) and re-sorted into
a row-major, weight-shared layout: each output row's entries grouped by codebook index. A
matrix-vector product is then one gather of activations (``x[column]``), one ``reduceat``
that sums them per (row, code) segment, and a product with the codebook per segment — no
Python loop over non-zeros, and only ``2**v`` distinct multiplies per row, the weight sharing
of Deep Compression. Segment sums are float32 (a few dozen terms each), the codebook products
and row sums float64, the result float32: outputs match the reference interpreter's float32
matmul to float tolerance, not bit for bit. The arithmetic does not skip zero activations
(a gather over all entries is cheaper in NumPy than building the index of the active
columns); the cycle, memory and energy model below counts what EIE does, which is to
broadcast only the non-zero activations (sec. III-A).

Cycle model, per matvec (one sample, or one pixel of a convolution after :class:`Im2Col`;
sec. IV, "activation queue"): the non-zero activations are broadcast in column order, at most
one per cycle, into a FIFO of ``fifo_depth`` slots in every PE; a broadcast waits until every
PE has a free slot. A PE dequeues a column when done with the previous one and spends one
cycle per stored entry (fillers included) of that column; a column with no entries in a PE
costs it nothing. After the last column, each PE spends one cycle per local row on bias, ReLU
and write-back. Load-balance efficiency is the useful entry-cycles over ``pes x cycles``. The
model is computed from the column lengths and the non-zero activation positions alone,
vectorised over the matvecs of a batch (a loop over broadcast steps, not over non-zeros).

Memory and energy use Horowitz's 45 nm per-operation costs (ISSCC 2014, seeds/004; pJ per 32-bit
access or operation). Per SpMV matvec: per weight used, a float multiply and add, a register
read of its codebook entry and of the accumulator and a register write of the accumulator;
per stored entry read, (v+z) bits of SRAM; per broadcast column, a register read of the
activation and in every PE an SRAM read of its two column pointers; per output row a float add
(bias) and a register write. A layer whose weights no longer fit ``sram_bytes`` (with the
layers before it) is read from DRAM once per matvec. Host steps move activations through DRAM:
:class:`Load` and :class:`Im2Col` read images from DRAM into the activation registers,
:class:`Unpatch`, :class:`Pool` and :class:`Store` read registers or DRAM and write DRAM; they
take no EIE cycles.
"""

from __future__ import annotations

import math
from typing import Mapping

import attrs
import numpy as np

from backends.energy import ENERGY_PJ
from backends.eie.isa import Im2Col, Load, Pool, Program, SpMV, Store, Unpatch, Window
from circ.errors import BackendError, DataError

DEFAULT_FIFO_DEPTH = 8
DEFAULT_SRAM_BYTES = 8 << 20  # the paper's 8 MB of on-chip SRAM (Table II)
MAX_BUFFER_ELEMENTS = 1 << 28  # 1 GiB of float32: a larger intermediate is refused, not allocated
_CHUNK_ELEMENTS = 1 << 22  # gathered entries per step of a batched matvec (16 MiB of float32)
_MODEL_ELEMENTS = 1 << 21  # (matvec, step, PE) cells per step of the cycle model (16 MiB of int64)


@attrs.define
class LayerStats:
    """What one instruction cost over the whole batch (host steps: ``kind`` is not "spmv")."""

    layer: str
    kind: str = "spmv"
    pes: int = 0
    nnz: int = 0
    entries: int = 0
    storage_bytes: int = 0
    instructions: int = 0  # issues: one per matvec (sample or pixel) or per host step
    active_columns: int = 0  # broadcasts
    work: int = 0  # entry-cycles done by all PEs
    cycles: int = 0
    register_reads: int = 0  # 32-bit accesses
    register_writes: int = 0
    sram_read_bytes: float = 0.0
    sram_write_bytes: float = 0.0
    dram_read_bytes: float = 0.0
    dram_write_bytes: float = 0.0
    float_mults: int = 0
    float_adds: int = 0

    @property
    def bytes_per_nonzero(self) -> float:
        return self.storage_bytes / max(self.nnz, 1)

    @property
    def efficiency(self) -> float:
        """Load-balance efficiency: busy PE-cycles over all PE-cycles (1 when idle)."""
        return self.work / (self.pes * self.cycles) if self.cycles else 1.0

    @property
    def energy_pj(self) -> float:
        return ((self.register_reads + self.register_writes) * ENERGY_PJ["register"]
                + (self.sram_read_bytes + self.sram_write_bytes) / 4 * ENERGY_PJ["sram"]
                + (self.dram_read_bytes + self.dram_write_bytes) / 4 * ENERGY_PJ["dram"]
                + self.float_mults * ENERGY_PJ["float_mult"] + self.float_adds * ENERGY_PJ["float_add"])


@attrs.define(eq=False)
class DecodedLayer:
    """An SpMV's weights in the simulator's layouts (built once per program).

    Arithmetic (row-major, like CSR): ``column`` and ``weight`` of every stored weight ordered
    by row, ``row_start`` where each non-empty row begins, ``rows_used`` those rows. Cycle
    model: ``entries_per_column`` (pes, cols) counts stored entries (fillers included),
    ``weights_per_column`` the real ones."""

    column: np.ndarray
    weight: np.ndarray
    row_start: np.ndarray
    rows_used: np.ndarray
    entries_per_column: np.ndarray
    weights_per_column: np.ndarray
    nnz: int = 0
    storage_bytes: int = 0


def decode_entries(ins: SpMV):
    """(row, column, code) of every stored weight of ``ins``, in stream order, and the
    (pes, cols) entry counts; BackendError if the streams are corrupt."""
    pes, cols = ins.pes, ins.cols
    if (ins.col_ptr.shape != (pes, cols + 1) or ins.pe_ptr.shape != (pes + 1,)
            or ins.rel.size != ins.code.size):
        raise BackendError(f"eie: SpMV {ins.layer!r}: inconsistent column pointers")
    counts = np.diff(ins.col_ptr, axis=1)
    if (np.any(counts < 0) or np.any(ins.col_ptr[:, 0] != 0)
            or np.any(np.diff(ins.pe_ptr) != ins.col_ptr[:, -1]) or ins.pe_ptr[0] != 0
            or ins.pe_ptr[-1] != ins.code.size):
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
    code = ins.code[real].astype(np.int64)
    if row.size and (row.max() >= ins.rows or code.max() >= ins.codebook.size):
        raise BackendError(f"eie: SpMV {ins.layer!r}: an entry points past row {ins.rows - 1} "
                           "or past the codebook")
    return row, col[real], code, counts


def decode_layer(ins: SpMV) -> DecodedLayer:
    """The simulator's layouts of ``ins`` (vectorised); BackendError if corrupt."""
    row, col, code, counts = decode_entries(ins)
    real_per_column = np.bincount((row % ins.pes) * ins.cols + col, minlength=ins.pes * ins.cols)
    real_per_column = real_per_column.reshape(ins.pes, ins.cols)
    order = np.lexsort((col, row))
    row, col, code = row[order], col[order], code[order]
    new_row = np.ones(row.size, dtype=bool)
    new_row[1:] = row[1:] != row[:-1]
    row_start = np.flatnonzero(new_row)
    return DecodedLayer(col.astype(np.intp), ins.codebook[code].astype(np.float32), row_start,
                        row[row_start], counts, real_per_column, int(row.size), ins.storage_bytes)


def matvec(layer: DecodedLayer, ins: SpMV, x: np.ndarray) -> np.ndarray:
    """``relu?(W @ row + bias)`` for every row of ``x`` (float32, shape (n, cols)): one
    gather, one multiply, one ``reduceat`` per chunk of rows."""
    out = np.empty((x.shape[0], ins.rows), dtype=np.float32)
    out[:] = ins.bias
    if layer.column.size:
        step = max(1, _CHUNK_ELEMENTS // layer.column.size)
        for begin in range(0, x.shape[0], step):
            # Columns are in range by construction; mode="wrap" skips numpy's bounds check,
            # which otherwise costs a third of the matvec.
            gathered = np.take(x[begin:begin + step], layer.column, axis=1, mode="wrap")
            gathered *= layer.weight
            out[begin:begin + step, layer.rows_used] += np.add.reduceat(gathered, layer.row_start,
                                                                        axis=1)
    if ins.relu:
        np.maximum(out, 0.0, out=out)
    return out


def column_cycles_batch(work: np.ndarray, active: np.ndarray, fifo_depth: int) -> np.ndarray:
    """Cycles to process each matvec's broadcast columns (see the module docstring).

    ``work`` is (pes, cols): entries each PE holds per column; ``active`` is (n, cols) bool,
    the non-zero activations of each of ``n`` matvecs. Returns (n,) int64 cycles, without the
    write-back pass.

    With broadcast times ``b`` known, a PE's finish times are a max-plus scan,
    ``finish_k = C_k + max_{m<=k}(b_m - C_{m-1})`` (``C`` its cumulative work), and the
    broadcasts follow from the starts, ``b_k = max(b_{k-1} + 1, max_pe start_{k-depth})``.
    Both are computed for all steps at once, starting from the no-stall broadcasts ``b_k = k``
    and repeating until ``b`` no longer changes: the iterates rise monotonically to the exact
    sequential answer (after ``t`` rounds at least the first ``(t+1) * depth`` steps are
    exact, and in practice a handful of rounds suffice at depth 8)."""
    count, cols = active.shape
    per_matvec = active.sum(axis=1)
    steps = int(per_matvec.max()) if count else 0
    if steps == 0:
        return np.zeros(count, dtype=np.int64)
    pes = work.shape[0]
    # The k-th broadcast column of each matvec (a zero-work column ``cols`` past its last).
    which, column = np.nonzero(active)
    position = np.arange(which.size) - np.repeat(np.cumsum(per_matvec) - per_matvec, per_matvec)
    order = np.full((count, steps), cols, dtype=np.intp)
    order[which, position] = column
    work_by_column = np.zeros((cols + 1, pes), dtype=np.int64)
    work_by_column[:cols] = work.T
    step_work = work_by_column[order]  # (n, steps, pes)
    done_before = np.cumsum(step_work, axis=1) - step_work  # C_{k-1}
    index = np.arange(steps)
    broadcast = np.broadcast_to(index, (count, steps)).copy()
    latest = np.zeros((count, steps), dtype=np.int64)  # max over PEs of finish - work = start
    pending = np.arange(count)
    floor = np.iinfo(np.int64).min // 4
    while pending.size:
        best = np.maximum.accumulate(broadcast[pending, :, None] - done_before[pending], axis=1)
        start = best + done_before[pending]
        latest[pending] = start.max(axis=2)
        freed = np.full((pending.size, steps), floor, dtype=np.int64)
        if fifo_depth < steps:
            freed[:, fifo_depth:] = latest[pending, :-fifo_depth] - index[fifo_depth:]
        new = index + np.maximum(0, np.maximum.accumulate(freed, axis=1))
        changed = np.any(new != broadcast[pending], axis=1)
        broadcast[pending] = new
        pending = pending[changed]
    last = np.maximum(per_matvec - 1, 0)
    rows = np.arange(count)
    # finish of the last column = its start + its work, per PE
    finish = _finish_of_last(broadcast, done_before, step_work, rows, last)
    cycles = np.maximum(finish, broadcast[rows, last] + 1)
    return np.where(per_matvec > 0, cycles, 0)


def _finish_of_last(broadcast, done_before, step_work, rows, last) -> np.ndarray:
    """(n,): the latest finish over PEs at each matvec's last broadcast step."""
    best = np.maximum.accumulate(broadcast[:, :, None] - done_before, axis=1)[rows, last]
    return (best + done_before[rows, last] + step_work[rows, last]).max(axis=1)


def column_cycles(work: np.ndarray, fifo_depth: int) -> int:
    """Cycles for PEs (rows of ``work``) to process broadcast columns (its columns) in order,
    each PE with a FIFO of ``fifo_depth`` columns; see the module docstring."""
    pes, columns = work.shape
    active = np.ones((1, columns), dtype=bool)
    return int(column_cycles_batch(work, active, fifo_depth)[0])


@attrs.define
class _State:
    """What a run has computed so far."""

    feeds: dict
    buffers: dict = attrs.field(factory=dict)
    outputs: dict = attrs.field(factory=dict)
    stats: list = attrs.field(factory=list)
    on_chip: int = 0  # weight bytes of the layers so far; past sram_bytes they spill to DRAM

    def read(self, name: str, ins) -> np.ndarray:
        if name not in self.buffers:
            raise BackendError(f"eie: {_describe(ins)}: buffer {name!r} was never written")
        return self.buffers[name]


def _describe(ins) -> str:
    if isinstance(ins, SpMV):
        return f"SpMV {ins.layer!r}"
    if isinstance(ins, (Load, Store)):
        return f"{type(ins).__name__} {ins.name!r}"
    return f"{type(ins).__name__} -> {ins.dst!r}"


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

    def run(self, feeds: Mapping[str, np.ndarray], *, model: bool = True) -> tuple[dict, list[LayerStats]]:
        """Outputs (name -> array) and per-instruction statistics for the whole batch
        (``model=False``: outputs only, the statistics left at zero)."""
        state = _State(dict(feeds))
        for ins in self.program.instructions:
            stats = LayerStats(_describe(ins), kind=type(ins).__name__.lower(), instructions=1)
            self._execute[type(ins)](self, ins, state, stats, model)
            state.stats.append(stats)
        return state.outputs, state.stats

    def _load(self, ins: Load, state: _State, stats: LayerStats, model: bool) -> None:
        if ins.name not in state.feeds:
            raise DataError(f"eie: missing input {ins.name!r}")
        array = np.asarray(state.feeds[ins.name], dtype=np.float32)
        if array.shape[1:] != ins.shape or array.ndim < 1:
            expected = ", ".join(["batch"] + [str(d) for d in ins.shape])
            raise DataError(f"eie: input {ins.name!r} must have shape ({expected}), got {array.shape}")
        state.buffers[ins.dst] = array.reshape(array.shape[0], ins.size)
        stats.instructions = array.shape[0]
        stats.dram_read_bytes = 4.0 * array.size
        stats.register_writes = array.size

    def _store(self, ins: Store, state: _State, stats: LayerStats, model: bool) -> None:
        array = state.read(ins.src, ins)
        if math.prod(ins.shape) != array.shape[1]:  # exact: an int64 product could wrap
            raise BackendError(f"eie: Store {ins.name!r}: buffer {ins.src!r} holds {array.shape[1]} "
                               f"values per sample, not shape {ins.shape}")
        state.outputs[ins.name] = array.reshape((array.shape[0],) + ins.shape)
        stats.instructions = array.shape[0]
        stats.register_reads = array.size
        stats.dram_write_bytes = 4.0 * array.size

    def _im2col(self, ins: Im2Col, state: _State, stats: LayerStats, model: bool) -> None:
        images = _images(state.read(ins.src, ins), ins.window, ins)
        window = ins.window
        rows = images.shape[0] * window.positions
        _check_size(rows * window.channels * window.kernel[0] * window.kernel[1], ins)
        padded, index = _window_index(images, window, 0.0)
        patches = padded[:, index]  # (batch, positions, C*kh*kw)
        state.buffers[ins.dst] = patches.reshape(rows, -1)
        stats.instructions = images.shape[0]
        stats.dram_read_bytes = 4.0 * images.size
        stats.register_writes = patches.size

    def _unpatch(self, ins: Unpatch, state: _State, stats: LayerStats, model: bool) -> None:
        rows = state.read(ins.src, ins)
        if ins.positions < 1 or rows.shape[0] % ins.positions:
            raise BackendError(f"eie: {_describe(ins)}: {rows.shape[0]} rows are not whole "
                               f"images of {ins.positions} positions")
        batch = rows.shape[0] // ins.positions
        images = rows.reshape(batch, ins.positions, rows.shape[1]).transpose(0, 2, 1)
        state.buffers[ins.dst] = np.ascontiguousarray(images).reshape(batch, -1)
        stats.instructions = batch
        stats.register_reads = rows.size
        stats.dram_write_bytes = 4.0 * rows.size

    def _pool(self, ins: Pool, state: _State, stats: LayerStats, model: bool) -> None:
        images = _images(state.read(ins.src, ins), ins.window, ins)
        window = ins.window
        _check_size(images.shape[0] * window.channels * window.positions
                    * window.kernel[0] * window.kernel[1], ins)
        fill = -np.inf if ins.kind == "max" else 0.0
        padded, index = _window_index(images, window, fill, per_channel=True)
        windows = padded[:, index]  # (batch, C, positions, kh*kw)
        if ins.kind == "max":
            result = windows.max(axis=-1)
        elif ins.kind == "avg":
            if ins.count_include_pad:
                divisor = window.kernel[0] * window.kernel[1]
            else:
                inside = np.ones((1,) + images.shape[1:], dtype=np.float32)
                divisor = _window_index(inside, window, 0.0, per_channel=True)[0][:, index].sum(axis=-1)
            result = windows.sum(axis=-1, dtype=np.float64) / divisor
        else:
            raise BackendError(f"eie: {_describe(ins)}: unknown pooling kind {ins.kind!r}")
        state.buffers[ins.dst] = result.astype(np.float32).reshape(images.shape[0], -1)
        stats.instructions = images.shape[0]
        stats.dram_read_bytes = 4.0 * images.size
        stats.dram_write_bytes = 4.0 * result.size
        stats.float_adds = windows.size

    def _spmv(self, ins: SpMV, state: _State, stats: LayerStats, model: bool) -> None:
        x = state.read(ins.src, ins)
        if x.shape[1] != ins.cols:
            raise BackendError(f"eie: SpMV {ins.layer!r}: input has {x.shape[1]} columns, "
                               f"layer expects {ins.cols}")
        _check_size(x.shape[0] * ins.rows, ins)
        layer = self._decoded[id(ins)]
        state.on_chip += layer.storage_bytes
        state.buffers[ins.dst] = matvec(layer, ins, x)
        stats.layer, stats.pes, stats.nnz = ins.layer, ins.pes, layer.nnz
        stats.entries, stats.storage_bytes = ins.entries, layer.storage_bytes
        stats.instructions = x.shape[0]
        if model:
            self._model_spmv(ins, layer, x, stats, spilled=state.on_chip > self.sram_bytes)

    def _model_spmv(self, ins: SpMV, layer: DecodedLayer, x: np.ndarray, stats: LayerStats,
                    spilled: bool) -> None:
        """Cycles, traffic and operations of ``ins`` on the rows of ``x`` (module docstring)."""
        matvecs = x.shape[0]
        entries = layer.entries_per_column.sum(axis=0)
        weights = layer.weights_per_column.sum(axis=0)
        local_rows = -(-ins.rows // ins.pes)
        # Only PEs that hold rows can be busy; the others still count in the efficiency.
        busy = layer.entries_per_column[:min(ins.pes, ins.rows)]
        step = max(1, _MODEL_ELEMENTS // max(ins.cols * busy.shape[0], 1))
        for begin in range(0, matvecs, step):
            active = x[begin:begin + step] != 0
            cycles = column_cycles_batch(busy, active, self.fifo_depth)
            stats.cycles += int(cycles.sum()) + local_rows * active.shape[0]
            stats.active_columns += int(active.sum())
            stats.work += int((active @ entries).sum())
            stats.float_mults += int((active @ weights).sum())
        mults, broadcasts = stats.float_mults, stats.active_columns
        stats.float_adds = mults + matvecs * ins.rows
        stats.register_reads = 2 * mults + broadcasts
        stats.register_writes = mults + matvecs * ins.rows
        stats.sram_read_bytes = (stats.work * (ins.v_bits + ins.z_bits) / 8
                                 + broadcasts * ins.pes * 2 * ins.pointer_bits / 8)
        if spilled:
            stats.dram_read_bytes = float(matvecs) * layer.storage_bytes

    _execute = {Load: _load, SpMV: _spmv, Store: _store, Im2Col: _im2col, Unpatch: _unpatch,
                Pool: _pool}


def _check_size(elements: int, ins, what: str = "output") -> None:
    if elements > MAX_BUFFER_ELEMENTS:
        raise BackendError(f"eie: {_describe(ins)}: its {what} would hold {elements} values "
                           f"(limit {MAX_BUFFER_ELEMENTS})")


def _images(buffer: np.ndarray, window: Window, ins) -> np.ndarray:
    problem = window.problem()
    if problem is not None:
        raise BackendError(f"eie: {_describe(ins)}: {problem}")
    if buffer.shape[1] != window.channels * window.height * window.width:
        raise BackendError(f"eie: {_describe(ins)}: input has {buffer.shape[1]} values per sample, "
                           f"not {window.channels}x{window.height}x{window.width}")
    # pads below the dilated window's extent can still be huge (dilation is a u32 of the file)
    top, left, bottom, right = window.pads
    _check_size(buffer.shape[0] * window.channels * (window.height + top + bottom)
                * (window.width + left + right), ins, "padded input")
    return buffer.reshape(buffer.shape[0], window.channels, window.height, window.width)


def _window_index(images: np.ndarray, window: Window, fill: float, per_channel: bool = False):
    """(padded images flattened per sample, gather index): ``padded[:, index]`` is
    (batch, positions, C*kh*kw) windows, or (batch, C, positions, kh*kw) per channel."""
    top, left, bottom, right = window.pads
    padded = np.full((images.shape[0], window.channels, window.height + top + bottom,
                      window.width + left + right), fill, dtype=np.float32)
    padded[:, :, top:top + window.height, left:left + window.width] = images
    kernel_rows = np.arange(window.kernel[0]) * window.dilation[0]
    kernel_cols = np.arange(window.kernel[1]) * window.dilation[1]
    out_rows = np.arange(window.out_height) * window.stride[0]
    out_cols = np.arange(window.out_width) * window.stride[1]
    # (positions, kh*kw) offsets within one channel plane
    rows = out_rows[:, None, None, None] + kernel_rows[None, None, :, None]
    cols = out_cols[None, :, None, None] + kernel_cols[None, None, None, :]
    plane = (rows * padded.shape[3] + cols).reshape(window.positions, -1)
    channel = np.arange(window.channels)[:, None, None] * (padded.shape[2] * padded.shape[3])
    if per_channel:
        index = channel + plane[None]  # (C, positions, kh*kw)
    else:
        index = (channel.transpose(1, 0, 2) + plane[:, None, :]).reshape(window.positions, -1)
    return padded.reshape(images.shape[0], -1), index


def run(program: Program, feeds: Mapping[str, np.ndarray], **options):
    """Run ``program`` on ``feeds``: (outputs, per-instruction stats)."""
    return Simulator(program, **options).run(feeds)
