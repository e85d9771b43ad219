"""Generate ``narrative_pandas/data/reviews.csv``, the demo's product reviews, deterministically.

The reviews are written for this project: each one is composed from hand-written sentence
fragments per product category, sentiment and topic, by a seeded ``random.Random``, so running
this script again reproduces the committed file byte for byte (a test checks it). The data holds
a few rows with an empty review (to meet the missing-value policy), mixed reviews, two very long
reviews, and a few star ratings that disagree with their text, as real data does.

Usage::

    python scripts/make_reviews.py               # rewrites narrative_pandas/data/reviews.csv
    python scripts/make_reviews.py --out x.csv   # writes elsewhere
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
ROWS = 300
EMPTY_ROWS = 6
NOISE_SHARE = 0.04  # share of rows whose stars ignore the text (mis-clicks, grudges)
OWN_SHARE = 0.75  # share of sentences taken from the category's own fragments
FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 547  # up to 2025-06-30
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "narrative_pandas" / "data" / "reviews.csv"
COLUMNS = ("review_id", "product", "category", "stars", "review", "date")

Fragments = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
"""topic -> (positive sentences, negative sentences)."""
Topical = tuple[str, str]
"""(topic, sentence)."""


@dataclass(frozen=True)
class Category:
    """A product category: its products, the pronoun its reviews use, and its own fragments."""

    name: str
    products: tuple[str, ...]
    plural: bool
    fragments: Fragments


CATEGORIES: tuple[Category, ...] = (
    Category(
        "headphones",
        ("Arden Q3 Wireless Headphones", "Pulsewave Buds Pro"),
        True,
        {
            "battery": (
                (
                    "The battery easily lasts a full week of commuting.",
                    "Battery life is excellent, I charge them maybe once a week.",
                    "Fast charging is great: ten minutes gives me a couple of hours.",
                ),
                (
                    "Battery life is nowhere near the advertised 30 hours; I get about ten.",
                    "The battery died completely after four months.",
                    "They need charging every single day, which is annoying.",
                ),
            ),
            "noise": (
                (
                    "Noise cancelling is excellent on the train.",
                    "The noise cancelling makes the open-plan office wonderfully quiet.",
                ),
                (
                    "The noise cancelling is weak and lets the office chatter through.",
                    "There is a faint hiss when nothing is playing, very annoying.",
                ),
            ),
            "comfort": (
                (
                    "Comfortable enough to wear all day, even with glasses.",
                    "The ear cushions are soft and comfy, and they never get too warm.",
                ),
                (
                    "They pinch my ears after an hour.",
                    "Not comfortable at all on long flights; my ears were sore.",
                ),
            ),
            "quality": (
                (
                    "Sound is clear and balanced, with plenty of bass.",
                    "The sound quality is superb for the money.",
                ),
                (
                    "The sound is muddy and the bass distorts at high volume.",
                    "Calls sound tinny, according to everyone I talk to.",
                ),
            ),
            "durability": (
                (
                    "Six months of daily use and the hinges still feel solid.",
                    "I have dropped them several times and they still work perfectly.",
                ),
                (
                    "The headband cracked after two months.",
                    "The left ear cup stopped working after a few weeks.",
                ),
            ),
            "fit": (
                ("The headband adjusts easily and fits my large head.",),
                ("They are too tight on my head and slide off when I look down.",),
            ),
            "instructions": (
                ("Pairing took a minute, and the quick-start guide is clear.",),
                ("The manual never explains multipoint pairing, which is frustrating.",),
            ),
        },
    ),
    Category(
        "coffee grinder",
        ("Millstone Burr Grinder", "Kettleby Hand Grinder"),
        False,
        {
            "noise": (
                (
                    "It is much quieter than my old blade grinder.",
                    "Quiet enough to use at 6 a.m. without waking anyone.",
                ),
                (
                    "It is incredibly loud; it wakes the whole house.",
                    "The motor makes a high-pitched whine that hurts my ears.",
                ),
            ),
            "quality": (
                (
                    "The grind is consistent from espresso to French press.",
                    "Grind size is very consistent and the coffee tastes noticeably better.",
                    "Café-quality grind at home, consistent every single morning.",
                ),
                (
                    "The grind is inconsistent, with lots of dust and boulders.",
                    "Static makes the grounds cling everywhere, a real mess on the counter.",
                ),
            ),
            "durability": (
                ("Solid metal body that feels like it will last for years.",),
                (
                    "The plastic hopper cracked within a month.",
                    "The burrs were already dull after six months.",
                ),
            ),
            "instructions": (
                ("The instructions for cleaning the burrs are clear and well illustrated.",),
                (
                    "The manual is useless and never explains how to calibrate the burrs.",
                    "The instructions are confusing and the diagrams are tiny.",
                ),
            ),
            "price": (
                ("Paid €89 and it grinds like a €200 machine — a real bargain.",),
                ("At €240 it is overpriced next to the competition.",),
            ),
        },
    ),
    Category(
        "running shoes",
        ("Stride Trail Runner 2", "Loam Road Racer"),
        True,
        {
            "fit": (
                (
                    "True to size, and the toe box is roomy.",
                    "They fit perfectly straight out of the box.",
                ),
                (
                    "They run half a size small and pinch my toes.",
                    "Far too narrow for my feet.",
                ),
            ),
            "comfort": (
                (
                    "Very comfortable on long runs, with plenty of cushioning.",
                    "My knees feel better since I switched to these.",
                ),
                (
                    "I got blisters on both heels during the first week.",
                    "The cushioning feels stiff and my feet ache after 5 km.",
                ),
            ),
            "durability": (
                ("Over 600 km on them and the sole is still in great shape.",),
                (
                    "The sole wore through after only 200 km, which is poor.",
                    "The upper ripped near the little toe after a month.",
                ),
            ),
            "quality": (
                ("Excellent grip on wet trails.", "They are light and responsive."),
                (
                    "Slippery on wet pavement, which is scary.",
                    "They feel heavy and clunky.",
                ),
            ),
        },
    ),
    Category(
        "desk lamp",
        ("Lumen Arc Desk Lamp", "Halden LED Task Lamp"),
        False,
        {
            "quality": (
                (
                    "The light is bright and even, with no flicker.",
                    "Warm and cool light settings are both pleasant for evening reading.",
                ),
                (
                    "The light flickers at low brightness, which gives me headaches.",
                    "Even at full brightness it is too dim for my desk.",
                ),
            ),
            "noise": (
                ("Completely silent, no buzzing from the dimmer.",),
                ("The dimmer makes an annoying buzz.",),
            ),
            "durability": (
                ("The arm is sturdy and stays exactly where I put it.",),
                (
                    "The arm droops after a few weeks and will not hold its position.",
                    "The touch switch stopped working after two months.",
                ),
            ),
            "instructions": (
                ("Assembly took five minutes thanks to the clear instructions.",),
                ("The assembly instructions skip a step, which is frustrating.",),
            ),
            "battery": (
                ("The built-in battery lasts several evenings between charges.",),
                ("The battery is disappointing: two hours on the brightest setting.",),
            ),
        },
    ),
    Category(
        "backpack",
        ("Ridgeway 28L Backpack", "Commuter Roll-Top Pack"),
        False,
        {
            "durability": (
                (
                    "The zippers are sturdy and the fabric shrugs off rain.",
                    "Two years of daily commuting and not a single torn seam.",
                ),
                (
                    "A zipper broke in the second week.",
                    "The stitching on the shoulder strap came apart after a month.",
                ),
            ),
            "comfort": (
                ("The padded straps keep it comfortable even when it is fully loaded.",),
                ("The straps dig into my shoulders on longer walks.",),
            ),
            "fit": (
                ("Fits a 16-inch laptop easily, with plenty of room for a jacket.",),
                ("It is too small for my 15-inch laptop, which was the whole point.",),
            ),
            "quality": (
                ("Well made, with thoughtful pockets everywhere.",),
                ("The fabric feels cheap and thin.",),
            ),
        },
    ),
    Category(
        "blender",
        ("Vortex 900 Blender", "Kitchenly Personal Blender"),
        False,
        {
            "noise": (
                ("Surprisingly quiet for such a powerful motor.",),
                ("It is louder than a leaf blower.",),
            ),
            "quality": (
                (
                    "Makes perfectly smooth smoothies, even with frozen fruit.",
                    "Crushes ice effortlessly in seconds.",
                    "Easy to clean: a drop of soap, some water, ten seconds.",
                ),
                (
                    "Smoothies come out lumpy, with chunks of kale however long it runs.",
                    "The jug leaks from the base every time.",
                    "The blade assembly is a pain to clean.",
                ),
            ),
            "durability": (
                ("Still going strong after a year of daily smoothies.",),
                (
                    "The motor burned out after three months.",
                    "The jug cracked the first time I blended ice.",
                ),
            ),
            "instructions": (
                ("The recipe booklet and instructions are genuinely helpful.",),
                ("The manual is vague about which speed to use for anything.",),
            ),
        },
    ),
    Category(
        "e-reader",
        ("Folio 7 E-Reader", "Pagewise Lite"),
        False,
        {
            "battery": (
                (
                    "The battery lasts weeks, not days.",
                    "Battery life is fantastic; I charge it about once a month.",
                ),
                ("The battery drains overnight, even in sleep mode.",),
            ),
            "quality": (
                (
                    "The screen is crisp and easy on the eyes.",
                    "Text is sharp and the front light is even.",
                ),
                (
                    "The front light has a blotchy yellow tint at the bottom edge.",
                    "Page turns are sluggish and the screen ghosts.",
                ),
            ),
            "comfort": (
                ("Lightweight and comfortable to hold in one hand in bed.",),
                ("The hard edges make it uncomfortable to hold for long.",),
            ),
            "price": (
                ("Cheaper than the big-brand models and just as good.",),
                ("Too expensive for what is basically a screen and a battery.",),
            ),
            "durability": (
                ("It survived a drop onto tiles without a scratch.",),
                ("The screen cracked inside its case in my bag.",),
            ),
            "instructions": (
                ("Setup was quick and easy.",),
                ("Transferring my own books is confusing and the guide does not help.",),
            ),
        },
    ),
    Category(
        "yoga mat",
        ("Groundwork Yoga Mat", "Flowform Travel Mat"),
        False,
        {
            "comfort": (
                (
                    "Nicely cushioned; my knees are grateful.",
                    "Lightweight and easy to carry to class.",
                ),
                ("Too thin; my knees hurt on a wooden floor.", "Heavy and awkward to carry."),
            ),
            "quality": (
                ("Excellent grip, even in hot yoga.", "I never slip, even when sweaty."),
                (
                    "Slippery as soon as I start sweating.",
                    "It had a strong chemical smell that took weeks to fade.",
                ),
            ),
            "durability": (
                ("No peeling or flaking after a year of daily practice.",),
                (
                    "The surface started peeling after a few weeks.",
                    "It tore at the corner within a month.",
                ),
            ),
            "fit": (
                ("Roomy, and long enough for me at 1.90 m.",),
                ("Too short for anyone over 1.80 m.",),
            ),
        },
    ),
)

# Fragments shared by every category; {it}/{It}/{them}/{is} follow the category's pronoun.
GENERIC: Fragments = {
    "shipping": (
        (
            "Arrived two days early and well packaged.",
            "Shipping was fast.",
            "Delivery was quick and the box was in perfect shape.",
        ),
        (
            "Shipping was slow: almost three weeks with no tracking updates.",
            "The box arrived crushed and {it} {is} scratched.",
            "Delivered to the wrong address twice.",
        ),
    ),
    "price": (
        (
            "Great value for the price.",
            "Worth every penny.",
            "Half the price of the big brands and just as good.",
        ),
        (
            "Overpriced for what you get.",
            "Not worth the money.",
            "Far too expensive for the quality.",
        ),
    ),
    "service": (
        (
            "Customer service sent a replacement without any fuss.",
            "Support answered my question within an hour and was very helpful.",
        ),
        (
            "Customer service ignored my emails for two weeks.",
            'The seller refused a refund and called the fault "normal wear".',
            "Support was rude and unhelpful.",
        ),
    ),
}

NEUTRAL = (
    "I bought {them} to replace an older model.",
    "Bought {them} as a gift for my brother.",
    "I have been using {them} for about two weeks.",
    "Ordered the grey version.",
    "{It} {look} the same as in the photos.",
    "Hard to say yet how {it} will hold up.",
    "{It} {is} okay.",
    "Does what the listing says.",
    "Delivered on the expected date.",
    "Used {them} mostly at home so far.",
    "The colour matches the listing.",
    "Nothing more to add.",
)
CLOSERS_POSITIVE = (
    "Would buy again.",
    "Highly recommend.",
    "Five stars.",
    "Really happy with this purchase.",
    "Love {them}.",
    "Exactly what I needed.",
)
CLOSERS_NEGATIVE = (
    "Returning {them}.",
    "Would not buy again.",
    "Really disappointed.",
    "Save your money.",
    "Sent {them} back for a refund.",
    "Avoid.",
)
CLOSERS_MIXED = ("Three stars.", "Good and bad, as usual.", "Mixed feelings overall.")
CONNECTORS = ("That said, ", "On the other hand, ", "However, ", "Still, ")

LONG_REVIEWS: tuple[tuple[str, int, str], ...] = (
    (
        "Arden Q3 Wireless Headphones",
        4,
        "I spent a long time choosing between these and two more expensive models, and I am "
        "glad I went with these. I commute about ninety minutes each way, so noise cancelling "
        "and battery life were my two priorities. The noise cancelling is excellent on the "
        "train: the rumble disappears and announcements still come through faintly, which I "
        "actually like. Battery life has been great; I charge them on Sunday evening and they "
        "are usually still above 30% by Friday. Sound is warm and detailed, with bass that "
        "never gets boomy. Comfort is the one area where they fall short for me: after about "
        "three hours the headband starts to press on the top of my head, and with glasses the "
        "ear cushions get a little warm. The carrying case is sturdy, and the USB-C cable is "
        "short but fine. The companion app is basic; the equaliser works, but it logged me out "
        "twice. I contacted support about a firmware question and got a helpful, human answer "
        "the next day. At this price I think they are a very good deal. Four stars, and if the "
        "headband padding were softer it would be five.",
    ),
    (
        "Vortex 900 Blender",
        1,
        "I wanted to love this blender. The first week was fine: smoothies were smooth, it "
        "crushed ice, and it looked great on the counter. Then the problems started. The lid "
        "began to leak from the seal every time I made anything with more than a cup of "
        "liquid, so I had to hold a towel over it. In week three the motor started to smell "
        "hot after about forty seconds, which the manual says is normal 'during the first "
        "uses', but it never stopped. The noise is also something else; my neighbour asked if "
        "we were renovating. I emailed customer service with photos and a video. Their first "
        "reply, ten days later, asked me for the order number, which was in my first email. "
        "The second reply offered a 15% discount code on my next purchase. I do not want a "
        "next purchase, I want a blender that works. By the end of the second month the motor "
        "died completely in the middle of a batch of soup, and the jug now has a hairline "
        "crack near the handle. I have owned cheap blenders that lasted years. This one cost "
        "three times as much and did not last three months. I am now arguing with the seller "
        "about a refund, and I would not recommend this to anyone.",
    ),
)


def _pronouns(category: Category) -> dict[str, str]:
    """Words that follow the category's pronoun, for the shared fragments."""
    if category.plural:
        return {"it": "they", "It": "They", "them": "them", "is": "are", "look": "look"}
    return {"it": "it", "It": "It", "them": "it", "is": "is", "look": "looks"}


