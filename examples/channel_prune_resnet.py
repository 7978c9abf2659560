"""Channel pruning a ResNet: a smaller dense network that runs faster on any runtime.

Unstructured pruning leaves the tensor shapes as they were; channel (filter) pruning removes
whole output channels and everything they flow through, so the result is simply a narrower
network. This script:

1. builds a small CIFAR-style ResNet in PyTorch (stem, three stages of two basic blocks with
   16/32/64 channels, global pooling, a linear classifier; random weights, BatchNorm
   statistics randomized so BN is not the identity) and exports it to ONNX;
2. runs ``fold_bn`` (BatchNorm folded into the convolutions, exact; torch's exporter already
   folds it in eval mode, other exporters keep BatchNormalization nodes) and ``channel_prune``
   (the L1 filter criterion of Li et al. 2017; residual branches that add up are pruned
   together, so the Add nodes keep matching shapes), then ``dce``;
3. prints parameters and MACs before and after, the output change on a random batch, and
   the onnxruntime latency of both models (best of several runs).

::

    python examples/channel_prune_resnet.py                     # ratio 0.5
    python examples/channel_prune_resnet.py --ratio 0.75 --out /tmp/resnet
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import circ
from circ.printer import format_count, format_table


def build_resnet(width: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def conv_bn(cin, cout, kernel, stride):
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1))
            self.skip = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    widths = [width, 2 * width, 4 * width]
    layers = [*conv_bn(3, widths[0], 3, 1), nn.ReLU()]
    cin = widths[0]
    for stage, cout in enumerate(widths):
        layers += [Block(cin, cout, 1 if stage == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    model = nn.Sequential(*layers).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so folding has work to do
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
    return model


def export(model, path: Path) -> None:
    import torch

    example = torch.zeros(1, 3, 32, 32)
    torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)


def latencies(paths: list, feeds: dict, repeats: int) -> list[float]:
    """Best-of-``repeats`` onnxruntime latency of each model in milliseconds (one thread).
    The models take turns, so a busy machine slows them alike and the ratio stays fair."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
    best = [float("inf")] * len(sessions)
    for _ in range(repeats):
        for index, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            best[index] = min(best[index], time.perf_counter() - start)
    return [1000.0 * b for b in best]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for resnet.onnx and resnet.pruned.onnx (default: temporary)")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    parser.add_argument("--batch", type=int, default=8, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    folder = Path(args.out or tempfile.mkdtemp(prefix="channel_prune_"))
    folder.mkdir(parents=True, exist_ok=True)
    original, pruned_path = folder / "resnet.onnx", folder / "resnet.pruned.onnx"
    export(build_resnet(args.width, args.seed), original)

    graph = circ.load(original)
    pipeline = f"fold_bn,channel_prune(ratio={args.ratio}),dce"
    result = circ.run_pipeline(graph, pipeline, seed=args.seed)
    circ.save(result.graph, pruned_path)

    before, after = result.report["stats"]["before"], result.report["stats"]["after"]
    image = np.random.default_rng(args.seed).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    feeds = {"image": image}
    reference = circ.run(graph, feeds)["logits"]
    folded = circ.run(circ.optimize(graph, "fold_bn"), feeds)["logits"]
    pruned = circ.run(result.graph, feeds)["logits"]
    times = latencies([original, pruned_path], feeds, args.repeats)

    rows = [["parameters", format_count(before["params"]), format_count(after["params"])],
            ["MACs per image", format_count(before["macs"]), format_count(after["macs"])],
            ["nodes", before["nodes"], after["nodes"]],
            [f"onnxruntime ms (batch {args.batch})", f"{times[0]:.2f}", f"{times[1]:.2f}"]]
    print(f"{pipeline} on a ResNet with {args.width}/{2 * args.width}/{4 * args.width} channels\n")
    print(format_table(["", "before", "after"], rows))
    print(f"\nMACs {before['macs'] / after['macs']:.2f}x fewer, onnxruntime {times[0] / times[1]:.2f}x faster")
    scale = np.abs(reference).max()
    print(f"largest change of the logits, relative to the largest logit: fold_bn alone "
          f"{np.abs(folded - reference).max() / scale:.2g} (exact up to float rounding); the whole "
          f"pipeline {np.abs(pruned - reference).max() / scale:.2g} (channel pruning without "
          f"retraining is approximate: fine-tune afterwards, e.g. with circ.train.fit)")
    for decline in result.declines:
        print(f"declined: {decline}")
    print(f"\nwrote {pruned_path}")


if __name__ == "__main__":
    main()
