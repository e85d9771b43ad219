"""The review-labelling demo: an output model, prompts, and a plainly rule-based stand-in model.

The demo command and the teaching notebooks label ``narrative_pandas.data.load_reviews()`` against
the local sandbox, which has no model. A sandbox that answered with random labels would teach
nothing, so :func:`review_responder` answers instead: it counts sentiment keywords (with simple
negation handling) and topic keywords. It is a word-counting heuristic, not a model; against the
real service a real model replaces it, and its only job is to make the demo's labels make sense.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "REVIEW_PROMPT",
    "REVIEW_SYSTEM",
    "ReviewLabel",
    "ReviewSentiment",
    "ReviewTopic",
    "review_responder",
]

ReviewSentiment = Literal["positive", "negative", "mixed", "neutral"]
ReviewTopic = Literal[
    "battery",
    "noise",
    "comfort",
    "price",
    "shipping",
    "durability",
    "service",
    "fit",
    "instructions",
    "quality",
]


class ReviewLabel(BaseModel):
    """The structured answer for one product review."""

    model_config = ConfigDict(extra="forbid")

    sentiment: ReviewSentiment = Field(
        description="Overall sentiment; 'mixed' when the review has clear praise and clear "
        "complaints, 'neutral' when it has neither."
    )
    score: float = Field(
        ge=-1, le=1, description="Sentiment score from -1 (very negative) to 1 (very positive)."
    )
    topics: list[ReviewTopic] = Field(
        max_length=4,
        description="Up to four topics the review talks about, in the order it mentions them.",
    )


REVIEW_SYSTEM = (
    "You label customer reviews of products sold by an online shop. Judge only what the review "
    "says. Use 'mixed' when it has clear praise and clear complaints, and 'neutral' when it has "
    "neither."
)
"""System message of the demo."""

REVIEW_PROMPT = (
    "Product: {product}\n"
    "Review: {review}\n"
    "\n"
    "Label the sentiment of this review, score it from -1 (very negative) to 1 (very positive), "
    "and list up to four topics it talks about."
)
"""User-message template of the demo; ``{product}`` and ``{review}`` are columns of the data."""


# --- the heuristic ------------------------------------------------------------------------------
# Label words ("positive", "negative", "mixed", "neutral", "sentiment") are deliberately absent,
# so an instruction such as "is this positive or negative?" never tips the count.


def _words(text: str) -> list[str]:
    """The whitespace-separated words of a word list written as one string."""
    return text.split()


_POSITIVE: dict[str, float] = {
    word: 1.0
    for word in _words(
        "good great excellent amazing awesome love loved loves lovely perfect perfectly fantastic "
        "wonderful wonderfully happy pleased impressed impressive comfortable comfy sturdy solid "
        "reliable recommend recommended best better nice easy clear quiet quieter silent fast "
        "quick quickly helpful friendly beautiful superb brilliant favourite favorite enjoy "
        "enjoyed satisfied delighted glad thrilled grateful crisp sharp smooth responsive "
        "consistent balanced pleasant durable lightweight roomy stable secure bargain affordable "
        "worth effortlessly flawless flawlessly outstanding terrific like likes liked"
    )
}
_POSITIVE.update(
    {
        word: 0.5
        for word in _words(
            "decent early easily powerful nicely thoughtful survived help helps fine works "
            "worked reasonable handy"
        )
    }
)

_NEGATIVE: dict[str, float] = {
    word: 1.0
    for word in _words(
        "bad poor poorly terrible awful horrible worst hate hated disappointed disappointing "
        "disappointment broke broken cracked crack cracks flimsy uncomfortable loud louder noisy "
        "slow late crushed damaged defective faulty useless overpriced waste annoying annoyed "
        "frustrating frustrated problem problems issue issues complaint complaints hassle fuss "
        "sore blisters peeling peeled slippery smell smells stinks wobbly flicker flickers "
        "flickering buzz buzzing rattle rattles leak leaks leaked leaking tore torn ripped died "
        "dies dead fail failed fails failure mediocre weak muddy distorts distorted tinny dim "
        "pinch pinches unreliable rude ignored unhelpful confusing confused vague missing wrong "
        "stiff scratchy fragile regret unfortunately sadly mess messy overheats burned burnt junk "
        "garbage avoid hurt hurts ache aches scary clunky awkward lumpy sluggish crashes crashed "
        "refused dull droops drains inconsistent scratched scratch scratches blotchy ghosts whine "
        "hiss worse"
    )
}
_NEGATIVE.update(
    {word: 0.5 for word in _words("expensive heavy slide slides sliding slip slips tight")}
)

_PHRASES: dict[tuple[str, ...], float] = {
    tuple(phrase.split()): value
    for phrase, value in {
        "waste of money": -2.0,
        "fell apart": -2.0,
        "falls apart": -2.0,
        "came apart": -1.5,
        "stopped working": -2.0,
        "do not buy": -2.0,
        "don't buy": -2.0,
        "save your money": -1.5,
        "sent it back": -1.0,
        "sent them back": -1.0,
        "send it back": -1.0,
        "returned it": -1.0,
        "returned them": -1.0,
        "returning it": -1.0,
        "returning them": -1.0,
        "money back": -1.0,
        "nowhere near": -1.0,
        "falls short": -1.0,
        "fall short": -1.0,
        "let down": -1.0,
        "pain to": -1.0,
        "dig into": -1.0,
        "feels cheap": -1.0,
        "one star": -1.5,
        "two stars": -1.0,
        "three stars": 0.0,
        "four stars": 1.0,
        "five stars": 1.5,
        "worth every penny": 2.0,
        "buy again": 1.5,
        "well made": 1.0,
        "well packaged": 1.0,
        "does the job": 0.5,
        "gets the job done": 0.5,
        "going strong": 1.0,
        "exactly what i needed": 1.0,
        "good deal": 1.5,
        "great deal": 2.0,
    }.items()
}
_MAX_PHRASE = max(len(phrase) for phrase in _PHRASES)

_NEGATORS = frozenset(
    _words(
        "not no never none nothing without hardly barely neither nor cannot "
        "don't doesn't didn't isn't wasn't aren't weren't won't can't couldn't wouldn't "
        "shouldn't hasn't haven't hadn't dont doesnt didnt isnt wasnt arent cant couldnt "
        "wouldnt"
    )
)
_INTENSIFIERS = frozenset(
    _words("very really extremely incredibly super so absolutely totally truly highly seriously")
)
_CLAUSE_BREAKS = frozenset(".,;:!?") | frozenset(("but", "however", "although", "though"))
_NEGATION_WINDOW = 3
_NEGATED_POSITIVE = -0.75  # "not good" counts as a fairly negative word
_NEGATED_NEGATIVE = -0.5  # "not bad" counts as a mildly positive word
_TOO_WEIGHT = -1.0  # "too small", "too loud": a complaint whatever the adjective

_TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "battery": ("battery", "batteries", "charge", "charges", "charging", "charged", "charger"),
    "noise": (
        "noise", "noisy", "loud", "louder", "quiet", "quieter", "silent", "buzz", "buzzing",
        "rattle", "rattles", "hum", "hums", "whine", "hiss", "cancelling", "canceling",
    ),
    "comfort": (
        "comfort", "comfortable", "uncomfortable", "comfy", "cushion", "cushions", "cushioning",
        "cushioned", "padding", "padded", "pinch", "pinches", "blisters", "sore", "ache", "aches",
        "knees", "lightweight", "heavy", "straps", "ergonomic",
    ),
    "price": (
        "price", "priced", "prices", "overpriced", "expensive", "cheap", "cheaper", "value",
        "cost", "costs", "money", "worth", "bargain", "deal", "affordable", "penny", "discount",
        "$", "€", "£",
    ),
    "shipping": (
        "shipping", "shipped", "delivery", "delivered", "arrived", "arrive", "arrives",
        "package", "packaged", "packaging", "parcel", "courier", "tracking",
    ),
    "durability": (
        "durable", "durability", "broke", "broken", "break", "breaks", "cracked", "crack",
        "cracks", "peeling", "peeled", "tore", "torn", "ripped", "sturdy", "flimsy", "fragile",
        "died", "lasted", "wore", "worn", "months", "year", "years", "scratch",
        "scratched", "scratches", "droops", "survived", "dull",
    ),
    "service": (
        "service", "support", "refund", "refunded", "replacement", "warranty", "seller",
        "emails", "emailed", "email",
    ),
    "fit": (
        "fit", "fits", "fitting", "fitted", "size", "sized", "sizing", "small", "smaller",
        "large", "larger", "narrow", "wide", "tight", "loose", "roomy", "length", "short",
        "tall",
    ),
    "instructions": (
        "instructions", "instruction", "manual", "guide", "setup", "assembly", "assemble",
        "assembled", "documentation", "diagram", "diagrams", "directions", "booklet",
    ),
    "quality": (
        "quality", "sound", "sounds", "screen", "display", "build", "material", "materials",
        "stitching", "craftsmanship", "finish", "grip", "grind", "consistent", "inconsistent",
        "light", "brightness", "bright", "dim", "flicker", "flickers", "smell", "leaks", "leak",
        "fabric", "smoothies", "bass",
    ),
}  # fmt: skip
_WORD_TOPIC: dict[str, str] = {
    word: topic for topic, words in _TOPIC_WORDS.items() for word in words
}
_TOPIC_PHRASES: dict[tuple[str, ...], str] = {
    ("set", "up"): "instructions",
    ("customer", "care"): "service",
    ("well", "made"): "quality",
    ("fell", "apart"): "durability",
    ("came", "apart"): "durability",
    ("stopped", "working"): "durability",
    ("true", "to", "size"): "fit",
}

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[.,;:!?$€£]")
_REVIEW_MARKER = re.compile(r"^[ \t]*review[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE)
_MISSING_TEXT = frozenset(("", "nan", "<na>", "none", "null", "n/a", "nat"))
_MIXED_MIN = 1.0  # each side needs at least this much weight for "mixed"
_MIXED_RATIO = 0.5  # and the weaker side at least this share of the stronger
_NEUTRAL_BAND = 0.15  # |score| below this is neutral


def _message_text(message: Mapping[str, Any]) -> str:
    """The text of a message in either wire shape: ``text``, or ``content`` blocks."""
    text = message.get("text")
    if isinstance(text, str):
        return text
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            block["text"]
            for block in content
            if isinstance(block, Mapping) and isinstance(block.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def _last_user_text(request: Mapping[str, Any]) -> str:
    """The text of the request's last user message, or ``""``."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _message_text(message)
    return ""


