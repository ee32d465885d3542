"""`narrate status` explains itself: which books need what and why, chunks counted as `run`
counts them, and the options that differ from those a catalog was published with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.runs import preview_args

from narrate.cli import cli

BOOKS = {
    "fox": "The grapes are sour, said the fox.",
    "hare": "Slow and steady wins the race.",
    "twin": "The grapes are sour, said the fox.",  # fox's text: the same chunk
}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result.stdout


@pytest.mark.slow
def test_status_names_pending_failed_books_and_the_options_a_catalog_was_published_with(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = {**BOOKS, "owl": "Who goes there?"}
    manifest.write_text(
        "".join(json.dumps({"book_id": b, "text": t}) + "\n" for b, t in rows.items())
    )
    where = [f"--out={tmp_path / 'out'}", f"--cache={tmp_path / 'cache'}"]
    preview = ["--engine=preview", "--no-watermark"]
    three = ["--book=fox", "--book=hare", "--book=twin"]

    def status(*options: str) -> dict:
        return json.loads(invoke("status", str(manifest), "--json", *where, *options))

    before = status(*preview)
    before_three = status(*preview, *three)
    report_path = tmp_path / "r.json"
    args = preview_args(tmp_path, f"--report={report_path}", "--quality=off", *three)
    invoke("run", str(manifest), *args)
    report = json.loads(report_path.read_text())
    # fox and twin share their one chunk: status counted what the run then synthesized
    assert report["totals"]["chunks_synthesized"] == before_three["chunks_to_synthesize"] == 2
    assert before["chunks"] == before["chunks_to_synthesize"] == 3
    assert status(*preview, *three)["done"] == 3

    pending = {b["book_id"]: b for b in status(*preview)["books"]}
    assert (
        pending["owl"]["state"] == "pending" and "0 of 1 chunks cached" in pending["owl"]["reason"]
    )

    # a record the run left failed is listed with its error
    records = json.loads((tmp_path / "out" / "status.json").read_text())
    records["books"]["owl"] = {"narrativeAudioStatus": "failed", "narrativeAudioError": "no audio"}
    (tmp_path / "out" / "status.json").write_text(json.dumps(records))
    text = invoke("status", str(manifest), *where, *preview)
    assert "failed:\n  owl: no audio" in text

    # the defaults (CSM, watermarked) are not what published fox and hare: status says so
    defaults = status()
    assert defaults["done"] == 0 and defaults["other_settings"] == 3
    assert defaults["differing_options"] == {"--engine": 3, "--no-watermark": 3}
    colder = status(*preview, "--temperature=0.5")
    assert colder["differing_options"] == {"--temperature": 3}
    shown = invoke("status", str(manifest), *where)
    assert "3 books are published with other settings" in shown and "--engine (3)" in shown


@pytest.mark.slow
def test_run_takes_the_sampling_options_and_a_new_temperature_renders_again(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"book_id": "fox", "text": BOOKS["fox"]}) + "\n")
    report_path = tmp_path / "r.json"

    def run(*extra: str) -> dict:
        args = preview_args(tmp_path, f"--report={report_path}", "--quality=off", *extra)
        invoke("run", str(manifest), *args)
        return json.loads(report_path.read_text())["totals"]

    assert run()["chunks_synthesized"] == 1
    assert run("--temperature", "0.9", "--top-k", "50")["skipped"] == 1  # the defaults
    again = run("--temperature", "0.5", "--top-k", "5")
    assert again["ready"] == 1 and again["chunks_synthesized"] == 1


def test_status_reads_the_request_queue_as_run_does(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    record = {"narrativeAudioStatus": "requested", "narrative": "Who goes there?"}
    (out / "status.json").write_text(json.dumps({"books": {"owl": record}}))
    where = [f"--out={out}", f"--cache={tmp_path / 'cache'}", "--engine=preview"]
    counts = json.loads(invoke("status", "--requests", "--json", *where))
    assert counts["pending"] == 1 and counts["books"][0]["book_id"] == "owl"
    result = CliRunner().invoke(cli, ["status", *where])
    assert result.exit_code == 2 and "give a MANIFEST or --requests" in result.output
