"""The review page: built from a run report and its files, opened in a real headless browser
(Debian's chromium and chromium-driver, driven by selenium)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from narrate.cli import cli
from narrate.config import PostConfig
from narrate.post.encode import Tags, encode
from narrate.review import chunk_details, review_order, waveform_path, write_review

RATE = 24_000
PHONE_WIDTH = 390  # CSS pixels
# book id -> (seconds of audio, format, score): a marked book, two good ones, in two formats
FILES = {
    "calm-river": (3.0, "wav", 1.0),
    "harbour-rain": (5.5, "mp3", 0.62),
    "village-bells": (2.25, "wav", 1.0),
}


def tone(seconds: float, seed: int) -> np.ndarray:
    """Bursts of a tone at a speech-like level: a waveform with visible shape."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = (np.sin(2 * np.pi * (0.7 + seed * 0.2) * t) > -0.3).astype(np.float32)
    return (0.25 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def book(book_id: str, out: Path, **fields: object) -> dict[str, object]:
    seconds, fmt, score = FILES[book_id]
    path = out / f"{book_id}.{fmt}"
    audio = tone(seconds, len(book_id))
    path.write_bytes(encode(audio, RATE, PostConfig(format=fmt), Tags(book_id)))
    return {
        "book_id": book_id,
        "status": "ready",
        "duration_s": seconds,
        "chunks": 2,
        "retries": 0,
        "error": None,
        "url": path.as_uri(),
        "quality_score": score,
        "chunks_retried": 0 if score == 1.0 else 1,
        "chunk_scores": [1.0, score],
        **fields,
    }


@pytest.fixture
def report(tmp_path: Path) -> Path:
    """A run report as `narrate run --report` writes it, with the files it names under out/."""
    out = tmp_path / "out"
    out.mkdir()
    marked_chunks = [
        None,
        {
            "text": "Rain fell softly on the harbour.",
            "score": 0.62,
            "failing_words": [{"word": "harbour", "start": 4.1, "end": 4.6}],
            "failing_spans": [{"reason": "unexplained sound", "start": 4.8, "end": 5.4}],
        },
    ]
    books = [
        book("calm-river", out),
        book("harbour-rain", out, chunk_quality=marked_chunks),
        book("village-bells", out),
        {
            "book_id": "lost-letter",
            "status": "failed",
            "chunks": 3,
            "error": "CUDA out of memory in a single slot",
            "url": None,
            "quality_score": None,
        },
    ]
    totals = {"books": 4, "ready": 3, "failed": 1, "below_quality_threshold": 1}
    path = out / "report.json"
    path.write_text(json.dumps({"totals": totals, "books": books, "rejected_rows": []}))
    return path


def test_books_a_listener_should_hear_first_come_first() -> None:
    books = [
        {"book_id": "a", "status": "ready", "quality_score": 1.0},
        {"book_id": "b", "status": "ready", "quality_score": 0.4},
        {"book_id": "c", "status": "failed"},
        {"book_id": "d", "status": "skipped"},
        {"book_id": "e", "status": "ready", "quality_score": 0.9},
    ]
    assert [b["book_id"] for b in review_order(books)] == ["c", "b", "e", "a", "d"]


def test_the_waveform_follows_the_loudness_of_the_audio() -> None:
    audio = np.concatenate([np.zeros(1000), 0.8 * np.ones(1000)]).astype(np.float32)
    path = waveform_path(audio, columns=4).split("L")[0].removeprefix("M").split()
    heights = [float(y) for y in path[1::2]]
    assert heights[:2] == [0.0, 0.0] and heights[2:] == [-0.8, -0.8]  # SVG's y points down


def test_the_page_names_the_failed_book_with_its_reason_and_a_hint_and_marks_failing_words(
    report: Path,
) -> None:
    page = write_review(report).read_text()
    assert "CUDA out of memory in a single slot" in page
    assert "hint: lower --batch-size" in page
    assert '<mark title="4.10–4.60 s">harbour.</mark>' in page
    assert "unexplained sound 4.80–5.40 s" in page
    assert 'src="harbour-rain.mp3"' in page  # relative to the page: the folder can move
    assert "http://" not in page and "https://" not in page  # nothing loads from the network


def test_a_report_without_per_chunk_results_still_makes_a_page(report: Path) -> None:
    data = json.loads(report.read_text())
    for entry in data["books"]:
        entry.pop("chunk_quality", None)
        entry.pop("chunk_scores", None)
    report.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["review", str(report), "-o", str(report.parent / "p.html")])
    assert result.exit_code == 0, result.output
    assert "harbour-rain" in (report.parent / "p.html").read_text()


def test_review_of_a_file_that_is_not_a_report_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    result = CliRunner().invoke(cli, ["review", str(bad)])
    assert result.exit_code == 2
    assert "is not a run report" in result.output and "hint:" in result.output


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no headless browser: apt-get install chromium chromium-driver")
    pytest.importorskip("selenium", reason="selenium is in the dev extra: make install")
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[object]:
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(flag)
    phone = {"deviceMetrics": {"width": PHONE_WIDTH, "height": 844, "pixelRatio": 1}}
    options.add_experimental_option("mobileEmulation", phone)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield session
    finally:
        session.quit()


