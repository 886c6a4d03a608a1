"""Long-context tasks: deterministic generators of `moa_plan.Record`s and their scorers.

Toy-vocabulary tasks (`TASKS`, for the reference model) and real-language tasks on Paul Graham's
essays (`ENGLISH_TASKS`, `moa_plan.tasks.english`); `generate` serves both. Pure Python + numpy;
the tokenizer is only seen through a token-counting callable.
"""

from moa_plan.tasks.english import (
    ENGLISH_TASKS,
    FORMS,
    RETRIEVAL_TASKS,
    completion_prompt,
    essay_ppl_texts,
    essay_split,
    generate_english,
    split_sentences,
)
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
from moa_plan.tasks.scoring import accuracy, first_number, keyword_recall, normalize, score
from moa_plan.tasks.vocab import MarkovChain, Vocabulary, markov_chain, vocabulary

__all__ = [
    "CHAT_TASKS",
    "ENGLISH_TASKS",
    "FORMS",
    "RETRIEVAL_TASKS",
    "TASKS",
    "MarkovChain",
    "TaskError",
    "TokenCounter",
    "Vocabulary",
    "accuracy",
    "completion_prompt",
    "essay_ppl_texts",
    "essay_split",
    "first_number",
    "generate",
    "generate_english",
    "generate_lines",
    "generate_local",
    "generate_multikey",
    "generate_passkey",
    "generate_rewrite",
    "keyword_recall",
    "markov_chain",
    "normalize",
    "score",
    "split_sentences",
    "to_messages",
    "vocabulary",
    "word_count",
]
