"""What a run shows a person at a terminal: bars with totals and ETAs, a line per finished book,
what is loading, errors as `error:` / `hint:` lines, and a summary at the end.

Driven by the run's events (narrate.report.EventLog hands them over on a TTY): the totals of
the bars come from `window_planned`, so they are right from the first window on, whatever the
run does next. Off a terminal none of this runs: the events are JSON lines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

REFRESH_S = 1.0  # bars redraw at least this often, so their clocks move during a model load
_BARS = {"books": "book", "chunks": "chunk"}  # bar -> unit


def where(url: object) -> str:
    """A published URL as a person reads it: a local file relative to here, else the URL."""
    text = str(url or "")
    parsed = urlparse(text)
    if parsed.scheme != "file":
        return text
    path = unquote(parsed.path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def clock(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def _detail(fields: Mapping[str, object], skip: tuple[str, ...] = ()) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in skip)


class Console:
    """Progress bars and lines on a terminal stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bars: dict[str, Any] = {}
        self.totals = {"books": 0, "chunks": 0}
        self.loading: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # lines

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=self.stream)

    def _problem(self, kind: str, message: object, hint: object = None) -> None:
        self.write(f"{kind}: {message}")
        if hint:
            self.write(f"hint: {hint}")

    def event(self, name: str, fields: Mapping[str, Any]) -> None:
        """Show what a person needs to see of an event (most events show nothing)."""
        if name == "run_started":
            devices = ", ".join(map(str, fields.get("devices") or []))
            self.write(f"planning; engines on {devices}" if devices else "planning")
        elif name == "window_planned":
            self.totals["books"] += int(fields.get("to_render") or 0)
            self.totals["chunks"] += int(fields.get("chunks_to_synthesize") or 0)
            for bar in _BARS:
                self.progress(bar, 0)
        elif name == "loading":
            self.loading = str(fields.get("what"))
            self.write(f"loading {self.loading} ...")
            self._describe()
        elif name == "batch_done" and self.loading:
            self.loading = None
            self._describe()
        elif name == "book_ready":
            score = fields.get("quality_score")
            shown = "" if score is None else f"  score {score:.2f}"
            self.write(
                f"ready   {fields.get('book_id')}  {clock(float(fields.get('duration_s') or 0))}"
                f"{shown}  -> {where(fields.get('url'))}"
            )
        elif name == "book_failed":
            self._problem(
                f"failed  {fields.get('book_id')}", fields.get("error"), fields.get("hint")
            )
        elif name == "row_rejected":
            book = f" ({fields['book_id']})" if fields.get("book_id") else ""
            self.write(f"rejected row {fields.get('row')}{book}: {fields.get('message')}")
        elif name == "run_interrupted":
            self.write(
                f"interrupted ({fields.get('signal')}): finishing what can be, then stopping"
            )
        elif name in ("error", "warning"):
            self._problem(name, fields.get("message"), fields.get("hint"))
        elif name == "log":  # stdlib logging at WARNING and up
            self._problem(str(fields.get("level", "warning")), fields.get("message"))

    # bars

    def progress(
        self,
        bar: str,
        advance: float,
        total: float | None = None,
        postfix: Mapping[str, object] | None = None,
    ) -> None:
        from tqdm import tqdm

        with self._lock:
            if total is not None:
                self.totals[bar] = int(total)
            current = self.bars.get(bar)
            if current is None:
                current = tqdm(
                    desc=bar,
                    total=self.totals.get(bar) or None,
                    unit=_BARS.get(bar, bar),
                    file=self.stream,
                    position=len(self.bars),
                    dynamic_ncols=True,
                )
                self.bars[bar] = current
                self._start_ticker()
            total = self.totals.get(bar)
            if total and current.total != total:
                current.total = total
                current.refresh()
            if postfix:
                current.set_postfix(postfix, refresh=False)
            current.update(advance)
            if bar == "chunks" and advance:
                self.loading = None  # a chunk came back: whatever was loading has loaded
        self._describe()

    def _describe(self) -> None:
        chunks = self.bars.get("chunks")
        if chunks is not None:
            label = f"chunks (loading {self.loading})" if self.loading else "chunks"
            chunks.set_description_str(label, refresh=True)

    def _start_ticker(self) -> None:
        if self._ticker is not None:
            return

        def tick() -> None:
            while not self._stop.wait(REFRESH_S):
                with self._lock:
                    for current in self.bars.values():
                        current.refresh()

        self._ticker = threading.Thread(target=tick, name="narrate-progress", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2 * REFRESH_S)
            self._ticker = None
        with self._lock:
            for current in self.bars.values():
                current.close()
            self.bars.clear()


def summary(totals: Mapping[str, Any], *, out: str | None = None, report: str | None = None) -> str:
    """The end of a run as a person reads it (stdout on a terminal; JSON otherwise)."""
    lines = [
        f"{totals.get('books', 0)} books: {totals.get('ready', 0)} ready, "
        f"{totals.get('failed', 0)} failed, {totals.get('skipped', 0)} skipped (already "
        f"published), {totals.get('below_quality_threshold', 0)} marked below the quality "
        f"threshold; {totals.get('rows_rejected', 0)} rows rejected",
        f"{clock(float(totals.get('audio_seconds') or 0))} of audio in "
        f"{clock(float(totals.get('wall_seconds') or 0))} (real-time factor "
        f"{totals.get('real_time_factor')}); {totals.get('chunks_synthesized', 0)} chunks "
        f"synthesized, {totals.get('cache_hits', 0)} from the cache, "
        f"{totals.get('chunks_failed', 0)} failed",
    ]
    if totals.get("interrupted"):
        lines.append("interrupted: run the same command again to finish")
    if totals.get("error"):
        lines.append(f"stopped by: {totals['error']}")
        if totals.get("hint"):
            lines.append(f"hint: {totals['hint']}")
    if out and totals.get("ready"):
        lines.append(f"files: {out}")
    if report:
        page = os.path.splitext(report)[0] + ".html"
        shown = f"   review page: {page}" if os.path.exists(page) else ""
        lines.append(f"report: {report}{shown}")
    return "\n".join(lines)
