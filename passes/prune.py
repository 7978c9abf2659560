"""prune: magnitude pruning of Conv/ConvTranspose/Gemm/MatMul weights (Han et al., 2015/2016).

Approximate. The pruned positions become exact zeros and the mask (True = kept) is stored in
the IR, so every later pass — and fine-tuning — keeps them at zero.
"""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np

from circ.errors import PipelineError
from circ.graph import Graph
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.tensors import Clustered, Dense, Quantized, Tensor
from circ.weights import WeightRef, in_scope, parse_layer_values, select_layers

DEFAULT_SPARSITY = 0.5


def _sparsity_value(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def _check_fraction(name: str):
    def check(instance, attribute, value):
        if value is not None and not 0.0 <= value <= 1.0:
            raise PipelineError(f"option {name!r} of pass 'prune' must be in [0, 1], got {value}")

    return check


@register_pass
class Prune(Pass):
    """Unstructured magnitude pruning of Conv, ConvTranspose, Gemm and MatMul weights.

    Modes (one per run):

    1. ``sparsity=s``: in every selected layer exactly ``round(s * size)`` weights become
       zero, the smallest in magnitude; ties are broken by position (the earlier element in
       C order is pruned first), so the count is exact and the result deterministic.
    2. ``quality=q`` (Han et al.: threshold = quality x standard deviation of the layer's
       weights): weights with ``|w| < q * std`` are pruned, std taken over the layer's kept
       (not yet pruned) weights. ``quality`` and ``sparsity`` exclude each other; with
       neither, ``sparsity=0.5``.
    3. ``global=true``: magnitudes are ranked across all selected layers together: one
       count ``round(s * total)`` (or one threshold ``q * std`` of all kept weights pooled).
    4. ``nm=N:M``: N:M structured sparsity — in every group of M consecutive weights along
       the reduction (input-channel) axis at most N are kept, the largest (ties: the earlier
       one kept). Layers whose reduction size per group is not a multiple of M are declined.
       ``nm`` sets the sparsity itself, so it excludes ``sparsity``, ``quality``, ``global``
       and ``layers``.

    ``layers=pattern:sparsity;...`` overrides the sparsity of the selected layers a pattern
    matches (the first matching pattern wins; ``0`` leaves a layer dense). Overridden layers
    are pruned to their own exact sparsity and stay out of the global ranking and the
    quality rule.

    Pruning composes: weights pruned before stay pruned (they count towards the requested
    zeros and rank below every kept weight), so a second prune never revives a weight.
    Dense weights get a mask; Clustered weights get index -1; Quantized weights get a mask
    and their zero point at pruned positions. Biases and BatchNorm are not touched.
    ``details["layers"]`` holds the achieved sparsity (pruned fraction) per layer.
    """

    name = "prune"
    exact = False

    sparsity: Optional[float] = attrs.field(
        default=None, validator=_check_fraction("sparsity"),
        metadata={"help": f"fraction of weights set to zero per layer (default {DEFAULT_SPARSITY} "
                          "when quality is not given)"})
    quality: Optional[float] = attrs.field(
        default=None, metadata={"help": "Han's rule: prune |w| < quality x std of the layer's weights "
                                        "(excludes sparsity)"})
    scope: str = attrs.field(default="all", metadata={"help": "layers to prune: all, conv, fc or a name pattern"})
    global_: bool = attrs.field(
        default=False, metadata={"help": "rank magnitudes across all selected layers together"})
    nm: Optional[tuple[int, int]] = attrs.field(
        default=None, metadata={"help": "N:M structured sparsity along the input channels, e.g. 2:4"})
    layers: str = attrs.field(
        default="", metadata={"help": "per-layer sparsity overrides: pattern:sparsity;pattern:sparsity "
                                      "(first match wins)"})

    def __attrs_post_init__(self):
        if self.sparsity is not None and self.quality is not None:
            raise PipelineError("pass 'prune': give sparsity or quality, not both")
        if self.quality is not None and not self.quality >= 0:
            raise PipelineError(f"option 'quality' of pass 'prune' must be >= 0, got {self.quality}")
        if self.nm is not None:
            n, m = self.nm
            if not 1 <= n < m:
                raise PipelineError(f"option 'nm' of pass 'prune' needs 1 <= N < M, got {n}:{m}")
            given = [name for name, value in (("sparsity", self.sparsity), ("quality", self.quality),
                                              ("global", self.global_), ("layers", self.layers)) if value]
            if given:
                raise PipelineError(f"pass 'prune': nm sets the sparsity itself; drop {', '.join(given)}")
        self._overrides = parse_layer_values(self.layers, "layers", self.name, _sparsity_value)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        refs = select_layers(graph, self.scope, self._overrides, ctx)
        if not refs:
            return PassResult(False)
        refs = [ref for ref in refs if _supported(ref, ctx)]

        if self.nm is not None:
            keeps = {id(ref): _nm_keep(ref, *self.nm, ctx) for ref in refs}
        else:
            keeps = self._magnitude_keeps(refs)

        modified = False
        details: dict = {"layers": {}}
        pruned_total = size_total = 0
        for ref in refs:
            keep = keeps.get(id(ref))
            if keep is None:
                continue
            old = ref.value.const
            if old.kept is None:
                changed = not keep.all()
            else:
                keep &= old.kept  # a second prune never revives a weight
                changed = not np.array_equal(keep, old.kept)
            if changed:
                graph.set_const(ref.value, _with_mask(old, keep))
                modified = True
            pruned = int(keep.size - np.count_nonzero(keep))
            details["layers"][ref.name] = pruned / max(1, keep.size)
            pruned_total += pruned
            size_total += keep.size
        details["sparsity"] = pruned_total / max(1, size_total)
        return PassResult(modified, preserved={STRUCTURE}, details=details)

    def _magnitude_keeps(self, refs: list[WeightRef]) -> dict:
        """Keep-masks of the sparsity, quality and global modes, by ``id(ref)``."""
        keeps = {}
        pooled = []
        for ref in refs:
            override = next((value for pattern, value in self._overrides if in_scope(ref, pattern)), None)
            if override is not None:
                keeps[id(ref)] = _keep_count(_magnitude(ref.value.const), override)
            elif self.global_:
                pooled.append(ref)
            elif self.quality is not None:
                threshold = self.quality * _kept_std([ref.value.const])
                keeps[id(ref)] = _magnitude(ref.value.const) >= threshold
            else:
                keeps[id(ref)] = _keep_count(_magnitude(ref.value.const), self._target())
        if pooled:
            # One flat buffer filled layer by layer: peak memory stays near one copy of the weights.
            sizes = [ref.value.const.size for ref in pooled]
            dtype = np.result_type(*(_magnitude_dtype(ref.value.const) for ref in pooled))
            flat = np.empty(sum(sizes), dtype)
            starts = np.concatenate([[0], np.cumsum(sizes)])
            for ref, start, stop in zip(pooled, starts[:-1], starts[1:]):
                flat[start:stop] = _magnitude(ref.value.const).reshape(-1)
            if self.quality is not None:
                keep = flat >= self.quality * _kept_std([ref.value.const for ref in pooled])
            else:
                keep = _keep_count(flat, self._target())
            del flat
            for ref, start, stop in zip(pooled, starts[:-1], starts[1:]):
                keeps[id(ref)] = keep[start:stop].reshape(ref.value.const.shape)
        return keeps

    def _target(self) -> float:
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity


# ---------------------------------------------------------------------- one layer


def prune_layer(ref: WeightRef, sparsity: float, ctx: PassContext) -> Optional[Tensor]:
    """``ref``'s weight pruned to ``sparsity`` as mode 1 prunes one layer (the smallest
    magnitudes, ties by position, weights pruned before stay pruned), without editing the
    graph; None (with a decline) when its representation cannot be pruned. For analyses and
    schedules that try sparsities layer by layer (sensitivity, auto_prune)."""
    if not _supported(ref, ctx):
        return None
    old = ref.value.const
    keep = _keep_count(_magnitude(old), sparsity)
    if old.kept is not None:
        keep &= old.kept
    return _with_mask(old, keep)


# ---------------------------------------------------------------------- masks


def _supported(ref: WeightRef, ctx: PassContext) -> bool:
    tensor = ref.value.const
    if isinstance(tensor, Clustered) and tensor.indices.dtype.kind != "i":
        ctx.decline(ref.node, "clustered indices are unsigned: no -1 to mark a pruned weight")
        return False
    if not isinstance(tensor, (Dense, Clustered, Quantized)):
        ctx.decline(ref.node, f"weights stored as {type(tensor).__name__} cannot be pruned")
        return False
    return True


def _magnitude_dtype(tensor: Tensor) -> np.dtype:
    return np.result_type(tensor.dtype, np.float32)  # float16 ranks in float32; float64 stays


def _magnitude(tensor: Tensor) -> np.ndarray:
    """|w| (float32, or float64 for float64 weights), with -1 at already pruned positions so
    they rank below every weight."""
    magnitude = np.abs(tensor.to_numpy()).astype(_magnitude_dtype(tensor), copy=False)
    if tensor.kept is not None:
        magnitude[~tensor.kept] = -1.0
    return magnitude


def smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` smallest of ``values`` (any shape); among equal values the
    earlier in C order is taken first. Linear time (a partition, not a sort)."""
    flat = values.reshape(-1)
    chosen = np.zeros(flat.size, dtype=bool)
    count = min(max(count, 0), flat.size)
    if count == 0:
        return chosen.reshape(values.shape)
    kth = np.partition(flat, count - 1)[count - 1]
    chosen |= flat < kth
    ties = np.flatnonzero(flat == kth)[: count - int(np.count_nonzero(chosen))]
    chosen[ties] = True
    return chosen.reshape(values.shape)


def _keep_count(magnitude: np.ndarray, sparsity: float) -> np.ndarray:
    # Python's round() is banker's rounding; round half up so 0.5 of 3 weights prunes 2.
    count = int(np.floor(sparsity * magnitude.size + 0.5))
    return ~smallest(magnitude, count)


def _kept_std(tensors: list[Tensor]) -> float:
    """Standard deviation of the kept weights of ``tensors`` pooled (Han's quality rule;
    pruned magnitudes are -1, so any threshold >= 0 keeps them pruned)."""
    count, total, squares = 0, 0.0, 0.0
    for tensor in tensors:
        values = tensor.to_numpy().astype(np.float64)
        if tensor.kept is not None:
            values = values[tensor.kept]
        count += values.size
        total += float(values.sum())
        squares += float(np.square(values).sum())
    if count == 0:
        return 0.0
    mean = total / count
    return float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def reduction_axis(ref: WeightRef) -> int:
    """The axis of the weight array that a layer sums over (its input channels)."""
    op, rank = ref.node.op, ref.value.rank
    if op == "Conv":
        return 1  # (M, C/group, k...)
    if op == "ConvTranspose":
        return 0  # (C, M/group, k...)
    if op == "Gemm":
        return 1 - ref.out_axis
    return rank - 2  # MatMul (..., K, N)


def _nm_keep(ref: WeightRef, n: int, m: int, ctx: PassContext) -> Optional[np.ndarray]:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the reduction axis."""
    magnitude = _magnitude(ref.value.const)
    axis = reduction_axis(ref)
    length = magnitude.shape[axis]
    per_group = length // int(ref.node.attrs.get("group", 1)) if ref.node.op == "ConvTranspose" else length
    if per_group % m:
        ctx.decline(ref.node, f"{n}:{m} sparsity needs the reduction size ({per_group} input channels) "
                              f"to be a multiple of {m}")
        return None
    moved = np.moveaxis(magnitude, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (length // m, m))
    # A stable sort of -|w|: the largest first, equal ones in position order.
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep &= groups >= 0  # already pruned positions stay pruned
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def _with_mask(tensor: Tensor, keep: np.ndarray) -> Tensor:
    """``tensor`` with the positions where ``keep`` is False pruned (exact zeros)."""
    if isinstance(tensor, Dense):
        array = np.where(keep, tensor.array, np.zeros((), tensor.array.dtype))
        return Dense(array, keep)
    if isinstance(tensor, Clustered):
        indices = np.where(keep, tensor.indices, np.array(-1, tensor.indices.dtype))
        return Clustered(tensor.codebook, indices)
    zero_point = np.asarray(tensor.zero_point).astype(tensor.q.dtype)
    if tensor.axis is not None and zero_point.ndim:
        shape = [1] * tensor.q.ndim
        shape[tensor.axis] = -1
        zero_point = zero_point.reshape(shape)
    q = np.where(keep, tensor.q, zero_point)
    return Quantized(q, tensor.scale, tensor.zero_point, tensor.axis, tensor.num_bits,
                     tensor.float_dtype, keep)
