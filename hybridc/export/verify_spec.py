"""Check an analog block's manifest description against its step graph (part of `hybridc verify`).

The manifest's energy specification (neurons, their activations σ_j, the solver's update order) is what
hardware is built from; the step ONNX file is what the numbers are checked with. Both come from the same
compiled block, and this module makes sure they still say the same thing:

- every neuron's state input/output is in the step graph, with the manifest's per-sample shape;
- every neuron's activation: the step graph's value for `next.<neuron>` must equal σ_j (the manifest's kind
  and parameters, evaluated here in numpy) of a tensor that feeds it through elementwise ops only (its
  pre-activation, exposed as an extra output and run in onnxruntime on random inputs and states); a neuron
  described as `identity` must not come out of an activation op;
- the update order: a synchronous step reads every old state, so the next states of odd-layer neurons
  change when the even-layer states do; an even/odd (async) step overwrites the even layers first, so
  (when no even layer reads another) its next states do not depend on the old even states at all;
- layer parity, output flags, and the step counts of `--full` agree with the block's solver.

No torch is needed: onnx, onnxruntime and numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hybridc.export.manifest import AnalogBlockInfo, ExportError, Manifest, NeuronInfo

#: ops that act elementwise on one varying input (others constant): σ and the last synapse scalings
_ELEMENTWISE = frozenset(
    {
        "Clip",
        "Mul",
        "Div",
        "Add",
        "Sub",
        "Relu",
        "Sigmoid",
        "Tanh",
        "HardSigmoid",
        "LeakyRelu",
        "Elu",
        "Celu",
        "Selu",
        "Softplus",
        "Softsign",
        "Min",
        "Max",
        "Neg",
        "Identity",
        "Cast",
        "Log",
        "Exp",
        "Abs",
        "ThresholdedRelu",
    }
)
#: elementwise ops that are activations (an `identity` neuron must not end in one)
_ACTIVATION_OPS = _ELEMENTWISE - {"Mul", "Div", "Add", "Sub", "Neg", "Identity", "Cast"}
_BATCH = 5
_ATOL, _RTOL = 1e-5, 1e-5


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def _softplus(u: np.ndarray, beta: float = 1.0, threshold: float = 20.0) -> np.ndarray:
    bu = beta * u
    return np.where(bu > threshold, u, np.logaddexp(0.0, bu) / beta)


def _elu(u: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(u > 0, u, alpha * np.expm1(np.minimum(u, 0)))


_SELU_A, _SELU_S = 1.6732632423543772, 1.0507009873554805

#: numpy σ for each activation kind of `hybridc.energy.activations` (same parameters and defaults)
ACTIVATIONS: dict[str, Callable[..., np.ndarray]] = {
    "hardsigmoid": lambda u, slope=1.0: np.clip(u * slope, 0.0, 1.0),
    "identity": lambda u: u,
    "relu": lambda u: np.maximum(u, 0.0),
    "relu6": lambda u: np.clip(u, 0.0, 6.0),
    "leaky_relu": lambda u, negative_slope=0.01: np.where(u >= 0, u, negative_slope * u),
    "elu": _elu,
    "celu": lambda u, alpha=1.0: np.maximum(u, 0) + np.minimum(0, alpha * np.expm1(np.minimum(u, 0) / alpha)),
    "selu": lambda u: _SELU_S * _elu(u, _SELU_A),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "hardtanh": lambda u, min_val=-1.0, max_val=1.0: np.clip(u, min_val, max_val),
    "torch_hardsigmoid": lambda u: np.clip(u / 6.0 + 0.5, 0.0, 1.0),
    "softplus": _softplus,
    "softsign": lambda u: u / (1.0 + np.abs(u)),
    "logsigmoid": lambda u: -np.logaddexp(0.0, -u),
    "tanhshrink": lambda u: u - np.tanh(u),
}


class _Graph:
    """The step graph's producers and its constant tensors (initializers and what only they feed)."""

    def __init__(self, model: Any) -> None:
        g = model.graph
        self.model = model
        self.producer = {o: n for n in g.node for o in n.output}
        self.inputs = {i.name: i for i in g.input}
        self.outputs = {o.name for o in g.output}
        const = {i.name for i in g.initializer} | {""}
        for n in g.node:  # topological order
            if n.op_type == "Constant" or (n.input and all(i in const for i in n.input)):
                const.update(n.output)
        self.const = const

    def activation_chain(self, name: str) -> tuple[str | None, list[str]]:
        """(op that produces `name`, the tensors that feed it through single-varying-input elementwise ops)."""
        node = self.producer.get(name)
        first = node.op_type if node is not None else None
        found: list[str] = []
        while node is not None and node.op_type in _ELEMENTWISE and len(found) < 8:
            varying = [i for i in node.input if i not in self.const]
            if len(varying) != 1:
                break
            found.append(varying[0])
            node = self.producer.get(varying[0])
        return first, found


