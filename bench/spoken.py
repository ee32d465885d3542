"""Accuracy of the spoken step on the corpus of book prose (tests/corpus), then its cost
(narrate.spoken.speak) in characters per second, on one core.

Accuracy: the share of written -> spoken pairs read exactly as the editor wrote them, and of
the sentences that must come out unchanged that do (targets: pairs >= 95 %, unchanged 100 %);
each miss is printed. Reported for the corpus and, on its own line, for the held-out set
(tests/corpus/holdout_*.tsv), written before the rules were read, as an outside check would.

Texts: the synthetic prose of bench/plan_scale.py (nothing to speak: only the C++ scan runs),
the same prose with a number, a title or a Roman numeral in about one sentence of eight, and
the plain prose with a 1,000-entry lexicon. Each is timed `--repeats` times; min / median /
max are printed, beside the whole of `measure_book` (what planning runs per book, the spoken
step included) on the same text for scale.

    python bench/spoken.py [--words 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from plan_scale import synthetic_pool

from narrate.config import ChunkingConfig, Lexicon
from narrate.spoken import speak
from narrate.text import measure_book, spoken_text

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"

SPRINKLES = ("in 1984", "Dr. Lee", "$12.50", "Chapter XIV", "the 3rd", "at 10:30 p.m.", "5 km")


def sprinkled(text: str, rng: np.random.Generator) -> str:
    sentences = text.split(". ")
    for i in range(0, len(sentences), 8):
        sentences[i] += " " + SPRINKLES[int(rng.integers(len(SPRINKLES)))]
    return ". ".join(sentences)


def rate(fn: object, text: str, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(text)  # type: ignore[operator]
        rates.append(len(text) / (time.perf_counter() - started) / 1e6)
    return rates


def corpus_rows(name: str) -> list[list[str]]:
    lines = (CORPUS / name).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]


def accuracy(label: str, pairs_file: str, unchanged_file: str) -> None:
    pairs = corpus_rows(pairs_file)
    unchanged = corpus_rows(unchanged_file)
    right = 0
    for genre, written, spoken in pairs:
        got = spoken_text(written)
        right += got == spoken
        if got != spoken:
            print(f"  miss ({genre}): {written!r}\n    got  {got!r}\n    want {spoken!r}")
    kept = 0
    for genre, written in unchanged:
        got = spoken_text(written)
        kept += got == written
        if got != written:
            print(f"  changed ({genre}): {written!r}\n    got  {got!r}")
    print(
        f"{label:8s} pairs read right  {right}/{len(pairs)} ({right / len(pairs):.1%}; target 95 %)"
    )
    print(
        f"{label:8s} unchanged kept    {kept}/{len(unchanged)} "
        f"({kept / len(unchanged):.1%}; target 100 %)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    accuracy("corpus", "spoken_pairs.tsv", "unchanged.tsv")
    accuracy("holdout", "holdout_pairs.tsv", "holdout_unchanged.tsv")
    rng = np.random.default_rng(7)
    plain, _ = synthetic_pool(args.words, rng)
    lexicon = Lexicon(tuple((f"name{i}x", f"spoken {i}") for i in range(1000)))
    config = ChunkingConfig()
    cases = {
        "plain prose, speak": (speak, plain),
        "plain prose, measure_book": (
            lambda t: measure_book(t, config=config, engine_fingerprint="bench"),
            plain,
        ),
        "1 in 8 sentences with a form, speak": (speak, sprinkled(plain, rng)),
        "plain prose, 1,000-entry lexicon, speak": (lambda t: speak(t, lexicon), plain),
    }
    print(f"{len(plain) / 1e6:.1f} M characters per text, {args.repeats} runs each, one core")
    for name, (fn, text) in cases.items():
        rates = rate(fn, text, args.repeats)
        print(
            f"{name:42s} M chars/s min {min(rates):7.1f}  median "
            f"{statistics.median(rates):7.1f}  max {max(rates):7.1f}"
        )


if __name__ == "__main__":
    main()
