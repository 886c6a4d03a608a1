"""NVIDIA kvpress presses on exactly the prompts `moa eval retrieval` scores, at the same KV fraction.

The peer baseline a user tries first: StreamingLLM, SnapKV, ExpectedAttention and Knorm from
kvpress, each with ``compression_ratio = 1 - kv_fraction``, on the English retrieval tasks
(``niah``, ``passkey-en``) in completion form, seed 1234, as `moa.evaluate.retrieval_eval`
renders them: ``completion_prompt(record)``, BOS as the tokenizer adds it, greedy decoding of
``ANSWER_TOKENS[task]`` new tokens, scored by `moa_plan.tasks.score`.

kvpress pins transformers < 5.3 and the project runs 5.24, so this script lives in a venv of its
own and is a dependency of nothing. Set the venv up once (any ``python3``; torch is pinned first so
pip takes the local CPU wheel instead of a multi-GB CUDA build)::

    python3 tools/kvpress_baseline.py --setup ~/.cache/moa/kvpress-venv
    # = python3 -m venv VENV && VENV/bin/pip install torch==2.13.0
    #   && VENV/bin/pip install kvpress==0.5.5 transformers==5.2.0 pydantic numpy

then run it from the repository root with that venv's python::

    nice -n 10 ~/.cache/moa/kvpress-venv/bin/python tools/kvpress_baseline.py --out runs/kvpress

The project's packages are not installed there: the prompt generators and scorer are imported
from ``packages/moa-plan/src`` (pure Python + pydantic + numpy).

Two protocols, on the same token ids (the prompt tokenized whole, then split where the context
ends):

- ``aware``: the whole prompt, question included, is prefilled under the press, then greedy
  generation; what ``with press(model): model.generate(...)`` does (the first new token comes
  from the prefill's own, uncompressed attention; every later one reads the compressed cache).
- ``agnostic``: kvpress's pipeline protocol (`KVPressTextGenerationPipeline._forward`): the
  context is prefilled under the press, then the question tokens are fed at their original
  positions and the answer is generated; the press never sees the question, as in a multi-turn
  chat and as a static moa plan. The question's own KV is kept whole.

During a prefill the press only rewrites the cache after each layer's attention, so every layer's
inputs are those of the dense prefill. One dense prefill therefore serves every press and
fraction: each press's own ``compress`` runs on the same per-layer arguments kvpress's forward
hook would pass it, and each gets its own cache. ``--verify`` checks this against kvpress's own
code paths (``model.generate`` under the press; the pipeline's ``_forward``) on the first prompt.

Output (``--out DIR``): ``kvpress.parquet`` / ``kvpress.csv`` with rows ``press, protocol,
kv_fraction, task, length, decile, correct, total, accuracy, kv_density`` (``kv_density``: cache
entries at the end of the answer over tokens seen), ``kvpress.md``, the accuracy table, and
``answers.jsonl``, every answer, appended record by record (``--resume`` keeps those already
there and evaluates the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEED = 1234
# Pins of the venv: torch first (the local CPU wheel), then kvpress and the last transformers it allows.
SETUP_PINS = (("torch==2.13.0",), ("kvpress==0.5.5", "transformers==5.2.0", "pydantic", "numpy"))
# New tokens per answer and the BOS rule, as in moa.evaluate (ANSWER_TOKENS, _special_overhead).
ANSWER_TOKENS = {"niah": 16, "niah-multi": 24, "passkey-en": 8, "lines-en": 8}
PRESSES = ("StreamingLLM", "SnapKV", "ExpectedAttention", "Knorm")
PROTOCOLS = ("aware", "agnostic")


class BadInputError(Exception):
    """A bad option or a missing file: one sentence on stderr, exit code 2."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """One compressed cache to evaluate: a press at a KV fraction (``press="dense"``: none)."""

    press: str
    kv_fraction: float

    @property
    def key(self) -> tuple[str, float]:
        return (self.press, self.kv_fraction)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", metavar="VENV", help="create the kvpress venv at VENV and exit")
    parser.add_argument("--out", metavar="DIR", help="write kvpress.parquet, kvpress.csv and kvpress.md here")
    parser.add_argument("--model", help="HF model directory (default: moa_plan.assets.model_dir())")
    parser.add_argument("--lengths", default="2048,4096", help="prompt lengths in tokens (default 2048,4096)")
    parser.add_argument("--samples", type=int, default=10, help="prompts per task and length (10 = one per decile)")
    parser.add_argument("--tasks", default="niah,passkey-en", help="English retrieval tasks (default niah,passkey-en)")
    parser.add_argument("--fractions", default="0.5,0.25", help="KV fractions kept (default 0.5,0.25)")
    parser.add_argument("--presses", default=",".join(PRESSES), help=f"presses (default {','.join(PRESSES)})")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="aware, agnostic or both (default)")
    parser.add_argument(
        "--skip", default="", help="PRESS:FRACTION pairs to leave out, e.g. Knorm:0.5,ExpectedAttention:0.5"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default torch's; 1 is faster on a busy machine)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the records DIR/answers.jsonl already has")
    parser.add_argument("--verify", action="store_true", help="check the first prompt against kvpress's own paths")
    return parser.parse_args(argv)


def setup(venv: Path) -> None:
    """Create the venv: python3 -m venv, then torch alone, then kvpress and its transformers."""
    steps = [[sys.executable, "-m", "venv", str(venv)]]
    steps += [[str(venv / "bin" / "pip"), "install", *pins] for pins in SETUP_PINS]
    for step in steps:
        print("+", " ".join(step), file=sys.stderr)
        if subprocess.run(step).returncode != 0:
            raise BadInputError(f"setup step failed: {' '.join(step)}")


def _press_name(name: str) -> str:
    by_lower = {p.lower(): p for p in PRESSES} | {f"{p.lower()}press": p for p in PRESSES}
    if name.lower() not in by_lower:
        raise BadInputError(f"unknown press {name!r}; expected some of {', '.join(PRESSES)}")
    return by_lower[name.lower()]


def configs(args: argparse.Namespace) -> list[Config]:
    """Dense first, then every press at every fraction, less ``--skip``.

    Raises:
        BadInputError: for an unknown press, a fraction outside (0, 1] or a malformed ``--skip``.
    """
    try:
        fractions = [float(f) for f in _csv(args.fractions)]
    except ValueError:
        raise BadInputError(f"--fractions {args.fractions!r} is not a comma-separated list of numbers") from None
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise BadInputError(f"--fractions {args.fractions!r}: every KV fraction must lie in (0, 1]")
    skip = set()
    for item in _csv(args.skip):
        press, _, fraction = item.partition(":")
        try:
            skip.add((_press_name(press), float(fraction)))
        except ValueError:
            raise BadInputError(f"--skip {item!r} is not PRESS:FRACTION") from None
    out = [Config(press="dense", kv_fraction=1.0)]
    out += [Config(press=p, kv_fraction=f) for p in map(_press_name, _csv(args.presses)) for f in fractions]
    return [c for c in out if c.key not in skip]


def make_press(config: Config) -> Any:
    """The kvpress press of a config, with its defaults and ``compression_ratio = 1 - kv_fraction``."""
    import kvpress

    return getattr(kvpress, f"{config.press}Press")(compression_ratio=1.0 - config.kv_fraction)


def check_inputs(args: argparse.Namespace) -> tuple[Path, list[str], list[int], list[str]]:
    """Model directory, tasks, lengths and protocols from the options.

    Raises:
        BadInputError: for a missing model directory or output option, or an unknown task or protocol.
    """
    sys.path.insert(0, str(REPO / "packages" / "moa-plan" / "src"))
    from moa_plan.assets import model_dir
    from moa_plan.tasks import RETRIEVAL_TASKS

    if not args.out:
        raise BadInputError("--out DIR is required (or --setup VENV)")
    model = Path(args.model).expanduser() if args.model else model_dir()
    if not (model / "config.json").is_file():
        raise BadInputError(f"model directory {model} not found (no config.json); fetch it with `moa assets`")
    tasks = _csv(args.tasks)
    for task in tasks:
        if task not in RETRIEVAL_TASKS:
            raise BadInputError(f"unknown task {task!r}; expected some of {', '.join(RETRIEVAL_TASKS)}")
    try:
        lengths = [int(n) for n in _csv(args.lengths)]
    except ValueError:
        raise BadInputError(f"--lengths {args.lengths!r} is not a comma-separated list of integers") from None
    protocols = _csv(args.protocols)
    if not protocols or not set(protocols) <= set(PROTOCOLS):
        raise BadInputError(f"--protocols {args.protocols!r}: expected some of {', '.join(PROTOCOLS)}")
    if args.samples < 1:
        raise BadInputError("--samples must be at least 1")
    return model, tasks, lengths, protocols


def load(model_path: Path) -> tuple[Any, Any]:
    """Model (fp32, SDPA, CPU, eval) and tokenizer, offline, as `moa.evaluate.load_model` loads them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True, use_safetensors=True
    )
    return model.eval(), tokenizer