def _dims(value_info: Any) -> list[Any]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim]


def _feeds(manifest: Manifest, b: AnalogBlockInfo, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for name in b.inputs:
        shape = []
        for d in manifest.tensors[name].shape:
            if isinstance(d, str):
                k = d.split("*")[0] if "*" in d else "1"
                shape.append(int(k) * _BATCH if k.isdigit() else _BATCH)
            else:
                shape.append(int(d))
        dtype = manifest.tensors[name].dtype
        if dtype.startswith(("float", "bfloat")):
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        else:  # token ids, masks: small non-negative integers (valid ids, true/false)
            feeds[name] = rng.integers(0, 2, shape).astype(np.dtype(dtype))
    for n in b.neurons:
        feeds[n.state_input] = rng.uniform(-0.5, 1.5, (n.batch_multiple * _BATCH, *n.shape)).astype(
            np.float32
        )
    return feeds


def _session(model: Any, extra: list[str]) -> Any:
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for name in extra:
        if name not in known:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            known.add(name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _sigma(n: NeuronInfo) -> Callable[[np.ndarray], np.ndarray]:
    fn = ACTIVATIONS.get(n.activation.kind)
    if fn is None:
        raise ExportError(
            f"neuron {n.name}: activation {n.activation.kind!r} is not a neuron activation hybridc "
            f"exports ({', '.join(sorted(ACTIVATIONS))})"
        )
    params = dict(n.activation.params)
    return lambda u: fn(u.astype(np.float64), **params)


def check_block_spec(directory: Path, manifest: Manifest, b: AnalogBlockInfo) -> list[str]:
    """Problems where the manifest's description of analog block `b` disagrees with its step graph ([] when
    none). Raises ExportError when the step file cannot be read."""
    import onnx

    try:
        graph = _Graph(onnx.load(str(directory / b.step_onnx)))
    except Exception as exc:
        raise ExportError(f"cannot read {b.step_onnx}: {str(exc).splitlines()[0]}") from None
    where = f"analog block {b.name} ({b.step_onnx})"
    problems = [f"{where}: {p}" for p in _structure_problems(manifest, b, graph)]
    if problems:
        return problems
    rng = np.random.default_rng(0)
    feeds = _feeds(manifest, b, rng)
    chains = {n.name: graph.activation_chain(n.state_output) for n in b.neurons}
    extra = sorted({t for _, ts in chains.values() for t in ts if t not in graph.inputs})
    sess = _session(graph.model, extra)
    wanted = [n.state_output for n in b.neurons] + extra
    values = dict(zip(wanted, sess.run(wanted, feeds)))
    values.update({k: v for k, v in feeds.items()})
    for n in b.neurons:
        first, candidates = chains[n.name]
        problems += [f"{where}: {p}" for p in _activation_problems(n, first, candidates, values)]
    problems += [f"{where}: {p}" for p in _mode_problems(b, sess, feeds, rng)]
    return problems


def _structure_problems(manifest: Manifest, b: AnalogBlockInfo, graph: _Graph) -> list[str]:
    out = []
    for n in b.neurons:
        vi = graph.inputs.get(n.state_input)
        if vi is None or n.state_output not in graph.outputs:
            out.append(f"neuron {n.name}: the step graph has no state {n.state_input} -> {n.state_output}")
            continue
        if _dims(vi)[1:] != list(n.shape):
            out.append(f"neuron {n.name}: shape {n.shape} in the manifest, {_dims(vi)[1:]} in the step graph")
        if n.parity != n.layer % 2:
            out.append(f"neuron {n.name}: parity {n.parity} does not match layer {n.layer}")
    flagged = {n.name for n in b.neurons if n.output}
    if flagged != set(b.outputs):
        out.append(f"output neurons {sorted(flagged)} differ from the block's outputs {sorted(b.outputs)}")
    if b.solver.steps < 1:
        out.append(f"solver steps {b.solver.steps} < 1")
    if (
        manifest.full is not None
        and b.name in manifest.full.steps
        and manifest.full.steps[b.name] != b.solver.steps
    ):
        out.append(
            f"model.onnx runs {manifest.full.steps[b.name]} steps, the block's solver {b.solver.steps}"
        )
    return out


def _activation_problems(
    n: NeuronInfo, first: str | None, candidates: list[str], values: dict[str, np.ndarray]
) -> list[str]:
    got = values[n.state_output].astype(np.float64)
    if n.activation.kind == "identity":
        if first in _ACTIVATION_OPS:
            return [f"neuron {n.name}: described as identity, but the step graph applies {first} to it"]
        return []
    sigma = _sigma(n)
    best = np.inf
    for c in candidates:
        u = values.get(c)
        if u is None or u.shape != got.shape:
            continue
        want = sigma(u)
        err = float(np.max(np.abs(want - got) - _RTOL * np.abs(got))) if got.size else 0.0
        best = min(best, err)
        if err <= _ATOL:
            return []
    return [
        f"neuron {n.name}: the step graph does not apply the manifest's activation {n.activation} "
        f"(closest deviation {best:.2e} over its {len(candidates)} candidate pre-activation(s))"
    ]


def _mode_problems(
    b: AnalogBlockInfo, sess: Any, feeds: dict[str, np.ndarray], rng: np.random.Generator
) -> list[str]:
    """The update order, read off how the next states depend on the old even-layer states."""
    even = [n for n in b.neurons if n.parity == 0]
    odd = [n for n in b.neurons if n.parity == 1]
    if not even or not odd:
        return []  # one parity only: sync and async are the same map
    names = [n.state_output for n in b.neurons]
    before = dict(zip(names, sess.run(names, feeds)))
    moved = dict(feeds)
    for n in even:
        moved[n.state_input] = rng.uniform(-0.5, 1.5, feeds[n.state_input].shape).astype(np.float32)
    after = dict(zip(names, sess.run(names, moved)))
    odd_changed = any(
        float(np.max(np.abs(after[n.state_output] - before[n.state_output]))) > 1e-6 for n in odd
    )
    any_changed = any(float(np.max(np.abs(after[k] - before[k]))) > 1e-6 for k in names)
    parity = {n.name: n.parity for n in b.neurons}
    even_reads_even = any(
        s.source_kind == "neuron" and parity.get(s.source) == 0 and parity.get(s.target) == 0
        for s in b.synapses
    )
    if b.solver.mode == "sync" and not odd_changed:
        return [
            "solver mode is sync in the manifest, but the step graph's odd-layer updates ignore the old "
            "even-layer states (an even/odd, async, step)"
        ]
    if b.solver.mode == "async" and not even_reads_even and any_changed:
        return [
            "solver mode is async in the manifest, but the step graph's next states depend on the old "
            "even-layer states (a synchronous step)"
        ]
    return []
