"""Shared machinery of the bad-input catalogue: base AnnDatas, snapshots and the case runners.

Every case starts from a copy of one of a few small base AnnDatas (built once per test
process), optionally spoils it (``setup``), takes a :func:`snapshot`, calls one public
function and checks either

- a refusal (:func:`run_refusal`): the exception type, a regex on the message naming the
  problem, and :func:`assert_adata_unchanged` (every array byte for byte, every
  DataFrame, names, dtypes, ``uns``); or
- an accepted odd input (:func:`assert_same_as_canonical`): the results equal those on
  the canonical matrix and the user's own arrays are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import normalisr_sc as nsc

# --------------------------------------------------------------------------- base data

N_CELLS, N_GENES = 150, 50
USER_LAYER = "counts"


def _with_user_data(adata: AnnData) -> AnnData:
    """Add a user's own annotations in every container, so that a change would show."""
    rng = np.random.default_rng(7)
    adata.layers[USER_LAYER] = adata.X.copy()
    adata.obs["dose"] = np.linspace(0.0, 1.0, adata.n_obs)
    adata.obs["donor"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2 == 0, "d1", "d2"))
    adata.var["symbol"] = [f"SYM{j}" for j in range(adata.n_vars)]
    adata.obsm["pos"] = rng.normal(size=(adata.n_obs, 2))
    adata.varm["load"] = rng.normal(size=(adata.n_vars, 3))
    adata.varp["adj"] = sparse.random(
        adata.n_vars, adata.n_vars, density=0.1, random_state=1, format="csr"
    )
    adata.obsp["knn"] = sparse.random(
        adata.n_obs, adata.n_obs, density=0.02, random_state=2, format="csr"
    )
    adata.uns["note"] = {"a": 1, "b": np.arange(3), "c": "text"}
    return adata


@cache
def _build(name: str) -> AnnData:
    if name == "counts":
        adata = nsc.datasets.simulate(N_CELLS, N_GENES, n_targets=2, seed=3)
        return _with_user_data(adata)
    if name == "lcpm":
        adata = _build("counts").copy()
        nsc.pp.lcpm(adata)
        return adata
    if name == "covariates":
        adata = _build("lcpm").copy()
        nsc.pp.normcov(adata, ["batch"])
        return adata
    if name == "weighted":
        adata = _build("covariates").copy()
        nsc.pp.compute_var(adata)
        return adata
    if name == "normalised":
        adata = _build("counts").copy()
        nsc.pp.normalize(adata, covariates=["batch"], qc=None)
        return adata
    if name == "analysed":
        adata = _build("normalised").copy()
        nsc.tl.de(adata, "group")
        nsc.tl.coex(adata)
        nsc.tl.binnet(adata)
        nsc.tl.assign_guides(adata, groups="grna_group")
        return adata
    msg = f"unknown base {name!r}"
    raise KeyError(msg)


def base(name: str) -> AnnData:
    """A fresh copy of the base AnnData ``name``.

    ``'counts'`` (simulated CSR int32 counts, 150 x 50, with user annotations in every
    container), ``'lcpm'``, ``'covariates'`` (normcov on ``batch``), ``'weighted'``
    (compute_var), ``'normalised'`` (the recipe without QC) and ``'analysed'`` (plus
    ``tl.de('group')``, ``tl.coex``, ``tl.binnet`` and ``tl.assign_guides``).
    """
    return _build(name).copy()


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class _Array:
    """Exact state of an array-like: its kind, metadata and a copy of every buffer."""

    kind: str
    meta: tuple
    buffers: tuple[np.ndarray, ...]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Array)
            and self.kind == other.kind
            and self.meta == other.meta
            and len(self.buffers) == len(other.buffers)
            and all(
                a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                for a, b in zip(self.buffers, other.buffers, strict=True)
            )
        )

    def __hash__(self) -> int:  # pragma: no cover - not used as a key
        return hash((self.kind, self.meta))

    def dense(self) -> np.ndarray:
        """The values as a dense array (duplicates summed), for comparing results."""
        kind = self.kind.removeprefix("dask/")
        if kind == "ndarray":
            return self.buffers[0]
        if kind == "sparse":
            fmt, shape = self.meta[1], self.meta[3]
            if fmt == "coo":
                data, row, col = self.buffers
                return sparse.coo_matrix((data, (row, col)), shape=shape).toarray()
            data, indices, indptr = self.buffers
            cls = sparse.csr_matrix if fmt == "csr" else sparse.csc_matrix
            return cls((data, indices, indptr), shape=shape).toarray()
        return self.buffers[0]


