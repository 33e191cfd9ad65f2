"""The HTML report: what it shows for each shape of results, that it loads nothing and runs nothing, and the
reader's one-line errors. tests/test_report_browser.py opens it in a real browser."""

import json
import re
import subprocess
import sys

import pytest
from markupsafe import escape
from typer.testing import CliRunner

from modelfusion import ConfigError
from modelfusion.cli import app
from modelfusion.report import load_results, parse_results, render_report, write_report
from modelfusion.report.figures import pareto_front
from modelfusion.report.html import verdict_text

from .results_samples import auto_results, ensemble_predictions

INJECTED = "<script>alert(1)</script>"


def _table_rows(html: str) -> list[str]:
    body = html[html.index('<table id="leaderboard">') :]
    body = body[body.index("<tbody>") : body.index("</tbody>")]
    return re.findall(r"<tr[ >].*?</tr>", body, flags=re.S)


def _external_references(html: str) -> list[str]:
    """Every href/src that points outside the page (an in-page '#id' is fine)."""
    return [ref for ref in re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', html) if not ref.startswith("#")]


def test_report_of_auto_results_shows_every_section_and_loads_nothing(tmp_path):
    results = auto_results()
    path = write_report(results, tmp_path / "report.html")
    html = path.read_text()
    assert len(_table_rows(html)) == len(results["leaderboard"])
    for title in ("Verdict", "Leaderboard", "Reliability diagram", "Accuracy against cost", "Diversity of the members"):
        assert f"<h2>{title}</h2>" in html
    for title in ("Interpolation between merged models", "Cascade", "Merge search", "Families not tried"):
        assert f"<h2>{title}</h2>" in html
    assert "<h2>Configuration</h2>" in html
    assert "Not in these results" not in html
    assert html.count("<svg") == 6
    assert results["skipped"][0]["reason"] in html and results["chosen"]["path"] in html
    assert _external_references(html) == []
    assert not re.search(r"<(script|img|image|link|iframe|object|embed)\b", html, flags=re.I)
    assert "@import" not in html and not re.search(r"url\((?!#)", html)  # only in-page clip paths
    assert 'class="chosen"' in html and 'class="best-member"' in html
    assert str(escape(verdict_text(parse_results(results)))) in html  # as the template escapes it
    assert path.stat().st_size < 1_000_000


def test_the_same_results_give_the_same_bytes(tmp_path):
    assert render_report(parse_results(auto_results())) == render_report(parse_results(auto_results()))


def test_report_of_ensemble_results_shows_members_and_output_fusions(tmp_path):
    from modelfusion.ensemble import fuse_and_evaluate

    run = fuse_and_evaluate(*ensemble_predictions(), ["mean", "weighted"])
    results = load_results(run.save(tmp_path / "run") / "results.json")
    assert results == run.results()  # written and read by the same schema: nothing lost on the way
    assert [(c.name, c.family) for c in results.leaderboard] == [
        ("a", "member"),
        ("b", "member"),
        ("c", "member"),
        ("mean", "output"),
        ("weighted", "output"),
    ]
    mean, row = results.candidate("mean"), run.report.row("mean")
    assert mean.test["accuracy"] == row.metrics["accuracy"] and list(mean.test["accuracy_ci"]) == row.ci["accuracy"]
    assert mean.p_vs_best_member == row.vs_best_member["p_value"] and mean.details["vs_best_member"]["against"]
    assert mean.val == run.choice.scores["mean"] and mean.cost.forward_passes == 3
    assert mean.details["combiner"]["class"] == "Mean" and results.candidate("a").cost.forward_passes == 1
    assert results.chosen.name == run.choice.name and results.verdict.best_member == run.report.best_member
    assert set(results.curves.reliability) == {"a", "b", "c", "mean", "weighted"}
    assert results.diversity.members == ["a", "b", "c"]
    html = write_report(results, tmp_path / "report.html").read_text()
    assert len(_table_rows(html)) == 5
    assert f"The chosen fusion, {results.chosen.name}," in html
    assert "Interpolation between merged models: no merge ran" in html


def test_a_fusion_that_kept_only_its_best_member_runs_one_member():
    import torch

    from modelfusion.ensemble import fuse_and_evaluate

    run = fuse_and_evaluate(*ensemble_predictions(), ["weighted"])
    run.combiners["weighted"].weights_ = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert run.combiners["weighted"].members_used() == ["c"]
    assert run.results().candidate("weighted").cost.forward_passes == 1


def test_results_of_an_earlier_ensemble_or_demo_say_so(tmp_path):
    (tmp_path / "results.json").write_text('{"test": {"rows": []}, "combiners": {}}')
    with pytest.raises(ConfigError, match="written by an earlier modelfusion ensemble or demo.*run the command again"):
        load_results(tmp_path / "results.json")


def test_costs_read_as_whole_numbers_with_separators_from_a_thousand_up():
    candidate = {
        "name": "m",
        "family": "member",
        "test": {"accuracy": 0.9},
        "cost": {"latency_batch_1_us": 10169.3, "parameters": 151690.0, "bytes": 999.4, "forward_passes": 1.8},
    }
    row = _table_rows(render_report(parse_results({"chosen": candidate, "leaderboard": [candidate]})))[0]
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[-4:] == ["10,169", "151,690", "999.4", "1.8"]
    candidate["cost"] = {"latency_batch_1_us": 999.96, "parameters": 1e308, "bytes": 1000, "forward_passes": 1}
    row = _table_rows(render_report(parse_results({"chosen": candidate, "leaderboard": [candidate]})))[0]
    assert re.findall(r"<td>(.*?)</td>", row)[-4:] == ["1,000", "1e+308", "1,000", "1"]  # no invented digits


def test_results_with_a_lone_surrogate_are_one_line_not_a_broken_page(tmp_path):
    (tmp_path / "r.json").write_text('{"leaderboard": [{"name": "m\\ud800", "family": "member", "test": {}}]}')
    with pytest.raises(ConfigError, match="not valid Unicode"):
        load_results(tmp_path / "r.json")


def test_a_figure_the_numbers_cannot_draw_is_listed_as_missing_and_names_stay_literal(tmp_path):
    rows = [
        {"name": f"m{k} costs $5 or $6", "family": "member", "test": {"accuracy": 0.9}, "cost": {"bytes": 1e308}}
        for k in range(2)
    ]
    reliability = {"m0 costs $5 or $6": {"confidence": [0.5, 0.9], "accuracy": [0.5, 1.0], "count": [1e308, 0]}}
    reliability["empty"] = {"confidence": [0.5], "accuracy": [0.5], "count": [0]}
    html = render_report(
        parse_results({"chosen": rows[0], "leaderboard": rows, "curves": {"reliability": reliability}})
    )
    missing = html[html.index('<ul id="missing">') :]
    assert "Accuracy against cost: cannot be drawn from these results" in missing
    assert "<h2>Reliability diagram</h2>" in html and "Shown: m0 costs $5 or $6." in html  # not the empty curve


def test_minimal_results_say_which_sections_they_lack(tmp_path):
    candidate = {"name": "m", "family": "member", "test": {"accuracy": 0.9}}
    html = write_report({"chosen": candidate, "leaderboard": [candidate]}, tmp_path / "r.html").read_text()
    assert len(_table_rows(html)) == 1
    assert "No verdict" in html
    missing = html[html.index('<ul id="missing">') :]
    for lacking in (
        "Reliability diagram",
        "Accuracy against cost",
        "Diversity",
        "Interpolation",
        "Cascade",
        "Merge search",
    ):
        assert lacking in missing
    assert "No configuration recorded" in html and "No versions recorded" in html


def test_regression_results_rank_by_rmse_lowest_first(tmp_path):
    rows = [
        {"name": name, "family": "member", "test": {"rmse": rmse, "rmse_ci": [rmse - 1, rmse + 1]}, "cost": {}}
        for name, rmse in (("worse", 9.0), ("better", 3.0))
    ]
    html = render_report(parse_results({"chosen": rows[1], "leaderboard": rows}))
    first, second = _table_rows(html)
    assert "better" in first and "3 [2, 4]" in first and "worse" in second


@pytest.mark.parametrize(
    ("p", "expected"), [(0.4, "is not significantly better than"), (0.01, "is significantly better than")]
)
def test_the_verdict_in_plain_words(p, expected):
    results = auto_results()
    by_accuracy = sorted(results["leaderboard"], key=lambda c: c["test"]["accuracy"])
    chosen, best = by_accuracy[-1]["name"], by_accuracy[0]["name"]
    results["verdict"].update(chosen=chosen, best_member=best, p_value=p)
    text = verdict_text(parse_results(results))
    assert text.startswith(f"The chosen fusion, {chosen}, {expected} the best member, {best}")
    assert f"p = {p:g}" in text


def test_a_significant_loss_is_called_worse_and_significance_follows_the_p_value():
    results = auto_results()
    by_accuracy = sorted(results["leaderboard"], key=lambda c: c["test"]["accuracy"])
    worse, better = by_accuracy[0]["name"], by_accuracy[-1]["name"]
    results["verdict"] = {"best_member": better, "chosen": worse, "p_value": 0.001}
    text = verdict_text(parse_results(results))
    assert f"is significantly worse than the best member, {better}" in text
    results["verdict"]["p_value"] = 0.2
    assert "is not significantly better than" in verdict_text(parse_results(results))


def test_names_from_the_file_are_shown_as_text_never_as_markup(tmp_path):
    results = auto_results((INJECTED, '"quoted" b&b', "<img src=x onerror=alert(2)>"))
    results["skipped"] = [{"family": INJECTED, "reason": "</li><script>alert(3)</script>"}]
    results["config"] = {INJECTED: INJECTED}
    html = write_report(results, tmp_path / "r.html").read_text()
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "b&amp;b" in html


def test_pareto_front_keeps_what_nothing_cheaper_beats():
    points = [(1, 0.90), (2, 0.95), (2, 0.93), (3, 0.94), (4, 0.97), (0.5, 0.80)]
    assert pareto_front(points, higher_is_better=True) == [5, 0, 1, 4]
    assert pareto_front([(1, 5.0), (2, 3.0), (3, 4.0)], higher_is_better=False) == [0, 1]


def test_odd_numbers_are_shown_as_dashes_and_left_out_of_plots(tmp_path):
    results = auto_results()
    results["leaderboard"][0]["test"] = {"accuracy": float("nan"), "nll": float("inf")}
    results["leaderboard"][0]["val"] = {}  # ranked on test then: validation scores are not every candidate's
    results["leaderboard"][1]["cost"] = {"parameters": None, "bytes": float("nan")}
    next(iter(results["curves"]["cascade"].values()))[3]["accuracy"] = float("nan")
    html = write_report(results, tmp_path / "r.html").read_text()
    assert len(_table_rows(html)) == len(results["leaderboard"])
    assert "–" in _table_rows(html)[-1]  # the candidate without an accuracy ranks last


def test_loading_the_report_package_imports_neither_torch_nor_matplotlib():
    code = (
        "import sys, modelfusion.report; "
        "print(sorted(m for m in ('torch', 'matplotlib', 'sklearn', 'jinja2') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "[]"


# -- the reader and the command -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"\xff\xfe not text", "not a JSON file"),
        (b'{"chosen": ', "not a JSON file"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"leaderboard": []}', "chosen"),
        (b'{"chosen": null, "leaderboard": []}', "leaderboard"),
        (b'{"chosen": null, "leaderboard": [{"name": "m"}]}', "leaderboard.0.family"),
        (b'{"test": {"rows": [{"kind": "member"}]}}', "written by an earlier modelfusion ensemble"),
        (b'{"settings": {}}', "it has no 'leaderboard'"),
    ],
)
def test_report_command_names_the_file_and_the_problem_in_one_line(tmp_path, content, problem):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_results(path)
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "results.json" in lines[0], result.output
    assert not (tmp_path / "report.html").exists()


def test_report_command_writes_beside_the_results_and_refuses_to_overwrite(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(auto_results()))
    chosen = auto_results()["chosen"]["name"]
    runner = CliRunner()
    first = runner.invoke(app, ["report", str(results)])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "report.html").stat().st_size > 0
    again = runner.invoke(app, ["report", str(results)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["report", str(results), "--overwrite"]).exit_code == 0
    wrong = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "r.pdf")])
    assert wrong.exit_code == 2 and "name it with .html" in wrong.output
    onto_input = runner.invoke(app, ["report", str(results), "--out", str(results), "--overwrite"])
    assert onto_input.exit_code == 2 and json.loads(results.read_text())["chosen"]["name"] == chosen


def test_ensemble_command_writes_the_report_with_report(tmp_path):
    val, test = ensemble_predictions()
    val.save(tmp_path / "val.safetensors")
    test.save(tmp_path / "test.safetensors")
    argv = ["ensemble", "--val-preds", str(tmp_path / "val.safetensors"), "--test-preds"]
    argv += [str(tmp_path / "test.safetensors"), "--method", "mean", "--out", str(tmp_path / "ens"), "--report"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "ens" / "report.html").read_text()
    assert len(_table_rows(html)) == 4  # three members and the mean
