"""Training, generation, evaluation and the CLI, end to end on a toy two-style corpus with a tiny model."""

import json
import subprocess
import sys
import wave

import numpy as np
import pytest
import symusic
import torch

from muse_fixtures import TINY, trained_run
from nexttoken.errors import UserError
from nexttoken.midi.corpus import load_corpus
from nexttoken.midi.notes import FAMILIES, read_midi
from nexttoken.muse.data import Batches
from nexttoken.muse.encoding import QUANTUM, make_encoding
from nexttoken.muse.generate import GenerateConfig, generate_pieces
from nexttoken.muse.train import MuseConfig, load_run
from nexttoken.sampling import SamplingConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory, monkeypatch_module):
    trained = trained_run(tmp_path_factory)
    monkeypatch_module.setenv("NEXTTOKEN_CACHE", str(trained["cache"]))
    return trained


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_training_learns_and_writes_bits_per_note(env):
    records = [json.loads(line) for line in (env["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    summary = json.loads((env["run"] / "summary.json").read_text())
    assert summary["bits_per_note"] == records[-1]["bits_per_note"]
    # Untrained, a token costs about log2(vocab) bits (11 here) and a note about 2.8 tokens: 30 bits.
    assert summary["bits_per_note"] < 0.6 * np.log2(summary["vocab_size"]) * summary["tokens_per_note"]
    assert records[-1]["bits_per_note"] < records[0]["bits_per_note"]
    assert set(summary["composers"]) == {"chords", "scales"}
    by_kind = summary["bits_per_note_by_kind"]  # every predicted token is of one kind: the parts add up
    assert set(by_kind) <= {"header", "note-on", "note-off", "wait", "end"} and {"note-on", "wait"} <= set(by_kind)
    assert sum(by_kind.values()) == pytest.approx(summary["bits_per_note"], rel=1e-6)
    # Renormalising over what the sampler's rules allow only moves probability onto the real tokens.
    assert summary["masked_bits_per_note"] < summary["bits_per_note"]


def test_sampler_rules_allow_every_real_next_token_and_only_sounding_note_offs(env):
    corpus = load_corpus(env["corpus"])
    enc = make_encoding("musenet", corpus.composers(), corpus.families())
    v = enc.vocab
    for p in range(len(corpus)):
        e = enc.encode(corpus.notes(p), corpus.labels[p])
        allowed = enc.allowed_next(e.ids, e.n_header)
        assert allowed[np.arange(len(e.ids) - 1), e.ids[1:]].all()  # the encoder never breaks the rules
    ids = v.from_strings(["composer:chords", "inst:piano", "start", "tempo:120", "piano:v72:C4", "wait:10",
                          "piano:v0:C4", "end"])
    allowed = enc.allowed_next(ids, 4)
    c4_off, d4_off = v.id("piano:v0:C4"), v.id("piano:v0:D4")
    assert allowed[4, c4_off] and allowed[5, c4_off] and not allowed[6, c4_off]  # sounding from the note-on on
    assert not allowed[4:, d4_off].any() and not allowed[3, c4_off]
    assert not allowed[3:, v.header_ids()].any() and allowed[:3].all()


def test_batches_depend_on_the_step_alone_and_start_with_the_header(env):
    corpus = load_corpus(env["corpus"])
    cfg = MuseConfig(corpus=env["corpus"], composers=corpus.composers(), families=corpus.families(), **TINY)
    enc = make_encoding("musenet", cfg.composers, cfg.families)
    a, b = Batches(corpus, enc, cfg, 4, seed=0), Batches(corpus, enc, cfg, 4, seed=0)
    first = a(7)
    a(3)
    assert all(torch.equal(first[k], b(7)[k]) for k in first)
    assert not torch.equal(first["idx"], a(8)["idx"])
    composer_ids = {enc.composer_id(c) for c in cfg.composers}
    assert all(int(row[0]) in composer_ids for row in first["idx"])
    timing = first["timing"].numpy()  # (B, T, 4): time, index in the chord, part, countdown
    assert timing.shape == (4, 64, 4)
    for row, targets, features in zip(first["idx"].numpy(), first["targets"].numpy(), timing):
        H = int(np.argmax(row == enc.vocab.start)) + 2  # ... start tempo:N
        n = int((targets != -1).sum()) + 1  # the row's tokens before the padding
        assert (features[:H] == 0).all() and (features[H:n, 3] > 0).all()  # the header has no place in time
        assert (np.diff(features[H:n, 0]) >= 0).all() and (np.diff(features[H:n, 3]) <= 0).all()  # time goes on


def test_generation_has_the_requested_length_header_and_prime(env, tmp_path):
    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    prime = next((env["root"] / "midi" / "scales").glob("*.mid"))
    gen = GenerateConfig(composer="chords", instruments=["strings"], prime=str(prime), prime_notes=4, seconds=6, n=2)
    pieces = generate_pieces(model, enc, gen, torch.device("cpu"), cfg.tokens_per_second)
    vocab = enc.vocab
    events = vocab.to_strings(enc.encode(read_midi(prime), "scales").ids[4:])  # after the prime's own header
    fourth_on = [i for i, t in enumerate(events) if t.startswith("piano:") and ":v0:" not in t][3]
    for piece in pieces:
        tokens = vocab.to_strings(piece.ids)
        assert tokens[:4] == ["composer:chords", "inst:strings", "start", "tempo:120"]
        assert tokens[4 : 5 + fourth_on] == events[: fourth_on + 1]  # the prime, up to its 4th note
        assert tokens[-1] == "end" and piece.finished
        assert vocab.wait_value[piece.ids].sum() * QUANTUM == pytest.approx(6.0)  # exactly the requested length
        assert piece.notes.seconds <= 6.0 + 1e-6 and len(piece.notes) > 0


def test_strict_mode_masks_other_instruments(env, capsys):
    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    gen = GenerateConfig(composer="scales", instruments=["strings"], strict=True, seconds=4, n=2,
                         sampling=SamplingConfig(top_p=0.95, seed=1))
    for piece in generate_pieces(model, enc, gen, torch.device("cpu"), cfg.tokens_per_second):
        assert set(FAMILIES[f] for f in piece.notes.family) <= {"strings"}
    # An instrument the corpus never had: a suggestion with a warning, and an error when strict.
    gen = GenerateConfig(composer="scales", instruments=["brass"], seconds=2, n=1)
    assert len(generate_pieces(model, enc, gen, torch.device("cpu"), cfg.tokens_per_second)) == 1
    assert "never saw brass" in capsys.readouterr().err
    with pytest.raises(UserError, match="no notes for brass"):
        generate_pieces(model, enc, GenerateConfig(instruments=["brass"], strict=True, seconds=2, n=1),
                        torch.device("cpu"), cfg.tokens_per_second)


def test_evaluation_reports_fidelity_and_distances(env, tmp_path):
    from nexttoken.muse.evaluate import evaluate, format_report

    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    corpus = load_corpus(env["corpus"])

    def run(min_pieces, **kw):
        return evaluate(model, enc, cfg, corpus, torch.device("cpu"), n_per_composer=2, seconds=4,
                        min_pieces=min_pieces, **kw)

    ev = run(2, progress=True, log=tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()  # each part's progress, as long work shows it
    assert "evaluate: bits per note on 2 held-out pieces: window" in log
    assert "evaluate: sampling 2 excerpts per composer: excerpt 4/4" in log
    assert ev.classifier_classes == ["chords", "scales"] and ev.chance == 0.5
    assert ev.real_accuracy == 1.0  # the two toy styles are trivially separable on real excerpts
    # Training scored the same held-out pieces (val_pieces=0) with the same weights.
    summary = json.loads((env["run"] / "summary.json").read_text())
    assert ev.bits_per_note == pytest.approx(summary["bits_per_note"], rel=1e-6)
    assert ev.bits_per_note_by_kind == pytest.approx(summary["bits_per_note_by_kind"], rel=1e-6)
    assert [r["composer"] for r in ev.per_composer] == ["chords", "scales"]
    assert all(r["real_pitch_class_tvd"] > 0 and r["generated"] == 2 for r in ev.per_composer)
    assert sum(ev.bits_per_note_by_kind.values()) == pytest.approx(ev.bits_per_note, rel=1e-6)
    assert 0 < ev.masked_bits_per_note < ev.bits_per_note
    # One held-out piece per composer, fewer training pieces than the classifier asks for: said, not printed as nan.
    few = run(10)
    assert few.classifier_classes == [] and few.chance is None and few.per_composer == []
    text = format_report(few)
    assert "nan" not in text and "composer classifier: not measured" in text
    assert "nan" not in json.dumps(few.to_dict()).lower()


def test_a_miditok_encoded_run_is_evaluated_without_sampling(env):
    """REMI and MIDILike runs are for comparing bits per note: the evaluation measures that and the classifier on real
    excerpts, and says why it sampled nothing, instead of failing after the bits per note."""
    from dataclasses import replace

    from nexttoken.muse.evaluate import evaluate, format_report
    from nexttoken.muse.model import build_model

    _, _, cfg, _ = load_run(env["run"], torch.device("cpu"))
    cfg = replace(cfg, encoding="remi")
    enc = make_encoding("remi", cfg.composers, cfg.families)
    torch.manual_seed(0)
    ev = evaluate(build_model(cfg, enc.vocab_size), enc, cfg, load_corpus(env["corpus"]), torch.device("cpu"),
                  n_per_composer=2, seconds=4, min_pieces=2)
    assert ev.bits_per_note > 0 and ev.real_accuracy == 1.0 and ev.generated_accuracy is None
    assert "no excerpts sampled: generation needs a run trained with --encoding musenet" in format_report(ev)


def test_evaluation_samples_with_the_given_temperature_top_p_and_seed(env, monkeypatch):
    import nexttoken.muse.generate as generate
    from nexttoken.muse.evaluate import evaluate

    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    corpus = load_corpus(env["corpus"])
    drawn = []

    def recording(*args, **kwargs):
        pieces = generate_pieces(*args, **kwargs)
        drawn[-1].append([p.ids.tolist() for p in pieces])
        return pieces

    monkeypatch.setattr(generate, "generate_pieces", recording)

    def samples(**sampling):
        drawn.append([])
        evaluate(model, enc, cfg, corpus, torch.device("cpu"), n_per_composer=2, seconds=3, min_pieces=2,
                 sampling=SamplingConfig(**sampling))
        return drawn[-1]

    greedy, hot = samples(temperature=0.0), samples(temperature=3.0, seed=5)
    assert len(hot) == 2 and greedy != hot
    assert samples(temperature=3.0, seed=5) == hot and samples(temperature=3.0, seed=6) != hot
    assert samples(temperature=3.0, top_p=0.3, seed=5) != hot


def test_cached_generation_equals_recomputing_every_window(env):
    """The KV cache, refilled window after window, with the timing inputs computed from the tokens in the cache."""
    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    for sampling in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0, seed=3)):
        gen = GenerateConfig(composer="scales", seconds=12, n=2, sampling=sampling)
        cached = generate_pieces(model, enc, gen, torch.device("cpu"), cfg.tokens_per_second, use_cache=True)
        fresh = generate_pieces(model, enc, gen, torch.device("cpu"), cfg.tokens_per_second, use_cache=False)
        assert [p.ids.tolist() for p in cached] == [p.ids.tolist() for p in fresh]
        assert max(len(p.ids) for p in cached) > cfg.context  # more than one window


def test_midi_tok_token_kinds_are_its_token_types():
    kinds = make_encoding("remi", ["bach"]).token_kinds()
    assert {"Pitch", "Velocity", "Duration", "Position", "Bar", "header"} <= set(kinds)


def test_classifier_learns_separable_features():
    from nexttoken.classifier import fit_classifier

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (50, 5)), rng.normal(3, 1, (50, 5))])
    y = np.repeat([0, 1], 50)
    clf = fit_classifier(x, y, ["a", "b"])
    assert (clf.predict(x) == y).mean() > 0.95


