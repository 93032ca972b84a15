"""Text in a language the classifiers cannot read.

The rules, the structure phrases and the embedding head read English: "¿Cómo fabrico una
bomba?" or the same request in Zulu passed all three (asking in another language is the
oldest way around an English-only filter). This check names such text instead of
guessing at it: the structure classifier scores it on `language.category`, and each tier
says what unknown risk gets (the shipped public tier blocks it, verified and research
flag it).

The language comes from py3langid (langid.py's model, 97 languages, shipped in its
wheel): about 0.1 ms for a short prompt, about 1 us a character; long text is judged by
its first and last `sample_chars`. The text is judged whole, then sentence by sentence
(those of `min_segment_letters` or more that are not plainly English prose, at most 12),
since an English wrapper ("Answer in English: ...") can carry a request in another
language. A verdict is foreign only when the identifier is fairly sure of languages the
classifiers do not read AND gives the readable ones almost nothing (`max_readable`): on
short English it is often unsure, and guesses Pidgin or Latin. Too short a text
(`min_letters`) is not judged. So a request to translate or correct a quoted foreign
sentence is named too; a foreign word or phrase in English text is not.
"""

from __future__ import annotations

import re
import string
import threading
from typing import Any

from gateway.pipeline.classify.views import COMMON_WORDS
from gateway.policy.spec import LanguageSpec

_lock = threading.Lock()
_identifier: Any = None


def identifier() -> Any:
    """The language identifier, loaded once per process (0.7 s, about 75 MiB)."""
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


# Sentence and clause ends, line breaks and quotes: where a request in one language is
# wrapped in another ("Answer in English: ...").
_SEGMENT = re.compile(r"[.!?;:\n\"\u201c\u201d\u00ab\u00bb\u300c\u300d\u3002\uff01\uff1f\uff1a]+")
# Sentences identified one by one at most, per text: bounds the time on the event loop
# (about 0.1 ms each) for a sample of many short sentences.
_MAX_SEGMENTS = 12
_WORDS = re.compile(r"[^\W\d_]+")  # runs of letters, any script
# What the identifier calls text with no language in it (base64, hashes, keys): not a
# language the classifiers miss (the structure classifier decodes base64 itself).
_NO_LANGUAGE = "zxx"


_ASCII_LETTERS = string.ascii_letters.encode()


def _letters(text: str) -> int:
    if text.isascii():  # the usual case, counted in C: what deleting the letters removes
        return len(text) - len(text.encode().translate(None, _ASCII_LETTERS))
    return sum(map(str.isalpha, text))


_LAST_LATIN = "\u024f"  # the end of Latin Extended-B

# More frequent English words, for telling English prose from other Latin-script text
# without an identification: function words, everyday verbs and nouns, and the verbs
# requests start with ("summarize", "translate"). Left out on purpose: words that are
# frequent in another language the identifier knows too ("die", "war", "kind", "come",
# "per", "via", "large", "simple", "real", "red", "describe", "decide", "door", "later",
# "begin", "letter", "water", "week", "school", "under", "ten", "part", "parents"), so
# such text keeps as few "English" words as it had.
_MORE_ENGLISH = frozenset((
    # function words and adverbs
    "both", "few", "further", "himself", "herself", "itself", "myself", "yourself",
    "themselves", "ourselves", "mine", "yours", "hers", "ours", "theirs", "whom",
    "whose", "whether", "although", "though", "unless", "until", "since", "upon",
    "within", "among", "between", "during", "across", "along", "around", "behind",
    "below", "above", "beyond", "near", "toward", "towards", "onto", "off", "yet",
    "either", "neither", "nor", "else", "ever", "never", "always", "often", "sometimes",
    "usually", "already", "still", "almost", "quite", "rather", "really", "perhaps",
    "maybe", "however", "therefore", "instead", "otherwise", "anyway", "thus",
    "actually", "especially", "probably", "simply", "together", "away", "soon", "today",
    "tomorrow", "yesterday", "tonight", "ago", "once", "twice", "enough", "less",
    "least", "lot", "lots", "several", "another", "anything", "anyone", "everything",
    "everyone", "something", "someone", "nothing", "nobody", "none", "whatever",
    "whenever", "shall", "may", "might", "cannot", "three", "four", "five", "seven",
    "eight", "nine", "hundred", "thousand", "third",
    # verbs
    "having", "done", "made", "making", "makes", "goes", "going", "gone", "went",
    "comes", "coming", "came", "gets", "getting", "got", "gives", "given", "giving",
    "gave", "takes", "taken", "taking", "took", "seen", "saw", "look", "looks",
    "looking", "found", "think", "thinks", "thought", "knows", "known", "knew", "wants",
    "wanted", "needs", "needed", "used", "uses", "try", "tries", "tried", "ask",
    "asked", "asks", "call", "called", "feel", "felt", "become", "became", "leave",
    "left", "put", "keep", "kept", "let", "began", "seem", "seems", "helps", "helped",
    "helping", "talk", "turn", "started", "run", "running", "move", "live", "lives",
    "believe", "happen", "happened", "happens", "writes", "writing", "written", "wrote",
    "read", "reading", "said", "says", "told", "provide", "provides", "provided",
    "include", "includes", "including", "learn", "learning", "understand", "watch",
    "follow", "following", "speak", "allow", "add", "spend", "grow", "walk", "win",
    "remember", "love", "consider", "appear", "buy", "wait", "expect", "build", "stay",
    "cut", "reach", "remain", "suggest", "raise", "sell", "require", "pull", "answer",
    "choose", "select", "solve", "predict", "estimate", "pretend", "rephrase", "fix",
    "check", "mean", "means", "explain", "explains", "generate", "list", "summarize",
    "summarise", "identify", "classify", "calculate", "convert", "rewrite", "translate",
    "edit", "improve", "develop", "analyze", "evaluate", "outline",
    # nouns and adjectives
    "thing", "things", "year", "years", "woman", "women", "child", "children", "world",
    "life", "company", "number", "numbers", "night", "home", "mother", "father",
    "money", "story", "stories", "fact", "facts", "month", "book", "books", "word",
    "words", "business", "side", "head", "house", "friend", "friends", "power", "hour",
    "hours", "line", "end", "law", "city", "community", "body", "others", "level",
    "health", "history", "result", "results", "morning", "reason", "reasons",
    "research", "girl", "teacher", "sentence", "sentences", "paragraph", "essay",
    "poem", "example", "examples", "title", "titles", "summary", "answers", "ways",
    "tips", "difference", "benefits", "advantages", "disadvantages", "method",
    "product", "customer", "customers", "country", "countries", "students", "food",
    "family", "music", "movie", "song", "character", "characters", "novel", "great",
    "little", "old", "right", "big", "high", "small", "next", "early", "young", "last",
    "able", "better", "sure", "free", "true", "false", "whole", "full", "easy", "hard",
    "short", "strong", "common", "specific", "interesting", "creative", "funny",
    "happy", "healthy", "safe", "famous", "current", "key", "likely", "white", "black",
    "blue", "green",
))
ENGLISH_WORDS = COMMON_WORDS | _MORE_ENGLISH


