"""Sums over blocks of cells: one kernel, two drivers (a loop in memory, a dask graph).

A pass over a cells x genes matrix is written once, as an accumulator of statistics
(``BlockSums``) that adds one block of cells at a time and merges with another
accumulator of the same kind. :func:`accumulate` runs it

- in a loop over consecutive blocks when the matrix is in memory (numpy, scipy sparse)
  or row-sliceable on disk (h5py, backed AnnData), adding into a single accumulator;
- as a dask graph when the matrix is a dask array: one accumulator per chunk of cells,
  merged into a running total as blocks finish, computed by the active scheduler -- the
  local threaded one, or a ``dask.distributed`` cluster when a ``Client`` is active. An
  accumulator marked ``shared`` is instead added into in place, one block at a time,
  on the local scheduler (one accumulator in memory however many blocks are in flight).

Both give the same sums up to the order of floating-point additions.

Inside :func:`alternating_scans`, successive passes go over the blocks in alternating
directions, each starting where the previous one ended: data read from disk that is
larger than the memory is then read first from what the page cache still holds (the
blocks read last), instead of always from the start, which a cache full of the end of
the previous pass never holds.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, Protocol, Self, TypeVar
from uuid import uuid4

import dask
import numpy as np
from dask import delayed
from dask.callbacks import Callback
from threadpoolctl import ThreadpoolController

from ._blocks import materialize, row_block, row_slices
from ._buffers import reusing_buffers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    import dask.array as da
    from dask.delayed import Delayed
    from distributed import Client
    from numpy.typing import ArrayLike
    from typing_extensions import TypeIs  # typing.TypeIs is Python 3.13+

    from .._types import RowSliceable

    Progress = Callable[[Iterable, int, str], Iterable]


def thread_count(n_jobs: int | None = None) -> int:
    """Return ``n_jobs``, or ``nsc.settings.n_jobs`` when it is None.

    The one place where the kernels read the package's thread setting.
    """
    if n_jobs is None:
        from .._settings import settings

        return settings.n_jobs
    if isinstance(n_jobs, bool) or int(n_jobs) != n_jobs or n_jobs < 1:
        msg = f"n_jobs must be a positive number of threads, got {n_jobs!r}."
        raise ValueError(msg)
    return int(n_jobs)


@contextmanager
def limit_threads(n_jobs: int | None = None) -> Iterator[int]:
    """Limit the BLAS and OpenMP thread pools to ``n_jobs`` threads inside the block.

    ``n_jobs`` defaults to ``nsc.settings.n_jobs`` (:func:`thread_count`); the block
    receives the number of threads, to size its own thread pools with. The limits are
    those of threadpoolctl (process-wide while the block runs, restored after it).

    Examples
    --------
    >>> with limit_threads() as n_jobs:  # doctest: +SKIP
    ...     with ThreadPoolExecutor(max_workers=n_jobs) as pool: ...
    """
    threads = thread_count(n_jobs)
    with _controller().limit(limits=threads):
        yield threads


_CONTROLLER: list = []


def _controller() -> ThreadpoolController:
    """Threadpoolctl's view of the loaded thread pools, found again after new imports.

    Finding the pools takes about 10 ms; the view is kept while no module is imported
    (an import may load a new BLAS or OpenMP library).
    """
    if not _CONTROLLER or _CONTROLLER[0] != len(sys.modules):
        _CONTROLLER[:] = [len(sys.modules), ThreadpoolController()]
    return _CONTROLLER[1]


class BlockSums(Protocol):
    """Statistics accumulated over blocks of cells.

    An accumulator class with ``shared = True`` promises that its ``add`` is parallel
    itself: a dask pass on the local scheduler then reads the blocks in parallel and adds
    them one at a time into ONE accumulator, instead of one accumulator per block merged
    into a running total (whose memory grows with the blocks in flight).
    """

    @property
    def add(self) -> Callable[Concatenate[slice, ...], None]:
        """Add the cells ``rows`` (positions in the whole matrix): ``add(rows, block, ...)``.

        ``block`` is their block of the matrix (dense or CSR: a ``Block``), followed by
        the same rows of each array of ``row_data`` and the blocks of the ``beside``
        matrices that :func:`accumulate` was given. The arguments after ``rows`` depend on
        the pass, so the type only says that ``rows`` (a slice) comes first.
        """

    def merge(self, other: Self) -> Self:
        """Add the statistics of ``other`` (disjoint cells) into ``self``; return ``self``."""


S = TypeVar("S", bound=BlockSums)


class PerCell:
    """Values per cell (shape ``(cells, *columns)``), gathered from blocks in any order.

    A part of an accumulator whose pass yields per-cell results rather than sums.
    """

    def __init__(self, *columns: int) -> None:
        self.columns = columns
        self.pieces: list[tuple[int, np.ndarray]] = []

    def add(self, rows: slice, values: np.ndarray) -> None:
        self.pieces.append((rows.start, values))

    def merge(self, other: PerCell) -> PerCell:
        self.pieces += other.pieces
        return self

    def values(self) -> np.ndarray:
        """All cells' values in cell order."""
        ordered = [values for _, values in sorted(self.pieces, key=lambda piece: piece[0])]
        return np.concatenate([np.empty((0, *self.columns)), *ordered])


