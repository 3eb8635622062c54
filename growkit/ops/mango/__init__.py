"""Mango: the multi-linear growth operator (Pan et al., NeurIPS 2023, arXiv 2310.10699).

Packing. Every per-layer matrix of the canonical view (spec ``L, X.in, Y.out``)
is cut into D x D tiles in math orientation and the tiles are stacked into
``M[b, i, o, l]`` (B x D x D x L). Matrices go in the order q, k, v, (gate), mlp_in,
o, mlp_out, so B = 4 + 2 ceil(F/D) for a GELU MLP and 4 + 3 ceil(F/D) for SwiGLU.
Where a unit sits in its tile is chosen so that every fixed start below is one
Kronecker pattern shared by all tiles:

- D and Q (heads x head_dim, which must equal D) fill one tile in order.
- K (kv heads) is spread over a Q-wide tile: kv head g sits where query head
  g * group sits, the first head of its group. With K packed contiguously, one
  pattern cannot grow the query heads and keep every head in its kv group.
- F is strided: unit f sits in tile f mod n at position f // n (n = ceil(F/D)),
  so that tiling F (unit f2 copies f2 mod F1) is a tile pattern, and the cut pads
  the end of each tile with zeros. The source is packed into M1 and the target is
  unpacked (cropped) from M2 the same way.

The map. Four tensor-ring cores S_B (R x B1 x B2 x R), S_I, S_O (R x D1 x D2 x R)
and S_L (R x L1 x L2 x R) give ``M2[b2,i2,o2,l2] = sum M1[b1,i1,o1,l1]
Tr(S_B[:,b1,b2,:] S_I[:,i1,i2,:] S_O[:,o1,o2,:] S_L[:,l1,l2,:])``, contracted by
:func:`ring_map` without building the map. The cores are the only parameters:
R^2 (B1 B2 + 2 D1 D2 + L1 L2) (:func:`parameter_count`).

Vectors and globals use the same cores and add no parameters. Every other
tensor is placed in the same index space: its ``.in`` axis (if any) is tiled like
a matrix row, its ``.out`` axis like a column, its layer axis is L, and the ring
is closed with the same four cores, where an absent axis takes its core
collapsed to an R x R matrix, chosen so that it is 1 on every term of every start:

- no ``.in`` axis: S_I at source unit 0 summed over target units (a unit's
  outgoing mass: 1 for any split);
- no ``.out`` axis: S_O at target unit 0 summed over source units (a unit's
  incoming mass: 1 for any copy; unit 0 is never a new unit, which AKI needs);
- no layer axis (globals): S_L at target layer 0 summed over source layers;
- S_B is read at the tiles of a *home* matrix: a bias's own matrix (``o_bias``
  -> o), otherwise the first packed matrix with the tensor's multi-tile axes on
  the same sides, which for the D-only norms and embeddings is q. An absent side
  collapses over its tiles the same way (row tile 0 summed over target row
  tiles; target column tile 0 summed over source column tiles). Reading o's and
  mlp_out's tiles is what silences their biases with their matrices.

Tensors with no growable axis and no layer axis (vocab or label biases) are copied.

Start. Each start is a sum of c Kronecker terms placed on the ring's diagonal
(c <= R), and the first materialisation equals that fixed operator exactly:

- Width. S_O copies units, S_I shares each unit's outgoing weights among its
  copies, one pattern on every tile: ``split="even"`` gives each copy 1/count
  (Net2Net/bert2BERT FPI); ``split="keep"`` (the default) leaves them all with
  the original and starts the new copies silent. Both compute the source's
  function, but even shares give the copies equal gradients for ever (Adam
  normalises away their scale), while a silent copy's outgoing weights grow from
  the gradient alone, so its inputs then learn something else. The selection is
  head-aligned: growkit's own GQA-aware head map
  (:class:`~growkit.ops.width.WidthMap`, its random copies drawn without
  replacement), applied to the hidden units, to the
  positions inside every FFN and attention tile, and to the kv heads through the
  spread K layout. S_B copies whole tiles (identity when ceil(F/D) is
  unchanged), sharing ``.in`` tiles among their copies the same way.
- Depth. S_L is the stacking or interpolation matrix. Identity insertion zeroes
  the copies' residual outputs (o, mlp_out and biases): a second term whose S_B
  keeps only those tiles and whose S_L drops the silenced layers, while the
  first keeps the other tiles with all layers.
- AKI (new units take layer l+1's weights) is a second term with S_O on the new
  units only and S_L shifted by one source layer.
- Symmetry. Copies made by one Kronecker pattern stay identical under gradient
  descent (at R = 1 forever), so ``noise`` (default: the fixed method's, 0.01,
  or 0 for AKI, which breaks symmetry with knowledge) adds to every term's S_I
  noise that sums to zero over each group of copies: the copies see equal
  inputs, so it cancels and the start computes the same function.
- Mixed inputs (``mix`` > 0, ``split="keep"``). New units start silent, so they
  may read anything: one more term adds to their key, value and FFN inputs a
  random mixture of the source units' inputs (S_O random on the new units only,
  S_B on those tiles only). Each new unit then computes a feature of its own from
  the first step while the start keeps the function; the mixture replaces the
  cancelling noise. Queries are left alone: the embeddings and norms read S_B at
  q's tiles. Inserted layers keep their copied units (mixing them all trained
  worse).
- Extra rank. Ring slices beyond c start with S_B = 0 and random S_I, S_O, S_L
  (unit gain); the strictly upper ring entries of S_I and S_O are random too and
  S_L is ring-diagonal. Every path through the ring other than the start's terms
  meets a zero, so the output is exact, yet every core gets gradients (as in
  LoRA's zero-initialised factor), and the random S_I/S_O entries break symmetry.

Reachable fixed methods (``init=``; ``grow_fixed`` with the registry's width and
depth, ``noise=0``, and Mango's selection; see :attr:`MangoOperator.copy_map`). The
default ``rank=None`` takes the start's min. rank (one more for the mixing term, which
the default ``mix`` adds under ``split="keep"``), so ``init=net2net, split="even"`` gives rank 2:

=============  ==========  ====================================================
init           min. rank   note
=============  ==========  ====================================================
stackbert      1           Net2Net width, stacked layers
interpolate    1           Net2Net width, layers repeated in place
net2net        2           Net2Net width, identity insertion (two terms; 1 if
                           no layer is added); the default, with split=keep
                           and mix=2 (rank 3)
bert2bert      2           AKI width (two terms; 1 if no unit is added), stacked
exact          2           tiled width, identity insertion (1 if no layer is
                           added); equals ``grow_fixed(..., "tile", "identity",
                           noise=0)`` bit for bit when D1 | D2, D | F with the same
                           F/D ratio and the GQA group size is unchanged
=============  ==========  ====================================================

Not reachable: growkit's own ``net2net`` selection (it draws hidden and FFN units
independently and per unit, which shared S_I/S_O cannot express), the fixed
operators' per-entry cancelling noise (not a Kronecker pattern), and LiGO's
per-layer width matrices. Refused: heads x head_dim != hidden (heads would not
fit the tiles) and query groups that shrink. When F is not a multiple of D, or
ceil(F/D) shrinks, tiles are padded or dropped and the start is Net2Net only
approximately (a warning says so).

The default recipe, and why (3 seeds, paired with the best fixed method of each seed; BENCHMARKS.md,
"Mango's default recipe"): ``init="net2net"`` with identity layers, ``split="keep"``, copies drawn
without replacement, ``mix=2``, and no fit (``fit_steps`` 0 in the registry entry). Stacked layers and
AKI lose much of a deep source's function (+0.33 nats and more on the 8-layer bed), so the start keeps
it; the keep split (+14 points at GPT-2 tiny over the even split without a fit) and the mixed inputs
(+0.9) break the copies' symmetry without moving it. Every fit tried (lr 1e-3 to 1e-5, with or
without the held-out check) cost more than it gained at these budgets and raised the deep bed's
held-out loss; noise scales, rank, mixing inserted layers and rotating the stream's new dimensions
changed nothing or lost. With the benchmark's shared schedule for grown targets (decay ending at 75%
of the steps) the default saves 55.5% at GPT-2 tiny (+5.4 over the best fixed method), 31.5% at
tiny-long and 52.0% at Llama tiny (+3.8); LiGO's default 41.0% and 27.1%.

Modules: :mod:`.packing` (tiles), :mod:`.start` (the fixed-method start), :mod:`.operator`
(the operator, its registry entry and the recipe defaults); the contraction itself is the
generic tensor-ring engine in :mod:`growkit.ops.ring`.
"""
from __future__ import annotations

from .operator import DEFAULT_INIT, DEFAULT_SPLIT, MANGO, MangoOperator, build, materialize_flops, parameter_count

__all__ = ["DEFAULT_INIT", "DEFAULT_SPLIT", "MANGO", "MangoOperator", "build", "materialize_flops", "parameter_count"]
