"""Making language models useful: InstructGPT's base -> SFT -> reward model -> PPO, and zero-shot chain of thought.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155; Kojima et al. 2022, https://arxiv.org/abs/2205.11916.
world.py (the generated world), tasks.py (instruction families and their checkers), corpus.py (pretraining pages and
demonstrations), labeler.py (simulated labelers and win rates), tokenizer.py (byte-level BPE with left padding).
"""
