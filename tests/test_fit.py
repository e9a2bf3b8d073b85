"""Fitting: Epoch AI's Chinchilla replication, recovery of known laws, the CLI on fabricated sweep folders."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.sweep_factory import LAW, default_shapes, law_loss, make_sweep, true_a, write_run
from sweeps.approach1 import approach1
from sweeps.approach2 import approach2, parabola_vertex
from sweeps.approach3 import approach3
from sweeps.collect import collect, load_csv, read_metrics
from sweeps.fit import run_fit
from train.io_utils import write_json as write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sweeps.fit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def isoflop_arrays(noise=0.0, seed=0, budgets=np.logspace(16, 19, 7), Ns=np.logspace(6, 9, 13)):
    """A Chinchilla-style IsoFLOP design with C = 6ND (a fixed ladder of N, not centred on the optimum)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        for N in Ns:
            D = C / (6 * N)
            rows.append((N, D, C, float(law_loss(N, D) * np.exp(noise * rng.standard_normal()))))
    return [np.array(v) for v in zip(*rows)]


# ------------------------------------------------------------------------------ Epoch replication
def test_epoch_replication(refdata, tmp_path):
    """Approach 3 on Chinchilla's data less the 5 highest losses reproduces Epoch AI's exact replication.

    Epoch: A 477.8, B 2143.9, E 1.817, alpha 0.347, beta 0.367 (objective 1.0183e-3); their bootstrap
    CI for alpha is 0.317-0.373 and their headline alpha 0.348.  Measured here: ~24 s for the 4,500-start
    grid and ~10 s for 200 replicates (one core); the bound below is on CPU time, which the other
    processes on a shared machine do not inflate the way they inflate wall time.
    """
    wall0, cpu0 = time.perf_counter(), time.process_time()
    res, path = run_fit(refdata / "chinchilla_epoch.csv", tmp_path, n_col="N_params", d_col="D_tokens",
                        c_col="C_flops", loss_col="loss", drop_highest=5, approaches=(3,), bootstrap=200)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"Epoch replication: wall {wall:.1f} s, cpu {cpu:.1f} s")
    r = res["approach3"]
    assert res["n_points"] == 240 and len(res["excluded"]) == 5
    assert all("highest losses" in e["reason"] for e in res["excluded"])
    assert r["grid_starts"] == 4500
    assert abs(r["alpha"] - 0.347) < 0.003
    assert abs(r["beta"] - 0.367) < 0.003
    assert abs(r["E"] - 1.817) < 0.005
    assert abs(r["A"] / 477.8 - 1) < 0.02
    assert abs(r["B"] / 2143.9 - 1) < 0.02
    assert abs(r["objective"] - 1.0183e-3) < 2e-7
    assert abs(r["a"] - 0.514) < 0.003 and abs(r["a"] + r["b"] - 1) < 1e-12
    lo, hi = r["ci"]["alpha"]
    assert lo <= 0.348 <= hi
    assert 0.3 < lo and hi < 0.4  # a real interval, not a degenerate one (Epoch: 0.317-0.373)
    assert r["flops_relation"]["k"] == pytest.approx(6.0)
    # Closed-form frontier against its definition: N_opt minimises L at fixed C = 6ND.
    C = 1e22
    p = next(q for q in r["predictions"] if q["C"] == C)
    Ns = p["N_opt"] * np.exp(np.linspace(-0.3, 0.3, 61))
    L = r["E"] + r["A"] / Ns ** r["alpha"] + r["B"] / (C / (6 * Ns)) ** r["beta"]
    assert np.argmin(L) == 30
    assert p["D_opt"] == pytest.approx(C / (6 * p["N_opt"]), rel=1e-9)
    on_disk = json.loads(Path(path).read_text())
    assert on_disk["approach3"]["alpha"] == pytest.approx(r["alpha"])
    assert cpu < 110, f"Epoch fit took {cpu:.0f} s of CPU"


# ------------------------------------------------------------------------------- known-law recovery
def test_approach3_recovers_synthetic_law():
    N, D, C, L = isoflop_arrays(noise=0.003, seed=1, budgets=np.logspace(17, 20, 5), Ns=np.logspace(7, 9.5, 11))
    r = approach3(N, D, L, C, bootstrap=40, grid="coarse", predict=[1e21])
    assert abs(r["alpha"] - LAW["alpha"]) < 0.03
    assert abs(r["beta"] - LAW["beta"]) < 0.03
    assert abs(r["E"] - LAW["E"]) < 0.05
    assert abs(r["a"] - true_a()) < 0.03


