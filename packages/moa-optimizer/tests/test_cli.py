"""``moa optimize``: outputs, bad input (exit 2, one sentence) and a third-party optimizer plugin."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from moa_optimizer import OptimizeConfig, budget_of, synthetic_fingerprint, synthetic_profiles
from moa_plan import Plan, check_budget
from moa_plan.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "toy_optimizer"


def _run(args):
    return CliRunner().invoke(main, ["optimize", *map(str, args)])


def _one_sentence_error(result):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[-1].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    return lines[-1]


def test_optimize_writes_plans_summary_and_plots(profile_files, tmp_path):
    out = tmp_path / "out"
    result = _run(
        ["--profiles", *profile_files, "--density", "0.5", "--time-limit", "2", "--points", "3", "--out", out, "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    table = pl.read_parquet(out / "summary.parquet")
    assert table.height == len(summary["plans"]) >= 2
    assert (out / "pareto.png").stat().st_size > 0
    budget = budget_of(OptimizeConfig(density=0.5), [512, 1024, 2048, 4096])
    for i, name in enumerate(table["file"]):
        plan = Plan.load(out / name)
        assert check_budget(plan, budget) == []
        assert (out / f"heatmap_{i:02d}.png").is_file()


def test_missing_profile_file(profile_files, tmp_path):
    line = _one_sentence_error(
        _run(["--profiles", profile_files[0], tmp_path / "nope.safetensors", "--density", "0.5", "--out", tmp_path])
    )
    assert "nope.safetensors" in line


def test_profiles_for_different_models(profile_files, tmp_path):
    (other,) = synthetic_profiles(synthetic_fingerprint(3, 8, 4), [1024])
    path = other.save(tmp_path / "other.safetensors")
    line = _one_sentence_error(
        _run(["--profiles", profile_files[0], path, "--density", "0.5", "--out", tmp_path / "o"])
    )
    assert "different model" in line
    assert "num_layers" in line


@pytest.mark.parametrize("density", ["0", "1.5", "-0.2"])
def test_density_out_of_range(profile_files, tmp_path, density):
    line = _one_sentence_error(_run(["--profiles", *profile_files, "--density", density, "--out", tmp_path / "o"]))
    assert "density" in line


def test_unknown_optimizer(profile_files, tmp_path):
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, "--density", "0.5", "--optimizer", "nosuch", "--out", tmp_path / "o"])
    )
    assert "nosuch" in line
    assert "builtin" in line


def test_infeasible_budget_cli(profile_files, tmp_path):
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, "--density", "0.05", "--lower", "0", "--out", tmp_path / "o"])
    )
    assert "smallest achievable density" in line
    assert "N=4096" in line
    assert not (tmp_path / "o").exists()


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """Install the fixture package the way pip would (module + dist-info with entry points) on sys.path."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURE / "src" / "toy_optimizer", site / "toy_optimizer")
    info = site / "toy_optimizer-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-optimizer\nVersion: 0.1.0\n")
    entry = [line for line in (FIXTURE / "pyproject.toml").read_text().splitlines() if line.startswith("toy =")]
    (info / "entry_points.txt").write_text("[moa.optimizers]\n" + entry[0].replace('"', "") + "\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("toy_optimizer", None)


def test_third_party_optimizer_plugin(toy_plugin, profile_files, tmp_path):
    from moa_optimizer import available_optimizers

    assert {"builtin", "toy"} <= set(available_optimizers())
    out = tmp_path / "toy"
    result = _run(["--profiles", *profile_files, "--density", "0.5", "--optimizer", "toy", "--no-plots", "--out", out])
    assert result.exit_code == 0, result.output
    plan = Plan.load(out / "plan_00.json")
    assert plan.provenance.notes == "toy"
    assert set(plan.betas.ravel()) == {0.5}


def _same_optimum(a_dir: Path, b_dir: Path) -> None:
    """Two solves of the same problem, both optimal (within the solver's reported gap): the same objective.

    The spans themselves may differ between near-ties (the column-generation backend stops at a 1e-4 relative gap).
    """
    a, b = Plan.load(a_dir / "plan_00.json"), Plan.load(b_dir / "plan_00.json")
    for plan in (a, b):
        assert plan.provenance.extra["status"] == "optimal"
    key = f"loss@{a.provenance.extra['objective_length']}"
    gap = max(a.provenance.extra["gap"], b.provenance.extra["gap"], 1e-9)
    assert a.provenance.objectives.keys() == b.provenance.objectives.keys()
    assert a.provenance.objectives[key] == pytest.approx(b.provenance.objectives[key], rel=2 * gap + 1e-6)


def _rolled_shapes(small_profiles, tmp_path):
    """The profiles as their own shape, rolled: another distance shape with the same lengths, written to files."""
    shapes = []
    for p in small_profiles:
        rolled = type(p)(**{**p.__dict__, "hist": p.hist[..., ::-1].copy()})
        shapes.append(rolled.save(tmp_path / f"s{p.length}.safetensors"))
    return shapes


def test_shape_by_optimizes_the_shaped_profile(profile_files, small_profiles, tmp_path):
    from moa_plan import load_profile, shape_profile

    shapes = _rolled_shapes(small_profiles, tmp_path)
    args = ["--density", "0.5", "--single", "--time-limit", "60", "--no-plots"]
    shape_args = [a for s in shapes for a in ("--shape-by", s)]
    result = _run(["--profiles", *profile_files, *shape_args, *args, "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.output
    # Oracle: optimize the profiles shaped by the library function, written to files first.
    shaped = [
        shape_profile(load_profile(f), load_profile(s)).save(tmp_path / f"x{i}.safetensors")
        for i, (f, s) in enumerate(zip(profile_files, shapes, strict=True))
    ]
    result = _run(["--profiles", *shaped, *args, "--out", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    _same_optimum(tmp_path / "a", tmp_path / "b")
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, "--shape-by", shapes[0], *args, "--out", tmp_path / "c"])
    )
    assert "--shape-by has no profile of length" in line
    line = _one_sentence_error(_run(["--profiles", profile_files[0], *shape_args, *args, "--out", tmp_path / "d"]))
    assert "--shape-by has a profile of length" in line and "which no --profiles file has" in line


def test_shape_linear_optimizes_the_blended_shape(profile_files, small_profiles, tmp_path):
    from moa_plan import load_profile, shape_profile

    shapes = _rolled_shapes(small_profiles, tmp_path)
    args = ["--density", "0.5", "--single", "--time-limit", "60", "--no-plots"]
    shape_args = [a for s in shapes for a in ("--shape-by", s)]
    result = _run(["--profiles", *profile_files, *shape_args, "--shape-linear", "0.6", *args, "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.output
    # Oracle: the library's blend (checked against brute force in moa-plan), written to files first.
    shaped = [
        shape_profile(load_profile(f), load_profile(s), linear=0.6).save(tmp_path / f"x{i}.safetensors")
        for i, (f, s) in enumerate(zip(profile_files, shapes, strict=True))
    ]
    result = _run(["--profiles", *shaped, *args, "--out", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    _same_optimum(tmp_path / "a", tmp_path / "b")
    # The blend matters: the influence shape alone gives another objective (so an ignored flag would fail above).
    result = _run(["--profiles", *profile_files, *shape_args, *args, "--out", tmp_path / "plain"])
    assert result.exit_code == 0, result.output
    plain, blended = (Plan.load(tmp_path / d / "plan_00.json") for d in ("plain", "a"))
    key = f"loss@{plain.provenance.extra['objective_length']}"
    assert blended.provenance.objectives[key] != pytest.approx(plain.provenance.objectives[key], rel=1e-3)
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, *shape_args, "--shape-linear", "1.5", *args, "--out", tmp_path / "c"])
    )
    assert "--shape-linear" in line
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, "--shape-linear", "0.5", *args, "--out", tmp_path / "d"])
    )
    assert "--shape-linear" in line and "no --shape-by" in line


