// narrate._textcore: the per-character work of narrate.text, in C++.
//
// A 1M-book catalog is ~5 G characters and ~38 M chunks; planning it in a minute on two cores
// leaves a few nanoseconds per character and a few microseconds per chunk, which Python-level
// code cannot reach. This module is the one implementation of the rules below; narrate/text.py
// documents them and does what stays in Python (NFKC and typography, chunk ids, Chunk objects).
//
//   paragraphs(text)        normalized, non-empty paragraphs of an NFKC'd text
//   sentence_ends(text)     offsets just past each sentence's last character
//   chunk(text, spec)       [(piece, tokens, frame cap, pause)] for every chunk of a book
//   measure(text, spec, seed)  (chunks, characters, int32 positions, uint64 text hashes):
//                           the same chunks without creating a Python object per chunk
//   words(strings), spoken_marks(text, abbreviations, contexts, lexicon)
//                           offsets where narrate.spoken's rules may apply (see there)
//
// Every function takes str of any kind (1, 2 or 4 bytes per character) and works on its
// buffer directly; offsets are code points, as in Python.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SSE2__)  // every x86-64; other targets use the scalar loops
#include <emmintrin.h>
#endif

namespace {

// --- character classes (see narrate/text.py for the rules in words) --------------------

constexpr Py_UCS4 EM_DASH = 0x2014;

inline bool is_control(Py_UCS4 c) {
    // C0/C1 controls but tab and newline; soft hyphen, zero-width and bidi marks, BOM,
    // line/paragraph separators, lone surrogates
    if (c < 0x20) return c != '\t' && c != '\n';
    if (c < 0x7f) return false;
    if (c <= 0x9f) return true;
    if (c == 0xad) return true;
    if (c < 0x200b) return false;
    return c <= 0x200f || (c >= 0x202a && c <= 0x202e) || (c >= 0x2060 && c <= 0x2064) ||
           c == 0xfeff || c == 0x2028 || c == 0x2029 || (c >= 0xd800 && c <= 0xdfff);
}

inline bool is_line_break(Py_UCS4 c) {  // becomes "\n" ("\r\n" too; U+2029 becomes "\n\n")
    return c == 0x0b || c == 0x0c || c == '\r' || c == 0x85 || c == 0x2028;
}

inline bool is_stop(Py_UCS4 c) { return c == '.' || c == '!' || c == '?' || c == 0x2026; }

inline bool is_closer(Py_UCS4 c) {
    return c == '"' || c == '\'' || c == ')' || c == ']' || c == '}' || c == 0x2019 ||
           c == 0x201d || c == 0xbb;
}

inline bool is_lower_start(Py_UCS4 c) { return (c >= 'a' && c <= 'z') || (c >= 0xdf && c <= 0xff); }

// Python's re: \s, \w and \d of str patterns
inline bool is_space(Py_UCS4 c) { return Py_UNICODE_ISSPACE(c); }
inline bool is_word(Py_UCS4 c) {
    if (c < 128)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    return Py_UNICODE_ISALNUM(c);
}
inline bool is_digit(Py_UCS4 c) { return Py_UNICODE_ISDECIMAL(c); }

// Abbreviations after which "." never ends a sentence, and those that do not when a number
// follows ("No. 5"); matched case-insensitively as whole words.
const char* const TITLES[] = {
    "mr",   "mrs",  "ms",   "mx",   "dr",  "prof", "rev",   "hon",   "st",   "mt",   "ft",
    "fr",   "gen",  "col",  "maj",  "capt", "cpt", "lt",    "sgt",   "cpl",  "adm",  "cmdr",
    "gov",  "sen",  "rep",  "pres", "supt", "insp", "messrs", "mme", "mlle", "msgr", "vs",
    "viz",  "cf",   "approx", "e.g", "i.e", nullptr};
const char* const NUMBERED[] = {"no", "nos", "nr", "p",  "pp", "ch",
                                "vol", "fig", "art", "sec", "op", nullptr};

inline Py_UCS4 to_lower(Py_UCS4 c) {  // re's IGNORECASE on str: the simple lowercase mapping
    if (c < 128) return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
    return Py_UNICODE_TOLOWER(c);
}

// A word list bucketed by its last letter: a "." is checked against the few words ending in
// the letter before it, not all of them (sentences end every ~80 characters).
class WordSet {
   public:
    explicit WordSet(const char* const* words) {
        for (; *words; ++words) {
            const std::string word(*words);
            buckets_[static_cast<unsigned char>(word.back()) - 'a'].push_back(word);
        }
    }

    // one of the words ends at `end` (case-insensitive) and starts a word
    template <typename CH>
    bool ends_at(const CH* s, Py_ssize_t end) const {
        if (end == 0) return false;
        const Py_UCS4 last = to_lower(s[end - 1]);
        if (last < 'a' || last > 'z') return false;
        for (const std::string& word : buckets_[last - 'a']) {
            const Py_ssize_t len = static_cast<Py_ssize_t>(word.size());
            if (len > end) continue;
            const Py_ssize_t start = end - len;
            Py_ssize_t i = len - 2;
            while (i >= 0 && to_lower(s[start + i]) == static_cast<Py_UCS4>(word[i])) --i;
            if (i < 0 && (start == 0 || !is_word(s[start - 1]))) return true;
        }
        return false;
    }

