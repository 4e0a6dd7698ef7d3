"""The FIFO queue: order, wrap-around, the released code's tail-drop, persistence in state_dict."""

from __future__ import annotations

import pytest
import torch

from mnclglf.models.queue import Queue


def rows(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1).repeat(1, 2)


def test_fifo_order_and_wrap_around() -> None:
    q = Queue(5, 2, overflow="wrap")
    q.push(rows(0, 2))
    q.push(rows(2, 2))
    assert q.bank[:4, 0].tolist() == [0, 1, 2, 3]
    q.push(rows(4, 2))  # row 5 wraps to the front, overwriting the oldest entry
    assert q.bank[:, 0].tolist() == [5, 1, 2, 3, 4]
    assert int(q.ptr) == 1
    q.push(rows(6, 3))
    assert q.bank[:, 0].tolist() == [5, 6, 7, 8, 4]


def test_drop_overflow_fills_tail_then_restarts() -> None:
    q = Queue(5, 2, overflow="drop")
    q.push(rows(0, 3))
    q.push(rows(3, 3))  # 3, 4 fill the tail; 5 is dropped
    assert q.bank[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert int(q.ptr) == 0
    q.push(rows(10, 2))
    assert q.bank[:, 0].tolist() == [10, 11, 2, 3, 4]


def test_drop_overflow_exactly_filling_batches_wrap_the_pointer() -> None:
    """The released configurations fill Q exactly (16384/256, 1024/128): the pointer then restarts
    at 0 and the next batch is kept, not thrown away past the end."""
    q = Queue(4, 2, overflow="drop")
    q.push(rows(0, 2))
    q.push(rows(2, 2))  # ptr + n == size
    assert int(q.ptr) == 0
    q.push(rows(10, 2))
    assert q.bank[:, 0].tolist() == [10, 11, 2, 3]
    assert int(q.ptr) == 2


def test_queue_travels_in_state_dict() -> None:
    q = Queue(4, 2)
    q.push(rows(7, 3))
    r = Queue(4, 2)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.bank, q.bank) and int(r.ptr) == 3


def test_batch_larger_than_queue() -> None:
    with pytest.raises(ValueError):
        Queue(2, 2).push(rows(0, 3))


def drop_push_reference(bank: torch.Tensor, ptr: torch.Tensor, z: torch.Tensor) -> None:
    """The drop mode as first written, with a boolean mask (a host sync on a GPU): the reference."""
    size, n = bank.shape[0], z.shape[0]
    pos = ptr + torch.arange(n)
    keep = pos < size
    bank[pos.clamp(max=size - 1)[keep]] = z[keep]
    ptr.copy_(torch.where(ptr + n >= size, torch.zeros_like(ptr), ptr + n))


@pytest.mark.parametrize("size", [1, 5, 8])
def test_drop_overflow_matches_the_masked_reference_at_every_boundary(size: int) -> None:
    """Every start and batch size, the overflow boundary included: the same rows and pointer."""
    for start in range(size):
        for n in range(1, size + 1):
            q = Queue(size, 3, overflow="drop")
            q.ptr.fill_(start)
            bank, ptr = q.bank.clone(), q.ptr.clone()
            z = torch.randn(n, 3, generator=torch.Generator().manual_seed(10 * start + n))
            q.push(z)
            drop_push_reference(bank, ptr, z)
            assert torch.equal(q.bank, bank) and torch.equal(q.ptr, ptr), (start, n)


def test_drop_overflow_matches_the_masked_reference_over_a_run() -> None:
    q, gen = Queue(7, 2, overflow="drop"), torch.Generator().manual_seed(0)
    bank, ptr = q.bank.clone(), q.ptr.clone()
    for n in [3, 3, 3, 7, 1, 6, 2, 5, 4]:
        z = torch.randn(n, 2, generator=gen)
        q.push(z)
        drop_push_reference(bank, ptr, z)
        assert torch.equal(q.bank, bank) and torch.equal(q.ptr, ptr), n
