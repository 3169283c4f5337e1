"""ContextGuard's memory: the history sent upstream with a conversation's next turn.

The system prompt, then the most recent turns verbatim, as many as fit in the model's context window less
the room kept for the answer, and within the policy's token budget. When not every stored turn fits, the
conversation's stored summary (written by the model in the background) stands in for the turns it covers.
What is left out is reported as tokens saved. Counting is :mod:`aiguardian.usage.tokens`, as for usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiguardian.usage import tokens
from aiguardian.usage.service import ContextExceeded

SUMMARY_PREFIX = "Summary of the conversation so far:\n"


@dataclass(frozen=True, slots=True)
class Turn:
    id: int
    role: str
    content: str
    tokens: int  # tokens.count_message of this message, framing included

    def message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class History:
    messages: list[dict[str, str]]  # to send upstream, in order
    tokens: int  # their prompt tokens, counted as usage counts a prompt (reply priming included)
    full_tokens: int  # what sending every stored turn verbatim would have taken
    dropped: int  # stored turns not sent verbatim
    summarised: bool  # the summary stood in for older turns

    @property
    def saved_tokens(self) -> int:
        return max(0, self.full_tokens - self.tokens)


def limit_of(window: int, reserve: int, budget: int | None) -> int:
    """The most prompt tokens a history may take: the window less ``reserve`` (room for the answer), and no
    more than ``budget`` (the policy's token budget)."""
    limit = window - reserve
    return limit if budget is None else min(limit, budget)


def build_history(
    *,
    system_prompt: str,
    summary: str | None,
    summary_upto: int | None,
    turns: Sequence[Turn],
    limit: int,
    earlier_tokens: int = 0,
    earlier_count: int = 0,
) -> History:
    """The history for the last of ``turns`` (the new message, sent in any case), at most ``limit`` tokens.

    ``turns`` are oldest first and may be only the most recent of the stored ones: the ones before them
    (``earlier_count`` turns, ``earlier_tokens`` tokens) could not fit anyway. Raises ContextExceeded when
    not even the system prompt and the new message fit.
    """
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    head_tokens = tokens.REPLY_PRIMING + sum(tokens.count_message(m) for m in head)
    full_tokens = head_tokens + earlier_tokens + sum(turn.tokens for turn in turns)
    stored = earlier_count + len(turns)
    if earlier_count == 0 and full_tokens <= limit:
        messages = head + [turn.message() for turn in turns]
        return History(messages, full_tokens, full_tokens, dropped=0, summarised=False)

    candidates = list(turns)
    summarised = False
    if summary and summary_upto is not None and turns:
        note = {"role": "system", "content": SUMMARY_PREFIX + summary}
        note_tokens = tokens.count_message(note)
        # Only when it leaves room for the new message: the summary is worth less than what is asked now.
        if head_tokens + note_tokens + turns[-1].tokens <= limit:
            head.append(note)
            head_tokens += note_tokens
            candidates = [turn for turn in turns if turn.id > summary_upto]
            summarised = True

    kept: list[Turn] = []
    used = head_tokens
    for turn in reversed(candidates):  # newest first; the first that does not fit ends the history
        if used + turn.tokens > limit:
            break
        kept.append(turn)
        used += turn.tokens
    if turns and (not kept or kept[0] is not turns[-1]):
        raise ContextExceeded(
            f"the system prompt and this message take about {head_tokens + turns[-1].tokens} tokens; "
            f"the model's context window and token budget leave {limit}",
            details=[
                {"field": "body.message", "message": f"{head_tokens + turns[-1].tokens} tokens > {limit}"}
            ],
        )
    kept.reverse()
    messages = head + [turn.message() for turn in kept]
    return History(messages, used, full_tokens, dropped=stored - len(kept), summarised=summarised)