def _review_part(text: str) -> str:
    """The review inside a prompt: after the last ``Review:`` line marker up to the next blank
    line, or the whole text when there is no marker."""
    markers = list(_REVIEW_MARKER.finditer(text))
    if markers:
        text = text[markers[-1].end() :]
        end = text.find("\n\n")
        if end >= 0:
            text = text[:end]
    text = text.strip().strip("\"'`").strip()
    return "" if text.casefold() in _MISSING_TEXT else text


def _tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens; curly apostrophes made straight."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return _TOKEN.findall(text.casefold())


def _negated(tokens: list[str], index: int) -> bool:
    """Whether a negator stands shortly before ``tokens[index]`` in the same clause."""
    for back in range(index - 1, max(index - 1 - _NEGATION_WINDOW, -1), -1):
        if tokens[back] in _CLAUSE_BREAKS:
            return False
        if tokens[back] in _NEGATORS:
            return True
    return False


def _match_phrase(tokens: list[str], index: int, table: Mapping[tuple[str, ...], Any]) -> int:
    """Length of the longest phrase of ``table`` starting at ``index`` (0 when none)."""
    for length in range(min(_MAX_PHRASE, len(tokens) - index), 1, -1):
        if tuple(tokens[index : index + length]) in table:
            return length
    return 0