def cli(*args, cwd, env_vars):
    import os

    return subprocess.run([sys.executable, "-m", "nexttoken", "muse", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ, **env_vars})


def test_cli_end_to_end(env, tmp_path, capsys):
    """encode -> decode and embeddings in-process; generate (mid, wav, png) as a user runs it, in a new process."""
    from nexttoken.cli import main

    prime = next((env["root"] / "midi" / "scales").glob("*.mid"))
    assert main(["muse", "encode", str(prime), "-o", str(tmp_path / "p.tokens"), "--composer", "J. S. Bach"]) == 0
    assert (tmp_path / "p.tokens").read_text().splitlines()[0] == "composer:j_s_bach"
    assert main(["muse", "decode", str(tmp_path / "p.tokens"), "-o", str(tmp_path / "p.mid")]) == 0
    assert symusic.Score(str(tmp_path / "p.mid")).note_num() == len(read_midi(prime))
    assert main(["muse", "embeddings", str(env["run"]), "--out", str(tmp_path / "emb")]) == 0
    assert (tmp_path / "emb" / "composer_map.png").is_file() and (tmp_path / "emb" / "composer_similarity.png").is_file()

    out = tmp_path / "samples"
    p = cli("generate", env["run"], "--composer", "scales", "--instruments", "piano,strings", "--prime", prime,
            "--prime-notes", "3", "--seconds", "4", "--n", "2", "--temperature", "0.9", "--top-p", "0.9",
            "--device", "cpu", "--out", out, cwd=tmp_path, env_vars={"NEXTTOKEN_CACHE": str(env["cache"])})
    assert p.returncode == 0, p.stderr
    # Progress on a stderr that is not a terminal, naming what is composed, and in the run's log.
    assert "compose 2 pieces of scales for piano,strings, primed: second 4/4 (100%)" in p.stderr
    log = (env["run"] / "log.txt").read_text()
    assert "compose 2 pieces of scales for piano,strings, primed: second 4/4 (100%)" in log
    assert "write 2 samples: piece 2/2 (100%)" in p.stderr and "write 2 samples: piece 2/2 (100%)" in log
    for k in range(2):
        assert symusic.Score(str(out / f"sample-{k:02d}.mid")).note_num() > 0
        assert (out / f"sample-{k:02d}.png").stat().st_size > 1000
        with wave.open(str(out / f"sample-{k:02d}.wav")) as w:  # a soundfont's, or the built-in synthesizer's
            assert w.getnframes() / w.getframerate() > 3.0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["config"]["instruments"] == ["piano", "strings"] and len(meta["samples"]) == 2


