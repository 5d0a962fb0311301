"""The sweep's summary: the test error at the validation choice, and the sentence that scopes
the theory's predictions to the parameters they hold for."""

from __future__ import annotations

import pandas as pd

from harness.config import compose_config
from harness.sweep.report import print_summary, theory_scope, theory_scope_line


def _trials() -> pd.DataFrame:
    rows = []
    # cell (0.1, 1e-3) is best on test only; (0.01, 1e-3) is best on validation
    for lr, wd, test, val in ((0.1, 1e-3, 0.20, 0.40), (0.01, 1e-3, 0.30, 0.25),
                              (0.01, 1e-4, 0.35, 0.35)):  # fmt: skip
        rows.append(dict(study="q-adam-l2", optimizer="adam", decay="l2", model="mlp_bn",
                         lr=lr, weight_decay=wd, seed=0, state="COMPLETE", test_error=test,
                         val_error=val, diverged=False, wall_s=1.0))  # fmt: skip
    return pd.DataFrame(rows)


def test_summary_reports_test_error_at_the_validation_choice(capsys):
    print_summary(_trials(), {"q-adam-l2": 4})
    out = capsys.readouterr().out
    assert "test err at val best" in out
    assert "0.3000" in out and "0.2000" not in out and "3/4" in out


def test_theory_scope_says_what_share_of_the_decayed_parameters_it_covers():
    quick = compose_config(["experiment=quick"])
    scope = theory_scope(quick)
    assert scope["si"] == scope["decayed"] > 0 and scope["si_elements"] == scope["elements"]
    line = theory_scope_line(quick, pd.DataFrame({"si_tensors": [4.0]}))
    assert "100% of the decayed parameters" in line
    # an MLP without normalization: nothing is scale-invariant, no prediction applies
    plain = compose_config(["experiment=quick", "model=mlp", "optimizer.param_groups=all"])
    assert "do not apply" in theory_scope_line(plain, pd.DataFrame({"si_tensors": [0.0]}))
    assert theory_scope_line(quick, pd.DataFrame({"test_error": [0.1]})) == ""
