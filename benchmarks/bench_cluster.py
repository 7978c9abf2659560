"""circ's cluster pass (init=kmeans++) vs scikit-learn KMeans on the same 1-D weights.

    python benchmarks/bench_cluster.py [--sizes 0.1M,1M,10M] [--bits 8] [--runs 3]
                                       [--sklearn-max-iter N] [--sklearn-n-init N]

For each size a single Gemm layer gets seeded random weights (normal, He-scaled, the shape a
layer of that size would have); both sides cluster the same float32 values into ``k =
2**bits`` clusters (default 8 bits: 256, the paper's conv setting):

* circ: the ``cluster(init=kmeans++,bits=...)`` pass run on the graph (sorting, k-means,
  index assignment, building the Clustered tensor) — median of ``--runs`` runs; its default
  ``n_init`` (3 restarts, best kept; ``--circ-n-init`` changes it) is printed;
* scikit-learn: ``KMeans(n_clusters=k, random_state=0)`` with its defaults (``n_init='auto'``,
  i.e. 1 run for k-means++; ``max_iter=300``, ``tol=1e-4``) on ``x.reshape(-1, 1)``, timed once
  (it takes minutes at 10M); ``--sklearn-max-iter``/``--sklearn-n-init`` bound it if wanted
  and the table says so.

Both inertias are computed the same way (float64, every weight to its nearest codebook entry
— circ's codebook as stored in float32). The target is circ at least 20x faster at no worse
inertia; the last lines say whether it holds per size. Single-threaded BLAS is not forced:
sklearn runs with its defaults on the 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from onnx import TensorProto, helper, numpy_helper

from circ.kmeans1d import inertia
from circ.onnx_import import from_model_proto
from circ.passbase import PassContext
from passes.cluster import Cluster

TARGET_SPEEDUP = 20.0


def layer(size: int, seed: int = 0):
    """A one-Gemm graph whose (rows x 1000) weight has ``size`` elements, He-scaled."""
    cols = 1000
    rows = max(1, size // cols)
    weight = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    weight *= np.float32(np.sqrt(2.0 / rows))
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")
    graph = helper.make_graph([node], "bench",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
                              [numpy_helper.from_array(weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return from_model_proto(proto), weight


def run_circ(size: int, bits: int, runs: int, n_init=None):
    times = []
    for _ in range(runs):
        graph, weight = layer(size)
        ctx = PassContext(seed=0, current_pass="cluster")
        start = time.perf_counter()
        Cluster(bits=bits, init="kmeans++", n_init=n_init).run(graph, ctx)
        times.append(time.perf_counter() - start)
    codebook = graph.value("w").const.codebook
    return statistics.median(times), inertia(weight, codebook), weight


def run_sklearn(weight: np.ndarray, k: int, max_iter, n_init):
    from sklearn.cluster import KMeans

    options = {"n_clusters": k, "random_state": 0}
    if max_iter is not None:
        options["max_iter"] = max_iter
    if n_init is not None:
        options["n_init"] = n_init
    model = KMeans(**options)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when bounded
        model.fit(weight.reshape(-1, 1))
    elapsed = time.perf_counter() - start
    centres = np.sort(model.cluster_centers_.ravel())
    return elapsed, inertia(weight, centres), model


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.1M,1M,10M")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="circ runs per size (median)")
    parser.add_argument("--circ-n-init", type=int, default=None,
                        help="circ restarts (default: the pass default, 3 for kmeans++)")
    parser.add_argument("--sklearn-max-iter", type=int, default=None)
    parser.add_argument("--sklearn-n-init", type=int, default=None)
    args = parser.parse_args(argv)
    k = 2 ** args.bits
    rows = []
    for text in args.sizes.split(","):
        size = parse_size(text)
        circ_time, circ_inertia, weight = run_circ(size, args.bits, args.runs, args.circ_n_init)
        sk_time, sk_inertia, model = run_sklearn(weight, k, args.sklearn_max_iter, args.sklearn_n_init)
        rows.append((text, weight.size, circ_time, circ_inertia, sk_time, sk_inertia, model))

    bounded = args.sklearn_max_iter is not None or args.sklearn_n_init is not None
    circ_n_init = args.circ_n_init or "3 (default)"
    print(f"k = {k} ({args.bits} bits); circ: cluster(init=kmeans++) pass, n_init {circ_n_init}, "
          f"median of {args.runs}; sklearn KMeans "
          f"{'bounded: ' if bounded else 'defaults: '}"
          f"n_init={rows[0][6].n_init}, max_iter={rows[0][6].max_iter}, tol={rows[0][6].tol}, once")
    header = (f"{'size':>6} {'weights':>10} {'circ s':>8} {'sklearn s':>10} {'speedup':>8} "
              f"{'circ inertia':>13} {'sk inertia':>13} {'ratio':>7} {'sk iters':>8}")
    print(header)
    verdicts = []
    for text, n, circ_time, circ_inertia, sk_time, sk_inertia, model in rows:
        speedup = sk_time / circ_time
        ratio = circ_inertia / sk_inertia
        print(f"{text:>6} {n:>10} {circ_time:>8.3f} {sk_time:>10.2f} {speedup:>7.1f}x "
              f"{circ_inertia:>13.6g} {sk_inertia:>13.6g} {ratio:>7.4f} {model.n_iter_:>8}")
        holds = speedup >= TARGET_SPEEDUP and ratio <= 1.0
        verdicts.append(holds)
    for (text, *_), holds in zip(rows, verdicts):
        print(f"{text}: >= {TARGET_SPEEDUP:.0f}x faster at no worse inertia: {'holds' if holds else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