def records(tokenizer: Any, task: str, length: int, samples: int) -> list[Any]:
    """The records `moa eval retrieval` draws for (task, length): completion form, seed 1234."""
    from moa_plan.tasks import generate

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    # Tokens the tokenizer adds to plain text itself (moa.evaluate._special_overhead).
    overhead = len(tokenizer("a").input_ids) - len(tokenizer("a", add_special_tokens=False).input_ids)
    return generate(
        task, samples, target_length=length, count_tokens=count, seed=SEED, overhead=overhead, form="completion"
    )


def split_prompt(tokenizer: Any, record: Any) -> tuple[list[int], int]:
    """Token ids of the completion prompt (BOS as the tokenizer adds it) and how many are context.

    The prompt is tokenized whole, so both protocols see the same ids; a token that straddles
    the end of the context counts as context.
    """
    from moa_plan.tasks import completion_prompt

    enc = tokenizer(completion_prompt(record), add_special_tokens=True, return_offsets_mapping=True)
    n_context = sum(start < len(record.context) for start, _ in enc.offset_mapping)
    return list(enc.input_ids), n_context


def _fanout(presses: dict[tuple[str, float], Any]) -> Any:
    """A press that leaves the cache dense and keeps what each press's ``compress`` would have kept."""
    from kvpress import BasePress

    class Fanout(BasePress):
        def __init__(self) -> None:
            self.kept: dict[tuple[str, float], list[tuple[Any, Any]]] = {key: [] for key in presses}

        def post_init_from_model(self, model: Any) -> None:
            for press in presses.values():
                if press is not None:
                    press.post_init_from_model(model)

        def compress(
            self, module: Any, hidden_states: Any, keys: Any, values: Any, attentions: Any, kwargs: dict
        ) -> tuple[Any, Any]:
            for key, press in presses.items():
                if press is None:
                    self.kept[key].append((keys, values))
                else:
                    self.kept[key].append(press.compress(module, hidden_states, keys, values, attentions, kwargs))
            return keys, values

    return Fanout()