def _plain_array(values: np.ndarray) -> np.ndarray:
    """A copy whose bytes identify the values (object arrays as their reprs)."""
    values = np.asarray(values)
    if values.dtype.kind == "O":
        return np.array([repr(v) for v in values.ravel()], dtype=str).reshape(values.shape)
    return np.array(values, copy=True)


def array_state(value: Any) -> _Array:
    """Exact state of a dense, sparse or dask array (dask arrays are computed)."""
    if hasattr(value, "compute") and hasattr(value, "chunks"):
        inner = array_state(value.compute())
        return _Array("dask/" + inner.kind, inner.meta, inner.buffers)
    if sparse.issparse(value):
        meta = (type(value).__name__, value.format, str(value.dtype), tuple(value.shape))
        if value.format == "coo":
            names = ("data", "row", "col")
        elif value.format in ("csr", "csc", "bsr"):
            names = ("data", "indices", "indptr")
        else:
            return _Array("sparse", meta, (_plain_array(value.toarray()),))
        return _Array("sparse", meta, tuple(np.array(getattr(value, n), copy=True) for n in names))
    values = np.asarray(value)
    meta = (type(value).__name__, str(values.dtype), values.shape)
    return _Array("ndarray", meta, (_plain_array(values),))


def _index_state(index: pd.Index) -> tuple:
    return (
        "index",
        type(index).__name__,
        str(index.dtype),
        index.name,
        _Array("ndarray", (), (_plain_array(index.to_numpy()),)),
    )


def _series_state(series: pd.Series) -> tuple:
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return (
            "categorical",
            bool(dtype.ordered),
            _index_state(dtype.categories),
            array_state(series.cat.codes.to_numpy()),
        )
    return ("series", str(dtype), array_state(series.to_numpy()))


def _frame_into(flat: dict, path: tuple, frame: pd.DataFrame) -> None:
    flat[(*path, "<index>")] = _index_state(frame.index)
    flat[(*path, "<columns>")] = _index_state(frame.columns)
    for position, (_, column) in enumerate(frame.items()):
        flat[(*path, f"<col {position}>")] = _series_state(column)


def _value_into(flat: dict, path: tuple, value: Any) -> None:
    if isinstance(value, Mapping):
        flat[(*path, "<keys>")] = ("keys", type(value).__name__, tuple(map(repr, value)))
        for key in value:
            _value_into(flat, (*path, key), value[key])
    elif isinstance(value, pd.DataFrame):
        _frame_into(flat, path, value)
    elif isinstance(value, pd.Series):
        flat[(*path, "<index>")] = _index_state(value.index)
        flat[path] = _series_state(value)
    elif isinstance(value, pd.Index):
        flat[path] = _index_state(value)
    elif isinstance(value, list | tuple):
        flat[(*path, "<len>")] = (type(value).__name__, len(value))
        for position, item in enumerate(value):
            _value_into(flat, (*path, position), item)
    elif isinstance(value, np.ndarray) or sparse.issparse(value) or hasattr(value, "chunks"):
        flat[path] = array_state(value)
    else:
        flat[path] = ("scalar", type(value).__name__, repr(value))


