"""The review page: one self-contained HTML file to see and hear a run from its report.

Run totals; every book in a table that sorts by status, score, retries, duration and loudness;
then the books that need a listener first (failed with reason and hint, then marked books and
the lowest scores), each with a player, a waveform drawn from its file, and its chunks with
their scores. Per-chunk quality results in the report (`chunk_quality`: a list by chunk index
of objects that may carry `text`, `score`, `failing_words` and `failing_spans` with times) are
shown where present, failing words highlighted; a report without them shows the scores alone.

The page loads nothing from the network (no CDN, no fonts): styles, script and waveforms are
inline. Players link to each book's file: relative to the page for a local `--out`, the
published URL otherwise. Building the page reads each file once (its waveform and loudness).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from narrate.atomic import write_atomic
from narrate.errors import AudioError, UsageError
from narrate.post.encode import decode
from narrate.post.loudness import integrated_loudness
from narrate.quality import PASS_SCORE
from narrate.storage import open_uri

WAVEFORM_COLUMNS = 480  # peaks per waveform: finer than a phone's width, ~6 KB of SVG a book
DEFAULT_PLAYERS = 200  # books with a player; the table lists every book
# audio decoded for waveforms and loudness, in the books' review order: an hour-long MP3 takes
# tens of seconds to decode, and a page should not keep a finished run waiting for minutes
WAVEFORM_BUDGET_S = 3 * 3600.0
FETCH_TIMEOUT_S = 30.0
FETCH_TRIES = 3
_STATUS_RANK = {"failed": 0, "marked": 1, "ready": 2, "skipped": 3}
_GENERIC_HINT = (
    "run the same command again: cached chunks are kept and only this book is rendered again"
)
# what to do about the failures a book's error message names (first match wins)
_HINTS = (
    ("out of memory", "lower --batch-size or --max-audio-length-ms, or free the GPU"),
    ("quality", "listen to the chunk; --quality on publishes the best take and marks the book"),
    ("does not decode", "the cached chunk was removed: the next run synthesizes it again"),
    ("database", "check --database and its credentials (narrate doctor), then run again"),
    ("post-processing process exited", "lower --post-workers: a render process ran out of memory"),
)


@dataclass(frozen=True, slots=True)
class Heard:
    """What the page shows of a book's file: its waveform, loudness and decoded duration."""

    waveform: str  # an SVG path, x in [0, WAVEFORM_COLUMNS], y in [-1, 1]
    loudness_lufs: float | None
    duration_s: float


def waveform_path(audio: np.ndarray, columns: int = WAVEFORM_COLUMNS) -> str:
    """The envelope of `audio` (min and max of each of `columns` slices) as one closed SVG path:
    along the maxima, back along the minima."""
    if len(audio) == 0:
        return f"M0 0H{columns}"
    edges = np.linspace(0, len(audio), columns + 1).astype(int)
    edges[-1] = len(audio)
    starts = np.minimum(edges[:-1], len(audio) - 1)
    highs = np.maximum.reduceat(audio, starts).clip(0.0, 1.0)
    lows = np.minimum.reduceat(audio, starts).clip(-1.0, 0.0)
    top = " ".join(f"{x} {-y:.3f}" for x, y in enumerate(highs))
    bottom = " ".join(f"{x} {-y:.3f}" for x, y in reversed(list(enumerate(lows))))
    return f"M{top} L{bottom}Z"


def hear(data: bytes) -> Heard:
    audio, rate = decode(data)
    loudness = integrated_loudness(audio, rate) if len(audio) else -math.inf
    return Heard(
        waveform_path(audio),
        round(loudness, 1) if math.isfinite(loudness) else None,
        len(audio) / rate,
    )


def fetch(url: str) -> bytes:
    """A book's file by its report URL: file:// and gs:// through narrate.storage, http(s)
    (token, signed and public URLs) with a timeout and retries."""
    parsed = urlparse(url)
    if parsed.scheme in ("file", "gs", ""):
        path = unquote(parsed.path) if parsed.scheme == "file" else url
        with open_uri(path, timeout=FETCH_TIMEOUT_S) as stream:
            return stream.read()
    for attempt in range(FETCH_TRIES):
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == FETCH_TRIES - 1:
                raise
        except (urllib.error.URLError, TimeoutError):
            if attempt == FETCH_TRIES - 1:
                raise
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


