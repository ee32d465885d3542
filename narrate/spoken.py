"""Spoken text: what the model is given to read, with numbers, abbreviations and Roman numerals
written out as words where their reading is certain, and the operator's pronunciation lexicon
applied.

`speak` runs on a book's text before sentence splitting and chunk ids (see narrate.text), so a
chunk's id hashes the text as spoken: changing a lexicon entry changes the ids, and re-renders
the audio, of exactly the chunks that contain it.

Precision first: a rule rewrites a form only where its context makes the reading certain, since
a wrong word is worse than the written form (CSM reads digits and many abbreviations itself,
and the quality gate compares the audio with the spoken text, so it cannot notice a wrong
word). A form a rule recognises but cannot read for certain ("the 1861 book": a year or a
count?, "Boeing 747", "John V. Lindsay") is left as written and counted; `explain` lists every
rewrite with its rule and every form left alone with the reason.

The rules (README, "Spoken text and the lexicon", has the table):

- numbers: "42" -> "forty-two", "1,250" -> "one thousand two hundred and fifty", "3.14",
  "-5"; a four-digit number is a year only in a year context ("in 1815", "the winter of 1850",
  "July 4, 1776", "May 1588", "753 BC", "from 1914 to 1918"), a count before a plural
  noun or a unit ("1250 soldiers"), and otherwise left as written; ranges ("1914-1918",
  "pp. 12-15", "10-12 minutes"), ordinals ("3rd", "19th-century"), dates ("July 4" -> "July
  fourth", "6 June 1944" -> "the sixth of June nineteen forty-four"), decades, fractions
  ("3/4", "1 1/2", "½"), percentages, money (also "£5 10s 6d"), clock times, units ("5 km",
  "2 tbsp.", "6 ft. 2 in.", `6'2"`)
- a number after a name is a label: "Apollo 11" -> "Apollo eleven", but "Boeing 747" (three
  digits or more) is left as written, never read as a quantity
- abbreviations with their period (see _ABBREVIATIONS): titles before a name, "St."/"Dr." as
  Street/Drive after one, and "No.", "p.", "pp.", "Vol.", "Fig.", "ch.", "c." only before a
  number; an abbreviation before a number never starts a new sentence
- Roman numerals in capitals where the context makes them numbers: after a context word
  ("Chapter XIV", "World War I", "type II"), after a name ("Louis XIV", "Charles I" for a
  monarch's name; "Thurston Howell III"); the pronoun "I" stays a pronoun ("Part I
  understood"), and a single letter between names is an initial ("John V. Lindsay")

An expansion at the start of a sentence starts with a capital ("1815 was..." stays, but
"3 days later" -> "Three days later"), so sentence splitting sees the same sentence ends as
before; an abbreviation that may end a sentence ("etc.", "St." as Street, "p.m.") keeps its
period when a capitalized word follows.

Speed: `narrate._textcore.spoken_marks` finds, in C++ at about a byte per nanosecond, the few
offsets where a rule or a lexicon entry may apply (a digit, a known abbreviation before ".", a
word of Roman-numeral capitals, a lexicon entry's first word); the rules here run only there,
so text with none of them costs one scan.
"""

from __future__ import annotations

