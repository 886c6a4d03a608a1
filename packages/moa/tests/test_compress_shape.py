"""`moa compress --shape`: a measured profile is shaped by an influence profile of the same calibration set."""

from __future__ import annotations

from pathlib import Path

import pytest

import moa.pipeline as pipeline
from moa.pipeline import CompressSettings

REFERENCE = Path(__file__).resolve().parents[3] / "models" / "moa-reference"


def run_settings(tmp_path: Path) -> dict[str, object]:
    return {"model": REFERENCE, "densities": [0.5], "lengths": [512, 1024], "out": tmp_path}


def _stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> list[list[str]]:
    """The moa commands the profile and optimize stages run (each writes the files it would write)."""
    calls: list[list[str]] = []

    def fake_moa(args: list[object], stage: str, echo: object) -> None:
        words = [str(a) for a in args]
        calls.append(words)
        out = Path(words[words.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if words[0] == "profile":
            for n in (512, 1024):
                (out / f"profile-{n}.safetensors").write_text(f"{words} {n}")
        else:
            (out / "summary.parquet").write_text(" ".join(words))

    monkeypatch.setattr(pipeline, "_moa", fake_moa)
    s = CompressSettings(
        model=REFERENCE, densities=[0.5], lengths=[512, 1024], out=tmp_path, layer_baseline=False, duo_baseline=False,
        **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    (tmp_path / "calibration.parquet").write_text("calibration")
    run = pipeline._Compress(s, lambda _: None)
    run.profile()
    run.optimize()
    return calls


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_a_measured_statistic_is_shaped_by_influence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stages(tmp_path, monkeypatch, statistic="greedy")
    greedy, influence, optimize = calls
    assert greedy[greedy.index("--statistic") + 1] == "greedy"
    assert influence[influence.index("--statistic") + 1] == "influence"
    assert influence[1] == greedy[1] == str(tmp_path / "calibration.parquet")  # the same calibration set
    for flag in ("--sink", "--block"):
        assert influence[influence.index(flag) + 1] == greedy[greedy.index(flag) + 1]
    shaped = [optimize[i + 1] for i, word in enumerate(optimize) if word == "--shape-by"]
    assert shaped == [str(tmp_path / "influence" / f"profile-{n}.safetensors") for n in (512, 1024)]
    assert optimize[optimize.index("--profiles") + 1] == str(tmp_path / "profiles" / "profile-512.safetensors")
    assert _stages(tmp_path, monkeypatch, statistic="greedy") == []  # up to date
    # --no-shape: the measured profile alone (and the change re-runs both stages).
    unshaped = _stages(tmp_path, monkeypatch, statistic="greedy", shape=False)
    assert [c[0] for c in unshaped] == ["profile", "optimize"] and "--shape-by" not in unshaped[1]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_a_linear_share_of_the_shape_reaches_the_optimizer_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _stages(tmp_path, monkeypatch, statistic="gate")
    assert "--shape-linear" not in calls[-1]  # the default: all of the shape from the influence
    # An optimize setting: changing it re-runs the optimizer only, which receives it.
    again = _stages(tmp_path, monkeypatch, statistic="gate", shape_linear=0.5)
    assert [c[0] for c in again] == ["optimize"] and again[0][again[0].index("--shape-linear") + 1] == "0.5"
    report = pipeline._report(
        pipeline.CompressSettings(**{**run_settings(tmp_path), "statistic": "gate", "shape_linear": 0.5}), [], ""
    )
    assert "shaped by the influence profile (0.5 of it spread evenly)" in report
    # Without a shape there is nothing to blend: the setting is not passed.
    assert "--shape-linear" not in _stages(tmp_path, monkeypatch, statistic="influence", shape_linear=0.5)[-1]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_the_influence_statistic_is_not_shaped_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stages(tmp_path, monkeypatch, statistic="influence")
    assert [c[0] for c in calls] == ["profile", "optimize"] and "--shape-by" not in calls[1]
    assert not (tmp_path / "influence").exists()


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_the_gate_statistic_reaches_moa_profile_and_is_shaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stages(tmp_path, monkeypatch, statistic="gate", gate_steps=40, gate_lr=0.05, gate_penalty=0.25)
    gate, influence, optimize = calls
    assert gate[gate.index("--statistic") + 1] == "gate"
    assert [gate[gate.index(f) + 1] for f in ("--gate-steps", "--gate-lr", "--gate-penalty")] == ["40", "0.05", "0.25"]
    assert "--gate-steps" not in influence and influence[influence.index("--statistic") + 1] == "influence"
    assert "--shape-by" in optimize
    # A gate setting is a profile setting: changing it re-runs the profile and what follows.
    again = _stages(tmp_path, monkeypatch, statistic="gate", gate_steps=80, gate_lr=0.05, gate_penalty=0.25)
    assert [c[0] for c in again] == ["profile", "profile", "optimize"]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_a_mix_task_is_profiled_on_its_own_set_and_mixed_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mix-calibration.parquet").write_text("prose")
    calls = _stages(tmp_path, monkeypatch, statistic="gate", mix_task="continue", mix_weight=0.5)
    gate, influence, mix, optimize = calls
    assert mix[1] == str(tmp_path / "mix-calibration.parquet") and influence[1] == gate[1]
    assert mix[mix.index("--statistic") + 1] == "influence"
    assert mix[mix.index("--out") + 1] == str(tmp_path / "mix")
    mixed = [optimize[i + 1] for i, word in enumerate(optimize) if word == "--mix"]
    assert mixed == [str(tmp_path / "mix" / f"profile-{n}.safetensors") for n in (512, 1024)]
    assert optimize[optimize.index("--mix-weight") + 1] == "0.5"
    report = pipeline._report(pipeline.CompressSettings(**{**run_settings(tmp_path), "mix_task": "continue",
                              "mix_weight": 0.5}), [], "")  # fmt: skip
    assert "mixed with `continue` (influence) at weight 0.5" in report
    assert "--mix-shape-by" not in optimize and not (tmp_path / "mix-influence").exists()
    # The weight is an optimize setting: changing it re-runs the optimizer only.
    again = _stages(tmp_path, monkeypatch, statistic="gate", mix_task="continue", mix_weight=2.0)
    assert [c[0] for c in again] == ["optimize"] and again[0][again[0].index("--mix-weight") + 1] == "2.0"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
def test_a_gated_mix_task_trains_its_own_gates_and_is_shaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mix-calibration.parquet").write_text("prose")
    settings = {"statistic": "gate", "gate_steps": 40, "gate_lr": 0.05, "mix_task": "continue", "mix_weight": 0.5}
    calls = _stages(tmp_path, monkeypatch, **settings, mix_statistic="gate", mix_gate_penalty=0.01)
    gate, _influence, mix, mix_shape, optimize = calls
    assert mix[1] == mix_shape[1] == str(tmp_path / "mix-calibration.parquet")
    assert mix[mix.index("--statistic") + 1] == "gate"
    assert [mix[mix.index(f) + 1] for f in ("--gate-steps", "--gate-lr", "--gate-penalty")] == ["40", "0.05", "0.01"]
    assert gate[gate.index("--gate-penalty") + 1] == "0.5"  # the first objective keeps its own penalty
    assert mix_shape[mix_shape.index("--statistic") + 1] == "influence" and "--gate-steps" not in mix_shape
    assert mix_shape[mix_shape.index("--out") + 1] == str(tmp_path / "mix-influence")
    mixed = [optimize[i + 1] for i, word in enumerate(optimize) if word == "--mix"]
    assert mixed == [str(tmp_path / "mix" / f"profile-{n}.safetensors") for n in (512, 1024)]
    shaped = [optimize[i + 1] for i, word in enumerate(optimize) if word == "--mix-shape-by"]
    assert shaped == [str(tmp_path / "mix-influence" / f"profile-{n}.safetensors") for n in (512, 1024)]
    report = pipeline._report(pipeline.CompressSettings(**{**run_settings(tmp_path), **settings,
                              "mix_statistic": "gate"}), [], "")  # fmt: skip
    assert "mixed with `continue` (gate shaped by its influence) at weight 0.5" in report
    # The mix penalty is a profile setting: changing it re-runs the profiles and the optimizer.
    again = _stages(tmp_path, monkeypatch, **settings, mix_statistic="gate", mix_gate_penalty=0.02)
    assert [c[0] for c in again] == ["profile"] * 4 + ["optimize"]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the reference model is not in the tree")
@pytest.mark.parametrize("task", ["niah", "essay-ppl"])
def test_a_mix_task_on_evaluation_text_is_refused(tmp_path: Path, task: str) -> None:
    from moa_plan import MoaError

    s = CompressSettings(model=REFERENCE, densities=[0.5], lengths=[512], out=tmp_path, mix_task=task)
    with pytest.raises(MoaError, match=f"--mix-task '{task}' reads evaluation text"):
        pipeline._check_inputs(s)


def test_the_mix_statistic_flags_reach_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from moa.cli import compress

    seen: list[CompressSettings] = []

    def fake_run(settings: CompressSettings, echo: object) -> dict[str, object]:
        seen.append(settings)
        return {"report": "", "plan": ""}

    monkeypatch.setattr(pipeline, "run_compress", fake_run)
    base = ["--model", str(tmp_path), "--density", "0.5", "--mix-task", "continue", "--out", str(tmp_path)]
    result = CliRunner().invoke(compress, [*base, "--mix-statistic", "gate", "--mix-gate-penalty", "0.01"])
    assert result.exit_code == 0, result.output
    assert (seen[0].mix_statistic, seen[0].mix_gate_penalty) == ("gate", 0.01)
    result = CliRunner().invoke(compress, base)
    assert (seen[1].mix_statistic, seen[1].mix_gate_penalty) == ("influence", 0.05)
    result = CliRunner().invoke(compress, [*base, "--mix-statistic", "greedy"])
    assert result.exit_code == 2 and "'greedy' is not one of 'influence', 'gate'" in result.output
    result = CliRunner().invoke(compress, [*base, "--shape-linear", "0.25"])
    assert result.exit_code == 0, result.output
    assert (seen[1].shape_linear, seen[2].shape_linear) == (0.0, 0.25)
    result = CliRunner().invoke(compress, [*base, "--shape-linear", "2"])
    assert result.exit_code == 2 and "--shape-linear" in result.output
