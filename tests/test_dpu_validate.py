"""backends/dpu/validate.py: lowered programs pass; each broken invariant is one BackendError
line naming the source and the tensor, layer or instruction, before the simulator runs."""

from __future__ import annotations

import numpy as np
import pytest

from backends.dpu.encode import decode, encode
from backends.dpu.isa import Conv, Load, LoadW, Store
from backends.dpu.lower import lower
from backends.dpu.sim import Config, Simulator
from backends.dpu.validate import validate
from circ.errors import BackendError
from test_dpu import small_cnn


@pytest.fixture(scope="module")
def encoded():
    """The binary program of test_dpu's small CNN (every layer kind); each test decodes a
    fresh copy to damage."""
    calibration = {"x": np.random.default_rng(5).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    return encode(lower(small_cnn(), calibration=calibration))


@pytest.mark.parametrize("config", [Config(), Config(ibuf_bytes=600, wbuf_bytes=300,
                                                     obuf_bytes=200, mac_cols=4)])
def test_lowered_programs_are_valid(config):
    calibration = {"x": np.random.default_rng(5).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    program = lower(small_cnn(), config, calibration=calibration)
    validate(program, "mem", config)
    assert len(decode(encode(program), "p.dpu").instructions) == len(program.instructions)


def _layer(program, kind):
    return next(layer for layer in program.layers.values() if layer.kind == kind)


def _index(program, cls, kind=None):
    return next(i for i, ins in enumerate(program.instructions) if isinstance(ins, cls)
                and (kind is None or program.layers[ins.layer].kind == kind))


def _set(program, cls, kind=None, **fields):
    """Replace the first ``cls`` instruction (of a ``kind`` layer) with changed fields;
    its index."""
    index = _index(program, cls, kind)
    ins = program.instructions[index]
    values = {a.name: getattr(ins, a.name) for a in type(ins).__attrs_attrs__}
    values.update(fields)
    program.instructions[index] = cls(**values)
    return index


def _tensor(program, name):
    return program.tensors[name]


# (name, edit, where the message points, what it says)
DAMAGE = [
    ("missing_input_tensor", lambda p: p.inputs.__setitem__(0, ("x", "nope")),
     "input 'x'", "no tensor named 'nope'"),
    ("missing_layer_input", lambda p: _layer(p, "conv").inputs.__setitem__(0, "p1"),
     "layer 'c1'", "no tensor named 'p1'"),
    ("groups", lambda p: setattr(_layer(p, "conv"), "groups", 16385),
     "layer 'c1'", "do not split into 16385 groups"),
    ("stride_and_pads", lambda p: (setattr(_layer(p, "conv"), "stride", (58193, 27816)),
                                   setattr(_layer(p, "conv"), "pads", (63691, 61827, 1, 1))),
     "layer 'c1'", "not the output (8, 12, 12)"),
    ("kernel_disagrees_with_weights", lambda p: setattr(_layer(p, "conv"), "kernel", (5, 5)),
     "layer 'c1'", "disagree with kernel (5, 5)"),
    ("exponent", lambda p: setattr(_tensor(p, "t0"), "exp", 500),
     "tensor 't0'", "exponent 500 outside"),
    ("shift", lambda p: setattr(_tensor(p, _layer(p, "fc").output), "exp", 60),
     "layer 'fc'", "shift by"),
    ("accumulator", lambda p: setattr(_layer(p, "conv"), "bias", [2**31 - 1] * 8),
     "layer 'c1'", "could overflow the int32 accumulator"),
    ("fc_reads_wrong_size", lambda p: setattr(_layer(p, "fc"), "inputs", ["t0"]),
     "layer 'fc'", "do not read input (3, 12, 12)"),
    ("maxpool_changes_format", lambda p: setattr(_tensor(p, _layer(p, "maxpool").output), "exp", 3),
     "layer 'mp'", "keep its input's format"),
    ("avgpool_pads", lambda p: setattr(_layer(p, "avgpool"), "pads", (1, 0, 0, 0)),
     "layer 'ap'", "average pooling has no pads"),
    ("add_operands_differ", lambda p: _layer(p, "add").inputs.__setitem__(1, "t0"),
     "layer 'res'", "differ in shape"),
    ("instruction_layer", lambda p: _set(p, Load, layer="ghost"),
     "instruction 0 (load layer=ghost", "no layer named 'ghost'"),
    ("instruction_kind", lambda p: _set(p, Conv, layer="fc"),
     "(conv layer=fc", "is a fc layer, not conv"),
    ("load_region", lambda p: _set(p, Load, c1=999),
     "instruction 0 (load", "is not inside tensor 't0'"),
    ("load_slot", lambda p: _set(p, Load, slot=7), "instruction 0 (load", "slots 0 and 1, not 7"),
    ("loadw_channels", lambda p: _set(p, LoadW, "fc", o1=6), "(loadw layer=fc",
     "output channels 0:6 outside 0:5"),
    ("conv_tile", lambda p: _set(p, Conv, r1=13), "(conv layer=c1", "is not inside output"),
    ("store_tensor", lambda p: _set(p, Store, tensor="t0"), "(store layer=c1",
     "writes tensor 't1', not 't0'"),
]


@pytest.mark.parametrize("name,edit,where,what", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_one_line_naming_file_and_place(encoded, name, edit, where, what):
    program = decode(encoded)
    edit(program)
    with pytest.raises(BackendError) as caught:
        decode(encode(program), "prog.dpu")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("prog.dpu: ") and where in message and what in message, message
    with pytest.raises(BackendError, match="^dpu: invalid DPU program: "):
        Simulator(program)  # the simulator checks in-memory programs the same way


def test_sizes_are_bounded_before_allocation(encoded):
    program = decode(encoded)
    with pytest.raises(BackendError, match=r"tensor table: its tensors hold \d+ values per sample, "
                                           r"more than the limit of 100"):
        validate(program, "p.dpu", max_elements=100)
    with pytest.raises(BackendError, match=r"p.dpu: corrupt DPU program \(shape"):
        decode(encoded, "p.dpu", max_elements=100)  # refused while reading the tensor table
    # activation tensors are bounded by the limit, not by the file's length: a 3-channel
    # 1024x1024 image is fine in a small file
    program.tensors["t0"].shape = (3, 1024, 1024)
    with pytest.raises(BackendError, match="layer 'c1'"):  # but no longer matches the conv
        decode(encode(program), "p.dpu")


def test_buffers_are_checked_with_a_config(encoded):
    program = decode(encoded)
    validate(program, "p.dpu")  # no config: capacities unchecked
    index = _index(program, LoadW, "conv")  # 8 outputs x (27 weights + 4 bias bytes)
    with pytest.raises(BackendError, match=rf"instruction {index} \(loadw layer=c1 .*needs 248 "
                                           r"bytes of wbuf, more than wbuf_bytes=247$"):
        validate(program, "p.dpu", Config(wbuf_bytes=247))
    validate(program, "p.dpu", Config(wbuf_bytes=248))
    with pytest.raises(BackendError, match="more than obuf_bytes=1$"):
        Simulator(program, Config(obuf_bytes=1))
