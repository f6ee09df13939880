"""Chunked, seeded, parallel generation shared by the generated datasets (synth-digits, avatars).

The determinism contract lives here: work is cut into fixed-size chunks, chunk c draws from its own
stream SeedSequence(seed, spawn_key=(c,)), and results are collected in chunk order, so the bytes
do not depend on how many workers ran them, and generating n items is a prefix of generating m > n.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

J = TypeVar("J")
R = TypeVar("R")


def default_workers() -> int:
    """The cores this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def size_from_env(variable: str, default: int, noun: str = "images") -> int:
    """A split's size from an environment variable (tests use tiny splits this way), else the default."""
    from ..errors import DataError

    raw = os.environ.get(variable)
    if raw is None or raw.strip() == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n <= 0:
        raise DataError(f"{variable}={raw!r}: must be a positive whole number of {noun}")
    return n


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The independent random stream of one chunk: the same for every worker count and every n."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk,)))


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Items in each chunk of n: full chunks, then a ragged last one."""
    return [min(chunk, n - start) for start in range(0, n, chunk)]


def run_chunks(fn: Callable[[J], R], jobs: Iterable[J], workers: int) -> Iterator[R]:
    """fn(job) for each job, in order: in-process for one worker or inside a daemon process (a pool or
    DataLoader worker may not have children), else a spawn-context process pool (spawn, not fork: the
    caller may hold torch threads that a fork would copy mid-flight). `fn` must be a module-level
    function, since spawned workers import it by name."""
    if workers <= 1 or multiprocessing.current_process().daemon:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(fn, jobs)
