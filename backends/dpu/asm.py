"""The DPU assembly: a text form of a program that prints and parses back to the same program.

Format (one statement per line; ``#`` starts a comment; words split like a POSIX shell, so a
name with spaces is quoted)::

    .dpu 1
    tensor name=t0 shape=1,28,28 exp=-7 signed=0
    input x -> t0
    layer name=conv1 kind=conv inputs=t0 output=t1 kernel=5,5 stride=1,1 pads=2,2,2,2 groups=1 relu=1
      weights 6,1,5,5 3 -12 ...               # shape, then int8 values in C order
      w_exp -8 -8 ...                         # one per output channel
      bias 112 -40 ...                        # int32, one per output channel
    load layer=conv1 slot=0 tensor=t0 c0=0 c1=1 r0=0 r1=28
    loadw layer=conv1 o0=0 o1=6
    conv layer=conv1 o0=0 o1=6 r0=0 r1=28
    store layer=conv1 tensor=t1 c0=0 c1=6 r0=0 r1=28
    output logits <- t9

Parse errors are BackendErrors naming the source and line.
"""

from __future__ import annotations

import shlex

import attrs
import numpy as np

from backends.dpu.isa import LAYER_KINDS, MNEMONICS, Layer, Program, TensorDesc
from circ.errors import BackendError

ASM_VERSION = 1
_BY_MNEMONIC = {mnemonic: cls for cls, mnemonic in MNEMONICS.items()}


def _word(text: str) -> str:
    return shlex.quote(text)


def _ints(values) -> str:
    return ",".join(str(int(v)) for v in values)


def _numbers(values) -> str:
    return " ".join(str(int(v)) for v in np.asarray(values).reshape(-1))


