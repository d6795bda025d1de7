"""Procedural English reviews: the embedded demo corpus (nothing is downloaded).

A review has a subject (a product, film, place, restaurant, book or app), a polarity ("positive", "negative"
or "mixed") and a text of 1-4 short sentences. Every review starts with a sentiment-neutral *opening*
("I bought this kettle last month and") followed by a *continuation* that carries the sentiment
(" it is really great. I would definitely recommend it."), so the same generator gives pretraining text,
SFT pairs (opening -> continuation) and prompts (openings alone) for the "positive continuation" task of
Ziegler et al. (2019).

The grammar is small and explicit: each domain lists its items, aspects (with grammatical number, for
"is"/"are" agreement), openings and a few domain sentences; generic sentence builders below combine them.
Sentiment words are hand-picked common words whose VADER lexicon valence has the intended sign
(`tests/data/test_corpus.py` checks every one against `vaderSentiment/vader_lexicon.txt`), so the gold judge
(VADER) agrees with the intended polarity. All randomness goes through one `random.Random(seed)`.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache, partial

from rlhf.errors import UserError

POLARITIES = ("positive", "negative", "mixed")
# Positive and negative in equal amounts; mixed reviews are rarer (they teach contrast, not a direction).
POLARITY_WEIGHTS = (0.4, 0.4, 0.2)


@dataclass(frozen=True)
class Review:
    domain: str  # "product", "film", "place", "restaurant", "book", "app"
    subject: str  # the item reviewed, e.g. "kettle"
    polarity: str  # one of POLARITIES
    opening: str  # sentiment-neutral first words; never ends with a space
    continuation: str  # starts with a space; opening + continuation == text

    @property
    def text(self) -> str:
        return self.opening + self.continuation


# ---------------------------------------------------------------------------------------------------------
# Vocabulary, laid out compactly by hand (hence `fmt: off`). Every sentiment word has a VADER lexicon valence
# of the intended sign (checked by a test), so the gold judge agrees with the intended polarity.
# fmt: off

# Gradable adjectives take "very"/"quite"; extreme ones only "really"/"absolutely" ("very superb" is not English).
POS_ADJ = ("good", "great", "nice", "lovely", "impressive")
POS_ADJ_EXTREME = (
    "brilliant", "excellent", "amazing", "wonderful", "fantastic", "superb", "perfect", "awesome", "outstanding",
)
NEG_ADJ = ("bad", "poor", "disappointing", "weak", "lousy")
NEG_ADJ_EXTREME = ("terrible", "awful", "horrible", "dreadful", "pathetic")
EXTREME = frozenset(POS_ADJ_EXTREME + NEG_ADJ_EXTREME)
# Degree adverbs that VADER treats as boosters (so they intensify, never flip); "" keeps many phrases plain.
INTENSIFIERS = ("", "", "", "very ", "really ", "quite ", "so ", "extremely ", "incredibly ")
INTENSIFIERS_BEFORE_NOUN = ("", "", "", "very ", "really ", "extremely ", "incredibly ")
INTENSIFIERS_EXTREME = ("", "", "", "really ", "absolutely ", "utterly ")
POS_VERB = {"present": ("love", "really like", "enjoy", "adore"), "past": ("loved", "really liked", "enjoyed")}
NEG_VERB = {"present": ("hate", "dislike", "really dislike"), "past": ("hated", "disliked", "really disliked")}
WORKS_WELL, WORKS_BADLY = ("perfectly", "beautifully", "wonderfully"), ("badly", "terribly", "horribly")
POS_FEELING = ("happy", "pleased", "delighted", "satisfied")
NEG_FEELING = ("disappointed", "unhappy", "annoyed", "frustrated", "upset")

# Neutral slot fillers (no VADER valence: openings built from them must stay neutral).
TIME_AGO = (
    "last week", "last month", "a few weeks ago", "two months ago", "in the spring", "last year", "recently",
    "a while ago", "on Saturday", "yesterday", "three weeks ago", "in January", "in the autumn",
)
DURATION = (
    "two weeks", "a month", "three months", "six months", "a year", "a few days", "two years", "a week",
    "four months", "a couple of weeks",
)
SHORT_DURATION = ("a few days", "a week", "two weeks", "ten days", "three days", "a fortnight")
NIGHTS = ("two nights", "three nights", "a week", "a long weekend", "four nights", "one night", "five days")
RELATIVE = (
    "sister", "brother", "mother", "father", "partner", "wife", "husband", "son", "daughter", "cousin",
    "neighbour", "colleague", "aunt", "uncle", "flatmate",
)
COMPANION = ("my sister", "my parents", "my partner", "the kids", "my brother", "two colleagues", "my wife",
             "my husband", "my flatmate", "my cousins")
STREET = (
    "near the station", "in the old town", "on the main square", "next to the harbour", "in the city centre",
    "by the river", "on the high street", "across from the market", "at the end of our street", "near the park",
)
AREA = (
    "near the station", "by the lake", "outside town", "near the coast", "in the hills", "by the river",
    "near the airport", "in the city centre", "on the edge of town", "in the north", "by the sea",
)
VISIT_TIME = ("an afternoon", "a morning", "a whole day", "a few hours", "two hours", "the day")
DAY = ("a Friday night", "a Sunday afternoon", "a Tuesday evening", "a Saturday evening", "a weekday morning")


# Adjectives that fit only some aspects ("the staff were friendly", not "the soup was friendly"), by aspect kind.
ASPECT_ADJ = {
    "people": (("friendly", "helpful", "kind", "welcoming"), ("rude", "unfriendly", "lazy")),
    "food": (("delicious", "fresh"), ("disgusting", "nasty", "gross")),
    "room": (("clean", "comfortable"), ("dirty", "uncomfortable")),
    "look": (("beautiful", "gorgeous", "stunning", "elegant"), ("ugly",)),
    "story": (("clever", "funny", "charming", "engaging"), ("boring", "dull", "stupid", "confusing")),
    "tool": (("easy", "useful", "helpful"), ("confusing", "annoying", "useless", "frustrating")),
    "part": (("strong", "solid"), ("broken", "useless")),
}
FOODS = (
    "pasta", "pizza", "soup", "curry", "burger", "fish", "salad", "cake", "steak", "bread", "coffee", "lasagne",
    "risotto", "apple pie", "chicken", "cheesecake", "omelette", "stew",
)


@dataclass(frozen=True)
class Aspect:
    name: str
    plural: bool = False
    kind: str = ""  # a key of ASPECT_ADJ, or "" for generic adjectives only


def _aspects(spec: str) -> tuple[Aspect, ...]:
    """'battery:part, buttons*:part, price' -> Aspect('battery', False, 'part'), Aspect('buttons', True, 'part'),
    Aspect('price'): a compact way to list them ('*' = plural, ':kind' = extra adjectives from ASPECT_ADJ)."""
    out = []
    for part in spec.split(","):
        name, _, kind = part.strip().partition(":")
        out.append(Aspect(name.rstrip("*"), name.endswith("*"), kind))
    return tuple(out)


@dataclass(frozen=True)
class Opening:
    """A neutral opening template. `kind` says what the continuation must start with:
    "clause" (after "... and": a full clause), "subject" (after a noun phrase: a verb phrase),
    "predicate" (after "... was": an adjective phrase), "aspect_predicate" (like "predicate", but the template
    names an {aspect} and ends before its verb, which is added to agree with it) or "sentence" (the opening is
    a complete sentence: the continuation starts a new one)."""

    template: str
    kind: str
    tense: str  # "present" or "past": the tense the continuation keeps
    who: str = "I"  # the narrator pronoun that fits the opening ("I" or "we")


@dataclass(frozen=True)
class Domain:
    """One kind of thing reviewed. Several Domains may share a `name` (kitchen, gadget and home products are all
    "product") so that each keeps aspects that fit its items (no battery on a sofa)."""

    name: str
    items: tuple[str, ...]
    aspects: tuple[Aspect, ...]
    openings: tuple[Opening, ...]
    noun: tuple[str, ...]  # what "a great ___" calls it: "buy", "film", "place to stay"
    again: tuple[str, ...]  # "I will ___" (a return intention, neutral words)
    # domain sentences of one polarity; slots: {a} an aspect ({a_is}/{a_was} agree with it), {p} a sentiment
    # adjective of the sentence's polarity ({adv}{p}: with a fitting degree adverb), others from SLOT_WORDS
    pos_extra: tuple[str, ...]
    neg_extra: tuple[str, ...]
    neutral: tuple[str, ...]  # neutral filler sentences
    works: bool = False  # "it works perfectly" fits (machines and apps, not sofas or films)


KITCHEN = Domain(
    name="product",
    items=(
        "blender", "toaster", "kettle", "coffee maker", "air fryer", "rice cooker", "microwave", "sandwich maker",
        "food processor", "slow cooker", "juicer", "mixer",
    ),
    aspects=_aspects(
        "design:look, price, build quality, packaging, handle:part, lid:part, buttons*:part,"
        " instructions*:tool, size, colour:look, power cord:part, finish:look, customer service:people,"
        " timer:tool, settings*:tool"
    ),
    openings=(
        Opening("I bought this {item} {time} and", "clause", "present"),
        Opening("I ordered this {item} {time} and", "clause", "present"),
        Opening("We got this {item} {time} and", "clause", "present", who="we"),
        Opening("I have been using this {item} for {duration} and", "clause", "present"),
        Opening("This {item}", "subject", "present"),
        Opening("The {item} I ordered {time}", "subject", "present"),
        Opening("The new {item} we bought {time}", "subject", "present", who="we"),
        Opening("My {relative} chose this {item} for us.", "sentence", "present", who="we"),
        Opening("I needed a new {item} for my flat, so I tried this one.", "sentence", "present"),
        Opening("After {duration} with this {item}, I can say it is", "predicate", "present"),
        Opening("So far this {item} has been", "predicate", "present"),
    ),
    noun=("buy", "purchase", "product", "little machine", "choice"),
    again=("buy another one", "order it again", "keep using it", "buy it again"),
    pos_extra=(
        "After {d} it still works perfectly.",
        "It was easy to set up and it works perfectly.",
        "It is worth every penny.",
        "It is much better than my old one.",
        "The {a} {a_is} {adv}{p} for the price.",
    ),
    neg_extra=(
        "It broke after {short}, which is {adv}{p}.",
        "It stopped working after {short}.",
        "It was a waste of money.",
        "It is worse than my old one.",
        "Setting it up was a frustrating mess.",
    ),
    neutral=(
        "I use it most mornings.",
        "It arrived two days after I ordered it.",
        "I use it every day.",
        "It came in a plain brown box.",
        "I mostly use it at the weekend.",
        "It replaced an older model.",
    ),
    works=True,
)

GADGETS = replace(
    KITCHEN,
    items=(
        "pair of headphones", "speaker", "keyboard", "phone charger", "tablet", "laptop", "camera", "printer",
        "electric toothbrush", "drill", "watch", "phone", "radio", "webcam", "hair dryer", "vacuum", "heater",
    ),
    aspects=_aspects(
        "design:look, price, build quality, battery:part, cable:part, buttons*:part, setup:tool,"
        " instructions*:tool, size, customer service:people, packaging, charger:part, case:part"
    ),
)

HOME = replace(
    KITCHEN,
    items=(
        "backpack", "suitcase", "tent", "umbrella", "office chair", "pillow", "desk", "bookshelf", "winter coat",
        "mattress", "duvet", "sofa", "bike", "pair of boots", "rain jacket",
    ),
    aspects=_aspects(
        "design:look, price, build quality, material, size, colour:look, packaging, instructions*:tool,"
        " customer service:people, finish:look, delivery"
    ),
    noun=("buy", "purchase", "product", "choice"),
    works=False,
    pos_extra=(
        "After {d} it still looks {adv}{p}.",
        "It is {adv}{p} for everyday use.",
        "It is worth every penny.",
        "It is much better than my old one.",
        "The {a} {a_is} {adv}{p} for the price.",
    ),
    neg_extra=(
        "It fell apart after {short}, which is {adv}{p}.",
        "It is {adv}{p} for everyday use.",
        "It was a waste of money.",
        "It is worse than my old one.",
        "The {a} {a_is} {adv}{p} for the price.",
    ),
    neutral=(
        "It arrived two days after I ordered it.",
        "It came in a plain brown box.",
        "It replaced an older one.",
        "I use it most days.",
    ),
)

FILM = Domain(
    name="film",
    items=(
        "film", "movie", "documentary", "animated film", "sequel", "drama", "science fiction film", "musical",
        "western", "family film", "series", "mini series", "spy film", "period drama",
    ),
    aspects=_aspects(
        "acting, plot:story, story:story, script:story, ending:story, soundtrack, music, dialogue:story, pacing,"
        " visual effects*:look, characters*:story, cast, cinematography:look, lead actor, camera work:look,"
        " costumes*:look, opening scene:story, final scene:story"
    ),
    openings=(
        Opening("I watched this {item} {time} with {companion} and", "clause", "past", who="we"),
        Opening("We went to see this {item} {time} and", "clause", "past", who="we"),
        Opening("I saw this {item} at the cinema {time} and", "clause", "past"),
        Opening("This {item}", "subject", "present"),
        Opening("The {item} we saw on {day}", "subject", "past", who="we"),
        Opening("I finally watched the {item} that everyone was talking about.", "sentence", "past"),
        Opening("My {relative} picked this {item} for our movie night.", "sentence", "past", who="we"),
        Opening("The {aspect} in this {item}", "aspect_predicate", "past"),
        Opening("We streamed this {item} on {day} and", "clause", "past", who="we"),
    ),
    noun=("film", "watch", "story", "evening out", "couple of hours"),
    again=("watch it again", "see it again", "watch the sequel", "look for more from this director"),
    pos_extra=(
        "I laughed the whole way through.",
        "The {a} {a_was} {adv}{p} from start to finish.",
        "It was the best thing I have seen this year.",
        "The whole cast was {adv}{p}.",
    ),
    neg_extra=(
        "I was bored after twenty minutes.",
        "It was a waste of two hours.",
        "The {a} {a_was} {adv}{p} from start to finish.",
        "It was the worst thing I have seen this year.",
    ),
    neutral=(
        "It runs for about two hours.",
        "We watched it at home.",
        "The cinema was half full.",
        "It is based on a book.",
        "We watched it in the original language.",
    ),
)

STAY = Domain(
    name="place",
    items=(
        "hotel", "hostel", "guest house", "cottage", "campsite", "farm stay", "bed and breakfast", "inn",
        "caravan park", "lodge", "beach hut", "motel",
    ),
    aspects=_aspects(
        "room:room, staff*:people, breakfast:food, location, bed:room, bathroom:room, pool:room, view:look,"
        " wifi, parking, showers*:room, garden:look, kitchen:room, reception:people"
    ),
    openings=(
        Opening("We stayed at the {item} {detail} for {stay} and", "clause", "past", who="we"),
        Opening("The {item} {detail} was", "predicate", "past"),
        Opening("I spent {stay} at this {item} and", "clause", "past"),
        Opening("The {aspect} at the {item} {detail}", "aspect_predicate", "past"),
        Opening("This {item} {detail}", "subject", "present"),
        Opening("We booked this {item} {detail} for {stay}.", "sentence", "past", who="we"),
    ),
    noun=("place to stay", "place", "base for a weekend", "trip", "spot"),
    again=("come back", "go back next year", "stay here again", "book it again"),
    pos_extra=(
        "The staff were {adv}friendly and helpful.",
        "The view from our room was {adv}{p}.",
        "It was the best part of our trip.",
        "Our room was {adv}clean and comfortable.",
    ),
    neg_extra=(
        "The staff were {adv}rude and unfriendly.",
        "Our room was {adv}dirty and uncomfortable.",
        "It was the worst part of our trip.",
        "The noise from the street was {adv}{p}.",
    ),
    neutral=(
        "We arrived late in the evening.",
        "It is a short walk from the station.",
        "We booked it a month in advance.",
        "It was busy when we arrived.",
        "We took the bus there.",
        "Check out is at ten.",
    ),
)

VISIT = Domain(
    name="place",
    items=(
        "museum", "zoo", "aquarium", "gallery", "theme park", "botanical garden", "castle", "swimming pool",
        "science centre", "water park", "nature reserve", "old palace", "market",
    ),
    aspects=_aspects(
        "staff*:people, entrance:look, tickets*, guided tour:story, shop, toilets*:room, signs*:tool, car park,"
        " cafe:food, queues*, displays*:look, audio guide:tool, grounds*:look, opening hours*"
    ),
    openings=(
        Opening("We visited the {item} {detail} {time} and", "clause", "past", who="we"),
        Opening("The {item} {detail} was", "predicate", "past"),
        Opening("We visited the {item} {detail} {time}.", "sentence", "past", who="we"),
        Opening("I spent {visit} at this {item} and", "clause", "past"),
        Opening("The {aspect} at the {item} {detail}", "aspect_predicate", "past"),
        Opening("This {item} {detail}", "subject", "present"),
        Opening("We took the kids to the {item} {detail} {time}.", "sentence", "past", who="we"),
    ),
    noun=("day out", "place", "afternoon", "trip", "visit"),
    again=("come back", "go back next year", "visit again", "bring the kids again"),
    pos_extra=(
        "The staff were {adv}friendly and helpful.",
        "The kids loved it.",
        "It was the best day out we had all summer.",
        "The {a} {a_was} {adv}{p}.",
    ),
    neg_extra=(
        "The staff were {adv}rude and unfriendly.",
        "The kids were bored after an hour.",
        "It was the worst day out we had all summer.",
        "The {a} {a_was} {adv}{p}.",
    ),
    neutral=(
        "We went on a weekday.",
        "It is a short walk from the station.",
        "We took the bus there.",
        "We spent about three hours there.",
        "It was busy when we arrived.",
    ),
)

RESTAURANT = Domain(
    name="restaurant",
    items=(
        "restaurant", "cafe", "pizza place", "bakery", "noodle bar", "steakhouse", "sushi bar", "pub", "diner",
        "food truck", "burger place", "tea room", "bistro", "curry house", "taco stand",
    ),
    aspects=_aspects(
        "food:food, service, staff*:people, pasta:food, pizza:food, soup:food, curry:food, burger:food,"
        " fish:food, salad:food, cake:food, noodles*:food, fries*:food, steak:food, bread:food, coffee:food,"
        " pancakes*:food, desserts*:food, portions*, menu, atmosphere, music, wine list, waiter:people,"
        " tables*:room, toilets*:room"
    ),
    openings=(
        Opening("We had dinner at this {item} {time} and", "clause", "past", who="we"),
        Opening("I went to the {item} {detail} for lunch and", "clause", "past"),
        Opening("The {item} {detail}", "subject", "past"),
        Opening("We booked a table at the {item} {detail} for my {relative}.", "sentence", "past", who="we"),
        Opening("The {aspect} at this {item}", "aspect_predicate", "past"),
        Opening("I ordered takeaway from this {item} {time} and", "clause", "past"),
        Opening("We went to the {item} {detail} on {day}.", "sentence", "past", who="we"),
    ),
    noun=("meal", "place to eat", "lunch spot", "dinner", "evening"),
    again=("come back", "go back", "eat here again", "order from them again"),
    pos_extra=(
        "The {food} was {adv}delicious.",
        "The staff were {adv}friendly.",
        "It was the best meal we had all year.",
        "The {food} was {adv}{p} and the prices were fair.",
    ),
    neg_extra=(
        "The {food} was {adv}disgusting.",
        "The waiter was {adv}rude.",
        "It was the worst meal we had all year.",
        "The {food} was {adv}{p} and the tables were dirty.",
    ),
    neutral=(
        "We waited twenty minutes for a table.",
        "I had the soup and my partner had the fish.",
        "It was busy for a Tuesday.",
        "We sat by the window.",
        "They only take cards.",
        "The menu changes every week.",
    ),
)

BOOK = Domain(
    name="book",
    items=(
        "book", "biography", "memoir", "detective story", "short story collection", "fantasy series",
        "history book", "science fiction book", "cookbook", "travel guide", "poetry collection", "graphic book",
    ),
    aspects=_aspects(
        "writing:story, characters*:story, plot:story, ending:story, dialogue:story, pacing, first chapter:story,"
        " style, cover:look, main character:story, middle part:story, last few chapters*:story, translation,"
        " pictures*:look"
    ),
    openings=(
        Opening("I read this {item} {time} and", "clause", "past"),
        Opening("I finished this {item} in {duration} and", "clause", "past"),
        Opening("This {item}", "subject", "present"),
        Opening("My {relative} lent me this {item}.", "sentence", "past"),
        Opening("The {aspect} in this {item}", "aspect_predicate", "past"),
        Opening("I picked up this {item} at the library {time} and", "clause", "past"),
        Opening("Our book club chose this {item} {time}.", "sentence", "past", who="we"),
    ),
    noun=("read", "book", "story", "choice for a long trip"),
    again=("read it again", "read the next one", "look for more by this author", "pass it on to my {relative}"),
    pos_extra=(
        "I loved every page.",
        "The {a} {a_was} {adv}{p}.",
        "It was the best book I read this year.",
        "The writing is {adv}beautiful.",
    ),
    neg_extra=(
        "I was bored by the second chapter.",
        "The {a} {a_was} {adv}{p}.",
        "It was the worst book I read this year.",
        "The writing is {adv}dull.",
    ),
    neutral=(
        "It is about three hundred pages long.",
        "I read it on the train.",
        "It is the second book in a series.",
        "I read it in two sittings.",
        "The chapters are short.",
    ),
)

APP = Domain(
    name="app",
    items=(
        "app", "game", "budgeting app", "workout app", "weather app", "photo editor", "music app",
        "language app", "map app", "note taking app", "puzzle game", "recipe app", "banking app", "calendar app",
    ),
    aspects=_aspects(
        "interface:tool, design:look, updates*, notifications*:tool, ads*, loading times*, features*:tool,"
        " subscription, menus*:tool, sync:tool, search:tool, settings*:tool, layout:look, sound effects*"
    ),
    openings=(
        Opening("I have been using this {item} for {duration} and", "clause", "present"),
        Opening("I downloaded this {item} {time} and", "clause", "present"),
        Opening("This {item}", "subject", "present"),
        Opening("The latest version of this {item}", "subject", "present"),
        Opening("I tried this {item} because my {relative} uses it.", "sentence", "present"),
        Opening("The {aspect} in this {item}", "aspect_predicate", "present"),
        Opening("We installed this {item} on the family tablet {time} and", "clause", "present", who="we"),
    ),
    noun=("app", "download", "tool", "choice"),
    again=("keep using it", "keep it on my phone", "pay for the full version"),
    pos_extra=(
        "It is easy to use.",
        "The {a} {a_is} {adv}{p} and everything just works.",
        "It is the best app on my phone.",
        "The latest update made it even better.",
    ),
    neg_extra=(
        "It is {adv}annoying to use.",
        "The {a} {a_is} {adv}{p} and half the buttons do nothing.",
        "It is the worst app on my phone.",
        "The latest update made it even worse.",
    ),
    neutral=(
        "I mostly use it on my phone.",
        "It takes a minute to set up.",
        "I open it a few times a day.",
        "It needs an account to sync.",
    ),
    works=True,
)

DOMAINS: tuple[Domain, ...] = (KITCHEN, GADGETS, HOME, FILM, STAY, VISIT, RESTAURANT, BOOK, APP)
DOMAIN_WEIGHTS = (0.1, 0.1, 0.08, 0.18, 0.09, 0.07, 0.16, 0.1, 0.12)


# Template slots filled from a word list (the rest are filled by code in `_Builder.fill`).
SLOT_WORDS = {
    "time": TIME_AGO, "duration": DURATION, "d": DURATION, "short": SHORT_DURATION, "stay": NIGHTS,
    "visit": VISIT_TIME, "relative": RELATIVE, "companion": COMPANION, "day": DAY, "food": FOODS,
}
# fmt: on
# ---------------------------------------------------------------------------------------------------------
# The generator.


@cache
def _slot_names(template: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


class _Builder:
    """Fills the slots of one review; remembers used aspects so a review does not repeat itself."""

    def __init__(self, rng: random.Random, domain: Domain, opening: Opening):
        self.rng, self.domain, self.opening = rng, domain, opening
        self.item = rng.choice(domain.items)
        # what this review already said (aspect names, domain sentence templates, clause forms), to not repeat it
        self.used: set[str] = set()
        self.opening_aspect: Aspect | None = None  # set when the opening names an aspect ("The staff at ...")

    # -- slots
    def aspect(self) -> Aspect:
        free = [a for a in self.domain.aspects if a.name not in self.used] or list(self.domain.aspects)
        a = self.rng.choice(free)
        self.used.add(a.name)
        return a

    def be(self, plural: bool = False, tense: str | None = None) -> str:
        tense = tense or self.opening.tense
        return ("were" if plural else "was") if tense == "past" else ("are" if plural else "is")

    def adv(self) -> str:
        return self.rng.choice(INTENSIFIERS)

    def adj(self, pol: str, kind: str = "") -> str:
        """A sentiment adjective; an aspect kind adds its own fitting words (and prefers them half the time)."""
        special = ASPECT_ADJ[kind][0 if pol == "positive" else 1] if kind else ()
        if special and self.rng.random() < 0.5:
            return self.rng.choice(special)
        return self.rng.choice(POS_ADJ + POS_ADJ_EXTREME if pol == "positive" else NEG_ADJ + NEG_ADJ_EXTREME)

    def graded(self, adj: str, before_noun: bool = False) -> str:
        """An adjective with a fitting degree adverb (or none): 'very good', 'absolutely awful'.
        Before a noun "quite" and "so" would need another word order ("quite a good buy"), so they are left out."""
        if adj in EXTREME:
            return self.rng.choice(INTENSIFIERS_EXTREME) + adj
        pool = INTENSIFIERS_BEFORE_NOUN if before_noun else INTENSIFIERS
        return self.rng.choice(pool) + adj

    def adj_phrase(self, pol: str, kind: str = "") -> str:
        """'really great', 'lovely and clean', or for some negatives a negated positive ('not very good')."""
        r = self.rng.random()
        if pol == "negative" and r < 0.12 and "not" not in self.used:  # once per review is natural enough
            self.used.add("not")
            return self.rng.choice(("not very good", "not good", "not great"))
        if kind and r < 0.25:  # pairs read naturally when the second word fits the aspect: "nice and clean"
            a, b = self.adj(pol, kind), self.rng.choice(ASPECT_ADJ[kind][0 if pol == "positive" else 1])
            if a != b:
                return f"{a} and {b}"
        return self.graded(self.adj(pol, kind))

    def fill(self, template: str, pol: str) -> str:
        """Fill a template's {slots}; only the slots it names draw from the RNG (most of the generation time)."""
        if "{adv}{p}" in template:  # the degree adverb must fit the adjective: "very good", "absolutely awful"
            template = template.replace("{adv}{p}", "{p_graded}")
        slots = {"item": self.item}
        for name in _slot_names(template):
            if name in SLOT_WORDS:
                slots[name] = self.rng.choice(SLOT_WORDS[name])
        if "{detail}" in template:  # restaurants sit on streets; hotels, parks and campsites in wider areas
            slots["detail"] = self.rng.choice(STREET if self.domain.name == "restaurant" else AREA)
        if "{adv}" in template:
            slots["adv"] = self.adv()
        if "{a}" in template:
            a = self.aspect()
            slots["a"] = a.name
            slots["a_is"] = "are" if a.plural else "is"
            slots["a_was"] = "were" if a.plural else "was"
        if "{p}" in template:
            slots["p"] = self.adj(pol)
        if "{p_graded}" in template:
            slots["p_graded"] = self.graded(self.adj(pol))
        return template.format(**slots)

    # -- sentence parts, each for one polarity
    def verb_phrase(self, pol: str) -> str:
        """What follows a subject: 'is really great', 'is an awful buy', 'works perfectly'."""
        tense, rng = self.opening.tense, self.rng
        r = rng.random()
        if r < 0.5:
            return f"{self.be()} {self.adj_phrase(pol)}"
        if r < 0.75:
            return f"{self.be()} {_a(self.graded(self.adj(pol), before_noun=True))} {rng.choice(self.domain.noun)}"
        if self.domain.works and tense == "present":
            return "works " + rng.choice(WORKS_WELL if pol == "positive" else WORKS_BADLY)
        return f"{self.be()} {self.adj_phrase(pol)}"

    def clause(self, pol: str) -> str:
        """A full clause: 'it is great', 'I love it', 'we were disappointed', 'the lid is awful'."""
        rng, tense, who = self.rng, self.opening.tense, self.opening.who
        r = rng.random()
        if r < 0.35:
            return "it " + self.verb_phrase(pol)
        # "I love it" and "I am happy with it" at most once each per review ("I disliked it. I disliked it.")
        if r < 0.55 and "verb" not in self.used:
            self.used.add("verb")
            verbs = (POS_VERB if pol == "positive" else NEG_VERB)[tense]
            return f"{who} {rng.choice(verbs)} it"
        if r < 0.75 and "feeling" not in self.used:
            self.used.add("feeling")
            feeling = rng.choice(POS_FEELING if pol == "positive" else NEG_FEELING)
            be = ("am" if who == "I" else "are") if tense == "present" else ("was" if who == "I" else "were")
            return f"{who} {be} {self.adv()}{feeling} with it"
        a = self.aspect()
        return f"the {a.name} {self.be(a.plural)} {self.adj_phrase(pol, a.kind)}"

    def sentence(self, pol: str) -> str:
        """One sentiment sentence of polarity `pol`, capitalised, with final punctuation."""
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            pool = self.domain.pos_extra if pol == "positive" else self.domain.neg_extra
            fresh = [t for t in pool if t not in self.used]
            if fresh:
                template = rng.choice(fresh)
                self.used.add(template)
                return self.fill(template, pol)
        if r < 0.55:
            a = self.aspect()
            return _cap(f"the {a.name} {self.be(a.plural)} {self.adj_phrase(pol, a.kind)}.")
        if r < 0.7:
            a, b = self.aspect(), self.aspect()
            first = f"the {a.name} {self.be(a.plural)} {self.adj_phrase(pol, a.kind)}"
            return _cap(f"{first} and the {b.name} {self.be(b.plural)} {self.adj_phrase(pol, b.kind)}.")
        return _cap(self.clause(pol) + rng.choice((".", ".", ".", "!")))

    def closing(self, pol: str) -> str:
        rng = self.rng
        again = self.fill(rng.choice(self.domain.again), pol)
        overall = f"Overall, {_a(self.graded(self.adj(pol), before_noun=True))} {rng.choice(self.domain.noun)}."
        gladly = rng.choice(("definitely ", "happily ", ""))
        if pol == "positive":
            to_whom = rng.choice(("", " to anyone", " to my friends"))
            stars = "Five stars, " + rng.choice(("well deserved.", "easily.", "no doubt."))
            options = [f"I would {gladly}recommend it{to_whom}.", "Highly recommended.", stars, overall, "Love it!"]
            options.append(f"I will {gladly}{again}.")
        elif pol == "negative":
            options = ["I would not recommend it.", "I would not recommend it to anyone.", "Avoid.", "One star."]
            options += [f"I will never {again}.", overall, "Spend your money elsewhere.", "What a waste."]
            options.append("Very disappointing.")
        else:
            options = ["Overall it is okay, but I expected more.", "Not bad, but not great either.", "Three stars."]
            options += ["Good, but not perfect.", "It is fine, I suppose.", "Some good parts and some bad ones."]
            options.append(f"I might {again}, but I am not sure.")
        return rng.choice(options)

    def contrast(self, pol: str) -> str:
        """A sentence turning to polarity `pol` after a sentence of the other one (for mixed reviews)."""
        rng = self.rng
        a = self.aspect()
        body = f"the {a.name} {self.be(a.plural)} {self.adj_phrase(pol, a.kind)}"
        form = rng.random()
        if form < 0.4:
            return _cap(f"{rng.choice(('but', 'however,', 'on the other hand,'))} {body}.")
        if form < 0.7:
            return _cap(f"{body}, though.")
        return _cap(f"the only {'good thing' if pol == 'positive' else 'problem'} is that {body}.")

    def first(self, pol: str) -> str:
        """The continuation's first part: it must fit the opening's grammar and carry `pol` clearly."""
        kind = self.opening.kind
        if kind == "sentence":
            return " " + self.sentence(pol)
        if kind == "clause":
            head = self.clause(pol)
        elif kind == "subject":
            head = self.verb_phrase(pol)
        else:  # after "The staff at the hotel were": adjectives that fit the opening's aspect
            head = self.adj_phrase(pol, self.opening_aspect.kind if self.opening_aspect else "")
        if self.rng.random() < 0.3:
            a = self.aspect()
            head += f", and the {a.name} {self.be(a.plural)} {self.adj_phrase(pol, a.kind)}"
        return " " + head + "."


