"""Spoken text: what the model is given to read, with numbers, abbreviations and Roman numerals
written out as words, and the operator's pronunciation lexicon applied.

`speak` runs on a book's text before sentence splitting and chunk ids (see narrate.text), so a
chunk's id hashes the text as spoken: changing a lexicon entry changes the ids, and re-renders
the audio, of exactly the chunks that contain it.

The rules, each applied only to what it recognises whole (anything else is left as written):

- numbers: "42" -> "forty-two", "1,000" -> "one thousand", "3.14" -> "three point one four",
  "-5" -> "minus five"; four-digit numbers from 1000 to 2099 are read as years ("1984" ->
  "nineteen eighty-four"); decades: "1800s" -> "eighteen hundreds", "'60s" -> "sixties";
  ordinals: "3rd" -> "third"; percentages: "50%" -> "fifty percent"
- currency: "$12.50" -> "twelve dollars and fifty cents", "£5" -> "five pounds", "€3 million"
  -> "three million euros"
- clock times: "10:30" -> "ten thirty", "10:30 p.m." -> "ten thirty PM", "9am" -> "nine AM"
- units after a number: "5 km" -> "five kilometers", "1 kg" -> "one kilogram" (see _UNITS)
- abbreviations with their period (see _ABBREVIATIONS): "Dr." -> "Doctor" before a name,
  "Drive" after one; "St." -> "Saint" before a name, else "Street"; "No. 5" -> "number five";
  "e.g." -> "for example", "i.e." -> "that is", "etc." -> "et cetera"
- Roman numerals in capitals, where the context makes them numbers: after a capitalized
  context word (_CARDINAL_CONTEXTS: "Chapter XIV" -> "Chapter fourteen", "World War II" ->
  "World War two"; not "the part I liked")
  and after a capitalized name for regnal numbers up to 39 ("Louis XIV" -> "Louis the
  fourteenth"); the pronoun "I" only after a context word ("Chapter I"); never a numeral
  outside those contexts ("CV", "MIX") nor one in lowercase ("Mix").

Left as written: numbers glued to letters or symbols ("A12-3B", "MP3", "4x4"), anything with a
hyphen, slash or a second dot between digits (ISBNs, phone numbers, dates like 12/05/2020,
versions like 1.2.3, IP addresses), URLs, digit runs over six digits without thousands
separators, numbers with a leading zero ("007"), and a parenthesized area code before a phone
number ("(555) 123-4567").

An expansion at the start of a sentence starts with a capital ("1984 was..." -> "Nineteen
eighty-four was..."), so sentence splitting sees the same sentence ends as before; an
abbreviation that may end a sentence ("etc.", "St." as Street, "p.m.") keeps its period when a
capitalized word follows.

Speed: `narrate._textcore.spoken_marks` finds, in C++ at about a byte per nanosecond, the few
offsets where a rule or a lexicon entry may apply (a digit, a known abbreviation before ".", a
word of Roman-numeral capitals, a lexicon entry); the rules here run only there, so text with
none of them costs one scan.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from num2words import num2words

from narrate import _textcore
from narrate.config import Lexicon
from narrate.errors import UsageError

if not hasattr(_textcore, "spoken_marks"):  # a core compiled before narrate.spoken existed
    raise ImportError("narrate's C++ text core is out of date: run `make install`")

# --- number words ----------------------------------------------------------------------------

_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


# num2words takes ~80 µs a call; books repeat their numbers (counts, years, chapters)
@lru_cache(maxsize=8192)
def _cardinal(number: int) -> str:
    # num2words writes "twelve thousand, three hundred": a comma would be read as a pause
    return num2words(number).replace(",", "")


@lru_cache(maxsize=4096)
def _ordinal(number: int) -> str:
    return num2words(number, to="ordinal").replace(",", "")


@lru_cache(maxsize=4096)
def _year(number: int) -> str:
    return num2words(number, to="year")


def _decimal(whole: str, fraction: str | None) -> str:
    """ "3", "14" -> "three point one four" (digits after the point one by one)."""
    words = _cardinal(int(whole.replace(",", "")))
    if fraction:
        words += " point " + " ".join(_DIGIT_WORDS[int(d)] for d in fraction)
    return words


def _plural(words: str) -> str:
    """ "nineteen sixty" -> "nineteen sixties", "eighteen hundred" -> "eighteen hundreds"."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


