"""Mesh, logical-axis rules and sharded init for data / FSDP / tensor parallelism (MaxText style).

Every parameter carries logical axis names (`nn.with_logical_partitioning`: "vocab", "embed",
"heads", "kv", "mlp", "norm", and "layers" under `scan_layers`) and activations carry
`nn.with_logical_constraint` ("batch", "length", ...). `DEFAULT_RULES` maps those names onto a
("data", "fsdp", "tensor") mesh; everything else here is plumbing around that table:

    mesh = create_mesh(MeshConfig(ici_parallelism={"data": -1, "tensor": 2}))
    params = sharded_init(model, mesh, DEFAULT_RULES, rng)            # born sharded, never gathered
    p_sh = param_shardings(model, mesh, DEFAULT_RULES)
    opt_state = sharded_optimizer_init(tx, params, opt_state_shardings(tx, p_sh))
    step = jax.jit(train_step, in_shardings=(p_sh, o_sh, batch_sharding(mesh)), out_shardings=...)
    with activation_context(mesh, DEFAULT_RULES):                      # activations follow the rules
        params, opt_state, loss = step(params, opt_state, make_global_batch(local_batch, mesh))

Multi-host: call `maybe_initialize_distributed()` before anything touches a device; every process
then runs the same program and feeds only its own slice of the batch to `make_global_batch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import numpy as np
import optax
from flax import traverse_util
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES: Tuple[str, ...] = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or axes or None). Order matters only when a logical name is listed twice
# (flax takes the first rule whose mesh axes are still free in that array).
Rules = Tuple[Tuple[str, Union[None, str, Tuple[str, ...]]], ...]
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
)


def _mesh_axes_value(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value) if len(value) != 1 else value[0]
    raise ValueError(f"mesh axes must be None, a name or a list of names, got {value!r}")


def rules_from_config(overrides: Union[None, Mapping, Sequence] = None, base: Rules = DEFAULT_RULES) -> Rules:
    """`base` with the logical axes in `overrides` remapped.

    `overrides` is a mapping or a list of (logical, mesh axes) pairs, e.g. from a config file:
    `[["embed", null], ["batch", ["data", "fsdp", "tensor"]]]`. An overridden name replaces every
    rule for that name (at its first position); new names are appended."""
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides or ())
    new = {}
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"a sharding rule is a (logical axis, mesh axes) pair, got {pair!r}")
        new[pair[0]] = _mesh_axes_value(pair[1])
    out, seen = [], set()
    for name, axes in base:
        if name in new:
            if name not in seen:
                out.append((name, new[name]))
                seen.add(name)
        else:
            out.append((name, _mesh_axes_value(axes)))
    out += [(name, axes) for name, axes in new.items() if name not in seen]
    return tuple(out)


# ---------------------------------------------------------------------------------------------- mesh

def _parallelism(value, axis_names: Tuple[str, ...], field: str) -> Tuple[int, ...]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(axis_names)
        if unknown:
            raise ValueError(f"{field}: unknown mesh axes {sorted(unknown)}; mesh axes are {axis_names}")
        value = tuple(value.get(name, 1) for name in axis_names)
    value = tuple(value)
    if len(value) != len(axis_names):
        raise ValueError(f"{field}={value} needs one entry per mesh axis {axis_names}")
    if any(not isinstance(v, (int, np.integer)) or (v < 1 and v != -1) for v in value):
        raise ValueError(f"{field}={value}: entries must be positive integers or -1")
    if sum(v == -1 for v in value) > 1:
        raise ValueError(f"{field}={value}: at most one axis may be -1 (filled with the remaining devices)")
    return tuple(int(v) for v in value)


def _fill(value: Tuple[int, ...], total: int, field: str) -> Tuple[int, ...]:
    known = math.prod(v for v in value if v != -1)
    if -1 in value:
        if total % known:
            raise ValueError(f"{field}={value}: {total} devices are not divisible by {known}")
        value = tuple(total // known if v == -1 else v for v in value)
    if math.prod(value) != total:
        raise ValueError(f"{field}={value} has product {math.prod(value)} but there are {total} devices for it")
    return value


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape as parallelism per axis: a tuple in `axis_names` order or a dict (missing axes 1).

    `ici_parallelism` is within a slice / host (fast interconnect), `dcn_parallelism` across slices
    or hosts (data-centre network); each may hold one -1, filled with the remaining devices
    (granules, for dcn). The mesh axis sizes are the products ici * dcn."""

    ici_parallelism: Any = (1, -1, 1)
    dcn_parallelism: Any = (1, 1, 1)
    axis_names: Tuple[str, ...] = MESH_AXES
    allow_split_physical_axes: bool = False

    def __post_init__(self):
        names = tuple(self.axis_names)
        if len(set(names)) != len(names):
            raise ValueError(f"axis_names={names} repeats a name")
        object.__setattr__(self, "axis_names", names)
        object.__setattr__(self, "ici_parallelism", _parallelism(self.ici_parallelism, names, "ici_parallelism"))
        object.__setattr__(self, "dcn_parallelism", _parallelism(self.dcn_parallelism, names, "dcn_parallelism"))


