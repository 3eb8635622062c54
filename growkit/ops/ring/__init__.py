"""The tensor-ring map behind Mango, contracted without ever building the full map.

A ring of cores ``C_k`` of shape ``(R, n_k, m_k, R)`` maps a tensor
``X[..., a_1, ..., a_K]`` (its last K axes have the cores' source sizes) to::

    Y[..., b_1, ..., b_K] = sum_a X[..., a_1, ..., a_K] Tr(C_1[:, a_1, b_1, :] ... C_K[:, a_K, b_K, :])

Written out, that map has ``prod(n_k m_k)`` entries (about 4.5e14 for DeiT-S -> B),
so it is only ever applied as a contraction. The order of the pairwise steps
decides the cost: opt_einsum's exhaustive search picks the one with the fewest
FLOPs (cached per shape). For the Mango shapes at R > 1 it contracts the source
with one width core (no ring bond summed), then the block and layer cores (which
close the bonds on their side), and the other width core last. The naive order,
one core after the other around the ring, sums a width axis and a ring bond
while two bonds are still open, which costs about a factor R more.

Execution. opt_einsum fixes the order; how each pairwise step is laid out in
memory decides the speed. Handing the steps to ``torch.einsum`` permutes the
large intermediates before and after every matmul, and the steps that only sum
a small core's axes (K = B1 R or L1 R) then cost more than the large ones. So
when the order is a chain (the source meets one core at a time, as it is for
every Mango shape), :func:`ring_plan` searches the memory layout: the order of
the source's axes and of the axes each step creates, so that every step's
summed axes lie next to each other in the intermediate. Each step is then one
matmul on views, ``[pre, K] @ W`` or a batched ``W^T @ [pre][K, post]`` (bmm), with
no copy of the large intermediate; a step that cannot be arranged that way
pays one permute. The layout is chosen by a small cost model (matmul time,
slower for a matmul with a short side, memory traffic, per-batch overhead) over
all candidates, cached per shape. The short side matters: a batch of
``[1024, 12288] @ [12288, 24]`` products ran at a third of a matmul's speed, where
one permute and a single tall matmul ran at 90%.

Memory: every intermediate of that order holds about ``R^2 |Y| / 2`` numbers and
autograd would keep each for the backward pass. Three things keep fewer:

- the steps that only sum a small core (under ``RECOMPUTE`` of the FLOPs) and
  lead to an expensive step are checkpointed, so their outputs are recomputed
  in the backward pass (about 1% more FLOPs) instead of stored;
- a fixed source laid out once in the order the plan reads it
  (:func:`source_layout`) is read as a view, not copied and kept;
- :func:`ring_map_split` hands the output over in pieces along the target axis
  of the core met first (Mango's S_B at R = 1), so neither the output nor its
  gradient is ever assembled whole.

When the largest intermediate exceeds ``max_elements``, the map is computed in
chunks (of at most ``CHUNK_ELEMENTS`` per intermediate) of the core whose target
axis is longest (slicing a core's target axis slices the output and leaves the
rest of the problem intact, so no work is repeated). The chunks run in one reused
workspace with a hand-written backward that recomputes each chunk's forward
(:mod:`growkit.ops.ring.chunks`); a chunked map whose order is not a chain, or
whose source needs a gradient, checkpoints each chunk through autograd instead.
"""
