"""What a command was asked to do, as typed objects: the CLI builds them from its options (each
shared group of options yields one object), the library takes them. Defaults match the CLI's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from string import Formatter
from typing import Literal

from narrate.config import ChunkingConfig, EngineConfig, PlanConfig, PostConfig
from narrate.errors import UsageError
from narrate.plan import Shard
from narrate.selection import Selection

_PATH_LITERAL_BAD = re.compile(r"[.$#\[\]\x00-\x1f\x7f]")


def check_template(template: str, option: str, fields: tuple[str, ...], example: str) -> None:
    """A name template must hold `{book_id}` (else every book gets one name: one record or one
    file for all) and only the documented `fields`, plain: no attribute or index access,
    conversion or format spec, which could read Python internals or make two ids one name."""
    hint = f"use the fields {', '.join('{' + f + '}' for f in fields)}, e.g. {example}"
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"{option} {template!r} is not a valid template: {exc}", hint) from None
    used = [name for _, name, _, _ in parts if name is not None]
    for _, name, spec, conversion in parts:
        if name is not None and (name not in fields or spec or conversion):
            shown = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise UsageError(f"{option} {template!r}: {shown} is not one of its fields", hint)
    if "book_id" not in used:
        raise UsageError(
            f"{option} {template!r} has no {{book_id}}: every book would get the same name", hint
        )


@dataclass(frozen=True)
class CatalogOptions:
    """How a catalog is chunked and batched, and by which engine (plan, run, status, doctor)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    voices_dir: str = "voices"
    text_root: str | None = None  # --text-root; None: a local manifest's own folder


@dataclass(frozen=True)
class OutputOptions:
    """Where a run's results live and how books are finished (run, status, doctor): the post
    settings are part of each book's content hash, so status needs them too."""

    out: str = "out"
    cache: str = ".narrate/cache"
    database: str | None = None  # None: a local status.json records the same fields
    path_template: str = "books/{book_id}"
    object_template: str | None = None  # None: "{book_id}.{ext}" locally, "narrations/..." on GCS
    shard: Shard = field(default_factory=Shard)
    post: PostConfig = field(default_factory=PostConfig)

    def __post_init__(self) -> None:
        example = "books/{book_id}"
        check_template(self.path_template, "--path-template", ("book_id",), example)
        literal = "".join(text for text, *_ in Formatter().parse(self.path_template))
        segments = self.path_template.strip("/").split("/")
        if _PATH_LITERAL_BAD.search(literal) or not all(segments):
            raise UsageError(
                f"--path-template {self.path_template!r} is not a database path",
                hint="segments are keys without . $ # [ ] or control characters, "
                "e.g. books/{book_id}",
            )
        if self.object_template is not None:
            example = "narrations/{book_id}.{ext}"
            check_template(self.object_template, "--object-name", ("book_id", "ext"), example)


@dataclass(frozen=True)
class DeviceOptions:
    """The synthesis workers (run, doctor)."""

    devices: str = "auto"  # auto | cpu | cuda:0,cuda:1 | cpu,cpu : one worker per entry
    compile: bool = False  # CUDA workers capture the frame step as CUDA graphs
    cpu_threads: int | None = None  # torch threads per CPU worker (default: cores / CPU workers)


@dataclass(frozen=True)
class RunOptions:
    manifest: str | None = None
    catalog: CatalogOptions = field(default_factory=CatalogOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    workers: DeviceOptions = field(default_factory=DeviceOptions)
    requests: bool = False  # read the site's request queue instead of a manifest
    text_field: str = "narrative"
    url_style: str = "token"
    force: bool = False
    post_workers: int | None = None  # None: the cores the device workers leave free
    stop_grace_s: float = 8.0  # finishing books after SIGTERM; the run exits within 15 s
    lease_s: float = 600.0  # how long a record stays ours without renewal (see database.py)
    upload_workers: int = 16  # one pool shared by every book: uploads are round-trip bound
    quality: Literal["on", "strict", "off"] = "on"  # the check of every take before caching
    quality_retries: int = 2  # takes after the first for a chunk failing the check
    quality_workers: int | None = None  # checking processes (default: see narrate.run)
    selection: Selection = field(default_factory=Selection)  # previews: --book, --limit, --sample
