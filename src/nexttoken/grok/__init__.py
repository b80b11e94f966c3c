"""Grokking: small transformers on algorithmic tables that memorise first and generalise much later.

Power et al. 2022, https://arxiv.org/abs/2201.02177; Nanda et al. 2023, https://arxiv.org/abs/2301.05217.
"""

HELP = "grokking: small transformers on algorithmic tables (Power et al. 2022, Nanda et al. 2023)"
