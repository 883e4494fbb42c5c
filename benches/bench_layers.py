"""FastEmbedding / FastMultiEmbedding vs torch.nn.Embedding: forward + backward + SGD step.

Runs both in the same process and prints time per step and the ratio nn / vecfusion (> 1 means
vecfusion is faster). Collision regimes of the original FastEmbedding test: uniform ids; 0.5^k
(half the batch on one id, a quarter on the next, ...); all the same id; 80% uniform + 20% one id.

    python benches/bench_layers.py            # a small grid, a few minutes on 2 CPU cores
    python benches/bench_layers.py --full     # num 1e4..1e6, dims 8..300, batch 256..65536
    python benches/bench_layers.py --device cuda

Prints only; never asserts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import torch
from torch import nn

from vecfusion.torch import FastEmbedding, FastMultiEmbedding


def ids(regime: str, num: int, batch: int, g: torch.Generator) -> torch.Tensor:
    if regime == "uniform":
        x = torch.randint(0, num, (batch,), generator=g)
    elif regime == "pow2":  # 0.5^k: half on id 0, a quarter on id 1, ...
        k = torch.clamp(torch.floor(-torch.log2(1 - torch.rand(batch, generator=g))), max=num - 1)
        x = k.long()
    elif regime == "same":
        x = torch.full((batch,), num // 2, dtype=torch.long)
    elif regime == "mix80":
        x = torch.randint(0, num, (batch,), generator=g)
        x[torch.rand(batch, generator=g) < 0.2] = 7 % num
    else:
        raise ValueError(regime)
    return x


def timeit_pair(step_a, step_b, device: str, min_time: float, max_reps: int) -> tuple[float, float]:
    """Best time per call of two steps, measured alternately so that load changes on a shared
    machine hit both alike (the minimum is the least disturbed run)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        step_a()
        step_b()
    sync()
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    while len(ta) < max_reps and (time.perf_counter() - start < min_time or len(ta) < 5):
        for step, out in ((step_a, ta), (step_b, tb)):
            t0 = time.perf_counter()
            step()
            sync()
            out.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def train_step(module: nn.Module, x: torch.Tensor, sparse: bool):
    opt = torch.optim.SGD(module.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        out = module(x)
        out.sum().backward()
        opt.step()

    return step


def floor_step(num: int, dim: int, device: str):
    """What every dense step costs whatever the embedding: the step of a "lookup" of one row
    (an autograd forward and backward, whose gradient is a zeroed (num, dim) tensor with one row
    set) and the SGD update of the whole table. nn / floor is the most any dense embedding
    trained this way can gain over nn.Embedding."""
    p = nn.Parameter(torch.randn(num, dim, device=device))
    opt = torch.optim.SGD([p], lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        p[:1].sum().backward()
        opt.step()

    return step


def bench_single(args) -> None:
    print(f"\n## FastEmbedding vs nn.Embedding ({args.device}, {torch.get_num_threads()} threads, torch {torch.__version__})")
    print("(bound: nn dense / the floor step, a one-row lookup's forward, backward and SGD update)")
    print(f"{'regime':8} {'num':>8} {'dim':>4} {'batch':>6} | {'nn dense':>9} {'fast':>9} {'ratio':>6} {'bound':>6} | {'nn sparse':>9} {'fast':>9} {'ratio':>6}")
    g = torch.Generator().manual_seed(0)
    ratios_dense: dict[str, list[float]] = {}
    bounds: dict[str, list[float]] = {}
    for num, dim, batch in itertools.product(args.nums, args.dims, args.batches):
        for regime in args.regimes:
            x = ids(regime, num, batch, g).to(args.device)
            row = [f"{regime:8} {num:>8} {dim:>4} {batch:>6}"]
            for sparse in (False, True):
                torch.manual_seed(0)
                ref = nn.Embedding(num, dim, sparse=sparse, device=args.device)
                fast = FastEmbedding(num, dim, sparse=sparse, device=args.device)
                t_ref, t_fast = timeit_pair(
                    train_step(ref, x, sparse), train_step(fast, x, sparse), args.device, args.min_time, args.max_reps
                )
                cell = f"{t_ref * 1e3:8.3f}m {t_fast * 1e3:8.3f}m {t_ref / t_fast:6.2f}"
                if not sparse:
                    key = "dim<=64" if dim <= 64 else "dim>64"
                    ratios_dense.setdefault(key, []).append(t_ref / t_fast)
                    t_ref2, t_floor = timeit_pair(
                        train_step(ref, x, sparse), floor_step(num, dim, args.device), args.device, args.min_time,
                        args.max_reps,
                    )
                    bounds.setdefault(key, []).append(t_ref2 / t_floor)
                    cell += f" {t_ref2 / t_floor:6.2f}"
                row.append(cell)
                del ref, fast
            print(" | ".join(row), flush=True)
    for k, v in ratios_dense.items():
        print(
            f"dense {k}: min ratio {min(v):.2f}, geo-mean {statistics.geometric_mean(v):.2f} "
            f"(bound: geo-mean {statistics.geometric_mean(bounds[k]):.2f}, max {max(bounds[k]):.2f})"
        )


def bench_multi(args) -> None:
    print(f"\n## FastMultiEmbedding vs list of nn.Embedding + cat ({args.device})")
    print(f"{'tables':>6} {'batch':>6} | {'nn list':>9} {'multi':>9} {'ratio':>6} {'bound':>6}")
    g = torch.Generator().manual_seed(1)
    for tables, batch in itertools.product(args.tables, args.batches):
        dims = torch.randint(1, 33, (tables,), generator=g).tolist()
        nums = torch.randint(100, args.multi_rows + 1, (tables,), generator=g).tolist()
        x = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in nums], 1).to(args.device)
        embs = nn.ModuleList([nn.Embedding(n, d, device=args.device) for n, d in zip(nums, dims)])

        class ListCat(nn.Module):
            def forward(self, x):
                return torch.cat([e(x[:, t]) for t, e in enumerate(embs)], 1)

        ref = ListCat()
        ref.embs = embs
        multi = FastMultiEmbedding(nums, dims, device=args.device)
        t_ref, t_fast = timeit_pair(
            train_step(ref, x, False), train_step(multi, x, False), args.device, args.min_time, args.max_reps
        )
        numel = sum(n * d for n, d in zip(nums, dims))
        t_ref2, t_floor = timeit_pair(
            train_step(ref, x, False), floor_step(numel, 1, args.device), args.device, args.min_time, args.max_reps
        )
        print(
            f"{tables:>6} {batch:>6} | {t_ref * 1e3:8.3f}m {t_fast * 1e3:8.3f}m {t_ref / t_fast:6.2f} "
            f"{t_ref2 / t_floor:6.2f}",
            flush=True,
        )


