"""A hand-written lexicon of profanity, insults, slurs and threats, and the signals the toxicity model reads
from it.

Words are matched as whole tokens of the lower-cased, tweet-normalised text (so "Scunthorpe", "assessment" and
"cocktail" match nothing), plus prefixes for the few roots whose every inflection and compound is offensive
("fucking", "shitshow", "bitches"). Lists and weights of what they mean are the model's business: the signals
only count, and say whether the words are aimed at someone ("you are a clown", "@user is a liar").
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|@user")
# Profanity with letters starred out: "f*ck", "f**king", "s***", "b*tch", "a**hole", "c**t".
_MASKED = re.compile(
    r"(?<![a-z])(f[\*\-_#]+c?k|f[u\*]?[\*\-_#]+k|sh?[\*\-_#]+t|b[\*\-_#]+tch|a[\*\-_#]+hole|c[\*\-_#]+nt|"
    r"f[\*\-_#]{3}|s[\*\-_#]{3}|d[\*\-_#]+k|p[\*\-_#]+ssy|wh[\*\-_#]+re|n[\*\-_#]+g+[aer]+)",
)

PROFANITY = _words("""fuck fucks fucked fucking fuckin fucker fuckers fck fcking fk fuk fuking fukin effing eff frick fricking
    shit shits shitty shitting shite shat bullshit horseshit dipshit batshit apeshit damn dammit damnit goddamn
    goddamnit crap crappy piss pissed pissing ass asses arse arses asshole assholes arsehole arseholes bitch bitches
    bitchy bitching biatch bastard bastards dick dicks dickhead dickheads cock cocks cocksucker pussy pussies cunt
    cunts twat twats wanker wankers wank prick pricks motherfucker motherfuckers motherfucking mf mofo wtf stfu
    gtfo omfg ffs hoe hoes thot thots slut sluts slutty whore whores skank skanks douche douchebag douchebags
    jackass dumbass dumbasses smartass fatass badass asshat tits titties boobs dildo jizz cum blowjob hell hella
    screw screwed sucks suck sucked sucker bloody bollocks tosser""")
PROFANE_ROOTS = (
    "fuck",
    "fuk",
    "motherf",
    "shit",
    "bullshit",
    "bitch",
    "asshole",
    "cunt",
    "dickhead",
    "whore",
    "slut",
    "pussy",
    "bastard",
    "wank",
    "douche",
    "cocksuck",
    "dumbass",
    "jackass",
)
INSULT = _words("""idiot idiots idiotic moron morons moronic stupid stupidity stupidest dumb dumber dumbest imbecile imbeciles
    loser losers pathetic disgusting disgust disgrace disgraceful shameful scum scumbag scumbags trash trashy
    garbage worthless useless ugly fat fatty clown clowns fool fools foolish jerk jerks creep creeps creepy pig pigs
    liar liars lying hypocrite hypocrites hypocritical ignorant coward cowards cowardly traitor traitors degenerate
    degenerates lunatic lunatics psycho psychos freak freaks nutjob nutjobs nutcase snowflake snowflakes libtard
    libtards sheep brainless clueless incompetent evil vile filth filthy sick sicko sickos crook crooks crooked
    thug thugs racist racists bigot bigots bigoted nazi nazis fascist fascists commie commies terrorist terrorists
    corrupt joke dimwit halfwit nitwit buffoon buffoons twit weirdo weirdos pervert perverts pedo pedophile
    pedophiles rapist rapists hag witch bimbo rat rats snake snakes maggot maggots parasite parasites leech vermin
    cretin cretins dunce lowlife lowlives ratchet hoodrat gross nasty stink stinks wimp sissy crybaby crybabies
    cuck cucks incel simp delusional insane crazy lunacy loony fraud phony traitorous treasonous moronic dummy
    dummies ass-kisser bootlicker shill shills puppet hoodlum savage savages animal animals scumbags ho""")
SLUR = _words("""nigga niggas nigger niggers niggaz nigguh negro negroes fag fags faggot faggots faggy dyke dykes tranny
    trannies kike kikes spic spics spick chink chinks wetback wetbacks raghead ragheads towelhead towelheads gook
    gooks coon coons beaner beaners paki pakis retard retards retarded tard homo homos queer queers redneck rednecks
    cracker crackers hillbilly hillbillies wop dago kraut jap japs gypsy gypsies ape apes monkey monkeys mongoloid
    spaz""")
SLUR_ROOTS = ("nigg", "fagg", "retard")
THREAT = _words("""kill killed killing die dead shoot shot hang hanged lynch burn beat stab rape raped murder
    exterminate deport gas choke punch slap""")
SECOND_PERSON = _words("you u ur your youre you're yourself ya yall y'all thou @user")
THIRD_PERSON = _words("he she they him her them his their this these those that")
COPULA = _words("is are was were be being been am 's 're such so a an total complete fucking bunch of")
_KILL_YOURSELF = re.compile(
    r"\b(kill (yo)?urself|kys|go die|drop dead|shut (the fuck |the hell )?up|go to hell|get lost|suck my|"
    r"eat shit|screw you|fuck (you|u|off|ur|your|them|him|her|this|that))\b"
)
_DEHUMANISING = re.compile(
    r"\b(are|is|be|like)\s+(\w+\s+)?(animals|vermin|parasites|subhuman|rats|cockroaches|apes|monkeys|a disease|"
    r"a plague|filth)\b|\b(should|must|deserve to|need to|ought to) (all )?(die|be (shot|killed|hanged|hung|"
    r"deported|exterminated|gassed|locked up|jailed))\b"
)
_KILL_ANCHORS = _words("kill kys go drop shut get suck eat screw fuck")
_DEHUMANISING_ANCHORS = _words(
    "animals vermin parasites subhuman rats cockroaches apes monkeys disease plague filth should must deserve need ought"
)
_NOT_LETTERS = bytes(c for c in range(256) if not chr(c).isascii() or not chr(c).isalpha())
_NOT_UPPER = bytes(c for c in range(256) if not chr(c).isascii() or not chr(c).isupper())
PROFANE, INSULTING, SLUR_KIND, THREATENING, YOU, THEM, LINK = 1, 2, 4, 8, 16, 32, 64
_OFFENSIVE = PROFANE | INSULTING | SLUR_KIND


def _kinds() -> dict[str, int]:
    kinds: dict[str, int] = {}
    for words, kind in (
        (PROFANITY, PROFANE),
        (INSULT, INSULTING),
        (SLUR, SLUR_KIND),
        (THREAT, THREATENING),
        (SECOND_PERSON, YOU),
        (THIRD_PERSON, THEM),
        (COPULA, LINK),
    ):
        for word in words:
            kinds[word] = kinds.get(word, 0) | kind
    return kinds


_KINDS = _kinds()
_ROOT_STARTS = tuple(sorted({root[:2] for root in PROFANE_ROOTS + SLUR_ROOTS}))


def _kind(token: str) -> int:
    kind = _KINDS.get(token)
    if kind is None:
        kind = (PROFANE if token.startswith(PROFANE_ROOTS) else 0) | (
            SLUR_KIND if token.startswith(SLUR_ROOTS) else 0
        )
    return kind


SIGNAL_NAMES: tuple[str, ...] = (
    "profanity",
    "insult",
    "slur",
    "threat",
    "any_lexicon",
    "aimed_at_reader",
    "aimed_at_someone",
    "direct_attack",
    "dehumanising",
    "masked_profanity",
    "shouting",
)


def _capped(count: int, cap: int = 3) -> float:
    return min(count, cap) / cap


def signals(text: str) -> list[float]:
    """The lexicon signals of one (tweet-normalised) text, each in [0, 1], in the order of ``SIGNAL_NAMES``."""
    head = text[:5000]
    lower = head.lower()
    tokens = _TOKEN.findall(lower)
    known = _KINDS.get
    kinds = [known(t, 0) or (_kind(t) if t.startswith(_ROOT_STARTS) else 0) for t in tokens]
    counts = dict.fromkeys((PROFANE, INSULTING, SLUR_KIND, THREATENING), 0)
    at_reader = at_someone = 0
    for index, kind in enumerate(kinds):
        if not kind & (_OFFENSIVE | THREATENING):
            continue
        for flag in counts:
            if kind & flag:
                counts[flag] += 1
        if not kind & _OFFENSIVE:
            continue
        window = 0
        for before in kinds[max(0, index - 4) : index]:
            window |= before
        if window & YOU:
            at_reader += 1
        elif window & THEM and window & LINK:
            at_someone += 1
    seen = set(tokens)
    ascii_head = head.encode("ascii", "ignore")
    letters = len(ascii_head.translate(None, _NOT_LETTERS))
    return [
        _capped(counts[PROFANE]),
        _capped(counts[INSULTING]),
        _capped(counts[SLUR_KIND]),
        _capped(counts[THREATENING]),
        float(counts[PROFANE] + counts[INSULTING] + counts[SLUR_KIND] > 0),
        _capped(at_reader),
        _capped(at_someone),
        _capped(len(_KILL_YOURSELF.findall(lower)), 2) if seen & _KILL_ANCHORS or "kys" in lower else 0.0,
        _capped(len(_DEHUMANISING.findall(lower)), 2) if seen & _DEHUMANISING_ANCHORS else 0.0,
        _capped(len(_MASKED.findall(lower)), 2)
        if "*" in lower or "-" in lower or "_" in lower or "#" in lower
        else 0.0,
        len(ascii_head.translate(None, _NOT_UPPER)) / letters if letters >= 20 else 0.0,
    ]