def _polarity(tokens: list[str]) -> tuple[float, float]:
    """Summed positive and negative weight of the tokens."""
    positive = negative = 0.0
    index = 0
    while index < len(tokens):
        token = tokens[index]
        length = _match_phrase(tokens, index, _PHRASES)
        if length:
            value = _PHRASES[tuple(tokens[index : index + length])]
        elif (
            token == "too"
            and index + 1 < len(tokens)
            and tokens[index + 1] not in _CLAUSE_BREAKS
            and tokens[index + 1] not in _POSITIVE
        ):
            value, length = _TOO_WEIGHT, 2
        else:
            value, length = _POSITIVE.get(token, 0.0) - _NEGATIVE.get(token, 0.0), 1
        if value:
            if index > 0 and tokens[index - 1] in _INTENSIFIERS | {"too"}:
                value *= 1.5
            if _negated(tokens, index):
                value *= _NEGATED_POSITIVE if value > 0 else _NEGATED_NEGATIVE
            if value > 0:
                positive += value
            else:
                negative -= value
        index += length
    return positive, negative


def _topics(tokens: list[str]) -> list[ReviewTopic]:
    """Topics named by the tokens, in order of first mention, at most four."""
    found: list[str] = []
    for index, token in enumerate(tokens):
        length = _match_phrase(tokens, index, _TOPIC_PHRASES)
        topic = (
            _TOPIC_PHRASES[tuple(tokens[index : index + length])]
            if length
            else _WORD_TOPIC.get(token)
        )
        if topic is not None and topic not in found:
            found.append(topic)
    return [_TOPIC_BY_NAME[topic] for topic in found[:4]]