def print_program(program: Program) -> str:
    """The assembly text of ``program``."""
    lines = [f".dpu {ASM_VERSION}"]
    for t in program.tensors.values():
        lines.append(f"tensor name={_word(t.name)} shape={_ints(t.shape)} exp={t.exp} "
                     f"signed={int(t.signed)}")
    for name, tensor in program.inputs:
        lines.append(f"input {_word(name)} -> {_word(tensor)}")
    for layer in program.layers.values():
        lines.append(f"layer name={_word(layer.name)} kind={layer.kind} "
                     f"inputs={_word(','.join(layer.inputs))} output={_word(layer.output)} "
                     f"kernel={_ints(layer.kernel)} stride={_ints(layer.stride)} "
                     f"pads={_ints(layer.pads)} groups={layer.groups} relu={int(layer.relu)}")
        if layer.kind in ("conv", "fc"):
            lines.append(f"  weights {_ints(layer.weights.shape)} {_numbers(layer.weights)}")
            lines.append(f"  w_exp {_numbers(layer.w_exp)}")
            lines.append(f"  bias {_numbers(layer.bias)}")
    for ins in program.instructions:
        fields = " ".join(f"{key}={_word(str(value))}" for key, value in attrs.asdict(ins).items())
        lines.append(f"{MNEMONICS[type(ins)]} {fields}")
    for name, tensor in program.outputs:
        lines.append(f"output {_word(name)} <- {_word(tensor)}")
    return "\n".join(lines) + "\n"


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.lines = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                words = shlex.split(line, comments=True)
            except ValueError as error:
                raise self.error(number, f"cannot split the line ({error})") from None
            if words:
                self.lines.append((number, words))
        self.position = 0

    def error(self, number: int, message: str) -> BackendError:
        return BackendError(f"{self.source}:{number}: {message}")

    def integer(self, number: int, word: str, lo: int = -(2**31), hi: int = 2**31 - 1) -> int:
        try:
            value = int(word)
        except ValueError:
            raise self.error(number, f"expected an integer, got {word!r}") from None
        if not lo <= value <= hi:
            raise self.error(number, f"{value} is outside {lo}..{hi}")
        return value

    def tuple_of(self, number: int, word: str, count: int) -> tuple:
        values = tuple(self.integer(number, part, 0) for part in word.split(",")) if word else ()
        if count and len(values) != count:
            raise self.error(number, f"expected {count} comma-separated integers, got {word!r}")
        return values

    def fields(self, number: int, words: list, names: list) -> dict:
        found = {}
        for word in words:
            key, equals, value = word.partition("=")
            if key not in names or not equals or key in found:
                raise self.error(number, f"unexpected {word!r}")
            found[key] = value
        missing = [name for name in names if name not in found]
        if missing:
            raise self.error(number, f"missing {', '.join(missing)}")
        return found

    def array(self, number: int, words: list, dtype, count: int, lo: int, hi: int) -> np.ndarray:
        try:
            values = np.array([int(w) for w in words], dtype=np.int64)
        except ValueError:
            raise self.error(number, "malformed integer") from None
        if values.size != count:
            raise self.error(number, f"expected {count} values, got {values.size}")
        if values.size and (values.min() < lo or values.max() > hi):
            raise self.error(number, f"values outside {lo}..{hi}")
        return values.astype(dtype)

    def expect(self, head: str):
        if self.position >= len(self.lines):
            raise BackendError(f"{self.source}: unexpected end of text, expected {head!r}")
        number, words = self.lines[self.position]
        self.position += 1
        if words[0] != head:
            raise self.error(number, f"expected {head!r}")
        return number, words[1:]

    def parse(self) -> Program:
        if not self.lines or self.lines[0][1] != [".dpu", str(ASM_VERSION)]:
            raise BackendError(f"{self.source}: not DPU assembly version {ASM_VERSION} "
                               f"(first line must be '.dpu {ASM_VERSION}')")
        self.position = 1
        program = Program()
        while self.position < len(self.lines):
            number, words = self.lines[self.position]
            self.position += 1
            head = words[0]
            if head == "tensor":
                f = self.fields(number, words[1:], ["name", "shape", "exp", "signed"])
                shape = self.tuple_of(number, f["shape"], 0)
                if len(shape) not in (1, 3) or min(shape) < 1:
                    raise self.error(number, "a tensor shape is (C,H,W) or (F,) of positive sizes")
                program.add_tensor(TensorDesc(f["name"], shape, self.integer(number, f["exp"]),
                                              bool(self.integer(number, f["signed"], 0, 1))))
            elif head in ("input", "output") and len(words) == 4 \
                    and words[2] == ("->" if head == "input" else "<-"):
                if words[3] not in program.tensors:
                    raise self.error(number, f"unknown tensor {words[3]!r}")
                getattr(program, head + "s").append((words[1], words[3]))
            elif head == "layer":
                program.add_layer(self.layer(number, words[1:]))
            elif head in _BY_MNEMONIC:
                cls = _BY_MNEMONIC[head]
                names = [field.name for field in attrs.fields(cls)]
                f = self.fields(number, words[1:], names)
                args = {key: value if attrs.fields_dict(cls)[key].type == "str"
                        else self.integer(number, value) for key, value in f.items()}
                program.instructions.append(cls(**args))
            else:
                raise self.error(number, f"unknown statement {head!r}")
        return program

    def layer(self, number: int, words: list) -> Layer:
        f = self.fields(number, words, ["name", "kind", "inputs", "output", "kernel", "stride",
                                        "pads", "groups", "relu"])
        if f["kind"] not in LAYER_KINDS:
            raise self.error(number, f"unknown layer kind {f['kind']!r}")
        layer = Layer(f["name"], f["kind"], f["inputs"].split(","), f["output"],
                      kernel=self.tuple_of(number, f["kernel"], 2),
                      stride=self.tuple_of(number, f["stride"], 2),
                      pads=self.tuple_of(number, f["pads"], 4),
                      groups=self.integer(number, f["groups"], 1),
                      relu=bool(self.integer(number, f["relu"], 0, 1)))
        if layer.kind in ("conv", "fc"):
            n, rest = self.expect("weights")
            if not rest:
                raise self.error(n, "weights need a shape")
            shape = self.tuple_of(n, rest[0], 4 if layer.kind == "conv" else 2)
            layer.weights = self.array(n, rest[1:], np.int8, int(np.prod(shape)), -128, 127
                                       ).reshape(shape)
            n, rest = self.expect("w_exp")
            layer.w_exp = self.array(n, rest, np.int32, shape[0], -(2**31), 2**31 - 1)
            n, rest = self.expect("bias")
            layer.bias = self.array(n, rest, np.int32, shape[0], -(2**31), 2**31 - 1)
        return layer


def parse_program(text: str, source: str = "<asm>") -> Program:
    """Parse assembly text; errors name ``source`` and the line."""
    return _Parser(text, source).parse()