def test_critic_features_tell_real_music_from_noise(env):
    """The inner critic's features (the model's own view of a piece) separate real excerpts from random notes."""
    from nexttoken.muse.critic import Critic, piece_features, real_excerpts
    from nexttoken.midi.notes import Notes
    from nexttoken.classifier import fit_classifier

    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    corpus = load_corpus(env["corpus"])
    rng = np.random.default_rng(0)
    real, labels = real_excerpts(corpus, "train", cfg.composers, 4.0, 100, rng)
    noise = []
    for _ in range(len(real)):
        start = np.sort(rng.uniform(0, 3.5, 12))
        noise.append(Notes(start, start + rng.uniform(0.05, 0.5, 12), rng.integers(30, 100, 12), np.full(12, 80),
                           np.zeros(12, dtype=np.int8)))
    x_real = piece_features(model, [enc.encode(n, c) for n, c in zip(real, labels)], cfg.context)
    x_noise = piece_features(model, [enc.encode(n, c) for n, c in zip(noise, labels)], cfg.context)
    assert x_real.shape == (len(real), cfg.n_embd + 5)
    assert x_noise[:, cfg.n_embd].mean() > x_real[:, cfg.n_embd].mean()  # random notes surprise the model more
    x = np.concatenate([x_noise, x_real])
    y = np.repeat([0, 1], len(real))
    critic = Critic(fit_classifier(x, y, ["generated", "real"]), 4.0, 1.0, 0.95)
    p = critic.prob_real(x)
    assert ((p > 0.5) == y).mean() > 0.9