def prefill(model: Any, ids: list[int], cfgs: Sequence[Config], *, logits: bool) -> tuple[Any, dict]:
    """One dense prefill; per config, the per-layer ``(keys, values)`` its press keeps.

    Returns:
        The last position's logits ``[vocab]`` (None unless ``logits``) and ``{config.key:
        [(keys [1, H, S', D], values [1, H, S', D]) per layer]}``.
    """
    import torch
    from transformers import DynamicCache

    fan = _fanout({c.key: None if c.press == "dense" else make_press(c) for c in cfgs})
    input_ids = torch.tensor([ids])
    with torch.inference_mode(), fan(model):
        if logits:
            out = model(input_ids=input_ids, past_key_values=DynamicCache(), logits_to_keep=1).logits[0, -1]
        else:
            # As kvpress's pipeline prefills the context: the decoder alone, no LM head.
            model.model(input_ids=input_ids, past_key_values=DynamicCache())
            out = None
    return out, fan.kept


def greedy(
    model: Any, layers: list[tuple[Any, Any]], first: Any, after: list[int], start: int, new_tokens: int, eos: set[int]
) -> tuple[list[int], int]:
    """Greedy answer from a (compressed) cache, as kvpress's ``generate_answer`` decodes.

    Args:
        layers: Per-layer ``(keys, values)`` the cache starts from.
        first: Logits of the prompt's last token (aware protocol), or None to feed ``after`` first.
        after: Tokens to feed before answering (the question, agnostic protocol), at positions
            ``start, start + 1, ...`` whatever the cache holds.
        start: Position of the first token fed (the prompt length so far).

    Returns:
        The new token ids (up to the first EOS, included) and the cache length at the end.
    """
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=layers)
    position = start
    with torch.inference_mode():
        if after:
            positions = torch.arange(start, start + len(after))[None]
            first = model(
                input_ids=torch.tensor([after]), past_key_values=cache, position_ids=positions, logits_to_keep=1
            ).logits[0, -1]
            position += len(after)
        generated = [int(first.argmax())]
        while len(generated) < new_tokens and generated[-1] not in eos:
            logits = model(
                input_ids=torch.tensor([[generated[-1]]]),
                past_key_values=cache,
                position_ids=torch.tensor([[position]]),
                logits_to_keep=1,
            ).logits[0, -1]
            generated.append(int(logits.argmax()))
            position += 1
    return generated, cache.get_seq_length()


