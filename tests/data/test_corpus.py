"""The procedural review generator: determinism, variety, balance, VADER agreement, form and grammar."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

import pytest
import vaderSentiment
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf.data import corpus
from rlhf.data.corpus import generate_openings, generate_reviews, iter_reviews, split_sentences
from rlhf.errors import UserError


@pytest.fixture(scope="module")
def raw_reviews():
    """20k reviews straight from the stream (duplicates kept), as the variety test needs."""
    return generate_reviews(20000, seed=0, unique=False)


@pytest.fixture(scope="module")
def vader():
    return SentimentIntensityAnalyzer()


def test_same_seed_same_reviews_and_different_seed_different():
    a, b, c = generate_reviews(300, seed=7), generate_reviews(300, seed=7), generate_reviews(300, seed=8)
    assert a == b
    assert [r.text for r in a] != [r.text for r in c]
    assert len({r.text for r in a} & {r.text for r in c}) < 30  # different seeds: mostly different reviews


def test_generator_does_not_touch_global_random():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_reviews(50, seed=1)
    generate_openings(20, seed=1)
    assert random.random() == expected


def test_variety(raw_reviews):
    texts = [r.text for r in raw_reviews]
    assert len(set(texts)) / len(texts) > 0.95
    # not one template dominating: no single opening and no single continuation is common
    assert Counter(r.opening for r in raw_reviews).most_common(1)[0][1] < 0.01 * len(texts)
    assert Counter(r.continuation for r in raw_reviews).most_common(1)[0][1] < 0.01 * len(texts)
    assert {r.domain for r in raw_reviews} == {"product", "film", "place", "restaurant", "book", "app"}


def test_unique_reviews_are_all_distinct():
    reviews = generate_reviews(3000, seed=3)
    assert len({r.text for r in reviews}) == 3000


def test_polarity_balance(raw_reviews):
    counts = Counter(r.polarity for r in raw_reviews)
    n = len(raw_reviews)
    assert abs(counts["positive"] - counts["negative"]) < 0.05 * n
    assert counts["positive"] > 0.3 * n and counts["negative"] > 0.3 * n
    assert 0.1 * n < counts["mixed"] < 0.3 * n


@pytest.mark.parametrize("part", ["text", "continuation"])
def test_vader_agrees_with_intended_polarity(raw_reviews, vader, part):
    sample = raw_reviews[:3000]
    pos = [vader.polarity_scores(getattr(r, part))["compound"] for r in sample if r.polarity == "positive"]
    neg = [vader.polarity_scores(getattr(r, part))["compound"] for r in sample if r.polarity == "negative"]
    assert sum(c > 0.05 for c in pos) / len(pos) > 0.85
    assert sum(c < -0.05 for c in neg) / len(neg) > 0.85


def test_sentiment_words_have_the_intended_sign_in_the_vader_lexicon():
    lexicon_file = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    valence = {}
    for line in lexicon_file.read_text(encoding="utf-8").splitlines():
        word, value = line.split("\t")[:2]
        valence[word] = float(value)
    words = corpus.sentiment_lexicon_words()
    assert len(words["positive"]) > 30 and len(words["negative"]) > 25
    wrong_pos = [w for w in words["positive"] if valence.get(w, 0.0) <= 0]
    wrong_neg = [w for w in words["negative"] if valence.get(w, 0.0) >= 0]
    assert wrong_pos == [] and wrong_neg == []


def test_lengths_fit_a_small_context(raw_reviews):
    words = [len(r.text.split()) for r in raw_reviews]
    sentences = [len(split_sentences(r.text)) for r in raw_reviews[:3000]]
    assert max(words) <= 60
    assert sum(15 <= w <= 60 for w in words) / len(words) > 0.9
    assert 20 <= statistics.median(words) <= 40
    assert set(sentences) <= {1, 2, 3, 4}


def test_text_form(raw_reviews):
    for r in raw_reviews[:5000]:
        assert r.opening == r.opening.strip() and r.opening[0].isupper()
        assert r.continuation.startswith(" ") and not r.continuation.startswith("  ")
        assert r.text[-1] in ".!"
        assert "  " not in r.text and " ." not in r.text and " ," not in r.text and "{" not in r.text
        assert r.polarity in corpus.POLARITIES
        for s in split_sentences(r.text):
            assert s[0].isupper() and s[-1] in ".!", s


def test_grammar_agreement_and_articles(raw_reviews):
    text = "\n".join(r.text for r in raw_reviews[:5000]).lower()
    for domain in corpus.DOMAINS:
        for a in domain.aspects:
            wrong = ("is", "was") if a.plural else ("are", "were")
            for verb in wrong:
                assert f"the {a.name} {verb} " not in text, f"agreement: 'the {a.name} {verb}'"
    assert not re.search(r"\ba [aeio]", text)  # "a awful"
    assert not re.search(r"\ban (?!hour)[^aeiou]", text)  # "an great" (but "an hour")
    assert not re.search(r"\b(very|quite|so|extremely) (excellent|amazing|perfect|superb|awful|terrible)\b", text)
    assert not re.search(r"\b(\w+) \1\b", text)  # no doubled words


def test_openings_are_distinct_neutral_and_deterministic(vader):
    openings = generate_openings(1000, seed=0)
    assert openings == generate_openings(1000, seed=0)
    assert openings != generate_openings(1000, seed=1)
    assert len(set(openings)) == 1000
    compounds = [vader.polarity_scores(o)["compound"] for o in openings]
    assert statistics.mean(abs(c) for c in compounds) < 0.01
    assert sum(c == 0 for c in compounds) / len(compounds) > 0.995


def test_opening_words_carry_no_vader_sentiment(vader):
    """Stricter than a mean: no word an opening can use has a VADER valence ("fitness app" would be +1.1)."""
    words = {w for o in generate_openings(5000, seed=2) for w in re.findall(r"[a-z']+", o.lower())}
    assert len(words) > 300
    assert sorted(w for w in words if w in vader.lexicon) == []


def test_reviews_start_with_an_opening_the_prompt_generator_can_produce():
    openings = set(generate_openings(5000, seed=0))
    reviews = [next(iter_reviews(s)) for s in range(300)]
    # same grammar: most review openings appear among 5000 generated prompts (the space has ~25k)
    assert sum(r.opening in openings for r in reviews) > 30


def test_split_sentences():
    assert split_sentences("It is great. I love it! Five stars, easily.") == [
        "It is great.",
        "I love it!",
        "Five stars, easily.",
    ]
    assert split_sentences("Version 2.0 is fine.") == ["Version 2.0 is fine."]


def test_bad_counts_are_user_errors(monkeypatch):
    with pytest.raises(UserError, match="number of reviews"):
        generate_reviews(-1)
    with pytest.raises(UserError, match="number of prompts"):
        generate_openings(-5)
    # running out of distinct openings takes seconds for real; with no repeats allowed it fails at the first
    monkeypatch.setattr(corpus, "MAX_OPENING_MISSES", 0)
    with pytest.raises(UserError, match="cannot make 100000 distinct prompts.*n_prompts"):
        generate_openings(100000)