def _file_digest(path: Path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def snapshot(adata: AnnData) -> dict[tuple, Any]:
    """Everything a user could read from ``adata``, flattened to path -> exact state.

    X (dense buffers, or sparse ``data``/``indices``/``indptr`` bytes and dtypes; the
    file's digest when backed), layers, obs, var (every column with its dtype and
    categories), names, obsm, varm, obsp, varp and ``uns`` (recursively).
    """
    flat: dict[tuple, Any] = {
        ("shape",): adata.shape,
        ("is_view",): adata.is_view,
        ("isbacked",): adata.isbacked,
        ("obs_names",): _index_state(adata.obs_names),
        ("var_names",): _index_state(adata.var_names),
    }
    if adata.isbacked:
        flat[("X", "<file>")] = (str(adata.filename), _file_digest(adata.filename))
    elif adata.X is None:
        flat[("X",)] = None
    else:
        flat[("X",)] = array_state(adata.X)
    for name in ("layers", "obsm", "varm", "obsp", "varp"):
        mapping = getattr(adata, name)
        flat[(name, "<keys>")] = ("keys", tuple(sorted(mapping)))
        for key in mapping:
            _value_into(flat, (name, key), mapping[key])
    _frame_into(flat, ("obs",), adata.obs)
    _frame_into(flat, ("var",), adata.var)
    _value_into(flat, ("uns",), dict(adata.uns))
    return flat


def _describe(path: tuple) -> str:
    return "adata." + ".".join(map(str, path))


def assert_adata_unchanged(before: dict[tuple, Any], after: AnnData | dict[tuple, Any]) -> None:
    """``after`` (an AnnData or its snapshot) is exactly the :func:`snapshot` ``before``."""
    now = after if isinstance(after, dict) else snapshot(after)
    added = sorted(map(_describe, set(now) - set(before)))
    removed = sorted(map(_describe, set(before) - set(now)))
    changed = sorted(_describe(p) for p in before.keys() & now.keys() if before[p] != now[p])
    problems = [
        f"{what}: {paths[:8]}"
        for what, paths in (("added", added), ("removed", removed), ("changed", changed))
        if paths
    ]
    assert not problems, "the AnnData changed -- " + "; ".join(problems)


def assert_user_data_untouched(before: dict[tuple, Any], after: AnnData) -> None:
    """Everything in ``before`` (the user's data) is still there, byte for byte.

    New keys may have been added, and the record of normalisr_sc's own entries
    (``uns['nsc_written']``) may have changed.
    """
    now = snapshot(after)
    own = ("uns", nsc._store.WRITTEN)
    # The lists of keys and columns may grow; every old entry must stay as it was.
    paths = [
        p
        for p in before
        if p[:2] != own
        and p[1:] != ("<keys>",)
        and not (p[0] in ("obs", "var") and p[1] == "<columns>")
    ]
    lost = sorted(_describe(p) for p in paths if p not in now)
    changed = sorted(_describe(p) for p in paths if p in now and now[p] != before[p])
    # Column positions may shift only by appending: the old columns keep their places.
    for name in ("obs", "var"):
        old_cols = before[(name, "<columns>")][4].buffers[0]
        new_cols = now[(name, "<columns>")][4].buffers[0]
        assert list(new_cols[: old_cols.size]) == list(old_cols), f"adata.{name} columns"
    assert not lost, f"user data lost: {lost[:8]}"
    assert not changed, f"user data changed: {changed[:8]}"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One refused input: ``call(adata)`` raises ``exc`` whose message matches ``match``.

    ``base`` names the starting AnnData (see :func:`base`); ``setup`` spoils a copy of
    it first (and may return a replacement AnnData, e.g. a view or a backed object).
    """

    id: str
    base: str
    call: Callable[[AnnData], Any]
    match: str
    setup: Callable[[AnnData], AnnData | None] | None = None
    exc: type[BaseException] = ValueError


#: Wrong values of each kind of parameter: (value, what it is).
NOT_INT = ["500", True, 2.5, np.nan, np.inf, [1]]
NOT_COUNT = ["500", True, np.nan, np.inf, [1], -1]  # a bound of 2.5 counts is meaningful
NOT_FRACTION = ["0.1", True, np.nan, np.inf, -0.1, 1.5]
NOT_BOOL = ["yes", None, 2]
NOT_KEY = [1, "", None, ["a"]]
NOT_CHUNK_SIZE = ["100", True, 2.5, 0, -5]
NOT_CHUNKED = ["yes", 2]
NOT_LAYER = [5, ["counts"]]


def _id(value) -> str:
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return repr(value).replace(" ", "")


def param_cases(
    name: str,
    function,
    base_name: str,
    bad: dict[str, list],
    *,
    fixed: dict | None = None,
    match: dict[str, str] | None = None,
) -> list[Case]:
    """One case per (parameter, wrong value); the message must name the parameter."""
    fixed = fixed or {}
    match = match or {}
    cases = []
    for param, values in bad.items():
        for value in values:

            def call(adata, param=param, value=value):
                return function(adata, **{**fixed, param: value})

            cases.append(
                Case(
                    f"{name}-{param}={_id(value)}",
                    base_name,
                    call,
                    match.get(param, rf"\b{param}\b"),
                )
            )
    return cases


def case_params(cases: list[Case]) -> list:
    """``pytest.param`` per case, with its id; ids must be unique.

    Of the wrong values of one parameter (ids ``step-parameter=value``), the first is a
    quick test and the others are marked slow: ``-m "not slow"`` still tries every
    parameter of every step once, the full run tries every value.
    """
    ids = [c.id for c in cases]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"case ids used twice: {repeated}"
    # The parameter of a wrong-value case, the id of any other (each of those is new).
    families = [c.id.partition("=")[0] if "=" in c.id else c.id for c in cases]
    return quick_first([(c,) for c in cases], ids, [(f,) for f in families])


def quick_first(rows: list[tuple], ids: list[str], keys: list[tuple]) -> list:
    """``pytest.param`` per row of values: quick if its key holds a new value, else slow.

    ``keys[i]`` describes ``rows[i]`` (e.g. ``(step, storage)``); a value is new when no
    earlier key held it at that place, so ``-m "not slow"`` tries each value once and the
    full run tries every row.
    """
    met: dict[tuple[int, Any], None] = {}
    params = []
    for row, row_id, key in zip(rows, ids, keys, strict=True):
        places = set(enumerate(key))
        marks = [] if places - met.keys() else [pytest.mark.slow]
        met.update(dict.fromkeys(places))
        params.append(pytest.param(*row, id=row_id, marks=marks))
    return params


def prepare(case: Case) -> AnnData:
    adata = base(case.base)
    if case.setup is not None:
        replaced = case.setup(adata)
        if replaced is not None:
            adata = replaced
    return adata


def run_refusal(case: Case) -> None:
    """Run ``case``: the right exception, a message naming the problem, nothing changed."""
    adata = prepare(case)
    before = snapshot(adata)
    with pytest.raises(case.exc) as caught:
        case.call(adata)
    message = str(caught.value)
    assert re.search(case.match, message), (
        f"{type(caught.value).__name__} message does not name the problem "
        f"(regex {case.match!r}): {message!r}"
    )
    assert_adata_unchanged(before, adata)


def _results(flat: dict[tuple, Any], user: dict[tuple, Any]) -> dict[tuple, Any]:
    """The entries of ``flat`` that are not the user's data ``user`` nor fingerprints."""
    own = ("uns", nsc._store.WRITTEN)
    return {p: v for p, v in flat.items() if p not in user and p[: len(own)] != own and p[0] != "X"}


def _assert_close(path: str, odd: Any, canonical: Any) -> None:
    if isinstance(canonical, _Array):
        assert isinstance(odd, _Array), path
        a, b = odd.dense(), canonical.dense()
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} vs {b.shape}"
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=path)
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(canonical, tuple) and canonical and canonical[0] in ("series", "categorical"):
        assert odd[:-1] == canonical[:-1], path
        _assert_close(path, odd[-1], canonical[-1])
    elif (
        isinstance(canonical, tuple)
        and len(canonical) == 3
        and canonical[0] == "scalar"
        and canonical[1] == "float"
        and isinstance(odd, tuple)
        and odd[1] == "float"
    ):
        np.testing.assert_allclose(float(odd[2]), float(canonical[2]), rtol=1e-9, err_msg=path)
    else:
        assert odd == canonical, f"{path}: {odd!r} != {canonical!r}"