   private:
    std::vector<std::string> buckets_[26];
};

const WordSet TITLE_WORDS(TITLES);
const WordSet NUMBERED_WORDS(NUMBERED);

// --- 16-byte scans of one-byte text -------------------------------------------------------
// Most of a narrative is letters and single spaces: these skip 16 characters at a time to
// the few that matter. Each has a scalar tail (and is all scalar without SSE2).

#if defined(__SSE2__)
inline __m128i load16(const Py_UCS1* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline int eq_mask(__m128i x, char c) { return _mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8(c))); }
#endif

template <typename CH>
Py_ssize_t next_stop(const CH* s, Py_ssize_t i, Py_ssize_t n) {  // next ".", "!", "?", "…"
    if constexpr (sizeof(CH) == 1) {
#if defined(__SSE2__)
        for (; i + 16 <= n; i += 16) {
            const __m128i x = load16(s + i);
            const int m = eq_mask(x, '.') | eq_mask(x, '!') | eq_mask(x, '?');
            if (m) return i + __builtin_ctz(static_cast<unsigned>(m));
        }
#endif
    }
    while (i < n && !is_stop(s[i])) ++i;
    return i;
}

// --- sentence ends ------------------------------------------------------------------------

// A sentence ends at ".", "!", "?" or "…" (a run of them, then closing quotes/brackets) when
// whitespace follows and the next word does not start in lowercase; a lone "." does not end
// one after a title or "e.g.", after an initial ("J." but not "I."), or after "No." before a
// number.
template <typename CH>
void find_sentence_ends(const CH* s, Py_ssize_t n, std::vector<Py_ssize_t>& ends) {
    Py_ssize_t p = 0;
    while (p < n) {
        p = next_stop(s, p, n);
        if (p == n) break;
        const Py_UCS4 c = s[p];
        Py_ssize_t j = p + 1;
        while (j < n && is_stop(s[j])) ++j;
        const bool lone_period = c == '.' && j == p + 1;
        while (j < n && is_closer(s[j])) ++j;
        bool ends_here = j < n && is_space(s[j]);
        if (ends_here) {
            Py_ssize_t k = j;
            while (k < n && is_space(s[k])) ++k;
            ends_here = k < n && !is_lower_start(s[k]);
        }
        if (ends_here && lone_period) {
            const bool initial = p >= 1 && s[p - 1] >= 'A' && s[p - 1] <= 'Z' && s[p - 1] != 'I' &&
                                 (p == 1 || !is_word(s[p - 2]));
            bool numbered = false;
            if (NUMBERED_WORDS.ends_at(s, p)) {
                Py_ssize_t k = p + 1;
                while (k < n && is_space(s[k])) ++k;
                numbered = k > p + 1 && k < n && is_digit(s[k]);
            }
            ends_here = !initial && !numbered && !TITLE_WORDS.ends_at(s, p);
        }
        if (ends_here) {
            ends.push_back(j);
            p = j;
        } else {
            ++p;
        }
    }
}

// --- normalization after NFKC ---------------------------------------------------------------

struct ControlTable {  // is_control for the 256 one-byte characters
    uint8_t is[256];
    ControlTable() {
        for (int c = 0; c < 256; ++c) is[c] = is_control(static_cast<Py_UCS4>(c));
    }
};
const ControlTable CONTROL_1BYTE;

template <typename CH>
bool has_control(const CH* s, Py_ssize_t n) {
    if constexpr (sizeof(CH) == 1) {
        uint8_t any = 0;
        Py_ssize_t i = 0;
#if defined(__SSE2__)
        for (; i + 16 <= n && !any; i += 16) {  // blocks without bytes < 0x20 or >= 0x7f pass
            const __m128i x = load16(s + i);
            const __m128i low_or_high = _mm_cmplt_epi8(x, _mm_set1_epi8(0x20));  // signed
            if (_mm_movemask_epi8(_mm_or_si128(low_or_high, _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f)))))
                for (int k = 0; k < 16; ++k) any |= CONTROL_1BYTE.is[s[i + k]];
        }
#endif
        for (; i < n; ++i) any |= CONTROL_1BYTE.is[s[i]];
        return any != 0;
    } else {
        for (Py_ssize_t i = 0; i < n; ++i)
            if (is_control(s[i])) return true;
        return false;
    }
}

// Pass 1: line breaks to "\n", control characters dropped (copies into `out`).
template <typename IN, typename OUT>
void clean_controls(const IN* s, Py_ssize_t n, std::vector<OUT>& out) {
    out.clear();
    if (!has_control(s, n)) {  // most texts: a plain copy
        out.assign(s, s + n);
        return;
    }
    out.reserve(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
        const Py_UCS4 c = s[i];
        if (!is_control(c)) {
            out.push_back(static_cast<OUT>(c));
        } else if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
            // "\r\n" is one break: the "\n" is copied next
        } else if (is_line_break(c)) {
            out.push_back('\n');
        } else if (c == 0x2029) {
            out.push_back('\n');
            out.push_back('\n');
        }
    }
}

