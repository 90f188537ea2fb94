"""The leaderboard: markdown + static page from version folders, submissions and the
published numbers; rendered in headless Chromium without console errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from harness_runs import make_run
from PIL import Image

from bench.browser import BrowserMissingError, render_page
from bench.leaderboard import LeaderboardError, build_leaderboard, load_published, load_submissions
from bench.sweep import run_sweep

#: Optional cross-check only, not a citation: published-number notes kept outside the repository
#: (published.yaml cites the papers themselves); the test skips when the file is absent.
ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "spec" / "anchors.md"


@pytest.fixture
def results(tmp_path):
    runs = tmp_path / "runs"
    for seed, wga in enumerate([40.0, 44.0, 48.0]):
        make_run(runs, "toy", "erm", seed, wga, 90.0, 91.0)
        make_run(runs, "toy", "dfr", seed, wga + 30, 88.0, 89.0)
    # DDB artifacts: a prune table with two generated images
    prune = runs / "toy" / "ddb_artifacts" / "seed0" / "prune-abc123"
    prune.mkdir(parents=True)
    rows = []
    for i, kept in enumerate([True, False]):
        for kind, color in (("source", (0, 120, 0)), ("mask", (255, 255, 255)), ("generated", (0, 0, 200))):
            Image.new("RGB", (16, 16), color).save(prune / f"{kind}{i}.png")
        rows.append({"source_path": f"source{i}.png", "mask_path": f"mask{i}.png",
                     "generated_path": f"generated{i}.png", "kept": kept, "p": 0.4, "rho": 0.6 - 0.5 * i})
    (prune / "prune.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = tmp_path / "results"
    run_sweep("toy", ["erm", "dfr"], [0, 1, 2], runs_dir=str(runs), results_dir=str(res), run=False,
              log=lambda *a: None)
    # a newer version with only ERM (different numbers): the leaderboard shows the newest per method
    for seed in range(3):
        make_run(runs, "toy", "erm", seed, 60.0, 91.0, 92.0)
    run_sweep("toy", ["erm"], [0, 1, 2], runs_dir=str(runs), results_dir=str(res), run=False, log=lambda *a: None)
    sub = res / "submissions" / "waterbirds"
    sub.mkdir(parents=True)
    (sub / "my-model.json").write_text(json.dumps(
        {"worst_group_acc": 81.3, "avg_acc": 90.5, "adjusted_avg_acc": 91.0, "mean_group_acc": 88.0,
         "worst_class_acc": 85.0, "groups": []}))
    return res, runs


def row(*cells: str) -> re.Pattern:
    """A Markdown table row starting with ``cells`` (pandas/tabulate pads cells with spaces)."""
    return re.compile(r"^\|" + "".join(rf"\s*{re.escape(c)}\s*\|" for c in cells), re.M)


def test_leaderboard_files_and_labels(results):
    res, runs = results
    shutil.rmtree(runs)  # the leaderboard reads version folders only, never runs/
    built = build_leaderboard(res)
    md = built["markdown"].read_text()
    page = built["html"].read_text()
    assert built["datasets"][:2] == ["toy", "waterbirds"]
    toy = md.split("## toy")[1].split("## waterbirds")[0]
    assert row("ERM", "60.0 ± 0.0").search(toy)  # newest version wins
    assert row("DFR", "74.0 ± 4.0").search(toy)  # from the older version (sample std of 70/74/78)
    # group-label use, from the method classes (ERM: none in training, val for selection)
    assert row("ERM", "60.0 ± 0.0", "91.0 ± 0.0", "92.0 ± 0.0", "3", "no/yes").search(toy)
    assert "group labels train/val" in toy
    # the toy section (only it) says what its numbers show and what they do not (issue 18 item 10)
    assert "What the toy numbers show" in toy and "What they do not" in toy
    assert "What the toy numbers show" in page.split('id="toy"')[1].split('id="waterbirds"')[0]
    wb = md.split("## waterbirds")[1].split("## celeba")[0]
    assert "What the toy numbers show" not in wb
    assert "Published (copied from the papers, not reproduced here)" in wb
    assert row("DDB", "93.0 ± 0.1", "93.6").search(wb)
    assert row("my-model", "81.3", "90.5", "91.0").search(wb)
    assert "Izmailov et al. 2022" in wb and "about 97.0" in wb
    # every link of the markdown and the page resolves to a file
    for href in re.findall(r"\]\(([^)]+)\)", md):
        assert (built["markdown"].parent / href).is_file(), href
    for href in re.findall(r'(?:href|src)="([^"]+)"', page):
        assert (built["html"].parent / href).is_file(), href
    assert 'class="tag published"' in page and "<script" not in page
    with Image.open(built["images"]["wga"]) as im:
        assert im.size[0] > 400
    assert "ddb_toy" in built["images"] and "DDB examples" in md
    # the grid came from the version folder the sweep wrote it into
    assert sorted(p.parent.name for p in (res / "toy").glob("*/ddb_examples.png")) == sorted(
        p.name for p in (res / "toy").iterdir())


def test_ablations_are_listed_but_never_ranked(results):
    from bench.leaderboard import version_changes

    res, runs = results
    # the newest ERM version is an ablation (a --set override), filed under another folder
    for seed in range(3):
        make_run(runs, "toy", "erm", seed, 99.0, 99.0, 99.0)
    run_sweep("toy", ["erm"], [0, 1, 2], runs_dir=str(runs), results_dir=str(res), run=False,
              overrides={"erm.lr": 0.5}, log=lambda *a: None)
    newest = sorted((res / "toy").iterdir())[-1]
    assert json.loads((newest / "provenance.json").read_text())["overrides"] == {"erm.lr": 0.5}
    (res / "toyworld_ablations").mkdir()
    shutil.move(str(newest), res / "toyworld_ablations" / "lr05")
    md = build_leaderboard(res)["markdown"].read_text()
    assert "## toyworld_ablations" not in md  # filed by its provenance's dataset, not its folder
    toy = md.split("## toy")[1].split("## waterbirds")[0]
    assert row("ERM", "60.0 ± 0.0").search(toy) and "99.0" not in toy.split("### All version folders")[0]
    assert "lr05" in toy and "ablation, not ranked: erm.lr=0.5, kept in results/toyworld_ablations/" in toy
    # filed one level deeper (results/<folder>/<sub>/<version>), beside a folder of the same name
    shutil.copytree(res / "toyworld_ablations" / "lr05", res / "toyworld_ablations" / "zoo_old" / "lr05")
    md = build_leaderboard(res)["markdown"].read_text()
    toy = md.split("## toy")[1].split("## waterbirds")[0]
    assert "99.0" not in toy.split("### All version folders")[0]
    assert "[zoo_old/lr05]" in toy and "kept in results/toyworld_ablations/zoo_old/" in toy and "[lr05]" in toy
    # older folders without the field: read from the recorded command line
    assert version_changes({"command": "python -m bench.sweep --dataset toy --set a.b=1 --config x.yaml"}) == [
        "a.b=1", "--config x.yaml"]
    assert version_changes({"command": "python -m bench.sweep --dataset toy", "overrides": {}}) == []
    # the sweep records the parsed overrides (nested): shown dotted
    assert version_changes({"overrides": {"erm": {"epochs": 1, "lr": 0.5}}, "config_file": None}) == [
        "erm.epochs=1", "erm.lr=0.5"]


def test_bad_submission_names_file_and_field(tmp_path):
    d = tmp_path / "submissions" / "celeba"
    d.mkdir(parents=True)
    (d / "x.json").write_text(json.dumps({"avg_acc": 90.0}))
    with pytest.raises(LeaderboardError, match=r"x\.json: field 'worst_group_acc'"):
        load_submissions(tmp_path)


def test_published_yaml_cites_every_number_and_matches_anchors():
    entries = load_published()
    assert len(entries) >= 30
    assert all(e["cite"] and e["reference"] for e in entries)
    if not ANCHORS.is_file():
        pytest.skip(f"optional cross-check: {ANCHORS} (outside the repository) not present; published.yaml not compared")
    text = ANCHORS.read_text()
    for e in entries:
        for key in ("worst_group_acc", "avg_acc"):
            if key in e:
                v = e[key]
                shown = f"{v:.0f}" if e.get("approximate") else f"{v:.1f}"
                assert shown in text, f"{e['dataset']} {e['method']} {key}={v} not in anchors.md"


def test_page_renders_in_headless_chromium(results, tmp_path):
    res, runs = results
    built = build_leaderboard(res)
    try:
        shot = tmp_path / "screenshot.png"
        rendered = render_page(built["html"], shot)
    except BrowserMissingError as e:
        pytest.skip(f"headless Chromium unavailable: {e}")
    assert rendered["console_errors"] == []
    assert rendered["title"] == "spuraug leaderboard"
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 1000  # the whole page, not just the first screen


def test_render_page_reports_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><head><title>bad</title></head><body><img src='missing.png'>"
                    "<script>console.error('deliberate')</script></body></html>")
    try:
        rendered = render_page(page)
    except BrowserMissingError as e:
        pytest.skip(f"headless Chromium unavailable: {e}")
    errors = " ".join(rendered["console_errors"])
    assert "deliberate" in errors and "missing.png" in errors


@pytest.mark.slow
def test_ddb_artifacts_of_the_real_pipeline_feed_grid_and_throughput(tmp_path):
    """DDB end to end on tiny models (as tests/test_ddb_pipeline.py): the leaderboard's grid
    and the sweep's throughput table read what the pipeline really writes (~25 s)."""
    import tiny_models as tiny
    import torch
    import yaml

    from bench.ddb_examples import ddb_grid, find_examples
    from bench.sweep import ddb_generation_throughput
    from spuraug.runs import run_method

    sd = tiny.save_stable_diffusion(tmp_path / "sd9", in_channels=9, image_size=16)
    cs = tiny.save_clipseg(tmp_path / "clipseg")
    cfg = {
        "dataset_options": {"n_train": 200, "n_val": 80, "n_test": 80},
        "model": {"name": "toy_cnn", "width": 8, "pretrained": False},
        "eval": {"batch_size": 256, "every": 1}, "loader": {"num_workers": 0},
        "erm": {"optimizer": "sgd", "lr": 0.05, "batch_size": 64, "epochs": 1},
        "ddb": {
            "invert": {"model": str(sd), "resolution": 16, "max_train_steps": 2, "n_images": 3,
                       "initializer_token": "digit", "noun": "digit"},
            "sources": {"k": [3, 2]},
            "segment": {"backend": "clipseg", "clipseg": str(cs), "clipseg_threshold": 0.0, "prompt": "digit"},
            "inpaint": {"model": str(sd), "resolution": 16, "num_inference_steps": 2, "batch_size": 2,
                        "prompt": "a photo of a {token} digit"},
            "prune": {"n_steps": 4, "threshold": 0.08},
            "retrain": {"epochs": 1, "lr": 1.0e-3, "batch_size": 32},
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_method("toy", "ddb", 0, runs_dir=tmp_path / "runs", config_file=tmp_path / "tiny.yaml",
                            device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    examples = find_examples(tmp_path / "runs", "toy")
    assert len(examples) == result["ddb"]["stages"]["inpaint"]["counts"]["generated"] == 5
    assert sum(e["kept"] for e in examples) == result["ddb"]["n_generated_kept"]
    assert all(e["source"] and e["mask"] and e["generated"] for e in examples)
    png = ddb_grid(tmp_path / "runs", "toy", tmp_path / "grid.png")
    with Image.open(png) as im:
        assert im.size[1] > 5 * 150  # one row per example
    stages = {r["stage"]: r for r in ddb_generation_throughput(tmp_path / "runs", "toy")}
    assert {"inpaint", "prune"} <= set(stages)
    assert stages["inpaint"]["images"] == 5 and stages["inpaint"]["images_per_s"] > 0


def test_published_erm_rows_name_their_recipe_as_the_reproduced_rows_do():
    """Each published ERM number carries the ERM recipe behind it (baselines/erm.py RECIPES), and
    the leaderboard labels published and reproduced ERM rows with it."""
    from baselines.erm import RECIPES
    from bench.leaderboard import _published_table, erm_recipe

    erm = [e for e in load_published() if e["method"] == "ERM"]
    assert erm and all(e.get("recipe") in RECIPES for e in erm)
    assert {e["recipe"] for e in erm if e["source"] == "jtt_paper_erm"} == {"sagawa2020"}
    body = _published_table([e for e in erm if e["dataset"] == "waterbirds"]).rows
    assert {row[0] for row in body} == {"ERM (recipe ddb2025)", "ERM (recipe sagawa2020)"}
    assert erm_recipe("waterbirds") == "ddb2025" and erm_recipe("toy") == "custom"


def _edit_quality_curve(path: Path, overrides: dict | None = None) -> dict:
    """A curve.json with the real schema, written by the study's own functions
    (bench.studies.ddb_edit_quality.curve and bench.provenance.emit_report) from constructed
    per-seed rows: two seeds at 0% / 50% / 100% oracle edits, one seed at 25%."""
    from bench.provenance import emit_report
    from bench.studies.ddb_edit_quality import curve

    def one(comp, kept, wga, avg):
        return {"erm": {"val_worst_group_acc": 50.0, "val_avg_acc": 85.0, "test_worst_group_acc": 55.0,
                        "test_avg_acc": 86.0},
                "ddb": {"val_worst_group_acc": wga, "val_avg_acc": avg, "test_worst_group_acc": wga,
                        "test_avg_acc": avg},
                "composition_success": {"all": comp, "kept": kept, "n": 600, "n_kept": 400,
                                        "target_digit_all": comp, "by_generator": {}},
                "n_generated_kept": 400, "prune_table": "table.csv"}

    per_mix = {"0": {"0": one(0.34, 0.40, 30.0, 80.0), "1": one(0.36, 0.42, 34.0, 82.0)},
               "0.25": {"0": one(0.50, 0.55, 41.0, 84.0)},
               "0.5": {"0": one(0.64, 0.70, 50.0, 86.0), "1": one(0.66, 0.72, 54.0, 88.0)},
               "1": {"0": one(0.93, 0.94, 70.0, 90.0), "1": one(0.95, 0.96, 74.0, 92.0)}}
    report = {"command": "python -m bench.studies.ddb_edit_quality --seeds 0 1 --mixes 0 0.25 0.5 1",
              "git": {"sha": "a" * 40, "short_sha": "aaaaaaa", "dirty": False}, "seeds": [0, 1],
              "overrides": overrides or {}, "curve": curve(per_mix), "per_mix": per_mix, "wall_s": 1.0}
    return emit_report(report, path, quiet=True)


def test_edit_quality_curve_on_the_toy_section(results):
    """issue 18 item 4: the curve of DDB's worst-group accuracy against the composition success of
    its edits, drawn and tabled in the toy section from results/studies/ddb_edit_quality/curve.json."""
    res, _ = results
    curve_json = res / "studies" / "ddb_edit_quality" / "curve.json"
    # absent: the section says so and gives the command, no figure, no numbers
    stale = res / "leaderboard" / "ddb_edit_quality.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an older curve's figure")
    built = build_leaderboard(res)
    md, page = built["markdown"].read_text(), built["html"].read_text()
    toy = md.split("## toy")[1].split("## waterbirds")[0]
    assert "Not measured yet: run `python -m bench.studies.ddb_edit_quality --seeds 0 1 2 --out " \
           f"{curve_json.as_posix()}`" in toy
    assert "edit_quality" not in built["images"] and not stale.exists()
    assert "composition success, all edits" not in md and "ddb_edit_quality.png" not in page
    assert "worst-group accuracy against edit quality" not in md.split("## waterbirds")[1]

    _edit_quality_curve(curve_json)
    built = build_leaderboard(res)
    md, page = built["markdown"].read_text(), built["html"].read_text()
    toy = md.split("## toy")[1].split("## waterbirds")[0]
    assert "Not measured yet" not in md
    png = built["images"]["edit_quality"]
    assert png == res / "leaderboard" / "ddb_edit_quality.png"
    with Image.open(png) as im:
        assert im.size[0] > 400
    assert "](leaderboard/ddb_edit_quality.png)" in toy and 'src="ddb_edit_quality.png"' in page
    # mix, composition success all / kept (%), DDB worst-group, avg, seeds; sample std over seeds
    assert row("0%", "35.0 ± 1.4", "41.0 ± 1.4", "32.0 ± 2.8", "81.0 ± 1.4", "2").search(toy)
    assert row("25%", "50.0", "55.0", "41.0", "84.0", "1").search(toy)
    assert row("50%", "65.0 ± 1.4", "71.0 ± 1.4", "52.0 ± 2.8", "87.0 ± 1.4", "2").search(toy)
    assert row("100%", "94.0 ± 1.4", "95.0 ± 1.4", "72.0 ± 2.8", "91.0 ± 1.4", "2").search(toy)
    assert toy.index("| 0% ") < toy.index("| 25% ") < toy.index("| 50% ") < toy.index("| 100% ")
    assert "Measured by `python -m bench.studies.ddb_edit_quality --seeds 0 1 --mixes 0 0.25 0.5 1` " \
           "at commit aaaaaaa" in toy
    # reference lines: the study's ERM start, the toy table's best baseline (DFR, 74.0, not ERM)
    assert "Dashed: ERM start (study's ERM runs): 55.0." in toy
    assert "Dashed: best baseline: DFR 74.0 (toy table," in toy
    # the page has the same table and every link resolves (the JSON included)
    assert "<td>35.0 ± 1.4</td>" in page.split('id="toy"')[1].split('id="waterbirds"')[0]
    for href in re.findall(r"\]\(([^)]+)\)", md):
        assert (built["markdown"].parent / href).is_file(), href
    for href in re.findall(r'(?:href|src)="([^"]+)"', page):
        assert (built["html"].parent / href).is_file(), href

    # a study run with config changes: its numbers are not set beside the default toy table's
    _edit_quality_curve(curve_json, overrides={"ddb": {"retrain": {"epochs": 2}}})
    toy = build_leaderboard(res)["markdown"].read_text().split("## toy")[1].split("## waterbirds")[0]
    assert "best baseline" not in toy and "ERM start" in toy
    assert "The study ran with ddb.retrain.epochs=2" in toy


def test_edit_quality_curve_bad_file_names_the_field(results):
    res, _ = results
    curve_json = res / "studies" / "ddb_edit_quality" / "curve.json"
    curve_json.parent.mkdir(parents=True)
    curve_json.write_text(json.dumps({"command": "x", "curve": [{"oracle_mix": 0.5}]}))
    with pytest.raises(LeaderboardError, match=r"curve\.json: curve\[0\]\.composition_success_all must be"):
        build_leaderboard(res)
