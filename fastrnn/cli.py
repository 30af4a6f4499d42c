"""The `fastrnn` command: `fastrnn info` and `fastrnn bench`."""
import argparse
import os
import platform
import sys

import numpy as np


def _info(args):
    from . import __version__, ops
    print(f"fastrnn {__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    for name, reason in ops.available_backends().items():
        print(f"  backend {name:<7} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def _bench(args):
    from threadpoolctl import threadpool_limits

    from . import benchmark
    grid = benchmark.SMOKE_GRID if args.smoke else benchmark.QUICK_GRID if args.quick else benchmark.FULL_GRID
    cells = args.cells.split(",") if args.cells else benchmark.CELLS
    dtype = np.dtype(args.dtype)
    print(f"fastrnn bench: median ms per call, {dtype}, {args.threads} thread(s); 'x..' = speedup over numpy")
    with threadpool_limits(limits=args.threads):
        benchmark.run_grid(grid, cells=cells, dtype=dtype, budget_s=0.2 if args.smoke else args.budget)
    if args.first_call:
        print("\nfirst call in a fresh process (lstm, forward+backward):")
        for backend in benchmark.usable_backends(("numpy", "numba", "cython")):
            imp, first = benchmark.first_call_latency(backend)
            print(f"  {backend:<7} import {imp * 1e3:8.1f} ms   first call {first * 1e3:8.1f} ms")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and which backends are available").set_defaults(func=_info)
    bench = sub.add_parser("bench", help="time every backend side by side against the NumPy reference")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="units 128/256, batch 1/16, T=50")
    size.add_argument("--smoke", action="store_true", help="one tiny point per cell (checks that it runs)")
    bench.add_argument("--cells", help="comma-separated subset of simple_rnn,lstm,gru")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    bench.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    bench.add_argument("--budget", type=float, default=1.0, help="seconds of timing per grid point")
    bench.add_argument("--first-call", action="store_true", help="also time the first call in a fresh process")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