def player_source(url: str, page: Path) -> str:
    """What the page's <audio> points at: a local file relative to the page (the folder can be
    moved or served as a whole), any other URL as published."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return url
    relative = os.path.relpath(unquote(parsed.path), page.resolve().parent)
    return "/".join(urllib.request.pathname2url(part) for part in Path(relative).parts)


def _marked(book: Mapping[str, Any]) -> bool:
    score = book.get("quality_score")
    return score is not None and score < PASS_SCORE


def _state(book: Mapping[str, Any]) -> str:
    status = str(book.get("status", ""))
    return "marked" if status == "ready" and _marked(book) else status


def review_order(books: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Books a listener should hear first: failed, marked, then by score (lowest first)."""

    def key(book: Mapping[str, Any]) -> tuple[int, float, str]:
        score = book.get("quality_score")
        return (
            _STATUS_RANK.get(_state(book), 4),
            score if score is not None else math.inf,
            str(book.get("book_id")),
        )

    return sorted(books, key=key)


def failure_hint(book: Mapping[str, Any]) -> str:
    if book.get("hint"):
        return str(book["hint"])
    error = str(book.get("error") or "").lower()
    return next((hint for words, hint in _HINTS if words in error), _GENERIC_HINT)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, rest = divmod(int(seconds), 60)  # as players show it
    return f"{minutes}:{rest:02d}"


