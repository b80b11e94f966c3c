"""The instruct pipeline end to end at a tiny size: every stage runs, PPO raises the reward model's score over SFT, a
killed stage resumes to the uninterrupted result, a killed pipeline continues where it stopped, and bad input is one
line and exit code 2."""

import io
import json
import os
import re
import signal

import pytest
import torch

from nexttoken.cli import main
from nexttoken.distributed import Dist
from nexttoken.errors import Interrupted, UserError
from nexttoken.instruct import advantages, pipeline, ppo, pretrain
from nexttoken.instruct.pipeline import PRESETS, PipelineConfig, plan, run_pipeline
from nexttoken.instruct.policy import load_policy, load_reward_model, respond
from nexttoken.instruct.rankings import read_rankings
from nexttoken.instruct.stage import open_stage
from nexttoken.instruct.tasks import TRAIN_FAMILIES, make_tasks
from nexttoken.instruct.world import make_world
from nexttoken.files import load_tensors
from nexttoken.runs import Run


CPU = torch.device("cpu")


ONE = Dist()  # one process, on the CPU


TINY = {
    "sizes": ["tiny"],
    "pretrain": {"pretrain": {"corpus_chars": 30_000, "context": 64, "vocab_size": 400, "heldout_pages": 10},
                 "optim": {"warmup_steps": 2}, "loop": {"steps": 30, "batch_size": 8, "eval_every": 15}},
    "sft": {"sft": {"demonstrations": 300, "val_demonstrations": 20}, "optim": {"lr": 3e-3, "warmup_steps": 2},
            "loop": {"steps": 30, "batch_size": 16, "eval_every": 15}},
    "rank": {"rank": {"prompts": 64, "max_new_tokens": 12, "chunk": 32}},
    "reward": {"reward": {"bias_demonstrations": 16, "epochs": 4}, "optim": {"lr": 3e-3}, "loop": {"batch_size": 8}},
    "ppo": {"ppo": {"iterations": 8, "rollouts": 16, "minibatch": 8, "max_new_tokens": 12, "norm_samples": 16,
                    "ptx_chars": 20_000, "ptx_context": 32, "prompts": 64}, "optim": {"lr": 1e-3, "warmup_steps": 0}},
    "dpo": {"loop": {"batch_size": 4}},
    "evaluate": {"eval": {"tasks": 9, "cot_tasks": 3, "max_new_tokens": 12, "cot_tokens": 16},
                 "results": {"heldout_pages": 5}},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One finished tiny pipeline (the demo preset shrunk to a one-layer model of one size)."""
    folder = tmp_path_factory.mktemp("instruct") / "pipe"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "demo", TINY)
        mp.setitem(pretrain.SIZES, "tiny", (1, 2, 32, 3e-3))
        run_pipeline(folder, PipelineConfig(preset="demo"), ONE, progress=False)
        yield folder, mp


def test_the_demo_section_shows_figure_1_the_chain_of_thought_table_and_answers(tiny, tmp_path):
    import shutil

    from nexttoken.instruct.demo import demo_prompts, demo_section

    folder, _ = tiny
    shutil.copytree(folder, tmp_path / "pipeline")  # finished: the section only reads it
    tables = {caption: rows for kind, item in demo_section(tmp_path, CPU).items if kind == "table"
              for rows, caption in [item]}
    assert len(tables["InstructGPT's Figure 1 in miniature"]) == 6  # one size x six methods
    assert {r["model"] for r in tables["Zero-shot chain of thought on held-out word problems (greedy)"]} == {
        "base", "sft", "ppo", "ppo_ptx", "dpo"}
    answers = tables["The same prompts to the base, SFT and PPO models"]
    assert [a["prompt"] for a in answers] == demo_prompts() * 3


def test_a_few_shot_prompt_too_long_for_the_context_loses_whole_examples(tiny):
    from nexttoken.instruct.evaluate import example_pool, prompt_for

    folder, _ = tiny
    policy = load_policy(folder / "pretrain-tiny", CPU)  # a 64-token context
    pool, question = example_pool(make_world(0)), "What is 12 + 30?"
    whole = prompt_for(policy, "few_shot", question, pool, shots=3)
    fitted = prompt_for(policy, "few_shot", question, pool, shots=3, answer_tokens=24)
    assert len(policy.tokenizer.encode(whole)) > 40 >= len(policy.tokenizer.encode(fitted))
    assert fitted.startswith("Q: ") and whole.endswith(fitted)  # the first examples dropped whole, not cut


def test_every_stage_finishes_and_the_evaluation_draws_figure_1(tiny):
    folder, _ = tiny
    for stage in plan(folder, PipelineConfig(preset="demo")):
        assert (folder / stage.name / "summary.json").is_file(), stage.name
    results = json.loads((folder / "evaluate" / "results.json").read_text())
    methods = {(r["size"], r["method"]) for r in results["rows"]}
    assert methods == {("tiny", m) for m in ("base", "few_shot", "sft", "ppo", "ppo_ptx", "dpo")}
    assert all(0 <= r["win_rate"] <= 1 and 0 <= r["asks_back"] <= 1 and r["utility"] >= 0 for r in results["rows"])
    assert "asking something back" in (folder / "evaluate" / "results.md").read_text()
    assert (folder / "evaluate" / "win_rates.png").stat().st_size > 10_000
    assert "Let's think step by step" in (folder / "evaluate" / "results.md").read_text()
    cot = {r["method"] for r in results["rows"] if "cot_step_by_step" in r}  # Kojima: which tuning keeps it
    assert cot == {"base", "sft", "ppo", "ppo_ptx", "dpo"}, cot
    health = [json.loads(line) for line in (folder / "ppo-tiny" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "kl", "entropy", "clip_frac", "value_loss", "response_length"} <= set(health[-1])
    assert (folder / "ppo-tiny" / "ppo_health.png").is_file()


def test_ppo_raises_the_reward_over_sft(tiny):
    """On fresh training-distribution prompts, the reward PPO maximises (the reward model's normalised score, or the
    fixed penalty for a response without EOS) is higher for the PPO policy than for the SFT policy it started from."""
    folder, _ = tiny
    rm, _ = load_reward_model(folder / "reward")
    summary = json.loads((folder / "ppo-tiny" / "summary.json").read_text())
    cfg = ppo.PPOConfig(**{k: v for k, v in TINY["ppo"]["ppo"].items()})
    prompts = [t.instruction for t in make_tasks(make_world(0), 128, seed=5, families=TRAIN_FAMILIES, unique=False)]

    @torch.no_grad()
    def mean_reward(stage: str) -> float:
        policy = load_policy(folder / stage)
        out = respond(policy, [policy.chat_prompt(p) for p in prompts], cfg.max_new_tokens,
                      temperature=cfg.temperature, generator=torch.Generator().manual_seed(0))
        return float(advantages.episode_reward(rm(out.ids, out.mask), out.finished, summary["reward_norm"],
                                        cfg.no_eos_score).mean())

    assert mean_reward("ppo-tiny") > mean_reward("sft-tiny") + 0.1


def test_ppo_against_the_labelers_own_utility_scores_every_episode_by_it(tiny, tmp_path):
    """--reward-model labeler: the gold reward (the held-out labeler's noiseless utility) replaces the reward model,
    and the value head starts at zero."""
    from nexttoken.instruct.labeler import HELD_OUT_LABELER

    folder, _ = tiny
    cfg = ppo.PPOConfig(**{**TINY["ppo"]["ppo"], "init": str(folder / "sft-tiny"), "reward_model": ppo.GOLD,
                           "iterations": 2})
    optim = ppo.OptimConfig(lr=1e-3, warmup_steps=0)
    with Run.create(tmp_path / "gold", {}, kind="instruct.ppo") as run:
        summary = ppo.train_ppo(cfg, optim, run, ONE, progress=True)
    assert "ppo: sampling the responses that normalise the reward: response 16/16" in (
        tmp_path / "gold" / "log.txt").read_text()  # before PPO's own bar, the reward norm's sampling shows too
    mean, std = summary["reward_norm"]
    best = HELD_OUT_LABELER.correctness + HELD_OUT_LABELER.instruction_following + HELD_OUT_LABELER.concision
    assert 0 <= mean <= best and std > 0
    records = [json.loads(line) for line in (tmp_path / "gold" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 <= r["score"] <= best for r in records)


def test_demonstrations_score_zero_on_average_under_the_reward_model(tiny):
    folder, _ = tiny
    from nexttoken.instruct.corpus import demonstrations
    from nexttoken.instruct.reward import score_texts

    rm, meta = load_reward_model(folder / "reward")
    demos = demonstrations(make_world(0), 16, seed=4242)
    scores = score_texts(rm, [rm.backbone.chat_prompt(d.task.instruction) for d in demos], [d.response for d in demos])
    assert abs(float(scores.mean())) < 1e-4 and "demo_mean_before_centring" in meta


def test_a_killed_ppo_stage_resumes_to_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    folder, _ = tiny
    configs = pipeline.stage_configs("ppo", TINY, ppo={"init": str(folder / "sft-tiny"),
                                                       "reward_model": str(folder / "reward"), "iterations": 3,
                                                       "ckpt_every": 100, "target_kl": 0.5, "kl_horizon": 50})
    whole, c = open_stage(tmp_path / "whole", "ppo", configs, False)
    with whole:
        ppo.run_stage(c, whole, ONE, progress=False)
    calls = {"n": 0}
    real = ppo.experience

    def killed_in_iteration_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while iteration 2 rolls out: it finishes, saves, stops
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "experience", killed_in_iteration_2)
    part, c = open_stage(tmp_path / "part", "ppo", configs, False)
    with pytest.raises(Interrupted, match="iteration 2"), part:
        ppo.run_stage(c, part, ONE, progress=False)
    monkeypatch.setattr(ppo, "experience", real)
    first = load_tensors(tmp_path / "part" / "checkpoint.safetensors")[1]["elapsed_s"]
    again, c = open_stage(tmp_path / "part", "ppo", configs, True)
    with again:
        summary = ppo.run_stage(c, again, ONE, resume=True, progress=False)
    assert summary["seconds"] >= round(first, 1) > 0  # both stretches' time, not the last one's
    a, b = Run.open(tmp_path / "whole").metrics(), Run.open(tmp_path / "part").metrics()
    assert [r["step"] for r in b] == [1, 2, 3]
    assert len({r["kl_coef"] for r in a}) == 3  # the adaptive controller moved beta, and the checkpoint kept it
    for x, y in zip(a, b):
        for key in ("reward", "kl", "kl_coef", "value_loss", "policy_loss", "clip_frac"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    wa, _ = load_tensors(tmp_path / "whole" / "policy.safetensors")
    wb, _ = load_tensors(tmp_path / "part" / "policy.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_a_killed_stage_resumed_counts_the_seconds_of_every_stretch(tiny, tmp_path, monkeypatch):
    from nexttoken.instruct import sft

    folder, _ = tiny
    configs = pipeline.stage_configs("sft", TINY, sft={"init": str(folder / "pretrain-tiny")})
    real = sft.DemonstrationBatches.__call__

    def killed_at_step_25(self, step):
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, step)

    monkeypatch.setattr(sft.DemonstrationBatches, "__call__", killed_at_step_25)
    part, c = open_stage(tmp_path / "sft", "sft", configs, False)
    with pytest.raises(Interrupted, match="step 26"), part:
        sft.run_stage(c, part, ONE, progress=False)
    monkeypatch.setattr(sft.DemonstrationBatches, "__call__", real)
    first = load_tensors(tmp_path / "sft" / "checkpoint.safetensors")[1]["loop_state"]["elapsed_s"]
    again, c = open_stage(tmp_path / "sft", "sft", configs, True)
    with again:
        summary = sft.run_stage(c, again, ONE, resume=True, progress=False)
    total = load_tensors(tmp_path / "sft" / "checkpoint.safetensors")[1]["loop_state"]["elapsed_s"]
    assert total > first and summary["seconds"] == round(total, 1)  # 26 steps, then 4: all 30 counted


@pytest.mark.parametrize("stage, verb, unit", [("pretrain-tiny", "pretrain", "steps"), ("sft-tiny", "sft", "steps"),
                                               ("reward", "reward", "steps"), ("dpo-tiny", "dpo", "steps"),
                                               ("ppo-tiny", "ppo", "iterations")])
def test_resuming_a_finished_stage_leaves_its_summary_as_it_was(tiny, tmp_path, capsys, stage, verb, unit):
    import shutil

    folder, _ = tiny
    run = shutil.copytree(folder / stage, tmp_path / stage)
    before = (run / "summary.json").read_text()
    capsys.readouterr()
    assert main(["instruct", verb, "--resume", str(run)]) == 0
    assert (run / "summary.json").read_text() == before
    err = capsys.readouterr().err
    assert f"{run} has finished its" in err and f"{unit}; nothing to train (pass --{unit} N" in err, err


def test_a_killed_pipeline_continues_where_it_stopped(tiny, monkeypatch, capsys):
    """As if killed during DPO: finished stages are skipped, the interrupted one resumes, the rest run."""
    folder, _ = tiny
    for name in ("dpo-tiny", "evaluate"):
        (folder / name / "summary.json").unlink()
    for name in ("reference", "ppo-tiny"):  # answered again, and their progress logged
        (folder / "evaluate" / "models" / f"{name}.json").unlink()
    ran = []
    for kind, module in pipeline.MODULES.items():
        real = module.run_stage
        monkeypatch.setattr(module, "run_stage", lambda c, run, dist, resume, progress, real=real:
                            ran.append((run.path.name, resume)) or real(c, run, dist, resume, progress))
    run_pipeline(folder, PipelineConfig(preset="demo"), ONE, progress=True)
    assert ran == [("dpo-tiny", True), ("evaluate", True)]
    log = (folder / "evaluate" / "log.txt").read_text()
    for line in ("evaluate: the reference sft-tiny answering 9 instructions: prompt 9/9",
                 "evaluate: ppo-tiny answering 9 instructions: prompt 9/9",
                 "evaluate: ppo-tiny scoring 5 held-out pages: page 5/5",
                 "evaluate: ppo-tiny chain of thought on 3 problems (3 greedy passes): prompt 9/9"):
        assert line in log, log
    ran.clear()
    capsys.readouterr()  # the evaluation's own warnings (the tiny model's context cuts a prompt) are not the point
    run_pipeline(folder, PipelineConfig(preset="demo"), ONE, progress=False)
    assert ran == [] and "warning" not in capsys.readouterr().err
    (folder / "dpo-tiny" / "summary.json").unlink()  # a stage made again after the evaluation: it is stale, say so
    run_pipeline(folder, PipelineConfig(preset="demo"), ONE, progress=False)
    assert ran == [("dpo-tiny", True)]
    assert "evaluate judged the models before dpo-tiny was made again" in capsys.readouterr().err


def test_chat_answers_one_prompt_a_file_and_stdin_and_evaluate_logs_each_phase(tiny, tmp_path, capsys, monkeypatch):
    import shutil

    folder, _ = tiny
    sft = shutil.copytree(folder / "sft-tiny", tmp_path / "sft-tiny")  # evaluate logs into the run it evaluates
    assert main(["instruct", "evaluate", str(sft), "--reference", str(folder / "pretrain-tiny"), "--tasks", "3",
                 "--max-new-tokens", "8", "--heldout-pages", "2", "--cot-tasks", "2", "--cot-tokens", "8"]) == 0
    log = (sft / "log.txt").read_text()
    for line in ("evaluate: answering 3 instructions: prompt 3/3", "evaluate: the reference answering 3 instructions",
                 "evaluate: scoring 2 held-out pages: page 2/2",
                 "evaluate: chain of thought on 2 problems (3 greedy passes): prompt 6/6"):
        assert line in log, log
    assert "evaluate: answering" in capsys.readouterr().err  # and on stderr
    assert main(["instruct", "chat", str(folder / "ppo-tiny"), "--prompt", "What is 2 + 3?",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() != ""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a short poem about a wise frog.\n\nWhat is 2 + 3?\n")
    assert main(["instruct", "chat", str(folder / "sft-tiny"), "--prompts", str(prompts), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.count("> ") == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\nName two towns.\n"))
    assert main(["instruct", "chat", str(folder / "pretrain-tiny"), "--max-new-tokens", "4"]) == 0


@pytest.mark.parametrize("args, message", [
    (["chat", "{sft}", "--prompts", "{empty}"], "holds no prompts"),
    (["chat", "{sft}", "--prompt", "  "], "--prompt is empty"),
    (["chat", "{sft}", "--prompts", "{bad}"], "bad.txt is not UTF-8 text (byte 8 is 0xff)"),
    (["chat", "{sft}", "--prompts", "{tmp}"], "is a folder, not a text file"),
    (["chat", "{sft}", "--prompt", "bad \udcff"], "--prompt is not UTF-8 text"),  # how Python decodes argv's bytes
    (["chat", "{sft}", "--prompts", "{bad}", "--prompt", "hi"], "not allowed with argument"),
    (["reward", "--init", "{sft}", "--rankings", "{bad}", "--out", "{out}"], "bad.txt is not UTF-8 text"),
    (["dpo", "--init", "{sft}", "--rankings", "{bad}", "--out", "{out}"], "bad.txt is not UTF-8 text"),
    (["chat", "{tmp}/nowhere", "--prompt", "hi"], "is not a model"),
    (["ppo", "--resume", "{sft}"], "is an instruct.sft run, not an instruct.ppo run"),
    (["sft", "--resume", "{sft}", "--steps", "1"], "--steps 1 is fewer than the 30 steps the resumed run has trained"),
    (["sft", "--resume", "{sft}", "--out", "{out}"], "continues in that folder; leave out --out"),
    (["pipeline", "--preset", "demo", "--out", "{sft}"], "is a run folder (instruct.sft), not an instruct pipeline"),
    (["pipeline", "--preset", "demo", "--out", "{empty}"], "exists and is not a folder; choose another --out"),
    (["pipeline", "--preset", "demo", "--out", "{tmp}"], "holds other files; an instruct pipeline starts in a new or"),
    (["pipeline", "--preset", "demo", "--sizes", "tiny", "--stages", "sft-tiny", "--out", "{out}"],
     "sft-tiny needs pretrain-tiny, which has not run to its end; run the pipeline without --stages, or with "
     "--stages pretrain-tiny,sft-tiny"),
    (["pipeline", "--preset", "demo", "--sizes", "tiny", "--stages", "evaluate", "--out", "{out}"],
     "evaluate needs pretrain-tiny"),
    (["reward", "--init", "{sft}", "--rankings", "{sft}", "--out", "{out}"],
     "is an instruct.sft run, not an instruct.rank run"),
    (["pipeline", "--preset", "demo", "--stages", "sft-tiny,polish", "--out", "{out}"], "unknown stage 'polish'"),
    (["pipeline", "--sizes", "huge", "--out", "{out}"], "unknown size 'huge'"),
    (["pipeline", "--sizes", "small,tiny", "--out", "{out}"], "give each size once, smallest first"),
    (["pipeline", "--sizes", "tiny,tiny", "--out", "{out}"], "give each size once, smallest first"),
    (["pipeline", "--preset", "demo", "--sizes", "tiny,small,medium,large,xl", "--out", "{out}"],
     "the demo preset ranks 4 outputs a prompt"),
    (["pipeline", "--preset", "demo", "--sizes", "xl", "--stages", "sft-tiny", "--out", "{out}"],
     "the stages of {out} are: pretrain-xl, sft-xl,"),
    (["ppo", "--init", "{sft}", "--reward-model", "{rm}", "--clip", "0", "--out", "{out}"], "--clip must be > 0"),
    (["ppo", "--init", "{sft}", "--reward-model", "{rm}", "--rollouts", "10", "--minibatch", "4", "--out", "{out}"],
     "multiple of --minibatch"),
    (["ppo", "--init", "{sft}", "--reward-model", "{rm}", "--ptx-coef", "1", "--ptx-context", "65", "--out", "{out}"],
     "--ptx-context 65 is longer than the context of"),  # the tiny model's context is 64
    (["ppo", "--init", "{sft}", "--reward-model", "{rm}", "--kl-coef", "0", "--target-kl", "1", "--out", "{out}"],
     "--target-kl needs a --kl-coef above 0"),
    (["ppo", "--init", "{sft}", "--reward-model", "{rm}", "--minibatch", "0", "--out", "{out}"],
     "--minibatch must be >= 1"),
    (["ppo", "--init", "{sft}", "--reward-model", "{sft}", "--out", "{out}"],
     "is an instruct.sft run, not a reward model"),
    (["ppo", "--init", "{rm}", "--reward-model", "{rm}", "--out", "{out}"], "is an instruct.reward run, not a policy"),
    (["sft", "--init", "{sft}", "--lr", "-1", "--out", "{out}"], "--lr must be > 0"),
    (["sft", "--out", "{out}"], "sft needs --init"),
    (["rank", "--models", "{sft},{sft},{sft}", "--k", "2", "--out", "{out}"],
     "--k 2 must be at least the number of --models (3)"),
    (["sft", "--init", "{tmp}/nowhere", "--out", "{out}"], "is not a model"),
    (["pretrain", "--size", "huge", "--out", "{out}"], "invalid choice: 'huge'"),
    (["pretrain", "--init", "{sft}", "--size", "small", "--out", "{out}"], "--size cannot go with --init"),
    (["pretrain", "--init", "{sft}", "--vocab-size", "500", "--out", "{out}"], "--vocab-size cannot go with --init"),
    (["pretrain", "--init", "{sft}", "--tokenizer", "{empty}", "--out", "{out}"], "--tokenizer cannot go with --init"),
    (["pretrain", "--init", "smollm2", "--out", "{out}"], "pretrain --init smollm2 needs --lr"),
    (["evaluate", "{tmp}/nowhere"], "is not a model"),
    (["evaluate", "{sft}", "--reference-style", "few_shot"], "--reference-style needs --reference"),
    (["evaluate", "{sft}", "--heldout-pages", "-3"], "--heldout-pages must be >= 0"),
    (["chat", "{sft}", "--prompt", "hi", "--max-new-tokens", "64"],
     "--max-new-tokens 64 leaves no room for a prompt in the model's context of 64 tokens"),
    # run folders of other commands, refused by name before Hugging Face is asked to read them
    (["chat", "{jukebox}", "--prompt", "hi"], "{jukebox} is a jukebox.pipeline run, not a policy"),
    (["chat", "{sample}", "--prompt", "hi"], "{sample} is a jukebox.sample run, not a policy"),
    (["evaluate", "{muse}"], "{muse} is a muse.train run, not a policy"),
    (["sft", "--init", "{jukebox}", "--out", "{out}"], "{jukebox} is a jukebox.pipeline run, not a policy"),
    (["ppo", "--init", "{sft}", "--reward-model", "{muse}", "--out", "{out}"],
     "{muse} is a muse.train run, not a reward model"),
    (["chat", "{codes}", "--prompt", "hi"],
     "{codes} is not a model that an instruct stage saved (no model type in its header)"),
    (["chat", "{sft}", "--prompt", "What is 2 + 3?", "--max-new-tokens", "63"],
     "more than the 1 that its context of 64 leaves beside --max-new-tokens 63, and the last 1 hold none of the "
     "instruction"),
    (["chat", "{sft}", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1 and <= 4096, not 0"),
])
def test_bad_input_is_one_line_and_exit_code_2_with_no_folder_left(tiny, tmp_path, capsys, args, message):
    from nexttoken.files import save_tensors

    folder, _ = tiny
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "bad.txt").write_bytes(b"What is \xff 2?\n")
    for name, kind in (("jukebox", "jukebox.pipeline"), ("sample", "jukebox.sample"), ("muse", "muse.train")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"kind": kind}))
    save_tensors(tmp_path / "codes.safetensors", {"codes": torch.zeros(4, dtype=torch.long)})
    fill = {"sft": folder / "sft-tiny", "rm": folder / "reward", "empty": tmp_path / "empty.txt",
            "bad": tmp_path / "bad.txt", "tmp": tmp_path, "out": tmp_path / "out", "jukebox": tmp_path / "jukebox",
            "sample": tmp_path / "sample", "muse": tmp_path / "muse", "codes": tmp_path / "codes.safetensors"}
    config = (folder / "sft-tiny" / "config.json").read_text()
    try:
        code = main(["instruct", *(a.format(**fill) for a in args)])
    except SystemExit as e:  # argparse refuses a bad choice itself, with the same one line and code
        code = e.code
    err = capsys.readouterr().err
    message = message.format(**fill)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    # a refused folder is left as it was
    assert (folder / "sft-tiny" / "summary.json").is_file() and (folder / "sft-tiny" / "config.json").read_text() == config


def test_a_damaged_rankings_file_is_refused_by_line_and_a_half_written_last_line_skipped(tiny, tmp_path):
    folder, _ = tiny
    first = (folder / "rank" / "rankings.jsonl").read_text().splitlines()[0]
    ranking = json.loads(first)
    fewer = {**ranking, "outputs": ranking["outputs"][:-1], "finished": ranking["finished"][:-1],
             "order": [i for i in ranking["order"] if i < len(ranking["outputs"]) - 1], "tiers": [],
             "models": ranking["models"][:-1]}
    cases = {"5": "line 1 is not a ranking of `nexttoken instruct rank`: not a ranking",
             json.dumps({**ranking, "order": [0] * len(ranking["order"])}): "tiers do not agree",
             f"{first}\n{json.dumps(fewer)}": f"line 2 ranks {len(fewer['outputs'])} outputs where the first ranks"}
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"{i}.jsonl").write_text(f"{text}\n{first}\n")
        with pytest.raises(UserError, match=re.escape(message)):
            read_rankings(tmp_path / f"{i}.jsonl")
    (tmp_path / "cut.jsonl").write_text(f"{first}\n{first[:40]}")  # a killed writer's last line
    assert len(read_rankings(tmp_path / "cut.jsonl")) == 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("[]")
    with pytest.raises(UserError, match="config.json is damaged"):
        read_rankings(tmp_path / "run")


def test_chat_says_when_a_prompt_is_cut_to_fit_the_context(tiny, tmp_path, capsys):
    """The tiny model's context is 64 tokens: a prompt longer than what --max-new-tokens leaves is cut to its last
    tokens with one warning, once per prompt that is cut; one that fits is not mentioned."""
    folder, _ = tiny
    long = "Tell me about the towns by the river. " * 20 + "What is 2 + 3?"
    assert main(["instruct", "chat", str(folder / "sft-tiny"), "--prompt", long, "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and len(err.strip().splitlines()) == 1, err
    assert err.startswith("nexttoken: warning: --prompt is ") and "the model reads only its last 56" in err, err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{long}\nWhat is 2 + 3?\n\n{long}\n")
    assert main(["instruct", "chat", str(folder / "sft-tiny"), "--prompts", str(prompts), "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.count("> ") == 3
    assert [line.split(" is ")[0] for line in err.strip().splitlines()] == [
        f"nexttoken: warning: line 1 of {prompts}", f"nexttoken: warning: line 4 of {prompts}"], err


def test_stdin_that_is_not_utf8_is_one_line_and_exit_code_2(tiny, capsys, monkeypatch):
    folder, _ = tiny
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\nWhat is \udcff 2?\n"))  # a byte decoded leniently
    assert main(["instruct", "chat", str(folder / "sft-tiny"), "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "line 2 of the standard input is not UTF-8 text" in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"What is \xff 2?\n"), encoding="utf-8"))  # strict
    assert main(["instruct", "chat", str(folder / "sft-tiny"), "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "the standard input is not UTF-8 text" in err and len(err.strip().splitlines()) == 1, err


def test_continued_pretraining_takes_the_lr_of_the_models_size_and_counts_its_own_rows(tiny, tmp_path, capsys,
                                                                                      monkeypatch):
    folder, _ = tiny
    monkeypatch.setitem(pretrain.SIZES, "small", (*pretrain.SIZES["tiny"][:3], 1e-3))  # the fixture's architecture
    monkeypatch.setitem(pretrain.SIZES, "tiny", (2, 4, 64, 3e-3))
    out = tmp_path / "more"
    assert main(["instruct", "pretrain", "--init", str(folder / "sft-tiny"), "--steps", "2", "--batch-size", "2",
                 "--corpus-chars", "20000", "--heldout-pages", "2", "--out", str(out)]) == 0
    assert Run.open(out).config["optim"]["lr"] == 1e-3
    context = load_policy(folder / "sft-tiny").context
    assert json.loads((out / "summary.json").read_text())["tokens_seen"] == 2 * 2 * (context - 1)
    assert Run.open(out).config["pretrain"]["context"] == context  # the rows it trained on, not the default 256
    capsys.readouterr()
    assert main(["instruct", "pretrain", "--init", str(folder / "sft-tiny"), "--context", str(context + 1),
                 "--out", str(tmp_path / "longer")]) == 2
    assert f"--context {context + 1} is longer than the context of" in capsys.readouterr().err
    assert not (tmp_path / "longer").exists()


@pytest.mark.parametrize("args, message", [
    (["--reference", "{tmp}/nowhere"], "is not a model"),
    (["--cot-tokens", "64", "--max-new-tokens", "8"],
     "--cot-tokens 64 leaves no room for a prompt in the model's context of 64"),
    (["--reference", "{sft}", "--max-new-tokens", "64"], "--max-new-tokens 64 leaves no room"),
])
def test_evaluate_refuses_a_bad_reference_or_length_before_sampling_anything(tiny, tmp_path, capsys, monkeypatch,
                                                                            args, message):
    from nexttoken.instruct import evaluate

    folder, _ = tiny
    monkeypatch.setattr(evaluate, "respond_all", lambda *a, **k: pytest.fail("sampled before refusing"))
    fill = {"sft": folder / "sft-tiny", "tmp": tmp_path}
    assert main(["instruct", "evaluate", str(folder / "sft-tiny"), *(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_says_once_when_its_prompts_are_cut_to_fit_the_context(tiny, capsys):
    """The tiny model's context is 64: 60 answer tokens leave 4 of a chat prompt, which `chat` would warn of or
    refuse; the evaluation says in one line how many of its prompts the model reads only the end of."""
    folder, _ = tiny
    assert main(["instruct", "evaluate", str(folder / "sft-tiny"), "--tasks", "2", "--cot-tasks", "0",
                 "--heldout-pages", "0", "--max-new-tokens", "60"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "2 of 2 prompts are longer than the 4 tokens that the model's context of 64 " \
        "leaves beside --max-new-tokens 60; it reads only their last 4" in warnings[0], warnings