def steady_malloc() -> None:
    """Re-run this process with glibc's heap thresholds fixed (Linux). Each step frees and
    allocates a table-sized dense gradient on both sides; with glibc's adaptive thresholds, a
    gradient above 128 KiB is at times taken from fresh memory (mmap or a heap the allocator
    just trimmed) and pays a page fault per 4 KiB (measured here: 500 faults, +1.4 ms a step
    at 10,000 x 300), at random for one side or the other depending on what ran before. Fixed
    thresholds (no trimming, mmap only above 32 MiB) give both sides the same warm memory."""
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_=str(1 << 40), MALLOC_MMAP_THRESHOLD_=str(32 << 20))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="the full grid of the issue (long on CPU)")
    p.add_argument("--nums", type=int, nargs="+")
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--regimes", nargs="+", default=["uniform", "pow2", "same", "mix80"])
    p.add_argument("--tables", type=int, nargs="+", default=[10, 20])
    p.add_argument("--multi-rows", type=int, default=10_000, help="largest table of the multi-table runs")
    p.add_argument("--min-time", type=float, default=0.15, help="seconds measured per case")
    p.add_argument("--max-reps", type=int, default=50)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--skip-single", action="store_true")
    p.add_argument("--skip-multi", action="store_true")
    p.add_argument(
        "--adaptive-malloc", action="store_true",
        help="keep glibc's adaptive heap trimming (see steady_malloc: one side or the other then pays "
        "page faults for its fresh gradient, at random)",
    )
    args = p.parse_args()
    if not args.adaptive_malloc:
        steady_malloc()
    import vecfusion as vf

    print(f"# bench_layers: vecfusion {vf.__version__} ({vf.build_profile}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"glibc heap: MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'adaptive')}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'adaptive')}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full:
        args.nums = args.nums or [10_000, 100_000, 1_000_000]
        args.dims = args.dims or [8, 32, 64, 128, 300]
        args.batches = args.batches or [256, 4096, 65536]
    else:
        args.nums = args.nums or [10_000, 100_000]
        args.dims = args.dims or [8, 64, 300]
        args.batches = args.batches or [256, 8192]
    if not args.skip_single:
        bench_single(args)
    if not args.skip_multi:
        bench_multi(args)


if __name__ == "__main__":
    main()
