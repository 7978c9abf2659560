"""Codecs for compressed weights: canonical Huffman coding (:mod:`~circ.codecs.huffman`), bit
packing (:mod:`~circ.codecs.bits`), relative-index coding of sparse positions
(:mod:`~circ.codecs.sparse`), and the coded tensor that holds a layer's bitstreams in the IR
(:mod:`~circ.codecs.coded`). The ``.circ`` container (:mod:`circ.container`) stores them."""

from circ.codecs.coded import Coded

__all__ = ["Coded"]
