"""lgvit: local-global vision backbones in JAX/Flax.

Importing lgvit (or any of its modules) changes nothing in the process: the entry points choose
XLA:CPU's kernel library themselves (:mod:`lgvit.cpu_kernels`; a notebook opts in with
``lgvit.cpu_kernels.use()`` before its first JAX computation, docs/kernels.md).
"""
