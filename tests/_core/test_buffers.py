"""The pool of block-sized buffers: reuse only of memory no array refers to any more."""

from __future__ import annotations

import numpy as np
import pytest

from normalisr_sc._core import _buffers
from normalisr_sc._core._buffers import MIN_POOLED_BYTES, block_array, reusing_buffers
from normalisr_sc._core._counts import lcpm_block

LARGE = (MIN_POOLED_BYTES // 8 // 64, 64)  # float64 rows of exactly the pooled size


def test_outside_the_context_arrays_come_from_numpy() -> None:
    array = block_array(LARGE)
    assert array.base is None
    assert not _buffers._POOL.buffers


def test_freed_buffer_is_reused_and_kept_one_is_not() -> None:
    with reusing_buffers():
        first = block_array(LARGE)
        assert np.shares_memory(first, _buffers._POOL.buffers[0])
        del first
        second = block_array(LARGE)
        # Holding the buffer here would count as a use of it: look it up each time.
        assert len(_buffers._POOL.buffers) == 1
        assert np.shares_memory(second, _buffers._POOL.buffers[0])
        # `second` is alive, and so is a view derived from it: a third array is new memory.
        kept = second[1:, ::2].T
        del second
        third = block_array(LARGE)
        assert not np.shares_memory(third, kept)
    assert not _buffers._POOL.buffers


def test_small_and_oversized_requests_are_not_served_from_a_larger_buffer() -> None:
    with reusing_buffers():
        block_array((LARGE[0] * 4, LARGE[1]))  # dropped at once: a free buffer 4x LARGE
        # Less than half of the free buffer: a buffer of its own rather than a quarter.
        block_array(LARGE)
        assert [buffer.nbytes for buffer in _buffers._POOL.buffers] == [
            4 * MIN_POOLED_BYTES,
            MIN_POOLED_BYTES,
        ]
        small = block_array((4, 4))
        assert small.base is None


def test_pool_is_cleared_only_by_the_outermost_context() -> None:
    with reusing_buffers():
        with reusing_buffers():
            block_array(LARGE)
        assert len(_buffers._POOL.buffers) == 1
    assert not _buffers._POOL.buffers


def test_block_array_has_the_asked_shape_and_dtype() -> None:
    with reusing_buffers():
        array = block_array((LARGE[0], LARGE[1] // 2), np.int64)
        assert array.shape == (LARGE[0], LARGE[1] // 2)
        assert array.dtype == np.int64
        assert array.flags.c_contiguous
        assert array.flags.writeable


def test_pool_full_falls_back_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_buffers, "MAX_BUFFERS", 1)
    with reusing_buffers():
        held = block_array(LARGE)
        other = block_array(LARGE)
        assert not np.shares_memory(held, other)
        assert len(_buffers._POOL.buffers) == 1


def test_lcpm_blocks_are_unchanged_by_reuse() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(LARGE[0], 64)).astype(np.float32)
    expected = lcpm_block(counts, 1e4)
    with reusing_buffers():
        # Dirty a buffer first, so an uninitialised reuse would show.
        dirty = block_array(expected.shape)
        dirty.fill(np.nan)
        del dirty
        reused = lcpm_block(counts, 1e4)
        np.testing.assert_array_equal(reused, expected)
        kept = reused
        again = lcpm_block(counts * 2, 1e4)
        assert not np.shares_memory(kept, again)
        np.testing.assert_array_equal(kept, expected)
