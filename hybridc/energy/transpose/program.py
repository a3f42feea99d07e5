"""The transposed synapse program of one analog block: the graph analysed once (constant vs data nodes,
each data node bound to its rule), then run on every relaxation step for u and ∂Φ/∂s without autograd.

One module over 400 lines on purpose: one class, the program, with the even/odd sweep's subset evaluation
(`phi_grad_of`, `StepCache`) beside the full evaluation it must reproduce bit for bit.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from hybridc.energy.transpose.rules import Record, Rule
from hybridc.energy.transpose.table import PIECE_ITEM, TABLE, Entry, is_meta_query
from hybridc.errors import UnsupportedOpError
from hybridc.passes.reach import ancestors

aten = torch.ops.aten


@dataclass(eq=False)
class _Step:
    """One live node of the graph, ready to run: constant (``rule is None``) or data."""

    node: Node
    target: Any  # the callable, the module (call_module), or (owner, attribute) for get_attr
    rule: Rule | None = None
    binding: dict[str, Any] | None = None  # parameter name -> template (Node / literal / list)
    need_all: frozenset = frozenset()  # parameters with a placeholder dependency
    need_state: frozenset = frozenset()  # parameters with a state dependency
    on_state_path: bool = False
    tuple_out: bool = False
    state_deps: frozenset[int] = frozenset()  # indices of the states its value depends on (data nodes)
    volatile: bool = False  # its value is random (dropout) or depends on a random value: never reused

    @property
    def state_key(self) -> tuple[int, ...]:
        return tuple(sorted(self.state_deps))

    @property
    def module(self) -> nn.Module | None:
        return self.target if self.node.op == "call_module" else None

    def run(self, env: Mapping[Node, Any]) -> Any:
        """Evaluate the node exactly as torch.fx's Interpreter would."""
        op = self.node.op
        if op == "get_attr":
            owner, name = self.target
            return getattr(owner, name)
        args = map_arg(self.node.args, env.__getitem__)
        kwargs = map_arg(self.node.kwargs, env.__getitem__)
        if op == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)


