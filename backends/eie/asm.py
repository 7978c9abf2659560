"""The EIE assembly: a text form of a program that prints and parses back to the same program.

Format (one statement per line, ``#`` starts a comment)::

    .eie 2
    load x -> a0 shape=1x28x28
    im2col a0 -> p1 image=1x28x28 kernel=5x5 stride=1x1 pads=2x2x2x2 dilation=1x1
    spmv fc0 a0 -> a1 rows=300 cols=784 pes=64 v=4 z=4 relu=1
      codebook -0.21 -0.13 ...              # 2**v floats
      bias 0.01 ...                         # rows floats
      pe 0 ptr 0 2 5 ...                    # cols+1 column pointers of PE 0
      pe 0 code 3 15 0 ...                  # its entries' codebook indices
      pe 0 rel 0 4 1 ...                    # and relative row indices
    unpatch q2 -> a3 positions=784
    pool max a3 -> a4 image=6x28x28 kernel=2x2 stride=2x2 pads=0x0x0x0 dilation=1x1 include_pad=0
    store a9 -> y shape=10

Floats are printed with ``repr`` of the float32 value widened to float64, which parses back to
the same float32 exactly. Parse errors are BackendErrors naming the source and line.
"""

from __future__ import annotations

import numpy as np

from backends.eie.isa import Im2Col, Load, Pool, Program, SpMV, Store, Unpatch, Window
from circ.errors import BackendError

ASM_VERSION = 2


def _numbers(values) -> str:
    return " ".join(str(int(v)) for v in values)


def _floats(values) -> str:
    return " ".join(repr(float(v)) for v in np.asarray(values, dtype=np.float32))


