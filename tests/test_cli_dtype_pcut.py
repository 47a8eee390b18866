"""``normalisr-sc normalize --dtype`` and ``normalisr-sc gotop --pcut``."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc.cli import main

from .test_cli_outputs import entries


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dtype")
    nsc.datasets.simulate(n_cells=400, n_genes=80, seed=3).write_h5ad(folder / "raw.h5ad")
    return folder / "raw.h5ad"


def _normalize(raw, out, *options):
    return main(
        ["--quiet", "normalize", str(raw), "-o", str(out), "--covariates", "batch", *options]
    )


@pytest.mark.slow
def test_dtype_float32_layers(raw, tmp_path):
    assert _normalize(raw, tmp_path / "f64.h5ad") == 0
    assert _normalize(raw, tmp_path / "f32.h5ad", "--dtype", "float32") == 0
    f64 = ad.read_h5ad(tmp_path / "f64.h5ad")
    f32 = ad.read_h5ad(tmp_path / "f32.h5ad")
    for layer in ("lcpm", "normalisr"):
        assert f64.layers[layer].dtype == np.float64
        assert f32.layers[layer].dtype == np.float32
        np.testing.assert_allclose(f32.layers[layer], f64.layers[layer], rtol=1e-6, atol=1e-6)
    assert f32.uns["normalisr"]["params"]["dtype"] == "float32"
    assert f64.uns["normalisr"]["params"]["dtype"] == "float64"
    assert (tmp_path / "f32.h5ad").stat().st_size < 0.8 * (tmp_path / "f64.h5ad").stat().st_size


def test_dtype_refused_values(raw, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _normalize(raw, tmp_path / "x.h5ad", "--dtype", "float16")
    assert stop.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err
    assert entries(tmp_path) == set()


def _network(tmp_path):
    from .tl.test_go_covariates import N_GENES, OBO, _annotation_lines, _gaf_line

    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.normal(size=(30, N_GENES)))
    adata.var_names = [f"G{i}" for i in range(N_GENES)]
    net = np.zeros((N_GENES, N_GENES), dtype=bool)
    net[:10, :10] = True
    np.fill_diagonal(net, False)
    adata.varp["nsc_coex_net"] = sparse.csr_matrix(net)
    adata.write_h5ad(tmp_path / "net.h5ad")
    (tmp_path / "go.obo").write_text(OBO)
    with gzip.open(tmp_path / "anno.gaf.gz", "wt") as stream:
        stream.write(
            "\n".join(["!gaf-version: 2.2", *(_gaf_line(*r) for r in _annotation_lines())])
        )


def _gotop(tmp_path, out, *options):
    return main(
        [
            "--quiet",
            "gotop",
            str(tmp_path / "net.h5ad"),
            "-o",
            str(tmp_path / out),
            "--obo",
            str(tmp_path / "go.obo"),
            "--annotations",
            str(tmp_path / "anno.gaf.gz"),
            "--n-principal",
            "10",
            *options,
        ]
    )


@pytest.mark.slow
def test_gotop_pcut(tmp_path, caplog):
    _network(tmp_path)
    assert _gotop(tmp_path, "default.h5ad") == 0
    default = ad.read_h5ad(tmp_path / "default.h5ad").uns["nsc_gotop"]
    assert default["top_term"] == "GO:0000002"
    assert default["params"]["pcut"] == 0.05
    best = default["best_pval_bonferroni"]
    assert _gotop(tmp_path, "strict.h5ad", "--pcut", f"{best / 10:g}") == 0
    strict = ad.read_h5ad(tmp_path / "strict.h5ad").uns["nsc_gotop"]
    assert "top_term" not in strict
    assert "no_top_term" in strict
    assert strict["params"]["pcut"] == pytest.approx(best / 10, rel=1e-5)
    (warning,) = [r.getMessage() for r in caplog.records if "no top term" in r.getMessage()]
    assert "--pcut" in warning  # the warning speaks of the option


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "x"])
def test_gotop_pcut_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "gotop",
                "a.h5ad",
                "-o",
                str(tmp_path / "b.h5ad"),
                "--obo",
                "o",
                "--annotations",
                "g",
                "--pcut",
                value,
            ]
        )
    assert stop.value.code == 2
    assert "--pcut" in capsys.readouterr().err