def _granule(device) -> int:
    return getattr(device, "slice_index", device.process_index)


def mesh_shape(mesh_config: MeshConfig, devices: Sequence) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(ici, dcn) with the -1s filled for `devices`; ValueError when they cannot cover them."""
    n = len(devices)
    dcn = mesh_config.dcn_parallelism
    if -1 in dcn:
        dcn = _fill(dcn, len({_granule(d) for d in devices}), "dcn_parallelism")
    dcn_size = math.prod(dcn)
    if n % dcn_size:
        raise ValueError(f"dcn_parallelism={dcn} (product {dcn_size}) does not divide the {n} devices")
    return _fill(mesh_config.ici_parallelism, n // dcn_size, "ici_parallelism"), dcn


def create_mesh(mesh_config: MeshConfig = MeshConfig(), devices: Optional[Sequence] = None) -> Mesh:
    """A `Mesh` with Auto axis types over `devices` (default: all devices of all processes).

    Uses mesh_utils' topology-aware placement (`create_hybrid_device_mesh` when any dcn axis > 1,
    slices or else processes as granules); where those cannot place the devices (CPU, GPU, a
    simulated dcn axis on one host) the device list is reshaped in order, dcn axes outermost."""
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = mesh_shape(mesh_config, devices)
    shape = tuple(i * d for i, d in zip(ici, dcn))
    try:
        if math.prod(dcn) > 1:
            arr = mesh_utils.create_hybrid_device_mesh(
                ici, dcn, devices, process_is_granule=not hasattr(devices[0], "slice_index"),
                allow_split_physical_axes=mesh_config.allow_split_physical_axes)
        else:
            arr = mesh_utils.create_device_mesh(ici, devices,
                                                allow_split_physical_axes=mesh_config.allow_split_physical_axes)
    except (ValueError, AssertionError, NotImplementedError, KeyError) as e:
        if devices[0].platform == "tpu":
            raise
        logger.info("mesh_utils could not place %d %s devices (%s); reshaping the device list",
                    len(devices), devices[0].platform, e)
        order = sorted(devices, key=lambda d: (_granule(d), d.id)) if math.prod(dcn) > 1 else devices
        nd = len(ici)
        arr = np.array(order, dtype=object).reshape(*dcn, *ici)
        arr = arr.transpose([a for k in range(nd) for a in (k, nd + k)]).reshape(shape)
    return Mesh(arr, mesh_config.axis_names, axis_types=(AxisType.Auto,) * len(shape))


# ------------------------------------------------------------------------------------ specs/shardings

def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)  # LogicallyPartitioned subclasses Partitioned


def logical_to_mesh_specs(boxed_tree, rules: Rules = DEFAULT_RULES):
    """Boxed params (or their `jax.eval_shape`) -> same-structure tree of mesh `PartitionSpec`s.

    `nn.LogicallyPartitioned` leaves go through `rules`; `nn.Partitioned` leaves already name mesh
    axes; plain arrays are replicated (`PartitionSpec()`)."""
    def spec(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return PartitionSpec(*nn.logical_to_mesh_axes(nn.get_partition_spec(x), rules))
        if isinstance(x, nn.Partitioned):
            return nn.get_partition_spec(x)
        return PartitionSpec()
    return jax.tree_util.tree_map(spec, boxed_tree, is_leaf=_is_box)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """`spec` with mesh axes dropped (last first) from any dim whose size they do not divide, e.g.
    BERT's vocab of 30522 on tensor=4: that dim is then replicated instead of failing to compile."""
    out = []
    for dim, entry in zip(shape, spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        fitted = axes
        while fitted and dim % math.prod(mesh.shape[a] for a in fitted):
            fitted = fitted[:-1]
        if fitted != axes:
            logger.info("dim of size %d is not divisible by mesh axes %s: sharding it over %s", dim, axes, fitted)
        out.append(entry if fitted == axes else None if not fitted else fitted[0] if len(fitted) == 1 else fitted)
    return PartitionSpec(*out)


def _init_fn(model: nn.Module, inputs: Optional[Mapping]):
    from bert_jax.modeling import dummy_inputs
    inputs = dummy_inputs(model) if inputs is None else inputs
    return lambda rng: model.init(rng, **inputs)["params"]


def abstract_boxed_params(model: nn.Module, inputs: Optional[Mapping] = None):
    """`jax.eval_shape` of init: boxed ShapeDtypeStructs, nothing materialised."""
    return jax.eval_shape(_init_fn(model, inputs), jax.random.PRNGKey(0))


def param_shardings(model: nn.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, inputs: Optional[Mapping] = None,
                    fit: bool = True):
    """Tree of `NamedSharding` with the structure of the (unboxed) params of `model`.

    With `fit` a dim that its mesh axes do not divide is replicated along them (see `fit_spec`)."""
    abstract = abstract_boxed_params(model, inputs)
    specs = logical_to_mesh_specs(abstract, rules)
    shapes = nn.meta.unbox(abstract)
    return jax.tree_util.tree_map(lambda s, x: NamedSharding(mesh, fit_spec(s, x.shape, mesh) if fit else s),
                                  specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_params(model: nn.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, inputs: Optional[Mapping] = None):
    """Unboxed ShapeDtypeStructs carrying their shardings (e.g. an orbax restore target)."""
    shapes = nn.meta.unbox(abstract_boxed_params(model, inputs))
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  shapes, param_shardings(model, mesh, rules, inputs))


def sharded_init(model: nn.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, rng: Optional[jax.Array] = None,
                 inputs: Optional[Mapping] = None, shardings=None, only: Optional[Sequence[Tuple[str, ...]]] = None):
    """Unboxed params initialised by one `jax.jit(init, out_shardings=...)`: each device computes
    only its shards (same values as `bert_jax.init_params(model, rng)`).

    `only`: param paths (tuples of names); then just those leaves, as a flat {path: array} dict (the
    rest of the init is dead code XLA drops: e.g. a fresh head around loaded encoder weights)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    shardings = param_shardings(model, mesh, rules, inputs) if shardings is None else shardings
    init = _init_fn(model, inputs)
    fn = lambda r: nn.meta.unbox(init(r))
    if only is not None:
        only = tuple(only)
        flat_shardings = traverse_util.flatten_dict(shardings)
        shardings = {path: flat_shardings[path] for path in only}
        fn = lambda r: {path: leaf for path, leaf in traverse_util.flatten_dict(nn.meta.unbox(init(r))).items()
                        if path in shardings}
    # Traced without logical rules: out_shardings alone place the params, and no activation
    # constraint of the dummy forward pass needs a mesh context.
    with nn.logical_axis_rules(()):
        return jax.jit(fn, out_shardings=shardings)(rng)


def shard_params(params, shardings):
    """Places host params (e.g. from `load_hf_checkpoint`, identical on every process) sharded."""
    return jax.device_put(params, shardings)


class _Unset:
    pass


def opt_state_shardings(tx, params_shardings, params):
    """Shardings for `tx.init(params)` (computed with `jax.eval_shape`, nothing materialised).

    Every copy of the param tree in the state (adam's mu/nu, ...) is sharded like the params, leaf
    by leaf (found with `optax.tree_map_params`). Any other leaf takes the sharding of the params of
    its shape if those all agree, else (and for scalars such as `count`) it is replicated. Shape
    alone cannot place mu/nu: a dense bias ("embed",) and a LayerNorm scale ("norm",) share a shape
    but not a spec. `params`: arrays or `jax.ShapeDtypeStruct`s (e.g. `abstract_params(...)`)."""
    leaves = jax.tree_util.tree_leaves(params_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    mesh = leaves[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    state = jax.eval_shape(tx.init, abstract)
    by_shape = {}
    for p, s in zip(jax.tree_util.tree_leaves(abstract), leaves):
        by_shape.setdefault(tuple(p.shape), set()).add(s)

    def by_shape_or_replicated(x):
        found = by_shape.get(tuple(getattr(x, "shape", ())), set())
        return next(iter(found)) if len(found) == 1 and getattr(x, "ndim", 0) else replicated
    try:  # optax knows where the param-shaped trees sit in its state
        mapped = optax.tree_utils.tree_map_params(tx, lambda _, s: s, state, params_shardings,
                                                  transform_non_params=lambda _: _Unset(),
                                                  is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
        return jax.tree_util.tree_map(lambda m, x: by_shape_or_replicated(x) if isinstance(m, _Unset) else m,
                                      mapped, state, is_leaf=lambda x: isinstance(x, (_Unset, jax.sharding.Sharding)))
    except Exception as e:  # a transform whose init cannot run on a placeholder: match shapes only
        logger.info("optax.tree_map_params failed (%s); matching optimizer state to params by shape", e)
        return jax.tree_util.tree_map(by_shape_or_replicated, state)


def sharded_optimizer_init(tx, params, shardings=None):
    """`tx.init(params)` with the state born sharded (`opt_state_shardings` of the params' shardings)."""
    if shardings is None:
        shardings = opt_state_shardings(tx, jax.tree_util.tree_map(lambda p: p.sharding, params), params)
    return jax.jit(tx.init, out_shardings=shardings)(params)


# ------------------------------------------------------------------------------------------- batches

def batch_spec(rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec of a batch-major array: dim 0 over the "batch" rule's mesh axes, rest replicated."""
    return PartitionSpec(*nn.logical_to_mesh_axes(("batch",), rules))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(rules))


def make_global_batch(local_batch, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Tree of host arrays holding THIS process's rows -> tree of global `jax.Array`s sharded on dim 0.

    Processes own contiguous row blocks in process order (the global batch is their concatenation)
    when the batch axes span processes; where they do not (e.g. pure tensor parallelism across
    hosts) every process must pass the same full batch."""
    sharding = batch_sharding(mesh, rules)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                                  local_batch)


# ------------------------------------------------------------------------------- runtime and context

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")


def maybe_initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None, local_device_ids=None, **kwargs) -> bool:
    """`jax.distributed.initialize` when a coordinator is configured, by argument or by env
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_LOCAL_DEVICE_IDS=0,1,..).

    Call it first, before any jax computation. Without a coordinator it does nothing (one process);
    a second call does nothing. Returns whether the distributed runtime is initialised."""
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if not coordinator_address:
        return False
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if local_device_ids is None and env.get("JAX_LOCAL_DEVICE_IDS"):
        local_device_ids = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids, **kwargs)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Makes the model's `nn.with_logical_constraint`s real: sets `mesh` as the current mesh and
    `rules` as flax's logical axis rules. Trace (first call) AND call the jitted step inside it:

        with activation_context(mesh, rules):
            loss = jax.jit(step, in_shardings=..., out_shardings=...)(params, batch)

    Outside it the constraints are no-ops and XLA propagates shardings from the inputs alone. (The
    classic `with mesh, nn.logical_axis_rules(rules):` no longer works: in this JAX `with mesh:` is
    deprecated and does not set the abstract mesh that flax's constraints look for; `jax.set_mesh`
    does.) Flax's rules are not part of jit's cache key: do not trace the same jitted function both
    inside and outside the context."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def describe(params, shardings=None) -> str:
    """Table of param path, shape, dtype, logical axes (boxed params), mesh spec and per-device shard
    shape. `shardings` defaults to the params' own (placed arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]
    shards = ([None] * len(leaves) if shardings is None else
              jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, (jax.sharding.Sharding,
                                                                                       PartitionSpec))))
    rows, total = [], 0
    for (path, leaf), sh in zip(leaves, shards):
        logical = "-"
        if _is_box(leaf):
            logical = str(tuple(leaf.names))
            leaf = leaf.value
        sh = getattr(leaf, "sharding", None) if sh is None else sh
        spec = sh.spec if isinstance(sh, NamedSharding) else sh if isinstance(sh, PartitionSpec) else None
        shard = tuple(sh.shard_shape(tuple(leaf.shape))) if isinstance(sh, jax.sharding.Sharding) else "-"
        total += math.prod(leaf.shape)
        rows.append((jax.tree_util.keystr(path, simple=True, separator="/"), str(tuple(leaf.shape)),
                     str(leaf.dtype), logical, "-" if spec is None else str(tuple(spec)), str(shard)))
    header = ("param", "shape", "dtype", "logical", "spec", "shard")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows]
                     + [f"{len(rows)} params, {total:,} values"])
