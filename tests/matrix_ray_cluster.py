"""A distance matrix on a simulated multi-node Ray cluster (a head and two worker nodes, each its own raylet, on this
machine), with one worker node removed in the middle of the job. Run by tests/test_matrix.py in a subprocess (a
multi-node Cluster cannot share a process with the session's ray.init):

    python tests/matrix_ray_cluster.py MODEL.onnx IMAGES_DIR [--remove-at N]

Prints one JSON line: blocks, blocks_done, kept block keys, whether the matrix equals the single-process
Scorer.matrix bit for bit, and which node was removed when."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("--remove-at", type=int, default=2, help="remove a worker node after this many blocks")
    parser.add_argument("--block", type=int, default=8)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from stlpips_rt import Scorer
    from stlpips_rt.matrix import head
    from stlpips_rt.scale.matrix import score_matrix

    files = sorted(str(p) for p in Path(args.images).glob("*.png"))
    local = Scorer(args.model, providers="cpu", threads=1).matrix(files, block=args.block)

    store = 80 * 2**20
    system = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store,
                                                            "_system_config": system})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(2)]
    cluster.wait_for_nodes()
    source = str(Path(__file__).resolve().parents[1] / "runtime")
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}})
    events: list[str] = []
    removed: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        events.append(f"{stage} {done}/{total}")
        if stage == "blocks" and done == args.remove_at and len(workers) == 2:
            node = workers.pop()
            removed.append(node.node_id)
            cluster.remove_node(node, allow_graceful=False)
            events.append(f"removed worker node {node.node_id[:8]} after {done} blocks")

    start = time.perf_counter()
    try:
        result = score_matrix(files, args.model, workers=2, threads=1, providers="cpu", block=args.block,
                              progress=progress)
    finally:
        ray.shutdown()
        cluster.shutdown()
    expected = len(head.tasks(len(files), None, args.block))
    print(json.dumps({
        "blocks": result.blocks, "expected_blocks": expected, "blocks_done": result.blocks_done,
        "block_retries": result.block_retries, "chunk_retries": result.chunk_retries,
        "equal": bool(np.array_equal(result.matrix, local)), "max_abs": float(np.abs(result.matrix - local).max()),
        "rows": result.rows == files, "nodes_used": len(set(result.block_nodes.values())),
        "blocks_from_removed_node": sum(n in removed for n in result.block_nodes.values()),
        "removed": any(e.startswith("removed") for e in events), "events": events,
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