def _a(phrase: str) -> str:
    """Indefinite article: 'a great', 'an awful' (the vocabulary has no 'an hour'-style exceptions)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _opening_text(b: _Builder) -> str:
    """Fill an opening; 'aspect_predicate' openings also put the aspect's verb at the end."""
    template = b.opening.template
    if b.opening.kind == "aspect_predicate":
        a = b.opening_aspect = b.aspect()
        template = template.replace("{aspect}", a.name) + " " + b.be(a.plural)
    return b.fill(template, "positive")  # opening slots are neutral: the polarity argument is unused


MAX_WORDS = 60


def _review(rng: random.Random) -> Review:
    domain = rng.choices(DOMAINS, DOMAIN_WEIGHTS)[0]
    opening = rng.choice(domain.openings)
    b = _Builder(rng, domain, opening)
    polarity = rng.choices(POLARITIES, POLARITY_WEIGHTS)[0]
    opening_text = _opening_text(b)
    n_more = rng.choices((0, 1, 2, 3), (0.04, 0.26, 0.45, 0.25))[0]
    add = partial(_add_new, words_left=MAX_WORDS - len(opening_text.split()))
    if opening.kind == "sentence":
        n_more = min(n_more, 2)  # the opening is already a sentence: stay within four
    if polarity == "mixed":
        first_pol = rng.choice(("positive", "negative"))
        other = "negative" if first_pol == "positive" else "positive"
        parts = [b.first(first_pol).lstrip()]
        if n_more >= 3:
            add(parts, partial(b.sentence, first_pol))
        add(parts, partial(b.contrast, other))
        if n_more >= 1:
            add(parts, partial(b.closing, "mixed"))
    else:
        parts = [b.first(polarity).lstrip()]
        for i in range(n_more):
            r = rng.random()
            if i == n_more - 1 and r < 0.6:
                add(parts, partial(b.closing, polarity))
            elif r < 0.15:
                add(parts, partial(rng.choice, domain.neutral))
            else:
                add(parts, partial(b.sentence, polarity))
    return Review(domain.name, b.item, polarity, opening_text, " " + " ".join(parts))