def assert_same_as_canonical(
    function: Callable[[AnnData], Any],
    odd: AnnData,
    canonical: AnnData,
    *,
    subsets: bool = False,
) -> None:
    """``function`` gives on ``odd`` what it gives on ``canonical`` and leaves odd's data alone.

    ``odd`` and ``canonical`` differ only in how X (or a layer) is stored. The arrays the
    user handed in (X and every layer) are byte-identical after the call. Results -- new
    keys and the return value -- are compared as dense values (1e-9 relative: sparse and
    dense sums may differ in the last bits). ``subsets``: the step subsets the AnnData in
    place, so everything (X included, as values) is compared with the canonical run.
    """
    handed_in = {f"layers[{k!r}]": v for k, v in odd.layers.items()}
    if not odd.isbacked:
        handed_in["X"] = odd.X
    handed_state = {k: array_state(v) for k, v in handed_in.items()}
    user_odd, user_canonical = snapshot(odd), snapshot(canonical)
    returned_odd = function(odd)
    returned_canonical = function(canonical)
    written_into = [k for k, v in handed_in.items() if array_state(v) != handed_state[k]]
    assert not written_into, f"the user's arrays were written into: {written_into}"
    if subsets:
        user_odd, user_canonical = {}, {}
        after_odd, after_canonical = snapshot(odd), snapshot(canonical)
        np.testing.assert_array_equal(
            after_odd.pop(("X",)).dense(), after_canonical.pop(("X",)).dense()
        )
    else:
        assert_user_data_untouched(user_odd, odd)
        after_odd, after_canonical = snapshot(odd), snapshot(canonical)
    results_odd = _results(after_odd, user_odd)
    results_canonical = _results(after_canonical, user_canonical)
    assert set(results_odd) == set(results_canonical), sorted(
        map(_describe, set(results_odd) ^ set(results_canonical))
    )
    for path in results_canonical:
        _assert_close(_describe(path), results_odd[path], results_canonical[path])
    flat_odd, flat_canonical = {}, {}
    _value_into(flat_odd, ("returned",), returned_odd)
    _value_into(flat_canonical, ("returned",), returned_canonical)
    assert set(flat_odd) == set(flat_canonical)
    for path in flat_canonical:
        _assert_close(_describe(path), flat_odd[path], flat_canonical[path])