def _pools(category: Category, positive: bool) -> tuple[list[Topical], list[Topical]]:
    """The category's own (topic, sentence) fragments of one polarity, and the shared ones."""
    side = 0 if positive else 1
    words = _pronouns(category)
    own = [
        (topic, sentence) for topic, sides in category.fragments.items() for sentence in sides[side]
    ]
    shared = [
        (topic, sentence.format(**words))
        for topic, sides in GENERIC.items()
        for sentence in sides[side]
    ]
    return own, shared


def _pick(
    rng: random.Random, category: Category, positive: bool, count: int, avoid: str = ""
) -> list[Topical]:
    """``count`` fragments on different topics (and not on ``avoid``), mostly the category's own."""
    own, shared = (rng.sample(pool, len(pool)) for pool in _pools(category, positive))
    chosen: list[Topical] = []
    while len(chosen) < count and (own or shared):
        source = own if own and (not shared or rng.random() < OWN_SHARE) else shared
        topic, sentence = source.pop()
        if topic != avoid and all(topic != seen for seen, _ in chosen):
            chosen.append((topic, sentence))
    return chosen


def _join_contrast(rng: random.Random, sentence: str) -> str:
    """Sometimes lead a contrasting sentence with a connector ("That said, the ...")."""
    if rng.random() < 0.5 and len(sentence) > 1 and sentence[1].islower():
        return rng.choice(CONNECTORS) + sentence[0].lower() + sentence[1:]
    return sentence


