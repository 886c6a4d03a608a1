"""Build the reference model's word-level tokenizer (with its chat template) and save it.

Usage: ``python tools/build_tokenizer.py models/moa-reference``. The vocabulary is
`moa_plan.tasks.vocabulary()` plus special tokens; text is split on whitespace and decoded
with single spaces.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from moa_plan.tasks import vocabulary

SPECIALS = ("<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{{ '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer: special tokens first, then `vocabulary().words()`."""
    words = list(SPECIALS) + list(vocabulary().words())
    if len(set(words)) != len(words):
        raise RuntimeError("task vocabulary has duplicate words")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "models/moa-reference")
    build_tokenizer().save_pretrained(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