def _target_name(node: Node, gm: GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if isinstance(node.target, torch._ops.OpOverload):
        return f"aten.{node.target.__name__}"
    try:
        return torch.fx.node._get_qualified_name(node.target)
    except Exception:
        return repr(node.target)


def _nodes_in(template: Any) -> list[Node]:
    found: list[Node] = []
    map_arg(template, found.append)
    return found


class StepCache:
    """Node values (with what their transposes need) from the earlier half-steps of one relaxation, reused
    while the states each node reads are the very same tensors: an even/odd sweep then evaluates every
    forward op once per sweep, like a synchronous step, instead of once per half. Create one per relaxation
    phase (`EnergyBlock.relax` does); tensor identity is the validity test, so nothing is reused across
    phases, inputs or in-place changes of a state the caller made."""

    __slots__ = ("inputs", "entries")

    def __init__(self) -> None:
        self.inputs: tuple[Tensor, ...] = ()
        self.entries: dict[Node, tuple[tuple[Tensor, ...], Any, Record]] = {}

    def bind_inputs(self, inputs: Sequence[Tensor]) -> None:
        """Forget everything if the inputs are not the ones the entries were computed from."""
        if len(inputs) != len(self.inputs) or any(a is not b for a, b in zip(inputs, self.inputs)):
            self.entries.clear()
            self.inputs = tuple(inputs)


@dataclass(frozen=True)
class _Subset:
    """What computing ∂Φ/∂s_j for the states j in a subset needs: the steps to run (in graph order, with
    whether each is recorded for the reverse sweep), the data nodes whose adjoint is accumulated, and each
    recorded step's parameters whose adjoint is wanted."""

    run: tuple[tuple[_Step, bool], ...]
    adjoint_nodes: frozenset[Node]
    need: dict[int, frozenset[str]]  # id(step) -> parameter names


class TransposeProgram:
    """Forward pass plus hand-written transpose of an affine synapse graph (no autograd calls).

    ``gm`` has ``n_inputs`` input placeholders followed by one state placeholder per output, and
    returns the tuple of pre-activations ``(u_1, ..., u_n)``, each affine in the placeholders.
    Raises :class:`UnsupportedOpError` naming the first placeholder-dependent node that is not a
    supported affine op.
    """

    def __init__(self, gm: GraphModule, n_inputs: int) -> None:
        self.gm = gm
        self.n_inputs = n_inputs
        graph = gm.graph
        self._placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        output = next(n for n in reversed(graph.nodes) if n.op == "output")
        outs = output.args[0]
        self._outputs: tuple[Any, ...] = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        self.n_states = len(self._placeholders) - n_inputs
        if n_inputs < 0 or self.n_states != len(self._outputs):
            raise ValueError(
                f"synapse graph has {len(self._placeholders)} placeholders and {len(self._outputs)} outputs;"
                f" expected {n_inputs} inputs followed by one state per output"
            )
        self._data: set[Node] = set(self._placeholders)
        self._state_dep: set[Node] = set(self._placeholders[n_inputs:])
        self._tuple_nodes: set[Node] = set()
        self._piece_nodes: set[Node] = set()
        self._steps: list[_Step] = []
        self._deps: dict[Node, frozenset[int]] = {
            p: frozenset({k}) for k, p in enumerate(self._placeholders[n_inputs:])
        }
        self._volatile: set[Node] = set()
        self._subsets: dict[frozenset[int], _Subset] = {}
        live = ancestors([output])  # drops e.g. ``_guards_fn`` calls and other dead nodes
        for node in graph.nodes:
            if node in live and node.op not in ("placeholder", "output"):
                self._steps.append(self._analyse(node))
        for t in self._outputs:
            if isinstance(t, Node) and t in self._tuple_nodes:
                raise self._unsupported(t, "a (values, indices) tuple cannot be a pre-activation")

    # ---- analysis ----

    def _unsupported(self, node: Node, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node '{node.name}' ({node.op} {_target_name(node, self.gm)}) cannot be transposed by the"
            f" adjoint fast path: {why}"
        )

    def _lookup(self, node: Node) -> Entry | None:
        """The op-table entry of `node`'s spelling (its module class or a base it inherits forward from,
        ``"Tensor.<method>"``, or its function/overload), or None when the table does not know it."""
        if node.op == "call_module":
            cls = type(self.gm.get_submodule(node.target))
            for base in cls.__mro__:  # a subclass that keeps its base's forward behaves like the base
                if base in TABLE and (base is cls or cls.forward is base.forward):
                    return TABLE[base]
            return None
        if node.op == "call_method":
            return TABLE.get(f"Tensor.{node.target}")
        if node.op == "call_function":
            try:
                return TABLE.get(node.target)
            except TypeError:  # unhashable target
                return None
        return None

    def _analyse(self, node: Node) -> _Step:
        if node.op == "get_attr":
            owner_path, _, name = node.target.rpartition(".")
            return _Step(node, (self.gm.get_submodule(owner_path), name))
        target = self.gm.get_submodule(node.target) if node.op == "call_module" else node.target
        step = _Step(node, target)
        deps = [n for n in node.all_input_nodes if n in self._data]
        if not deps or is_meta_query(node):
            return step  # constant: evaluated as is on every call
        self._data.add(node)
        for n in deps:
            if n in self._tuple_nodes and node.target is not operator.getitem:
                raise self._unsupported(node, f"it consumes the (values, indices) tuple '{n.name}' directly")
            if n in self._piece_nodes and node.target is not operator.getitem:
                raise self._unsupported(node, f"it consumes the pieces of '{n.name}' as one tuple")
        found = self._lookup(node)
        if found is None:
            raise self._unsupported(
                node, "it depends on an input/state but is not one of the affine ops this fast path supports"
            )
        rule, sig = found.rule, found.signature
        try:
            step.binding = sig.bind(node.args, node.kwargs)
        except ValueError as exc:
            raise self._unsupported(node, f"unexpected arguments ({exc})") from None
        src = step.binding.get("input")
        if node.target is operator.getitem and isinstance(src, Node) and src in self._piece_nodes:
            rule = PIECE_ITEM
        step.rule = rule
        if rule.pieces:
            self._piece_nodes.add(node)
        data_names = {
            k
            for k, v in step.binding.items()
            if k not in rule.meta_args and any(n in self._data for n in _nodes_in(v))
        }
        bad = sorted(data_names - set(rule.data_args))
        if bad:
            raise self._unsupported(
                node,
                f"argument(s) {bad} depend on an input/state; the op is affine only in {list(rule.data_args)}",
            )
        if len(data_names & set(rule.exclusive)) > 1:
            raise self._unsupported(
                node,
                f"it multiplies two operands that both depend on inputs/states ({sorted(data_names)}):"
                " the result is not affine",
            )
        if rule.check is not None and (why := rule.check(step, self)) is not None:
            raise self._unsupported(node, why)
        step.need_all = frozenset(data_names)
        step.need_state = frozenset(
            k for k in data_names if any(n in self._state_dep for n in _nodes_in(step.binding[k]))
        )
        step.on_state_path = bool(step.need_state)
        if step.on_state_path:
            self._state_dep.add(node)
        module = step.module
        step.tuple_out = rule.tuple_out or bool(
            getattr(module, "return_indices", False)
            if module is not None
            else step.binding.get("return_indices")
        )
        if step.tuple_out:
            self._tuple_nodes.add(node)
        step.state_deps = frozenset().union(
            *(self._deps.get(n, frozenset()) for k in data_names for n in _nodes_in(step.binding[k]))
        )
        self._deps[node] = step.state_deps
        step.volatile = rule.stochastic or any(n in self._volatile for n in deps)
        if step.volatile:
            self._volatile.add(node)
        return step

    # ---- evaluation ----

    def __call__(
        self, inputs: Sequence[Tensor], states: Sequence[Tensor], need_input_feedback: bool = False
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
        """Return ``(u, g, h)``: pre-activations, ``dPhi/ds_k``, and (if requested) input feedbacks.

        ``h_i`` is None unless ``need_input_feedback`` and input ``i`` reaches some output.
        """
        if len(inputs) != self.n_inputs or len(states) != self.n_states:
            raise ValueError(
                f"expected {self.n_inputs} inputs and {self.n_states} states, got {len(inputs)} and {len(states)}"
            )
        env: dict[Node, Any] = dict(zip(self._placeholders, [*inputs, *states]))
        lookup = env.__getitem__
        tape: list[Record] = []
        for step in self._steps:
            rule = step.rule
            record = rule is not None and (need_input_feedback or step.on_state_path)
            if rule is None or (rule.forward is None and not record):
                env[step.node] = step.run(env)
                continue
            a = map_arg(step.binding, lookup)
            out, aux = (step.run(env), None) if rule.forward is None else rule.forward(step, a)
            env[step.node] = out
            if record:
                tape.append(Record(step, a, aux))

        # reverse sweep: adjoint of every data node, seeded with s_j at output j
        wanted = self._data if need_input_feedback else self._state_dep
        adj: dict[Node, Tensor] = {}

        def accumulate(node: Any, grad: Tensor | None) -> None:
            if grad is None or not isinstance(node, Node) or node not in wanted:
                return
            prev = adj.get(node)
            adj[node] = grad if prev is None else prev + grad

        for t, s in zip(self._outputs, states):
            accumulate(t, s)
        for rec in reversed(tape):
            grad = adj.pop(rec.step.node, None)
            if grad is None:
                continue
            need = rec.step.need_all if need_input_feedback else rec.step.need_state
            for name, contribution in rec.step.rule.adjoint(rec, grad, need).items():
                template = rec.step.binding[name]
                if isinstance(template, (list, tuple)):
                    for t, c in zip(template, contribution):
                        accumulate(t, c)
                else:
                    accumulate(template, contribution)

        u = [map_arg(t, lookup) for t in self._outputs]
        state_nodes = self._placeholders[self.n_inputs :]
        g = [u_k + adj[p] if p in adj else u_k for u_k, p in zip(u, state_nodes)]
        h = [adj.get(p) if need_input_feedback else None for p in self._placeholders[: self.n_inputs]]
        return u, g, h

    def phi_grad(self, inputs: Sequence[Tensor], states: Sequence[Tensor]) -> list[Tensor]:
        """``g_k = dPhi/ds_k`` only."""
        return self(inputs, states)[1]

    def _subset(self, wanted: frozenset[int]) -> _Subset:
        found = self._subsets.get(wanted)
        if found is not None:
            return found
        adjoint_nodes = frozenset(n for n in self._state_dep if self._deps.get(n, frozenset()) & wanted)
        taped = [s for s in self._steps if s.rule is not None and s.node in adjoint_nodes]
        need = {
            id(s): frozenset(
                k for k in s.need_state if any(n in adjoint_nodes for n in _nodes_in(s.binding[k]))
            )
            for s in taped
        }
        roots = [n for j in wanted for n in _nodes_in(self._outputs[j])] + [s.node for s in taped]
        needed = ancestors(roots)
        taped_nodes = {s.node for s in taped}
        run = tuple((s, s.node in taped_nodes) for s in self._steps if s.node in needed)
        found = self._subsets[wanted] = _Subset(run, adjoint_nodes, need)
        return found

    def phi_grad_of(
        self,
        inputs: Sequence[Tensor],
        states: Sequence[Tensor],
        wanted: Sequence[int],
        cache: StepCache | None = None,
    ) -> list[Tensor | None]:
        """``g_j = dPhi/ds_j`` for the states ``j`` in ``wanted`` only (None elsewhere), evaluating only the
        ops those need: the pre-activations u_j and the transposes of the ops that read s_j. With a `cache`,
        a node whose inputs are unchanged since an earlier call (same state tensors) is not evaluated again,
        so one even/odd sweep costs one synchronous step. Same values as `phi_grad` for those states."""
        plan = self._subset(frozenset(wanted))
        env: dict[Node, Any] = dict(zip(self._placeholders, [*inputs, *states]))
        lookup = env.__getitem__
        if cache is not None:
            cache.bind_inputs(inputs)
        tape: list[Record] = []
        for step, taped in plan.run:
            rule = step.rule
            if rule is None:
                env[step.node] = step.run(env)
                continue
            reuse = cache is not None and not step.volatile
            key = tuple(states[k] for k in step.state_key)
            hit = cache.entries.get(step.node) if reuse else None
            if hit is not None and all(a is b for a, b in zip(hit[0], key)):
                _, out, record = hit
            else:
                a = map_arg(step.binding, lookup)
                out, aux = (step.run(env), None) if rule.forward is None else rule.forward(step, a)
                record = Record(step, a, aux)
                if reuse:
                    cache.entries[step.node] = (key, out, record)
            env[step.node] = out
            if taped:
                tape.append(record)

        adj: dict[Node, Tensor] = {}

        def accumulate(node: Any, grad: Tensor | None) -> None:
            if grad is None or not isinstance(node, Node) or node not in plan.adjoint_nodes:
                return
            prev = adj.get(node)
            adj[node] = grad if prev is None else prev + grad

        for t, s in zip(self._outputs, states):
            accumulate(t, s)
        for rec in reversed(tape):
            grad = adj.pop(rec.step.node, None)
            if grad is None:
                continue
            for name, contribution in rec.step.rule.adjoint(rec, grad, plan.need[id(rec.step)]).items():
                template = rec.step.binding[name]
                if isinstance(template, (list, tuple)):
                    for t, c in zip(template, contribution):
                        accumulate(t, c)
                else:
                    accumulate(template, contribution)
        state_nodes = self._placeholders[self.n_inputs :]
        g: list[Tensor | None] = [None] * self.n_states
        for j in wanted:
            u_j = map_arg(self._outputs[j], lookup)
            p = state_nodes[j]
            g[j] = u_j + adj[p] if p in adj else u_j
        return g


def unsupported_reason(gm: GraphModule, n_inputs: int) -> str | None:
    """Why :class:`TransposeProgram` cannot handle ``gm`` (the error message), or None if it can."""
    try:
        TransposeProgram(gm, n_inputs)
    except UnsupportedOpError as exc:
        return str(exc)
    return None