// Pass 2, in place: "--"/"---" (not longer runs) become "—"; ". . ." (spaces or tabs between
// three or more periods) becomes "...".
template <typename CH>
Py_ssize_t dashes_and_ellipses(CH* s, Py_ssize_t n) {
    Py_ssize_t w = 0, i = 0;
    while (i < n) {
        const Py_UCS4 c = s[i];
        if (c == '-') {
            Py_ssize_t run = 1;
            while (i + run < n && s[i + run] == '-') ++run;
            if (run == 2 || run == 3) {
                s[w++] = static_cast<CH>(EM_DASH);
            } else {
                for (Py_ssize_t k = 0; k < run; ++k) s[w++] = '-';
            }
            i += run;
            continue;
        }
        if (c == '.') {
            Py_ssize_t j = i + 1, repeats = 0;
            while (j + 1 < n && (s[j] == ' ' || s[j] == '\t') && s[j + 1] == '.') {
                ++repeats;
                j += 2;
            }
            if (repeats >= 2) {
                s[w++] = '.';
                s[w++] = '.';
                s[w++] = '.';
                i = j;
                continue;
            }
        }
        s[w++] = s[i++];
    }
    return w;
}

template <typename CH>
const CH* find_char(const CH* s, const CH* end, CH c) {
    if constexpr (sizeof(CH) == 1) {
        return static_cast<const CH*>(std::memchr(s, c, static_cast<size_t>(end - s)));
    } else {
        const CH* found = std::find(s, end, c);
        return found == end ? nullptr : found;
    }
}

// "--", ". ." or ".\t.": what pass 2 rewrites (periods are common, hyphens rare)
template <typename CH>
bool needs_dash_pass(const CH* s, Py_ssize_t n) {
    const CH* end = s + n;
    for (const CH* p = s; (p = find_char(p, end, CH('-'))) && p + 1 < end; ++p)
        if (p[1] == '-') return true;
    for (const CH* p = s; (p = find_char(p, end, CH('.'))) && p + 2 < end; ++p)
        if ((p[1] == ' ' || p[1] == '\t') && p[2] == '.') return true;
    return false;
}

using Spans = std::vector<std::pair<Py_ssize_t, Py_ssize_t>>;

// Pass 3, in place: paragraphs are separated by a blank line ("\n", spaces/tabs, "\n"); inside
// one, every run of spaces, tabs and line breaks becomes one space, and ends are trimmed.
template <typename CH>
void split_paragraphs(CH* s, Py_ssize_t n, Spans& spans) {
    Py_ssize_t w = 0, para_start = 0;
    bool pending_space = false;
    auto close = [&]() {
        if (w > para_start) spans.emplace_back(para_start, w);
        para_start = w;
        pending_space = false;
    };
    Py_ssize_t i = 0;
    while (i < n) {
#if defined(__SSE2__)
        if constexpr (sizeof(CH) == 1) {
            // A block of words and single spaces inside a paragraph stays as it is (moved
            // left if something before it was dropped); a space at its end waits, as below.
            if (!pending_space && w > para_start && i + 16 <= n) {
                const __m128i x = load16(s + i);
                const int spaces = eq_mask(x, ' ');
                const int low = _mm_movemask_epi8(_mm_cmplt_epi8(x, _mm_set1_epi8(0x21)));
                if ((low & ~spaces) == 0 && (spaces & (spaces >> 1)) == 0) {
                    if (w != i) _mm_storeu_si128(reinterpret_cast<__m128i*>(s + w), x);
                    const bool trailing = (spaces >> 15) & 1;
                    w += trailing ? 15 : 16;
                    i += 16;
                    pending_space = trailing;
                    continue;
                }
            }
        }
#endif
        if (s[i] > ' ') {  // most characters: a tight loop (no copy while nothing moved)
            if (pending_space) s[w++] = ' ';
            pending_space = false;
            if (w == i) {
                do ++i;
                while (i < n && s[i] > ' ');
                w = i;
            } else {
                do s[w++] = s[i++];
                while (i < n && s[i] > ' ');
            }
            continue;
        }
        const Py_UCS4 c = s[i];
        if (c == '\n') {
            Py_ssize_t j = i + 1;
            while (j < n && (s[j] == ' ' || s[j] == '\t')) ++j;
            if (j < n && s[j] == '\n') {
                close();
                i = j + 1;
                continue;
            }
        }
        if (c == ' ' || c == '\t' || c == '\n') {
            pending_space = w > para_start;
        } else {
            if (pending_space) s[w++] = ' ';
            pending_space = false;
            s[w++] = s[i];
        }
        ++i;
    }
    close();
}

// A book's normalized text: one buffer (paragraphs back to back) and each paragraph's span.
struct Normalized {
    int kind = PyUnicode_1BYTE_KIND;
    std::vector<Py_UCS1> ucs1;
    std::vector<Py_UCS2> ucs2;
    std::vector<Py_UCS4> ucs4;
    Spans spans;

    const char* data() const {
        switch (kind) {
            case PyUnicode_1BYTE_KIND:
                return reinterpret_cast<const char*>(ucs1.data());
            case PyUnicode_2BYTE_KIND:
                return reinterpret_cast<const char*>(ucs2.data());
            default:
                return reinterpret_cast<const char*>(ucs4.data());
        }
    }
};