def _score(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def _times(item: Mapping[str, Any]) -> str:
    start = item.get("start", item.get("start_s"))
    end = item.get("end", item.get("end_s"))
    if start is None:
        return ""
    return f" {float(start):.2f}–{float(end):.2f} s" if end is not None else f" {start:.2f} s"


# where a report may name a book's per-chunk check results: a list by chunk index of objects
# (text, score, reason, failing_words, failing_spans, or the check's `faults`), or of lists of
# faults; a book-level `faults` list whose items carry their `chunk` index is read too
_CHUNK_LISTS = ("chunk_quality", "chunk_verdicts", "chunk_checks", "chunk_faults")


def chunk_details(book: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each chunk's check results, normalized: `score`, `text`, `reason`, `words` (failing
    words: `word`, times) and `spans` (sound no word explains: `reason`, times)."""
    scores = list(book.get("chunk_scores") or [])
    lists = [book[key] for key in _CHUNK_LISTS if isinstance(book.get(key), list)]
    count = max([len(scores), *map(len, lists)], default=0)
    details: list[dict[str, Any]] = [
        {"score": scores[i] if i < len(scores) else None, "words": [], "spans": []}
        for i in range(count)
    ]
    for found in lists:
        for index, item in enumerate(found):
            if isinstance(item, list):
                item = {"faults": item}
            if isinstance(item, Mapping):
                _merge(details[index], item)
    for fault in book.get("faults") or []:
        chunk = fault.get("chunk") if isinstance(fault, Mapping) else None
        if isinstance(chunk, int) and 0 <= chunk < count:
            _merge(details[chunk], {"faults": [fault]})
    return details


def _merge(detail: dict[str, Any], item: Mapping[str, Any]) -> None:
    for key in ("text", "reason"):
        if item.get(key):
            detail[key] = str(item[key])
    if isinstance(item.get("score"), (int, float)):
        detail["score"] = float(item["score"])
    words = item.get("failing_words") or item.get("failed_words") or []
    detail["words"] += [w if isinstance(w, Mapping) else {"word": w} for w in words]
    detail["spans"] += [s for s in item.get("failing_spans") or [] if isinstance(s, Mapping)]
    for fault in item.get("faults") or []:
        if not isinstance(fault, Mapping):
            continue
        if fault.get("kind") == "word" and fault.get("word"):
            detail["words"].append(fault)
        else:
            detail["spans"].append({"reason": "unexplained speech", **fault})


def _highlighted(text: str, failing: Sequence[Mapping[str, Any]]) -> str:
    """The chunk's text with each failing word marked (by its word index where the report
    gives one, else its first unmarked occurrence)."""
    tokens = text.split()
    marked: dict[int, Mapping[str, Any]] = {}
    for item in failing:
        index = item.get("index")
        if not isinstance(index, int) or not 0 <= index < len(tokens):
            word = str(item.get("word", item.get("text", ""))).lower()
            index = next(
                (
                    i
                    for i, token in enumerate(tokens)
                    if i not in marked and token.strip(".,;:!?\"'()").lower() == word
                ),
                None,
            )
        if index is not None:
            marked[index] = item
    return " ".join(
        f'<mark title="{_esc(_times(marked[i]).strip() or "failed the check")}">{_esc(t)}</mark>'
        if i in marked
        else _esc(t)
        for i, t in enumerate(tokens)
    )


def _chunk_rows(book: Mapping[str, Any]) -> str:
    rows = []
    for index, detail in enumerate(chunk_details(book)):
        score, failing, text = detail["score"], detail["words"], detail.get("text")
        said = _highlighted(text, failing) if text else ""
        loose_words = (
            ""
            if text
            else " ".join(
                f"<mark>{_esc(w.get('word', w.get('text', '?')))}</mark>{_esc(_times(w))}"
                for w in failing
            )
        )
        span_text = "; ".join(
            f"{_esc(s.get('reason') or s.get('kind') or 'unexplained sound')}{_esc(_times(s))}"
            for s in detail["spans"]
        )
        if not (failing or span_text) and detail.get("reason"):
            span_text = _esc(detail["reason"])
        bad = score is not None and score < PASS_SCORE
        rows.append(
            f'<li class="{"bad" if bad else "ok"}"><span class="n">{index + 1}</span> '
            f'<span class="s">{_score(score)}</span> {said}{loose_words}'
            + (f' <span class="span">{span_text}</span>' if span_text else "")
            + "</li>"
        )
    if not rows:
        return ""
    failing = sum(r.startswith('<li class="bad"') for r in rows)
    summary = f"{len(rows)} chunks" + (f", {failing} below {PASS_SCORE:.2f}" if failing else "")
    # chunks that all passed stay folded: a catalog page would otherwise be mostly "1.00"
    return (
        f"<details{' open' if failing else ''}><summary>{summary}</summary>"
        f'<ol class="chunks">{"".join(rows)}</ol></details>'
    )


_TIMES = ("audio", "wall time")


def _totals(totals: Mapping[str, Any]) -> str:
    shown = [
        ("books", totals.get("books")),
        ("ready", totals.get("ready")),
        ("failed", totals.get("failed")),
        ("skipped", totals.get("skipped")),
        ("marked", totals.get("below_quality_threshold")),
        ("rows rejected", totals.get("rows_rejected")),
        ("audio", totals.get("audio_seconds")),
        ("wall time", totals.get("wall_seconds")),
        ("real-time factor", totals.get("real_time_factor")),
        ("chunks synthesized", totals.get("chunks_synthesized")),
        ("cache hits", totals.get("cache_hits")),
    ]
    cells = "".join(
        f"<div><dt>{_esc(name)}</dt><dd>{_esc(_duration(value) if name in _TIMES else value)}</dd>"
        "</div>"
        for name, value in shown
        if value is not None
    )
    notes = []
    if totals.get("interrupted"):
        notes.append('<p class="alert">The run was interrupted: run it again to finish.</p>')
    if totals.get("error"):
        hint = f"<br>hint: {_esc(totals['hint'])}" if totals.get("hint") else ""
        notes.append(f'<p class="alert">The run stopped: {_esc(totals["error"])}{hint}</p>')
    return f'<dl class="totals">{cells}</dl>{"".join(notes)}'


def _table(books: Sequence[Mapping[str, Any]], heard: Mapping[str, Heard], carded: set[int]) -> str:
    rows = []
    for position, book in enumerate(books):
        book_id = str(book.get("book_id"))
        state = _state(book)
        score = book.get("quality_score")
        loud = heard[book_id].loudness_lufs if book_id in heard else None
        duration = book.get("duration_s") or None
        retried = int(book.get("chunks_retried") or 0)
        cells = [
            (
                f'<a href="#b{position}">{_esc(book_id)}</a>'
                if position in carded
                else _esc(book_id),
                book_id,
            ),
            (f'<span class="tag {state}">{state}</span>', _STATUS_RANK.get(state, 4)),
            (_score(score), score if score is not None else 2),
            (str(retried), retried),
            (_duration(duration), duration or 0),
            ("–" if loud is None else f"{loud:.1f}", loud if loud is not None else -999),
        ]
        tds = "".join(f'<td data-v="{_esc(value)}">{shown}</td>' for shown, value in cells)
        rows.append(f"<tr>{tds}</tr>")
    heads = ["book", "status", "score", "retries", "length", "LUFS"]
    ths = "".join(
        f'<th scope="col"><button type="button" data-col="{i}">{name}</button></th>'
        for i, name in enumerate(heads)
    )
    return (
        f'<div class="scroll"><table id="books"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _card(position: int, book: Mapping[str, Any], page: Path, heard: Heard | None) -> str:
    book_id = str(book.get("book_id"))
    state = _state(book)
    facts = [f'<span class="tag {state}">{state}</span>']
    if book.get("quality_score") is not None:
        facts.append(f"score {_score(book['quality_score'])}")
    if book.get("duration_s"):
        facts.append(_duration(book["duration_s"]))
    if heard and heard.loudness_lufs is not None:
        facts.append(f"{heard.loudness_lufs:.1f} LUFS")
    if book.get("chunks_retried"):
        facts.append(f"{book['chunks_retried']} chunks retried")
    if book.get("url"):
        facts.append(f'<a href="{_esc(player_source(str(book["url"]), page))}">file</a>')
    body = []
    if state == "failed":
        body.append(
            f'<p class="reason">{_esc(book.get("error") or "failed")}</p>'
            f'<p class="hint">hint: {_esc(failure_hint(book))}</p>'
        )
    url = book.get("url")
    if url:
        body.append(
            f'<audio controls preload="metadata" src="{_esc(player_source(str(url), page))}">'
            "</audio>"
        )
    if heard is not None:
        body.append(
            f'<svg class="wave" viewBox="0 -1 {WAVEFORM_COLUMNS} 2" preserveAspectRatio="none" '
            f'role="img" aria-label="waveform of {_esc(book_id)}">'
            f'<path d="{heard.waveform}"/></svg>'
        )
    body.append(_chunk_rows(book))
    return (
        f'<section class="book {state}" id="b{position}"><h3>{_esc(book_id)}</h3>'
        f'<p class="facts">{" · ".join(facts)}</p>{"".join(body)}</section>'
    )


_STYLE = """
:root{color-scheme:light dark;--bad:#c0392b;--warn:#b9770e;--ok:#1e8449;--line:#8884}
*{box-sizing:border-box}
body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;padding:12px;max-width:960px}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .4em}
h3{font-size:1em;margin:0;overflow-wrap:anywhere}
.totals{display:grid;grid-template-columns:repeat(auto-fill,minmax(110px,1fr));gap:6px;margin:0}
.totals div{border:1px solid var(--line);border-radius:6px;padding:4px 8px}
dt{font-size:.8em;opacity:.75}dd{margin:0;font-weight:600}
.alert{border-left:4px solid var(--bad);padding:4px 8px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.88em;font-variant-numeric:tabular-nums}
th,td{padding:4px 2px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere;
min-width:6.5em}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;color:inherit;
cursor:pointer}
th[aria-sort=ascending] button::after{content:" ▲"}
th[aria-sort=descending] button::after{content:" ▼"}
.tag{font-size:.8em;border-radius:4px;padding:0 5px;color:#fff;background:var(--ok)}
.tag.failed{background:var(--bad)}.tag.marked{background:var(--warn)}.tag.skipped{background:#777}
.book{border:1px solid var(--line);border-radius:8px;padding:8px 10px;margin:10px 0}
.book.failed{border-left:5px solid var(--bad)}.book.marked{border-left:5px solid var(--warn)}
.facts{margin:.2em 0;font-size:.9em}
audio{width:100%;margin:4px 0}
.wave{display:block;width:100%;height:56px;cursor:pointer}
.wave path{fill:currentColor;opacity:.6}
summary{cursor:pointer;font-size:.9em}
.chunks{padding-left:0;list-style:none;font-size:.9em;margin:.4em 0 0}
.chunks li{padding:2px 0;border-top:1px dotted var(--line)}
.chunks .n{display:inline-block;min-width:2.2em;opacity:.6}
.chunks .s{font-variant-numeric:tabular-nums;font-weight:600}
.chunks li.bad .s{color:var(--bad)}
mark{background:#f5b7b1;color:#000;border-radius:3px;padding:0 2px}
.span{color:var(--bad)}
.reason{color:var(--bad);margin:.3em 0}.hint{margin:.3em 0}
"""

# sorting: each header button sorts by its column's data-v (numbers as numbers), and a second
# click reverses; a click on a waveform seeks its player there
_SCRIPT = """
(function(){
  var table=document.getElementById("books");
  table.querySelectorAll("th button").forEach(function(button){
    button.addEventListener("click",function(){
      var col=+button.dataset.col, th=button.parentNode;
      var dir=th.getAttribute("aria-sort")==="ascending"?-1:1;
      table.querySelectorAll("th").forEach(function(h){h.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort",dir>0?"ascending":"descending");
      var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[col].dataset.v, y=b.cells[col].dataset.v, nx=+x, ny=+y;
        var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
        return c*dir;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  document.querySelectorAll("section.book").forEach(function(card){
    var wave=card.querySelector(".wave"), audio=card.querySelector("audio");
    if(!wave||!audio)return;
    wave.addEventListener("click",function(e){
      var box=wave.getBoundingClientRect();
      if(audio.duration){audio.currentTime=audio.duration*(e.clientX-box.left)/box.width;}
      audio.play();
    });
  });
})();
"""


def render_page(
    report: Mapping[str, Any],
    page: Path,
    *,
    players: int = DEFAULT_PLAYERS,
    read: Callable[[str], bytes] = fetch,
    title: str = "narrate run review",
) -> str:
    """The review page of `report` (a run report's JSON) as it will be written at `page`.

    The first `players` books in review order get a player; a waveform and their loudness
    too (each file read once with `read`) until WAVEFORM_BUDGET_S of audio is decoded; a file
    that cannot be read or decoded shows none."""
    books = review_order(report.get("books") or [])
    heard: dict[str, Heard] = {}
    budget = WAVEFORM_BUDGET_S
    # a card for each book there is something to hear or fix (a skipped book has no file URL
    # in its report: it is in the table only)
    listened = [
        (i, book) for i, book in enumerate(books) if book.get("url") or _state(book) == "failed"
    ][:players]
    for _, book in listened:
        if book.get("url") and budget > 0:
            try:
                heard[str(book["book_id"])] = hear(read(str(book["url"])))
            except (OSError, ValueError, AudioError, UsageError, urllib.error.URLError):
                continue  # the page shows the book without its waveform
            budget -= heard[str(book["book_id"])].duration_s
    cards = [_card(i, book, page, heard.get(str(book.get("book_id")))) for i, book in listened]
    rejected = report.get("rejected_rows") or []
    rejected_html = ""
    if rejected:
        items = "".join(
            f"<li>row {_esc(r.get('row'))} {_esc(r.get('book_id') or '')}: "
            f"{_esc(r.get('message'))}</li>"
            for r in rejected
        )
        rejected_html = f"<h2>Rejected rows ({len(rejected)})</h2><ul>{items}</ul>"
    left = sum(1 for book in books if book.get("url")) - sum(1 for _, b in listened if b.get("url"))
    more = (
        f"<p>{left} more books are in the table only "
        f"(<code>narrate review --players N</code> shows more).</p>"
        if left > 0
        else ""
    )
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>{generated}</p>{_totals(report.get('totals') or {})}"
        f"<h2>Books</h2>{_table(books, heard, {i for i, _ in listened})}"
        f"<h2>Listen: failed and marked books and the lowest scores first</h2>"
        f"{''.join(cards)}{more}{rejected_html}"
        f"<script>{_SCRIPT}</script></body></html>"
    )


def write_review(
    report_path: str | Path,
    page_path: str | Path | None = None,
    *,
    players: int = DEFAULT_PLAYERS,
    read: Callable[[str], bytes] = fetch,
) -> Path:
    """Read a run report and write its review page (default: beside it, .html)."""
    report_file = Path(report_path)
    try:
        report = json.loads(report_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"cannot read the run report {report_file}: {exc}",
            hint="give the JSON file a run wrote with --report",
        ) from exc
    if not isinstance(report, dict) or not isinstance(report.get("books"), list):
        raise UsageError(
            f"{report_file} is not a run report (no list of books)",
            hint="give the JSON file a run wrote with --report",
        )
    page = Path(page_path) if page_path else report_file.with_suffix(".html")
    title = f"narrate run review: {report_file.name}"
    write_atomic(page, render_page(report, page, players=players, read=read, title=title))
    return page