def _add_new(parts: list[str], make: Callable[[], str], words_left: int, tries: int = 5) -> None:
    """Append a sentence from `make` unless it repeats one already there ("It was a waste. It was a waste.")
    or would take the review past MAX_WORDS (so every review fits a small context)."""
    words_left -= sum(len(p.split()) for p in parts)
    for _ in range(tries):
        sentence = make()
        if sentence not in parts and len(sentence.split()) <= words_left:
            parts.append(sentence)
            return


def iter_reviews(seed: int) -> Iterator[Review]:
    """An endless, deterministic stream of reviews (duplicates possible; see `generate_reviews`)."""
    rng = random.Random(seed)
    while True:
        yield _review(rng)


def generate_reviews(n: int, seed: int = 0, unique: bool = True) -> list[Review]:
    """`n` reviews from `seed`; with `unique`, texts that already appeared are skipped (so all `n` differ)."""
    if n < 0:
        raise UserError(f"number of reviews must be >= 0, got {n}")
    out: list[Review] = []
    seen: set[str] = set()
    stream = iter_reviews(seed)
    budget = 20 * n + 1000  # the grammar has far more than enough variety; this only guards against a bug
    while len(out) < n:
        budget -= 1
        if budget < 0:
            raise RuntimeError(f"could not generate {n} distinct reviews; the grammar is too small")
        r = next(stream)
        if unique:
            if r.text in seen:
                continue
            seen.add(r.text)
        out.append(r)
    return out