template <typename IN, typename OUT>
void normalize_into(const IN* s, Py_ssize_t n, std::vector<OUT>& buffer, Spans& spans) {
    clean_controls(s, n, buffer);
    Py_ssize_t len = static_cast<Py_ssize_t>(buffer.size());
    if (needs_dash_pass(buffer.data(), len)) len = dashes_and_ellipses(buffer.data(), len);
    split_paragraphs(buffer.data(), len, spans);
}

void normalize(PyObject* text, Normalized& out) {
    const int kind = PyUnicode_KIND(text);
    const void* data = PyUnicode_DATA(text);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    switch (kind) {
        case PyUnicode_1BYTE_KIND: {
            const auto* s = static_cast<const Py_UCS1*>(data);
            // "--" becomes "—", which a 1-byte buffer cannot hold (a control character
            // between two hyphens also makes one "--")
            bool dash = false;
            for (const Py_UCS1* p = s; !dash && (p = find_char(p, s + n, Py_UCS1('-'))); ++p)
                dash = p + 1 < s + n && (p[1] == '-' || CONTROL_1BYTE.is[p[1]]);
            if (dash) {
                out.kind = PyUnicode_2BYTE_KIND;
                normalize_into(s, n, out.ucs2, out.spans);
            } else {
                out.kind = PyUnicode_1BYTE_KIND;
                normalize_into(s, n, out.ucs1, out.spans);
            }
            return;
        }
        case PyUnicode_2BYTE_KIND:
            out.kind = kind;
            normalize_into(static_cast<const Py_UCS2*>(data), n, out.ucs2, out.spans);
            return;
        default:
            out.kind = kind;
            normalize_into(static_cast<const Py_UCS4*>(data), n, out.ucs4, out.spans);
            return;
    }
}

// --- chunking -------------------------------------------------------------------------------

enum Pause { PAUSE_NONE = 0, PAUSE_SENTENCE = 1, PAUSE_PARAGRAPH = 2 };

// How long a chunk may be (narrate.text._Budget and its callers).
struct Spec {
    Py_ssize_t room = 0;     // window positions left after the voice prompt
    Py_ssize_t longest = 0;  // longest chunk in characters by the estimator
    long prompt = 0;         // voice prompt positions (part of every chunk's positions)
    const int32_t* tokens = nullptr;  // tokens by length 0..longest; null: call `count`
    Py_ssize_t tokens_len = 0;
    const int32_t* frames = nullptr;  // frame cap by length 0..longest
    PyObject* count = nullptr;        // str -> tokens (the tokenizer, or the estimator)
    PyObject* max_frames = nullptr;   // length -> frame cap, for pieces over `longest`
};

long call_long(PyObject* fn, PyObject* arg) {
    PyObject* result = PyObject_CallOneArg(fn, arg);
    if (!result) return -1;
    const long value = PyLong_AsLong(result);
    Py_DECREF(result);
    return value;
}

// One candidate piece: its counts, and the str made for the tokenizer (kept for the caller).
struct Piece {
    long tokens = 0;
    long cap = 0;
    PyObject* text = nullptr;  // owned, or null
    Piece() = default;
    Piece(const Piece&) = delete;
    Piece& operator=(const Piece&) = delete;
    ~Piece() { Py_XDECREF(text); }
    void reset() { Py_CLEAR(text); }
};

template <typename CH>
class Chunker {
   public:
    Chunker(const Spec& spec, int kind) : spec_(spec), kind_(kind) {}

    // Calls emit(start_ptr, length, Piece&, pause) for each chunk; false on a Python error.
    template <typename Emit>
    bool run(const CH* buffer, const Spans& spans, Emit&& emit) {
        bool first = true;
        std::vector<Py_ssize_t> ends;
        for (const auto& [begin, stop] : spans) {
            const CH* para = buffer + begin;
            const Py_ssize_t n = stop - begin;
            int pause = first ? PAUSE_NONE : PAUSE_PARAGRAPH;
            first = false;
            if (n <= spec_.longest) {  // fast path: the whole paragraph is one chunk
                Piece piece;
                if (!measure(para, n, piece, spec_.frames[n])) return false;
                if (piece.tokens + piece.cap <= spec_.room) {
                    if (!emit(para, n, piece, pause)) return false;
                    continue;
                }
            }
            ends.clear();
            find_sentence_ends(para, n, ends);
            Py_ssize_t start = 0;
            while (start < n) {
                Py_ssize_t limit = start + spec_.longest;
                Py_ssize_t end;
                Piece piece;
                while (true) {  // shrink until the real token count fits as well
                    end = cut(para, n, start, limit, ends);
                    const Py_ssize_t len = end - start;
                    long cap;
                    if (!frame_cap(len, cap) || !measure(para + start, len, piece, cap))
                        return false;
                    if (piece.tokens + piece.cap <= spec_.room ||
                        std::find(para + start, para + end, ' ') == para + end)
                        break;
                    piece.reset();
                    limit = end - 1;
                }
                if (!emit(para + start, end - start, piece, pause)) return false;
                pause = PAUSE_SENTENCE;
                start = end + 1;
            }
        }
        return true;
    }

    PyObject* make_str(const CH* p, Py_ssize_t len) const {
        return PyUnicode_FromKindAndData(kind_, p, len);
    }

