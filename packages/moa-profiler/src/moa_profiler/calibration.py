"""Build a model-aligned calibration set: chat template, greedy answers from the model, exact lengths.

For each record the prompt (chat template with ``add_generation_prompt=True``, or plain text) is
tokenised once with character offsets, which locate the context tokens. With ``fit="largest"``
(synthetic tasks drawn just above each length) a record goes to the largest bucket N not longer
than its prompt; with ``fit="each"`` (documents, as MoA does) it feeds every bucket it can fill,
one sample per bucket, each answered by the model for its own cut. Either way the context is cut
in the middle so that ``prompt + answer`` has exactly N tokens. The answer length is only known after generation, so
generation runs in rounds: first on the prompt cut for a ``max_new_tokens`` answer; an answer of
``a < cap`` tokens re-fits the prompt for exactly ``a`` answer tokens and regenerates with cap ``a``
until the answer fills its room (lengths only shrink, so this ends; usually after two rounds).
The stored tokens are the prompt the model saw and the tokens it generated; the answer span is
located from the template: the rendered conversation must start with the rendered generation
prompt (token for token), and the answer starts right after it.

``answers="reference"`` is the other choice (DuoAttention's, for its passkeys): the answer is the
record's own reference (``record.answer``, else ``metadata["reference"]``: the asked line's
value in the recall tasks), tokenised as the continuation of the prompt and cut at
``max_new_tokens``; nothing is generated. Model alignment (MoA's choice) keeps what the model
says, so where a small model answers a far question wrongly (copying the nearest line), its loss
measures the heads behind the wrong copy; the reference measures the heads a right answer needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from moa_plan import Record
from moa_profiler.dataset import CalibrationSample
from moa_profiler.errors import CalibrationError
from moa_profiler.generation import generate_greedy, stop_token_ids

__all__ = ["CalibrationSettings", "EncodedPrompt", "build_calibration", "encode_prompt", "fit_prompt", "reference_text"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
    """How records become calibration samples.

    Attributes:
        buckets: Exact sample lengths N (tokens).
        max_new_tokens: Cap on answer tokens.
        batch_size: Generation batch (left padded).
        template: ``chat`` (the tokenizer's chat template, required) or ``plain`` (raw text). Records in
            completion form (``metadata["format"] == "completion"``) are always plain text.
        max_cut: Largest fraction of a record's context that fitting may remove.
        skip_unfit: Drop records that fit no bucket (with a warning) instead of failing.
        max_per_bucket: Keep at most this many samples per bucket (None: all).
        system: Optional system message for the chat template.
        fit: ``largest``: a record feeds the largest bucket it fills, cutting at most ``max_cut``
            of its context. ``each``: a record feeds every bucket not longer than its prompt
            (``max_cut`` does not apply: cutting a document to each length is the point).
        answers: ``model`` (greedy answers of the model: model alignment) or ``reference`` (each
            record's reference answer; see the module docstring).
    """

    buckets: tuple[int, ...]
    max_new_tokens: int = 64
    batch_size: int = 4
    template: str = "chat"
    max_cut: float = 0.5
    skip_unfit: bool = False
    max_per_bucket: int | None = None
    system: str | None = None
    fit: str = "largest"
    answers: str = "model"

    def __post_init__(self) -> None:
        if self.fit not in ("largest", "each"):
            raise CalibrationError(f"fit must be 'largest' or 'each', got {self.fit!r}")
        if self.answers not in ("model", "reference"):
            raise CalibrationError(f"answers must be 'model' or 'reference', got {self.answers!r}")


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenised prompt with its context tokens at ``ids[c0:c1]``."""

    ids: list[int]
    c0: int
    c1: int
    text: str
    messages: list[dict[str, str]] | None
    special: bool = False  # whether the tokenizer added its special tokens (plain text does)

    @property
    def overhead(self) -> int:
        """Prompt tokens that are not context (template, question)."""
        return len(self.ids) - (self.c1 - self.c0)


def _user_text(record: Record) -> str:
    return f"{record.context}\n{record.question}" if record.question else record.context


def encode_prompt(
    tokenizer: Any, record: Record, *, template: str = "chat", system: str | None = None
) -> EncodedPrompt:
    """Render and tokenise a record's prompt; locate its context tokens by character offsets.

    Raises:
        CalibrationError: no chat template (when required), a template that drops the context,
            or a tokenizer without offsets.
    """
    if not record.context.strip():
        raise CalibrationError(f"a {record.task!r} record has an empty context")
    user = _user_text(record)
    messages = None
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise CalibrationError(
                "the tokenizer has no chat template, which --template chat requires (use --template plain for base models)"
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        special = False
    else:
        text, special = user, True
    if not getattr(tokenizer, "is_fast", False):
        raise CalibrationError("calibration needs a fast tokenizer (character offsets locate the context)")
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    pos = text.find(record.context)
    if pos < 0:
        raise CalibrationError("the chat template does not contain the record's context verbatim")
    end = pos + len(record.context)
    inside = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a >= pos and b <= end]
    if not inside:
        raise CalibrationError(f"a {record.task!r} record's context has no token of its own")
    return EncodedPrompt(list(enc["input_ids"]), inside[0], inside[-1] + 1, text, messages, special)


def fit_prompt(prompt: EncodedPrompt, keep: int) -> list[int]:
    """The prompt with only ``keep`` context tokens: the first and last halves, the middle cut."""
    head = keep // 2
    tail = keep - head
    ids = prompt.ids
    return ids[: prompt.c0 + head] + ids[prompt.c1 - tail : prompt.c1] + ids[prompt.c1 :]


def _buckets(prompt: EncodedPrompt, settings: CalibrationSettings, name: str) -> list[int]:
    """The buckets the prompt feeds (the largest it fills, or each it fills); an error or [] when none."""
    size, context, cap = len(prompt.ids), prompt.c1 - prompt.c0, settings.max_new_tokens
    fitting = [b for b in sorted(settings.buckets) if b <= size]
    problem = None
    if not fitting:
        problem = (
            f"{name} has {size} prompt tokens, shorter than every bucket ({min(settings.buckets)} is the smallest)"
        )
    else:
        chosen = fitting if settings.fit == "each" else fitting[-1:]
        room = [b for b in chosen if b - cap - prompt.overhead >= 2]
        keep = chosen[-1] - cap - prompt.overhead
        if not room:
            problem = f"{name}: template and question ({prompt.overhead} tokens) plus a {cap}-token answer do not fit bucket {chosen[-1]}"
        elif settings.fit == "largest" and (context - keep) / context > settings.max_cut:
            problem = (
                f"{name} has {size} prompt tokens, longer than every bucket: fitting it to {chosen[-1]} would cut "
                f"{(context - keep) / context:.0%} of its context (--max-cut {settings.max_cut:g})"
            )
        else:
            return room
    if settings.skip_unfit:
        logger.warning("skipping %s", problem)
        return []
    raise CalibrationError(problem)


def _check_template(tokenizer: Any, prompt: EncodedPrompt, answer: list[int], stops: set[int], name: str) -> bool:
    """Check the rendered conversation starts with the generation prompt; True if the answer re-renders exactly."""
    if prompt.messages is None:
        return True
    content = answer[:-1] if answer and answer[-1] in stops else answer
    reply = tokenizer.decode(content, skip_special_tokens=True)
    full = tokenizer.apply_chat_template(
        [*prompt.messages, {"role": "assistant", "content": reply}], tokenize=False, add_generation_prompt=False
    )
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if not full.startswith(prompt.text) or full_ids[: len(prompt.ids)] != prompt.ids:
        raise CalibrationError(
            f"{name}: the chat template does not render the generation prompt as a prefix of the conversation, "
            "so the answer span cannot be located"
        )
    return full_ids[len(prompt.ids) : len(prompt.ids) + len(content)] == content


def _answer_in_rounds(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: dict[tuple[int, int], tuple[EncodedPrompt, int]],
    settings: CalibrationSettings,
    stops: set[int],
    progress: bool,
) -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    """Generate until every answer fills the room its fitted prompt leaves: ``{index: (prompt ids, answer ids)}``."""
    pending = {index: settings.max_new_tokens for index in prompts}
    done: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    bar = tqdm(total=len(prompts), desc="answering", unit="sample", disable=not progress)
    while pending:
        order = sorted(pending)
        fitted = [fit_prompt(prompts[i][0], prompts[i][1] - pending[i] - prompts[i][0].overhead) for i in order]
        answers = generate_greedy(
            model, tokenizer, fitted, [pending[i] for i in order], stops=stops, batch_size=settings.batch_size
        )
        shorter = {}
        for i, ids, answer in zip(order, fitted, answers, strict=True):
            if len(answer) == pending[i]:
                done[i] = (ids, answer)
                bar.update(1)
            else:
                # Refit with room for exactly this many answer tokens and answer again (cap = that many).
                shorter[i] = len(answer)
        pending = shorter
    bar.close()
    return done


def reference_text(record: Record) -> str:
    """The reference answer of a record as the text that continues its prompt.

    Raises:
        CalibrationError: if the record has neither ``answer`` nor ``metadata["reference"]``.
    """
    answer = record.answer if record.answer is not None else record.metadata.get("reference")
    if answer is None or not str(answer).strip():
        raise CalibrationError(f"a {record.task!r} record has no reference answer (answers='reference' needs one)")
    text = str(answer)
    # A completion-form question ends at the word before the answer, so the answer starts a new word, unless the
    # question ends in whitespace or an opening quote or bracket (`wrote in the notebook: "`).
    ending = (record.question or record.context)[-1:]
    if record.metadata.get("format") != "completion" or text[:1].isspace() or ending.isspace() or ending in "\"'([{":
        return text
    return " " + text


def _reference_answers(
    tokenizer: Any,
    records: Sequence[Record],
    prompts: dict[tuple[int, int], tuple[EncodedPrompt, int]],
    settings: CalibrationSettings,
) -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    """Each record's reference answer (at most ``max_new_tokens`` tokens) after its prompt fitted to the rest."""
    done = {}
    for key, (prompt, bucket) in prompts.items():
        reference = reference_text(records[key[0]])
        ids = list(tokenizer(prompt.text + reference, add_special_tokens=prompt.special)["input_ids"])
        # The answer is what tokenising prompt + answer together adds after the prompt's tokens; where the two
        # merge a token across the seam, the answer tokenised alone.
        if ids[: len(prompt.ids)] == prompt.ids and len(ids) > len(prompt.ids):
            answer = ids[len(prompt.ids) :]
        else:
            answer = list(tokenizer(reference, add_special_tokens=False)["input_ids"])
        answer = answer[: settings.max_new_tokens]
        done[key] = (fit_prompt(prompt, bucket - len(answer) - prompt.overhead), answer)
    return done


def build_calibration(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    settings: CalibrationSettings,
    *,
    source: str = "",
    progress: bool = False,
) -> list[CalibrationSample]:
    """Fit records to buckets and answer them with the model (greedy); see the module docstring.

    Raises:
        CalibrationError: empty input, a record that fits no bucket (unless ``skip_unfit``), no chat
            template, or a template whose generation prompt is not a prefix of the conversation.
    """
    if not records:
        raise CalibrationError("the calibration input holds no records")
    prompts: dict[tuple[int, int], tuple[EncodedPrompt, int]] = {}
    per_bucket: dict[int, int] = {}
    for index, record in enumerate(records):
        # A completion-form record (its question ends with the start of the answer) is plain text whatever
        # the template: the model continues it.
        template = "plain" if record.metadata.get("format") == "completion" else settings.template
        prompt = encode_prompt(tokenizer, record, template=template, system=settings.system)
        for bucket in _buckets(prompt, settings, f"record {index} ({record.task})"):
            if per_bucket.get(bucket, 0) >= (settings.max_per_bucket or len(records)):
                continue
            per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
            prompts[(index, bucket)] = (prompt, bucket)
    if not prompts:
        raise CalibrationError("no record fits any bucket")
    stops = stop_token_ids(model, tokenizer)
    if settings.answers == "reference":
        done = _reference_answers(tokenizer, records, prompts, settings)
    else:
        done = _answer_in_rounds(model, tokenizer, prompts, settings, stops, progress)
    samples, mismatched = [], 0
    several = settings.fit == "each" and len(settings.buckets) > 1
    for key in sorted(done):
        i = key[0]
        prompt, bucket = prompts[key]
        ids, answer = done[key]
        record = records[i]
        if settings.answers == "model":
            mismatched += not _check_template(tokenizer, prompt, answer, stops, f"record {i}")
        samples.append(
            CalibrationSample(
                sample_id=f"{record.task}-{i}-{bucket}" if several else f"{record.task}-{i}",
                bucket=bucket,
                input_ids=ids + answer,
                answer_start=len(ids),
                answer_end=len(ids) + len(answer),
                source=source,
                task=record.task,
                record_index=i,
                context_tokens=prompt.c1 - prompt.c0,
                cut_tokens=len(prompt.ids) - len(ids),
            )
        )
    if mismatched:
        logger.warning(
            "%d answers do not re-tokenise to the generated tokens; the generated tokens are kept", mismatched
        )
    return samples
