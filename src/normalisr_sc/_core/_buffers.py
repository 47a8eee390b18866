"""Memory for the large arrays made anew for every block of a pass, reused between blocks.

A pass over a matrix streamed in blocks makes the same few block-sized arrays for each
block (its log CPM, its normalised expression, the index of its counts), hundreds of MB
each. Fresh memory of that size comes from the operating system page by page, zeroed,
and, once the page cache fills the memory (a data set on disk larger than it), only
after the kernel has reclaimed cache and compacted pages for it: on a 1M-cell screen
streamed from disk, that was half of the pipeline's CPU time. Inside
:func:`reusing_buffers` (every pass of :func:`~._reduce.accumulate`), :func:`block_array`
gives views of buffers kept here instead, and a buffer is given out again once no array
refers to it.

Whether an array still refers to a buffer is read off the buffer's reference count:
every numpy view of it, however derived, holds a reference to the buffer itself (numpy
collapses a view's ``base`` to the array owning the memory), and so does anything
holding such a view. A buffer someone keeps is therefore never handed out again; it is
released with the pool, when the outermost :func:`reusing_buffers` ends.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import DTypeLike

#: Arrays smaller than this come from numpy as usual (the C library's allocator reuses
#: memory of that size itself).
MIN_POOLED_BYTES = 1 << 23
#: Most buffers the pool keeps: a few per block in flight on a few threads. When all are
#: in use, a new array comes from numpy as usual.
MAX_BUFFERS = 16


def _references(buffers: list[np.ndarray], position: int) -> int:
    """Return the reference count of ``buffers[position]``, as seen from here."""
    return sys.getrefcount(buffers[position])


#: What :func:`_references` counts for a buffer held only by its list (measured, since
#: the interpreter's own temporary references differ between versions).
_UNUSED = _references([np.empty(1)], 0)


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.buffers: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray | None:
        """Return a free buffer of at least ``nbytes`` (at most twice that), or None."""
        with self.lock:
            if not self.active:
                return None
            sizes = [buffer.nbytes for buffer in self.buffers]
            free = [
                position
                for position, size in enumerate(sizes)
                if nbytes <= size <= 2 * nbytes and _references(self.buffers, position) == _UNUSED
            ]
            if free:
                return self.buffers[min(free, key=sizes.__getitem__)]
            if len(self.buffers) < MAX_BUFFERS:
                self.buffers.append(np.empty(nbytes, dtype=np.uint8))
                return self.buffers[-1]
            return None


_POOL = _Pool()


@contextmanager
def reusing_buffers() -> Iterator[None]:
    """Let :func:`block_array` reuse buffers inside the block (nested blocks share them).

    The buffers are freed when the outermost block ends.
    """
    with _POOL.lock:
        _POOL.active += 1
    try:
        yield
    finally:
        with _POOL.lock:
            _POOL.active -= 1
            if not _POOL.active:
                _POOL.buffers.clear()


def block_array(shape: tuple[int, ...], dtype: DTypeLike = np.float64) -> np.ndarray:
    """Return an uninitialised C-contiguous array, like ``np.empty(shape, dtype)``.

    Inside :func:`reusing_buffers`, a large one is a view of a buffer of the pool that no
    other array refers to any more.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = _POOL.take(nbytes) if nbytes >= MIN_POOLED_BYTES else None
    if buffer is None:
        return np.empty(shape, dtype=dtype)
    return buffer[:nbytes].view(dtype).reshape(shape)