   private:
    bool frame_cap(Py_ssize_t len, long& cap) const {
        if (len <= spec_.longest) {
            cap = spec_.frames[len];
            return true;
        }
        PyObject* arg = PyLong_FromSsize_t(len);
        if (!arg) return false;
        cap = call_long(spec_.max_frames, arg);
        Py_DECREF(arg);
        return !(cap == -1 && PyErr_Occurred());
    }

    bool measure(const CH* p, Py_ssize_t len, Piece& piece, long cap) const {
        piece.cap = cap;
        if (spec_.tokens && len < spec_.tokens_len) {
            piece.tokens = spec_.tokens[len];
            return true;
        }
        piece.text = make_str(p, len);
        if (!piece.text) return false;
        piece.tokens = call_long(spec_.count, piece.text);
        return !(piece.tokens == -1 && PyErr_Occurred());
    }

    static Py_ssize_t rfind(const CH* s, Py_ssize_t n, const Py_UCS4* mark, Py_ssize_t mark_len,
                            Py_ssize_t from, Py_ssize_t to) {  // str.rfind(mark, from, to)
        to = std::min(to, n);
        for (Py_ssize_t i = to - mark_len; i >= from; --i) {
            Py_ssize_t k = 0;
            while (k < mark_len && s[i + k] == mark[k]) ++k;
            if (k == mark_len) return i;
        }
        return -1;
    }

    // Where the chunk starting at `start` ends, at most at `limit` when possible: the last
    // sentence end, else the last clause mark (, ; : —), else before a spaced dash, else the
    // last space; a single word longer than the budget is kept whole.
    static Py_ssize_t cut(const CH* s, Py_ssize_t n, Py_ssize_t start, Py_ssize_t limit,
                          const std::vector<Py_ssize_t>& ends) {
        static const Py_UCS4 CLAUSES[4][2] = {{',', ' '}, {';', ' '}, {':', ' '}, {EM_DASH, ' '}};
        static const Py_UCS4 SPACED_DASH[2] = {' ', EM_DASH};
        static const Py_UCS4 SPACE[1] = {' '};
        if (limit >= n) return n;
        const auto after = std::upper_bound(ends.begin(), ends.end(), limit);
        if (after != ends.begin() && *(after - 1) > start) return *(after - 1);
        Py_ssize_t clause = -1;
        for (const auto& mark : CLAUSES) clause = std::max(clause, rfind(s, n, mark, 2, start, limit + 1));
        if (clause + 1 > start) return clause + 1;
        const Py_ssize_t dash = rfind(s, n, SPACED_DASH, 2, start + 1, limit + 2);
        if (dash > start) return dash;
        const Py_ssize_t space = rfind(s, n, SPACE, 1, start + 1, limit + 1);
        if (space > start) return space;
        for (Py_ssize_t i = limit; i < n; ++i)
            if (s[i] == ' ') return i;
        return n;
    }

    const Spec& spec_;
    const int kind_;
};

// Runs `fn(chunker, buffer)` with the buffer type of the normalized text.
template <typename Fn>
bool with_buffer(const Normalized& text, const Spec& spec, Fn&& fn) {
    switch (text.kind) {
        case PyUnicode_1BYTE_KIND:
            return fn(Chunker<Py_UCS1>(spec, text.kind), text.ucs1.data());
        case PyUnicode_2BYTE_KIND:
            return fn(Chunker<Py_UCS2>(spec, text.kind), text.ucs2.data());
        default:
            return fn(Chunker<Py_UCS4>(spec, text.kind), text.ucs4.data());
    }
}

// 64-bit hash of a piece's code points, the same whatever the buffer's width (text of
// characters < 256 is hashed as bytes, 8 at a time). Only used to count identical chunks within
// a plan window (~10^5 chunks: a collision ~3x10^-10 per window).
inline uint64_t mix(uint64_t h, uint64_t v) {
    h = (h ^ v) * 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 31);
}

inline uint64_t finish(uint64_t h) {
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 32);
}

uint64_t hash_bytes(const Py_UCS1* p, Py_ssize_t len, uint64_t seed) {
    uint64_t h = mix(seed, static_cast<uint64_t>(len));
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        std::memcpy(&v, p + i, 8);
        h = mix(h, v);
    }
    uint64_t tail = 0;
    for (Py_ssize_t k = 0; i + k < len; ++k) tail |= static_cast<uint64_t>(p[i + k]) << (8 * k);
    return finish(mix(h, tail));
}

template <typename CH>
uint64_t hash_text(const CH* p, Py_ssize_t len, uint64_t seed) {
    if constexpr (sizeof(CH) == 1) {
        return hash_bytes(p, len, seed);
    } else {
        thread_local std::vector<Py_UCS1> narrow;
        narrow.resize(static_cast<size_t>(len));
        for (Py_ssize_t i = 0; i < len; ++i) {
            if (p[i] > 0xff) {  // wide text: code points, in another domain (seed + 1)
                uint64_t h = mix(seed + 1, static_cast<uint64_t>(len));
                for (Py_ssize_t k = 0; k < len; ++k) h = mix(h, p[k]);
                return finish(h);
            }
            narrow[static_cast<size_t>(i)] = static_cast<Py_UCS1>(p[i]);
        }
        return hash_bytes(narrow.data(), len, seed);
    }
}

