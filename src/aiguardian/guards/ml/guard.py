"""A guard around one :class:`TextClassifierTask`: score the text (and, for a long text, each of its parts),
compare with the threshold, answer a verdict with a finding on the part that scored highest."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.ml.classifier import TextClassifierTask
from aiguardian.guards.ml.linear import sigmoid
from aiguardian.guards.ml.text import segments
from aiguardian.guards.tasks import MODELS_DIR


class ClassifierGuard:
    """Options: ``threshold`` (on the model's score in [0, 1]; default: the threshold chosen in training),
    ``action`` (``block`` or ``warn``).

    A text longer than ``SEGMENT_ABOVE`` characters is also scored line by line and sentence by sentence (one
    hashing pass), so one hateful sentence in a long answer is not averaged away.
    """

    name: ClassVar[str]
    cpu_bound: ClassVar[bool] = True  # a long text goes to the pipeline's worker thread
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it
    task: ClassVar[TextClassifierTask]
    reason: ClassVar[str]
    finding: ClassVar[str]
    SEGMENT_ABOVE: ClassVar[int] = 300

    def __init__(
        self,
        threshold: float | None = None,
        action: Literal["block", "warn"] = "block",
        models_dir: str | None = None,
    ) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if action not in ("block", "warn"):
            raise ValueError("action must be 'block' or 'warn'")
        self.models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
        self.model = self.task.model(self.models_dir)
        self.threshold = self.model.threshold if threshold is None else threshold
        self.action = Action(action)

    def score(self, text: str) -> tuple[float, tuple[int, int] | None]:
        """The text's score and, when a part of it scored highest, that part's span."""
        spans = segments(text, long_line=200) if len(text) > self.SEGMENT_ABOVE else []
        if len(spans) < 2:
            return float(self.task.scores([text], self.models_dir)[0]), None
        pieces = [text[s:e] for s, e in spans]
        per_segment, whole = self.model.featurizer.transform_segments(pieces)
        # The n-gram part picks the worst segment; the (slower) signals are computed for it and the whole only.
        top = int(
            np.argmax(self.model.margins(per_segment, np.zeros((len(pieces), len(self.model.signal_names)))))
        )
        top_row = self.model.featurizer.transform([pieces[top]])
        top_margin = self.model.margins(top_row, self.task.signal_matrix([pieces[top]]))[0]
        overall = self.model.margins(whole, self.task.signal_matrix([text]))[0]
        if top_margin > overall:
            return float(sigmoid(np.array([top_margin]))[0]), spans[top]
        return float(sigmoid(np.array([overall]))[0]), None

    def check(self, context: GuardContext) -> Verdict:
        verdict = Verdict(guard=self.name)
        if not context.text.strip():
            return verdict
        verdict.score, span = self.score(context.text)
        if verdict.score >= self.threshold:
            start, end = span if span else (None, None)
            verdict.findings.append(Finding(self.finding, start, end, verdict.score))
            verdict.action = self.action
            verdict.reason_codes = [self.reason]
        return verdict
