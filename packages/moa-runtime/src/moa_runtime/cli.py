"""``moa generate``: stream a model's continuation of a prompt under a plan.

Registered in the entry-point group ``moa.commands``; the root ``moa`` group (moa_plan.cli) turns a
`moa_plan.MoaError` into "Error: <sentence>" and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from moa_runtime.cache import IMPLEMENTATIONS
from moa_runtime.errors import MoaRuntimeError

__all__ = ["generate_command"]

_DTYPES = ("float32", "bfloat16", "float16")


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if (prompt is None) == (prompt_file is None):
        raise MoaRuntimeError("give exactly one of --prompt or --file.")
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise MoaRuntimeError(f"prompt file {prompt_file} does not exist.")
        prompt = prompt_file.read_text(encoding="utf-8")
    assert prompt is not None
    if not prompt.strip():
        raise MoaRuntimeError("the prompt is empty." if prompt_file is None else f"prompt file {prompt_file} is empty.")
    return prompt


def _load(model_path: Path, plan_path: Path, dtype: str, device: str, trust_remote_code: bool) -> tuple[Any, Any, Any]:
    """Validate everything cheap first (paths, plan, fingerprint), then load tokenizer and weights."""
    from transformers.utils import logging as hf_logging

    from moa_plan import Plan
    from moa_runtime.loading import load_model, load_tokenizer, model_fingerprint

    hf_logging.disable_progress_bar()

    fingerprint = model_fingerprint(model_path, trust_remote_code=trust_remote_code)
    plan = Plan.load(plan_path)
    plan.check_compatible(fingerprint)
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    model = load_model(
        model_path, dtype=dtype, device=device, attn_implementation=None, trust_remote_code=trust_remote_code
    )
    return model, tokenizer, plan


def _echo_streamer(tokenizer: Any) -> Any:
    """A TextStreamer that writes the new text through click.echo as it is decoded."""
    from transformers import TextStreamer

    class EchoStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            click.echo(text, nl=stream_end)

    return EchoStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@click.command("generate")
@click.option(
    "--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory or .gguf file."
)
@click.option("--plan", "plan_path", required=True, type=click.Path(path_type=Path), help="Plan JSON for this model.")
@click.option("--prompt", default=None, help="Prompt text.")
@click.option(
    "--file", "prompt_file", default=None, type=click.Path(path_type=Path), help="Read the prompt from a file."
)
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--chat", is_flag=True, help="Wrap the prompt with the tokenizer's chat template.")
@click.option("--implementation", type=click.Choice(IMPLEMENTATIONS), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
@click.option("--dtype", type=click.Choice(["auto", *_DTYPES]), default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True, default=False, help="Allow model code from the model directory.")
@click.option(
    "--packed-linears",
    is_flag=True,
    default=False,
    help="CPU only: run the weight products through oneDNN-packed weights (moa_runtime.packed_linears; the same "
    "tokens, faster on the CPUs of BENCHMARKS.md, one more copy of the weights in memory).",
)
def generate_command(
    model_path: Path,
    plan_path: Path,
    prompt: str | None,
    prompt_file: Path | None,
    max_new_tokens: int,
    chat: bool,
    implementation: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    packed_linears: bool,
) -> None:
    """Generate from PROMPT with the model running under PLAN, streaming tokens to stdout (greedy)."""
    import torch

    from moa_runtime.attention import apply_plan

    text = _read_prompt(prompt, prompt_file)
    model, tokenizer, plan = _load(model_path, plan_path, dtype, device, trust_remote_code)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise MoaRuntimeError(f"the tokenizer in {model_path} has no chat template, so --chat cannot be used.")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise MoaRuntimeError("the prompt has no tokens.")
    apply_plan(model, plan, implementation=implementation)
    if packed_linears:
        from moa_runtime.linear import packed_linears as pack

        if model.device.type != "cpu":
            raise MoaRuntimeError(f"--packed-linears runs on the CPU only, and the model is on {model.device}.")
        pack(model)
    with torch.no_grad():
        model.generate(
            ids.to(model.device),
            attention_mask=torch.ones_like(ids).to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=_echo_streamer(tokenizer),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