// --- spoken-text marks ------------------------------------------------------------------------

// Strings looked for where they end, compared by the simple lowercase mapping, bucketed by
// their last character (narrate/spoken.py passes them lowercased). A string that starts with a
// word character must start a word.
class Words {
   public:
    explicit Words(std::vector<std::u32string> words) {
        for (std::u32string& word : words)
            if (!word.empty()) buckets_[word.back() % BUCKETS].push_back(std::move(word));
    }

    // start of the longest string ending at `end`, or -1
    template <typename CH>
    Py_ssize_t start_ending_at(const CH* s, Py_ssize_t end) const {
        if (end == 0) return -1;
        const Py_UCS4 last = to_lower(s[end - 1]);
        Py_ssize_t best = -1;
        for (const std::u32string& word : buckets_[last % BUCKETS]) {
            const Py_ssize_t len = static_cast<Py_ssize_t>(word.size());
            if (len > end || word.back() != last) continue;
            const Py_ssize_t start = end - len;
            Py_ssize_t i = len - 2;
            while (i >= 0 && to_lower(s[start + i]) == word[static_cast<size_t>(i)]) --i;
            const bool bounded = start == 0 || !is_word(word[0]) || !is_word(s[start - 1]);
            if (i < 0 && bounded && (best < 0 || start < best)) best = start;
        }
        return best;
    }

   private:
    static constexpr size_t BUCKETS = 64;
    std::vector<std::u32string> buckets_[BUCKETS];
};

constexpr const char* WORDS_CAPSULE = "narrate._textcore.Words";

inline bool is_ascii_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }

inline bool is_roman(Py_UCS4 c) {
    return c == 'I' || c == 'V' || c == 'X' || c == 'L' || c == 'C' || c == 'D' || c == 'M';
}

// Next digit, "." or Roman-numeral capital (I V X L C D M): the characters a spoken rule
// starts from; in one-byte text 16 at a time.
template <typename CH>
Py_ssize_t next_spoken(const CH* s, Py_ssize_t i, Py_ssize_t n) {
    if constexpr (sizeof(CH) == 1) {
#if defined(__SSE2__)
        for (; i + 16 <= n; i += 16) {
            const __m128i x = load16(s + i);
            const __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8('0' - 1)),
                                                _mm_cmplt_epi8(x, _mm_set1_epi8('9' + 1)));
            const int m = _mm_movemask_epi8(digit) | eq_mask(x, '.') | eq_mask(x, 'I') |
                          eq_mask(x, 'V') | eq_mask(x, 'X') | eq_mask(x, 'L') | eq_mask(x, 'C') |
                          eq_mask(x, 'D') | eq_mask(x, 'M');
            if (m) return i + __builtin_ctz(static_cast<unsigned>(m));
        }
#endif
    }
    while (i < n && !is_ascii_digit(s[i]) && s[i] != '.' && !is_roman(s[i])) ++i;
    return i;
}

// Offsets where the spoken rules (or the lexicon) may change the text, in order: the start of
// each whitespace-delimited token holding a digit, of each abbreviation ending before a ".", of
// each word of Roman-numeral capitals (the lone "I" only after a context word such as
// "Chapter"), and of each lexicon string. narrate/spoken.py decides what each one becomes.
template <typename CH>
void find_spoken_marks(const CH* s, Py_ssize_t n, const Words& abbreviations,
                       const Words& contexts, const Words* lexicon,
                       std::vector<Py_ssize_t>& marks) {
    Py_ssize_t i = 0;
    while ((i = next_spoken(s, i, n)) < n) {
        const Py_UCS4 c = s[i];
        if (is_ascii_digit(c)) {
            Py_ssize_t start = i;
            while (start > 0 && !is_space(s[start - 1])) --start;
            marks.push_back(start);
            while (i < n && !is_space(s[i])) ++i;
        } else if (c == '.') {
            const Py_ssize_t start = abbreviations.start_ending_at(s, i);
            if (start >= 0) marks.push_back(start);
            ++i;
        } else if (i > 0 && is_word(s[i - 1])) {
            ++i;
        } else {
            Py_ssize_t end = i;
            while (end < n && is_roman(s[end])) ++end;
            if (end == n || !is_word(s[end])) {
                bool numeral = end - i > 1 || c != 'I';
                if (!numeral) {  // "I" is the pronoun unless a context word comes before it
                    Py_ssize_t k = i;
                    while (k > 0 && is_space(s[k - 1])) --k;
                    if (k > 0 && s[k - 1] == '.') --k;
                    numeral = k < i && contexts.start_ending_at(s, k) >= 0;
                }
                if (numeral) marks.push_back(i);
            }
            i = std::max(end, i + 1);
        }
    }
    if (lexicon) {
        for (Py_ssize_t end = 1; end <= n; ++end) {
            if (is_space(s[end - 1]) || (end < n && is_word(s[end]))) continue;
            const Py_ssize_t start = lexicon->start_ending_at(s, end);
            if (start >= 0) marks.push_back(start);
        }
    }
    std::sort(marks.begin(), marks.end());
    marks.erase(std::unique(marks.begin(), marks.end()), marks.end());
}