def test_the_page_opens_in_a_browser_sorts_plays_every_file_and_fits_a_phone(
    report: Path, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = write_review(report)
    browser.get(page.as_uri())  # type: ignore[attr-defined]

    def column(index: int) -> list[str]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#books tbody tr")  # type: ignore[attr-defined]
        return [r.find_elements(By.TAG_NAME, "td")[index].text for r in rows]

    assert column(0)[:2] == ["lost-letter", "harbour-rain"]  # failed, then marked
    browser.find_element(By.CSS_SELECTOR, 'th button[data-col="4"]').click()  # type: ignore[attr-defined]
    assert column(0) == ["lost-letter", "village-bells", "calm-river", "harbour-rain"]
    browser.find_element(By.CSS_SELECTOR, 'th button[data-col="4"]').click()  # type: ignore[attr-defined]
    assert column(0) == ["harbour-rain", "calm-river", "village-bells", "lost-letter"]
    browser.find_element(By.CSS_SELECTOR, 'th button[data-col="2"]').click()  # type: ignore[attr-defined]
    assert column(2)[:3] == ["0.62", "1.00", "1.00"]

    durations_js = (
        "return Array.from(document.querySelectorAll('audio'))"
        ".map(a => [a.getAttribute('src'), a.readyState, a.duration, a.error && a.error.code])"
    )
    WebDriverWait(browser, 20).until(
        lambda b: all(state >= 1 for _, state, _, _ in b.execute_script(durations_js))
    )
    players = {src: duration for src, _, duration, _ in browser.execute_script(durations_js)}  # type: ignore[attr-defined]
    expected = {f"{b}.{fmt}": seconds for b, (seconds, fmt, _) in FILES.items()}
    assert players.keys() == expected.keys()
    for src, duration in players.items():  # MP3 adds an encoder delay of a few ms
        assert duration == pytest.approx(expected[src], abs=0.06), src

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]
    assert errors == []
    width = browser.execute_script("return document.documentElement.scrollWidth")  # type: ignore[attr-defined]
    assert width <= PHONE_WIDTH  # nothing wider than a phone's screen

    shot = tmp_path / "review.png"
    assert browser.save_screenshot(str(shot))  # type: ignore[attr-defined]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width_px, height_px = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width_px, height_px) == (PHONE_WIDTH, 844) and len(png) > 20_000
    keep = Path(__import__("os").environ.get("NARRATE_REVIEW_SCREENSHOT", ""))
    if keep.name:
        shutil.copy(shot, keep)


@pytest.mark.slow
def test_a_run_with_a_report_writes_its_review_page_beside_it(tmp_path: Path) -> None:
    from support.runs import preview_args

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"book_id": "fox", "text": "The grapes are sour."}) + "\n")
    report = tmp_path / "out" / "report.json"
    args = ["run", str(manifest), *preview_args(tmp_path, f"--report={report}")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<audio controls preload="metadata" src="fox.wav">' in page
    assert '<svg class="wave"' in page


def test_the_checks_faults_are_shown_whichever_way_the_report_lists_them() -> None:
    fault_word = {"kind": "word", "word": "volcano", "start_s": 1.2, "end_s": 1.7}
    fault_speech = {"kind": "speech", "word": "", "start_s": 2.0, "end_s": 2.6}
    by_chunk = {"chunk_scores": [1.0, 0.4], "chunk_faults": [[], [fault_word, fault_speech]]}
    at_book = {"chunk_scores": [1.0, 0.4], "faults": [{**fault_word, "chunk": 1}]}
    for book in (by_chunk, at_book):
        details = chunk_details(book)
        assert details[0]["words"] == [] and details[1]["score"] == 0.4
        assert details[1]["words"][0]["word"] == "volcano"
    assert chunk_details(by_chunk)[1]["spans"][0]["reason"] == "unexplained speech"
    assert chunk_details({"chunk_scores": None}) == []


def test_books_published_to_cloud_storage_play_from_their_published_url(
    tmp_path: Path, gcs_bucket: str
) -> None:
    from narrate.storage import open_storage

    storage = open_storage(f"gs://{gcs_bucket}/site")
    data = encode(tone(2.0, 1), RATE, PostConfig(format="mp3"), Tags("fox"))
    stored = storage.put("narrations/fox.mp3", data, content_type="audio/mpeg")
    assert stored is not None
    urls = {style: storage.url(stored, style) for style in ("gs", "public")}
    books = [
        {"book_id": style, "status": "ready", "duration_s": 2.0, "url": url}
        for style, url in urls.items()
    ]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"totals": {}, "books": books}))
    page = write_review(report).read_text()
    for url in urls.values():
        assert f'src="{url}"' in page  # as published: the page does not copy the audio
    assert page.count('<svg class="wave"') == 2  # both read from the bucket for the waveform


def test_a_skipped_book_is_in_the_table_only(report: Path) -> None:
    data = json.loads(report.read_text())
    data["books"].append({"book_id": "old-owl", "status": "skipped", "url": None})
    report.write_text(json.dumps(data))
    page = write_review(report).read_text()
    assert '<td data-v="old-owl">old-owl</td>' in page
    assert page.count('<section class="book') == 4  # the other four books
