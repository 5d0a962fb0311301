"""Self-contained workloads: a task's data and the model made for it, generated locally.

- :mod:`harness.workloads.modular`: modular addition ``(a + b) mod p`` over all ``p^2`` pairs
  (``data=modular``), the task on which weight decay decides whether a network generalizes
  ("grokking", Power et al. 2022; Nanda et al. 2023);
- :mod:`harness.workloads.transformer`: a small pre-LayerNorm transformer over token ids
  (``model=transformer``), written with plain matmuls so that ``torch.func.vmap`` can batch it.
"""