// --- Python entry points ---------------------------------------------------------------------

bool check_str(PyObject* text) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "expected str, got %.100s", Py_TYPE(text)->tp_name);
        return false;
    }
#if PY_VERSION_HEX < 0x030C0000  // before 3.12, a str from legacy C APIs may lack its buffer
    if (PyUnicode_READY(text) < 0) return false;
#endif
    return true;
}

// spec = (room, longest, prompt, tokens: bytes | None, frames: bytes, count, max_frames); the
// buffers it holds are released when it goes out of scope (GetBuffer leaves obj null on error).
struct SpecArgs {
    Spec spec;
    Py_buffer tokens{};
    Py_buffer frames{};
    bool ok = false;

    explicit SpecArgs(PyObject* tuple) { ok = parse(tuple); }
    ~SpecArgs() {
        if (tokens.obj) PyBuffer_Release(&tokens);
        if (frames.obj) PyBuffer_Release(&frames);
    }

   private:
    bool parse(PyObject* tuple) {
        PyObject *tokens_obj, *frames_obj;
        if (!PyArg_ParseTuple(tuple, "nnlOOOO;spec must be (room, longest, prompt, tokens, "
                                     "frames, count, max_frames)",
                              &spec.room, &spec.longest, &spec.prompt, &tokens_obj, &frames_obj,
                              &spec.count, &spec.max_frames))
            return false;
        if (tokens_obj != Py_None) {
            if (PyObject_GetBuffer(tokens_obj, &tokens, PyBUF_SIMPLE) < 0) return false;
            spec.tokens = static_cast<const int32_t*>(tokens.buf);
            spec.tokens_len = tokens.len / static_cast<Py_ssize_t>(sizeof(int32_t));
        }
        if (PyObject_GetBuffer(frames_obj, &frames, PyBUF_SIMPLE) < 0) return false;
        if (frames.len < static_cast<Py_ssize_t>((spec.longest + 1) * sizeof(int32_t))) {
            PyErr_SetString(PyExc_ValueError, "frames must hold longest + 1 int32 values");
            return false;
        }
        spec.frames = static_cast<const int32_t*>(frames.buf);
        return true;
    }
};

template <typename Make>
PyObject* new_list(size_t size, Make&& make) {  // make(i): a new reference, or null on error
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(size));
    if (!list) return nullptr;
    for (size_t i = 0; i < size; ++i) {
        PyObject* item = make(i);
        if (!item) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
    }
    return list;
}

PyObject* py_paragraphs(PyObject*, PyObject* text) {
    if (!check_str(text)) return nullptr;
    Normalized norm;
    normalize(text, norm);
    const char* data = norm.data();
    return new_list(norm.spans.size(), [&](size_t i) {
        const auto [begin, end] = norm.spans[i];
        return PyUnicode_FromKindAndData(norm.kind, data + begin * norm.kind, end - begin);
    });
}

PyObject* py_sentence_ends(PyObject*, PyObject* text) {
    if (!check_str(text)) return nullptr;
    std::vector<Py_ssize_t> ends;
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    switch (PyUnicode_KIND(text)) {
        case PyUnicode_1BYTE_KIND:
            find_sentence_ends(PyUnicode_1BYTE_DATA(text), n, ends);
            break;
        case PyUnicode_2BYTE_KIND:
            find_sentence_ends(PyUnicode_2BYTE_DATA(text), n, ends);
            break;
        default:
            find_sentence_ends(PyUnicode_4BYTE_DATA(text), n, ends);
    }
    return new_list(ends.size(), [&](size_t i) { return PyLong_FromSsize_t(ends[i]); });
}

PyObject* py_chunk(PyObject*, PyObject* args) {
    PyObject *text, *spec_tuple;
    if (!PyArg_ParseTuple(args, "UO!", &text, &PyTuple_Type, &spec_tuple) || !check_str(text))
        return nullptr;
    SpecArgs spec(spec_tuple);
    if (!spec.ok) return nullptr;
    Normalized norm;
    normalize(text, norm);
    PyObject* out = PyList_New(0);
    if (!out) return nullptr;
    const bool ok = with_buffer(norm, spec.spec, [&](auto chunker, const auto* buffer) {
        return chunker.run(buffer, norm.spans, [&](const auto* p, Py_ssize_t len, Piece& piece, int pause) {
            PyObject* str = piece.text ? piece.text : chunker.make_str(p, len);
            piece.text = nullptr;  // the tuple owns it now
            if (!str) return false;
            PyObject* item = Py_BuildValue("(Nlli)", str, piece.tokens, piece.cap, pause);
            if (!item) return false;
            const int appended = PyList_Append(out, item);
            Py_DECREF(item);
            return appended == 0;
        });
    });
    if (!ok) {
        Py_DECREF(out);
        return nullptr;
    }
    return out;
}

