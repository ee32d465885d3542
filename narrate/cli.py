"""Thin click layer: parse options, call into the stages, map NarrateError to exit codes.

Importing this module must not import torch (fast `--help` and `plan`): heavy modules are
imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from narrate import __version__
from narrate.config import (
    AUDIO_FORMATS,
    FRAME_RATE,
    EngineConfig,
    available_cores,
    build_configs,
)
from narrate.errors import EXIT_OK, EXIT_SOME_FAILED, NarrateError
from narrate.options import CatalogOptions, DeviceOptions, OutputOptions, RunOptions
from narrate.synth.registry import DEFAULT_ENGINE, ENGINES

if TYPE_CHECKING:
    from narrate.config import Lexicon
    from narrate.selection import Selection


def add_options(
    command: Callable[..., Any], options: list[Callable[[Callable[..., Any]], Any]]
) -> Callable[..., Any]:
    for option in reversed(options):
        command = option(command)
    return command


class NarrateGroup(click.Group):
    """Turns a NarrateError from any command into its message and exit code, no traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NarrateError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=NarrateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="narrate")
def cli() -> None:
    """Render book narratives to narrated audio with Sesame CSM-1B."""


def _read_lexicon(ctx: click.Context, param: click.Parameter, path: str | None) -> Any:
    from narrate.spoken import load_lexicon

    return load_lexicon(path) if path else None


# the catalog's pronunciation lexicon: it changes the text of, and re-renders, only the chunks
# holding one of its words (README: "Spoken text and the lexicon")
lexicon_option = click.option(
    "--lexicon",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    callback=_read_lexicon,
    help="pronunciation lexicon: TSV (written<TAB>spoken per line) or a .json object",
)


text_root_option = click.option(
    "--text-root",
    type=click.Path(file_okay=False),
    default=None,
    help="folder local text_uri files must be in [default: the manifest's folder]",
)


# CSM's sampling: part of every chunk id (a change re-synthesizes), so plan, run, status and
# doctor take them like say
temperature_option = click.option(
    "--temperature",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0),
    help="CSM sampling temperature (0: greedy)",
)
top_k_option = click.option(
    "--top-k", default=50, show_default=True, type=click.IntRange(1), help="CSM top-k sampling"
)


# the engines of narrate.synth.registry, for every command that loads or keys chunks by one
engine_option = click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default=DEFAULT_ENGINE,
    show_default=True,
    help="; ".join(f"{spec.name}: {spec.summary}" for spec in ENGINES.values()),
)