import json
import os
import re
import stat
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
    "m": ("meter", "meters"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "\u03bcm": ("micrometer", "micrometers"),
    "mi": ("mile", "miles"),
    "yd": ("yard", "yards"),
    "ft": ("foot", "feet"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "st": ("stone", "stone"),  # "3 st. 4 lb."
    "ml": ("milliliter", "milliliters"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "sec": ("second", "seconds"),
    "secs": ("second", "seconds"),
    "mph": ("mile per hour", "miles per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "rpm": ("revolution per minute", "revolutions per minute"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
    "kW": ("kilowatt", "kilowatts"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
}
# units that are also words: read only with their period ("2 in." yes, "2 in the box" no)
_DOTTED_UNITS = {"in": ("inch", "inches"), "pt": ("pint", "pints"), "qt": ("quart", "quarts")}
_CURRENCIES = {  # symbol: (one, many, one hundredth, hundredths)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
_SCALES = ("thousand", "million", "billion", "trillion")
_FRACTIONS = {2: ("half", "halves"), 4: ("quarter", "quarters")}
_DENOMINATORS = frozenset({2, 3, 4, 8, 16, 32, 64})  # "9/11" and "24/7" are not fractions


def _alternation(words: object) -> str:
    return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))  # type: ignore[arg-type]


def _unit(key: str) -> str:
    """A unit after a number; group names end in `key` (a pattern may name a group once)."""
    return rf"""(?:\s?(?P<unit{key}>{_alternation(_UNITS)})(?P<unit_dot{key}>\.)?(?![\w/])
    | \s(?P<dotted{key}>{_alternation(_DOTTED_UNITS)})(?P<dotted_dot{key}>\.))"""


def _hyphenated(key: str) -> str:
    return rf"(?:-(?P<tail{key}>[A-Za-z][A-Za-z-]*))?"  # "19th-century", "5-year-old"


_UNIT_KEYS = ("", "_range", "_fraction")


def _group(m: re.Match[str], name: str) -> str | None:
    """The named group of whichever alternative matched (see `_unit`)."""
    for key in _UNIT_KEYS:
        if value := m[name + key]:
            return value
    return None


# Anchored at the start of a whitespace-delimited token that holds a digit.
_NUMBER = re.compile(
    rf"""(?P<open>[(\["']*)(?:
        £(?P<pounds>\d+)\s(?P<shillings>\d{{1,2}})s\.?(?:\s(?P<pence>\d{{1,2}})d(?P<pence_dot>\.)?)?
      | (?P<old_shillings>\d{{1,2}})s\.?\s(?P<old_pence>\d{{1,2}})d(?P<old_pence_dot>\.)?
      | (?P<currency>[$£€])(?P<amount>{_INT})(?:\.(?P<cents>\d+))?
            (?:\s(?P<scale>{"|".join(_SCALES)})\b)?
      | (?P<hour>\d{{1,2}}):(?P<minute>[0-5]\d)(?:\s?(?P<time_meridiem>{_MERIDIEM}))?
      | (?P<feet>\d)'(?P<inches>\d{{1,2}})"
      | (?P<range_low>\d{{1,2}})-(?P<range_whole>\d{{1,2}})\s
            (?P<range_numerator>\d)[/\u2044](?P<range_denominator>\d{{1,2}})
      | (?P<low>\d{{1,4}})-(?P<high>\d{{1,4}}){_unit("_range")}?
      | (?:(?P<mixed>\d{{1,2}})\s)?(?P<numerator>\d{{1,2}})[/\u2044](?P<denominator>\d{{1,2}})
            {_unit("_fraction")}?
      | (?P<ordinal>{_INT})(?P<suffix>st|nd|rd|th){_hyphenated("_ordinal")}
      | (?P<pennies>[1-9]\d{{0,2}})p
      | (?P<decade>'?(?:1\d|20)?\d0)'?s
      | (?P<minus>-)?(?P<whole>{_INT})(?:\.(?P<fraction>\d+))?
            (?:(?P<percent>%)|\s?(?P<meridiem>{_MERIDIEM})|{_unit("")}|{_hyphenated("")})?
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


# --- the context of a number ------------------------------------------------------------------

_MONTHS = frozenset(
    "January February March April May June July August September October November December".split()
)
_MONTH_ABBREVIATIONS = {
    "Jan": "January",
    "Feb": "February",
    "Mar": "March",
    "Apr": "April",
    "Jun": "June",
    "Jul": "July",
    "Aug": "August",
    "Sep": "September",
    "Sept": "September",
    "Oct": "October",
    "Nov": "November",
    "Dec": "December",
}
# a month, as a number's context ("July 4", "Jan. 5, 1920")
_MONTH_WORDS = _MONTHS | {f"{abbreviation}." for abbreviation in _MONTH_ABBREVIATIONS}
# words after which a number is a count or a label, never a year ("page 1200", "Room 101")
_COUNTING_WORDS = frozenset(
    "chapter book part volume vol act scene canto section appendix psalm hymn verse line page "
    "pages p pp no number room platform table figure fig plate track gate exhibit item step "
    "rule article clause size level stage phase type class grade form lot box bus".split()
)
# a four-digit number after these is a year ("in 1815", "since 1945")
_YEAR_WORDS = frozenset(
    "in by since until till from before after during between circa c ca year years born died "
    "founded built published completed erected established crowned elected married christmas "
    "easter michaelmas whitsun midsummer spring summer autumn winter".split()
)
# "the winter of 1850": a year after "of" when one of these comes before it
_YEAR_OF = frozenset(
    "summer winter spring autumn fall year end beginning start middle census siege treaty war "
    "battle revolution revolutions plague uprising rebellion riots crash flood fire famine "
    "election elections act acts exhibition olympics campaign crisis edition class events "
    "depression massacre earthquake storm panic constitution convention congress parliament "
    "session peace reform strike coup mutiny raid winter".split()
    + [m.lower() for m in _MONTHS]
)
# events named by their year: "the 1944 landings", "the 1848 revolutions" (not counts)
_EVENT_NOUNS = frozenset(
    "landing landings revolution revolutions election elections riots uprising uprisings "
    "rebellion crash flood floods famine earthquake olympics games war campaign census reforms "
    "massacre plague fire mutiny coup invasion treaty exhibition depression crisis panic season "
    "championship championships cup final finals tour truce armistice".split()
)
_ERA_AFTER = re.compile(r"\s*(?:BCE?|AD|CE|B\.C\.(?:E\.)?|A\.D\.|C\.E\.)(?!\w)")
# plurals that do not end in "s", and words ending in "s" that are not plurals
_PLURALS = frozenset("men women people children feet teeth mice geese sheep cattle".split())
_NOT_PLURALS = frozenset(
    "was is has his hers its this thus as us yes less unless across was perhaps always "
    "afterwards towards besides".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'.]*")


def _words_before(text: str, at: int) -> list[str]:
    """The tokens before `at` (at most ~6), nearest last."""
    return text[max(0, at - 60) : at].split()[-6:]


def _bare(token: str) -> str:
    return token.strip("\"'()[],;:!?")


def _word_after(text: str, end: int) -> str | None:
    """The next word when only spaces separate it from `end` (no punctuation)."""
    i = end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == end and i < len(text):
        return None
    m = _WORD.match(text, i)
    return m.group().rstrip(".") if m else None


def _counted_noun(word: str | None) -> bool:
    """A plural noun or a unit word: what a count comes before ("1250 soldiers")."""
    if not word or not word[0].islower():
        return False
    return word in _PLURALS or (
        len(word) > 3
        and word.endswith("s")
        and not word.endswith("ss")
        and word not in _NOT_PLURALS
    )


def _is_year_number(token: str) -> bool:
    token = _bare(token)
    return token.isdigit() and len(token) == 4 and 1000 <= int(token) <= 2099


def _year_context(text: str, start: int, end: int, before: list[str]) -> str | None:
    """How a number of three or four digits written at text[start:end] reads: "year",
    "count", or None when its context does not say."""
    if _ERA_AFTER.match(text, end):
        return "year"
    words = [_bare(t) for t in before]
    previous = words[-1] if words else ""
    if previous in {"AD", "A.D."}:
        return "year"
    if previous in _MONTH_WORDS:  # "May 1588", "July 4, 1776" (the day is read as a date)
        return "year"
    if (
        len(words) >= 2
        and words[-2] in _MONTH_WORDS
        and before[-1].rstrip(",").rstrip("stndrh").isdigit()
    ):
        return "year"
    following = _word_after(text, end)
    if following in _EVENT_NOUNS and previous.lower() in _DETERMINERS:
        return "year"  # "the 1944 landings", "the 1960 election": an event of that year
    if _counted_noun(following):
        return "count"
    lower = previous.lower().rstrip(".")
    if lower in _YEAR_WORDS:
        return "year"
    if lower == "of" and len(words) >= 2 and _year_of(words[-2]):
        return "year"
    if lower in {"to", "and", "through"} and len(before) >= 2 and _is_year_number(before[-2]):
        return "year"
    if lower in {"was", "is"} and len(words) >= 2 and words[-2].lower() in {"it", "year"}:
        return "year"  # "It was 1936, and...", "The year was 1666"
    if text[start - 1 : start] == "(" and text[end : end + 1] == ")":
        return "year"  # "Alice in Wonderland (1865)"
    after = _word_after(text, end)
    if (after is None or after[0].islower()) and _starts_sentence_at(text, start):
        return "year"  # "1815 was a hard year", "1815, the year of Waterloo"
    return None


def _after_name(text: str, m: re.Match[str]) -> bool:
    before = _words_before(text, m.start())
    return bool(before) and not m["open"] and _is_name(before[-1], text, m.start())


def _year_of(word: str) -> bool:
    """ "the winter of 1850", "the floods of 1953", "the Constitution of 1787": a time or an
    event, or a name (capitalized), before "of" makes the number after it a year."""
    lower = word.lower()
    return lower in _YEAR_OF or lower.removesuffix("s") in _YEAR_OF or word[:1].isupper()


def _is_name(token: str, text: str, at: int) -> bool:
    """`token` (just before `at`) is a capitalized word that does not start a sentence."""
    word = _bare(token)
    if not word[:1].isupper() or not word.isalpha() or token != word:
        return False
    start = text.rfind(word, 0, at)
    return not _starts_sentence_at(text, start)


def _starts_sentence_at(text: str, at: int) -> bool:
    return bool(_SENTENCE_BEFORE.search(text, max(0, at - 12), at))


# --- numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a rule made of a form: its spoken words (None: left as written) and the rule that
    read it, or the reason it was left alone."""

    spoken: str | None
    rule: str


_LEFT_YEAR = _Reading(None, "four-digit number: a year or a count? (no context says)")
_LEFT_LABEL = _Reading(None, "model or series number after a name")


def _number_reading(text: str, m: re.Match[str]) -> _Reading | None:
    """The reading of a `_NUMBER` match; None when no rule applies (left as written, not
    counted)."""
    if m["shillings"] or m["old_shillings"]:
        return _Reading(_old_money(m), "pre-decimal money")
    if m["pennies"]:
        return _pennies(text, m)
    if m["currency"]:
        money = _money(m["currency"], m["amount"], m["cents"], m["scale"])
        return _Reading(money, "money") if money else None
    if m["hour"]:
        clock = _clock(m)
        return _Reading(clock, "clock time") if clock else None
    if m["feet"]:
        inches = int(m["inches"])
        if inches >= 12:
            return None
        feet = f"{_cardinal(int(m['feet']))} feet"
        return _Reading(f"{feet} {_cardinal(inches)} inch{'' if inches == 1 else 'es'}", "feet")
    if m["range_low"]:
        return _range_to_fraction(m)
    if m["low"]:
        return _range(text, m)
    if m["denominator"]:
        return _fraction(m)
    if m["ordinal"]:
        return _ordinal_reading(text, m)
    if m["decade"]:
        decade = m["decade"].lstrip("'")
        if len(decade) == 2 and not m["decade"].startswith("'") and not _decade_before(text, m):
            return None  # "he paid 10s." (shillings), not "in her 20s"
        spoken = _plural(_year(int(decade)) if len(decade) == 4 else _cardinal(int(decade)))
        return _Reading(spoken, "decade")
    return _plain_number(text, m)


_DECADE_WORDS = frozenset("her his their my your our its the early late mid".split())


def _decade_before(text: str, m: re.Match[str]) -> bool:
    before = _words_before(text, m.start())
    return bool(before) and before[-1].lower().rstrip("-") in _DECADE_WORDS


_TIME_WORDS = frozenset("at by until till after before from past".split())


def _british_time(text: str, m: re.Match[str]) -> bool:
    """ "at 7.30", "7.30 p.m.": a clock time written with a point, as British books do."""
    if int(m["whole"]) > 24 or int(m["fraction"]) >= 60 or m["minus"] or m["percent"]:
        return False
    if m["unit"] or m["dotted"]:
        return False
    if m["meridiem"]:
        return True
    before = _words_before(text, m.start())
    # "the 6.30 train", "the 10.30 from Euston": a departure, not six point three zero
    return bool(before) and before[-1].lower() in {*_TIME_WORDS, "the"}


def _clock(m: re.Match[str]) -> str | None:
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


def _unit_words(m: re.Match[str], count: float) -> str:
    """ " kilometers" for a number followed by a unit; "" without one."""
    if unit := _group(m, "unit"):
        one, many = _UNITS[unit]
    elif dotted := _group(m, "dotted"):
        one, many = _DOTTED_UNITS[dotted]
    else:
        return ""
    return " " + (one if count <= 1 else many)


def _range(text: str, m: re.Match[str]) -> _Reading | None:
    low, high = m["low"], m["high"]
    if low.startswith("0") or high.startswith("0") or (len(low) == 3 and len(high) == 4):
        return None  # "555-1234", "07-12": not a range
    first, last = int(low), int(high)
    if len(low) == 4 and 1000 <= first <= 2099 and not _unit_words(m, 2):
        # "1914-1918", "1914-18"; a range of years is one whatever comes after it
        if len(high) == 2:
            last = first // 100 * 100 + last
        if last <= first or len(high) not in (2, 4):
            return None
        ended = _year(last) if len(high) == 4 else _cardinal(int(high))
        if len(high) == 2 and int(high) < 10:
            ended = "oh " + ended
        return _Reading(f"{_year(first)} to {ended}", "range of years")
    if last <= first or len(low) > 4 or len(high) > 4:
        return None  # a score ("3-2") or an id
    return _Reading(f"{_cardinal(first)} to {_cardinal(last)}{_unit_words(m, last)}", "range")


def _range_to_fraction(m: re.Match[str]) -> _Reading | None:
    """ "1-1½ hours" (NFKC: "1-1 1⁄2"): one to one and a half."""
    low, whole = int(m["range_low"]), int(m["range_whole"])
    numerator, denominator = int(m["range_numerator"]), int(m["range_denominator"])
    if denominator not in _DENOMINATORS or not 0 < numerator < denominator or low > whole:
        return None
    return _Reading(
        f"{_cardinal(low)} to {_cardinal(whole)} and {_mixed_part(numerator, denominator)}",
        "range",
    )


def _mixed_part(numerator: int, denominator: int) -> str:
    """The fraction after "and": "a half", "three quarters"."""
    part = _fraction_words(numerator, denominator)
    return "a " + part.split(" ", 1)[1] if numerator == 1 else part


def _fraction_words(numerator: int, denominator: int) -> str:
    one, many = _FRACTIONS.get(denominator, (None, None))
    if one is None:
        one = _ordinal(denominator)
        many = one + "s"
    return f"{_cardinal(numerator)} {one if numerator == 1 else many}"


def _fraction(m: re.Match[str]) -> _Reading | None:
    numerator, denominator = int(m["numerator"]), int(m["denominator"])
    if denominator not in _DENOMINATORS or not 0 < numerator < denominator:
        return None
    if m["mixed"]:
        whole = int(m["mixed"])
        part = _mixed_part(numerator, denominator)
        return _Reading(f"{_cardinal(whole)} and {part}{_unit_words(m, 2)}", "fraction")
    words = _fraction_words(numerator, denominator)
    return _Reading(words + _unit_words(m, 1), "fraction")


def _ordinal_reading(text: str, m: re.Match[str]) -> _Reading | None:
    digits = m["ordinal"]
    number = int(digits.replace(",", ""))
    if not _plain_int(digits) or m["suffix"] != _ordinal_suffix(number):
        return None
    return _Reading(
        _ordinal(number) + (f"-{m['tail_ordinal']}" if m["tail_ordinal"] else ""), "ordinal"
    )


def _plain_number(text: str, m: re.Match[str]) -> _Reading | None:
    whole, fraction = m["whole"], m["fraction"]
    if not _plain_int(whole):
        return None
    if fraction and len(fraction) == 2 and _british_time(text, m):
        clock = _clock_minutes(int(whole), int(fraction))  # "at 7.30": seven thirty
        if m["meridiem"]:
            clock += f" {_meridiem(m['meridiem'])}"
        return _Reading(clock, "clock time")
    if m["meridiem"]:
        if fraction or not 1 <= int(whole) <= 12:
            return None
        return _Reading(f"{_cardinal(int(whole))} {_meridiem(m['meridiem'])}", "clock time")
    number = int(whole.replace(",", ""))
    if m["percent"]:
        return _Reading(f"{_minus(m)}{_decimal(whole, fraction)} percent", "percentage")
    if m["unit"] or m["dotted"]:
        count = 1 if (whole == "1" and not fraction) or _adjectival(text, m) else 2
        return _Reading(f"{_minus(m)}{_decimal(whole, fraction)}{_unit_words(m, count)}", "unit")
    if fraction or m["minus"]:
        return _Reading(f"{_minus(m)}{_decimal(whole, fraction)}", "number")
    tail = f"-{m['tail']}" if m["tail"] else ""
    start = m.start("whole")
    before = _words_before(text, m.start())
    if "," not in whole and before and not tail and not m["open"]:  # "Alice (1865)": no label
        label = _label_reading(text, m, before, number)
        if label is not _NOT_A_LABEL:
            return label
    if "," in whole or tail or not 100 <= number <= 9999:
        return _Reading(_cardinal(number) + tail, "number")
    context = _year_context(text, start, m.end(), before)
    if context == "year":
        return _Reading(_year(number), "year")
    if context == "count" or number > 2099 or (len(whole) == 3 and number >= 100):
        return _Reading(_cardinal(number), "number")
    return _LEFT_YEAR


_NOT_A_LABEL = _Reading(None, "")
_LEFT_PHONE = _Reading(None, "telephone number after dial or call")
_DIAL_WORDS = frozenset("dial dialled dialed dialling dialing".split())
_CALL_WORDS = frozenset("call called calling ring rang phone phoned telephone".split())


def _label_reading(text: str, m: re.Match[str], before: list[str], number: int) -> _Reading:
    """A number after a word that says what it is: a counting word ("page 1200"), a month
    ("July 4"), a name ("Apollo 11", "Boeing 747"); _NOT_A_LABEL when the word before is
    none of these."""
    previous = _bare(before[-1])
    lower = previous.lower().rstrip(".")
    if lower in _DIAL_WORDS or (lower in _CALL_WORDS and len(m["whole"]) >= 3):
        return _LEFT_PHONE  # "dial 999", "call 911": digits, not nine hundred and ninety-nine
    if (
        lower in _TIME_WORDS
        and len(m["whole"]) == 4
        and number // 100 <= 24
        and number % 100 < 60
        and _word_after(text, m.end()) == "hours"
    ):
        hour, minute = divmod(number, 100)  # "by 1800 hours": eighteen hundred hours
        spoken = f"{_cardinal(hour)} hundred" if minute == 0 else _clock_minutes(hour, minute)
        return _Reading(spoken, "24-hour clock")
    if lower in _YEAR_WORDS:
        return _NOT_A_LABEL  # "Christmas 1914", "In 1815"
    if lower in _COUNTING_WORDS and before[-1] == previous:
        return _Reading(_cardinal(number), "number after a counting word")
    if previous in _MONTH_WORDS and before[-1] == previous:
        if (
            len(m["whole"]) <= 2
            and 1 <= number <= 31
            and not _counted_noun(_word_after(text, m.end()))
        ):
            return _Reading(_ordinal(number), "date")
        return _NOT_A_LABEL
    month = _word_after(text, m.end())
    if month in _MONTHS and 1 <= number <= 31 and len(m["whole"]) <= 2:
        the = "" if lower == "the" else "the "
        return _Reading(f"{the}{_ordinal(number)} of", "date")  # "6 June" -> "the sixth of June"
    if _is_name(before[-1], text, m.start()) and previous not in _MONTH_WORDS:
        if previous in {"AD", "A.D."} or _counted_noun(_word_after(text, m.end())):
            return _NOT_A_LABEL  # "AD 1100", "London 1200 miles away"
        if len(m["whole"]) >= 3:
            return _LEFT_LABEL
        return _Reading(_cardinal(number), "number after a name")
    return _NOT_A_LABEL


_NOT_NOUNS = frozenset(
    "of per for in at on to from and or away long wide high tall deep thick across above "
    "below".split()
)


def _adjectival(text: str, m: re.Match[str]) -> bool:
    """ "a 20 cm pan": a measure before a noun, after "a", reads "centimeter"."""
    before = _words_before(text, m.start())
    after = _word_after(text, m.end())
    return (
        bool(before)
        and before[-1].lower() in {"a", "an"}
        and bool(after)
        and after[0].islower()  # type: ignore[index]
        and after not in _NOT_NOUNS
    )


def _minus(m: re.Match[str]) -> str:
    return "minus " if m["minus"] else ""


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


# "the 2p orbital": an electron's subshell, not two pence
_SUBSHELL_WORDS = frozenset(
    "orbital orbitals electron electrons shell subshell state states".split()
)


def _pennies(text: str, m: re.Match[str]) -> _Reading | None:
    """ "99p", "a 10p coin": pence (British decimal money)."""
    if _word_after(text, m.end()) in _SUBSHELL_WORDS:
        return None
    count = int(m["pennies"])
    return _Reading(f"{_cardinal(count)} {'penny' if count == 1 else 'pence'}", "pence")


def _old_money(m: re.Match[str]) -> str:
    """ "£5 10s 6d" -> "five pounds ten shillings and six pence"."""
    shillings = int(m["shillings"] or m["old_shillings"])
    pence = m["pence"] or m["old_pence"]
    parts = []
    if m["pounds"]:
        pounds = int(m["pounds"])
        parts.append(f"{_cardinal(pounds)} pound{'' if pounds == 1 else 's'}")
    parts.append(f"{_cardinal(shillings)} shilling{'' if shillings == 1 else 's'}")
    spoken = " ".join(parts)
    if pence:
        spoken += f" and {_cardinal(int(pence))} {'penny' if int(pence) == 1 else 'pence'}"
    return spoken


# --- abbreviations ----------------------------------------------------------------------------

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
    "Maj": "Major",
    "Adm": "Admiral",
    "Lt": "Lieutenant",
    "Sgt": "Sergeant",
    "Gov": "Governor",
    "Sen": "Senator",
    "Mt": "Mount",
    "St": "Saint",
    "Jr": "Junior",
    "Sr": "Senior",
    "vs": "versus",
    "approx": "approximately",
    "etc": "et cetera",
    "e.g": "for example",
    "i.e": "that is",
}
# read only before a number ("p. 45" -> "page forty-five"); elsewhere left as written
_BEFORE_NUMBERS = {
    "No": "number",
    "no": "number",
    "Nos": "numbers",
    "nos": "numbers",
    "p": "page",
    "pp": "pages",
    "pg": "page",
    "Vol": "Volume",
    "vol": "volume",
    "Vols": "Volumes",
    "vols": "volumes",
    "Fig": "Figure",
    "fig": "figure",
    "Figs": "Figures",
    "figs": "figures",
    "Ch": "Chapter",
    "ch": "chapter",
    "c": "circa",
    "ca": "circa",
    **_MONTH_ABBREVIATIONS,
}
# may end a sentence: the period stays when a capitalized word follows
_MAY_END_SENTENCE = {"Jr", "Sr", "etc", "Street", "Drive"}
_ABBREVIATION = re.compile(
    rf"(?P<abbreviation>{_alternation({**_ABBREVIATIONS, **_BEFORE_NUMBERS})})\."
)
_NEXT_WORD = re.compile(r"\s+(?P<word>[\w']+)")
_NUMBER_NEXT = re.compile(r"\s*\d")
# capitalized words after "St." or "Dr." that start a new sentence rather than a name
_SENTENCE_STARTERS = frozenset(
    "A An And As At But He Her His I If In It Its My On She So That The Then There They This "
    "We When You After Before Once Now Later".split()
)


def _abbreviation_words(text: str, m: re.Match[str]) -> _Reading | None:
    written = m["abbreviation"]
    if written in _BEFORE_NUMBERS:
        if not _NUMBER_NEXT.match(text, m.end()):
            return None
        return _Reading(_BEFORE_NUMBERS[written], "abbreviation before a number")
    after = _NEXT_WORD.match(text, m.end())
    name_follows = bool(after and after["word"][0].isupper()) and (
        after["word"] not in _SENTENCE_STARTERS
    )
    spoken = _ABBREVIATIONS[written]
    if written == "St" and not name_follows:
        spoken = "Street"
    elif written == "Dr" and not name_follows:
        before = _word_before(text, m.start())
        if (
            before
            and before["word"][0].isupper()
            and not before["period"]
            and before["word"] not in _SENTENCE_STARTERS  # "The Dr. was late": a doctor
        ):
            spoken = "Drive"
    if (spoken in _MAY_END_SENTENCE or written in _MAY_END_SENTENCE) and _capital_follows(
        text, m.end()
    ):
        spoken += "."
    return _Reading(spoken, "abbreviation")


def _capital_follows(text: str, end: int) -> bool:
    """The text ends at `end`, or the next word starts with a capital: a period written at
    `end` may end a sentence, so an expansion keeps it."""
    after = _NEXT_WORD.match(text, end)
    return end == len(text) or bool(after and after["word"][0].isupper())


# --- Roman numerals ---------------------------------------------------------------------------

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
    "mark",
    "episode",
    "article",
    "plate",
    "figure",
    "fig",
    "bowl",  # "Super Bowl XX"
    "vatican",  # "Vatican II"
)
# monarchs' and popes' names: "Charles I", "Henry V" are numbers after these (and only these:
# "Malcolm X", "Generation X", "John V. Lindsay")
_REGNAL_NAMES = frozenset(
    "Charles Elizabeth Henry George Edward William James Louis Richard Mary John Peter Napoleon "
    "Alexander Frederick Philip Catherine Nicholas Paul Leo Pius Gregory Innocent Boniface "
    "Clement Urban Benedict Victor Emmanuel Ferdinand Francis Franz Wilhelm Otto Rudolf "
    "Maximilian Ivan Basil Constantine Justinian Theodosius Robert David Alfonso Carlos Haakon "
    "Olaf Olav Harald Gustav Gustavus Christian Frederik Umberto Manuel Pedro Sancho Casimir "
    "Sigismund Stephen Matilda Anne Victoria Isabella Joanna Juan Felipe Selim Suleiman Mehmed "
    "Murad Ahmed Darius Xerxes Cyrus Ptolemy Antiochus Ramesses Ramses Thutmose Amenhotep Herod "
    "Valentinian Leopold Joseph Edmund Ethelred Harold Edgar Baldwin Sixtus Julius Adrian "
    "Hadrian Conrad Wenceslas Vladimir Michael Alexios Alexius Honorius Celestine Eugene "
    "Eugenius Martin Sylvester Anastasius Hugh Humbert Amadeus Christina Margaret Maria Pepin "
    "Lothair Kamehameha Hussein Abdullah Faisal Fuad Farouk Rama Carol Milan Pius Lorenzo "
    "Cosimo Ludwig Augustus Sebastian Magnus Eric Erik Valdemar Knut Canute Sverre Sweyn "
    "Mstislav Dmitri Boris Simeon Ferdinando Vittorio Amadeo Idris Tewodros Menelik".split()
)
# after "I", these make it the pronoun ("Charles I think"); after a monarch's name "I" is the
# numeral otherwise ("Charles I was executed")
_PRONOUN_VERBS = frozenset(
    "am think thought know knew believe suppose guess hope love loved like liked want wanted "
    "wish mean meant said say told tell must should would could can cannot will shall may "
    "might do did don't didn't can't won't feel felt see saw remember promise swear need "
    "understood understand have".split()
)

# context words that are no common noun before a pronoun: "Chapter I" is a numeral unless a
# verb follows it; after the others ("Part I understood") only before _AFTER_NUMERAL words
_STRONG_CONTEXTS = frozenset(
    "chapter volume vol canto appendix psalm episode article plate figure fig section".split()
)
# after "Part I", these keep "I" a numeral ("Part I of the book", "Chapter I is short")
_AFTER_NUMERAL = frozenset(
    "of and is in the to ends begins opens closes covers describes deals contains".split()
)
# After a monarch's name "I" may be the pronoun after a fronted object ("Anne I never liked",
# "John I met later"): it is the numeral before punctuation, a capitalized word or one of
# _AFTER_REGNAL_I, or before a verb with an object; before a verb with none, only when the verb
# takes none ("Elizabeth I never married."). Otherwise the letter as written is better than a
# wrong "the first".
_AFTER_REGNAL_I = frozenset(
    "of and or in to at on by for with from who whose whom which that was is became the as".split()
)
# adverbs, and "had" before a participle: "Paul I had never trusted."
_REGNAL_ADVERBS = (
    "never|always|often|once|also|then|later|soon|finally|still|rarely|seldom|only|had"
)
_AFTER_I = re.compile(
    rf"[ \t]+(?P<adverbs>(?:(?:{_REGNAL_ADVERBS}|[a-z]+ly)[ \t]+)*)(?P<verb>[a-z][a-z']*)"
    r"(?:[ \t]+(?P<next>[a-z]+))?"
)
_INTRANSITIVE = frozenset(
    "married remarried died abdicated reigned ruled fled returned succeeded converted "
    "recovered surrendered escaped prevailed triumphed".split()
)
# after "NAME I verb", these say no object follows the verb: the object came first
_NO_OBJECT = frozenset(
    "later again first once well best most least there here then too since before twice only "
    "myself now yet very so away home back out off up down in at on to from with by for about "
    "after into of".split()
)


# "To Peter I owe everything", "Like Edward I was tired": after a preposition the name ends a
# phrase, and "I" starts the clause unless a preposition or punctuation follows it
_PREPOSITIONS = frozenset("to with for like unlike than from about without".split())
_AFTER_PREPOSITION_AND_I = _AFTER_REGNAL_I - {"was", "is", "became"}


def _preposition_before(text: str, at: int) -> bool:
    before = _word_before(text, at)
    return bool(before) and not before["period"] and before["word"].lower() in _PREPOSITIONS


def _regnal_i(text: str, end: int, after_preposition: bool) -> bool:
    """ "I" right after a monarch's name (ending at `end`) is the numeral."""
    m = _AFTER_I.match(text, end)
    if not m:
        return True  # "Charles I.", "Charles I, king of", "Henry I Beauclerc"
    verb = m["verb"]
    if after_preposition:
        return not m["adverbs"] and verb in _AFTER_PREPOSITION_AND_I
    if not m["adverbs"] and verb in _AFTER_REGNAL_I:
        return True
    if verb in _PRONOUN_VERBS or "'" in verb or _CONTRACTION.match(text, end):
        return False  # "David I haven't seen in years"
    follower = m["next"]
    if follower is None:  # punctuation or a capital after the verb
        nxt = text[m.end() : m.end() + 2].lstrip(" \t")
        return verb in _INTRANSITIVE or nxt[:1].isupper()
    if follower in _NO_OBJECT or follower.endswith("ly"):
        return verb in _INTRANSITIVE
    return True  # "Edward I built castles", "Mary I restored the old religion"


_NOT_REGNAL = frozenset("Malcolm Generation Planet Brand Project Model".split())
_ROMAN = re.compile(r"(?P<numeral>[IVXLCDM]+)(?![\w])")
_LETTER_LABELS = frozenset("LCDM")
_PHRASE_END = re.compile(r"[.,;:!?)\]]")
_ROMAN_FORM = re.compile(r"M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
_WORD_BEFORE = re.compile(r"(?P<word>[A-Za-z]+)(?P<period>\.?)[ \t]*\n?[ \t]*\Z")
_SENTENCE_BEFORE = re.compile(r"(?:\A\s*|[.!?][\"')\]]*\s+|\n[ \t]*\n[ \t]*)\Z")
_CONTRACTION = re.compile(r"['\u2019](?:m|d|ll|ve)\b")
_INITIAL_AFTER = re.compile(r"\.[ \t]+(?P<word>[A-Z][a-z]+)")
_LEFT_INITIAL = _Reading(None, "initial between names")
_LEFT_PRONOUN = _Reading(None, "the pronoun I (a verb follows)")


def _roman_value(numeral: str) -> int:
    values = [_ROMAN_VALUES[c] for c in numeral]
    return sum(-v if v < after else v for v, after in zip(values, [*values[1:], 0], strict=True))


def _word_before(text: str, at: int) -> re.Match[str] | None:
    return _WORD_BEFORE.search(text, max(0, at - 40), at)


def _roman_words(text: str, at: int, m: re.Match[str]) -> _Reading | None:
    numeral = m["numeral"]
    before = _word_before(text, at)
    if not before or not _ROMAN_FORM.fullmatch(numeral):
        return None
    if numeral == "I" and _CONTRACTION.match(text, m.end()):
        return None  # "I'm", "I'll"
    word = before["word"]
    after = _word_after(text, m.end())
    if word.lower() in _CARDINAL_CONTEXTS and numeral in _LETTER_LABELS:
        return None  # "Part D", "Appendix C", "Section L": a letter, not 500, 100, 50
    if word.lower() in _CARDINAL_CONTEXTS and (
        word[0].isupper() or numeral != "I" or _ends_phrase(text, m.end())
    ):
        if numeral == "I" and not _numeral_i(text, at, after, word):
            return _LEFT_PRONOUN  # "Part I understood", "War I could understand"
        if (
            numeral == "I"
            and after
            and after[0].islower()
            and after not in _AFTER_NUMERAL
            and _determiner_before(text, before.start())
        ):
            return _LEFT_PRONOUN  # "The Section I worked in": a relative clause
        return _Reading(_cardinal(_roman_value(numeral)), "Roman numeral after a context word")
    initial = _INITIAL_AFTER.match(text, m.end())
    if len(numeral) == 1 and initial and initial["word"] not in _SENTENCE_STARTERS:
        return _LEFT_INITIAL  # "John V. Lindsay", "John D. Rockefeller"
    if before["period"] or not word[0].isupper() or not word[1:].islower():
        return None
    if word in _SENTENCE_STARTERS or word in _NOT_REGNAL:
        return None
    if word.endswith("s") and word.lower()[:-1] in _CARDINAL_CONTEXTS:
        return None  # "Chapters III and IV": a list, not a monarch ("Chapters the third")
    if len(numeral) == 1 and word not in _REGNAL_NAMES:
        return None  # "Malcolm X", "Brand X"
    if word not in _REGNAL_NAMES and _determiner_before(text, before.start()):
        return None  # "The Apple II", "the Godfather II": a product or a title, not a man
    if numeral == "I" and not _regnal_i(text, m.end(), _preposition_before(text, before.start())):
        return _LEFT_PRONOUN  # "Anne I never liked", "John I met later": the pronoun
    value = _roman_value(numeral)
    if not set(numeral) <= {"I", "V", "X"} or value > 39:
        return None
    return _Reading(f"the {_ordinal(value)}", "regnal number")


_DETERMINERS = frozenset("the a an this that these those his her their my our your its".split())


def _determiner_before(text: str, at: int) -> bool:
    """The word before `at` is a determiner ("the", "his"...)."""
    before = _word_before(text, at)
    return bool(before) and not before["period"] and before["word"].lower() in _DETERMINERS


def _ends_phrase(text: str, end: int) -> bool:
    """Punctuation right after a numeral: "than type I." (no pronoun ends a phrase there)."""
    return bool(_PHRASE_END.match(text, end))


def _numeral_i(text: str, at: int, after: str | None, context: str) -> bool:
    """ "I" after a context word is a numeral at the end of a phrase ("World War I",
    "Part I: The Old House"), before a capitalized word or one of _AFTER_NUMERAL."""
    if after is None or not after[0].islower():
        return True
    if context.lower() in _STRONG_CONTEXTS:
        return after.lower() not in _PRONOUN_VERBS
    if context.lower() == "war":
        world = _word_before(text, _word_before(text, at).start())  # type: ignore[union-attr]
        if world and world["word"].lower() == "world":
            return after.lower() not in _PRONOUN_VERBS
    return after.lower() in _AFTER_NUMERAL


# --- the lexicon -----------------------------------------------------------------------------

_LEXICON_BYTES = 16 * 1024 * 1024  # a lexicon is a list of names: far below this


@dataclass(frozen=True)
class _CompiledLexicon:
    words: object  # _textcore.words capsule: each entry's first word, for spoken_marks
    # length of a first word -> that word lowercased -> the entries starting with it, longest
    # first, whatever their case rule (so "New York Times" beats "New York")
    heads: dict[int, dict[str, re.Pattern[str]]]
    exact: dict[str, str]  # written forms with a capital, words joined by one space
    folded: dict[str, str]  # lowercase written forms


def _entry_pattern(written: str, exact: bool) -> str:
    # an entry matches across any run of whitespace, line breaks included (wrapped text)
    pattern = r"\s+".join(map(re.escape, written.split()))
    return pattern if exact else f"(?i:{pattern})"


@lru_cache(maxsize=16)
def _compiled(lexicon: Lexicon) -> _CompiledLexicon:
    entries = [(" ".join(w.split()), s) for w, s in lexicon.entries]
    exact = {w: s for w, s in entries if w != w.lower()}
    folded = {w: s for w, s in entries if w == w.lower()}
    by_head: dict[str, list[tuple[str, bool]]] = {}
    for written, _ in entries:
        by_head.setdefault(written.split()[0].lower(), []).append((written, written in exact))
    heads: dict[int, dict[str, re.Pattern[str]]] = {}
    for head, forms in by_head.items():
        forms.sort(key=lambda form: (-len(form[0]), not form[1]))
        alternatives = "|".join(_entry_pattern(w, is_exact) for w, is_exact in forms)
        heads.setdefault(len(head), {})[head] = re.compile(rf"(?:{alternatives})(?!\w)")
    words = _textcore.words(list(by_head))
    return _CompiledLexicon(words, heads, exact, folded)


def _lexicon_at(text: str, at: int, lexicon: _CompiledLexicon) -> tuple[int, str] | None:
    """(end, spoken form) of the longest lexicon entry starting at `at`."""
    best: re.Match[str] | None = None
    for length, patterns in lexicon.heads.items():
        pattern = patterns.get(text[at : at + length].lower())
        if pattern and (m := pattern.match(text, at)) and (not best or m.end() > best.end()):
            best = m
    if best is None:
        return None
    written = " ".join(best.group().split())
    if written in lexicon.exact:
        return best.end(), lexicon.exact[written]
    return best.end(), _cased_like(written, lexicon.folded[written.lower()])


def _read_regular_file(path: Path, what: str, limit: int) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (a FIFO would block, a device
    never end), without a byte-order mark."""
    hint = f"give {what} as a regular UTF-8 file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot be read ({exc.strerror})", hint=hint) from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{what} {path}: not a regular file", hint=hint)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} {path}: larger than {limit // 2**20} MiB", hint=hint)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path}: not UTF-8 ({exc.reason})", hint=hint) from None


def load_lexicon(path: str | Path) -> Lexicon:
    """Read a lexicon: TSV (written form, a tab, spoken form; `#` comments and blank lines
    allowed) or, for a `.json` file, one JSON object {written: spoken}."""
    path = Path(path)
    content = _read_regular_file(path, "lexicon", _LEXICON_BYTES)
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


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen[key] = value
    return seen


def _json_entries(path: Path, content: str) -> tuple[tuple[str, str], ...]:
    hint = 'one JSON object of strings: {"written": "spoken", ...}'
    try:
        data = json.loads(content, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"lexicon {path}, line {exc.lineno}: not valid JSON ({exc.msg})", hint=hint
        ) from None
    except _RepeatedKey as exc:
        raise UsageError(
            f"lexicon {path}, {_repeated_key_line(content, exc.key)}{exc.key!r} is defined twice",
            hint="give each written form once",
        ) from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting 10^5 deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise UsageError(f"lexicon {path}: not a lexicon ({reason})", hint=hint) from None
    if not isinstance(data, dict):
        raise UsageError(f"lexicon {path}: expected one JSON object {{written: spoken}}", hint=hint)
    entries = []
    for written, spoken in data.items():
        if not isinstance(spoken, str):
            raise UsageError(f"lexicon {path}, entry {written!r}: the spoken form must be a string")
        entries.append(_checked(path, f"entry {written!r}", written, spoken))
    return tuple(entries)


def _repeated_key_line(content: str, key: str) -> str:
    """ "line N: " of the second time `key` is written as a key, or "" if it is spelled with
    escapes there."""
    keys = [
        m.start()
        for m in re.finditer(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:", content)
    ]
    return f"line {content.count(chr(10), 0, keys[1]) + 1}: " if len(keys) > 1 else ""


# --- the step --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """One form the spoken step looked at: rewritten (`spoken`) by `rule`, or left as written
    (`spoken` None) for the reason in `rule`."""

    start: int
    end: int
    written: str
    spoken: str | None
    rule: str


class SpokenTooLong(UsageError):
    """The text as spoken is over the length limit (a lexicon entry can lengthen a book)."""


_ABBREVIATION_WORDS = _textcore.words([a.lower() for a in {**_ABBREVIATIONS, **_BEFORE_NUMBERS}])
_CONTEXT_WORDS = _textcore.words([*_CARDINAL_CONTEXTS, *(n.lower() for n in _REGNAL_NAMES)])


def speak(text: str, lexicon: Lexicon | None = None, *, limit: int | None = None) -> str:
    """`text` as it will be spoken: the rules above and the lexicon applied (see the module).
    Raises SpokenTooLong when the result would be longer than `limit` characters."""
    return _speak(text, lexicon, limit, None)[0]


def speak_counted(
    text: str, lexicon: Lexicon | None = None, *, limit: int | None = None
) -> tuple[str, int]:
    """`speak`, and how many forms a rule recognised but left as written (not certain)."""
    return _speak(text, lexicon, limit, None)


def explain(text: str, lexicon: Lexicon | None = None) -> list[Decision]:
    """Every rewrite `speak` makes of `text`, with its rule, and every form it left alone, with
    the reason, in text order."""
    decisions: list[Decision] = []
    _speak(text, lexicon, None, decisions)
    return decisions


def _speak(
    text: str, lexicon: Lexicon | None, limit: int | None, decisions: list[Decision] | None
) -> tuple[str, int]:
    compiled = _compiled(lexicon) if lexicon else None
    marks = _textcore.spoken_marks(
        text, _ABBREVIATION_WORDS, _CONTEXT_WORDS, compiled.words if compiled else None
    )
    if "&" in text:  # the text core does not mark it (a one-character search is a memchr)
        marks = sorted({*marks, *(m.start() + 1 for m in _AMPERSAND.finditer(text))})
    if not marks:
        return text, 0
    parts: list[str] = []
    done = 0
    skip = 0  # the end of the last form left as written: marks inside it are part of it
    left = 0
    length = len(text)
    for at in marks:
        if at < done or at < skip:
            continue
        found = _spoken_at(text, at, compiled)
        if found is None:
            continue
        end, reading = found
        spoken = reading.spoken
        if decisions is not None:
            decisions.append(Decision(at, end, text[at:end], spoken, reading.rule))
        if spoken is None:
            left += 1
            skip = end
            continue
        if (
            not spoken[0].isupper()
            and not text[at].islower()
            and _starts_sentence(text, at, done, parts)
        ):
            spoken = _capitalized(spoken)
        length += len(spoken) - (end - at)
        if limit is not None and length > limit:
            raise SpokenTooLong(
                f"text: more than {limit:,} characters once spoken (the limit)",
                hint="a lexicon entry may be much longer than the word it replaces",
            )
        parts += (text[done:at], spoken)
        done = end
    if not parts:
        return text, left
    parts.append(text[done:])
    return "".join(parts), left


def _spoken_at(text: str, at: int, lexicon: _CompiledLexicon | None) -> tuple[int, _Reading] | None:
    """(end, reading) of what starts at `at`, or None when no rule recognises it."""
    if lexicon and (entry := _lexicon_at(text, at, lexicon)):
        return entry[0], _Reading(entry[1], "lexicon")
    if text[at] == "&":
        return at + 1, _AMPERSAND_READING
    if text[at] in _ROMAN_LETTERS and (m := _ROMAN.match(text, at)):
        reading = _roman_words(text, at, m)
    elif m := _ABBREVIATION.match(text, at):
        reading = _abbreviation_words(text, m)
    elif m := _NUMBER.match(text, at):
        reading = _number_spoken(text, m)
    elif m := _ISOTOPE.match(text, at):
        mass = int(m["mass"])
        reading = _Reading(
            f"{m['element']}-{_year(mass) if mass >= 100 else _cardinal(mass)}", "isotope"
        )
    else:
        return None
    return None if reading is None else (m.end(), reading)


_ROMAN_LETTERS = frozenset(_ROMAN_VALUES)
# "carbon-14", "uranium-235": an element and its mass number (carbon-fourteen, uranium-two
# thirty-five, as physicists say them)
_ISOTOPE = re.compile(
    r"(?P<element>carbon|uranium|plutonium|iodine|cobalt|strontium|caesium|cesium|potassium|"
    rf"radium|thorium|tritium|argon|nitrogen|oxygen|hydrogen|helium|lead)-(?P<mass>[1-9]\d{{0,2}}){_TOKEN_END}",
    re.IGNORECASE,
)
# "Dawson & Sons", "salt & pepper": between spaces "&" is always "and" ("AT&T", "R&D" stay)
_AMPERSAND = re.compile(r"\s&(?=\s)")
_AMPERSAND_READING = _Reading("and", "ampersand")


# matched text -> reading, for the forms whose reading does not depend on their context (all
# but plain numbers, decades and pence): books repeat their sums, times and dates
_READINGS: dict[str, _Reading | None] = {}
_UNREAD = _Reading(None, "")


def _number_spoken(text: str, m: re.Match[str]) -> _Reading | None:
    if m["open"].endswith("(") and _PHONE_AFTER.match(text, m.end() + 1):
        return None
    if m["hour"] and not m["time_meridiem"] and _after_name(text, m):
        # "John 3:16", "Genesis 1:1": a chapter and a verse, not a clock time
        return _Reading(f"{_cardinal(int(m['hour']))} {_cardinal(int(m['minute']))}", "verse")
    if m["whole"] is None and m["decade"] is None and m["pennies"] is None:
        reading = _READINGS.get(m.group(), _UNREAD)
        if reading is _UNREAD:
            reading = _number_reading(text, m)
            if len(_READINGS) < 65_536:
                _READINGS[m.group()] = reading
    else:
        reading = _number_reading(text, m)
    if reading is None or reading.spoken is None:
        return reading
    words = reading.spoken
    opening = m["open"][:-1] if m["decade"] and m["open"].endswith("'") else m["open"]
    if _short_year(text, m):
        opening = m["open"][:-1]  # "divorced in '61": sixty-one, the apostrophe unspoken
    dot = (
        m["meridiem"]
        or m["time_meridiem"]
        or _group(m, "unit_dot")
        or _group(m, "dotted_dot")
        or m["pence_dot"]
        or m["old_pence_dot"]
    ) or ""
    if dot.endswith(".") and _capital_follows(text, m.end()):
        words += "."
    return _Reading(opening + words, reading.rule)


def _short_year(text: str, m: re.Match[str]) -> bool:
    """ "in '61", "since '05": a year with its century cut off, after a year word."""
    if not m["open"].endswith("'") or not m["whole"] or len(m["whole"]) != 2:
        return False
    if m["fraction"] or m["minus"] or m["percent"] or m["unit"] or m["dotted"] or m["tail"]:
        return False
    before = _words_before(text, m.start())
    return bool(before) and before[-1].lower() in _YEAR_WORDS


# a period that ends an abbreviation or an initial, not a sentence: "Op. 27", "Art. 5"
_ABBREVIATED_BEFORE = re.compile(
    r"(?:\A|[\s(])(?:(?:[A-Za-z]\.)*[A-Za-z]|no|nos|nr|p|pp|pg|ch|vol|vols|fig|figs|ex|pt|bk|col|fn|mon|tues|wed|thur|thurs|fri|al|est|cit|cf|viz|art|sec|op|para|ed|eq|ref|cf|c|ca|"
    r"approx|ft|in|oz|lb|lbs|st|tbsp|tsp|min|hr)\.\s+\Z",
    re.IGNORECASE,
)


def _starts_sentence(text: str, at: int, done: int, parts: list[str]) -> bool:
    """A sentence starts at `at` in the spoken text so far (`parts`, then text[done:at]):
    "No. 5" is not one once "No." is "number", nor "Op. 27" after an abbreviation."""
    if not parts or at - done >= 12:
        before = text[max(0, at - 12) : at]
    else:
        before = parts[-1][-12:] + text[done:at]
    return bool(_SENTENCE_BEFORE.search(before)) and not _ABBREVIATED_BEFORE.search(before)


def _capitalized(spoken: str) -> str:
    for i, char in enumerate(spoken):
        if char.isalpha():
            return spoken[:i] + char.upper() + spoken[i + 1 :]
    return spoken


def _cased_like(written: str, spoken: str) -> str:
    return _capitalized(spoken) if written[:1].isupper() else spoken