def _polar_review(rng: random.Random, category: Category, positive: bool) -> str:
    """A one-sided review of 1-4 sentences."""
    words = _pronouns(category)
    count = rng.choices((1, 2, 3), weights=(3, 5, 3))[0]
    sentences = [sentence for _, sentence in _pick(rng, category, positive, count)]
    if count < 3 and rng.random() < 0.3:
        sentences.insert(0, rng.choice(NEUTRAL).format(**words))
    if len(sentences) < 4 and rng.random() < 0.35:
        closers = CLOSERS_POSITIVE if positive else CLOSERS_NEGATIVE
        sentences.append(rng.choice(closers).format(**words))
    return " ".join(sentences)


def _mixed_review(rng: random.Random, category: Category) -> str:
    """Praise and a complaint on different topics, sometimes with a closing verdict."""
    ((good_topic, first),) = _pick(rng, category, True, 1)
    ((_, second),) = _pick(rng, category, False, 1, avoid=good_topic)
    if rng.random() < 0.4:
        first, second = second, first
    sentences = [first, _join_contrast(rng, second)]
    if rng.random() < 0.3:
        sentences.append(rng.choice(CLOSERS_MIXED))
    return " ".join(sentences)


def _neutral_review(rng: random.Random, category: Category) -> str:
    """One or two sentences that neither praise nor complain."""
    words = _pronouns(category)
    count = rng.choice((1, 2, 2))
    return " ".join(sentence.format(**words) for sentence in rng.sample(NEUTRAL, count))


