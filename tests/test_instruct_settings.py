"""The instruct pipeline's settings: what each stage is given, what a stage resumed with a larger plan keeps, what
a pipeline started again keeps, and what `--help` shows."""

import json

import pytest

from nexttoken.cli import main
from nexttoken.instruct import pipeline
from nexttoken.instruct.pipeline import PRESETS, PipelineConfig, plan
from nexttoken.instruct.stage import open_stage
from nexttoken.runs import Run


def test_the_demonstrators_and_ppos_baseline_and_kl_target_reach_their_stages(tmp_path):
    given = PipelineConfig(preset="demo", chatty=0.0, ppo_group=4, ppo_target_kl=0.0)
    stages = {s.name: s.configs for s in plan(tmp_path, given)}
    assert stages["sft-tiny"]["sft"].chatty == 0.0 and stages["ppo-tiny"]["ppo"].group == 4
    assert stages["ppo_ptx-tiny"]["ppo"].group == 4 and stages["ppo_ptx-tiny"]["ppo"].ptx_coef > 0
    assert stages["ppo-tiny"]["ppo"].target_kl == stages["ppo_ptx-tiny"]["ppo"].target_kl == 0.0
    default = {s.name: s.configs for s in plan(tmp_path, PipelineConfig(preset="demo"))}
    assert default["sft-tiny"]["sft"].chatty == 0.5 and default["ppo-tiny"]["ppo"].group == 1
    assert default["ppo-tiny"]["ppo"].target_kl == default["ppo_ptx-tiny"]["ppo"].target_kl == 4.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_plans_every_stage_for_each_of_its_sizes_with_its_own_values(tmp_path, preset):
    """The cpu and gpu presets run for an hour or more, so a value one of them sets that a stage's config refuses
    would otherwise show only then."""
    stages = {s.name: s for s in plan(tmp_path, PipelineConfig(preset=preset))}
    sizes = PRESETS[preset]["sizes"]
    kinds = ["pretrain", "sft", "ppo", "ppo_ptx", "dpo"]
    assert set(stages) == {f"{k}-{size}" for k in kinds for size in sizes} | {"rank", "reward", "evaluate"}
    for kind, names in PRESETS[preset].items():
        if kind == "sizes":
            continue
        stage = stages[kind if kind in ("rank", "reward", "evaluate") else f"{kind}-{sizes[-1]}"]
        for name, values in names.items():
            for field, value in values.items():
                assert getattr(stage.configs[name], field) == value, (stage.name, name, field)


def test_more_iterations_asked_for_on_resume_stay_the_plan_of_the_next_resume(tmp_path):
    """A resume that asks for more (then is killed) leaves the new plan in config.json: `--resume` alone, the line a
    Ctrl-C prints, continues to it instead of finding the run finished at the old count."""
    configs = pipeline.stage_configs("ppo", PRESETS["demo"], ppo={"init": "sft", "reward_model": "rm", "iterations": 3})
    with open_stage(tmp_path / "ppo", "ppo", configs, False)[0]:
        pass
    run, c = open_stage(tmp_path / "ppo", "ppo", configs, True, {"ppo": {"iterations": 8}}, ("iterations",))
    with run:
        assert c["ppo"].iterations == 8
    run, c = open_stage(tmp_path / "ppo", "ppo", configs, True, {}, ("iterations",))
    with run:
        assert c["ppo"].iterations == 8 and Run.open(tmp_path / "ppo").config["ppo"]["iterations"] == 8


def test_chat_help_shows_the_default_and_range_of_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["instruct", "chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-new-tokens MAX_NEW_TOKENS longest answer in tokens (default 96; >= 1 and <= 4096)" in text, text


def test_a_pipeline_started_again_is_judged_by_its_saved_settings(tmp_path, capsys, monkeypatch):
    """--stages names the saved sizes' stages, and the preset's sizes named again are no change."""
    ran = []
    def run_stage(configs, run, *args):
        ran.append(run.path.name)
        (run.path / "summary.json").write_text("{}")  # finished, for the stages that need it
        return {}

    for module in pipeline.MODULES.values():
        monkeypatch.setattr(module, "run_stage", run_stage)
    xl, demo = tmp_path / "xl", tmp_path / "demo"
    assert main(["instruct", "pipeline", "--preset", "demo", "--sizes", "xl", "--out", str(xl), "--stages",
                 "pretrain-xl"]) == 0
    assert main(["instruct", "pipeline", "--out", str(xl), "--stages", "sft-xl"]) == 0 and ran == ["pretrain-xl",
                                                                                                 "sft-xl"]
    assert main(["instruct", "pipeline", "--out", str(xl), "--stages", "pretrain-medium"]) == 2
    assert "unknown stage 'pretrain-medium'; the stages of" in capsys.readouterr().err
    demo.mkdir()  # saved as earlier versions did: the preset's sizes as []
    (demo / "pipeline.json").write_text(json.dumps({"preset": "demo", "sizes": []}))
    for size in PRESETS["demo"]["sizes"]:  # the SFT models that rank samples from
        (demo / f"sft-{size}").mkdir()
        (demo / f"sft-{size}" / "summary.json").write_text("{}")
    assert main(["instruct", "pipeline", "--out", str(demo), "--sizes", ",".join(PRESETS["demo"]["sizes"]),
                 "--stages", "rank"]) == 0 and ran[-1] == "rank"
    assert main(["instruct", "pipeline", "--out", str(demo), "--sizes", "xl", "--stages", "rank"]) == 2
    err = capsys.readouterr().err
    assert f"differs from the resumed run's {','.join(PRESETS['demo']['sizes'])};" in err and "[]" not in err, err


def test_a_pipeline_saved_before_the_kl_target_keeps_the_fixed_beta_it_started_with(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps({"preset": "demo", "sizes": ["tiny"]}))
    assert pipeline.settings(tmp_path, PipelineConfig(), {}).ppo_target_kl == 0.0
    assert pipeline.settings(tmp_path / "new", PipelineConfig(), {}).ppo_target_kl == 4.0