def test_critic_cli_fits_saves_and_ranks_candidates(env, tmp_path, capsys):
    import shutil

    from nexttoken.cli import main
    from nexttoken.muse.critic import CRITIC_FILE, Critic

    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    # Without a critic, --candidates is one clear error line.
    assert main(["muse", "generate", str(run), "--candidates", "2", "--seconds", "2", "--device", "cpu"]) == 2
    assert "no critic yet" in capsys.readouterr().err
    assert main(["muse", "critic", str(run), "--per-composer", "3", "--seconds", "4", "--device", "cpu"]) == 0
    assert "balanced accuracy" in capsys.readouterr().out
    report = json.loads((run / "critic.json").read_text())
    assert report["train_generated"] == 6 and report["test_generated"] == 6 and report["train_real"] > 0
    assert report["balanced_accuracy"] == pytest.approx((report["accuracy_real"] + report["accuracy_generated"]) / 2)
    critic = Critic.load(run / CRITIC_FILE)
    assert critic.seconds == 4.0 and critic.classifier.weight.shape == (32 + 5, 2)
    with pytest.raises(UserError, match="reads features 37 wide, and this run's model gives 69"):
        Critic.load(run / CRITIC_FILE, width=64 + 5)  # a critic copied from a run of another width
    log = (run / "log.txt").read_text()  # each part's progress, in the run's log
    assert f"critic: features of {report['train_real']} real excerpts: window" in log
    assert "critic: sampling: piece 6/6 (100%)" in log and "critic: features of 6 samples: window" in log

    out = tmp_path / "ranked"
    assert main(["muse", "generate", str(run), "--composer", "scales", "--n", "2", "--candidates", "3",
                 "--seconds", "3", "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "samples.json").read_text())
    scores = [s["critic_real"] for s in meta["samples"]]
    assert meta["candidates"] == 3 and len(scores) == 2 and scores == sorted(scores, reverse=True)


def test_critic_names_greedy_samples_without_notes_as_the_cause(env, tmp_path, monkeypatch, capsys):
    import shutil

    import nexttoken.muse.critic as critic
    from nexttoken.cli import main
    from nexttoken.midi.notes import Notes
    from nexttoken.muse.generate import Piece

    def silent(model, encoding, cfg, *args, **kwargs):  # what a greedy model that stops at once composes
        empty = Notes(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                      np.zeros(0, dtype=np.int8))
        return [Piece(np.zeros(5, dtype=np.int64), empty, 0.0, True) for _ in range(cfg.n)]

    monkeypatch.setattr(critic, "generate_pieces", silent)
    run = shutil.copytree(env["run"], tmp_path / "run")
    for temperature, cause in (("0", "greedy sampling (--temperature 0)"), ("1", "train the model longer")):
        assert main(["muse", "critic", str(run), "--per-composer", "2", "--seconds", "4", "--temperature",
                     temperature, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "none of the 4 samples drawn to fit the critic holds a note" in err[-1] and cause in err[-1]
    assert not (run / "critic.safetensors").exists()


def test_countdown_embedding_counts_down_to_the_end(env):
    from nexttoken.muse.model import MusicalEmbedding, timing_features
    from nexttoken.muse.train import saved_configs
    from nexttoken.runs import Run

    model, enc, cfg, _ = load_run(env["run"], torch.device("cpu"))
    assert model.music.countdown and cfg.countdown_embedding
    # The extra embeddings start at zero (the plain GPT) and training moves them.
    assert all(p.abs().sum() > 0 for p in model.music.parameters())
    fresh = MusicalEmbedding(8, timing=True, structure=True, countdown=True)
    assert all((p == 0).all() for p in fresh.parameters())
    corpus = load_corpus(env["corpus"])
    e = enc.encode(corpus.notes(0), corpus.labels[0])
    left = timing_features(e, np.arange(len(e.ids)))[:, 3]
    assert (left[: e.n_header] == 0).all()  # the header has no place in time
    assert (np.diff(left[e.n_header :]) <= 0).all() and left[e.n_header] > left[-1] == 1  # down to 1 at `end`
    # A run saved before the countdown embedding existed (and before runs named their kind) loads without one.
    saved = json.loads((env["run"] / "config.json").read_text())
    del saved["kind"], saved["muse"]["countdown_embedding"]
    old = Run(env["run"], saved)
    assert saved_configs(old)[0].countdown_embedding is False


def test_report_of_a_run_has_samples_critic_and_map(env, tmp_path, capsys):
    import shutil

    from nexttoken.cli import main

    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    out = tmp_path / "report"
    assert main(["muse", "report", str(run), "--seconds", "3", "--candidates", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err  # each piece's progress names the piece
    for piece in ("2 pieces of chords for strings:", "2 pieces of scales for piano:",
                  "2 pieces of scales for piano, primed:"):
        assert f"compose {piece} second 3/3" in err, err
    assert "critic: sampling: piece" in (run / "log.txt").read_text()
    page = (out / "report.html").read_text()
    assert "inner critic" in page and "primed with the first 6 notes" in page and "composer_map.png" in page
    import re

    pieces = set(re.findall(r"sample-\d\d-\w+/sample-00\.png", page))
    assert len(pieces) == 3  # chords, scales, and scales primed with a chords opening
    assert page.count("<audio") == 3  # a soundfont's audio, or the built-in synthesizer's
    fitted = (run / "critic.safetensors").stat().st_mtime_ns
    assert main(["muse", "report", str(run), "--seconds", "3", "--candidates", "2", "--composers", "1",
                 "--device", "cpu", "--out", str(tmp_path / "again")]) == 0
    assert (run / "critic.safetensors").stat().st_mtime_ns == fitted  # the run's critic is reused, not refitted
    assert main(["muse", "report", str(tmp_path)]) == 2  # not a run
    assert "not a" in capsys.readouterr().err


def test_resume_trains_a_finished_run_further_only_when_asked(env, tmp_path, capsys):
    import shutil

    from nexttoken.cli import main
    from nexttoken.runs import read_metrics

    run = shutil.copytree(env["run"], tmp_path / "run")
    assert main(["muse", "train", "--resume", str(run), "--device", "cpu"]) == 0
    assert "has finished its 60 steps; nothing to train (pass --steps N" in capsys.readouterr().err
    assert main(["muse", "train", "--resume", str(run), "--steps", "80", "--device", "cpu"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [20, 40, 60, 80]
    assert json.loads((run / "summary.json").read_text())["steps"] == 80


def test_the_gpu_preset_sizes_the_model_and_its_training_and_flags_override_it(env, tmp_path, capsys):
    from nexttoken.cli import main
    from nexttoken.muse.train import PRESETS

    run = tmp_path / "run"
    assert main(["muse", "train", "--preset", "gpu", "--corpus", env["corpus"], "--context", "64", "--n-layer", "1",
                 "--n-embd", "16", "--steps", "2", "--batch-size", "2", "--val-pieces", "2", "--device", "cpu",
                 "--out", str(run)]) == 0
    assert "--preset gpu on the CPU" in capsys.readouterr().err  # said before the slow work starts
    saved = json.loads((run / "config.json").read_text())
    gpu = PRESETS["gpu"]
    assert saved["muse"]["n_layer"] == 1 and saved["muse"]["context"] == 64  # typed
    assert saved["muse"]["dropout"] == gpu.model["dropout"] and saved["muse"]["n_head"] == gpu.model["n_head"]
    assert saved["optim"]["lr"] == gpu.optim.lr and saved["loop"]["max_seconds"] == gpu.loop.max_seconds
    assert saved["loop"]["steps"] == 2
    capsys.readouterr()
    assert main(["muse", "train", "--resume", str(run), "--preset", "gpu", "--device", "cpu"]) == 2
    assert "leave out --preset" in capsys.readouterr().err


def test_a_run_saved_before_runs_named_their_kind_is_still_read(env, tmp_path):
    import shutil

    from nexttoken.muse.embeddings import composer_map

    run = shutil.copytree(env["run"], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    del config["kind"]
    (run / "config.json").write_text(json.dumps(config))
    assert [p.name for p in composer_map(run)] == ["composer_similarity.png", "composer_map.png"]


def test_two_generations_in_the_same_second_write_two_folders(env, tmp_path, monkeypatch, capsys):
    import shutil
    import time

    from nexttoken.cli import main

    run = shutil.copytree(env["run"], tmp_path / "run")
    monkeypatch.setattr(time, "strftime", lambda fmt, *when: "20260101-000000")
    for _ in range(2):
        assert main(["muse", "generate", str(run), "--seconds", "2", "--n", "1", "--device", "cpu"]) == 0
    folders = sorted(p.name for p in run.glob("samples-*"))
    assert folders == ["samples-20260101-000000", "samples-20260101-000000-2"]
    assert all((run / f / "sample-00.wav").is_file() for f in folders)
    err = capsys.readouterr().err
    assert err.count("compose 1 piece of chords for piano: second 2/2 (100%)") == 2  # progress, also without a terminal


def test_generate_names_a_composer_as_the_corpus_does_and_writes_into_a_new_or_empty_folder(env, tmp_path, capsys):
    from nexttoken.cli import main

    out = tmp_path / "samples"
    out.mkdir()  # empty: fine
    assert main(["muse", "generate", str(env["run"]), "--composer", " Scales", "--seconds", "1", "--n", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "samples.json").read_text())["config"]["composer"] == "scales"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    assert main(["muse", "generate", str(env["run"]), "--seconds", "1", "--n", "1", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before


def test_a_corpus_without_held_out_pieces_reports_no_bits_per_note(tmp_path, monkeypatch, capsys):
    """One piece per composer: nothing is held out, which train, evaluate and report say instead of a 0."""
    from muse_fixtures import toy_corpus
    from nexttoken.cli import main

    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))
    corpus, run = toy_corpus(tmp_path / "midi", per_style=1), tmp_path / "run"
    assert main(["muse", "train", "--corpus", str(corpus), "--context", "32", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--steps", "2", "--batch-size", "2", "--device", "cpu", "--out", str(run)]) == 0
    assert "no validation pieces, so no bits per note" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bits_per_note"] is None and summary["tokens_per_note"] is None and summary["val_pieces"] == 0
    assert main(["muse", "evaluate", str(run), "--n-per-composer", "1", "--seconds", "1", "--device", "cpu"]) == 0
    assert "bits per note: not measured; the corpus holds no held-out pieces" in capsys.readouterr().out
    assert json.loads((run / "evaluation.json").read_text())["bits_per_note"] is None
    assert main(["muse", "report", str(run), "--candidates", "1", "--composers", "1", "--seconds", "1",
                 "--device", "cpu"]) == 0
    assert "no held-out pieces, so there are no bits per note" in (run / "report" / "report.html").read_text()


def test_a_run_reads_its_corpus_from_any_working_folder(tmp_path, monkeypatch, capsys):
    """--corpus typed relative to one folder: the run keeps its absolute path, so evaluate run from another folder
    (one holding a folder of the same name) reads the corpus it trained on, and a resume may type the path again."""
    from pathlib import Path

    from muse_fixtures import toy_corpus
    from nexttoken.cli import main

    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path / "cache"))
    toy_corpus(tmp_path / "here" / "midi", per_style=2)
    (tmp_path / "there" / "midi").mkdir(parents=True)
    run, cpu = str(tmp_path / "run"), ["--device", "cpu"]
    monkeypatch.chdir(tmp_path / "here")
    assert main(["muse", "train", "--corpus", "midi", "--context", "32", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--steps", "2", "--batch-size", "2", "--out", run, *cpu]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["muse"]["corpus"]
    assert Path(saved).is_absolute() and Path(saved).resolve() == (tmp_path / "here" / "midi").resolve()
    monkeypatch.chdir(tmp_path / "there")
    assert main(["muse", "evaluate", run, "--n-per-composer", "1", "--seconds", "1", *cpu]) == 0
    assert main(["muse", "train", "--resume", run, "--corpus", "midi", "--steps", "3", *cpu]) == 2
    assert "differs from the resumed run's" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "here")
    assert main(["muse", "train", "--resume", run, "--corpus", "midi", "--steps", "3", *cpu]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3