def _stars(rng: random.Random, kind: str) -> int:
    """Stars consistent with the kind of review, mostly."""
    if rng.random() < NOISE_SHARE:
        return rng.randint(1, 5)
    if kind == "positive":
        return rng.choices((5, 4), weights=(6, 4))[0]
    if kind == "negative":
        return rng.choices((1, 2), weights=(55, 45))[0]
    if kind == "mixed":
        return rng.choices((3, 2, 4), weights=(6, 2, 2))[0]
    return rng.choices((3, 4, 2), weights=(15, 3, 2))[0]


def make_rows(seed: int = SEED, rows: int = ROWS) -> list[dict[str, object]]:
    """The review rows, sorted by date and numbered from 1."""
    rng = random.Random(seed)
    drafts: list[tuple[str, str, int, str]] = []  # product, category, stars, review
    for product, stars, text in LONG_REVIEWS:
        category = next(c for c in CATEGORIES if product in c.products)
        drafts.append((product, category.name, stars, text))
    for _ in range(EMPTY_ROWS):
        category = rng.choice(CATEGORIES)
        drafts.append((rng.choice(category.products), category.name, rng.randint(1, 5), ""))
    while len(drafts) < rows:
        category = rng.choice(CATEGORIES)
        kind = rng.choices(("positive", "negative", "mixed", "neutral"), (44, 30, 14, 12))[0]
        if kind in ("positive", "negative"):
            text = _polar_review(rng, category, kind == "positive")
        elif kind == "mixed":
            text = _mixed_review(rng, category)
        else:
            text = _neutral_review(rng, category)
        drafts.append((rng.choice(category.products), category.name, _stars(rng, kind), text))
    dated = [
        (FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS)), position, draft)
        for position, draft in enumerate(drafts)
    ]
    dated.sort()
    return [
        {
            "review_id": number,
            "product": product,
            "category": category_name,
            "stars": stars,
            "review": text,
            "date": day.isoformat(),
        }
        for number, (day, _, (product, category_name, stars, text)) in enumerate(dated, 1)
    ]


def write_csv(rows: list[dict[str, object]], out: Path) -> None:
    """Write the rows as UTF-8 CSV with ``\\n`` line ends (an empty review is an empty field)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV file to write")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    parser.add_argument("--rows", type=int, default=ROWS, help="number of rows")
    args = parser.parse_args(argv)
    write_csv(make_rows(args.seed, args.rows), args.out)


if __name__ == "__main__":
    main()
