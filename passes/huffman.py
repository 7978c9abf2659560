"""huffman: entropy-code layer weights (Han et al., Deep Compression, ICLR 2016, sec. 4)."""

from __future__ import annotations

from typing import Optional

import attrs

from circ.codecs import huffman as huffman_codec
from circ.codecs import sparse
from circ.codecs.coded import Coded
from circ.graph import Graph
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.progress import track
from circ.tensors import Clustered, Dense, Quantized
from circ.weights import WeightRef, override_for, parse_layer_values, select_layers

# The paper's relative-index widths (Deep Compression, sec. 4 and Table 2): 8 bits between
# kept weights of conv layers, 5 bits for fully connected layers.
DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}


def _index_bits_value(text: str) -> int:
    value = int(text)
    if not 1 <= value <= sparse.MAX_INDEX_BITS:
        raise ValueError(text)
    return value


def _check_index_bits(instance, attribute, value):
    if value is not None and not 1 <= value <= sparse.MAX_INDEX_BITS:
        raise ValueError(f"option 'index_bits' must be 1..{sparse.MAX_INDEX_BITS} or none, got {value}")


def _check_layers(instance, attribute, value):
    parse_layer_values(value, "layers", "huffman", _index_bits_value)


def _check_max_length(instance, attribute, value):
    if not 1 <= value <= huffman_codec.MAX_CODE_LENGTH:
        raise ValueError(f"option 'max_length' must be 1..{huffman_codec.MAX_CODE_LENGTH}, got {value}")


@register_pass
class Huffman(Pass):
    """Entropy coding of layer weights: canonical Huffman codes over cluster indices or
    quantized integers, and relative-index coding of the pruned positions.

    Per layer (Conv/ConvTranspose/Gemm/MatMul weights chosen by ``scope``):

    1. A :class:`~circ.tensors.Clustered` or :class:`~circ.tensors.Quantized` weight becomes a
       :class:`~circ.codecs.coded.Coded` tensor. When it is pruned, the kept positions are
       stored as gaps of ``index_bits`` bits with filler entries for longer gaps
       (:mod:`circ.codecs.sparse`), and that gap stream is Huffman-coded; the indices or
       integers of the kept weights are Huffman-coded too. Unpruned: every element's symbol
       is coded and no positions are stored.
    2. A pruned :class:`~circ.tensors.Dense` weight (with a mask) keeps its kept values raw
       and codes their positions the same way, when that is smaller than the raw array
       (``dense=false`` leaves it alone).
    3. An unpruned Dense weight is left raw (declined with the reason).

    Exact: only the storage changes; the decoded weights are bit-identical and the graph runs
    as before (a coded tensor decodes once and caches the array). Code lengths are limited to
    ``max_length`` bits. ``index_bits=none`` (default) is 8 for conv and 5 for fc layers, as in
    the paper; ``layers=PATTERN:BITS;...`` overrides it per layer (first match wins), the same
    syntax as prune's and cluster's ``layers``. ``details["layers"]`` reports per layer the
    weights, kept weights, bits per kept weight of the weight and index streams, and bytes.
    """

    name = "huffman"
    exact = True

    index_bits: Optional[int] = attrs.field(default=None, validator=_check_index_bits, metadata={
        "help": f"bits per relative-index entry, 1..{sparse.MAX_INDEX_BITS}; "
                "none: 8 for conv, 5 for fc (the paper's choice)"})
    scope: str = attrs.field(default="all", metadata={
        "help": "layers to code: all, conv, fc, or a name pattern"})
    layers: str = attrs.field(default="", validator=_check_layers, metadata={
        "help": "per-layer index bits: PATTERN:BITS;... e.g. fc1:4;conv*:6 (first match wins)"})
    dense: bool = attrs.field(default=True, metadata={
        "help": "also code the positions of pruned float (Dense) layers, values kept raw"})
    max_length: int = attrs.field(default=huffman_codec.MAX_CODE_LENGTH, validator=_check_max_length,
                                  metadata={"help": "longest Huffman code, in bits"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        refs = select_layers(graph, self.scope, self.overrides(), ctx)
        if not refs:
            return PassResult(False)
        report = {}
        for ref in track(refs, desc="huffman", unit="layer"):
            coded = self.code_weight(ref)
            if isinstance(coded, str):
                ctx.decline(ref.node, coded)
                continue
            graph.set_const(ref.value, coded)
            report[ref.name] = layer_report(coded)
        return PassResult(modified=bool(report), preserved={STRUCTURE}, details={"layers": report})

    def overrides(self) -> list[tuple[str, int]]:
        return parse_layer_values(self.layers, "layers", self.name, _index_bits_value)

    def index_bits_for(self, ref: WeightRef) -> int:
        default = self.index_bits if self.index_bits is not None else DEFAULT_INDEX_BITS[ref.kind]
        return override_for(ref, self.overrides(), default)

    def code_weight(self, ref: WeightRef):
        """The Coded tensor for ``ref``'s weight, or the reason (str) it is left alone."""
        tensor = ref.value.const
        if isinstance(tensor, Coded):
            return "already coded"
        pruned = tensor.kept is not None
        index_bits = self.index_bits_for(ref) if pruned else 0
        if isinstance(tensor, (Clustered, Quantized)):
            return Coded.encode(tensor, index_bits, self.max_length)
        if not isinstance(tensor, Dense):
            return f"{type(tensor).__name__} weights are not coded"
        if not pruned:
            return "unpruned float weights are stored raw (nothing to code)"
        if not self.dense:
            return "pruned float weights are left raw (dense=false)"
        coded = Coded.encode(tensor, index_bits, self.max_length)
        if coded.storage_bytes >= tensor.array.nbytes:
            return (f"coding the positions ({coded.storage_bytes} bytes) would not beat the raw "
                    f"array ({tensor.array.nbytes} bytes)")
        return coded


def layer_report(coded: Coded) -> dict:
    """Per-layer figures: weights, kept, bits per kept weight (weights, index), bytes."""
    kept = max(coded.kept_count, 1)
    return {"weights": coded.size, "kept": coded.kept_count,
            "weight_bits": round(coded.weight_bits / kept, 3),
            "index_bits": round(coded.position_bits / kept, 3),
            "bytes": coded.storage_bytes}