def test_mix_optimizes_the_mixed_profile(profile_files, small_profiles, tmp_path):
    from moa_plan import load_profile, mix_profiles

    # A second objective of another scale and distance shape: the profiles rolled and divided by 100.
    others = []
    for p in small_profiles:
        rolled = type(p)(**{**p.__dict__, "hist": p.hist[..., ::-1].copy() / 100})
        others.append(rolled.save(tmp_path / f"m{p.length}.safetensors"))
    args = ["--density", "0.5", "--single", "--time-limit", "60", "--no-plots"]
    mix_args = [a for s in others for a in ("--mix", s)]
    result = _run(["--profiles", *profile_files, *mix_args, "--mix-weight", "2", *args, "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.output
    # Oracle: the profiles mixed by the library function, written to files first.
    mixed = [
        mix_profiles(load_profile(f), load_profile(o), 2.0).save(tmp_path / f"x{i}.safetensors")
        for i, (f, o) in enumerate(zip(profile_files, others, strict=True))
    ]
    result = _run(["--profiles", *mixed, *args, "--out", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    _same_optimum(tmp_path / "a", tmp_path / "b")
    # The mix matters: without it the same profiles give another objective.
    result = _run(["--profiles", *profile_files, *args, "--out", tmp_path / "plain"])
    assert result.exit_code == 0, result.output
    plain, mixed_plan = (Plan.load(tmp_path / d / "plan_00.json") for d in ("plain", "a"))
    key = f"loss@{plain.provenance.extra['objective_length']}"
    assert mixed_plan.provenance.objectives[key] > plain.provenance.objectives[key]
    line = _one_sentence_error(_run(["--profiles", *profile_files, "--mix", others[0], *args, "--out", tmp_path / "c"]))
    assert "--mix has no profile of length" in line
    line = _one_sentence_error(_run(["--profiles", profile_files[0], *mix_args, *args, "--out", tmp_path / "e"]))
    assert "--mix has a profile of length" in line
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, *mix_args, "--mix-weight", "-1", *args, "--out", tmp_path / "d"])
    )
    assert "--mix-weight" in line


def test_mix_shape_by_shapes_the_mixed_in_profile(profile_files, small_profiles, tmp_path):
    from moa_plan import load_profile, mix_profiles, shape_profile

    # The second objective (rolled, another scale) and a distance shape of its own (the profiles squared).
    others, shapes = [], []
    for p in small_profiles:
        rolled = type(p)(**{**p.__dict__, "hist": p.hist[..., ::-1].copy() / 100})
        others.append(rolled.save(tmp_path / f"m{p.length}.safetensors"))
        squared = type(p)(**{**p.__dict__, "hist": p.hist.astype("float64") ** 2})
        shapes.append(squared.save(tmp_path / f"s{p.length}.safetensors"))
    args = ["--density", "0.5", "--single", "--time-limit", "60", "--no-plots"]
    mix_args = [a for s in others for a in ("--mix", s)]
    shape_args = [a for s in shapes for a in ("--mix-shape-by", s)]
    result = _run(
        ["--profiles", *profile_files, *mix_args, *shape_args, "--mix-weight", "2", *args, "--out", tmp_path / "a"]
    )
    assert result.exit_code == 0, result.output
    # Oracle: each mixed-in profile shaped, then mixed, by the library functions, written to files first.
    mixed = [
        mix_profiles(load_profile(f), shape_profile(load_profile(o), load_profile(s)), 2.0).save(
            tmp_path / f"x{i}.safetensors"
        )
        for i, (f, o, s) in enumerate(zip(profile_files, others, shapes, strict=True))
    ]
    result = _run(["--profiles", *mixed, *args, "--out", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    _same_optimum(tmp_path / "a", tmp_path / "b")
    # The shape matters: unshaped, the same mix is another problem.
    unshaped = _run(["--profiles", *profile_files, *mix_args, "--mix-weight", "2", *args, "--out", tmp_path / "c"])
    assert unshaped.exit_code == 0, unshaped.output
    a, c = (Plan.load(tmp_path / d / "plan_00.json") for d in ("a", "c"))
    key = f"loss@{a.provenance.extra['objective_length']}"
    assert a.provenance.objectives[key] != pytest.approx(c.provenance.objectives[key], rel=1e-6)
    line = _one_sentence_error(
        _run(["--profiles", *profile_files, *mix_args, "--mix-shape-by", shapes[0], *args, "--out", tmp_path / "d"])
    )
    assert "--mix-shape-by has no profile of length" in line
    line = _one_sentence_error(_run(["--profiles", *profile_files, *shape_args, *args, "--out", tmp_path / "e"]))
    assert "--mix-shape-by" in line and "--mix" in line


def test_profiles_of_one_length_are_merged_by_sample_count(profile_files, small_profiles, tmp_path):
    # Each length profiled twice (say, one calibration task each): 1 sample and 3 samples.
    files = []
    oracle = []
    for p in small_profiles:
        rolled = p.hist[..., ::-1].copy()
        one = type(p)(**{**p.__dict__, "num_samples": 1})
        three = type(p)(**{**p.__dict__, "num_samples": 3, "hist": rolled})
        files += [
            one.save(tmp_path / f"one{p.length}.safetensors"),
            three.save(tmp_path / f"three{p.length}.safetensors"),
        ]
        # Oracle: the mean over the four samples, computed here.
        mean = (np.asarray(p.hist, dtype=np.float64) + 3 * np.asarray(rolled, dtype=np.float64)) / 4
        four = type(p)(**{**p.__dict__, "num_samples": 4, "hist": mean})
        oracle.append(four.save(tmp_path / f"four{p.length}.safetensors"))
    args = ["--density", "0.5", "--single", "--time-limit", "60", "--no-plots"]
    result = _run(["--profiles", *files, *args, "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.output
    result = _run(["--profiles", *oracle, *args, "--out", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    a, b = Plan.load(tmp_path / "a" / "plan_00.json"), Plan.load(tmp_path / "b" / "plan_00.json")
    key = f"loss@{a.provenance.extra['objective_length']}"
    gap = max(a.provenance.extra["gap"], b.provenance.extra["gap"], 1e-9)
    assert a.provenance.objectives[key] == pytest.approx(b.provenance.objectives[key], rel=2 * gap + 1e-6)
    # A profile of a different sink at a length already given cannot be merged: one sentence, exit 2.
    p = small_profiles[0]
    odd = type(p)(**{**p.__dict__, "sink": p.sink + 1, "hist": p.hist[..., 1:].copy()})
    line = _one_sentence_error(
        _run(["--profiles", *files, odd.save(tmp_path / "odd.safetensors"), *args, "--out", tmp_path / "c"])
    )
    assert "cannot merge profiles of a different sink" in line


def test_one_profiled_length_plots_without_a_warning(profile_files, tmp_path):
    """With one or two profiled lengths the Pareto scatter has no colour axis (matplotlib warned about an unused cmap)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _run(
            ["--profiles", profile_files[0], "--density", "0.5", "--time-limit", "2", "--out", tmp_path / "o"]
        )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "pareto.png").stat().st_size > 0