_TOPIC_ORDER: tuple[ReviewTopic, ...] = get_args(ReviewTopic)
_TOPIC_BY_NAME: dict[str, ReviewTopic] = {topic: topic for topic in _TOPIC_ORDER}


def _sentiment(
    positive: float, negative: float, *, mixed_ratio: float = _MIXED_RATIO
) -> tuple[ReviewSentiment, float]:
    """Sentiment label and score in [-1, 1] from the two weights."""
    score = (positive - negative) / (positive + negative + 1.0)
    score = max(-1.0, min(1.0, round(score, 2))) + 0.0  # + 0.0 turns -0.0 into 0.0
    strong, weak = max(positive, negative), min(positive, negative)
    if weak >= _MIXED_MIN and weak >= mixed_ratio * strong:
        return "mixed", score
    if score >= _NEUTRAL_BAND:
        return "positive", score
    if score <= -_NEUTRAL_BAND:
        return "negative", score
    return "neutral", score


# --- a second "model" ---------------------------------------------------------------------------
# So that comparing two models on the sandbox shows real disagreements, the larger model ids get
# a differently tuned heuristic: the last sentence (where reviews tend to conclude) weighs double,
# and "mixed" needs the weaker side to be at least 70% of the stronger. Still word counting.

_CONCLUDING_MODELS = ("sonnet", "opus", "gpt-4.1")
_CONCLUSION_WEIGHT = 1.0  # added to the last sentence's own weight
_CONCLUDING_MIXED_RATIO = 0.7
_SENTENCE_ENDS = frozenset(".!?")


def _concludes(request: Mapping[str, Any]) -> bool:
    """Whether the request's model gets the conclusion-weighted heuristic."""
    model = request.get("model")
    return isinstance(model, str) and any(name in model for name in _CONCLUDING_MODELS)


def _last_sentence(tokens: list[str]) -> list[str]:
    """The tokens after the second-to-last sentence end (the whole text if one sentence)."""
    ends = [i for i, token in enumerate(tokens) if token in _SENTENCE_ENDS]
    if len(ends) >= 2:
        return tokens[ends[-2] + 1 :]
    if ends and ends[-1] < len(tokens) - 1:
        return tokens[ends[-1] + 1 :]
    return []


def review_responder(request: Mapping[str, Any]) -> dict[str, Any]:
    """Label a review request by counting keywords: a stand-in for a model, for the sandbox.

    This is a plain rule-based heuristic, not a model; against the real service a real model
    replaces it. It exists so the demo's labels make sense. It reads the last user message, takes
    the text after a ``Review:`` line (up to the next blank line; the whole message when there is
    none), weighs sentiment words (``"not good"`` counts against, ``"no complaints"`` for, ``"too
    small"`` against) and collects topic keywords. It depends on the request's ``model``, so two
    models differ on some rows: for Sonnet, Opus and GPT-4.1 ids the last sentence weighs double
    and "mixed" needs more balance; every other id (Haiku, the default) gets the plain count.

    Parameters
    ----------
    request : Mapping
        The JSON body of ``POST /model-inference/run`` as a dict. Anything malformed counts as an
        empty review.

    Returns
    -------
    dict
        ``{"sentiment", "score", "topics"}``, valid against ``ReviewLabel.model_json_schema()``
        for any input, whatever schema the request carries. Deterministic.

    Examples
    --------
    >>> review_responder({"messages": [{"role": "user", "text": "Review: Not comfortable."}]})
    {'sentiment': 'negative', 'score': -0.43, 'topics': ['comfort']}
    """
    tokens = _tokens(_review_part(_last_user_text(request)))
    if _concludes(request):
        positive, negative = _polarity(tokens)
        last_positive, last_negative = _polarity(_last_sentence(tokens))
        sentiment, score = _sentiment(
            positive + _CONCLUSION_WEIGHT * last_positive,
            negative + _CONCLUSION_WEIGHT * last_negative,
            mixed_ratio=_CONCLUDING_MIXED_RATIO,
        )
    else:
        sentiment, score = _sentiment(*_polarity(tokens))
    return {"sentiment": sentiment, "score": score, "topics": list(_topics(tokens))}
