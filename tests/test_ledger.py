"""The chunk -> book ledger: which books are finished when chunks settle."""

from __future__ import annotations

from narrate.ledger import Ledger
from narrate.plan import PlannedBook
from narrate.records import Book, Chunk, ChunkOutcome


def book(book_id: str, *chunk_ids: str) -> PlannedBook:
    chunks = tuple(Chunk(cid, book_id, i, f"text {cid}") for i, cid in enumerate(chunk_ids))
    return PlannedBook(Book(book_id, row=1, text="..."), chunks)


def ok(chunk_id: str, attempts: int = 1) -> ChunkOutcome:
    return ChunkOutcome(chunk_id, None, attempts)


def failed(chunk_id: str, error: str = "still speaking at its cap") -> ChunkOutcome:
    return ChunkOutcome(chunk_id, error, 1)


def test_a_book_finishes_when_its_last_pending_chunk_settles() -> None:
    ledger = Ledger()
    job, to_synthesize = ledger.add_book(book("b1", "a", "b", "c"), "hash", {"a", "c"})
    assert [c.chunk_id for c in to_synthesize] == ["a", "c"]
    assert job.waiting == {"a", "c"}
    assert ledger.settle(ok("a")) == []
    (finished,) = ledger.settle(ok("c"))
    assert finished.book_id == "b1" and finished.error is None and finished.content_hash == "hash"
    assert len(ledger) == 0


def test_a_book_with_every_chunk_cached_is_settled_at_once_and_not_kept() -> None:
    ledger = Ledger()
    job, to_synthesize = ledger.add_book(book("b1", "a", "b"), "hash", set())
    assert not job.waiting and to_synthesize == []
    assert len(ledger) == 0


def test_a_chunk_shared_by_two_books_is_synthesized_once_and_finishes_both() -> None:
    ledger = Ledger()
    _, first = ledger.add_book(book("b1", "shared", "x"), "h1", {"shared", "x"})
    assert ledger.awaited({"shared", "y"}) == {"shared"}
    _, second = ledger.add_book(book("b2", "shared", "y"), "h2", {"shared", "y"})
    assert [c.chunk_id for c in first] == ["shared", "x"]
    assert [c.chunk_id for c in second] == ["y"]  # "shared" is already awaited
    assert ledger.settle(ok("x")) == []
    assert ledger.settle(ok("y")) == []
    finished = ledger.settle(ok("shared"))
    assert sorted(j.book_id for j in finished) == ["b1", "b2"]


def test_a_chunk_repeated_within_a_book_is_awaited_once() -> None:
    ledger = Ledger()
    _, to_synthesize = ledger.add_book(book("b1", "a", "a", "b"), "hash", {"a", "b"})
    assert [c.chunk_id for c in to_synthesize] == ["a", "b"]
    assert ledger.settle(ok("b")) == []
    assert [j.book_id for j in ledger.settle(ok("a"))] == ["b1"]


def test_a_failed_chunk_fails_its_book_with_the_first_error_and_its_index() -> None:
    ledger = Ledger()
    ledger.add_book(book("b1", "a", "b", "c"), "hash", {"a", "b", "c"})
    ledger.settle(failed("b", "first problem"))
    ledger.settle(failed("c", "second problem"))
    (finished,) = ledger.settle(ok("a"))
    assert finished.error == "chunk 1: first problem"


def test_retries_are_summed_over_a_books_chunks() -> None:
    ledger = Ledger()
    ledger.add_book(book("b1", "a", "b"), "hash", {"a", "b"})
    ledger.settle(ok("a", attempts=3))
    (finished,) = ledger.settle(ok("b", attempts=2))
    assert finished.retries == 3


def test_an_outcome_for_a_chunk_nobody_waits_for_finishes_nothing() -> None:
    ledger = Ledger()
    ledger.add_book(book("b1", "a"), "hash", {"a"})
    assert ledger.settle(ok("zzz")) == []
    assert len(ledger) == 1