# --------------------------------------------------------------------------- spoilers


def set_x(matrix_of: Callable[[AnnData], Any]) -> Callable[[AnnData], None]:
    """A setup replacing X (and the user's counts layer) by ``matrix_of(adata)``."""

    def setup(adata: AnnData) -> None:
        adata.X = matrix_of(adata)

    return setup


def spoil_x(value: complex | float, dtype: Any = np.float64, *, fmt: str = "csr"):
    """X as ``dtype`` with entry (3, 4) set to ``value``, in CSR or dense."""

    def matrix_of(adata: AnnData):
        dense = adata.X.toarray().astype(dtype)
        dense[3, 4] = value
        return sparse.csr_matrix(dense) if fmt == "csr" else dense

    return set_x(matrix_of)


def spoil_layer(key: str, value: float = np.nan, *, where: tuple[int, int] = (2, 3)):
    def setup(adata: AnnData) -> None:
        layer = adata.layers[key]
        layer = np.array(
            layer.toarray() if sparse.issparse(layer) else layer, dtype=np.float64, copy=True
        )
        layer[where] = value
        adata.layers[key] = layer

    return setup


def spoil_obsm(key: str, value: float = np.nan, *, where: tuple[int, int] = (2, 0)):
    def setup(adata: AnnData) -> None:
        table = adata.obsm[key]
        if isinstance(table, pd.DataFrame):
            table = table.copy()
            table.iloc[where] = value
        else:
            table = np.array(table, dtype=np.float64, copy=True)
            table[where] = value
        adata.obsm[key] = table

    return setup


def spoil_column(container: str, key: str, value: float = np.nan, position: int = 2):
    def setup(adata: AnnData) -> None:
        frame = getattr(adata, container)
        column = frame[key].to_numpy(dtype=np.float64, copy=True)
        column[position] = value
        frame[key] = column

    return setup


