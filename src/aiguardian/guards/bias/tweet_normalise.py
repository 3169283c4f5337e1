"""Rewriting social-media text into one plain form before the toxicity model reads it.

Tweets from different sources and eras spell the same things differently: ``@JohnSmith`` or ``@user``,
``http://t.co/x`` or ``URL``, ``&#128514;`` or ``😂``, ``#BuildTheWall``, ``stuuupid``, ``sh1t``. A model that
sees the raw forms learns the spelling of its training sources (which source uses which mention style) instead
of the words; one rewrite, applied the same way in training and at run time, keeps only the words.

Case is kept (the shouting signal reads it); the featurizer lower-cases afterwards.
"""

from __future__ import annotations

import html
import re

_URL = re.compile(r"(?:[Hh][Tt][Tt][Pp][Ss]?://|[Ww][Ww][Ww]\.)\S*|\bURL\b")
_MENTION = re.compile(r"@\w+")
_MENTION_RUN = re.compile(r"@user(?:\W{0,3}@user)+")
_RETWEET = re.compile(r"\bRT\b:?")
_HASHTAG = re.compile(r"#(\w+)")
_CAMEL = re.compile(r"[A-Z]{2,}(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_ELONGATED = re.compile(r"([A-Za-z])\1\1+")
# Digits or symbols standing for letters: between two letters ("sh1t", "b!tch", "a$$hole") or a leading "$"
# before letters ("$hit"). "5pm", "mp3" and "covid19" have no letter on one side and are left alone.
_LEET_RUN = re.compile(r"[A-Za-z][0134578@$!]+(?=[A-Za-z])")
_LEET_DOLLAR = re.compile(r"(?<![\w$])\$(?=[A-Za-z]{2})")
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s", "!": "i"}
)

# Emoji people use for contempt, anger, mockery, sex and violence, and a few common neutral ones, as words
# (several sources store them only as HTML entities or drop them).
EMOJI_WORDS: dict[str, str] = {
    "😂": "laughing",
    "🤣": "laughing",
    "😭": "crying",
    "😡": "angry",
    "😠": "angry",
    "🤬": "cursing",
    "🖕": "middle finger",
    "💩": "poop",
    "🤮": "vomit",
    "🤢": "nauseated",
    "🙄": "eye roll",
    "💀": "skull",
    "🔫": "gun",
    "🔪": "knife",
    "💣": "bomb",
    "🐷": "pig",
    "🐖": "pig",
    "🐍": "snake",
    "🐀": "rat",
    "🤡": "clown",
    "🍆": "eggplant",
    "🍑": "peach",
    "👅": "tongue",
    "💦": "splash",
    "😍": "love",
    "❤": "love",
    "❤️": "love",
    "😊": "smile",
    "🙏": "pray",
    "👍": "thumbs up",
    "👏": "clap",
}
_EMOJI = re.compile("|".join(sorted(map(re.escape, EMOJI_WORDS), key=len, reverse=True)))


def _hashtag(match: re.Match[str]) -> str:
    return " " + " ".join(_CAMEL.findall(match.group(1)) or [match.group(1)]) + " "


def normalise_tweet(text: str) -> str:
    """``text`` with entities decoded, links and mentions replaced by ``url`` and ``@user``, retweet marks
    dropped, hashtags split into words, emoji spelt out, letters repeated three or more times cut to two and
    digits or symbols standing for letters inside a word turned back into letters."""
    if "&" in text:
        text = html.unescape(html.unescape(text))  # some sources escaped twice ("&amp;#8220;")
    if "://" in text or "URL" in text or "ww." in text or "WW." in text:
        text = _URL.sub(" url ", text)
    if "@" in text:
        text = _MENTION_RUN.sub("@user", _MENTION.sub("@user", text))
    if "RT" in text:
        text = _RETWEET.sub(" ", text)
    if "#" in text:
        text = _HASHTAG.sub(_hashtag, text)
    if not text.isascii():
        text = _EMOJI.sub(lambda m: " " + EMOJI_WORDS[m.group(0)] + " ", text)
    text = _ELONGATED.sub(r"\1\1", text)
    text = _LEET_RUN.sub(lambda m: m.group(0)[0] + m.group(0)[1:].translate(_LEET), text)
    if "$" in text:
        text = _LEET_DOLLAR.sub("s", text)
    return " ".join(text.split())