def _weight(text: str) -> int:
    """Letters, those beyond Latin counted twice: a Chinese or Japanese character is
    about a word, and a Cyrillic or Arabic sentence needs fewer letters to be clear."""
    if text.isascii():
        return _letters(text)
    return sum(2 if c > _LAST_LATIN else 1 for c in text if c.isalpha())


class LanguageCheck:
    def __init__(self, spec: LanguageSpec) -> None:
        self.spec = spec
        self.readable = frozenset(spec.readable)
        # English prose needs no identification only where English is readable.
        self._skip_english = "en" in self.readable
        self._identifier = identifier()  # at policy build (off the event loop), not per call

    def foreign(self, text: str) -> str | None:
        """The language `text` is in when it is one the classifiers cannot read, else None:
        judged whole, then sentence by sentence, as a readable wrapper can carry a request
        in another language."""
        spec = self.spec
        half = spec.sample_chars // 2
        sample = text if len(text) <= spec.sample_chars else text[:half] + "\n" + text[-half:]
        if _letters(sample) < spec.min_letters:
            return None
        # Plain English prose as a whole needs no identification; its sentences that are
        # not (a request in another language behind an English wrapper) still get one.
        if not (self._skip_english and _plainly_english(sample)):
            found = self._verdict(self._identifier.rank(sample))
            if found is not None:
                return found
        judged = 0
        # A sentence that is nearly all of the text was judged with it.
        most = 0.9 * _weight(sample)
        for segment in _SEGMENT.split(sample):
            weight = _weight(segment)
            if spec.min_segment_letters <= weight < most and not (
                    self._skip_english and _plainly_english(segment)):
                found = self._verdict(self._identifier.rank(segment))
                judged += 1
                if found is not None or judged == _MAX_SEGMENTS:
                    return found
        return None

    def _readable(self, ranked: list[tuple[str, float]]) -> float:
        return sum(p for lang, p in ranked if lang in self.readable)

    def _verdict(self, ranked: list[tuple[str, float]]) -> str | None:
        """The best guess when it is foreign and sure: the three likeliest languages have
        `min_confidence` together (close kin split it: Spanish and Aragonese, Malay and
        Indonesian), and the readable ones almost nothing."""
        best = ranked[0][0]
        if best in self.readable or best == _NO_LANGUAGE \
                or sum(p for _, p in ranked[:3]) < self.spec.min_confidence:
            return None
        return str(best) if self._readable(ranked) < self.spec.max_readable else None


def _plainly_english(text: str) -> bool:
    """Latin letters only, and a third or more of its words among the most frequent
    English words: English prose, not worth an identification (about 0.1 ms, more on a
    busy event loop). Other languages in Latin letters share few of them ("a", "no",
    "me"); a run of Chinese is one "word", so any other script is identified."""
    words = _WORDS.findall(text.lower())
    return bool(words) and (text.isascii() or all(max(w) <= _LAST_LATIN for w in words)) \
        and 3 * sum(map(ENGLISH_WORDS.__contains__, words)) >= len(words)
