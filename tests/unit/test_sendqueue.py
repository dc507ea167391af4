"""The embedded server's send queue: the bytes go out exactly as written, large ones uncopied."""

from __future__ import annotations

import itertools

import pytest

from ocps_jobs.http.sendqueue import JOIN_BELOW_BYTES, SendQueue

MIB = 1024 * 1024
PATTERN = bytes(range(256))


def data_of(size: int, seed: int) -> bytes:
    """``size`` bytes that differ with ``seed`` and with the position."""
    rotated = PATTERN[seed % 256 :] + PATTERN[: seed % 256]
    return (rotated * (size // 256 + 1))[:size]


def drain(queue: SendQueue, sizes: list[int]) -> bytes:
    """What a socket taking ``sizes`` bytes per send (cycling) would receive."""
    received = bytearray()
    index = 0
    while queue:
        view = queue.get(1 << 22)
        taken = min(len(view), sizes[index % len(sizes)])
        received += view[:taken]
        queue.skip(taken, True)
        index += 1
    return bytes(received)


def test_large_chunks_are_sent_from_the_bytes_written_not_a_copy() -> None:
    chunk = data_of(MIB, 1)
    queue = SendQueue()
    queue.append(chunk)
    view = queue.get(4 * MIB)
    assert isinstance(view, memoryview)
    assert view.obj is chunk
    assert len(view) == MIB == len(queue)


def test_small_writes_are_joined_so_a_small_answer_leaves_in_one_send() -> None:
    queue = SendQueue()
    queue.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    queue.append(b"{}")
    assert bytes(queue.get(1 << 22)) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    big = bytes(JOIN_BELOW_BYTES)
    queue.append(big)
    queue.skip(len(queue.get(1 << 22)))
    assert queue.get(1 << 22).obj is big  # not joined to the small ones before it


@pytest.mark.parametrize("sizes", [[1], [7, 65536], [300_000], [MIB + 3, 12], [1 << 22]])
def test_partial_sends_deliver_every_byte_once_and_in_order(sizes: list[int]) -> None:
    lengths = itertools.cycle([1, 100, 70_000, MIB, 3, MIB + 5, 65_535])
    writes = [b"headers\r\n\r\n"] + [data_of(next(lengths), seed) for seed in range(12)]
    queue = SendQueue()
    for data in writes:
        queue.append(data)
    assert len(queue) == sum(map(len, writes))
    assert drain(queue, sizes) == b"".join(writes)
    assert len(queue) == 0 and not queue
    assert queue.get(10) == b""


def test_mutable_buffers_are_copied_when_queued() -> None:
    data = bytearray(b"x" * (2 * JOIN_BELOW_BYTES))
    queue = SendQueue()
    queue.append(data)
    data[:1] = b"y"
    assert bytes(queue.get(1))[:1] == b"x"


def test_skipping_more_than_is_queued_is_refused_and_close_drops_everything() -> None:
    queue = SendQueue()
    queue.append(b"abc")
    with pytest.raises(ValueError, match="skip 4 bytes"):
        queue.skip(4)
    queue.append(bytes(MIB))
    queue.close()
    assert len(queue) == 0 and queue.get() == b""