def _dims(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def _window(window: Window) -> str:
    image = (window.channels, window.height, window.width)
    return (f"image={_dims(image)} kernel={_dims(window.kernel)} stride={_dims(window.stride)} "
            f"pads={_dims(window.pads)} dilation={_dims(window.dilation)}")


def print_program(program: Program) -> str:
    """The assembly text of ``program``."""
    lines = [f".eie {ASM_VERSION}"]
    for ins in program.instructions:
        if isinstance(ins, Load):
            lines.append(f"load {ins.name} -> {ins.dst} shape={_dims(ins.shape)}")
        elif isinstance(ins, Store):
            lines.append(f"store {ins.src} -> {ins.name} shape={_dims(ins.shape)}")
        elif isinstance(ins, Im2Col):
            lines.append(f"im2col {ins.src} -> {ins.dst} {_window(ins.window)}")
        elif isinstance(ins, Unpatch):
            lines.append(f"unpatch {ins.src} -> {ins.dst} positions={ins.positions}")
        elif isinstance(ins, Pool):
            lines.append(f"pool {ins.kind} {ins.src} -> {ins.dst} {_window(ins.window)} "
                         f"include_pad={int(ins.count_include_pad)}")
        elif isinstance(ins, SpMV):
            lines.append(f"spmv {ins.layer} {ins.src} -> {ins.dst} rows={ins.rows} cols={ins.cols} "
                         f"pes={ins.pes} v={ins.v_bits} z={ins.z_bits} relu={int(ins.relu)}")
            lines.append(f"  codebook {_floats(ins.codebook)}")
            lines.append(f"  bias {_floats(ins.bias)}")
            for pe in range(ins.pes):
                begin, end = ins.pe_ptr[pe], ins.pe_ptr[pe + 1]
                lines.append(f"  pe {pe} ptr {_numbers(ins.col_ptr[pe])}")
                lines.append(f"  pe {pe} code {_numbers(ins.code[begin:end])}")
                lines.append(f"  pe {pe} rel {_numbers(ins.rel[begin:end])}")
        else:
            raise TypeError(f"not an EIE instruction: {ins!r}")
    return "\n".join(lines) + "\n"


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.lines = [(number, line.split("#", 1)[0].split())
                      for number, line in enumerate(text.splitlines(), 1)]
        self.lines = [(number, words) for number, words in self.lines if words]
        self.position = 0

    def error(self, number: int, message: str) -> BackendError:
        return BackendError(f"{self.source}:{number}: {message}")

    def next(self):
        number, words = self.lines[self.position]
        self.position += 1
        return number, words

    def options(self, number, words, names) -> dict:
        found = {}
        for word in words:
            key, _, value = word.partition("=")
            if key not in names or not value:
                raise self.error(number, f"unexpected {word!r}")
            found[key] = self.integer(number, value)
        missing = [name for name in names if name not in found]
        if missing:
            raise self.error(number, f"missing {', '.join(missing)}")
        return found

    def dims_options(self, number, words, names) -> dict:
        """``key=AxBxC`` words -> key -> tuple of ints (every name required)."""
        found = {}
        for word in words:
            key, _, value = word.partition("=")
            if key not in names or not value:
                raise self.error(number, f"unexpected {word!r}")
            found[key] = tuple(self.integer(number, part) for part in value.split("x"))
        missing = [name for name in names if name not in found]
        if missing:
            raise self.error(number, f"missing {', '.join(missing)}")
        return found

    def window(self, number, words) -> Window:
        opts = self.dims_options(number, words, ["image", "kernel", "stride", "pads", "dilation"])
        if len(opts["image"]) != 3:
            raise self.error(number, "image= needs channels x height x width")
        window = Window(*opts["image"], opts["kernel"], opts["stride"], opts["pads"], opts["dilation"])
        problem = window.problem()
        if problem is not None:
            raise self.error(number, problem)
        return window

    def integer(self, number, word) -> int:
        try:
            return int(word)
        except ValueError:
            raise self.error(number, f"expected an integer, got {word!r}") from None

    def array(self, number, words, dtype, count=None) -> np.ndarray:
        try:
            values = np.array([float(w) if dtype == np.float32 else int(w) for w in words],
                              dtype=np.float64 if dtype == np.float32 else np.int64)
        except ValueError:
            raise self.error(number, "malformed number") from None
        if count is not None and values.size != count:
            raise self.error(number, f"expected {count} values, got {values.size}")
        return values.astype(dtype) if dtype == np.float32 else values

    def expect(self, prefix: list, what: str):
        if self.position >= len(self.lines):
            raise BackendError(f"{self.source}: unexpected end of text, expected {what}")
        number, words = self.next()
        if words[:len(prefix)] != prefix:
            raise self.error(number, f"expected {what}")
        return number, words[len(prefix):]

    def parse(self) -> Program:
        if not self.lines or self.lines[0][1] != [".eie", str(ASM_VERSION)]:
            raise BackendError(f"{self.source}: not EIE assembly version {ASM_VERSION} "
                               f"(first line must be '.eie {ASM_VERSION}')")
        self.position = 1
        program = Program()
        while self.position < len(self.lines):
            number, words = self.next()
            head = words[0]
            if head == "load" and len(words) == 5 and words[2] == "->":
                shape = self.dims_options(number, words[4:], ["shape"])["shape"]
                program.instructions.append(Load(words[1], words[3], shape))
            elif head == "store" and len(words) == 5 and words[2] == "->":
                shape = self.dims_options(number, words[4:], ["shape"])["shape"]
                program.instructions.append(Store(words[1], words[3], shape))
            elif head == "im2col" and len(words) == 9 and words[2] == "->":
                program.instructions.append(Im2Col(words[1], words[3], self.window(number, words[4:])))
            elif head == "unpatch" and len(words) == 5 and words[2] == "->":
                positions = self.options(number, words[4:], ["positions"])["positions"]
                program.instructions.append(Unpatch(words[1], words[3], positions))
            elif head == "pool" and len(words) == 11 and words[3] == "->" and words[1] in ("max", "avg"):
                include = self.options(number, words[10:], ["include_pad"])["include_pad"]
                program.instructions.append(Pool(words[2], words[4], words[1],
                                                 self.window(number, words[5:10]), bool(include)))
            elif head == "spmv" and len(words) >= 5 and words[3] == "->":
                program.instructions.append(self.spmv(number, words))
            else:
                raise self.error(number, f"unknown statement {' '.join(words[:3])!r}")
        return program

    def spmv(self, number, words) -> SpMV:
        opts = self.options(number, words[5:], ["rows", "cols", "pes", "v", "z", "relu"])
        pes, cols = opts["pes"], opts["cols"]
        if pes < 1 or cols < 0 or opts["rows"] < 0 or not 1 <= opts["v"] <= 16 or not 2 <= opts["z"] <= 8:
            raise self.error(number, "spmv: sizes or bit widths out of range")
        n, rest = self.expect(["codebook"], "codebook")
        codebook = self.array(n, rest, np.float32, 1 << opts["v"])
        n, rest = self.expect(["bias"], "bias")
        bias = self.array(n, rest, np.float32, opts["rows"])
        col_ptr = np.zeros((pes, cols + 1), dtype=np.int64)
        codes, rels = [], []
        for pe in range(pes):
            n, rest = self.expect(["pe", str(pe), "ptr"], f"pe {pe} ptr")
            col_ptr[pe] = self.array(n, rest, np.int64, cols + 1)
            n, rest = self.expect(["pe", str(pe), "code"], f"pe {pe} code")
            codes.append(self.array(n, rest, np.int64))
            n, rest = self.expect(["pe", str(pe), "rel"], f"pe {pe} rel")
            rels.append(self.array(n, rest, np.int64, codes[-1].size))
            if col_ptr[pe, -1] != codes[-1].size or np.any(codes[-1] < 0) \
                    or np.any(codes[-1] >= 1 << opts["v"]) or np.any(rels[-1] < 0) \
                    or np.any(rels[-1] >= 1 << opts["z"]):
                raise self.error(n, f"pe {pe}: entries out of range or not matching its pointers")
        pe_ptr = np.concatenate(([0], np.cumsum([c.size for c in codes])))
        return SpMV(words[1], words[2], words[4], opts["rows"], cols, pes, opts["v"], opts["z"],
                    bool(opts["relu"]), codebook, bias, pe_ptr, col_ptr,
                    np.concatenate(codes) if codes else [], np.concatenate(rels) if rels else [])


def parse_program(text: str, source: str = "<asm>") -> Program:
    """Parse assembly text; errors name ``source`` and the line."""
    return _Parser(text, source).parse()