def catalog_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that plans a catalog (plan, run, status, doctor): the
    command gets them as `catalog: CatalogOptions`."""

    @functools.wraps(command)
    def with_catalog(
        *args: Any,
        engine: str,
        model: str,
        voices_dir: str,
        batch_size: int,
        window_books: int,
        max_audio_length_ms: int,
        text_root: str | None,
        max_text_chars: int,
        lexicon: Lexicon | None,
        language_check: bool,
        temperature: float,
        top_k: int,
        **kwargs: Any,
    ) -> Any:
        configs = build_configs(
            engine,
            model,
            batch_size,
            window_books,
            max_audio_length_ms,
            max_text_chars,
            lexicon,
            language_check,
            temperature=temperature,
            top_k=top_k,
        )
        catalog = CatalogOptions(*configs, voices_dir=voices_dir, text_root=text_root)
        return command(*args, catalog=catalog, **kwargs)

    options = [
        lexicon_option,
        engine_option,
        click.option(
            "--model",
            default="sesame/csm-1b",
            show_default=True,
            help="Hugging Face id or local directory of the CSM model",
        ),
        click.option(
            "--voices",
            "voices_dir",
            default="voices",
            show_default=True,
            type=click.Path(file_okay=False),
            help="voice prompt library (voices/NAME/)",
        ),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024)),
        click.option(
            "--window",
            "window_books",
            default=2000,
            show_default=True,
            type=click.IntRange(1),
            help="books planned together; each window is length-sorted on its own",
        ),
        click.option(
            "--max-audio-length-ms",
            default=30_000,
            show_default=True,
            type=click.IntRange(2_000, 90_000),
            help="frame cap of any one chunk",
        ),
        temperature_option,
        top_k_option,
        text_root_option,
        click.option(
            "--max-text-chars",
            default=200_000,
            show_default=True,
            type=click.IntRange(1),
            help="longest narrative accepted",
        ),
        click.option(
            "--language-check/--no-language-check",
            default=True,
            show_default=True,
            help="reject rows not in English (CSM-1B speaks English) before synthesis",
        ),
    ]
    return add_options(with_catalog, options)


@cli.command()
@click.argument("manifest")
@catalog_options
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=None,
    help="processes planning windows in parallel [default: one per CPU core]",
)
def plan(manifest: str, catalog: CatalogOptions, as_json: bool, jobs: int | None) -> None:
    """Validate and plan MANIFEST (JSONL, CSV or Parquet, local or gs://) without synthesizing.

    Exit 0 when every row is valid, 1 when some rows were rejected, 2 when the manifest cannot
    be read.
    """

    from narrate.plan import Planner, plan_rows, render_summary
    from narrate.report import EventLog, logging_to
    from narrate.sources import manifest_rows, manifest_texts, voice_lookup

    voices = voice_lookup(catalog.engine, catalog.voices_dir)
    texts = manifest_texts(manifest, catalog.text_root, catalog.chunking.max_text_chars)
    planner = Planner(
        catalog.engine, catalog.chunking, catalog.plan, voices=voices, text_loader=texts
    )
    rows = manifest_rows(manifest, max_text_chars=catalog.chunking.max_text_chars)
    with logging_to(EventLog()):  # a manifest's warnings, as a run would log them
        summary = plan_rows(
            rows,
            planner,
            total_rows=rows.total_rows,
            jobs=jobs or available_cores(),
            progress=sys.stderr.isatty(),
        )
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else render_summary(summary))
    sys.exit(EXIT_SOME_FAILED if summary.rows_rejected else EXIT_OK)


@cli.command()
@click.argument("text")
@click.option("--speaker", default=0, show_default=True, type=click.IntRange(0))
@click.option("--voice", default=None, help="voice prompt from the library (voices/NAME/)")
@click.option(
    "--voices", "voices_dir", default="voices", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--context",
    multiple=True,
    metavar="SPEAKER:TEXT",
    help="a turn spoken before TEXT (repeatable; its audio is rendered first, as CSM expects "
    "audio on every turn but the last), e.g. --context '1:Where were you?'",
)
@click.option(
    "--max-audio-length-ms", default=30_000, show_default=True, type=click.IntRange(2_000, 90_000)
)
@engine_option
@click.option(
    "--model", default="sesame/csm-1b", show_default=True, help="Hugging Face id or local directory"
)
@temperature_option
@top_k_option
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option(
    "--compile", "compile_model", is_flag=True, help="capture the frame step as CUDA graphs"
)
@click.option(
    "-o", "--output", default="out.wav", show_default=True, type=click.Path(dir_okay=False)
)
@lexicon_option
def say(
    text: str,
    context: tuple[str, ...],
    engine: str,
    model: str,
    temperature: float,
    top_k: int,
    max_audio_length_ms: int,
    voices_dir: str,
    output: str,
    compile_model: bool,
    **options: Any,
) -> None:
    """Speak TEXT into a WAV file; prints its duration and the real-time factor."""
    from pathlib import Path

    from narrate.doctor import engine_preflight
    from narrate.synth import Turn
    from narrate.synth.say import say as speak
    from narrate.synth.say import write_wav

    config = EngineConfig(engine, model, temperature, top_k, max_audio_length_ms)
    spoken = speak(
        text,
        engine=config,
        context=[Turn.parse(turn) for turn in context],
        voices_dir=Path(voices_dir),
        compile=compile_model,
        preflight=engine_preflight,
        **options,
    )
    write_wav(Path(output), spoken.audio)
    click.echo(
        f"{output}: {spoken.duration_s:.2f} s of audio in {spoken.synth_seconds:.2f} s "
        f"(real-time factor {spoken.real_time_factor:.2f}; model loaded in "
        f"{spoken.load_seconds:.1f} s)"
    )


@cli.command()
@click.argument("text", required=False)
@click.option("--manifest", default=None, help="read the text of --book from this manifest")
@click.option("--book", "book_id", default=None, help="book id, with --manifest")
@text_root_option
@lexicon_option
@click.option(
    "--explain",
    is_flag=True,
    help="then list each rewrite with its rule and each form left as written with the reason",
)
def spoken(
    text: str | None,
    manifest: str | None,
    book_id: str | None,
    text_root: str | None,
    lexicon: Any,
    explain: bool,
) -> None:
    """Print TEXT (or --book of --manifest) as it will be spoken: normalized, with numbers,
    currency, times, units, abbreviations and Roman numerals as words, the lexicon applied."""
    from narrate.text import explain_spoken, spoken_text

    if (text is None) == (manifest is None) or (manifest is None) != (book_id is None):
        raise click.UsageError("give TEXT, or --manifest and --book")
    if manifest and book_id:
        from narrate.config import ChunkingConfig
        from narrate.sources import spoken_books

        chunking = ChunkingConfig(lexicon=lexicon)
        book = next(spoken_books(manifest, [book_id], chunking=chunking, text_root=text_root))
        text, said = book.written, book.spoken
    else:
        assert text is not None
        said = spoken_text(text, lexicon)
    click.echo(said)
    if explain:
        decisions = explain_spoken(text, lexicon)
        click.echo()
        for d in decisions:
            if d.spoken is None:
                click.echo(f"left as written {json.dumps(d.written)}: {d.rule}")
            else:
                click.echo(
                    f"rewritten {json.dumps(d.written)} -> {json.dumps(d.spoken)} ({d.rule})"
                )
        left = sum(d.spoken is None for d in decisions)
        click.echo(f"{left} form{'' if left == 1 else 's'} left as written")


@cli.group()
def voice() -> None:
    """Manage the voice prompt library (voices/NAME/)."""


@voice.command("add")
@click.argument("name")
@click.option("--audio", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--text", required=True, help="the exact transcript of the audio")
@click.option("--speaker", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--voices", "voices_dir", default="voices", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--replace", is_flag=True, help="replace an existing voice of that name")
def voice_add(
    name: str, audio: str, text: str, speaker: int, voices_dir: str, replace: bool
) -> None:
    """Register NAME from a short recording (<= 20 s; resampled to 24 kHz mono)."""
    from pathlib import Path

    from narrate.synth.voices import VoiceLibrary

    added = VoiceLibrary(Path(voices_dir)).add(name, Path(audio), text, speaker, replace=replace)
    click.echo(
        f"voice {added.name}: {added.frames / FRAME_RATE:.1f} s, speaker {added.speaker}, "
        f"{added.positions} window positions per chunk, in {added.audio_path.parent}"
    )


@cli.group()
def dev() -> None:
    """Developer tools."""


@dev.command("tiny-model")
@click.argument("folder", type=click.Path(file_okay=False))
def tiny_model(folder: str) -> None:
    """Build a tiny random CSM + Mimi in FOLDER (for tests and offline runs: --model FOLDER)."""
    from narrate.synth.tiny import build_tiny_model

    click.echo(f"tiny model written to {build_tiny_model(folder)}")


watermark_model_option = click.option(
    "--watermark-model",
    default=None,
    envvar="NARRATE_AUDIOSEAL_DIR",
    show_envvar=True,
    help="folder with AudioSeal's generator_base.pth and detector_base.pth, or GEN.pth,DET.pth "
    "[default: the model cards' weights from AudioSeal's cache]",
)


def room_tone_option(name: str, default: float, where: str) -> Callable[..., Any]:
    return click.option(
        name,
        default=default,
        show_default=True,
        type=click.FloatRange(0, 10),
        help=f"seconds of room tone (silence) {where}",
    )


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options naming where a run's results live (run, status, doctor): the command gets them as
    `outputs: OutputOptions`."""

    @functools.wraps(command)
    def with_outputs(
        *args: Any,
        out: str,
        cache: str,
        database: str | None,
        path_template: str,
        object_template: str | None,
        audio_format: str,
        shard: str | None,
        loudness: float,
        no_watermark: bool,
        watermark_model: str | None,
        head_silence: float,
        tail_silence: float,
        **kwargs: Any,
    ) -> Any:
        import os

        from narrate.config import PostConfig
        from narrate.plan import Shard

        post = PostConfig(
            format=audio_format,
            loudness_lufs=loudness,
            watermark=not no_watermark,
            watermark_model=watermark_model,
            head_s=head_silence,
            tail_s=tail_silence,
        )
        outputs = OutputOptions(
            out=out,
            cache=cache,
            database=database,
            path_template=path_template,
            object_template=object_template,
            shard=Shard.parse(shard, os.environ),
            post=post,
        )
        return command(*args, outputs=outputs, **kwargs)

    options = [
        click.option(
            "--out", default="out", show_default=True, help="output folder, or gs://BUCKET/PREFIX"
        ),
        click.option(
            "--cache",
            default=".narrate/cache",
            show_default=True,
            help="chunk cache (the checkpoint): folder or gs://BUCKET/PREFIX",
        ),
        click.option(
            "--database",
            default=None,
            metavar="URL",
            help="Realtime Database URL (https://PROJECT.firebaseio.com); default: OUT/status.json",
        ),
        click.option(
            "--path-template",
            default="books/{book_id}",
            show_default=True,
            help="database record of each book",
        ),
        click.option(
            "--object-name",
            "object_template",
            default=None,
            help="object name template [default: {book_id}.{ext} locally, "
            "narrations/{book_id}.{ext} on gs://]",
        ),
        click.option(
            "--format",
            "audio_format",
            default="wav",
            show_default=True,
            type=click.Choice(AUDIO_FORMATS),
        ),
        click.option(
            "--shard",
            default=None,
            metavar="I/N",
            help="this pod's shard [default: JOB_COMPLETION_INDEX/NARRATE_SHARDS, else 0/1]",
        ),
        # post-processing settings are part of each book's content hash: status needs them too
        click.option("--loudness", default=-18.0, show_default=True, help="target integrated LUFS"),
        click.option(
            "--no-watermark", is_flag=True, help="publish without the AudioSeal watermark"
        ),
        watermark_model_option,
        room_tone_option("--head-silence", 0.3, "before the first word"),
        room_tone_option("--tail-silence", 0.5, "after the last word"),
    ]
    return add_options(with_outputs, options)


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Previews (run, status): only some books, through the same cache; the command gets them
    as `selection: Selection`."""

    @functools.wraps(command)
    def with_selection(
        *args: Any,
        book: tuple[str, ...],
        limit: int | None,
        sample: int | None,
        seed: int,
        **kwargs: Any,
    ) -> Any:
        from narrate.selection import Selection

        selection = Selection(book_ids=book, limit=limit, sample=sample, seed=seed)
        return command(*args, selection=selection, **kwargs)

    options = [
        click.option(
            "--book", multiple=True, metavar="ID", help="only this book (repeatable): a preview"
        ),
        click.option(
            "--limit", type=click.IntRange(1), default=None, help="only the first N books"
        ),
        click.option(
            "--sample", type=click.IntRange(1), default=None, help="only N books drawn at random"
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="the draw of --sample"),
    ]
    return add_options(with_selection, options)


def device_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The synthesis workers (run, doctor): the command gets them as `workers: DeviceOptions`."""

    @functools.wraps(command)
    def with_devices(
        *args: Any, devices: str, compile: bool, cpu_threads: int | None, **kwargs: Any
    ) -> Any:
        workers = DeviceOptions(devices=devices, compile=compile, cpu_threads=cpu_threads)
        return command(*args, workers=workers, **kwargs)

    options = [
        click.option(
            "--devices",
            default="auto",
            show_default=True,
            help="auto | cpu | cuda:0,cuda:1 | cpu,cpu : one worker process per entry",
        ),
        click.option(
            "--compile", is_flag=True, help="CUDA workers capture the frame step as CUDA graphs"
        ),
        click.option(
            "--cpu-threads",
            type=click.IntRange(1),
            default=None,
            help="torch threads per CPU worker [default: cores / CPU workers]",
        ),
    ]
    return add_options(with_devices, options)


# the site's request queue instead of a manifest (run, status)
requests_option = click.option(
    "--requests",
    is_flag=True,
    help="the books the site marked 'requested' instead of a manifest",
)
text_field_option = click.option(
    "--text-field",
    default="narrative",
    show_default=True,
    help="record field holding the text, with --requests",
)


@cli.command()
@click.argument("manifest", required=False)
@catalog_options
@output_options
@requests_option
@text_field_option
@click.option(
    "--url-style",
    default="token",
    show_default=True,
    type=click.Choice(["token", "signed", "public", "gs"]),
    help="URL written to the database (token: Firebase download URL, never expires)",
)
@device_options
@selection_options
@click.option("--force", is_flag=True, help="re-render books even when already published")
@click.option(
    "--post-workers",
    type=click.IntRange(1),
    default=None,
    help="processes assembling, mastering and encoding books "
    "[default: the cores the device workers leave free]",
)
@click.option(
    "--upload-workers",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="uploads in flight, shared by every book (each costs a few storage round trips)",
)
@click.option(
    "--lease-seconds",
    "lease_s",
    type=click.FloatRange(1),
    default=600.0,
    show_default=True,
    help="a book's record stays this run's for this long without renewal; a record left "
    "'processing' by a run gone for longer is taken again by --requests",
)
@click.option(
    "--quality",
    type=click.Choice(["on", "strict", "off"]),
    default="on",
    show_default=True,
    help="check that each chunk's audio says its text (pocketsphinx alignment) before caching "
    "it, retrying failures with the next seed; on: keep the best take and mark the book; "
    "strict: fail the book instead; off: no check",
)
@click.option(
    "--quality-retries",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="takes after the first for a chunk that fails the check",
)
@click.option(
    "--quality-workers",
    type=click.IntRange(1),
    default=None,
    help="processes checking takes [default: two per device, within half of the cores]",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="write the run report (JSON) here, and its review page (.html) beside it",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print the totals as JSON on a terminal too [default off a terminal]",
)
def run(
    manifest: str | None,
    catalog: CatalogOptions,
    outputs: OutputOptions,
    workers: DeviceOptions,
    selection: Selection,
    requests: bool,
    text_field: str,
    url_style: str,
    force: bool,
    post_workers: int | None,
    upload_workers: int,
    lease_s: float,
    quality: str,
    quality_retries: int,
    quality_workers: int | None,
    report_path: str | None,
    as_json: bool,
) -> None:
    """Render MANIFEST (or the request queue): synthesize, post-process, publish.

    Resumable: chunks already cached and books already published are skipped. Exit 0 when
    every book is ready, 1 when some failed, 75 when interrupted, 2 on usage errors, 3 when
    storage, database, model or devices fail.
    """
    early = _stop_before_start(report_path)  # the imports below take seconds
    click.get_current_context().call_on_close(lambda: _restore_handlers(early))
    from narrate.atomic import write_atomic
    from narrate.doctor import preflight
    from narrate.report import EventLog, logging_to
    from narrate.run import exit_code
    from narrate.run import run as run_catalog

    if bool(manifest) == requests:
        raise click.UsageError("give a MANIFEST or --requests (not both)")
    options = RunOptions(
        manifest,
        catalog,
        outputs,
        workers,
        requests=requests,
        text_field=text_field,
        url_style=url_style,
        force=force,
        post_workers=post_workers,
        upload_workers=upload_workers,
        lease_s=lease_s,
        quality=quality,  # type: ignore[arg-type]  # click.Choice checked it
        quality_retries=quality_retries,
        quality_workers=quality_workers,
        selection=selection,
    )
    log = EventLog()
    with logging_to(log):
        try:
            report = run_catalog(options, log, preflight)  # with its own stop handlers
        except NarrateError as exc:  # the run's stderr stays one stream of events
            if log.tty:
                raise
            log.event("error", message=exc.message, hint=exc.hint, exit_code=exc.exit_code)
            sys.exit(exc.exit_code)
    _restore_handlers(early)
    if report_path:
        write_atomic(report_path, json.dumps(report.to_json(), indent=2))
        _write_review_page(report_path, log)
    if as_json or not sys.stdout.isatty():  # the error that stopped a run was an event
        click.echo(json.dumps(report.totals()))
    else:
        from narrate.console import summary

        click.echo(summary(report.totals(), out=outputs.out, report=report_path))
    sys.exit(exit_code(report))


def _write_review_page(report_path: str, log: Any) -> None:
    """The run's review page beside its report; a page that cannot be built costs a warning,
    never the run's exit code (the report is written)."""
    from narrate.review import write_review

    try:
        page = write_review(report_path)
    except (NarrateError, OSError) as exc:
        log.event("warning", message=f"review page not written: {exc}")
        return
    log.event("review_written", page=str(page))


def _stop_before_start(report_path: str | None) -> dict[int, Any]:
    """Until the run installs its own handlers: a stop signal while narrate is still starting
    ends it as an interrupted run (exit 75, the totals, the report), not by the default action
    (SIGTERM: -15; SIGHUP, SIGQUIT: a core dump)."""
    import signal

    from narrate.errors import EXIT_INTERRUPTED
    from narrate.report import EventLog, RunReport

    def stop(signum: int, _frame: object) -> None:
        EventLog().event("run_interrupted", signal=signal.Signals(signum).name)
        report = RunReport(interrupted=True)
        if report_path:
            from narrate.atomic import write_atomic

            write_atomic(report_path, json.dumps(report.to_json(), indent=2))
        click.echo(json.dumps(report.totals()))
        sys.exit(EXIT_INTERRUPTED)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
    return {s: signal.signal(s, stop) for s in stops}


def _restore_handlers(previous: dict[int, Any]) -> None:
    import signal

    for signum, handler in previous.items():
        signal.signal(signum, handler)


@cli.command()
@click.argument("report", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="the page to write [default: REPORT with .html]",
)
@click.option(
    "--players",
    default=200,
    show_default=True,
    type=click.IntRange(0),
    help="books with a player and a waveform, failed, marked and lowest-scoring first",
)
def review(report: str, output: str | None, players: int) -> None:
    """Write a self-contained HTML page to see and hear a run from its REPORT (written by
    `narrate run --report`): totals, a sortable table of books, players, waveforms, chunk
    scores and failing words, failed books with reason and hint."""
    from narrate.review import write_review

    click.echo(write_review(report, output, players=players))


@cli.command()
@click.argument("manifest", required=False)
@catalog_options
@output_options
@selection_options
@requests_option
@text_field_option
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
def status(
    manifest: str | None,
    catalog: CatalogOptions,
    outputs: OutputOptions,
    selection: Selection,
    requests: bool,
    text_field: str,
    as_json: bool,
) -> None:
    """Where MANIFEST (or the request queue) stands: books done (and below the quality
    threshold), cached, partly cached, pending, failed, and why.

    Reads the cache and the outputs only; no model is loaded.
    """
    from narrate.status import catalog_status

    if bool(manifest) == requests:
        raise click.UsageError("give a MANIFEST or --requests (not both)")
    options = RunOptions(
        manifest, catalog, outputs, requests=requests, text_field=text_field, selection=selection
    )
    counts = catalog_status(options)
    click.echo(json.dumps(counts.to_json(), indent=2) if as_json else counts.render())


@cli.command()
@catalog_options
@output_options
@device_options
@click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
def doctor(
    catalog: CatalogOptions, outputs: OutputOptions, workers: DeviceOptions, as_json: bool
) -> None:
    """Check this machine against a run's targets: packages, GPUs, model, AudioSeal, eSpeak,
    and a write/read/delete probe on --out, --cache and --database.

    Pass the options the run will use (it declares the same option groups as `run`; those no
    check depends on are accepted and ignored). Exit 0 when nothing failed, 1 otherwise.
    """
    import os

    from narrate.doctor import Targets, abandoned, healthy, render, run_checks, to_json

    checks = run_checks(Targets.of(catalog, outputs, workers))
    click.echo(to_json(checks) if as_json else render(checks))
    code = EXIT_OK if healthy(checks) else EXIT_SOME_FAILED
    if abandoned():  # a blocked probe may hold threads that interpreter exit would wait for
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--manifest", default=None, help="name the books whose payload each file carries")
@watermark_model_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per file")
def detect(
    files: tuple[str, ...], manifest: str | None, watermark_model: str | None, as_json: bool
) -> None:
    """Detect the AudioSeal watermark in FILES (any format narrate writes): probability and
    16-bit payload per file; with --manifest, the book ids that payload belongs to."""
    from narrate.post import Watermarker
    from narrate.post.detect import books_by_payload, detect_files

    books = books_by_payload(manifest) if manifest else None
    for found in detect_files(files, Watermarker.for_detection(watermark_model), books):
        click.echo(json.dumps(found.to_json()) if as_json else str(found))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--text", default=None, help="the text every file should say")
@click.option("--manifest", default=None, help="the books' text: a file named BOOK_ID.EXT says it")
@click.option(
    "--book", "book_ids", multiple=True, help="only this book (repeatable) [default: every book]"
)
@text_root_option
@lexicon_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per file")
def check(
    paths: tuple[str, ...],
    text: str | None,
    manifest: str | None,
    book_ids: tuple[str, ...],
    text_root: str | None,
    lexicon: Any,
    as_json: bool,
) -> None:
    """Listen to audio files (PATHS: files, or folders of them; any format narrate writes):
    does each say its text? Words aligned, words not said and unexplained speech with their
    times, unexplained sound, a score. With --manifest, a file named after a book (as narrate
    names them) says that book; one file and one --book go together whatever the name. Long
    files are checked chunk by chunk. Exit 0 when every file passes, 1 when not."""
    from narrate.checking import check_paths

    verdicts = check_paths(
        paths,
        text=text,
        manifest=manifest,
        book_ids=list(book_ids),
        lexicon=lexicon,
        text_root=text_root,
    )
    passed = True
    for path, verdict in verdicts:
        passed &= verdict.passed
        click.echo(
            json.dumps({"file": path, **verdict.to_json()}) if as_json else f"{path}: {verdict}"
        )
        for fault in () if as_json else verdict.faults:
            click.echo(f"  {fault}")
    sys.exit(EXIT_OK if passed else EXIT_SOME_FAILED)


main = cli

if __name__ == "__main__":
    main()
