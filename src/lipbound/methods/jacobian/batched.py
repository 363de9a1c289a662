"""`crown` / `recurjac` (plain CROWN forward bounds) and `ibp-jacobian` on many boxes in one batched call.

`bound_boxes(net, lower, upper, norm, mode)` gives, for every box b of a batch, the value and the details
that `lipbound.bound(net, method, norm, box_b)` gives (method ``crown`` / ``recurjac`` with
``alpha=False``, or ``ibp-jacobian``), equal to float64 rounding (the same relaxations box by box; sums
taken in another order). This is what `lipbound.sweep` runs for a chunk of points.

How: the forward pre-activation bounds of all boxes come from `crown.forward_bounds_batch` (plain CROWN or
intervals); the Clarke-Jacobian graph is bounded with one batch row per (box, output) (rows = box index
repeated once per output, as `bab` does) and the outputs of each box are combined by `methods.combine`.
`RowwiseGraph` keeps the batch equal to the box-by-box runs and makes it cheaper than them:
  * the CROWN tightening of gradient entries is kept only in the boxes that need it (a one-box run's
    choice; the base class tightens every row as soon as one row of the batch needs it);
  * the low-rank back-substitution runs one adjoint pass per box for its outputs and its own undecided
    neurons (the base class: outputs x the union of the batch's undecided neurons, and again for every
    chunk of entries), in cache-sized pieces (`SUB_ENTRIES`);
  * an interval pass whose inputs are the previous pass's results (nothing was tightened) is not redone.
Boxes are sorted by their number of undecided neurons and cut into groups (`_groups`) of similar counts
(padding: `PAD`), of at most `ROW_ENTRIES` rows x width (the passes stay in the CPU caches) and at most
`MAX_ENTRIES` entries in the adjoint pass.

Memory: at most about `MAX_ENTRIES` float64 entries per tensor of the Jacobian passes (plus the forward
pass's own chunking by `crown.CHUNK_ENTRIES`), whatever the number of boxes; a single box that needs
more than that is bounded alone (as a one-box run would). alpha-CROWN is not batched (its slopes are
optimised per box with a stopping rule over all specifications of a run): the `crown` default
(``alpha=True``) is bounded box by box by the caller.
"""

from __future__ import annotations

import time

import torch

from ... import traversal
from ...crown import check_deadline, forward_bounds_batch
from ...maxpool_relu import expand_maxpool
from ...network import DTYPE, Activation, Add
from .graph import JacobianGraph
from .methods import FORWARD_SHARE, GRAPH_SHARE, combine, norm_note

#: largest tensor (float64 entries) of the Jacobian-graph passes of one group of boxes (128 MB)
MAX_ENTRIES = 1 << 24

#: the low-rank walk works on pieces of at most this many entries (rows x specifications x undecided
#: neurons), which stay in the CPU caches: larger pieces are memory-bound and slower per entry
SUB_ENTRIES = 1 << 18

#: rows x the widest node of one group at most: the interval passes of a group stay in the CPU caches
ROW_ENTRIES = 1 << 16

#: a group of boxes pads their undecided neurons up to PAD x its smallest count + PAD_ABS (`_groups`)
PAD, PAD_ABS = 1.25, 4

#: method -> the mode of `run_propagation` it runs, for the methods `bound_boxes` reproduces
MODES = {"crown": "crown", "recurjac": "recurjac", "ibp-jacobian": "ibp"}


def batch_mode(method: str, options: dict | None = None) -> str | None:
    """The `bound_boxes` mode that gives exactly what ``lipbound.bound(net, method, ..., **options)`` gives,
    or None when the method with these options is not batched (alpha-CROWN forward bounds, other
    methods, any option other than ``alpha=False``)."""
    mode = MODES.get(method)
    options = dict(options or {})
    if mode is None:
        return None
    if mode == "ibp":
        return mode if not options else None
    return mode if options == {"alpha": False} else None


