"""Variables, Functions, and backward as a reverse walk over recorded calls.

Invariants:
- Every Function call made with backprop enabled gets a sequence number from one global counter.
  A call's inputs were all made by earlier calls, so visiting calls in decreasing sequence order is
  a topological order: a call's gradient is propagated only after every use of its outputs has
  contributed, on any DAG. No generation sort, no recursion.
- Built-in ops implement ``vjp(gy, xs, y)`` that reads only its arguments and the op's plain-data
  attributes. On a first-order backward it runs on raw ndarrays; with ``create_graph=True`` it runs on
  Variables, so the backward computation is itself recorded (and differentiable again). A user
  Function written DeZero's way (``backward(*gys)`` reading ``self.inputs``) works too.
- Graph links: a Variable points to its creator, a Function to its inputs; outputs are weak
  references, so a graph nothing refers to is freed by reference counting alone.
- The core never imports the ops: operators on Variable reach them through the registry by name.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import sys
import weakref
from typing import Any

import numpy as np

from . import parallel as _par
from ._pool import _EXACT_REFCOUNTS, pool
from .config import _state
from .registry import _OPS

_counter = itertools.count(1)

# The 0-d results a Function call keeps as they come, NumPy scalars (32 bytes, against 136 for a
# 0-d array and its data): ``Variable.data`` makes the array on first use. Arithmetic on them is
# NumPy's scalar arithmetic, the same IEEE operations as a ufunc on 0-d arrays, several times
# faster. Only ops whose forward is elementwise (``scalar_forward``) receive them as inputs;
# every other forward, and every rule not marked ``scalar_rule``, gets 0-d arrays as before.
_SCALARS = frozenset({np.float64, np.float32})


def _as_array(d: Any) -> Any:
    """``d``, or the 0-d array of a result kept as a NumPy scalar."""
    return np.asarray(d) if d.__class__ in _SCALARS else d


def _arrays(ds: Any) -> list:
    """``ds`` with NumPy scalars made 0-d arrays (for a forward or rule that wants ndarrays)."""
    return [_as_array(d) for d in ds]


_wref = weakref.ref
_new = object.__new__


class Variable:
    """A value in a computation, with its gradient and (when made by a Function) its creator."""

    __slots__ = (
        "_data",
        "name",
        "grad",
        "creator",
        "_ver",
        "_tt",
        "_ti",
        "__weakref__",
    )
    __array_priority__ = 200

    def __init__(self, data: np.ndarray | None, name: str | None = None):
        if data is not None and not isinstance(data, np.ndarray):
            raise TypeError(
                f"{type(data)} is not supported: Variable data must be a numpy.ndarray or None "
                f"(wrap Python numbers with np.array(...))"
            )
        self._data = data
        self.name = name
        self.grad = None
        self.creator = None
        self._ver = 0  # bumped by every assignment to .data (x.data -= ... included)
        self._tt = 0  # serial of the recording tape that owns this value's bookkeeping (0: none)
        # its index on that tape, while the tape streams to a file; -1: that tape keeps this very
        # array as the value it recorded (see _give_back)
        self._ti = 0

    @property
    def data(self) -> np.ndarray | None:
        if self._ti < 0:
            _give_back(self)
        d = self._data
        if d.__class__ in _SCALARS:  # a 0-d output kept as a NumPy scalar: an array from now on
            d = self._data = np.asarray(d)
        return d

    @data.setter
    def data(self, value: np.ndarray | None) -> None:
        # ``W.data -= lr * W.grad.data`` updates the array in place and then assigns it back: the
        # assignment tells a recording tape that this value is no longer what it stored.
        self._data = value
        self._ver += 1
        self._tt = 0
        self._ti = 0

    # -- array-like attributes -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        if self._data is None:
            return "variable(None)"
        p = str(self.data).replace("\n", "\n" + " " * 9)
        return "variable(" + p + ")"

    def __bool__(self) -> bool:
        st = _state.get()
        if st.tapes and st.enable_backprop:
            # An `if` on a value: recorded as a branch guard so a replay can tell when it would
            # have taken the other path.
            return bool(_OPS["guard"]()(self).data)
        return bool(self._data)

    # -- graph -----------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """DeZero's generation: 0 for a leaf, one more than its creator's. Computed on request
        (nothing in tapegrad orders by it), so a call stores no generation numbers."""
        c = self.creator
        return 0 if c is None else _own_generation(c) + 1

    def set_creator(self, func: "Function") -> None:
        self.creator = func

    def unchain(self) -> None:
        self.creator = None

    def cleargrad(self) -> None:
        self.grad = None

    def unchain_backward(self) -> None:
        if self.creator is None:
            return
        funcs = [self.creator]
        while funcs:
            f = funcs.pop()
            for x in f._ins:
                if x.creator is not None:
                    funcs.append(x.creator)
                    x.unchain()

    def backward(self, retain_grad: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (seeded by ``self.grad`` or ones)."""
        _backward(self, retain_grad, create_graph)

    # -- methods that are ops ----------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Variable":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(shape)
        if shape == self.shape:
            return self
        return _OPS["reshape"](shape)(self)

    def transpose(self, *axes: Any) -> "Variable":
        if len(axes) == 0:
            axes = None
        elif len(axes) == 1 and (isinstance(axes[0], (tuple, list)) or axes[0] is None):
            axes = axes[0]
        return _OPS["transpose"](None if axes is None else tuple(axes))(self)

    @property
    def T(self) -> "Variable":
        return _OPS["transpose"](None)(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> "Variable":
        return _OPS["sum"](axis, keepdims)(self)

    def max(self, axis: Any = None, keepdims: bool = False) -> "Variable":
        return _OPS["max"](axis, keepdims)(self)

    def min(self, axis: Any = None, keepdims: bool = False) -> "Variable":
        return _OPS["min"](axis, keepdims)(self)

    def dot(self, other: Any) -> "Variable":
        return _OPS["matmul"]()(self, other)

    matmaul = dot  # DeZero's spelling

    def to_cpu(self) -> None:
        """Nothing to do: tapegrad runs on NumPy (kept so DeZero scripts run unchanged)."""

    def to_gpu(self) -> None:
        raise NotImplementedError("tapegrad runs on NumPy only; there is no GPU backend")

    def __getitem__(self, index: Any) -> "Variable":
        return _OPS["get_item"].of(self, index)

    # -- operators -------------------------------------------------------------------------
    def __add__(self, other):
        return _OPS["add"]()(self, other)

    def __radd__(self, other):
        return _OPS["add"]()(other, self)

    def __sub__(self, other):
        return _OPS["sub"]()(self, other)

    def __rsub__(self, other):
        return _OPS["sub"]()(other, self)

    def __mul__(self, other):
        return _OPS["mul"]()(self, other)

    def __rmul__(self, other):
        return _OPS["mul"]()(other, self)

    def __truediv__(self, other):
        return _OPS["div"]()(self, other)

    def __rtruediv__(self, other):
        return _OPS["div"]()(other, self)

    def __neg__(self):
        return _OPS["neg"]()(self)

    def __pow__(self, c):
        if isinstance(c, Variable):
            raise TypeError("x ** c takes a constant exponent c (a Python or NumPy number)")
        return _OPS["pow"](c)(self)

    def __matmul__(self, other):
        return _OPS["matmul"]()(self, other)

    def __rmatmul__(self, other):
        return _OPS["matmul"]()(other, self)

    def __lt__(self, other):
        return _OPS["less"]()(self, other)

    def __le__(self, other):
        return _OPS["less_equal"]()(self, other)

    def __gt__(self, other):
        return _OPS["greater"]()(self, other)

    def __ge__(self, other):
        return _OPS["greater_equal"]()(self, other)

    __hash__ = object.__hash__


# Tapes that keep a leaf's array without a copy: serial -> weak reference to the tape (see
# Tape._external). A tape enters once, at its first such array, and leaves when it is freed.
_lenders: dict[int, weakref.ref] = {}


def _lend(tape: Any) -> None:
    serial = tape._serial
    if serial not in _lenders:
        _lenders[serial] = weakref.ref(tape, lambda _, s=serial: _lenders.pop(s, None))


def _give_back(v: Variable) -> None:
    """Called before ``v.data`` hands out an array that a recording tape keeps as a recorded value
    (the tape took it without copying, as nothing else referred to it). Whoever gets the array
    may change it in place, so if that tape is still alive ``v`` takes a copy of its own and the
    tape keeps the original. When the tape is gone (a training step's tape usually is by the
    time the optimizer updates the parameters), nothing is copied."""
    v._ti = 0
    lender = _lenders.get(v._tt)
    if lender is not None and lender() is not None:
        v._data = v._data.copy(order="K")


class Parameter(Variable):
    """A Variable that holds a trainable parameter (as in DeZero)."""

    __slots__ = ()


class Constant(Variable):
    """A Python number or ndarray turned into a Variable on the way into a Function.

    Constants are stored on a tape but are not its inputs, and receive no gradient.
    """

    __slots__ = ()


class _ScalarConstant(Constant):
    """A Constant made from a Python number: its array is fresh, so a tape need not copy it."""

    __slots__ = ()


def _made(cls: type, data: np.ndarray) -> Any:
    """``cls(data)`` for an ndarray of ours, without ``Variable.__init__``'s argument checks."""
    v = _new(cls)
    v._data = data
    v.name = v.grad = v.creator = None
    v._ver = v._tt = v._ti = 0
    return v


def as_array(x: Any, array_module: Any = np) -> np.ndarray:
    """A NumPy scalar or Python number as a 0-d array; anything else unchanged (as DeZero)."""
    if np.isscalar(x):
        return array_module.array(x)
    return x


def as_variable(obj: Any) -> Variable:
    """``obj`` if it is a Variable, else a Variable around it."""
    if isinstance(obj, Variable):
        return obj
    return Variable(obj)


def _scalar_array(x: Any, ref: np.dtype | None) -> np.ndarray:
    """A Python number as an array that does not upcast ``ref`` (float32 stays float32)."""
    if ref is None or isinstance(x, np.generic):
        return np.asarray(x)
    if ref.kind in "fc" and isinstance(x, (int, float)) and not isinstance(x, bool):
        return np.asarray(x, dtype=ref)
    return np.asarray(x, dtype=np.result_type(ref, x))


def _to_inputs(inputs: tuple) -> list[Variable]:
    """Turn a call's arguments into Variables; numbers take the dtype of the array arguments."""
    vs: list[Any] = []
    ref = None
    scalars = False
    for x in inputs:
        if isinstance(x, Variable):
            if x._data is not None and (ref is None or ref.kind == "b"):
                ref = x._data.dtype
        elif isinstance(x, np.ndarray):
            if ref is None or ref.kind == "b":
                ref = x.dtype
            x = _made(Constant, x)
        elif isinstance(x, (int, float, complex, bool, np.generic)):
            scalars = True
        else:
            raise TypeError(
                f"cannot use a {type(x).__name__} as an input of a Function; "
                f"expected a Variable, a numpy.ndarray or a number"
            )
        vs.append(x)
    if scalars:
        vs = [
            x if isinstance(x, Variable) else _made(_ScalarConstant, _scalar_array(x, ref))
            for x in vs
        ]
    return vs


class _OutRef(weakref.ref):
    """A weak reference to one output of a call with several, which also keeps the output's
    shape and dtype (backward gives an output nobody used, or that is gone, a zero gradient)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, y: Variable):
        super().__init__(y)
        self.shape, self.dtype = y._data.shape, y._data.dtype


_RefType = weakref.ReferenceType


def _out_refs(outs: Any) -> list:
    """A call's ``_outs`` as DeZero's list of weak references."""
    return [outs] if outs.__class__ is _RefType else list(outs)


def _own_generation(f: "Function") -> int:
    """The generation of ``f``'s own call (the largest of its inputs'), computed without recursion
    over the calls it depends on, and kept on each of them."""
    g = getattr(f, "_gen", None)
    if g is not None:
        return g
    if getattr(f, "_ins", None) is None:  # not called yet: nothing to keep
        return 0
    stack = [f]
    while stack:
        h = stack[-1]
        if getattr(h, "_gen", None) is not None:
            stack.pop()
            continue
        gen, ready = 0, True
        for x in getattr(h, "_ins", None) or ():
            c = x.creator
            if c is None:
                continue
            cg = getattr(c, "_gen", None)
            if cg is None:
                stack.append(c)
                ready = False
            elif cg + 1 > gen:
                gen = cg + 1
        if ready:
            h._gen = gen
            stack.pop()
    return f._gen


class Function:
    """A differentiable operation. Subclass it and write ``forward`` and ``backward``.

    ``forward(*xs)`` takes ndarrays and returns an ndarray or a tuple of them; ``backward(*gys)``
    takes the gradients of the outputs as Variables and returns one per input (DeZero's protocol).
    Built-in ops implement ``vjp`` instead (see ``tapegrad.ops``).
    """

    # Per-call state lives in slots (a built-in op's instance has no __dict__: a recorded call
    # costs about 80 bytes, not 300). A user's subclass gets a __dict__ as usual.
    __slots__ = ("_gen", "_seq", "_ins", "_outs", "_latest", "__weakref__")
    # _gen: the generation, once asked for (None: not computed); _seq: this call's sequence
    # number (0: not called yet); _ins: this call's inputs; _outs: a weak reference to its output,
    # or a tuple of _OutRef (which also know the shape and dtype) when there are several. On an
    # instance called again, ``inputs``/``outputs`` describe the latest call, kept in _latest.
    op: str | None = None  # registered op name (set by register_op)
    _registered = False

    @property
    def inputs(self) -> Any:
        latest = getattr(self, "_latest", None)
        return getattr(self, "_ins", None) if latest is None else latest[0]

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._ins = value
        self._latest = None

    @property
    def outputs(self) -> Any:
        """Weak references to the outputs (of the latest call), as in DeZero."""
        latest = getattr(self, "_latest", None)
        outs = getattr(self, "_outs", None) if latest is None else latest[1]
        return outs if outs is None else _out_refs(outs)

    @outputs.setter
    def outputs(self, value: Any) -> None:
        refs = list(value)
        self._outs = refs[0] if len(refs) == 1 else tuple(refs)
        self._latest = None

    @property
    def generation(self) -> int:
        """DeZero's generation: the largest of the inputs' generations (of the latest call)."""
        latest = getattr(self, "_latest", None)
        if latest is not None:
            return max([x.generation for x in latest[0]], default=0)
        return _own_generation(self)

    @generation.setter
    def generation(self, value: int) -> None:
        self._gen = value

    def __call__(self, *inputs: Any):
        st = _state.get()
        node = self
        try:
            called = self._seq  # built-in ops set it to 0 in __init__
        except AttributeError:  # a user's Function whose __init__ does not call ours
            called = 0
        if called:
            # A second call of the same instance: it gets a record of its own, so the first
            # call's backward keeps seeing the first call's inputs and state.
            node = copy.copy(self)
            node._gen = None  # the copy's generation is its own call's (a new instance has none)
            node._latest = None
        vs = inputs
        for x in inputs:
            if x.__class__ is not Variable and not isinstance(x, Variable):
                vs = _to_inputs(inputs)
                break
        try:
            # (no local names for the arrays: a tape counts references to them, see
            # Tape._external)
            if node.scalar_forward:
                if len(vs) == 1:
                    ys = node.forward(vs[0]._data)
                elif len(vs) == 2:
                    ys = node.forward(vs[0]._data, vs[1]._data)
                else:
                    ys = node.forward(*[x._data for x in vs])
            elif len(vs) == 1 and vs[0]._data.__class__ not in _SCALARS:
                ys = node.forward(vs[0]._data)
            elif len(vs) == 2 and not (
                vs[0]._data.__class__ in _SCALARS or vs[1]._data.__class__ in _SCALARS
            ):
                ys = node.forward(vs[0]._data, vs[1]._data)
            else:
                ys = node.forward(*_arrays([x._data for x in vs]))
        except ValueError as e:
            raise ValueError(
                f"{node._opname()}: cannot apply to inputs of shapes "
                f"{', '.join(str(x.shape) for x in vs)}: {e}"
            ) from None
        if type(ys) is tuple:
            return node._finish_many(self, st, vs, ys)
        y = _new(Variable)  # _made(Variable, ...), inlined: this is every call's path
        y._data = ys if ys.__class__ is np.ndarray or ys.__class__ in _SCALARS else np.asarray(ys)
        y.name = y.grad = None
        y._ver = y._tt = y._ti = 0
        if not st.enable_backprop:
            y.creator = None
        else:
            node._seq = next(_counter)
            node._ins = vs
            node._outs = _wref(y)
            y.creator = node
            if node is not self:
                self._latest = (vs, node._outs)
            tapes = st.tapes
            if tapes:
                t = tapes[0]
                if t._direct and len(tapes) == 1:
                    # The common case, inlined (it is most of a small call's recording cost):
                    # one tape, neither streaming nor keeping source lines. Same steps as
                    # Tape._record; y is fresh, so its slot is free for this tape.
                    serial = t._serial
                    for x in vs:
                        if x._tt != serial and t._ids.get(id(x), -1) != x._ver:
                            t._external(x)
                    d = y._data
                    if t._ext and not node.fresh:
                        d = t._unshared(d)
                    y._tt = serial
                    t._pending_ys.append(d)
                    t._pending.append(node)
                else:
                    for t in tapes:
                        t._record(node, vs, (y,))
        return y

    def _finish_many(self, caller: "Function", st: Any, vs: Any, ys: tuple) -> Any:
        """The end of a call whose forward returned several outputs."""
        outputs = [Variable(y if type(y) is np.ndarray else np.asarray(y)) for y in ys]
        if st.enable_backprop:
            self._gen = None
            self._seq = next(_counter)
            self._ins = vs
            self._outs = tuple([_OutRef(y) for y in outputs])
            for y in outputs:
                y.creator = self
            if self is not caller:
                caller._latest = (vs, self._outs)
            if st.tapes:
                for t in st.tapes:
                    t._record(self, vs, outputs)
        return outputs if len(outputs) > 1 else outputs[0]

    def forward(self, *xs: np.ndarray):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, *gys: Variable):
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    # vjp(gy, xs, y) -> tuple of gx: defined by built-in ops; None here means "use backward".
    vjp = None
    _rule = False  # True for built-in ops, whose vjp(gy, xs, y) is the derivative rule
    needs_y = True  # does vjp read the output value?
    # fresh: forward always returns new arrays, never an input's array or a view of one (a
    # tape then need not check whether an output shares memory with a value the user owns)
    fresh = False
    uses_need = False  # does vjp take the tuple of inputs needing a gradient? (see ops.base)
    # scalar_rule: vjp gives the same bits when its 0-d float inputs and output come as NumPy
    # scalars (it uses only +, -, *, / and ufuncs): backward then passes them so, as NumPy's
    # scalar arithmetic is several times faster than a ufunc call on 0-d arrays
    scalar_rule = False
    # scalar_forward: forward takes NumPy scalars for 0-d float inputs (an elementwise forward)
    scalar_forward = False

    def _opname(self) -> str:
        return self.op or type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} op={self._opname()!r}>"


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------


def _wrap(g: Any) -> Variable:
    """A gradient as a Variable (NumPy turns 0-d results into scalars: make them arrays again)."""
    if isinstance(g, Variable):
        return g
    return _made(Variable, g if type(g) is np.ndarray else np.asarray(g))


def _call_backward(f: Function, gys: list, create_graph: bool) -> tuple:
    """Run a DeZero-style ``backward(*gys)`` and return one gradient per input (or None)."""
    gxs = f.backward(*[_wrap(g) for g in gys])
    if not isinstance(gxs, (tuple, list)):
        gxs = (gxs,)
    if len(gxs) != len(f.inputs):
        raise ValueError(
            f"{f._opname()}.backward returned {len(gxs)} gradients for {len(f.inputs)} inputs"
        )
    out = []
    for x, gx in zip(f.inputs, gxs):
        if gx is not None:
            if not create_graph and isinstance(gx, Variable):
                gx = gx.data
            elif create_graph:
                gx = _wrap(gx)
            if gx.shape != x.shape:
                raise ValueError(
                    f"{f._opname()}.backward returned a gradient of shape {gx.shape} "
                    f"for an input of shape {x.shape}"
                )
        out.append(gx)
    return tuple(out)


_CONSTANTS = (Constant, _ScalarConstant)


def _zeros_for(f: Function, ref: Any, create_graph: bool):
    """The zero gradient of an output that got none (``ref`` is its weak reference)."""
    y = ref()
    if y is not None:
        z = np.zeros_like(y._data)
    elif hasattr(ref, "shape"):
        z = np.zeros(ref.shape, ref.dtype)
    else:
        raise RuntimeError(
            f"{f._opname()}: an output is gone and its shape is unknown (outputs set by hand "
            f"must stay alive until backward)"
        )
    return Variable(z) if create_graph else z


def _backward_general(f: Function, grads: dict, retain_grad: bool, create_graph: bool) -> tuple:
    """One step of backward for a user Function or a call with several outputs."""
    refs = _out_refs(f._outs)
    outs = [r() for r in refs]
    gys = []
    for ref, y in zip(refs, outs):
        g = None if y is None else grads.pop(y, None)
        if g is None:
            g = _zeros_for(f, ref, create_graph)
        elif retain_grad:
            y.grad = _wrap(g)
        gys.append(g)
    ins = f._ins
    if not f._rule:
        h = f
        if getattr(f, "_latest", None) is not None:  # reused: show this call's links
            h = copy.copy(f)
            h.inputs, h.outputs = f._ins, _out_refs(f._outs)
        return _call_backward(h, gys, create_graph)
    xs = ins if create_graph else _arrays([x._data for x in ins])
    y = outs[0] if create_graph or outs[0] is None else outs[0].data
    y = y if f.needs_y else None
    if f.uses_need:
        return f.vjp(gys[0], xs, y, tuple([x.__class__ not in _CONSTANTS for x in ins]))
    return f.vjp(gys[0], xs, y)


def _scalars(xs: Any) -> tuple:
    """The 0-d float arrays of ``xs`` as NumPy scalars (see ``Function.scalar_rule``)."""
    return tuple([d[()] if d.ndim == 0 and d.dtype.kind == "f" else d for d in xs])


def _refs_of_sole(a: np.ndarray) -> int:
    return sys.getrefcount(a)


def _calibrate() -> int:
    """What ``_accumulate`` sees for an array held only by a dict and its caller's variable."""
    grads = {0: np.empty(1)}
    prev = grads.get(0)
    return _refs_of_sole(prev)


_SOLE = _calibrate()


def _accumulate(prev: np.ndarray, gx: Any) -> np.ndarray:
    """``prev + gx`` for a big gradient: written into ``prev`` when only the backward's table of
    gradients (and the caller) refers to it, so no new array is made (the same numbers)."""
    into = None
    if _EXACT_REFCOUNTS and prev.base is None and sys.getrefcount(prev) <= _SOLE:
        into = prev
    return _par.ew(np.add, prev, gx, into=into)


def _backward(root: Variable, retain_grad: bool, create_graph: bool) -> None:
    if root.grad is None:
        seed = np.ones_like(root._data)
        seed = Variable(seed) if create_graph else seed
    else:
        seed = root.grad if create_graph else root.grad.data
    if root.creator is None:
        root.grad = _wrap(seed)
        return

    st = _state.get()
    token = _state.set(st.with_backprop(create_graph))
    try:
        # gradients so far, by Variable (hashed by identity: no id() calls on the hot path)
        grads: dict[Variable, Any] = {root: seed}
        leaves: dict[Variable, None] = {}
        first = root.creator
        waiting = {first._seq: first}  # sequence number -> Function whose turn has not come
        heap = [-first._seq]
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            f = waiting.pop(-pop(heap))
            ins = f._ins
            refs = f._outs
            if refs.__class__ is _RefType and f._rule:  # the common case: a built-in op, one output
                y = refs()
                # y is alive (an input of a later call holds it) and has a gradient (f is on the
                # heap because y got one)
                g = grads.pop(y)
                if retain_grad:
                    y.grad = _wrap(g)
                if create_graph:
                    yv = y if f.needs_y else None
                    xs = ins
                else:
                    yv = y._data if f.needs_y else None
                    n = len(ins)
                    if n == 1:
                        xs = (ins[0]._data,)
                    elif n == 2:
                        xs = (ins[0]._data, ins[1]._data)
                    else:
                        xs = [x._data for x in ins]
                    if f.scalar_rule:
                        if yv is not None and yv.ndim == 0 and yv.dtype.kind == "f":
                            yv = yv[()]
                        if f.needs_x:
                            xs = _scalars(xs)
                    else:  # a rule that wants 0-d arrays (one reading only shapes takes either)
                        if yv.__class__ in _SCALARS:
                            yv = np.asarray(yv)
                        if f.needs_x:
                            xs = _arrays(xs)
                if f.uses_need:
                    gxs = f.vjp(g, xs, yv, tuple([x.__class__ not in _CONSTANTS for x in ins]))
                else:
                    gxs = f.vjp(g, xs, yv)
            else:
                gxs = _backward_general(f, grads, retain_grad, create_graph)
            for x, gx in zip(ins, gxs):
                if gx is None or x.__class__ in _CONSTANTS:
                    continue
                prev = grads.get(x)
                if prev is None:
                    grads[x] = gx
                elif prev.__class__ is np.ndarray and prev.size >= _par.BIG:
                    grads[x] = _accumulate(prev, gx)
                else:
                    grads[x] = prev + gx
                c = x.creator
                if c is None:
                    leaves[x] = None
                else:
                    seq = c._seq
                    if seq not in waiting:
                        waiting[seq] = c
                        push(heap, -seq)
        if not retain_grad:
            root.grad = None
        for x in leaves:
            g = _wrap(grads[x])
            x.grad = g if x.grad is None else x.grad + g
    finally:
        _state.reset(token)
    pool.trim()  # the buffers this backward did not reuse (see tapegrad._pool)