def evaluate_record(
    model: Any, tokenizer: Any, record: Any, cfgs: Sequence[Config], protocols: Sequence[str]
) -> list[dict[str, Any]]:
    """Every config under every protocol on one record: one dense prefill per protocol."""
    from moa_plan.tasks import score

    ids, n_context = split_prompt(tokenizer, record)
    new_tokens = ANSWER_TOKENS[record.task]
    eos = _eos_ids(model)
    out = []
    for protocol in protocols:
        # Dense needs no second protocol: with nothing compressed both are the same computation.
        todo = [c for c in cfgs if protocol == "aware" or c.press != "dense"]
        if protocol == "aware":
            first, kept = prefill(model, ids, todo, logits=True)
            after, start = [], len(ids)
        else:
            first, kept = prefill(model, ids[:n_context], todo, logits=False)
            after, start = ids[n_context:], n_context
        for config in todo:
            tokens, cache_len = greedy(model, kept[config.key], first, after, start, new_tokens, eos)
            answer = tokenizer.decode(tokens, skip_special_tokens=True)
            out.append(
                {
                    "press": config.press,
                    "protocol": "-" if config.press == "dense" else protocol,
                    "kv_fraction": config.kv_fraction,
                    "answer": answer,
                    "score": score(record, answer),
                    # The last generated token is never fed back, so it holds no cache entry.
                    "kv_density": cache_len / (len(ids) + len(tokens) - 1),
                }
            )
    return out