MAX_OPENING_MISSES = 2000  # ~25k distinct openings exist: 2000 repeats in a row only happen near exhaustion


def generate_openings(n: int, seed: int = 0) -> list[str]:
    """`n` distinct sentiment-neutral openings (the prompts of the demo task), in generation order."""
    if n < 0:
        raise UserError(f"number of prompts must be >= 0, got {n}")
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    misses = 0  # consecutive repeats: many in a row means the grammar has no more distinct openings to give
    while len(out) < n:
        domain = rng.choices(DOMAINS, DOMAIN_WEIGHTS)[0]
        text = _opening_text(_Builder(rng, domain, rng.choice(domain.openings)))
        if text in seen:
            misses += 1
            if misses > MAX_OPENING_MISSES:
                raise UserError(
                    f"cannot make {n} distinct prompts: the grammar ran out after {len(out)} "
                    f"(it has about 25,000); ask for fewer prompts (n_prompts)"
                )
            continue
        misses = 0
        seen.add(text)
        out.append(text)
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Split a generated review into sentences (the generator always ends one with . ! or ? and a capital)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def sentiment_lexicon_words() -> dict[str, tuple[str, ...]]:
    """The single sentiment words this grammar uses, by intended sign (for the VADER agreement test)."""
    pos = set(POS_ADJ + POS_ADJ_EXTREME + POS_FEELING)
    neg = set(NEG_ADJ + NEG_ADJ_EXTREME + NEG_FEELING)
    for pos_words, neg_words in ASPECT_ADJ.values():
        pos |= set(pos_words)
        neg |= set(neg_words)
    pos |= set(WORKS_WELL)
    neg |= set(WORKS_BADLY)
    pos |= {v.split()[-1] for vs in POS_VERB.values() for v in vs}
    neg |= {v.split()[-1] for vs in NEG_VERB.values() for v in vs}
    return {"positive": tuple(sorted(pos)), "negative": tuple(sorted(neg))}
