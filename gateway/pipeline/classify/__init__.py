"""Request classification: what is asked, scored per category, mapped to the tier's action.

    prompt_text(ctx) ──► Chain ─────────────────────────────► Verdict ──► ClassifyStage
                          ├─ rules      (regex per category,  cheap)      block: 400
                          ├─ structure  (many-shot, overrides, smuggling)  flag: allowed
                          ├─ embedding  (MiniLM + trained head, worker thread)
                          └─ guard      (Llama Guard 3 on vLLM, off by default)
    model output ──► ModerationFilter (rules + structure only, hold-back window)
                          └─ raises OutputBlocked

Modules: `text` (PromptText, fold, prompt_hash), `verdict` (Verdict, combination),
`rules`, `structure`, `embedding`, `guard` (one classifier each, seam
`async def score(text) -> dict[str, float]`), `chain`, `stage`, `moderation`,
`runtime` (ClassifyRuntime: the long-lived model and the per-policy builders), `eval`
(`gateway eval classify`), `train` (fits the embedding head).
"""

from gateway.pipeline.classify.chain import Chain, Scored
from gateway.pipeline.classify.moderation import ModerationFilter, OutputBlocked, OutputCheck
from gateway.pipeline.classify.runtime import ClassifyConfigError, ClassifyRuntime
from gateway.pipeline.classify.stage import ClassifyStage
from gateway.pipeline.classify.text import PromptText, prompt_hash, prompt_text
from gateway.pipeline.classify.verdict import Verdict

__all__ = [
    "Chain",
    "ClassifyConfigError",
    "ClassifyRuntime",
    "ClassifyStage",
    "ModerationFilter",
    "OutputBlocked",
    "OutputCheck",
    "PromptText",
    "Scored",
    "Verdict",
    "prompt_hash",
    "prompt_text",
]