def _eos_ids(model: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


def verify(model: Any, tokenizer: Any, record: Any, cfgs: Sequence[Config], protocols: Sequence[str]) -> list[str]:
    """Mismatches between the shared-prefill answers and kvpress's own code paths on one record.

    ``aware``: ``with press(model): model.generate(...)`` (greedy); ``agnostic``:
    `KVPressTextGenerationPipeline._forward` on the same context and question token ids.
    """
    import torch
    from kvpress import KVPressTextGenerationPipeline

    ids, n_context = split_prompt(tokenizer, record)
    new_tokens = ANSWER_TOKENS[record.task]
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tokenizer)
    ours = {
        (r["press"], r["kv_fraction"], r["protocol"]): r["answer"]
        for r in evaluate_record(model, tokenizer, record, cfgs, protocols)
    }
    bad = []
    for (press_name, fraction, protocol), answer in ours.items():
        config = Config(press=press_name, kv_fraction=fraction)
        press = None if press_name == "dense" else make_press(config)
        if protocol in ("aware", "-"):
            with torch.inference_mode(), press(model) if press else contextlib.nullcontext():
                out = model.generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            native = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
        else:
            tensors = {
                "context_ids": torch.tensor([ids[:n_context]]),
                "questions_ids": [torch.tensor([ids[n_context:]])],
            }
            with torch.inference_mode():
                native = pipe._forward(tensors, max_new_tokens=new_tokens, press=press)[0]
        if native != answer:
            bad.append(f"{press_name}@{fraction:g} {protocol}: ours {answer!r}, kvpress {native!r}")
    return bad


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-record results to rows per (press, protocol, kv_fraction, task, length, decile)."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        key = (r["press"], r["protocol"], r["kv_fraction"], r["task"], r["length"], r["decile"])
        cells.setdefault(key, []).append(r)
    rows = []
    for (press, protocol, fraction, task, length, decile), cell in cells.items():
        correct = sum(r["score"] == 1.0 for r in cell)
        rows.append(
            {
                "press": press,
                "protocol": protocol,
                "kv_fraction": fraction,
                "task": task,
                "length": length,
                "decile": decile,
                "correct": correct,
                "total": len(cell),
                "accuracy": correct / len(cell),
                "kv_density": sum(r["kv_density"] for r in cell) / len(cell),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """Accuracy per press / protocol / fraction (rows, dense first) and task x length (columns)."""
    columns = sorted({(r["task"], r["length"]) for r in rows}, key=lambda c: (c[0], c[1]))
    keys: list[tuple[str, str, float]] = []
    table: dict[tuple, list[int]] = {}
    for r in rows:
        key = (r["press"], r["protocol"], r["kv_fraction"])
        if key not in keys:
            keys.append(key)
        cell = table.setdefault((*key, r["task"], r["length"]), [0, 0])
        cell[0] += r["correct"]
        cell[1] += r["total"]
    order = {p: i for i, p in enumerate(("dense", *PRESSES))}
    keys.sort(key=lambda k: (k[0] != "dense", -k[2], PROTOCOLS.index(k[1]) if k[1] in PROTOCOLS else -1, order[k[0]]))
    lines = [header, "", "| press | protocol | kv_fraction | " + " | ".join(f"{t} {n}" for t, n in columns) + " |"]
    lines.append("| --- | --- | --- |" + " --- |" * len(columns))
    for key in keys:
        cells = []
        for task, length in columns:
            correct, total = table.get((*key, task, length), [0, 0])
            cells.append(f"{correct}/{total}" if total else "")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[dict[str, Any]], header: str) -> str:
    """``kvpress.parquet``, ``kvpress.csv`` and ``kvpress.md``; returns the Markdown."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.to_parquet(out / "kvpress.parquet", index=False)
    frame.to_csv(out / "kvpress.csv", index=False)
    text = markdown(rows, header)
    (out / "kvpress.md").write_text(text)
    return text


def _expected(cfgs: Sequence[Config], protocols: Sequence[str]) -> set[tuple[str, str, float]]:
    """The (press, protocol, kv_fraction) answers one record gets, as `evaluate_record` labels them."""
    return {
        (c.press, "-" if c.press == "dense" else p, c.kv_fraction)
        for p in protocols
        for c in cfgs
        if p == "aware" or c.press != "dense"
    }


def _resumed(path: Path, expected: set[tuple[str, str, float]]) -> dict[tuple[str, int, int], list[dict]]:
    """Per-record answers already in ``answers.jsonl``, for records that have every expected answer."""
    by_record: dict[tuple[str, int, int], list[dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            by_record.setdefault((r["task"], r["length"], r["index"]), []).append(r)
    return {
        key: rs
        for key, rs in by_record.items()
        if {(r["press"], r["protocol"], r["kv_fraction"]) for r in rs} == expected
    }


def evaluate_all(
    model: Any, tokenizer: Any, args: argparse.Namespace, grid: tuple[list[str], list[int], list[str]], out: Path
) -> list[dict[str, Any]]:
    """Every record of every (task, length); each record's answers are appended to ``answers.jsonl``
    as soon as they exist, so a run that is stopped keeps them (``--resume`` skips them)."""
    tasks, lengths, protocols = grid
    cfgs = configs(args)
    path = out / "answers.jsonl"
    done = _resumed(path, _expected(cfgs, protocols)) if args.resume else {}
    results: list[dict[str, Any]] = []
    with path.open("w") as f:
        for rs in done.values():
            f.writelines(json.dumps(r) + "\n" for r in rs)
        f.flush()
        for task in tasks:
            for length in lengths:
                recs = records(tokenizer, task, length, args.samples)
                if args.verify and not results and not done:
                    for line in verify(model, tokenizer, recs[0], cfgs, protocols) or ["all answers identical"]:
                        print(f"verify {task} N={length} #0: {line}", file=sys.stderr)
                for i, record in enumerate(recs):
                    if (task, length, i) in done:
                        results += done[(task, length, i)]
                        continue
                    tick = time.monotonic()
                    decile = int(record.metadata["depth_decile"])
                    rs = [
                        {"task": task, "length": length, "index": i, "decile": decile, **r}
                        for r in evaluate_record(model, tokenizer, record, cfgs, protocols)
                    ]
                    f.writelines(json.dumps(r) + "\n" for r in rs)
                    f.flush()
                    results += rs
                    print(f"{task} N={length} #{i}: {time.monotonic() - tick:.1f} s", file=sys.stderr, flush=True)
    return results


def run(args: argparse.Namespace) -> int:
    model_path, tasks, lengths, protocols = check_inputs(args)
    configs(args)
    try:
        import kvpress  # noqa: F401 - fail here, before the model loads
        import torch
        import transformers
    except ImportError:
        raise BadInputError(
            "kvpress is not importable here; run this with the python of a venv made by --setup VENV"
        ) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(model_path)
    results = evaluate_all(model, tokenizer, args, (tasks, lengths, protocols), out)
    wall = time.monotonic() - started
    header = (
        f"kvpress {version('kvpress')} presses on moa's retrieval "
        f"prompts (completion form, seed {SEED}, greedy), {model_path.name} fp32 on CPU; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {platform.processor() or platform.machine()}; "
        f"{args.samples} prompts per task and length; wall {wall / 60:.1f} min"
        f"{' (this run; earlier answers resumed)' if args.resume else ''}. "
        "Cells: prompts correct / prompts. aware: question prefilled under the press; "
        "agnostic: context compressed first, question after (kvpress's pipeline protocol)."
    )
    print(write(out, aggregate(results), header))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.setup:
            setup(Path(args.setup).expanduser())
            return 0
        return run(args)
    except BadInputError as exc:
        print(f"kvpress_baseline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