def delete(container: str, key: str):
    def setup(adata: AnnData) -> None:
        target = getattr(adata, container)
        del target[key]

    return setup


def duplicate_var_names(adata: AnnData) -> None:
    """Give genes 0 and 1 the same name (as after reading gene symbols)."""
    names = adata.var_names.to_numpy().copy()
    names[1] = names[0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.var_names = names


def csr_with_duplicates(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """The same values with every entry of value >= 2 stored as two entries (1 and k-1)."""
    matrix = sparse.csr_matrix(matrix)
    matrix.sum_duplicates()
    coo = matrix.tocoo()
    split = coo.data >= 2
    rows = np.concatenate([coo.row, coo.row[split]])
    cols = np.concatenate([coo.col, coo.col[split]])
    data = np.concatenate(
        [np.where(split, coo.data - 1, coo.data), np.ones(split.sum(), coo.data.dtype)]
    )
    order = np.lexsort((cols, rows))
    rows, cols, data = rows[order], cols[order], data[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=matrix.shape[0]))])
    odd = sparse.csr_matrix((data, cols, indptr), shape=matrix.shape)
    assert not odd.has_canonical_format
    return odd


def csr_unsorted(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """The same values with the column indices of every row reversed."""
    matrix = sparse.csr_matrix(matrix, copy=True)
    matrix.sort_indices()
    data, indices = matrix.data.copy(), matrix.indices.copy()
    for i in range(matrix.shape[0]):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        data[lo:hi] = data[lo:hi][::-1]
        indices[lo:hi] = indices[lo:hi][::-1]
    odd = sparse.csr_matrix((data, indices, matrix.indptr.copy()), shape=matrix.shape)
    odd.has_sorted_indices = False
    return odd


def csr_explicit_zeros(matrix: sparse.csr_matrix, every: int = 7) -> sparse.csr_matrix:
    """The same values with stored zeros at every ``every``-th absent position."""
    dense = sparse.csr_matrix(matrix).toarray()
    rows, cols = np.nonzero(dense == 0)
    rows, cols = rows[::every], cols[::every]
    mask = dense != 0
    mask[rows, cols] = True
    r, c = np.nonzero(mask)
    odd = sparse.csr_matrix((dense[r, c], (r, c)), shape=dense.shape)
    assert (odd.data == 0).any()
    return odd


# --------------------------------------------------------------------------- GO files

_OBO = """format-version: 1.2
ontology: go

[Term]
id: GO:0000001
name: root process
namespace: biological_process

[Term]
id: GO:0000002
name: module programme
namespace: biological_process
is_a: GO:0000001 ! root process

[Term]
id: GO:0000003
name: other programme
namespace: biological_process
is_a: GO:0000001 ! root process
"""


@cache
def go_files() -> tuple[Path, Path, Path]:
    """A tiny ontology, a GAF annotating the base's genes, and a truncated ``.obo.gz``.

    Written once per test process into a temporary folder.
    """
    import gzip
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="nsc_bad_input_"))
    obo = folder / "tiny.obo"
    obo.write_text(_OBO)
    names = [f"gene{j:05d}" for j in range(N_GENES)]
    lines = ["!gaf-version: 2.2"]
    for j, name in enumerate(names):
        term = "GO:0000002" if j < 20 else "GO:0000003"
        lines.append(
            "\t".join(
                [
                    "NCBIGene",
                    str(1000 + j),
                    name,
                    "involved_in",
                    term,
                    "PMID:1",
                    "IDA",
                    "",
                    "P",
                    "",
                    "",
                    "protein",
                    "taxon:9606",
                    "20220101",
                    "test",
                    "",
                    "",
                ]
            )
        )
    gaf = folder / "tiny.gaf.gz"
    with gzip.open(gaf, "wt") as stream:
        stream.write("\n".join(lines) + "\n")
    whole = gzip.compress((_OBO * 40).encode())
    truncated = folder / "truncated.obo.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    return obo, gaf, truncated