def test_approach3_noise_free_is_exact():
    N, D, C, L = isoflop_arrays(budgets=np.logspace(17, 20, 4), Ns=np.logspace(7, 9.5, 9))
    r = approach3(N, D, L, C, bootstrap=0, grid="coarse")
    for k in ("alpha", "beta", "E"):
        assert r[k] == pytest.approx(LAW[k], rel=2e-3)
    assert r["objective"] < 1e-9


def test_approach3_too_few_points():
    assert "skipped" in approach3([1e6, 2e6], [1e8, 2e8], [3.0, 2.9])


def test_approach2_recovers_a_noise_free():
    """A parabola fitted near each minimum (+-0.6 decades) locates the optimum of the true, asymmetric
    profile to < 0.002 in a; fitted through a whole 3-decade ladder it would be biased (a = 0.494)."""
    N, D, C, L = isoflop_arrays()
    r = approach2(N, D, C, L, bootstrap=0)
    assert r["n_budgets_used"] == 7
    assert abs(r["a"] - true_a()) < 0.002
    assert abs(r["b"] - (1 - true_a())) < 0.002  # C = 6ND: b = 1 - a
    whole = approach2(N, D, C, L, bootstrap=0, window=10)
    assert abs(whole["a"] - true_a()) > 0.02  # the bias the window removes (guards the test's power)


def test_approach2_recovers_a_with_noise():
    """0.2% loss noise: over seeds 0-5 the estimate moved by at most 0.005 from the true a (sd ~0.003);
    0.015 is three times that, and still far below the Kaplan/Chinchilla gap (0.73 vs 0.5)."""
    N, D, C, L = isoflop_arrays(noise=0.002, seed=0)
    r = approach2(N, D, C, L, bootstrap=200)
    assert abs(r["a"] - true_a()) < 0.015
    lo, hi = r["a_ci"]
    assert lo < true_a() < hi
    assert r["bootstrap"]["valid"] >= 190


def test_approach2_excludes_bad_budgets():
    N = np.array([1e6, 2e6, 4e6, 8e6] * 3 + [1e6, 2e6])
    C = np.array([1e15] * 4 + [1e16] * 4 + [1e17] * 4 + [1e18] * 2)
    D = C / (6 * N)
    L = law_loss(N, D)
    L[8:12] = [3.0, 2.9, 2.8, 2.7]  # budget 1e17: decreasing, minimum at the largest model
    L[4:8] = [3.0, 2.5, 2.6, 2.9]  # budget 1e16: interior minimum
    L[0:4] = [3.4, 3.1, 3.2, 3.5]
    r = approach2(N, D, C, L, bootstrap=0)
    by_c = {round(np.log10(b["C"])): b for b in r["budgets"]}
    assert "not interior" in by_c[17]["excluded"] and "largest" in by_c[17]["excluded"]
    assert "fewer than 3" in by_c[18]["excluded"]
    assert "excluded" not in by_c[15] and "excluded" not in by_c[16]
    assert r["n_budgets_used"] == 2 and "a" in r


def test_parabola_vertex_rejects_maximum():
    coeffs, why, _ = parabola_vertex(np.log([1e6, 2e6, 4e6]), np.array([3.0, 2.0, 3.0]) * -1 + 6)
    assert coeffs is None and ("not interior" in why or "downwards" in why)


