"""The `fastrnn` command: `fastrnn info`, `fastrnn bench` and `fastrnn bench --peers`."""
import argparse
import os
import platform
import sys

import numpy as np


def _info(args):
    from . import __version__, kernels, ops
    print(f"fastrnn {__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    for name, reason in ops.available_backends().items():
        detail = ""
        if name == "cython" and reason is None:  # which instruction-set build it loaded (fastrnn.kernels)
            module = ops.KERNELS[("lstm", "cython", np.dtype(np.float32))]._load().__name__
            suffix = module[len("fastrnn.kernels.cython_lstm"):]
            detail = f" ({kernels.ISA_NAMES[kernels.ISA_SUFFIXES.index(suffix)]} build: cython_*{suffix})"
        print(f"  backend {name:<7} {'available' + detail if reason is None else 'unavailable: ' + reason}")
    return 0


def _thread_counts(text):
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads must be positive integers separated by commas, e.g. 1,2; "
                                         f"got {text!r}")
    return counts


def _bench(args):
    from . import benchmark, peers
    cells = args.cells.split(",") if args.cells else benchmark.CELLS
    unknown = [c for c in cells if c not in benchmark.CELLS]
    if unknown:
        print(f"fastrnn bench: --cells must be a subset of {','.join(benchmark.CELLS)}; got {args.cells!r}",
              file=sys.stderr)
        return 2
    if args.peers:
        return _bench_peers(args, cells)
    if args.plot or args.json:
        print("fastrnn bench: --plot and --json need --peers", file=sys.stderr)
        return 2
    grid = benchmark.SMOKE_GRID if args.smoke else benchmark.QUICK_GRID if args.quick else benchmark.FULL_GRID
    dtype = np.dtype(args.dtype)
    budget = 0.2 if args.smoke else (1.0 if args.budget is None else args.budget)
    for n in args.threads:
        print(f"fastrnn bench: median ms per call, {dtype}, {n} thread(s); 'x..' = speedup over numpy")
        with peers.Threads(n, peers=False):  # fastrnn.set_num_threads(n), its BLAS at 1 thread, other BLAS at n
            benchmark.run_grid(grid, cells=cells, dtype=dtype, budget_s=budget)
    if args.first_call:
        print("\nfirst call in a fresh process (lstm, forward+backward):")
        for backend in benchmark.usable_backends(("numpy", "numba", "cython")):
            imp, first = benchmark.first_call_latency(backend)
            print(f"  {backend:<7} import {imp * 1e3:8.1f} ms   first call {first * 1e3:8.1f} ms")
    return 0


def _bench_peers(args, cells):
    from . import benchmark, peers
    if args.dtype != "float32":
        print("fastrnn bench --peers: the peers are compared in float32 only", file=sys.stderr)
        return 2
    grid = (benchmark.PEERS_SMOKE_GRID if args.smoke else benchmark.PEERS_QUICK_GRID if args.quick
            else benchmark.PEERS_FULL_GRID)
    if args.smoke:
        rounds, budget = 3, 0.05
    else:
        rounds, budget = args.rounds, (0.25 if args.budget is None else args.budget)
    missing = [n for n, why in peers.peer_status().items() if why is not None]
    print(f"fastrnn bench --peers: fastrnn vs {', '.join(peers.PEERS)}, {os.cpu_count()} CPUs, threads "
          f"{','.join(map(str, args.threads))}")
    if missing:
        print(f"note: {', '.join(missing)} not installed: skipped (pip install -e '.[interop]' adds them)")
    result = benchmark.run_peers(grid, cells=cells, threads=args.threads, min_rounds=rounds, budget_s=budget,
                                 latency=not args.no_latency, wait_idle_s=args.wait_idle)
    if args.json:
        benchmark.save_json(result, args.json)
        print(f"results: {args.json}")
    if args.plot:
        try:
            benchmark.plot_peers(result, args.plot)
            print(f"plot: {args.plot}")
        except ImportError as exc:
            print(f"plot skipped: matplotlib is not installed ({exc})", file=sys.stderr)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and which backends are available").set_defaults(func=_info)
    bench = sub.add_parser("bench", help="time every backend side by side against the NumPy reference, or "
                                          "(--peers) against torch and onnxruntime")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a small grid: units 128/256, batch 1/16, T=50 (--peers: units 128/512, batch 1/16/64)")
    size.add_argument("--smoke", action="store_true", help="one tiny point per cell (checks that it runs)")
    bench.add_argument("--peers", action="store_true",
                       help="fastrnn vs torch vs onnxruntime on the same inputs, ratios and targets")
    bench.add_argument("--cells", help="comma-separated subset of simple_rnn,lstm,gru")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    bench.add_argument("--threads", type=_thread_counts, default=[1],
                       help="thread count(s), comma-separated, e.g. 1,2 (default 1): fastrnn.set_num_threads (its "
                            "BLAS then on 1 thread) and other BLAS pools; with --peers also torch's and onnxruntime's")
    bench.add_argument("--budget", type=float, default=None,
                       help="seconds of timing per grid point (default 1.0; --peers 0.25, after --rounds)")
    bench.add_argument("--rounds", type=int, default=7, help="--peers: minimum round-robin rounds per point")
    bench.add_argument("--plot", metavar="PNG", help="--peers: write a plot of time vs batch per cell")
    bench.add_argument("--json", metavar="PATH", help="--peers: also write the results as JSON")
    bench.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                       help="--peers: on a shared machine, wait up to S seconds before each point until other "
                            "processes are idle, and time a disturbed point once more")
    bench.add_argument("--no-latency", action="store_true", help="--peers: skip the T=1 per-call latency section")
    bench.add_argument("--first-call", action="store_true", help="also time the first call in a fresh process")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
