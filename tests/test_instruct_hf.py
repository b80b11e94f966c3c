"""Every instruct stage on a local Hugging Face causal LM: a two-layer Llama, randomly initialised and saved by the test,
with a tokenizer whose only special token is EOS (so a pad token has to be added)."""

import json

import pytest
import torch

from instruct_fixtures import WORLD
from nexttoken.distributed import Dist
from nexttoken.instruct import pipeline
from nexttoken.instruct.corpus import demonstrations, make_corpus
from nexttoken.instruct.hf import HFPolicy
from nexttoken.instruct.policy import (RewardModel, lm_loss_sum, load_policy, load_reward_model, respond,
                                      response_rows)
from nexttoken.instruct.stage import open_stage

transformers = pytest.importorskip("transformers")
CPU = torch.device("cpu")
ONE = Dist()  # one process, on the CPU
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    texts = [*make_corpus(WORLD, n_chars=30_000, seed=0).train,
             *(d.prompt + d.response for d in demonstrations(WORLD, 100, seed=0))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_hugging_face_model_gets_its_own_pad_token_and_samples_like_our_gpt(llama):
    policy = load_policy(llama)
    tok = policy.tokenizer
    assert isinstance(policy, HFPolicy) and tok.pad_id != tok.eos_id and policy.vocab_size == tok.vocab_size
    prompts = [policy.chat_prompt("What is 2 + 3?"), "Hi"]
    greedy = respond(policy, prompts, 6, temperature=0.0)
    assert greedy.texts == [respond(policy, [p], 6, temperature=0.0).texts[0] for p in prompts]  # padding is inert
    assert greedy.texts == respond(policy, prompts, 6, temperature=0.0, use_cache=False).texts  # cache == recompute
    sampled = respond(policy, prompts, 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not (sampled.response[sampled.response_mask.bool()] == tok.pad_id).any()


def test_right_padded_rows_need_no_mask(llama):
    """The training losses leave right-padded rows unmasked (``lm_loss_sum``): the same loss as with the mask."""
    policy = load_policy(llama)
    rows = response_rows(policy.tokenizer, [policy.chat_prompt("What is 2 + 3?")] * 2, ["5", "the answer is five"])
    with torch.no_grad():
        logits = policy(rows["ids"], rows["mask"])
        keep = rows["targets"] != -1
        masked = torch.nn.functional.cross_entropy(logits[keep].float(), rows["targets"][keep], reduction="sum")
        assert lm_loss_sum(policy, rows).item() == pytest.approx(masked.item(), rel=1e-5)


def test_every_trainable_parameter_of_a_reward_model_gets_a_gradient(llama):
    """The reward model reads hidden states: the tiny Llama's untied LM head is frozen, every other parameter learns
    (DDP waits for a gradient of every trainable parameter, and would hang on one that never gets any)."""
    policy = load_policy(llama)
    rm = RewardModel(policy)
    assert not policy.model.get_output_embeddings().weight.requires_grad
    ids = torch.tensor([policy.tokenizer.encode("What is 2 + 3? 5", eos=True)])
    rm(ids).sum().backward()
    trainable = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in rm.parameters() if p.requires_grad)


def test_every_stage_runs_on_a_hugging_face_model(llama, tmp_path):
    folder = tmp_path / "pipe"
    stages = [
        ("sft", "sft", {"sft": {"init": str(llama), "demonstrations": 64, "val_demonstrations": 8},
                        "loop": {"steps": 4, "batch_size": 8, "eval_every": 4}}),
        ("rank", "rank", {"rank": {"models": [str(folder / "sft")], "prompts": 16, "k": 3, "max_new_tokens": 8}}),
        ("reward", "reward", {"reward": {"init": str(folder / "sft"), "rankings": str(folder / "rank"),
                                         "bias_demonstrations": 8}, "loop": {"batch_size": 4}}),
        ("ppo", "ppo", {"ppo": {"init": str(folder / "sft"), "reward_model": str(folder / "reward"), "iterations": 2,
                                "rollouts": 4, "minibatch": 2, "epochs": 1, "max_new_tokens": 8, "norm_samples": 8,
                                "ptx_coef": 1.0, "ptx_chars": 20_000, "ptx_context": 32, "ptx_rows": 2}}),
        ("dpo", "dpo", {"dpo": {"init": str(folder / "sft"), "rankings": str(folder / "rank")},
                        "loop": {"batch_size": 4}}),
    ]
    for name, kind, overrides in stages:
        run, configs = open_stage(folder / name, kind, pipeline.stage_configs(kind, {}, **overrides), False)
        with run:
            pipeline.MODULES[kind].run_stage(configs, run, ONE, progress=False)
        assert (folder / name / "summary.json").is_file()
    for name in ("sft", "ppo", "dpo"):
        policy = load_policy(folder / name)
        assert isinstance(policy, HFPolicy)
        assert isinstance(respond(policy, ["What is 2 + 3?"], 4, temperature=0.0).texts[0], str)
    rm, _ = load_reward_model(folder / "reward")
    assert isinstance(rm.backbone, HFPolicy)
    spec = json.loads((folder / "ppo" / "config.json").read_text())
    assert spec["kind"] == "instruct.ppo"
    # The trained weights differ from the model it started from (the stages trained, not merely copied).
    start, after = load_policy(llama), load_policy(folder / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), after.parameters()))


def test_a_fine_tuned_model_whose_base_folder_is_gone_says_so(llama, tmp_path):
    import shutil

    from nexttoken.errors import UserError
    from nexttoken.instruct.policy import save_model

    base = tmp_path / "base"
    shutil.copytree(llama, base)
    save_model(load_policy(base), tmp_path / "policy.safetensors")
    shutil.rmtree(base)
    with pytest.raises(UserError, match=f"the base model folder {base.resolve()} of .*policy.safetensors is gone"):
        load_policy(tmp_path / "policy.safetensors")


@pytest.mark.parametrize("damage", ["half of the weights", "a config that is not an object", "a layer count as text"])
def test_a_damaged_model_folder_is_one_line(llama, tmp_path, damage):
    import shutil

    from nexttoken.errors import UserError
    from nexttoken.instruct.hf import load_hf

    folder = tmp_path / "damaged"
    shutil.copytree(llama, folder)
    if damage == "half of the weights":  # an interrupted download
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "a config that is not an object":
        (folder / "config.json").write_text("[]")
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "x"}))
    with pytest.raises(UserError, match="cannot load a causal LM from"):
        load_hf(str(folder))