PyObject* py_measure(PyObject*, PyObject* args) {
    PyObject *text, *spec_tuple;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "UO!K", &text, &PyTuple_Type, &spec_tuple, &seed) ||
        !check_str(text))
        return nullptr;
    SpecArgs spec(spec_tuple);
    if (!spec.ok) return nullptr;
    Normalized norm;
    normalize(text, norm);
    std::vector<int32_t> positions;
    std::vector<uint64_t> hashes;
    long long characters = 0;
    const bool ok = with_buffer(norm, spec.spec, [&](auto chunker, const auto* buffer) {
        return chunker.run(buffer, norm.spans, [&](const auto* p, Py_ssize_t len, Piece& piece, int) {
            positions.push_back(static_cast<int32_t>(spec.spec.prompt + piece.tokens + piece.cap));
            hashes.push_back(hash_text(p, len, seed));
            characters += len;
            return true;
        });
    });
    if (!ok) return nullptr;
    static const char empty[1] = {0};  // y# turns a null pointer into None
    return Py_BuildValue(
        "(nLy#y#)", static_cast<Py_ssize_t>(positions.size()), characters,
        positions.empty() ? empty : reinterpret_cast<const char*>(positions.data()),
        static_cast<Py_ssize_t>(positions.size() * sizeof(int32_t)),
        hashes.empty() ? empty : reinterpret_cast<const char*>(hashes.data()),
        static_cast<Py_ssize_t>(hashes.size() * sizeof(uint64_t)));
}

void delete_words(PyObject* capsule) {
    delete static_cast<Words*>(PyCapsule_GetPointer(capsule, WORDS_CAPSULE));
}

PyObject* py_words(PyObject*, PyObject* sequence) {
    PyObject* items = PySequence_Fast(sequence, "words() takes a sequence of str");
    if (!items) return nullptr;
    std::vector<std::u32string> words;
    const Py_ssize_t size = PySequence_Fast_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < size; ++i) {
        PyObject* word = PySequence_Fast_GET_ITEM(items, i);
        if (!check_str(word)) {
            Py_DECREF(items);
            return nullptr;
        }
        const int kind = PyUnicode_KIND(word);
        const void* data = PyUnicode_DATA(word);
        std::u32string chars(static_cast<size_t>(PyUnicode_GET_LENGTH(word)), U'\0');
        for (size_t k = 0; k < chars.size(); ++k)
            chars[k] = to_lower(PyUnicode_READ(kind, data, static_cast<Py_ssize_t>(k)));
        words.push_back(std::move(chars));
    }
    Py_DECREF(items);
    PyObject* capsule = PyCapsule_New(new Words(std::move(words)), WORDS_CAPSULE, delete_words);
    return capsule;
}

const Words* words_of(PyObject* capsule) {
    return static_cast<const Words*>(PyCapsule_GetPointer(capsule, WORDS_CAPSULE));
}

PyObject* py_spoken_marks(PyObject*, PyObject* args) {
    PyObject *text, *abbreviations_obj, *contexts_obj, *lexicon_obj;
    if (!PyArg_ParseTuple(args, "UOOO", &text, &abbreviations_obj, &contexts_obj, &lexicon_obj) ||
        !check_str(text))
        return nullptr;
    const Words* abbreviations = words_of(abbreviations_obj);
    const Words* contexts = abbreviations ? words_of(contexts_obj) : nullptr;
    if (!contexts) return nullptr;
    const Words* lexicon = nullptr;
    if (lexicon_obj != Py_None && !(lexicon = words_of(lexicon_obj))) return nullptr;
    std::vector<Py_ssize_t> marks;
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    switch (PyUnicode_KIND(text)) {
        case PyUnicode_1BYTE_KIND:
            find_spoken_marks(PyUnicode_1BYTE_DATA(text), n, *abbreviations, *contexts, lexicon, marks);
            break;
        case PyUnicode_2BYTE_KIND:
            find_spoken_marks(PyUnicode_2BYTE_DATA(text), n, *abbreviations, *contexts, lexicon, marks);
            break;
        default:
            find_spoken_marks(PyUnicode_4BYTE_DATA(text), n, *abbreviations, *contexts, lexicon, marks);
    }
    return new_list(marks.size(), [&](size_t i) { return PyLong_FromSsize_t(marks[i]); });
}

PyMethodDef METHODS[] = {
    {"paragraphs", py_paragraphs, METH_O,
     "paragraphs(text) -> list[str]: the normalized, non-empty paragraphs of an NFKC'd text."},
    {"sentence_ends", py_sentence_ends, METH_O,
     "sentence_ends(text) -> list[int]: offsets just past each sentence's last character."},
    {"chunk", py_chunk, METH_VARARGS,
     "chunk(text, spec) -> list[(piece, tokens, frame_cap, pause)] (pause 0 none, 1 sentence, "
     "2 paragraph)."},
    {"measure", py_measure, METH_VARARGS,
     "measure(text, spec, seed) -> (chunks, characters, int32 positions, uint64 hashes)."},
    {"words", py_words, METH_O,
     "words(strings) -> capsule: strings for spoken_marks, compared case-insensitively."},
    {"spoken_marks", py_spoken_marks, METH_VARARGS,
     "spoken_marks(text, abbreviations, contexts, lexicon | None) -> list[int]: offsets where "
     "narrate.spoken's rules may change the text."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef MODULE = {PyModuleDef_HEAD_INIT,
                      "narrate._textcore",
                      "Normalization, sentence splitting and chunking (see narrate.text).",
                      -1,
                      METHODS,
                      nullptr,
                      nullptr,
                      nullptr,
                      nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__textcore(void) { return PyModule_Create(&MODULE); }
