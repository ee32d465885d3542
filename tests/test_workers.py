"""Device workers: an engine failing unexpectedly fails its batch's chunks, not the run."""

from __future__ import annotations

import os
import queue
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

import narrate.gate
import narrate.quality
import narrate.synth
from narrate.config import EngineConfig
from narrate.records import Batch, Chunk, ChunkAudio
from narrate.synth import Engine, Turn
from narrate.workers import ChunksDone, WorkerFailed, WorkerSettings, worker_main

PREVIEW = EngineConfig(engine="preview")


class RaisingEngine(Engine):
    """The preview engine, except that a batch holding the text "boom" raises a RuntimeError
    (a bug, or a library failing in a way narrate does not know)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config

    def synthesize(
        self,
        batch: Batch,
        *,
        context: Sequence[Turn] = (),
        attempts: Mapping[str, int] | None = None,
    ) -> list[ChunkAudio]:
        if any(c.text == "boom" for c in batch.chunks):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.engine.synthesize(batch, context=context, attempts=attempts)

    def close(self) -> None:
        self.engine.close()


@pytest.fixture
def sigint_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGINT)  # worker_main ignores SIGINT in its process
    yield
    signal.signal(signal.SIGINT, previous)


def batch(*texts: str) -> Batch:
    return Batch(tuple(Chunk(f"{i:08x}{t}", "b", i, t) for i, t in enumerate(texts)))


def run_worker(
    tmp_path: Path,
    batches: list[Batch],
    *,
    check_takes: bool = False,
    engine: EngineConfig = PREVIEW,
) -> list[object]:
    """worker_main in this process, fed these batches; what it reported."""
    tasks: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    for number, task in enumerate(batches, 1):
        tasks.put((number, task, {}))
    tasks.put(None)
    settings = WorkerSettings(
        engine, str(tmp_path / "voices"), str(tmp_path / "cache"), check_takes=check_takes
    )
    worker_main(os.getppid(), "cpu", 1, settings, tasks, results)
    return [results.get_nowait() for _ in range(results.qsize())]


def test_an_unexpected_engine_error_fails_that_batch_and_the_worker_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_restored: None
) -> None:
    real_load = narrate.synth.load_engine
    monkeypatch.setattr(
        narrate.synth, "load_engine", lambda *a, **kw: RaisingEngine(real_load(*a, **kw))
    )
    first, second = run_worker(tmp_path, [batch("boom", "Hello."), batch("Good evening.")])
    assert isinstance(first, ChunksDone) and isinstance(second, ChunksDone)
    assert [o.error for o in first.outcomes] == [
        "unexpected RuntimeError in the engine: "
        "CUDA error: an illegal memory access was encountered"
    ] * 2
    assert [o.error for o in second.outcomes] == [None]


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_a_failure_inside_the_frame_loop_fails_the_chunks_it_held_and_the_next_batches_go_on(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, sigint_restored: None
) -> None:
    from narrate.synth.frames import FrameLoop

    real_step, steps = FrameLoop.step, []

    def step(self: FrameLoop, span: int) -> None:
        steps.append(span)
        if len(steps) == 6:  # once, while the first batch's rows are being spoken
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        real_step(self, span)

    monkeypatch.setattr(FrameLoop, "step", step)
    first, second, third = batch("Rain fell.", "Yes."), batch("No.", "Hm."), batch("The end.")
    reports = run_worker(
        tmp_path, [first, second, third], engine=EngineConfig(model=str(tiny_model_dir))
    )
    done = [r for r in reports if isinstance(r, ChunksDone)]
    errors = {o.chunk_id: o.error for r in done for o in r.outcomes}
    assert [r.batch_no for r in done if r.finished] == [1, 2, 3]  # each batch finishes once
    assert {errors[c.chunk_id] for c in first.chunks} == {
        "unexpected RuntimeError in the engine: "
        "CUDA error: an illegal memory access was encountered"
    }
    assert all(errors[c.chunk_id] is None for c in (*second.chunks, *third.chunks))


def test_an_engine_that_cannot_start_for_an_unexpected_reason_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_restored: None
) -> None:
    def broken_load(*args: object, **kwargs: object) -> Engine:
        raise ImportError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(narrate.synth, "load_engine", broken_load)
    (failed,) = run_worker(tmp_path, [batch("Hello.")])
    assert failed == WorkerFailed(
        "cpu",
        "could not start: unexpected ImportError in the engine: "
        "libcudnn.so.9: cannot open shared object file",
    )


class StreamlessEngine:
    """An engine that fails before it takes any batch (here: it has no `stream`)."""

    def synthesize(self, batch: Batch, **_: object) -> list:
        raise AssertionError("never reached")

    def close(self) -> None:
        pass


@pytest.mark.timeout(60)  # the worker used to spin on such an engine for ever
def test_an_engine_that_fails_before_taking_a_batch_stops_its_worker_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_restored: None
) -> None:
    monkeypatch.setattr(narrate.synth, "load_engine", lambda *a, **kw: StreamlessEngine())
    (failed,) = run_worker(tmp_path, [batch("Hello.")])
    assert isinstance(failed, WorkerFailed) and failed.message.startswith("synthesis failed: ")
    assert "stream" in failed.message


def test_with_the_quality_check_the_worker_hands_takes_back_unchecked_and_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_restored: None
) -> None:
    def no_check_here(*args: object) -> None:
        raise AssertionError("the engine's process must not run the quality check")

    monkeypatch.setattr(narrate.quality, "check", no_check_here)
    monkeypatch.setattr(narrate.gate, "check", no_check_here)
    synthesized = batch("Hello.", "Good evening.")
    (done,) = run_worker(tmp_path, [synthesized], check_takes=True)
    assert isinstance(done, ChunksDone) and done.outcomes == ()
    assert [t.chunk_id for t in done.takes] == [c.chunk_id for c in synthesized.chunks]
    assert all(len(t.audio) > 0 for t in done.takes)
    assert not list((tmp_path / "cache").rglob("*.flac"))  # cached only once checked


def test_post_processing_and_quality_checks_yield_the_cpu_to_the_engines_feeding(
    tmp_path: Path,
) -> None:
    # where cores are short, the threads that keep the device busy must run first
    import threading

    from narrate.config import POST_NICE
    from narrate.quality import QualityPool
    from narrate.rendering import RenderPool
    from narrate.run import DaemonPool

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = own_nice()
    pool = DaemonPool(1, "test-post", nice=POST_NICE)
    assert pool.submit(own_nice).result(timeout=10) == min(19, before + POST_NICE)
    assert own_nice() == before  # the caller's own thread keeps its priority
    with QualityPool(1, nice=POST_NICE) as checks:
        process_nice = checks.call(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=60)
    assert process_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + POST_NICE)
    renderers = RenderPool(1, str(tmp_path / "cache"), nice=POST_NICE)
    try:
        render_nice = renderers.call(os.getpriority, os.PRIO_PROCESS, 0)
    finally:
        renderers.close()
    assert render_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + POST_NICE)


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "300000 100000\n"}, 3),  # cgroup v2: a pod limited to 3 CPUs
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: the half core still runs a thread
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu.max": "max 100000\n"}, None),  # no limit: every core it may run on
        ({}, None),
    ],
)
def test_defaults_are_sized_by_the_containers_cpu_limit_not_the_nodes_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], cores: int | None
) -> None:
    import narrate.config
    from narrate.workers import default_post_workers

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(narrate.config, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(48)))  # a big node
    expected = cores or 48
    assert narrate.config.available_cores() == expected
    # a GPU worker takes a core to feed its device; render processes get the rest
    assert default_post_workers(["cuda:0"], None) == max(1, min(32, expected - 1))