def test_approach1_on_fabricated_curves(tmp_path):
    """The envelope winner is one of a discrete ladder (sizes 1.3-1.6x apart), so N_opt(C) is a staircase
    over ~2 decades of C; its slope lands within ~0.03 of the IsoFLOP value (0.53 under exact FLOPs for
    this toy model, 0.52 = beta/(alpha+beta) under 6N), so 0.05 is the tolerance."""
    make_sweep(tmp_path, budgets=(1e13, 3e13, 1e14, 3e14, 1e15), shapes=default_shapes(10, 48, 2), bad_runs=False)
    ds = collect(tmp_path)
    assert len(ds.curves) == len(ds) == 50
    r = approach1(ds.curves, bootstrap=50, predict=[1e18])
    assert abs(r["a"] - true_a()) < 0.05
    assert r["n_grid_used"] >= 10
    env = [e for e in r["envelope"] if e["loss"] is not None]
    # The envelope is a lower bound of every curve at every grid point.
    for e in env:
        for c in ds.curves:
            if c["C"][0] <= e["C"] <= c["C"][-1]:
                assert e["loss"] <= np.interp(np.log(e["C"]), np.log(c["C"]), c["loss"]) + 1e-12
    assert approach1([])["skipped"] == "no training curves"


# ------------------------------------------------------------------------------------ collecting
def test_collect_records_exclusions_and_curves(tmp_path):
    make_sweep(tmp_path, noise=0.002)
    ds = collect(tmp_path)
    assert len(ds) == 21 and len(ds.curves) == 21
    why = {e["name"]: e["reason"] for e in ds.excluded}
    assert "failed" in why["bad_failed"] and "CUDA out of memory" in why["bad_failed"]
    assert "diverged" in why["bad_diverged"]
    assert "skipped" in why["bad_skipped"]
    assert "malformed" in why["bad_malformed"]
    assert "no summary.json" in why["bad_killed"]
    assert len(ds.runs) == 26
    # Exact convention: C = D x exact FLOPs/token, which exceeds 6ND for these small models.
    assert np.all(ds.C > 6 * ds.N * ds.D)
    ds6 = collect(tmp_path, params="non_embedding", flops="6n")
    assert np.allclose(ds6.C, 6 * ds6.N * ds6.D) and np.all(ds6.N < ds.N)


