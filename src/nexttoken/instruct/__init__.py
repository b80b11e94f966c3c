"""Making language models useful: InstructGPT's base -> SFT -> reward model -> PPO, and zero-shot chain of thought.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155; Kojima et al. 2022, https://arxiv.org/abs/2205.11916.
The data: world.py (the generated world), tasks.py (instruction families and their checkers), corpus.py (pretraining
pages and demonstrations), labeler.py (simulated labelers and win rates), tokenizer.py (byte-level BPE with left
padding). The models: policy.py (our GPT or a Hugging Face model, hf.py, behind one interface, and the reward head).
The stages, each a run folder: pretrain.py, sft.py, rankings.py, reward.py, ppo.py, dpo.py, and pipeline.py that
runs them in order; evaluate.py and results.py measure what the papers report, figures.py draws it, demo.py and
cli.py present it.
"""

HELP = "InstructGPT (base -> SFT -> reward model -> PPO) and zero-shot chain of thought, in miniature"
