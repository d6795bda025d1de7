"""The gold judge: VADER compound minus a repetition penalty, and the independent TextBlob judge."""

from __future__ import annotations

import socket

import pytest
from textblob import TextBlob
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf.data import gold
from rlhf.data.corpus import generate_reviews
from rlhf.data.gold import gold_score, gold_scores, repeated_bigram_fraction, repetition_penalty, textblob_polarity

FLUENT_POSITIVE = "The food was great and the staff were lovely."
FLUENT_NEGATIVE = "The room was dirty and the staff were rude."


def test_positive_above_negative():
    assert gold_score(FLUENT_POSITIVE) > 0.5
    assert gold_score(FLUENT_NEGATIVE) < -0.5
    assert gold_score("I love it, highly recommended.") > gold_score("I hate it, what a waste of money.")


@pytest.mark.parametrize(
    "degenerate",
    [
        "great great great great great",
        "great great great great great great great great great great great great",
        "The food was great. The food was great. The food was great.",
        "amazing! amazing! amazing! amazing! amazing! amazing!",
    ],
)
def test_repetition_scores_below_a_fluent_positive_sentence(degenerate):
    vader = SentimentIntensityAnalyzer()
    assert vader.polarity_scores(degenerate)["compound"] > 0.5  # VADER alone would reward it
    assert gold_score(degenerate) < gold_score(FLUENT_POSITIVE)
    assert gold_score(degenerate) < 0.2


def test_repeated_bigram_fraction_by_hand():
    assert repeated_bigram_fraction("") == 0.0
    assert repeated_bigram_fraction("great") == 0.0  # no bigram
    assert repeated_bigram_fraction("it is good and it is cheap") == pytest.approx(1 - 5 / 6)
    assert repeated_bigram_fraction("a b a b") == pytest.approx(1 / 3)  # (a,b) (b,a) (a,b)
    assert repeated_bigram_fraction("Great, GREAT great!") == pytest.approx(1 / 2)  # case and punctuation ignored
    assert repetition_penalty("a b a b") == pytest.approx(2.0 * (1 / 3 - 0.25) / 0.75)
    assert repetition_penalty("great great great great great") == pytest.approx(2.0 * (0.75 - 0.25) / 0.75)
    assert repetition_penalty(FLUENT_POSITIVE) == 0.0


def test_gold_score_is_compound_minus_penalty():
    vader = SentimentIntensityAnalyzer()
    for text in [FLUENT_POSITIVE, FLUENT_NEGATIVE, "great great great great great", "ok ok ok ok", "meh"]:
        expected = vader.polarity_scores(text)["compound"] - repetition_penalty(text)
        assert gold_score(text) == pytest.approx(expected, abs=1e-12)
    assert gold_scores([FLUENT_POSITIVE, "", FLUENT_NEGATIVE]) == [
        gold_score(FLUENT_POSITIVE),
        gold.EMPTY_SCORE,
        gold_score(FLUENT_NEGATIVE),
    ]


def test_empty_text_scores_minimum_sentiment():
    for empty in ["", "   ", "\n", "...!"]:
        assert gold_score(empty) == -1.0
    assert gold_score("") < gold_score("It is fine.")


def test_corpus_reviews_pay_no_repetition_penalty():
    reviews = generate_reviews(3000, seed=0)
    penalised = sum(repetition_penalty(r.continuation) > 0 for r in reviews)
    assert penalised / len(reviews) < 0.01


def test_non_string_is_a_clear_error():
    with pytest.raises(TypeError, match="decode token ids first"):
        gold_score([1, 2, 3])
    with pytest.raises(TypeError, match="got NoneType"):
        textblob_polarity(None)


def test_textblob_polarity_is_an_independent_sentiment_judge():
    assert textblob_polarity(FLUENT_POSITIVE) > 0.3
    assert textblob_polarity("This kettle is awful and the lid is terrible.") < -0.3
    assert textblob_polarity("") == 0.0
    assert textblob_polarity(FLUENT_POSITIVE) == pytest.approx(TextBlob(FLUENT_POSITIVE).sentiment.polarity)
    reviews = generate_reviews(500, seed=1)
    pos = [textblob_polarity(r.continuation) > 0 for r in reviews if r.polarity == "positive"]
    neg = [textblob_polarity(r.continuation) < 0 for r in reviews if r.polarity == "negative"]
    assert sum(pos) / len(pos) > 0.85 and sum(neg) / len(neg) > 0.85


def test_judges_work_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    gold._pattern.cache_clear()  # build both analyzers again with the network off
    gold._vader.cache_clear()
    assert textblob_polarity("What a wonderful day.") > 0
    assert gold_score("What a wonderful day.") > 0
