"""ToxicityGuard on the shipped model: insults and slurs are flagged, ordinary and merely blunt text passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.bias import lexicon
from aiguardian.guards.bias.toxicity import SIGNAL_NAMES, TASK, ToxicityGuard, TweetFeaturizer, signals
from aiguardian.guards.bias.tweet_normalise import normalise_tweet
from aiguardian.guards.ml.features import HashingFeaturizer
from aiguardian.guards.ml.linear import LinearModel

TOXIC = [
    "You are a worthless idiot and everyone hates you.",
    "Shut up, you stupid bitch.",
    "What a pathetic moron, go kill yourself.",
    "f*ck you and your whole disgusting family",
    "@JohnSmith ur such a sh1t stain, a$$hole",
    "RT @someone: shut up you stuuupid b!tch &#128514;",
    "@user @user He is a lying scumbag and a total disgrace URL",
]
CLEAN = [
    "Thank you so much for your help with the report yesterday!",
    "The meeting is moved to Thursday at 3pm.",
    "I disagree with your proposal, but I see why you made it.",
    "hi",
    "Our assessment of the Scunthorpe office is due on Monday.",
    "The cocktail party at Essex was a classic; pass the documents to Mr Hancock.",
    "@user Congratulations on the new job, well deserved! URL",
    "I killed it at the gym today and the #MondayMotivation posts kept me going",
]


@pytest.fixture(scope="module")
def guard() -> ToxicityGuard:
    return ToxicityGuard()


@pytest.mark.parametrize("text", TOXIC)
def test_insults_are_blocked(guard: ToxicityGuard, text: str) -> None:
    verdict = guard.check(GuardContext(text=text))
    assert verdict.action is Action.BLOCK, verdict.score
    assert verdict.reason_codes == ["BIAS_TOXICITY"]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_text_passes(guard: ToxicityGuard, text: str) -> None:
    verdict = guard.check(GuardContext(text=text))
    assert verdict.action is Action.ALLOW, verdict.score


def test_one_toxic_sentence_in_a_long_text_is_found_with_its_span(guard: ToxicityGuard) -> None:
    polite = "The quarterly numbers look fine and the team delivered the project on time. " * 6
    insult = "You are a worthless idiot and everyone hates you."
    text = f"{polite}\n{insult}\n{polite}"
    verdict = guard.check(GuardContext(text=text))
    assert verdict.action is Action.BLOCK
    finding = verdict.findings[0]
    assert finding.start is not None
    assert finding.end is not None
    assert text[finding.start : finding.end] == insult


def test_signals_count_profanity_and_insults_aimed_at_the_reader() -> None:
    values = dict(zip(SIGNAL_NAMES, signals("you are such an idiot, damn"), strict=True))
    assert values["insult"] > 0
    assert values["profanity"] > 0
    assert values["aimed_at_reader"] > 0
    assert values["aimed_at_someone"] == 0
    assert not any(signals("Have a lovely evening."))


def test_signals_see_through_obfuscation_and_name_a_third_person_target() -> None:
    values = dict(zip(SIGNAL_NAMES, signals("@JoeBloggs she is a total sh1t, f**k this"), strict=True))
    assert values["profanity"] > 0
    assert values["masked_profanity"] > 0
    assert values["aimed_at_someone"] > 0 or values["aimed_at_reader"] > 0
    assert dict(zip(SIGNAL_NAMES, signals("kill yourself"), strict=True))["direct_attack"] > 0


@pytest.mark.parametrize(
    "text",
    ["Scunthorpe", "assessment", "cocktail", "Essex", "Dick Smith's hell of a good Pakistani spice shop"],
)
def test_trigger_words_inside_benign_words_are_not_profanity(text: str) -> None:
    values = dict(zip(SIGNAL_NAMES, signals(text), strict=True))
    assert values["slur"] == 0
    assert values["masked_profanity"] == 0
    assert values["aimed_at_reader"] == 0
    if text != "Dick Smith's hell of a good Pakistani spice shop":
        assert not any(signals(text))


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("RT @Some_One: hi &amp; bye http://t.co/abc", "@user: hi & bye url"),
        ("@a @b @c you are sooooo stupiddd URL", "@user you are soo stupidd url"),
        ("#BuildTheWall now", "Build The Wall now"),
        ("sh1t b!tch a$$hole $hit", "shit bitch asshole shit"),
        ("meet at 5pm, 2nd floor, mp3 and covid19", "meet at 5pm, 2nd floor, mp3 and covid19"),
        ("so funny &#128514;", "so funny laughing"),
    ],
)
def test_tweet_normalisation(raw: str, normalised: str) -> None:
    assert normalise_tweet(raw) == normalised


def test_the_guard_featurizer_reads_normalised_text() -> None:
    plain = HashingFeaturizer(char_ngrams=(2, 5), word_ngrams=(1, 2), bits=20)
    tweet = TweetFeaturizer.from_config(plain.config())
    raw = ["@JohnSmith you are sooooo dumb http://t.co/x", "#NotMyPresident &#128514;"]
    expected = plain.transform([normalise_tweet(t) for t in raw])
    got = tweet.transform(raw)
    assert got.indices.tolist() == expected.indices.tolist()
    assert got.indptr.tolist() == expected.indptr.tolist()
    segments, _ = tweet.transform_segments(raw)
    assert sorted(segments.indices[: segments.indptr[1]].tolist()) == sorted(
        expected.indices[: expected.indptr[1]].tolist()
    )


def test_the_shipped_model_was_trained_with_the_lexicon_and_the_rewrite() -> None:
    model = TASK.model()
    assert model.signal_names == lexicon.SIGNAL_NAMES
    assert isinstance(model.featurizer, TweetFeaturizer)
    assert model.meta["training"]["cv_folds"] == 5


def test_warn_and_empty_text() -> None:
    assert ToxicityGuard(action="warn").check(GuardContext(text=TOXIC[0])).action is Action.WARN
    assert ToxicityGuard().check(GuardContext(text="   ")).score == 0.0


def test_nb_weighted_fit_folds_the_ratios_into_a_plain_linear_model(tmp_path: Path) -> None:
    from aiguardian.guards.ml.nb_linear import fit_nb

    rude = ["you idiot", "shut up moron", "what a stupid clown", "idiot moron clown", "you stupid fool"] * 4
    kind = ["thank you", "see you soon", "what a lovely day", "nice work friend", "you are kind"] * 4
    featurizer = HashingFeaturizer(char_ngrams=(0, 0), word_ngrams=(1, 1), bits=12)
    labels = np.array([1] * len(rude) + [0] * len(kind), dtype=np.int64)
    fit = fit_nb(
        featurizer, featurizer.transform(rude + kind), labels, seed=1, c_grid=(1.0,), folds=2, min_df=1
    )
    fit.model.save(tmp_path / "m.aigml")
    loaded = LinearModel.load(tmp_path / "m.aigml")
    scores = loaded.scores(["you moron", "have a lovely day"])
    assert scores[0] > loaded.threshold > scores[1]
    assert fit.summary["cv_f1"] > 0.9
