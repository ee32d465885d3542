"""Imports point down: a module may import only modules of lower layers (or of its own package)."""

from __future__ import annotations

import ast
from pathlib import Path

import narrate

PACKAGE = Path(narrate.__file__).parent

# The allowed order, bottom first. A module belongs to the layer of its longest listed prefix
# (narrate.post.detect is not narrate.post). Within a layer, modules do not import each other,
# except inside one package (narrate.synth.*, narrate.post.*) and the pairs in SIDEWAYS.
LAYERS: list[tuple[str, ...]] = [
    ("narrate", "narrate.errors", "narrate.records"),
    ("narrate.config", "narrate.atomic"),
    ("narrate.console",),  # what a run shows at a terminal (bars, lines), driven by its events
    ("narrate.spoken",),  # text as spoken (numbers, abbreviations, the lexicon): pure, under text
    ("narrate.language",),  # the language check of a row's text, before planning
    ("narrate.text", "narrate.report"),  # text rules and run reporting, no I/O of their own
    ("narrate.plan", "narrate.selection"),  # pure: planning (rows, text loaders, voice lookups
    # are passed in) and the rows a preview keeps
    ("narrate.options",),  # what a command was asked to do, as typed objects
    ("narrate.settings",),  # the options that shape a file, as stored with it
    # adapters: engines, post-processing, where bytes and records live
    ("narrate.synth", "narrate.post", "narrate.cache", "narrate.storage", "narrate.database"),
    ("narrate.quality",),  # listens to audio: eSpeak NG pronunciations, decoded files
    ("narrate.manifest",),  # reads manifest files through narrate.storage (gs://)
    ("narrate.sources", "narrate.publish", "narrate.post.detect"),  # sources and sinks of books
    ("narrate.review",),  # the review page: a run report and its files as HTML
    ("narrate.ledger", "narrate.workers", "narrate.gate", "narrate.checking"),
    ("narrate.rendering",),  # post-processing processes, started like the workers
    ("narrate.run",),
    ("narrate.status", "narrate.doctor"),
    ("narrate.cli",),
]
SIDEWAYS = {
    ("narrate.cache", "narrate.storage"): "the chunk cache is kept in a Storage",
}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed the module there)."""
    matches = [
        (len(prefix), index, prefix)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != "narrate" and module.startswith(prefix + "."))
    ]
    if not matches:
        return 0, "narrate"  # narrate/__init__.py itself, and nothing else (see the test below)
    _, index, prefix = max(matches)
    return index, prefix


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every narrate module the file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "narrate":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "narrate"}
    return found


def edges() -> list[tuple[str, str]]:
    return [
        (module_name(path), target)
        for path in sorted(PACKAGE.rglob("*.py"))
        for target in sorted(imports(path))
    ]


def upward_edges(pairs: list[tuple[str, str]]) -> list[str]:
    problems = []
    for source, target in pairs:
        (low, placed_low), (high, placed_high) = layer_of(target), layer_of(source)
        if target in ("narrate", source) or placed_low == placed_high:
            continue  # the package root (the C++ core), itself, or inside one package
        if low > high or (low == high and (source, target) not in SIDEWAYS):
            problems.append(f"{source} (layer {high}) imports {target} (layer {low})")
    return problems


def test_every_module_of_the_package_is_placed_in_a_layer() -> None:
    unplaced = [
        module
        for module in {module_name(p) for p in PACKAGE.rglob("*.py")}
        if module != "narrate" and layer_of(module)[1] == "narrate"
    ]
    assert unplaced == []


def test_no_module_imports_a_module_above_or_beside_it() -> None:
    assert upward_edges(edges()) == []


def test_an_upward_or_sideways_import_is_reported() -> None:
    fake = [
        ("narrate.plan", "narrate.storage"),
        ("narrate.records", "narrate.text"),
        ("narrate.storage", "narrate.database"),
    ]
    assert len(upward_edges(fake)) == 3
    assert (
        upward_edges([("narrate.cache", "narrate.storage"), ("narrate.cli", "narrate.run")]) == []
    )