class RowwiseGraph(JacobianGraph):
    """A `JacobianGraph` over boxes x outputs: rows grouped by box, ``m`` consecutive rows per box, every row
    of a box with the same forward bounds (only the output differs). Used by `bound_boxes` (sweeps) and by
    crown-bab (a box is a domain, with its split decisions). Changes to the base class, none of which
    loosens a value of a one-box run beyond float64 rounding:

    * `_bound_entries`: the CROWN tightening of a gradient entry is kept only in the boxes where that entry
      crosses 0 in some row (what a one-box run, whose rows are its outputs, tightens); the base class keeps
      it in every row of the batch as soon as one row needs it (sound, but then not the one-box value).
    * `lowrank_walk` (and its cost, `walk_cost`): computed per box instead of per row and over each box's
      own undecided neurons (padded to the largest count of the group) instead of their union over the
      batch. The adjoint of a unit source at an undecided neuron does not depend on the output, so the
      rows of a box share it: one adjoint pass of m + P rows per box (m outputs, P undecided neurons),
      kept for the whole `bound` call (`_adjoint`), where the base class runs m x (1 + union of
      undecided) rows for every chunk of entries.
    * `interval_pass`: a refresh whose inputs are the previous pass's results returns them."""

    def __init__(self, net, fwd: dict, m: int):
        """``fwd``: the forward bounds of each box (not repeated per row): the derivative ranges are computed
        once per box and repeated for its ``m`` rows (10x fewer evaluations with 10 outputs)."""
        super().__init__(net, fwd)
        self.rows_per_box = m
        if m > 1:
            self.s = {k: (lo.repeat_interleave(m, 0), hi.repeat_interleave(m, 0)) for k, (lo, hi) in self.s.items()}

    def _bound_entries(self, start, lo, hi, relax, classes):
        nl, nh = super()._bound_entries(start, lo, hi, relax, classes)
        m = self.rows_per_box
        cross = ((lo < 0) & (hi > 0)).reshape(-1, m, lo.shape[1]).any(1).repeat_interleave(m, 0)
        return torch.where(cross, nl, lo), torch.where(cross, nh, hi)

    def interval_pass(self, s: dict, classes: torch.Tensor, known: dict | None = None, v_known=None):
        """The base class's pass, except that a call whose ``known`` / ``v_known`` equal the previous call's
        results (same ``s`` and ``classes``) returns those results without a pass: intersecting every
        interval with the ones the same pass produced changes nothing (the refresh after a layer in which
        no entry was tightened)."""
        last = getattr(self, "_last_pass", None)
        if (last is not None and known is not None and v_known is not None and last[0] is s and last[1] is classes
                and all(torch.equal(known[k][i], last[2][k][i]) for k in self.acts for i in (0, 1))
                and all(torch.equal(v_known[i], last[3][i]) for i in (0, 1))):
            return dict(last[2]), last[3]
        g, v = super().interval_pass(s, classes, known, v_known)
        self._last_pass = (s, classes, g, v)
        return dict(g), v

    def _own(self, c: int, und: dict):
        """(idx (nb, U), valid (nb, U)): each box's undecided entries of activation ``c``, padded to U (the
        largest count over the boxes) with index 0 / valid False."""
        ub = und[c][:: self.rows_per_box]  # (nb, n): the same in every row of a box
        counts = ub.sum(1)
        U = int(counts.max()) if ub.shape[0] else 0
        order = torch.argsort((~ub).to(torch.int8), dim=1, stable=True)[:, :U]  # undecided first, in order
        valid = torch.arange(U).unsqueeze(0) < counts.unsqueeze(1)
        return torch.where(valid, order, torch.zeros_like(order)), valid

    def walk_cost(self, start: int, B: int, S: int, und: dict) -> tuple[float, float]:
        m = self.rows_per_box
        nb = max(1, B // m)
        down = set(self.downstream(start))
        W_down = sum(self._op_cost(i) for i in range(start + 1, len(self.net.nodes)))
        W_all = sum(self._op_cost(i) for i in range(1, len(self.net.nodes)))
        sizes = [int(und[c][::m].sum(1).max()) for c in self.acts if c in down]
        inner, acc = 0, 0
        for u in sizes:
            inner += u * (1 + acc)
            acc += u
        return float(B) * S * W_down, float(nb) * (m + sum(sizes)) * W_all + float(B) * S * inner

    def bound(self, *args, **kwargs):
        self._adjoints = {}  # start -> the adjoint pass of `_adjoint` (s and the undecided sets are fixed per call)
        self._last_pass = None
        return super().bound(*args, **kwargs)

    def _adjoint(self, start: int, classes: torch.Tensor, und: dict):
        """(Vk (nb, Q, n_start), recorded {c: (nb, Q, U_c)}, own {c: (idx, valid)}, offs, order): one
        adjoint pass of the decided part of the graph from the output down to node ``start``, per box, for
        its m output rows and a unit source at each of its undecided neurons. Computed once per `bound`
        call and start node (every chunk of entries of `_bound_entries` and the final norm bound reuse it)."""
        if start in self._adjoints:
            return self._adjoints[start]
        net, m = self.net, self.rows_per_box
        B = classes.shape[0]
        nb = B // m
        down = self.downstream(start)
        own = {c: self._own(c, und) for c in down}
        order = [c for c in down if own[c][0].shape[1]]
        offs, Q = {}, m
        for c in order:
            offs[c] = Q
            Q += own[c][0].shape[1]
        recorded: dict = {}

        def affine(op, node, v):
            check_deadline(self.deadline)
            return op.linear_t(v, net.nodes[node.inputs[0]].shape)

        def act(op, node, v):
            k = self.index[id(node)]
            shape = v.shape
            vf = v.reshape(nb, Q, -1)
            sl, su = (t[::m] for t in self._s_cur[k])
            fixed = torch.where(su > sl, torch.zeros_like(sl), sl)
            out = vf * fixed.unsqueeze(1)
            if k in offs:
                idx, valid = own[k]
                recorded[k] = vf.gather(2, idx.unsqueeze(1).expand(nb, Q, idx.shape[1]))
                bi, ui = valid.nonzero(as_tuple=True)
                out[bi, offs[k] + ui, idx[bi, ui]] += 1.0
            return out.reshape(shape)

        def add(op, node, v):
            return v, v

        rules = {"affine": affine, Activation: act, Add: add}
        e = torch.zeros(nb, Q, self.m, dtype=DTYPE)
        e[torch.arange(nb).repeat_interleave(m), torch.arange(B) % m, classes] = 1.0
        with torch.no_grad():
            vals = traversal.backward(net, rules, e.reshape((nb * Q,) + net.output_shape),
                                      what="adjoint pass on the Jacobian graph")
        Vk = vals[start]
        n_k = net.nodes[start].size
        Vk = torch.zeros(nb, Q, n_k, dtype=DTYPE) if Vk is None else Vk.reshape(nb, Q, n_k)
        self._adjoints[start] = (Vk, recorded, own, offs, order)
        return self._adjoints[start]

    def lowrank_walk(self, start: int, seed, relax: dict, classes: torch.Tensor, und: dict, record: dict | None = None):
        net, m = self.net, self.rows_per_box
        B = classes.shape[0]
        nb = B // m
        box = torch.arange(nb).repeat_interleave(m)  # the box of every row
        Vk, recorded, own, offs, order = self._adjoint(start, classes, und)
        n_k = Vk.shape[2]
        F = Vk[:, :m, :].reshape(B, n_k)  # row (b, j): the adjoint of output classes[b m + j]
        lines = {}
        for c in order:
            uidx, valid = own[c]
            ridx = uidx[box]
            mask = valid[box] & und[c].gather(1, ridx)
            # the lines of the base class's pos * aL + neg * aU (pos, neg: the parts of lam of each sign), zero
            # where the entry is padding or decided (the base class multiplies lam by that mask); (nb, m, 1, U)
            lines[c] = [torch.where(mask, t.gather(1, ridx), 0.0).reshape(nb, m, 1, -1) for t in relax[c]]
            lines[c].append(recorded[c][:, :m, :].unsqueeze(3))  # (nb, m, U, 1): the output row's coefficient
            lines[c] += [ridx, mask]
        terms = {c: _line_coefficients(lines[c]) for c in order}

        def src(c):  # (nb, U_c, n_k): the adjoints of box b's undecided neurons of c
            return Vk[:, offs[c] : offs[c] + own[c][0].shape[1], :]

        def chain(base_F, base, rec):
            """The base class's loop over the undecided activations, per (box, output, specification):
            ``base(c)`` (nb, 1 or m, S, U_c) is the part of lam that comes from the adjoint alone. Each
            activation adds sum_u lam * (b + a * cls) (the lower line where lam > 0, the upper one
            elsewhere), written lam * upper + relu(lam) * (lower - upper) so that the (nb, m, S, U) tensor
            of lam is built once and read once more (`_line_terms`), and passes lam * a on to the later ones."""
            S = base_F.shape[1]
            out = base_F.reshape(nb, m, S)
            z = {}
            for i, c in enumerate(order):
                aL, bL, aU, bU, cls_rec, ridx, mask = lines[c]
                lam = base(c)
                # lam * upper, summed over u: its part from the earlier activations (z2 @ T^T, see below) is
                # z2 @ (upper @ T), a product with the few earlier undecided neurons instead of lam's entries
                linear = _line_terms(lam, terms[c][1])
                if z:  # the earlier activations' multipliers z (nb, m, S, U_c2) through the maps T between them
                    U_c = own[c][0].shape[1]
                    through = None
                    for c2, z2 in z.items():
                        T = recorded[c2][:, offs[c] : offs[c] + U_c, :]  # (nb, U_c, U_c2)
                        part = z2 @ T.transpose(1, 2).unsqueeze(1)
                        through = part if through is None else through.add_(part)
                        linear = linear + (z2 @ (terms[c][1] @ T).unsqueeze(3)).squeeze(3)
                    lam = through.add_(lam)
                if rec is not None:
                    full = torch.zeros(B, net.nodes[c].size, dtype=DTYPE)
                    full.scatter_add_(1, ridx, (lam.abs().expand(nb, m, S, -1).reshape(B, S, -1) * mask.unsqueeze(1))
                                      .sum(1))
                    rec[c] = full
                z_linear = lam * aU if i + 1 < len(order) else None
                pos = lam.clamp_(min=0)  # lam is this iteration's own tensor (base(c) builds a new one)
                out = out + linear + _line_terms(pos, terms[c][2])
                if z_linear is not None:
                    z[c] = z_linear.add_(pos * (aL - aU))  # pos * aL + neg * aU
            return out.reshape(B, S)

        if isinstance(seed, tuple) and len(order) == 1:
            return _entries_one_layer(F[:, seed[1]], src(order[0])[:, :, seed[1]].transpose(1, 2), terms[order[0]])
        if isinstance(seed, tuple):
            idx = seed[1]
            width = 2 * B * max(1, sum(own[c][0].shape[1] for c in order))
            sub = max(1, SUB_ENTRIES // width)  # cache-sized pieces: the same values, entry by entry
            parts = []
            for i in range(0, len(idx), sub):
                sel = idx[i : i + sub]
                Fi = F[:, sel]

                def base(c, sel=sel):  # the same for every output of a box: (nb, 1, 2K, U)
                    Rc = src(c)[:, :, sel].transpose(1, 2)
                    return torch.cat([Rc, -Rc], 1).unsqueeze(1)

                parts.append(chain(torch.cat([Fi, -Fi], 1), base, None))
            return torch.cat([p[:, : p.shape[1] // 2] for p in parts] + [p[:, p.shape[1] // 2 :] for p in parts], 1)
        sd = seed.reshape(B, seed.shape[1], n_k)
        S = sd.shape[1]

        def base(c):
            return torch.einsum("bsn,bun->bsu", sd.reshape(nb, m * S, n_k), src(c)).reshape(nb, m, S, -1)

        return chain(torch.einsum("bsn,bn->bs", sd, F), base, record)


def _line_coefficients(lines: list) -> tuple:
    """(lower, upper, lower - upper) (nb, m, U): b + a * cls for the lower and the upper line of each
    undecided neuron of a box, cls its coefficient in the box's output row m (``lines``: the aL, bL, aU,
    bU, cls of `chain`), and their difference."""
    aL, bL, aU, bU, cls_rec = lines[:5]
    cls = cls_rec.transpose(2, 3)  # (nb, m, 1, U)
    lower, upper = (bL + aL * cls)[:, :, 0, :], (bU + aU * cls)[:, :, 0, :]
    return lower, upper, lower - upper


def _line_terms(lam: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """sum_u lam * coefficients (nb, m, S) for multipliers lam (nb, 1 or m, S, U) and coefficients
    (nb, m, U): batched matrix products; a multiplier shared by the m outputs of a box is multiplied once."""
    if lam.shape[1] == 1:
        return (lam[:, 0] @ coefficients.transpose(1, 2)).transpose(1, 2)
    return (lam @ coefficients.unsqueeze(3)).squeeze(3)


def _entries_one_layer(F: torch.Tensor, R: torch.Tensor, coefficients: tuple) -> torch.Tensor:
    """`lowrank_walk` on gradient entries when one activation has undecided neurons: lower bounds (B, 2K)
    of +entry and of -entry for the K entries, from F (B, K) (the decided part of each row) and R (nb, K,
    U) (the adjoints of each box's undecided neurons, shared by its m rows). The multipliers of -entry are
    those of +entry negated, so their positive and negative parts swap: one product of [pos, neg] with
    [[lower, upper], [upper, lower]] gives both (`chain`'s terms, summed in another order)."""
    lower, upper = (t.transpose(1, 2) for t in coefficients[:2])  # (nb, U, m)
    nb, m = lower.shape[0], lower.shape[2]
    pos = R.clamp(min=0)
    mixed = torch.cat([pos, R - pos], 2) @ torch.cat([torch.cat([lower, upper], 2), torch.cat([upper, lower], 2)], 1)
    rows = mixed.reshape(nb, -1, 2, m).permute(0, 3, 2, 1)  # (nb, m, 2, K)
    return torch.cat([F + rows[:, :, 0].reshape(F.shape), -F - rows[:, :, 1].reshape(F.shape)], 1)


def _undecided(net, fwd: dict, B: int) -> list[torch.Tensor]:
    """Per activation node, the (B,) count of each box's undecided neurons (Clarke derivative not fixed)."""
    out = []
    for k, node in enumerate(net.nodes):
        if isinstance(node.op, Activation):
            sl, su = node.op.fn.derivative_range(*fwd[k])
            out.append((su > sl).sum(1))
    return out or [torch.zeros(B, dtype=torch.long)]


def _layers(counts: list, b: int) -> int:
    """The set of activation nodes in which box ``b`` has undecided neurons, as a bit mask."""
    return sum(1 << i for i, c in enumerate(counts) if int(c[b]) > 0)


def _box_order(counts: list) -> torch.Tensor:
    """The boxes sorted by the set of activation nodes in which they have undecided neurons, then by their
    number of undecided neurons (`_groups` cuts between sets)."""
    total = sum(counts)
    layers = sum((c > 0).long() << i for i, c in enumerate(counts))
    return torch.argsort(layers * (int(total.max()) + 1 if len(total) else 1) + total, stable=True)


def _groups(net, counts: list, order: torch.Tensor, rows_per_box: int) -> list[torch.Tensor]:
    """The boxes in ``order`` (`_box_order`) cut into consecutive groups whose low-rank adjoint pass, boxes
    x (rows_per_box + the largest count of each activation in the group) x (sum of the node sizes)
    entries, stays within `MAX_ENTRIES`, and whose rows x the widest node stay within `ROW_ENTRIES` (at
    least one box per group). Sorted boxes pad little: a box's undecided neurons are padded to the group's
    largest count, at most `PAD` x the group's smallest total count + `PAD_ABS`. The boxes of a group have
    undecided neurons in the same activation nodes: a node undecided only by padding would still cost
    its share of the walk, and one undecided node takes the walk's cheaper form (`_one_layer`); boxes
    without undecided neurons (exact Jacobian) form their own groups."""
    total = sum(n.size for n in net.nodes)
    width = max(n.size for n in net.nodes)
    out, cur, peak, first = [], [], None, 0  # first: the group's smallest total count (its first box's)
    for b in order.tolist():
        cand = [int(c[b]) for c in counts] if peak is None else [max(p, int(c[b])) for p, c in zip(peak, counts)]
        # boxes with no undecided neuron have exact (point) Jacobians: their passes are plain matrix
        # products, which do not need to stay in the caches (groups of 8 boxes cost 2x more per box)
        big = (len(cur) + 1) * (rows_per_box + sum(cand)) * total > MAX_ENTRIES or \
            (sum(cand) > 0 and (len(cur) + 1) * rows_per_box * width > ROW_ENTRIES)
        if cur and (big or sum(cand) > PAD * first + PAD_ABS or _layers(counts, b) != _layers(counts, cur[0])):
            out.append(torch.tensor(cur))
            cur, cand = [], [int(c[b]) for c in counts]
        if not cur:
            first = sum(int(c[b]) for c in counts)
        cur.append(b)
        peak = cand
    if cur:
        out.append(torch.tensor(cur))
    return out


def bound_boxes(net, lower, upper, norm, mode: str = "crown", output: int | None = None,
                time_limit: float | None = None) -> list[dict]:
    """For each of the B boxes [lower[b], upper[b]] ((B, *input_shape) arrays), a dict: "value" (the
    method's bound), "details" (as the one-box run's, with the times shared equally between the boxes),
    "cut" (True when a pass stopped at its time share: the caller should bound those boxes one by one).

    ``mode``: "crown" (plain CROWN forward bounds, then CROWN on the Jacobian graph; the ``crown`` method
    with alpha=False), "recurjac" or "ibp" (``ibp-jacobian``). ``norm``: 1, 2 or inf; ``output``: one
    output (default: all). ``time_limit``: seconds *per box*: the batch stops its forward pass at
    `FORWARD_SHARE` x B x time_limit and its Jacobian passes at `GRAPH_SHARE` x B x time_limit.
    Cost: one batched forward pass and one batched Jacobian-graph bound per group (`_groups`)."""
    net = expand_maxpool(net)
    lo = torch.as_tensor(lower, dtype=DTYPE)
    hi = torch.as_tensor(upper, dtype=DTYPE)
    B = lo.shape[0]
    lo, hi = lo.reshape((B,) + net.input_shape), hi.reshape((B,) + net.input_shape)
    t0 = time.perf_counter()
    budget = None if time_limit is None else time_limit * B
    deadline_fwd = None if budget is None else t0 + FORWARD_SHARE * budget
    deadline_graph = None if budget is None else t0 + GRAPH_SHARE * budget
    info: dict = {}
    # (the CROWN pass bounds only the (box, neuron) pairs that need it: the order of the boxes does not matter)
    fwd = forward_bounds_batch(net, lo, hi, method="ibp" if mode == "ibp" else "crown", deadline=deadline_fwd,
                               info=info)
    fwd_cut = bool(info.get("cut"))
    t_fwd = time.perf_counter() - t0
    classes = [output] if output is not None else list(range(net.n_outputs))
    m = len(classes)
    multi = m > 1
    out: list = [None] * B
    counts = _undecided(net, fwd, B)
    for grp in _groups(net, counts, _box_order(counts), m):
        nb = len(grp)
        G = RowwiseGraph(net, {k: (fwd[k][0][grp], fwd[k][1][grp]) for k in fwd}, m)
        G.deadline = deadline_graph
        res = G.bound(torch.tensor(classes).repeat(nb), norm, mode=mode)
        # per box: its outputs' values and undecided counts as Python numbers, read once for the group
        per_output = res.value.reshape(nb, m).tolist()
        undecided = torch.stack([(G.s[k][1][::m] > G.s[k][0][::m]).sum(1) for k in G.acts], 1).tolist() \
            if G.acts else [[] for _ in range(nb)]
        for j, box in enumerate(grp.tolist()):
            r = slice(j * m, (j + 1) * m)
            value = combine(res.value[r], res.entry_abs[r], norm, multi, (res.v[0][r], res.v[1][r]))
            details = {
                "per_output": dict(zip(classes, per_output[j])) if norm != 1 else None,
                "undecided_neurons": undecided[j],
                "forward": "interval" if mode == "ibp" else "crown",
            }
            out[box] = {"value": value, "details": details, "cut": fwd_cut or G.cut}
    t_all = time.perf_counter() - t0
    for rec in out:  # the times of the batch, shared equally (the one-box run's keys)
        rec["details"]["time_forward_s"] = t_fwd / B
        rec["details"]["time_backward_s"] = (t_all - t_fwd) / B
        if norm in (1, 2):
            rec["details"]["note"] = norm_note(norm, multi)
    return out
