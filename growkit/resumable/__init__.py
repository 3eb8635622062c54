"""Resumable runs, one job per module: the run folder (identity, lock, checks), numbered checkpoints,
state files without pickles, atomic writes and per-process RNG state.

``fit``, ``train`` and both commands use these pieces, so the two resumable
jobs follow one protocol: check the folder, claim it (lock and identity), write
numbered checkpoints on rank 0 and wait for every process after each.
"""
