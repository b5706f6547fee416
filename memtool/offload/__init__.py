"""Zeroth-order (MeZO/SPSA) fine-tuning with ZO2-style block streaming between host and device memory.

- :mod:`memtool.offload.rng` - counter-based Gaussian perturbations keyed by (seed, step, parameter, k)
- :mod:`memtool.offload.zo` - the ZO step, scheduled per block residency (both perturbed forwards)
- :mod:`memtool.offload.streaming` - blocks in pinned host memory, streamed through the device
- :mod:`memtool.offload.data` - text / JSONL / cached HF datasets into token windows
- :mod:`memtool.offload.engine` - the loop: eval, checkpoints, signals, resume, metrics
"""