def test_read_metrics_skips_truncated_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "val_loss": 3.0}\nnot json\n\n{"step": 2, "val_loss": 2.9}\n{"step": 3, "val_lo')
    assert [r["step"] for r in read_metrics(p)] == [1, 2]


def test_sweep_filter_keeps_chinchilla_runs(tmp_path):
    make_sweep(tmp_path, bad_runs=False)
    write_run(tmp_path, "shape_run", {"status": "completed", "name": "shape_run", "sweep": "shape",
                                      "params_total": 1e6, "tokens": 1e7, "flops_per_token": 6e6,
                                      "final_val_loss": 3.0})
    ds = collect(tmp_path)
    assert "shape_run" not in ds.names
    assert any(e["name"] == "shape_run" and "not fitted" in e["reason"] for e in ds.excluded)
    assert "shape_run" in collect(tmp_path, sweep="all").names


def test_csv_conventions(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("N,D,loss\n1e6,2e7,3.1\n2e6,1e7,3.0\n4e6,bad,3.2\n")
    ds = load_csv(p)
    assert len(ds) == 2 and ds.excluded[0]["name"] == "line4"
    assert np.allclose(ds.C, 6 * ds.N * ds.D) and "6 N D" in ds.flops_description
    q = tmp_path / "b.csv"
    q.write_text("params,flops,L\n1e6,1.2e14,3.1\n")
    ds = load_csv(q, n_col="params", c_col="flops", loss_col="L")
    assert ds.D[0] == pytest.approx(1.2e14 / 6e6)


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "fit.json"
    write_json_atomic(target, {"old": 1})
    monkeypatch.setattr(os, "fsync", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]


# -------------------------------------------------------------------------------------------- CLI
def test_cli_on_fabricated_sweep(tmp_path):
    make_sweep(tmp_path, noise=0.002)
    r = cli(tmp_path, "--bootstrap", "30", "--grid", "coarse")
    assert r.returncode == 0, r.stderr
    assert "approach" in r.stdout and "wrote" in r.stdout
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["params_convention"] == "total" and fit["flops_convention"] == "exact"
    assert "attention" in fit["flops_convention_description"]
    assert fit["n_points"] == 21 and fit["n_excluded"] == 5
    assert {e["name"] for e in fit["excluded"]} == {"bad_failed", "bad_diverged", "bad_skipped", "bad_malformed",
                                                     "bad_killed"}
    assert abs(fit["approach3"]["alpha"] - LAW["alpha"]) < 0.03
    assert abs(fit["approach3"]["beta"] - LAW["beta"]) < 0.03
    assert fit["approach2"]["n_budgets_used"] == 3 and fit["approach2"]["a_ci"]
    assert "a" in fit["approach1"]
    assert [p["C"] for p in fit["approach3"]["predictions"]] == [10.0 ** k for k in range(18, 25)]
    assert len(fit["points"]) == 21 and len(fit["runs"]) == 26
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    out = tmp_path / "other"
    r = cli(tmp_path, "--out", out, "--params", "non_embedding", "--flops", "6n", "--bootstrap", "0",
            "--grid", "coarse", "--approaches", "2,3", "--predict", "1e20")
    assert r.returncode == 0, r.stderr
    fit6 = json.loads((out / "fit.json").read_text())
    assert fit6["params_convention"] == "non_embedding" and fit6["flops_convention"] == "6n"
    assert fit6["approach3"]["flops_relation"]["k"] == pytest.approx(6.0)
    assert fit6["approach1"] == {"skipped": "not requested"}
    assert [p["C"] for p in fit6["approach3"]["predictions"]] == [1e20]


def test_cli_csv_with_column_flags(tmp_path):
    N, D, C, L = isoflop_arrays(budgets=np.logspace(17, 19, 3), Ns=np.logspace(7, 9, 9))
    p = tmp_path / "runs.csv"
    p.write_text("params,tokens,flops,final\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in zip(N, D, C, L)))
    r = cli(p, "--n-col", "params", "--d-col", "tokens", "--c-col", "flops", "--loss-col", "final",
            "--bootstrap", "20", "--grid", "coarse")
    assert r.returncode == 0, r.stderr
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["input_kind"] == "csv" and fit["n_points"] == 27
    assert fit["approach2"]["n_budgets_used"] == 3
    assert fit["approach3"]["alpha"] == pytest.approx(LAW["alpha"], abs=0.01)


@pytest.mark.parametrize("case", ["missing", "column", "few", "all_failed", "predict", "dir_empty"])
def test_cli_bad_input_exits_2(tmp_path, case):
    if case == "missing":
        args, expect = [tmp_path / "nope.csv"], "no such file"
    elif case == "column":
        (tmp_path / "x.csv").write_text("N_params,D_tokens,loss\n1,2,3\n")
        args, expect = [tmp_path / "x.csv"], "no column 'N'"
    elif case == "few":
        (tmp_path / "x.csv").write_text("N,D,loss\n1e6,2e7,3\n2e6,1e7,3.1\n")
        args, expect = [tmp_path / "x.csv"], "too few usable points"
    elif case == "all_failed":
        for i in range(4):
            write_run(tmp_path, f"r{i}", {"status": "failed", "reason": "OOM", "name": f"r{i}"})
        args, expect = [tmp_path], "4 x status failed: OOM"
    elif case == "predict":
        (tmp_path / "x.csv").write_text("N,D,loss\n1e6,2e7,3\n")
        args, expect = [tmp_path / "x.csv", "--predict", "1e20,lots"], "--predict"
    else:
        args, expect = [tmp_path], "too few usable points (0"
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("fit.json"))


def test_approach2_on_porian_settings(refdata, tmp_path):
    """Porian et al. 2024's IsoFLOP points (refdata): our parabola method lands within 0.03 of their
    Akima-interpolation exponents (0.835 reproducing Kaplan, 0.497 with every fix) and keeps the order."""
    import csv

    rows = list(csv.DictReader(open(refdata / "porian2024_isoflop_points.csv")))
    found = {}
    for key, theirs in ((("rw", "base", "long", "kaplan", "kaplan", "train"), 0.8353),
                        (("rw", "tuned", "short", "const", "standard", "val"), 0.4969)):
        sel = [r for r in rows if tuple(r[k] for k in ("dataset", "hparams", "warmup", "decay", "param_count",
                                                        "loss_split")) == key]
        N, D, C, L = (np.array([float(r[c]) for r in sel]) for c in ("N_params", "D_tokens", "C_flops", "loss"))
        r = approach2(N, D, C, L, bootstrap=0)
        assert r["n_budgets_used"] >= 10
        assert abs(r["a"] - theirs) < 0.03, (key, r["a"], theirs)
        found[key[1]] = r["a"]
    assert found["base"] - found["tuned"] > 0.3
