"""Reachability over a graph given by a successor function: the one walk every partition pass uses to ask
"which nodes does A reach (passing only through nodes of some kind)", and so "does A reach B".

The walk is deterministic: it visits in the order the successor function lists nodes (no sets are iterated),
so what a pass derives from the visiting order (which producer comes last, which cycle is found first) is the
same in every process, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

import torch.fx as fx

N = TypeVar("N", bound=Hashable)


def _always(_: object) -> bool:
    return True


def walk(
    starts: Iterable[N],
    step: Callable[[N], Iterable[N]],
    expand: Callable[[N], bool] = _always,
    breadth_first: bool = False,
) -> Iterator[N]:
    """Every node reachable from `starts`, each yielded once, the starts included.

    `step(n)` lists n's successors; a node is expanded (its successors queued) only when `expand(n)` holds, so
    `expand` says which nodes a path may pass *through* (a node that fails it is still reached and yielded).
    Depth first by default (the last queued node next, like a stack); `breadth_first` visits in queue order.
    Lazy: a caller that stops at the first hit does no more work than needed."""
    pending: deque[N] = deque(starts)
    seen: set[N] = set()
    while pending:
        n = pending.popleft() if breadth_first else pending.pop()
        if n in seen:
            continue
        seen.add(n)
        yield n
        if expand(n):
            pending.extend(step(n))


def users(n: fx.Node) -> list[fx.Node]:
    """The successor function downstream: the nodes that read n."""
    return list(n.users)


def inputs(n: fx.Node) -> list[fx.Node]:
    """The successor function upstream: the nodes n reads."""
    return list(n.all_input_nodes)


def descendants(n: fx.Node) -> set[fx.Node]:
    """n and every node that depends on it."""
    return set(walk([n], users))


def ancestors(roots: Iterable[fx.Node]) -> set[fx.Node]:
    """The roots and every node they depend on (what computing the roots needs)."""
    return set(walk(roots, inputs))
