"""channel_prune: exact on zero channels for every zoo architecture, valid ONNX, honest report.

The exactness check: choose the channels the pass would remove, set them to exact zeros in
the original (filters, biases, BatchNorm shift, additive per-channel constants), then prune
that zeroed model. Removing channels that are zero all the way must leave the outputs
unchanged to float tolerance, and the pass must pick the same channels (zeros rank lowest).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo

import circ
from circ.analysis.channels import channel_flow
from circ.analysis.stats import graph_stats
from circ.errors import PipelineError
from circ.passbase import PassContext
from circ.passmanager import PassManager
from circ.analysis.channels import ChannelGroup
from circ.tensors import Clustered, Dense, Quantized
from hypothesis import given
from hypothesis import strategies as st
from passes.channel_prune import ChannelPrune, _Rounding, take

RTOL = 1e-4
ATOL_SCALE = 1e-5  # of the output's magnitude: float32 sums in a different order

# Whether every zoo model has something to prune (graph outputs, LayerNorm and Softmax freeze
# all channels of these).
NOTHING_REMOVABLE = {"mlp_opset20"}
LIGHT = ("light_resnet50", "light_densenet121", "light_inception_v1", "light_inception_v2",
         "light_squeezenet", "light_shufflenet")
LIGHT_SLOW = ("light_vgg19", "light_bvlc_alexnet")


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory) -> zoo.Zoo:
    return zoo.Zoo(tmp_path_factory.mktemp("zoo_channel_prune"))


def load(model_zoo, name):
    graph = circ.load(model_zoo.path(name))
    if name.startswith("light_"):
        graph = circ.optimize(graph, "fold_constants")
    return graph


def feeds_for(graph, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d if isinstance(d, int) else batch for d in v.shape]).astype(v.dtype)
            for v in graph.inputs}


def ort_outputs(graph, feeds, path, *, check=True):
    import onnxruntime as ort

    circ.save(graph, path)
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def assert_close(actual: dict, expected: dict, what: str):
    assert list(actual) == list(expected), what
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape, f"{what}: {name} shape {got.shape} != {want.shape}"
        atol = ATOL_SCALE * max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=f"{what}: {name}")


# Per-channel constants that must be zero too for a zero channel to stay zero: additive shifts
# (BatchNorm bias and mean, layer and InstanceNorm biases, Add/Sub operands).
def _shift_site(node, index) -> bool:
    return ((node.op in ("Conv", "ConvTranspose", "Gemm") and index == 2)
            or (node.op == "BatchNormalization" and index in (2, 3))
            or (node.op == "InstanceNormalization" and index == 2)
            or node.op in ("Add", "Sub", "Sum"))


def zero_channels(graph, removed) -> int:
    """Set the channels of classes ``removed`` to exact zeros all the way; returns how many
    filters were zeroed."""
    flow = channel_flow(graph)
    gone = removed[flow.root]
    zeroed = 0
    for producer in flow.producers:
        mask = gone[producer.atoms]
        if mask.any():
            weight = producer.node.input(1)
            array = np.moveaxis(weight.numpy().copy(), producer.weight_axis, 0)
            array[mask] = 0
            graph.set_const(weight, Dense(np.moveaxis(array, 0, producer.weight_axis)))
            zeroed += int(mask.sum())
    for site in flow.sites:
        mask = gone[site.atoms]
        if mask.any() and _shift_site(site.node, site.index):
            value = site.node.input(site.index)
            array = np.moveaxis(value.numpy().copy(), site.axis, 0)
            array[mask] = 0
            graph.set_const(value, Dense(np.moveaxis(array, 0, site.axis)))
    return zeroed


def prune(graph, text):
    result = PassManager.from_pipeline(text).run(graph.copy())
    entry = result.report["passes"][-1]
    return result.graph, entry["details"], result.declines


def check_pruned(original, pruned, details, feeds, tmp_path, *, ort_reference: bool):
    """The pruned graph is valid, smaller as claimed, and computes what ``original`` does."""
    circ.verify(pruned)
    stats = graph_stats(pruned)
    assert stats.macs == details["macs_after"] == details["macs_predicted"]
    assert stats.params == details["params_after"]
    assert details["macs_after"] < details["macs_before"]
    assert details["params_after"] < details["params_before"]
    assert graph_stats(original).macs == details["macs_before"]
    pruned_ort = ort_outputs(pruned, feeds, tmp_path / "pruned.onnx")
    if ort_reference:
        expected = ort_outputs(original, feeds, tmp_path / "original.onnx", check=False)
    else:
        expected = circ.run(original, feeds)
        assert_close(circ.run(pruned, feeds), pruned_ort, "circ vs onnxruntime on the pruned model")
    assert_close(pruned_ort, expected, "pruned (zero channels) vs original")


def exactness_case(model_zoo, name, tmp_path, text="channel_prune(ratio=0.5)", *, ort_reference=False):
    graph = load(model_zoo, name)
    pass_ = PassManager.from_pipeline(text).passes[0]
    _, removed = pass_.choose(graph, PassContext())
    if name in NOTHING_REMOVABLE:
        assert not removed.any()
        _, details, declines = prune(graph, text)
        assert declines
        return
    assert removed.any()
    assert zero_channels(graph, removed) > 0
    pruned, details, _ = prune(graph, text)
    _, again = pass_.choose(graph, PassContext())
    if "target_macs" in text or ("global" in text and "round_to" in text):
        # zeros rank first, so the pass removes zeroed channels only (perhaps fewer of them:
        # a different order among equal scores can reach the MAC target or, with rounding, the
        # channel count sooner)
        assert again.any() and not (again & ~removed).any()
    else:
        np.testing.assert_array_equal(again, removed)  # zeroed channels are still the ones chosen
    check_pruned(graph, pruned, details, feeds_for(graph), tmp_path, ort_reference=ort_reference)
    return details


@pytest.mark.parametrize("name", zoo.TORCH_MODELS)
def test_exact_on_zero_channels_torch_models(name, model_zoo, tmp_path):
    exactness_case(model_zoo, name, tmp_path)


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2", "densenet_small"])
@pytest.mark.parametrize("options", ["global=true,ratio=0.6", "target_macs=0.4", "criterion=l2,ratio=0.3",
                                     "criterion=bn,ratio=0.5,min_channels=4", "target_macs=0.6,round_to=1",
                                     "ratio=0.3,round_to=8", "global=true,ratio=0.4,round_to=4"])
def test_exact_with_other_selections(name, options, model_zoo, tmp_path):
    exactness_case(model_zoo, name, tmp_path, f"channel_prune({options})")


@pytest.mark.parametrize("name", LIGHT + tuple(pytest.param(n, marks=pytest.mark.slow) for n in LIGHT_SLOW))
def test_exact_on_zero_channels_light_zoo(name, model_zoo, tmp_path):
    # 224x224: onnxruntime computes both sides; circ's interpreter is compared on SqueezeNet.
    details = exactness_case(model_zoo, name, tmp_path, ort_reference=True)
    assert details["channels_removed"] > 0


def test_circ_matches_onnxruntime_on_pruned_squeezenet(model_zoo, tmp_path):
    graph = load(model_zoo, "light_squeezenet")
    pruned, _, _ = prune(graph, "channel_prune(ratio=0.5)")
    feeds = feeds_for(pruned, batch=1)
    assert_close(circ.run(pruned, feeds), ort_outputs(pruned, feeds, tmp_path / "p.onnx"), "squeezenet")


def test_residual_stream_pruned_jointly(model_zoo):
    graph = load(model_zoo, "resnet8")
    pruned, details, _ = prune(graph, "channel_prune(ratio=0.5)")
    layers = details["layers"]
    # the identity-shortcut block: both of its convs' outputs meet the stem's at an Add
    assert layers["/stem/stem.0/Conv"][1] == layers["/blocks/blocks.0/body/body.1/body.1.0/Conv"][1]
    assert layers["/blocks/blocks.2/body/body.1/body.1.0/Conv"][1] == \
        layers["/blocks/blocks.2/shortcut/shortcut.0/Conv"][1]
    fc = pruned.node("/fc/Gemm")
    assert fc.input(1).shape[1] == layers["/blocks/blocks.2/shortcut/shortcut.0/Conv"][1]


def test_target_macs_reaches_the_fraction(model_zoo):
    graph = load(model_zoo, "resnet8")
    _, details, _ = prune(graph, "channel_prune(target_macs=0.5)")
    assert details["macs_after"] <= 0.5 * details["macs_before"]
    assert details["macs_after"] > 0.4 * details["macs_before"]  # the shortest prefix, not more


def kept_counts(graph) -> dict:
    """Output channels of every Conv/Gemm/MatMul with a constant weight, by node name."""
    counts = {}
    for node in graph.nodes:
        weight = node.input(1)
        if node.op in ("Conv", "Gemm", "MatMul") and weight is not None and weight.const is not None:
            axis = 1 if node.op == "MatMul" or (node.op == "Gemm" and not node.attrs.get("transB", 0)) else 0
            counts[node.name] = weight.shape[axis]
    return counts


@pytest.mark.parametrize("name, target", [("resnet8", 0.5), ("mobilenet_v2", 0.6), ("vgg_small", 0.3),
                                          ("densenet_small", 0.7)])
def test_target_macs_rounds_kept_channels_to_eight(name, target, model_zoo):
    graph = load(model_zoo, name)
    pruned, details, _ = prune(graph, f"channel_prune(target_macs={target})")
    assert details["round_to"] == "auto"
    assert details["macs_after"] <= target * details["macs_before"]
    assert details["macs_after"] > (target - 0.15) * details["macs_before"]
    assert details["layers"]
    before = kept_counts(graph)
    for layer, (total, kept) in details["layers"].items():
        if total % 8 == 0:  # every zoo layer but densenet's concatenations and classifiers
            assert kept % 8 == 0, (layer, total, kept)
    # every layer the pass shrank keeps a multiple of 8 (a depthwise conv follows its input)
    for layer, count in kept_counts(pruned).items():
        if count != before[layer] and before[layer] % 8 == 0:
            assert count % 8 == 0, (layer, count)


def test_default_rounding_grain_grows_with_the_group(model_zoo):
    graph = load(model_zoo, "resnet8")  # groups of 16, 32 and 64 channels
    _, details, _ = prune(graph, "channel_prune(target_macs=0.5)")
    grains = {16: 8, 32: 8, 64: 16}
    assert {total for total, _ in details["layers"].values()} <= set(grains)
    for total, kept in details["layers"].values():
        assert kept % grains[total] == 0, (total, kept)
    assert _Rounding(ChannelGroup([], list(range(100)), frozen=28), 0).quantum == 32
    assert _Rounding(ChannelGroup([], list(range(127))), 0).quantum == 16


def test_round_to_one_keeps_the_unrounded_selection(model_zoo):
    graph = load(model_zoo, "resnet8")
    _, rounded, _ = prune(graph, "channel_prune(target_macs=0.5)")
    _, plain, _ = prune(graph, "channel_prune(target_macs=0.5,round_to=1)")
    assert plain["round_to"] == 1
    assert plain["macs_after"] <= 0.5 * plain["macs_before"]
    assert any(kept % 8 for _, kept in plain["layers"].values())  # else the test shows nothing
    assert not any(kept % 8 for _, kept in rounded["layers"].values())
    # the ratio modes round only when asked
    _, ratio, _ = prune(graph, "channel_prune(ratio=0.3)")
    assert ratio["round_to"] == 1 and any(kept % 8 for _, kept in ratio["layers"].values())


def test_rounding_respects_min_channels_and_overrides(model_zoo):
    graph = load(model_zoo, "vgg_small")
    _, details, _ = prune(graph, "channel_prune(ratio=0.5,min_channels=12,round_to=8,layers=/0/Conv:0;/5/Conv:0.75)")
    layers = details["layers"]
    assert "/0/Conv" not in layers
    assert "/2/Conv" not in layers  # 8 asked; min_channels keeps 12, which rounds to 16: untouched
    assert layers["/5/Conv"] == [32, 16]  # 24 asked, 20 allowed, 16 removed to keep a multiple
    assert layers["/7/Conv"] == [32, 16]


def test_rounding_in_a_group_with_frozen_channels():
    group = ChannelGroup([], classes=list(range(20)), frozen=3)  # 23 channels, 3 must stay
    rounding = _Rounding(group, 8)
    assert rounding.nearest(6, 20) == 7  # keeps 16
    assert rounding.nearest(12, 20) == 15  # keeps 8 (tie between 7 and 15 goes up)
    assert rounding.nearest(12, 14) == 7  # 15 is past the limit
    assert rounding.nearest(2, 20) == 0
    assert _Rounding(ChannelGroup([], list(range(6))), 8).nearest(4, 5) == 0  # cannot keep a multiple


def test_groups_too_small_to_round_are_declined(model_zoo):
    graph = load(model_zoo, "resnet8")  # 16, 32 and 64 channels
    _, details, declines = prune(graph, "channel_prune(ratio=0.5,round_to=32)")
    reasons = [d.reason for d in declines if "round_to" in d.reason]
    assert "channels left alone: 16 channels cannot shrink to a multiple of round_to=32" in reasons
    assert all(kept % 32 == 0 for _, kept in details["layers"].values())


@given(total=st.integers(1, 80), frozen=st.integers(0, 10), quantum=st.integers(1, 16),
       data=st.data())
def test_rounding_is_monotone_and_allowed(total, frozen, quantum, data):
    classes = data.draw(st.integers(0, total))
    limit = data.draw(st.integers(0, classes))
    rounding = _Rounding(ChannelGroup([], list(range(classes)), frozen), quantum)
    results = [rounding.nearest(count, limit) for count in range(classes + 1)]
    assert results == sorted(results)
    for count, result in enumerate(results):
        kept = classes + frozen - result
        assert 0 <= result <= limit
        assert result == 0 or (kept > 0 and kept % quantum == 0)
        down = rounding.down(count)
        assert down <= count and (down == 0 or (classes + frozen - down) % quantum == 0)
        if quantum == 1 and count < classes + frozen:
            assert result == min(count, limit) and down == count


def test_target_macs_out_of_reach_is_reported(model_zoo):
    graph = load(model_zoo, "vgg_small")
    _, details, declines = prune(graph, "channel_prune(target_macs=0.0)")
    assert any("not reached" in d.reason for d in declines)
    assert details["macs_after"] > 0


def test_layers_override_and_min_channels(model_zoo):
    graph = load(model_zoo, "vgg_small")
    _, details, _ = prune(graph, "channel_prune(ratio=0.5,min_channels=12,layers=/0/Conv:0;/5/Conv:0.75)")
    layers = details["layers"]
    assert "/0/Conv" not in layers  # ratio 0: left alone
    assert layers["/2/Conv"] == [16, 12]  # 8 asked, min_channels keeps 12
    assert layers["/5/Conv"] == [32, 12]  # 24 asked, 20 allowed
    assert layers["/7/Conv"] == [32, 16]


def test_bn_criterion_removes_the_smallest_gammas(model_zoo):
    graph = load(model_zoo, "resnet8")
    flow = channel_flow(graph)
    bn = next(n for n in graph.nodes if n.op == "BatchNormalization"
              and n.input(0).producer.name == "/blocks/blocks.1/body/body.0/body.0.0/Conv")
    gamma = np.abs(bn.input(1).numpy())
    _plan, removed = ChannelPrune(criterion="bn", ratio=0.25).choose(graph, PassContext())
    atoms = flow.atoms[id(bn.input(0))]
    gone = removed[flow.root[atoms]]
    assert gone.sum() == 8
    assert set(np.flatnonzero(gone)) == set(np.argsort(gamma, kind="stable")[:8])


def test_l1_criterion_removes_the_smallest_filters(model_zoo):
    graph = load(model_zoo, "vgg_small")
    conv = graph.node("/2/Conv")
    norms = np.abs(conv.input(1).numpy()).reshape(16, -1).sum(axis=1)
    pruned, _, _ = prune(graph, "channel_prune(ratio=0,layers=/2/Conv:0.25)")
    kept = pruned.node("/2/Conv").input(1).numpy()
    expected = conv.input(1).numpy()[np.sort(np.argsort(norms)[4:])]
    np.testing.assert_array_equal(kept, expected)


def test_frozen_groups_are_declined_with_reasons(model_zoo):
    graph = load(model_zoo, "shufflenet_small")
    _, _, declines = prune(graph, "channel_prune(ratio=0.5)")
    reasons = " ".join(d.reason for d in declines)
    assert "graph output" in reasons
    assert "shape is read" in reasons


@pytest.mark.parametrize("text, message", [
    ("channel_prune(criterion=l3)", "criterion"),
    ("channel_prune(ratio=1.5)", "ratio"),
    ("channel_prune(ratio=0.5,target_macs=0.5)", "not both"),
    ("channel_prune(min_channels=0)", "min_channels"),
    ("channel_prune(round_to=0)", "round_to"),
    ("channel_prune(layers=conv)", "layers"),
])
def test_bad_options(text, message):
    with pytest.raises(PipelineError, match=message):
        PassManager.from_pipeline(text)


def test_pipeline_text_round_trip():
    manager = PassManager.from_pipeline("channel_prune(criterion=bn,global=true,ratio=0.3,layers=\"a*:0\")")
    assert PassManager.from_pipeline(manager.text).text == manager.text


def test_take_keeps_every_representation():
    keep = np.array([True, False, True])
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = array % 2 == 0
    dense = take(Dense(array, mask), keep, 0)
    np.testing.assert_array_equal(dense.to_numpy(), Dense(array, mask).to_numpy()[[0, 2]])
    assert dense.kept is not None
    clustered = Clustered(np.array([0.5, -1.0], np.float32), np.array([[0, 1, -1, 0]] * 3, np.int8))
    np.testing.assert_array_equal(take(clustered, keep, 0).to_numpy(), clustered.to_numpy()[[0, 2]])
    quantized = Quantized(np.arange(12, dtype=np.int8).reshape(3, 4), np.array([0.1, 0.2, 0.3], np.float32),
                          np.zeros(3, np.int8), axis=0)
    np.testing.assert_allclose(take(quantized, keep, 0).to_numpy(), quantized.to_numpy()[[0, 2]])
    np.testing.assert_allclose(take(quantized, np.array([True, False, True, True]), 1).to_numpy(),
                               quantized.to_numpy()[:, [0, 2, 3]])