def no_progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    """Return ``iterable`` as it is: the progress display that shows nothing."""
    return iterable


def is_dask(matrix: object) -> TypeIs[da.Array]:
    """Whether ``matrix`` is a dask array (without importing dask.array when it is not)."""
    return type(matrix).__module__.startswith("dask.array.")


class _Scans(threading.local):
    """How many passes :func:`accumulate` has run inside :func:`alternating_scans`.

    Per thread: a computation on one thread does not turn the passes of another.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.passes = 0

    def next_reversed(self) -> bool:
        """Whether the next pass goes from the last block to the first."""
        if not self.depth:
            return False
        self.passes += 1
        return self.passes % 2 == 0


_SCANS = _Scans()


@contextmanager
def alternating_scans() -> Iterator[None]:
    """Let the passes of :func:`accumulate` inside the block alternate their direction.

    The first pass goes forward; nested blocks continue the count of the outermost, whose
    start resets it, so that a computation's order of additions is the same every time.
    The count is the calling thread's.
    """
    if not _SCANS.depth:
        _SCANS.passes = 0
    _SCANS.depth += 1
    try:
        yield
    finally:
        _SCANS.depth -= 1


def accumulate(
    new_sums: Callable[[], S],
    matrix: RowSliceable,
    row_data: Sequence[RowSliceable] = (),
    *,
    block_cells: int,
    progress: Progress = no_progress,
    desc: str = "",
    beside: Sequence[RowSliceable] = (),
    n_jobs: int | None = None,
) -> S:
    """Sum the statistics ``new_sums()`` over all cells of ``matrix``, block by block.

    Parameters
    ----------
    new_sums
        Makes an empty accumulator (called once per block by the dask driver).
    matrix
        Cells x genes matrix: numpy, scipy sparse, h5py/backed, or dask.
    row_data
        Arrays with one row per cell (covariates, labels, a CSR group matrix); each
        block receives its own rows of them.
    block_cells
        Cells per block; the dask driver rechunks ``matrix`` to this many cells per chunk.
    progress, desc
        Progress display (see :mod:`normalisr_sc._progress`).
    beside
        More cells x genes matrices read in the same pass, block by block with
        ``matrix`` (all dask arrays when ``matrix`` is one, else none); each block
        receives their blocks after its rows of ``row_data``.
    n_jobs
        Threads of the local dask scheduler (default ``nsc.settings.n_jobs``); a
        ``dask.distributed`` cluster uses its own workers.
    """
    _check_beside(matrix, beside)
    reverse = _SCANS.next_reversed()
    # The blocks' large arrays (log CPM, normalised expression) reuse memory (_buffers).
    with reusing_buffers():
        if is_dask(matrix):
            dask_beside = [other for other in beside if is_dask(other)]  # all (_check_beside)
            return _accumulate_dask(
                new_sums,
                matrix,
                row_data,
                block_cells,
                progress,
                desc,
                dask_beside,
                thread_count(n_jobs),
                reverse=reverse,
            )
        return _accumulate_loop(
            new_sums, matrix, row_data, block_cells, progress, desc, beside, reverse=reverse
        )


def _accumulate_loop(
    new_sums: Callable[[], S],
    matrix: RowSliceable,
    row_data: Sequence[RowSliceable],
    block_cells: int,
    progress: Progress,
    desc: str,
    beside: Sequence[RowSliceable],
    *,
    reverse: bool,
) -> S:
    sums = new_sums()
    blocks = list(row_slices(matrix.shape[0], block_cells))
    if reverse:
        blocks.reverse()
    for rows in progress(blocks, len(blocks), desc):
        sums.add(
            rows,
            row_block(matrix, rows),
            *(data[rows] for data in row_data),
            *(row_block(other, rows) for other in beside),
        )
    return sums


def _check_beside(matrix: RowSliceable, beside: Sequence[RowSliceable]) -> None:
    for other in beside:
        if other.shape[0] != matrix.shape[0] or is_dask(other) != is_dask(matrix):
            msg = (
                "matrices read in one pass need the same cells and must all be dask arrays or none."
            )
            raise ValueError(msg)


def _block_rows(chunks: tuple[int, ...], block_cells: int) -> int | tuple[int, ...]:
    """Rows per block of a dask pass: ``chunks`` themselves when they are about ``block_cells``.

    Cells dropped chunk by chunk (:func:`~._blocks.keep_rows_lazily`) leave chunks a few
    rows short of the block size; rechunking them to ``block_cells`` would make every
    later block straddle two chunks, each computed for two blocks.
    """
    *inner, last = chunks or (0,)
    if all(block_cells // 2 <= size <= block_cells for size in inner) and last <= block_cells:
        return chunks
    return block_cells


def _sums_of_block(
    new_sums: Callable[[], S],
    rows: slice,
    block: RowSliceable | ArrayLike,
    n_beside: int,
    *row_data: Any,
) -> S:
    sums = new_sums()
    n_data = len(row_data) - n_beside
    sums.add(
        rows,
        materialize(block),
        *row_data[:n_data],
        *(materialize(other) for other in row_data[n_data:]),
    )
    return sums


def _merge(first: S, second: S) -> S:
    return first.merge(second)


def _accumulate_dask(
    new_sums: Callable[[], S],
    matrix: da.Array,
    row_data: Sequence[RowSliceable],
    block_cells: int,
    progress: Progress,
    desc: str,
    beside: Sequence[da.Array] = (),
    n_jobs: int = 1,
    *,
    reverse: bool = False,
) -> S:
    matrix = matrix.rechunk((_block_rows(matrix.chunks[0], block_cells), -1))
    starts = np.concatenate([[0], np.cumsum(matrix.chunks[0])]).astype(int)
    # The other matrices in the same chunks of cells: block i of each goes with block i.
    # Their graphs are not optimised: dask's optimisation fuses the tasks at their roots
    # into each matrix derived from them, so that the blocks of the counts they all
    # derive from would be read and computed once per matrix instead of once.
    others = [
        other.rechunk((matrix.chunks[0], -1)).to_delayed(optimize_graph=False)[:, 0]
        for other in beside
    ]
    blocks = [
        (slice(start, stop), block, [other[i] for other in others])
        for i, (start, stop, block) in enumerate(
            zip(starts[:-1], starts[1:], matrix.to_delayed(optimize_graph=False)[:, 0], strict=True)
        )
    ]
    if not blocks:
        return new_sums()
    if reverse:
        blocks.reverse()
    done = iter(progress(range(len(blocks)), len(blocks), desc))
    client = _active_client()
    sums = new_sums() if client is None else None
    if sums is not None and getattr(sums, "shared", False):
        # One accumulator for the whole pass: the blocks are read in parallel and added
        # into it one at a time (each add uses the threads itself), so that its memory
        # does not grow with the number of blocks in flight.
        shared = _Shared(sums)
        # Independent tasks run in the order of their keys, the greatest first (dask's
        # ordering): named so that the blocks are read in the order of `blocks`.
        # A fresh prefix per pass: a key must never name a task of an earlier graph.
        prefix = f"nsc-{desc or 'pass'}-{uuid4().hex}-"
        leaves = [
            delayed(shared.add)(
                rows,
                block,
                len(beside),
                *(data[rows] for data in row_data),
                *beside_blocks,
                dask_key_name=f"{prefix}{len(blocks) - position:09d}",
            )
            for position, (rows, block, beside_blocks) in enumerate(blocks)
        ]
        with _Advance({leaf.key for leaf in leaves}, done):
            dask.compute(*leaves, **_local_workers(n_jobs))
        deque(done, maxlen=0)  # exhausting the bar closes it
        return sums
    del sums
    leaves = [
        delayed(_sums_of_block)(
            new_sums, rows, block, len(beside), *(data[rows] for data in row_data), *beside_blocks
        )
        for rows, block, beside_blocks in blocks
    ]
    if client is not None:
        result = _merge_as_completed(client, leaves, done)
        deque(done, maxlen=0)  # exhausting the bar closes it
        return result
    # A chain of merges into one running total: only the total and the blocks in flight
    # are held (a binary tree of merges keeps a waiting partial sum per level).
    total = leaves[0]
    for leaf in leaves[1:]:
        total = delayed(_merge)(total, leaf)
    leaf_keys = {leaf.key for leaf in leaves}
    with _Advance(leaf_keys, done):
        (result,) = dask.compute(total, **_local_workers(n_jobs))
    deque(done, maxlen=0)  # exhausting the bar closes it
    return result


class _Shared:
    """One accumulator that the blocks of a dask pass are added into, one at a time."""

    def __init__(self, sums: BlockSums) -> None:
        self.sums = sums
        self.lock = threading.Lock()

    def add(
        self, rows: slice, block: RowSliceable | ArrayLike, n_beside: int, *row_data: Any
    ) -> None:
        n_data = len(row_data) - n_beside
        loaded = materialize(block)
        beside = [materialize(other) for other in row_data[n_data:]]
        with self.lock:
            self.sums.add(rows, loaded, *row_data[:n_data], *beside)


def _local_workers(n_jobs: int) -> dict[str, int]:
    """``num_workers`` for the local threaded scheduler, unless another one is configured."""
    default = dask.config.get("scheduler", None) in (None, "threads", "threading")
    return {"num_workers": n_jobs} if default else {}


def _merge_as_completed(client: Client, leaves: list[Delayed], done: Iterator) -> Any:
    """Merge the accumulators of ``leaves`` on the cluster in the order they finish.

    Returns the merged accumulator (of the kind ``leaves`` compute).

    Merges run before waiting blocks (higher priority). Workers still compute blocks
    ahead of the merges, so each may hold the sums of several blocks at once.
    """
    from distributed import as_completed

    futures = client.compute(leaves)
    leaf_keys = {future.key for future in futures}
    finished = as_completed(futures)
    waiting = None
    for future in finished:
        if future.key in leaf_keys:
            next(done, None)
        if waiting is None:
            waiting = future
        else:
            finished.add(client.submit(_merge, waiting, future, priority=1, pure=False))
            waiting = None
    assert waiting is not None  # one accumulator is left: leaves is never empty
    return waiting.result()


def _active_client() -> Client | None:
    """Return the active ``dask.distributed`` client, if distributed is installed and one is."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


class _Advance(Callback):
    """Local-scheduler callback advancing ``done`` as the sums of each block finish."""

    def __init__(self, leaf_keys: set, done: Iterator) -> None:
        super().__init__()
        self._leaf_keys, self._done = leaf_keys, done

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if key in self._leaf_keys:
            next(self._done, None)
