"""The spoken step: numbers, currency, times, units, abbreviations and Roman numerals read as
words; what it does not recognise left alone; the pronunciation lexicon and `narrate spoken`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from support.runs import preview_args

from narrate.cli import cli
from narrate.config import ChunkingConfig, Lexicon
from narrate.errors import UsageError
from narrate.spoken import _REGNAL_NAMES, explain, load_lexicon, speak, speak_counted
from narrate.text import chunk_book, measure_book, split_sentences, spoken_text

CORPUS = Path(__file__).parent / "corpus"


def corpus_rows(name: str) -> list[list[str]]:
    """The rows of a corpus file: tab-separated fields, `#` comments skipped."""
    lines = (CORPUS / name).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]


PAIRS = corpus_rows("spoken_pairs.tsv")
UNCHANGED_PROSE = corpus_rows("unchanged.tsv")
# written before the rules were read, as an outside evaluation would: a few of its readings
# are still left as written or half read (printed by bench/spoken.py), so it is held to the
# pairs target as a whole, and to every unchanged sentence
HOLDOUT_PAIRS = corpus_rows("holdout_pairs.tsv")
HOLDOUT_UNCHANGED = corpus_rows("holdout_unchanged.tsv")
GENRES = {"fiction", "history", "biography", "cookery", "science", "travel"}


def test_the_corpus_holds_250_pairs_and_60_unchanged_sentences_of_every_genre() -> None:
    assert len(PAIRS) >= 250 and len(UNCHANGED_PROSE) >= 60
    assert all(len(row) == 3 for row in PAIRS) and all(len(row) == 2 for row in UNCHANGED_PROSE)
    assert {genre for genre, *_ in PAIRS} == GENRES
    assert {genre for genre, _ in UNCHANGED_PROSE} == GENRES


@pytest.mark.parametrize(("genre", "written", "spoken"), PAIRS)
def test_book_prose_is_read_as_an_editor_would_read_it(
    genre: str, written: str, spoken: str
) -> None:
    assert spoken_text(written) == spoken


@pytest.mark.parametrize(("genre", "written"), UNCHANGED_PROSE)
def test_book_prose_with_nothing_certain_to_read_comes_out_unchanged(
    genre: str, written: str
) -> None:
    assert spoken_text(written) == written


def test_held_out_book_prose_reads_at_least_95_percent_of_its_pairs_as_the_editor_would() -> None:
    assert len(HOLDOUT_PAIRS) >= 120 and {genre for genre, *_ in HOLDOUT_PAIRS} == GENRES
    right = sum(spoken_text(written) == spoken for _, written, spoken in HOLDOUT_PAIRS)
    assert right >= 0.95 * len(HOLDOUT_PAIRS)


@pytest.mark.parametrize(("genre", "written"), HOLDOUT_UNCHANGED)
def test_held_out_prose_with_nothing_certain_to_read_comes_out_unchanged(
    genre: str, written: str
) -> None:
    assert spoken_text(written) == written


SPOKEN = [
    # cardinals, decimals, negatives
    ("He counted 42 sheep.", "He counted forty-two sheep."),
    ("There were 7 of them.", "There were seven of them."),
    ("About 1,000 people came.", "About one thousand people came."),
    ("It cost 12,345 crowns.", "It cost twelve thousand three hundred and forty-five crowns."),
    (
        "A crowd of 250,000 filled the square.",
        "A crowd of two hundred and fifty thousand filled the square.",
    ),
    ("Pi is about 3.14 here.", "Pi is about three point one four here."),
    ("Add 0.5 of it.", "Add zero point five of it."),
    ("It fell to -5 overnight.", "It fell to minus five overnight."),
    ("Page 100 was torn.", "Page one hundred was torn."),
    ("Room (12) was empty.", "Room (twelve) was empty."),
    ("He had 3, she had 4.", "He had three, she had four."),
    # years and decades
    ("It was 1984 again.", "It was nineteen eighty-four again."),
    ("Born in 1905, he", "Born in nineteen oh-five, he"),
    ("By 2010 it was over.", "By twenty ten it was over."),
    ("In 2005 we met.", "In two thousand and five we met."),
    ("The year 1066 changed it.", "The year ten sixty-six changed it."),
    ("Life in the 1800s was hard.", "Life in the eighteen hundreds was hard."),
    ("Music of the 1960s.", "Music of the nineteen sixties."),
    ("Back in the '60s we sang.", "Back in the sixties we sang."),
    ("The 2000s began.", "The two thousands began."),
    ("In the 1990's, yes.", "In the nineteen nineties, yes."),
    (
        "See page 1200 and Chapter 1066.",
        "See page one thousand two hundred and Chapter one thousand and sixty-six.",
    ),
    (
        "He lives at No. 1984 now.",
        "He lives at number one thousand nine hundred and eighty-four now.",
    ),
    # ordinals
    ("She came 3rd in the race.", "She came third in the race."),
    ("The 1st of May.", "The first of May."),
    ("His 21st birthday.", "His twenty-first birthday."),
    ("The 12th man.", "The twelfth man."),
    ("On the 102nd floor.", "On the one hundred and second floor."),
    # currency
    ("It cost $12.50 then.", "It cost twelve dollars and fifty cents then."),
    ("Just $1 each.", "Just one dollar each."),
    ("Only $0.50 left.", "Only fifty cents left."),
    ("A $1,000 prize.", "A one thousand dollars prize."),
    ("He owed £5 to her.", "He owed five pounds to her."),
    ("A fee of £1.01 was due.", "A fee of one pound and one penny was due."),
    ("It was €3.20 a cup.", "It was three euros and twenty cents a cup."),
    ("They raised $3.5 million today.", "They raised three point five million dollars today."),
    ("Worth $5 million now.", "Worth five million dollars now."),
    # percentages
    ("Nearly 50% agreed.", "Nearly fifty percent agreed."),
    ("A 3.5% rise.", "A three point five percent rise."),
    # clock times
    ("We met at 10:30 p.m. on Friday.", "We met at ten thirty PM on Friday."),
    ("At 10 p.m. Then we left.", "At ten PM. Then we left."),
    ("Wake at 9am sharp.", "Wake at nine AM sharp."),
    ("The train left at 10:05 exactly.", "The train left at ten oh five exactly."),
    ("Lunch at 12:00 today.", "Lunch at twelve o'clock today."),
    ("At 14:00 the guns fired.", "At fourteen hundred the guns fired."),
    ("At 7:45 AM sharp.", "At seven forty-five AM sharp."),
    # units
    ("She walked 5 km home.", "She walked five kilometers home."),
    ("It weighed 1 kg only.", "It weighed one kilogram only."),
    ("A 2.5 kg bag.", "A two point five kilogram bag."),
    ("He drove at 60 mph there.", "He drove at sixty miles per hour there."),
    ("It was 20 °C outside.", "It was twenty degrees Celsius outside."),
    ("A tower 300 ft tall.", "A tower three hundred feet tall."),
    ("Add 5g of salt.", "Add five grams of salt."),
    # abbreviations and titles
    ("Dr. Watson arrived.", "Doctor Watson arrived."),
    ("Mr. and Mrs. Smith dined.", "Mister and Missus Smith dined."),
    ("Ask Prof. Lee.", "Ask Professor Lee."),
    ("Capt. Ahab and Gen. Grant.", "Captain Ahab and General Grant."),
    ("He prayed to St. Jude.", "He prayed to Saint Jude."),
    ("She lived on Baker St. near the park.", "She lived on Baker Street near the park."),
    ("She lived on Baker St. The house was red.", "She lived on Baker Street. The house was red."),
    ("Turn onto Mulholland Dr. at night.", "Turn onto Mulholland Drive at night."),
    ("Fruit, e.g. apples, is good.", "Fruit, for example apples, is good."),
    ("The owner, i.e. Tom, said no.", "The owner, that is Tom, said no."),
    ("Cats, dogs, etc. were there.", "Cats, dogs, et cetera were there."),
    ("Cats, dogs, etc. The rest fled.", "Cats, dogs, et cetera. The rest fled."),
    ("He lives at No. 5 now.", "He lives at number five now."),
    ("Martin Luther King Jr. spoke.", "Martin Luther King Junior spoke."),
    ("It was Kramer vs. Kramer.", "It was Kramer versus Kramer."),
    # Roman numerals in context
    ("Chapter XIV", "Chapter fourteen"),
    ("CHAPTER IV. The Storm", "CHAPTER four. The Storm"),
    ("Read Chapter I first.", "Read Chapter one first."),
    ("Book II ends here.", "Book two ends here."),
    ("Part III: the return", "Part three: the return"),
    ("Volume XII is lost.", "Volume twelve is lost."),
    ("Act V, scene two.", "Act five, scene two."),
    ("Louis XIV was king.", "Louis the fourteenth was king."),
    ("Henry V spoke.", "Henry the fifth spoke."),
    ("Pope John XXIII died.", "Pope John the twenty-third died."),
    ("Charles II's court.", "Charles the second's court."),
    ("After World War II ended.", "After World War two ended."),
    # sentence starts keep their capital (and their sentence end)
    ("1,200 men marched.", "One thousand two hundred men marched."),
    ("He left. 3 days later he came back.", "He left. Three days later he came back."),
    ('"12 men," he said.', '"Twelve men," he said.'),
    # text of two- and four-byte characters
    ("Caf\u00e9 \u2014 at 10:30 today.", "Caf\u00e9 \u2014 at ten thirty today."),
    ("Tea \U0001f375 for 2 people, Dr. Li.", "Tea \U0001f375 for two people, Doctor Li."),
    # a hyphenated word after a number keeps its tail, after a name too
    ("A Route 66-style diner.", "A Route sixty-six-style diner."),
]

UNCHANGED = [
    "I said I would.",
    "So I went; then I left.",
    "The CV was long.",
    "Stir the MIX well.",
    "Mix it well.",
    "Then IV fluids were given.",
    "Malcolm X spoke.",
    "The part I liked was the book I read in the war I fought.",
    "ISBN 978-0-306-40615-7 and 0306406152 and 9780306406157.",
    "See https://example.com/page2 or www.site42.org today.",
    "The id A12-3B failed, and so did 12A and MP3.",
    "Call 555-1234 or (555) 123-4567 now.",
    "Version 1.2.3 and v2.0 and 192.168.0.1 shipped.",
    "Agent 007 and 12/05/2020 and 9/11 and 24/7 and 4x4.",
    "Phone 5551234567 rang.",
    "Genesis is fine, as is DC and MD.",
    "the dr. said no. then he left.",
    "DR. WHO",
    "No. I won't.",
    "Mr Smith and Dr Jones",
    "A 1th place and $12.5.5 and 25:30.",
    "He paid 10s. for it, and the score was 3-2.",
]


@pytest.mark.parametrize(("written", "spoken"), SPOKEN)
def test_written_forms_are_read_as_words(written: str, spoken: str) -> None:
    assert speak(written) == spoken


def test_the_table_covers_at_least_sixty_forms() -> None:
    assert len(SPOKEN) + len(UNCHANGED) >= 60 and len(SPOKEN) >= 60


@pytest.mark.parametrize("written", UNCHANGED)
def test_what_the_rules_do_not_recognise_stays_as_written(written: str) -> None:
    assert speak(written) == written


# Words that no rule or context looks at: no digits, abbreviations, context words or Roman
# numerals in capitals other than the pronoun "I".
_ABBREVIATION_LIKE = {"mr", "mrs", "ms", "dr", "prof", "rev", "hon", "capt", "col", "gen", "lt"}
_ABBREVIATION_LIKE |= {"sgt", "mt", "st", "jr", "sr", "no", "vs", "approx", "etc", "e", "i"}
_CONTEXTS = {"chapter", "book", "part", "volume", "vol", "act", "scene", "canto", "section"}
_CONTEXTS |= {"appendix", "psalm", "war", "phase", "stage", "type", "class", "level"}
_CONTEXTS |= {"mark", "episode", "article", "plate", "figure", "fig", "bowl", "vatican"}
plain_word = (
    st.from_regex(r"[A-Za-z][a-z]{0,9}", fullmatch=True)
    .filter(lambda w: w.lower() not in _ABBREVIATION_LIKE | _CONTEXTS)
    .filter(lambda w: w.capitalize() not in _REGNAL_NAMES)
    .filter(lambda w: not re.fullmatch(r"[IVXLCDM]+", w))
)
plain_text = st.lists(
    st.one_of(plain_word, st.just("I"), st.sampled_from([".", ",", "!", "?", ";", '"'])),
    max_size=40,
).map(lambda tokens: " ".join(tokens))


@given(plain_text, st.sampled_from(["", " ", "\n\n"]))
def test_text_without_anything_to_speak_is_returned_unchanged(text: str, end: str) -> None:
    lexicon = Lexicon((("zzyzx", "zai-zicks"), ("Qwerty", "kwer-tee")))
    assert speak(text + end) == text + end
    assert speak(text + end, lexicon) == text + end


def test_sentence_ends_survive_the_expansions() -> None:
    text = "It was 1984. 12 came. Dr. Who left at 5 p.m. Then it rained, etc. The end."
    assert split_sentences(spoken_text(text)) == [
        "It was nineteen eighty-four.",
        "Twelve came.",
        "Doctor Who left at five PM.",
        "Then it rained, et cetera.",
        "The end.",
    ]


def test_a_four_digit_number_is_a_year_only_where_its_context_says_so() -> None:
    assert speak("In 1815 the garrison of 1250 soldiers fell.") == (
        "In eighteen fifteen the garrison of one thousand two hundred and fifty soldiers fell."
    )
    assert speak("The winter of 1850 was hard; July 4, 1776; from 1914 to 1918.") == (
        "The winter of eighteen fifty was hard; July fourth, seventeen seventy-six; "
        "from nineteen fourteen to nineteen eighteen."
    )
    assert speak("The 1861 book, 1250 was the price.") == "The 1861 book, 1250 was the price."


def test_model_numbers_initials_and_the_pronoun_i_are_never_read_as_quantities() -> None:
    assert speak("He flew the Boeing 747 and Apollo 11.") == (
        "He flew the Boeing 747 and Apollo eleven."
    )
    assert speak("John V. Lindsay met Charles I and Henry V.") == (
        "John V. Lindsay met Charles the first and Henry the fifth."
    )
    assert speak("War I could understand. Part I understood. World War I ended.") == (
        "War I could understand. Part I understood. World War one ended."
    )
    assert speak("Part I: The Old House") == "Part one: The Old House"


def test_i_after_a_monarchs_name_stays_the_pronoun_when_its_verb_has_no_object_after_it() -> None:
    # the object came first: "the first" would be a wrong word the listener hears
    for text in (
        "Anne I never liked, but her sister was kind.",
        "Charles I always admired, his son less so.",
        "John I met later in Paris.",
        "Paul I had never trusted.",
        "Louis I once saw at Versailles.",
        "David I haven't seen in years.",
        "Stephen I barely knew.",
        "Peter I sent away.",
        "To Peter I owe everything.",
        "Like Edward I was tired.",
    ):
        assert speak(text) == text
    assert speak(
        "Elizabeth I never married. Edward I built castles. Charles I had three sons."
    ) == (
        "Elizabeth the first never married. Edward the first built castles. "
        "Charles the first had three sons."
    )
    assert speak("Henry I married Matilda; Charles I fled to Oxford.") == (
        "Henry the first married Matilda; Charles the first fled to Oxford."
    )
    assert speak("It passed to Henry I in 1100, loyal to Charles I and from Edward I to Anne.") == (
        "It passed to Henry the first in eleven hundred, loyal to Charles the first and from "
        "Edward the first to Anne."
    )


def test_after_a_determiner_a_numeral_names_a_thing_and_i_starts_a_relative_clause() -> None:
    for text in ("The Section I worked in was closed.", "The Apple II sold well."):
        assert speak(text) == text
    assert speak("The Emperor Charles V abdicated; Thurston Howell III paid.") == (
        "The Emperor Charles the fifth abdicated; Thurston Howell the third paid."
    )


def test_a_departure_after_the_is_a_clock_time_not_a_decimal() -> None:
    assert speak("The 6.30 train and the 10.30 from Euston.") == (
        "The six thirty train and the ten thirty from Euston."
    )
    assert speak("The 2.75 figure.") == "The two point seven five figure."


def test_a_range_that_ends_in_a_mixed_fraction_reads_as_one_range() -> None:
    assert spoken_text("Prove for 1-1½ hours; use 2-2 1/2 cups.") == (
        "Prove for one to one and a half hours; use two to two and a half cups."
    )


def test_pence_written_with_a_p_read_as_pence_but_an_orbital_stays() -> None:
    assert speak("The 2p orbital fills; petrol was 99p, a 2p coin and 1p.") == (
        "The 2p orbital fills; petrol was ninety-nine pence, a two pence coin and one penny."
    )


def test_an_isotope_reads_its_mass_number_as_physicists_say_it() -> None:
    assert speak("Carbon-14 dating; uranium-235 and Catch-22.") == (
        "Carbon-fourteen dating; uranium-two thirty-five and Catch-22."
    )


def test_an_event_named_by_its_year_reads_the_year_and_a_count_stays_a_count() -> None:
    assert speak("The 1944 landings and the 1960 election; the 1250 soldiers.") == (
        "The nineteen forty-four landings and the nineteen sixty election; "
        "the one thousand two hundred and fifty soldiers."
    )
    assert speak("They met on Wed. 4 May.") == "They met on Wed. the fourth of May."
    assert speak("Smith et al. (2005) agree. Est. 1887.") == (
        "Smith et al. (two thousand and five) agree. Est. eighteen eighty-seven."
    )


def test_a_single_letter_label_or_a_list_of_numerals_is_not_read_as_a_number() -> None:
    text = "Medicare Part D, Appendix C, Section L and Part M; Chapters III and IV."
    assert speak(text) == text
    assert speak("It is far rarer than type I.") == "It is far rarer than type one."
    assert speak("Chapter XL opens at sea.") == "Chapter forty opens at sea."


def test_phone_numbers_24_hour_times_and_cut_years_read_as_what_they_are() -> None:
    assert speak("Call 999 or dial 0 for the operator.") == "Call 999 or dial 0 for the operator."
    assert speak("He called 3 witnesses.") == "He called three witnesses."
    assert speak("By 1800 hours the guns stopped; at 1930 hours they began.") == (
        "By eighteen hundred hours the guns stopped; at nineteen thirty hours they began."
    )
    assert speak("He logged 1500 hours of flight.") == (
        "He logged one thousand five hundred hours of flight."
    )
    assert speak("The year was 1666. She divorced in '61.") == (
        "The year was sixteen sixty-six. She divorced in sixty-one."
    )


def test_abbreviations_before_numbers_neither_capitalise_nor_split_sentences() -> None:
    text = "See Vol. 2, p. 45, and Fig. 3. He stood 6 ft. 2 in. in his socks. Op. 27 was next."
    assert split_sentences(spoken_text(text)) == [
        "See Volume two, page forty-five, and Figure three.",
        "He stood six feet two inches in his socks.",
        "Op. twenty-seven was next.",
    ]


def test_plural_abbreviations_before_numbers_read_in_their_sentence_and_the_dr_is_a_doctor() -> (
    None
):
    assert speak("Vols. 1-3 are out of print; see Figs. 2 and 3.") == (
        "Volumes one to three are out of print; see Figures two and three."
    )
    assert speak("The Dr. was late. He lives on Mulholland Dr. now.") == (
        "The Doctor was late. He lives on Mulholland Drive now."
    )
    text = "On pg. 45, Ex. 3 and col. 2 show it; she weighed 9 st. 4 lb. Then she ran."
    assert split_sentences(spoken_text(text)) == [
        "On page forty-five, Ex. three and col. two show it; she weighed nine stone four pounds.",
        "Then she ran.",
    ]


def test_an_ampersand_between_words_reads_and_but_one_inside_a_name_stays() -> None:
    assert speak("Dawson & Sons sold salt & pepper to AT&T and R&D.") == (
        "Dawson and Sons sold salt and pepper to AT&T and R&D."
    )


def test_forms_left_as_written_are_counted_and_explained_with_their_reason() -> None:
    text = "In 1815 the 1861 book and the Boeing 747 of John V. Lindsay; Part I understood."
    spoken, left = speak_counted(text)
    assert spoken == text.replace("1815", "eighteen fifteen") and left == 4
    decisions = explain(text)
    assert [(d.written, d.spoken, d.rule) for d in decisions] == [
        ("1815", "eighteen fifteen", "year"),
        ("1861", None, "four-digit number: a year or a count? (no context says)"),
        ("747", None, "model or series number after a name"),
        ("V", None, "initial between names"),
        ("I", None, "the pronoun I (a verb follows)"),
    ]


def test_spoken_explain_lists_each_rewrite_with_its_rule_and_each_form_left_alone() -> None:
    result = CliRunner().invoke(cli, ["spoken", "--explain", "In 1815 Dr. Lee flew a Boeing 747."])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "In eighteen fifteen Doctor Lee flew a Boeing 747.",
        "",
        'rewritten "1815" -> "eighteen fifteen" (year)',
        'rewritten "Dr." -> "Doctor" (abbreviation)',
        'left as written "747": model or series number after a name',
        "1 form left as written",
    ]


# --- the lexicon -------------------------------------------------------------------------------

LEXICON = Lexicon((("Hermione", "Her-my-oh-nee"), ("gif", "jif"), ("New York", "Noo York")))


def test_a_lowercase_entry_matches_any_case_and_keeps_a_capital() -> None:
    assert speak("a gif, a GIF and a Gif", LEXICON) == "a jif, a Jif and a Jif"


def test_an_entry_with_capitals_matches_only_as_written() -> None:
    assert speak("Hermione and hermione and HERMIONE", LEXICON) == (
        "Her-my-oh-nee and hermione and HERMIONE"
    )


def test_entries_match_whole_words_only() -> None:
    text = "Hermiones, gifted, gifs; Hermione's hat in New York."
    assert speak(text, LEXICON) == "Hermiones, gifted, gifs; Her-my-oh-nee's hat in Noo York."


def test_entries_may_hold_any_characters() -> None:
    lexicon = Lexicon((("Dvo\u0159\u00e1k", "Dvor-zhahk"), ("\U0001f375", "a cup of tea")))
    assert speak("Dvo\u0159\u00e1k wrote 9 symphonies \U0001f375.", lexicon) == (
        "Dvor-zhahk wrote nine symphonies a cup of tea."
    )


def test_an_entry_wins_over_the_built_in_rules() -> None:
    lexicon = Lexicon((("Dr.", "Drummer"), ("1984", "the year of the book")))
    assert speak("Dr. Who read 1984.", lexicon) == "Drummer Who read the year of the book."


def test_a_tsv_lexicon_allows_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "names.tsv"
    path.write_text("# names\n\nHermione\tHer-my-oh-nee\n  # indented comment\ngif\tjif\n")
    assert load_lexicon(path).entries == (("Hermione", "Her-my-oh-nee"), ("gif", "jif"))


def test_a_json_lexicon_is_one_object(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    path.write_text(json.dumps({"Hermione": "Her-my-oh-nee", "gif": "jif"}))
    assert load_lexicon(path) == Lexicon((("Hermione", "Her-my-oh-nee"), ("gif", "jif")))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.tsv", "ok\tfine\nno tab here\n", "line 2: expected 'written<TAB>spoken'"),
        ("a.tsv", "ok\tfine\n\nok\tagain\n", "line 3: 'ok' is already defined on line 1"),
        ("a.tsv", "ok\t \n", "line 1: a written form and a spoken form are both needed"),
        ("a.tsv", "a\tb\tc\n", "line 1: expected"),
        ("a.json", '{\n "a": "b",\n}', "line 3: not valid JSON"),
        ("a.json", '["a", "b"]', "expected one JSON object"),
        ("a.json", '{"a": 1}', "entry 'a': the spoken form must be a string"),
    ],
)
def test_a_bad_lexicon_is_a_usage_error_naming_the_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_lexicon(path)


def test_the_longest_entry_wins_whatever_its_case_rule() -> None:
    lexicon = Lexicon((("New York", "Noo York"), ("new york times", "noo york tymes")))
    assert speak("He read the New York Times in New York.", lexicon) == (
        "He read the Noo york tymes in Noo York."
    )


def test_an_entry_matches_across_a_line_break_or_a_run_of_spaces() -> None:
    text = "She sailed for New\nYork, then New   York again."
    assert speak(text, LEXICON) == "She sailed for Noo York, then Noo York again."
    assert spoken_text("She left New\nYork.", LEXICON) == "She left Noo York."


def test_a_byte_order_mark_does_not_hide_the_first_entry(tmp_path: Path) -> None:
    for name, content in (("a.tsv", "Hermione\tHer-my-oh-nee\n"), ("a.json", '{"gif": "jif"}')):
        path = tmp_path / name
        path.write_text("\ufeff" + content, encoding="utf-8")
        assert load_lexicon(path).entries[0][0] in {"Hermione", "gif"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{\n "gif": "jif",\n "cat": "kat",\n "gif": "gift"\n}', "line 4: 'gif' is defined twice"),
        ("[" * 100_000 + "]" * 100_000, "not a lexicon (nested too deeply)"),
        ('{"a": ' + "9" * 5000 + "}", "not a lexicon (Exceeds the limit"),
        ('{"a": {"b": "c"}}', "entry 'a': the spoken form must be a string"),
    ],
)
def test_a_json_lexicon_that_is_no_lexicon_is_a_usage_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "names.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_lexicon(path)


def test_a_device_or_a_fifo_as_lexicon_stops_with_exit_two_and_a_hint(tmp_path: Path) -> None:
    fifo = tmp_path / "names.tsv"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        result = CliRunner().invoke(cli, ["spoken", "Hi.", "--lexicon", path])
        assert result.exit_code == 2, result.output
        assert f"lexicon {path}: not a regular file" in result.output
        assert "hint: give lexicon as a regular UTF-8 file" in result.output
        assert "Traceback" not in result.output


def test_the_length_limit_applies_to_the_text_as_spoken() -> None:
    lexicon = Lexicon((("cat", "meow " * 10_000),))
    assert len(speak("a cat", lexicon, limit=60_000)) > 50_000
    with pytest.raises(UsageError, match="more than 1,000 characters once spoken"):
        speak("a cat and a cat", lexicon, limit=1_000)


def test_plan_rejects_a_row_the_lexicon_makes_too_long_and_plans_the_others(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"book_id": "a", "text": "The cat sat. " * 20}, {"book_id": "b", "text": "Hi there."}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lexicon = tmp_path / "names.tsv"
    lexicon.write_text("cat\t" + "meow " * 100_000 + "\n")
    args = ["plan", str(manifest), "--engine", "preview", "--lexicon", str(lexicon), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.output)
    assert summary["books"] == 1 and summary["rejected_by_reason"] == {"text_too_long": 1}
    assert "more than 200,000 characters once spoken" in summary["rejected_rows"][0]["message"]


def test_plan_counts_the_forms_left_as_written_per_book(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"book_id": "a", "text": "The Boeing 747 and the 1861 book. In 1815 it rained."},
        {"book_id": "b", "text": "In 1815 it rained."},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["plan", str(manifest), "--engine", "preview", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["forms_left_as_written"] == 2
    assert summary["forms_left_as_written_by_book"] == {"a": 2}


def test_plan_and_run_count_the_same_spoken_chunks() -> None:
    config = ChunkingConfig(lexicon=LEXICON)
    text = "Chapter XIV\n\nIn 1984, Dr. Hermione paid $12.50 for 5 km of rope. " * 20
    chunks = chunk_book("b", text, config=config, engine_fingerprint="e")
    measure = measure_book(text, config=config, engine_fingerprint="e")
    assert measure.chunks == len(chunks)
    assert measure.characters == sum(len(c.text) for c in chunks)
    assert "Her-my-oh-nee" in chunks[1].text and "twelve dollars" in chunks[1].text


def test_only_chunks_holding_a_changed_entry_get_new_ids() -> None:
    text = "Hermione smiled.\n\nThe river ran on.\n\nA gif of Hermione.\n\nRain fell."
    old = Lexicon((("Hermione", "Her-my-oh-nee"), ("river", "rivver")))
    new = Lexicon((("Hermione", "Her-mine"), ("river", "rivver")))
    ids = [
        [
            c.chunk_id
            for c in chunk_book(
                "b", text, config=ChunkingConfig(lexicon=lx), engine_fingerprint="e"
            )
        ]
        for lx in (old, new)
    ]
    assert [a != b for a, b in zip(*ids, strict=True)] == [True, False, True, False]


# --- the command line --------------------------------------------------------------------------


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def test_spoken_prints_the_text_as_it_will_be_spoken() -> None:
    result = CliRunner().invoke(cli, ["spoken", "Dr. Lee paid $12.50 in 1984.\n\n\nChapter IV"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Doctor Lee paid twelve dollars and fifty cents in nineteen eighty-four.\n\nChapter four\n"
    )


def test_spoken_applies_a_lexicon_file(tmp_path: Path) -> None:
    path = tmp_path / "lexicon.tsv"
    path.write_text("Hermione\tHer-my-oh-nee\n")
    result = CliRunner().invoke(cli, ["spoken", "Hermione waved.", "--lexicon", str(path)])
    assert result.exit_code == 0 and result.output == "Her-my-oh-nee waved.\n"


def test_spoken_prints_a_book_of_a_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"book_id": "a", "text": "Nothing here."}, {"book_id": "b", "text": "In 1984."}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["spoken", "--manifest", str(manifest), "--book", "b"])
    assert result.exit_code == 0 and result.output == "In nineteen eighty-four.\n"
    missing = CliRunner().invoke(cli, ["spoken", "--manifest", str(manifest), "--book", "zz"])
    assert missing.exit_code == 2 and "book 'zz' is not in" in missing.output


def test_spoken_reads_a_book_behind_text_uri_inside_the_text_root_only(tmp_path: Path) -> None:
    (tmp_path / "story.txt").write_text("Chapter II\n\nIt cost $5.")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"book_id": "a", "text_uri": "story.txt"})
        + "\n"
        + json.dumps({"book_id": "b", "text_uri": "/etc/hostname"})
        + "\n"
    )
    result = CliRunner().invoke(cli, ["spoken", "--manifest", str(manifest), "--book", "a"])
    assert result.exit_code == 0 and result.output == "Chapter two\n\nIt cost five dollars.\n"
    outside = CliRunner().invoke(cli, ["spoken", "--manifest", str(manifest), "--book", "b"])
    assert outside.exit_code == 2 and "outside the text root" in outside.output


def test_spoken_needs_text_or_a_book() -> None:
    for args in ([], ["text", "--manifest", "m.jsonl", "--book", "b"], ["--manifest", "m"]):
        result = CliRunner().invoke(cli, ["spoken", *args])
        assert result.exit_code == 2 and "give TEXT, or --manifest and --book" in result.output


def test_a_bad_lexicon_stops_plan_with_the_line_and_exit_two(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"book_id": "a", "text": "Hi."}) + "\n")
    lexicon = tmp_path / "bad.tsv"
    lexicon.write_text("# ok\nHermione Her-my-oh-nee\n")
    result = CliRunner().invoke(
        cli, ["plan", str(manifest), "--engine", "preview", "--lexicon", str(lexicon)]
    )
    assert result.exit_code == 2
    assert f"lexicon {lexicon}, line 2: expected 'written<TAB>spoken'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_changing_one_lexicon_entry_re_renders_only_the_chunks_holding_it(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    books = {
        "a": "Hermione opened the door.\n\nThe river ran past the mill.\n\nRain fell on the roof.",
        "b": "The captain wrote a letter.\n\nHermione read it twice.\n\nThe river was high.",
        "c": "Nobody had seen the captain since spring.\n\nThe bells rang at noon.",
    }
    manifest.write_text(
        "".join(json.dumps({"book_id": b, "text": t}) + "\n" for b, t in books.items())
    )
    lexicon = tmp_path / "lexicon.tsv"

    def run(entry: str, report: str) -> dict:
        lexicon.write_text(f"# pronunciations\nHermione\t{entry}\nriver\trivver\n")
        args = ["run", str(manifest), "--lexicon", str(lexicon)]
        result = CliRunner().invoke(
            cli, [*args, *preview_args(tmp_path, f"--report={tmp_path / report}")]
        )
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / report).read_text())

    first = run("Her-my-oh-nee", "first.json")
    assert first["totals"]["chunks_synthesized"] == 8
    second = run("Her-mine", "second.json")
    assert second["totals"]["chunks_synthesized"] == 2  # a's and b's Hermione paragraphs
    statuses = {b["book_id"]: b["status"] for b in second["books"]}
    assert statuses == {"a": "ready", "b": "ready", "c": "skipped"}
