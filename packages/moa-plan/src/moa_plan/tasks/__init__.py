"""Synthetic long-context tasks: deterministic generators of `moa_plan.Record`s and exact scorers.

Pure Python + numpy; the tokenizer is only seen through a token-counting callable.
"""

from moa_plan.tasks.generators import (
    CHAT_TASKS,
    TASKS,
    TaskError,
    TokenCounter,
    generate,
    generate_lines,
    generate_local,
    generate_multikey,
    generate_passkey,
    generate_rewrite,
    to_messages,
    word_count,
)
from moa_plan.tasks.scoring import accuracy, normalize, score
from moa_plan.tasks.vocab import MarkovChain, Vocabulary, markov_chain, vocabulary

__all__ = [
    "CHAT_TASKS",
    "TASKS",
    "MarkovChain",
    "TaskError",
    "TokenCounter",
    "Vocabulary",
    "accuracy",
    "generate",
    "generate_lines",
    "generate_local",
    "generate_multikey",
    "generate_passkey",
    "generate_rewrite",
    "markov_chain",
    "normalize",
    "score",
    "to_messages",
    "vocabulary",
    "word_count",
]