# --- the rules -------------------------------------------------------------------------------

_INT = r"\d{1,3}(?:,\d{3})+|\d+"
_MERIDIEM = r"[ap]\.m\.|[AP]\.M\.|[ap]m\b|[AP]M\b"
_TOKEN_END = r"(?=[)\]\"'.,;:!?]*(?:\s|\Z))"  # closing punctuation, then whitespace or the end

_UNITS: dict[str, tuple[str, str]] = {
    "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "mi": ("mile", "miles"),
    "yd": ("yard", "yards"),
    "ft": ("foot", "feet"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "ml": ("milliliter", "milliliters"),
    "mph": ("mile per hour", "miles per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "kW": ("kilowatt", "kilowatts"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
}
_CURRENCIES = {  # symbol: (one, many, one hundredth, hundredths)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
_SCALES = ("thousand", "million", "billion", "trillion")


def _alternation(words: object) -> str:
    return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))  # type: ignore[arg-type]


# Anchored at the start of a whitespace-delimited token that holds a digit.
_NUMBER = re.compile(
    rf"""(?P<open>[(\["']*)(?:
        (?P<currency>[$£€])(?P<amount>{_INT})(?:\.(?P<cents>\d+))?
            (?:\s(?P<scale>{"|".join(_SCALES)})\b)?
      | (?P<hour>\d{{1,2}}):(?P<minute>[0-5]\d)(?:\s?(?P<time_meridiem>{_MERIDIEM}))?
      | (?P<ordinal>{_INT})(?P<suffix>st|nd|rd|th)
      | (?P<decade>'?(?:1\d|20)?\d0)'?s
      | (?P<minus>-)?(?P<whole>{_INT})(?:\.(?P<fraction>\d+))?
            (?:(?P<percent>%)|\s?(?P<meridiem>{_MERIDIEM})|\s?(?P<unit>{_alternation(_UNITS)})(?![\w/]))?
    ){_TOKEN_END}""",
    re.VERBOSE,
)
_PHONE_AFTER = re.compile(r"\s\d{3}-\d{4}")  # "(555) 123-4567": the "(555)" is an area code

_ORDINAL_SUFFIXES = {1: "st", 2: "nd", 3: "rd"}


def _ordinal_suffix(number: int) -> str:
    return "th" if number % 100 in (11, 12, 13) else _ORDINAL_SUFFIXES.get(number % 10, "th")


def _plain_int(digits: str) -> bool:
    """A number as people write one: no leading zero, thousands separated, at most six digits
    in a row (longer runs are phone numbers, ids, ISBN-10s)."""
    return (digits == "0" or not digits.startswith("0")) and ("," in digits or len(digits) <= 6)


def _meridiem(written: str) -> str:
    return "AM" if written[0] in "aA" else "PM"


def _number_words(m: re.Match[str], counted: bool) -> str | None:
    """The spoken form of a `_NUMBER` match, or None to leave it as written; `counted`: the
    number follows a word like "Chapter" or "page", so "1984" is not a year."""
    if m["currency"]:
        return _money(m["currency"], m["amount"], m["cents"], m["scale"])
    if m["hour"]:
        hour, minute = int(m["hour"]), int(m["minute"])
        if hour > 24:
            return None
        if m["time_meridiem"]:
            if not 1 <= hour <= 12:
                return None
            clock = _cardinal(hour) if minute == 0 else _clock_minutes(hour, minute)
            return f"{clock} {_meridiem(m['time_meridiem'])}"
        if minute == 0:
            return f"{_cardinal(hour)} o'clock" if hour <= 12 else f"{_cardinal(hour)} hundred"
        return _clock_minutes(hour, minute)
    if m["ordinal"]:
        digits = m["ordinal"]
        number = int(digits.replace(",", ""))
        if not _plain_int(digits) or m["suffix"] != _ordinal_suffix(number):
            return None
        return _ordinal(number)
    if m["decade"]:
        decade = m["decade"].lstrip("'")
        return _plural(_year(int(decade)) if len(decade) == 4 else _cardinal(int(decade)))
    whole, fraction = m["whole"], m["fraction"]
    if not _plain_int(whole):
        return None
    if m["meridiem"]:
        if fraction or not 1 <= int(whole) <= 12:
            return None
        return f"{_cardinal(int(whole))} {_meridiem(m['meridiem'])}"
    number = int(whole.replace(",", ""))
    is_year = len(whole) == 4 and 1000 <= number <= 2099 and not (fraction or m["unit"] or counted)
    words = _year(number) if is_year and not m["percent"] else _decimal(whole, fraction)
    if m["minus"]:
        words = "minus " + words
    if m["percent"]:
        return words + " percent"
    if m["unit"]:
        one, many = _UNITS[m["unit"]]
        return f"{words} {one if whole == '1' and not fraction else many}"
    return words


def _clock_minutes(hour: int, minute: int) -> str:
    return f"{_cardinal(hour)} {'oh ' if minute < 10 else ''}{_cardinal(minute)}"


def _money(symbol: str, amount: str, cents: str | None, scale: str | None) -> str | None:
    one, many, hundredth, hundredths = _CURRENCIES[symbol]
    if not _plain_int(amount):
        return None
    units = int(amount.replace(",", ""))
    if scale or (cents and len(cents) != 2):  # "$3.5 million", "$2.125": a decimal amount
        return f"{_decimal(amount, cents)}{' ' + scale if scale else ''} {many}"
    parts = []
    if units or not cents or int(cents) == 0:
        parts.append(f"{_cardinal(units)} {one if units == 1 else many}")
    if cents and int(cents):
        parts.append(f"{_cardinal(int(cents))} {hundredth if int(cents) == 1 else hundredths}")
    return " and ".join(parts)


# Abbreviations, matched with their period and in the case written here.
_ABBREVIATIONS = {
    "Mr": "Mister",
    "Mrs": "Missus",
    "Ms": "Miz",
    "Dr": "Doctor",
    "Prof": "Professor",
    "Rev": "Reverend",
    "Hon": "Honorable",
    "Capt": "Captain",
    "Col": "Colonel",
    "Gen": "General",
    "Lt": "Lieutenant",
    "Sgt": "Sergeant",
    "Mt": "Mount",
    "St": "Saint",
    "Jr": "Junior",
    "Sr": "Senior",
    "No": "number",
    "vs": "versus",
    "approx": "approximately",
    "etc": "et cetera",
    "e.g": "for example",
    "i.e": "that is",
}
# may end a sentence: the period stays when a capitalized word follows
_MAY_END_SENTENCE = {"Jr", "Sr", "etc", "Street", "Drive"}
_ABBREVIATION = re.compile(rf"(?P<abbreviation>{_alternation(_ABBREVIATIONS)})\.")
_NEXT_WORD = re.compile(r"\s+(?P<word>[\w']+)")
_NUMBER_NEXT = re.compile(r"\s*\d")
# capitalized words after "St." or "Dr." that start a new sentence rather than a name
_SENTENCE_STARTERS = frozenset(
    "A An And As At But He Her His I If In It Its My On She So That The Then There They This "
    "We When You".split()
)

_CARDINAL_CONTEXTS = (
    "chapter",
    "book",
    "part",
    "volume",
    "vol",
    "act",
    "scene",
    "canto",
    "section",
    "appendix",
    "psalm",
    "war",
    "phase",
    "stage",
    "type",
    "class",
    "level",
)
_NOT_REGNAL = frozenset("Malcolm Generation Planet Brand Project Model".split())
_ROMAN = re.compile(r"(?P<numeral>[IVXLCDM]+)(?![\w])")
_ROMAN_FORM = re.compile(r"M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
_WORD_BEFORE = re.compile(r"(?P<word>[A-Za-z]+)(?P<period>\.?)[ \t]*\n?[ \t]*\Z")
_SENTENCE_BEFORE = re.compile(r"(?:\A\s*|[.!?][\"')\]]*\s+|\n[ \t]*\n[ \t]*)\Z")


def _roman_value(numeral: str) -> int:
    values = [_ROMAN_VALUES[c] for c in numeral]
    return sum(-v if v < after else v for v, after in zip(values, [*values[1:], 0], strict=True))


def _word_before(text: str, at: int) -> re.Match[str] | None:
    return _WORD_BEFORE.search(text, max(0, at - 40), at)


def _roman_words(text: str, at: int, m: re.Match[str]) -> str | None:
    numeral = m["numeral"]
    before = _word_before(text, at)
    if not before or not _ROMAN_FORM.fullmatch(numeral):
        return None
    word = before["word"]
    if word[0].isupper() and word.lower() in _CARDINAL_CONTEXTS:  # not "the part I liked"
        return _cardinal(_roman_value(numeral))
    regnal = (
        numeral != "I"
        and not before["period"]
        and set(numeral) <= {"I", "V", "X"}
        and word[0].isupper()
        and word[1:].islower()
        and word not in _NOT_REGNAL
        and word not in _SENTENCE_STARTERS
    )
    return f"the {_ordinal(_roman_value(numeral))}" if regnal else None


def _abbreviation_words(text: str, m: re.Match[str]) -> str | None:
    written = m["abbreviation"]
    after = _NEXT_WORD.match(text, m.end())
    name_follows = bool(after and after["word"][0].isupper()) and (
        after["word"] not in _SENTENCE_STARTERS
    )
    if written == "No":
        return "number" if _NUMBER_NEXT.match(text, m.end()) else None
    spoken = _ABBREVIATIONS[written]
    if written == "St" and not name_follows:
        spoken = "Street"
    elif written == "Dr" and not name_follows:
        before = _word_before(text, m.start())
        if before and before["word"][0].isupper() and not before["period"]:
            spoken = "Drive"
    if (spoken in _MAY_END_SENTENCE or written in _MAY_END_SENTENCE) and _capital_follows(
        text, m.end()
    ):
        spoken += "."
    return spoken


def _capital_follows(text: str, end: int) -> bool:
    """The text ends at `end`, or the next word starts with a capital: a period written at
    `end` may end a sentence, so an expansion keeps it."""
    after = _NEXT_WORD.match(text, end)
    return end == len(text) or bool(after and after["word"][0].isupper())


# --- the lexicon -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CompiledLexicon:
    words: object  # _textcore.words capsule: the written forms, for spoken_marks
    pattern: re.Pattern[str]
    exact: dict[str, str]
    folded: dict[str, str]


@lru_cache(maxsize=16)
def _compiled(lexicon: Lexicon) -> _CompiledLexicon:
    exact = {w: s for w, s in lexicon.entries if w != w.lower()}
    folded = {w: s for w, s in lexicon.entries if w == w.lower()}
    groups = []
    if exact:
        groups.append(f"(?P<exact>{_alternation(exact)})")
    if folded:
        groups.append(f"(?i:(?P<folded>{_alternation(folded)}))")
    pattern = re.compile(rf"(?:{'|'.join(groups) or '(?!)'})(?!\w)")
    words = _textcore.words([w.lower() for w, _ in lexicon.entries])
    return _CompiledLexicon(words, pattern, exact, folded)


def load_lexicon(path: str | Path) -> Lexicon:
    """Read a lexicon: TSV (written form, a tab, spoken form; `#` comments and blank lines
    allowed) or, for a `.json` file, one JSON object {written: spoken}."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"lexicon {path}: cannot be read ({exc})") from None
    if path.suffix.lower() == ".json":
        return Lexicon(_json_entries(path, content), str(path))
    return Lexicon(_tsv_entries(path, content), str(path))


def _checked(path: Path, where: str, written: str, spoken: str) -> tuple[str, str]:
    written, spoken = written.strip(), spoken.strip()
    if not written or not spoken or "\n" in written + spoken:
        raise UsageError(
            f"lexicon {path}, {where}: a written form and a spoken form are both needed",
            hint="one entry a line: the written form, a tab, the spoken form",
        )
    return written, spoken


def _tsv_entries(path: Path, content: str) -> tuple[tuple[str, str], ...]:
    entries: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise UsageError(
                f"lexicon {path}, line {number}: expected 'written<TAB>spoken', got {line!r}",
                hint="separate the written and the spoken form with one tab character",
            )
        written, spoken = _checked(path, f"line {number}", *fields)
        if written in entries:
            raise UsageError(
                f"lexicon {path}, line {number}: {written!r} is already defined on line "
                f"{entries[written][1]}"
            )
        entries[written] = (spoken, number)
    return tuple((written, spoken) for written, (spoken, _) in entries.items())


def _json_entries(path: Path, content: str) -> tuple[tuple[str, str], ...]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise UsageError(f"lexicon {path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UsageError(f"lexicon {path}: expected one JSON object {{written: spoken}}")
    entries = []
    for written, spoken in data.items():
        if not isinstance(spoken, str):
            raise UsageError(f"lexicon {path}, entry {written!r}: the spoken form must be a string")
        entries.append(_checked(path, f"entry {written!r}", written, spoken))
    return tuple(entries)


# --- the step --------------------------------------------------------------------------------

_ABBREVIATION_WORDS = _textcore.words([a.lower() for a in _ABBREVIATIONS])
_CONTEXT_WORDS = _textcore.words(_CARDINAL_CONTEXTS)


def speak(text: str, lexicon: Lexicon | None = None) -> str:
    """`text` as it will be spoken: the rules above and the lexicon applied (see the module)."""
    compiled = _compiled(lexicon) if lexicon else None
    marks = _textcore.spoken_marks(
        text, _ABBREVIATION_WORDS, _CONTEXT_WORDS, compiled.words if compiled else None
    )
    if not marks:
        return text
    parts: list[str] = []
    done = 0
    for at in marks:
        if at < done:
            continue
        found = _spoken_at(text, at, compiled)
        if found is None:
            continue
        end, spoken = found
        if (
            not spoken[0].isupper()
            and not text[at].islower()
            and _starts_sentence(text, at, done, parts)
        ):
            spoken = _capitalized(spoken)
        parts += (text[done:at], spoken)
        done = end
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _spoken_at(text: str, at: int, lexicon: _CompiledLexicon | None) -> tuple[int, str] | None:
    """(end, spoken form) of what starts at `at`, or None to leave it as written."""
    if lexicon and (m := lexicon.pattern.match(text, at)):
        if m.lastgroup == "exact":
            return m.end(), lexicon.exact[m["exact"]]
        return m.end(), _cased_like(m.group(), lexicon.folded[m["folded"].lower()])
    if text[at] in _ROMAN_LETTERS and (m := _ROMAN.match(text, at)):
        spoken = _roman_words(text, at, m)
    elif m := _ABBREVIATION.match(text, at):
        spoken = _abbreviation_words(text, m)
    elif m := _NUMBER.match(text, at):
        spoken = _number_spoken(text, m)
    else:
        return None
    return None if spoken is None else (m.end(), spoken)


_ROMAN_LETTERS = frozenset(_ROMAN_VALUES)
# (matched text, counted) -> words: books repeat their numbers
_NUMBER_WORDS: dict[tuple[str, bool], str | None] = {}
# words after which a four-digit number is a count or a label, not a year ("page 1200")
_COUNTING_WORDS = frozenset(
    {*_CARDINAL_CONTEXTS, "page", "pages", "p", "pp", "no", "number", "room"}
)


def _counted(text: str, at: int) -> bool:
    before = _word_before(text, at)
    return bool(before and before["word"].lower() in _COUNTING_WORDS)


def _number_spoken(text: str, m: re.Match[str]) -> str | None:
    if m["open"].endswith("(") and _PHONE_AFTER.match(text, m.end() + 1):
        return None
    whole = m["whole"]
    counted = bool(whole and len(whole) == 4 and _counted(text, m.start()))
    key = (m.group(), counted)
    words = _NUMBER_WORDS.get(key, "")
    if words == "":
        words = _number_words(m, counted)
        if len(_NUMBER_WORDS) < 65_536:
            _NUMBER_WORDS[key] = words
    if words is None:
        return None
    opening = m["open"][:-1] if m["decade"] and m["open"].endswith("'") else m["open"]
    meridiem = m["meridiem"] or m["time_meridiem"] or ""
    if meridiem.endswith(".") and _capital_follows(text, m.end()):
        words += "."
    return opening + words


def _starts_sentence(text: str, at: int, done: int, parts: list[str]) -> bool:
    """A sentence starts at `at` in the spoken text so far (`parts`, then text[done:at]):
    "No. 5" is not one once "No." is "number"."""
    if not parts or at - done >= 12:
        return bool(_SENTENCE_BEFORE.search(text, max(0, at - 12), at))
    return bool(_SENTENCE_BEFORE.search(parts[-1][-12:] + text[done:at]))


def _capitalized(spoken: str) -> str:
    for i, char in enumerate(spoken):
        if char.isalpha():
            return spoken[:i] + char.upper() + spoken[i + 1 :]
    return spoken


def _cased_like(written: str, spoken: str) -> str:
    return _capitalized(spoken) if written[:1].isupper() else spoken
