"""A distance matrix on a simulated multi-node Ray cluster (a head without CPUs for the driver, and two worker
nodes, each its own raylet, on this machine), losing one worker node while it holds a block. Run by
tests/test_matrix.py in a subprocess (a multi-node Cluster cannot share a process with the session's ray.init):

    python tests/matrix_ray_cluster.py MODEL.onnx IMAGES_DIR [--block 8]

Deterministic, without timing: a setup hook in every worker wraps the block product (stlpips_rt.matrix.head.block)
so that each call first writes a marker file (block, node, pid). On the doomed node the first block then waits
(bounded) for the node to be removed; on the other node blocks wait (bounded) until the doomed node has started
one, so the doomed node is sure to hold work. The driver removes the doomed node as soon as its marker appears.
That block is lost with the node and must be computed again on the surviving one.

Prints one JSON line: the blocks, the block that was running on the removed node, the node that finally produced
it, the driver's block retries, and whether the matrix equals the single-process Scorer.matrix bit for bit."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

#: Upper bounds on every wait, so that a broken cluster fails the test instead of hanging it.
HOLD_S = 90.0
WAIT_FOR_DOOMED_S = 60.0


def make_setup_hook(markers: str, doomed_node: str):  # noqa: ANN201 - a closure Ray pickles by value
    def hook() -> None:
        import ray

        from stlpips_rt.matrix import head

        node = ray.get_runtime_context().get_node_id()
        plain = head.block

        def observed(rows, cols, weights):  # noqa: ANN001, ANN202 - head.block's own signature
            marker = Path(markers) / f"{node}-{os.getpid()}-{time.monotonic_ns()}.json"
            marker.write_text(json.dumps({"node": node, "pid": os.getpid(), "rows": len(rows)}))
            deadline = time.monotonic() + (HOLD_S if node == doomed_node else WAIT_FOR_DOOMED_S)
            while time.monotonic() < deadline:
                if node == doomed_node:
                    time.sleep(0.05)  # held until the node is removed (its processes are killed)
                elif any(p.name.startswith(doomed_node) for p in Path(markers).iterdir()):
                    break
                else:
                    time.sleep(0.02)
            return plain(rows, cols, weights)

        head.block = observed

    return hook


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("--block", type=int, default=8)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from stlpips_rt import Scorer
    from stlpips_rt.matrix import head
    from stlpips_rt.scale.matrix import score_matrix

    files = sorted(str(p) for p in Path(args.images).glob("*.png"))
    local = Scorer(args.model, providers="cpu", threads=1).matrix(files, block=args.block)
    markers = Path(args.images) / "markers"
    markers.mkdir()

    store = 80 * 2**20
    system = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store,
                                                            "_system_config": system})
    survivor, doomed = (cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(2))
    cluster.wait_for_nodes()
    source = str(Path(__file__).resolve().parents[1] / "runtime")
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])},
                          "worker_process_setup_hook": make_setup_hook(str(markers), doomed.node_id)})
    removed: list[dict] = []

    def remove_when_it_holds_a_block() -> None:
        deadline = time.monotonic() + WAIT_FOR_DOOMED_S
        while time.monotonic() < deadline:
            held = [p for p in markers.iterdir() if p.name.startswith(doomed.node_id)]
            if held:
                removed.append(json.loads(held[0].read_text()))
                cluster.remove_node(doomed, allow_graceful=False)
                return
            time.sleep(0.02)

    start = time.perf_counter()
    watcher = threading.Thread(target=remove_when_it_holds_a_block, daemon=True)
    watcher.start()
    try:
        result = score_matrix(files, args.model, workers=2, threads=1, providers="cpu", block=args.block)
    finally:
        watcher.join(timeout=WAIT_FOR_DOOMED_S)
        ray.shutdown()
        cluster.shutdown()
    nodes = {n: ("survivor" if n == survivor.node_id else "doomed" if n == doomed.node_id else n)
             for n in result.block_nodes.values()}
    started = [json.loads(p.read_text()) for p in markers.iterdir()]
    print(json.dumps({
        "blocks": result.blocks, "expected_blocks": len(head.tasks(len(files), None, args.block)),
        "blocks_done": result.blocks_done, "block_retries": result.block_retries,
        "block_attempts_started": len(started),
        "held_on_removed_node": removed[0] if removed else None,
        "blocks_by_node": {name: sum(nodes[n] == name for n in result.block_nodes.values())
                           for name in ("survivor", "doomed")},
        "equal": bool(np.array_equal(result.matrix, local)), "rows": result.rows == files,
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
