"""Multi-process encode on CUDA: a pool of worker processes (default two on cuda:0) against one process,
all-MiniLM-L6-v2 in fp16 on the first 4,000 unique STS-B train sentences. Prints and writes (``$OUT`` or the
current folder) whether the vectors are equal, in input order, and whether any worker outlived the pool.

    python benchmarks/pool_cuda.py --devices cuda:0 cuda:0   # STS-B from embedhub.data (`embedhub data stsb`)
"""
import json
import os
import time

import numpy as np

import embedhub
from embedhub.data import read_stsb

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stsb", default=None, help="STS-B folder (default: where embedhub.data finds it)")
    parser.add_argument("--devices", nargs="+", default=["cuda:0", "cuda:0"])
    args = parser.parse_args()
    texts = list(dict.fromkeys(a for a, _, _ in read_stsb("train", folder=args.stsb)))[:4000]
    model = embedhub.load("all-MiniLM-L6-v2", device="cuda", dtype="float16")
    t0 = time.perf_counter()
    one = model.encode(texts, batch_size=64)
    t1 = time.perf_counter()
    with model.start_multi_process_pool(args.devices) as pool:
        pids = list(pool.pids)
        t2 = time.perf_counter()
        two = model.encode(texts, batch_size=64, pool=pool, chunk_size=500)
        t3 = time.perf_counter()
        q = model.encode_query(texts[:50], pool=pool)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    cos = (one * two).sum(1) / np.linalg.norm(one, axis=1) / np.linalg.norm(two, axis=1)
    out = {"texts": len(texts), "devices": args.devices, "max_abs_diff": float(np.abs(one - two).max()),
           "min_cosine": float(cos.min()), "equal": bool(np.array_equal(one, two)), "one_process_s": t1 - t0,
           "pool_s": t3 - t2, "query_shape": list(q.shape), "workers_left": alive,
           "versions": {"torch": __import__("torch").__version__}}
    print(json.dumps(out, indent=1))
    json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "pool_cuda.json"), "w"), indent=1)
