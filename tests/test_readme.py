"""The README a new user reads in five minutes (issue 29): short, its links and anchors alive (and
those of docs/*.md), and its performance table generated from docs/bench-last.json by
bench/report.py, so a hand edit of the figures fails here."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 350

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The markdown without fenced code blocks and code spans (where a [x](y) is no link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)       # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):        # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {target} (no heading with that anchor in {dest.name})")
    return bad


# ------------------------------------------------------------------------------------------- README

def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; at most {MAX_LINES} (move detail to docs/)"


def test_first_screen_says_what_and_how():
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:45])
    for needed in ("make demo", "make test", "phonerec run summary", "(docs/demo.md)"):
        assert needed in head, needed


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_and_anchors_exist(path):
    assert not broken_links(path)


def test_link_checker_catches_what_it_should(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Stage 1: `phonerec shards`\n\n## Top\n\n```\n# not a heading\n```\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md) [ok](a.md#stage-1-phonerec-shards) [ok](a.md#top-1) [ok](#here) ![img](a.md)\n"
        "`[code](nowhere.md)` [web](https://example.com/x) \n## Here\n"
        "[bad](missing.md) [bad](a.md#not-a-heading) [bad](#nowhere)\n")
    assert [b.split(" ")[1] for b in broken_links(tmp_path / "b.md")] == ["missing.md", "a.md#not-a-heading",
                                                                         "#nowhere"]


def test_python_api_section_names_what_exists():
    """Every name the Python API example imports exists, and each config it builds takes the
    keyword arguments shown (they are the flags' fields)."""
    import ast
    import importlib
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    imported = [(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert len(imported) >= 10

    def resolve(module: str, name: str):
        """What `from module import name` gives: an attribute, else a submodule (training.evaluation)."""
        mod = importlib.import_module(module)
        return getattr(mod, name) if hasattr(mod, name) else importlib.import_module(f"{module}.{name}")
    found = {name: resolve(module, name) for module, name in imported}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id.endswith("Config")]
    assert calls
    for call in calls:
        found[call.func.id](**{k.arg: ast.literal_eval(k.value) for k in call.keywords})


def test_sections_the_code_points_to_are_there():
    """Source files say "README: Raw layout", "README: Trust", "README: Shards at a URL"."""
    heads = anchors(README)
    for name in ("Raw layout", "Trust", "Shards at a URL", "Performance", "Failure modes", "Troubleshooting",
                 "Tests", "Options", "Data formats"):
        assert slug(name) in heads, name


# --------------------------------------------------------------------------- the generated bench table

def test_readme_table_is_the_rendering_of_the_committed_json():
    """Edit docs/bench-last.json (or run make bench) and `python -m bench.report`, never the table."""
    summary = json.loads(report.LAST.read_text())
    text = README.read_text(encoding="utf-8")
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert report.block_of(text) == report.render(summary).strip("\n")
    assert report.main(["--check"]) == 0


def test_committed_json_rows_are_complete():
    summary = json.loads(report.LAST.read_text())
    names = [r["name"] for r in summary["rows"]]
    assert len(names) == len(set(names)) and len(names) >= 10
    for r in summary["rows"]:
        assert {"name", "what", "unit", "ratio", "baseline", "better"} <= set(r), r
        assert r["ratio"] > 0 and r["better"] in ("higher", "lower")
        for key in report.SOURCE_KEYS:
            assert r.get(key, summary.get(key)), (r["name"], key)


ONE_MACHINE = {
    "cpu": "Test CPU 9000", "cpus": 2, "date": "2030-01-02 03:04", "commit": "abc1234",
    "rows": [{"name": "loader", "what": "loader, 2 workers", "unit": "frames/s", "value": 20.6e6,
              "baseline_value": 2.6e6, "ratio": 7.923, "baseline": "lazy per-file loader", "better": "higher"},
             {"name": "first_batch", "what": "first batch", "unit": "s", "value": 1.5, "baseline_value": 16.5,
              "ratio": 0.0909, "baseline": "in-memory per-file loader", "better": "lower"}]}


def test_render_one_machine():
    md = report.render(ONE_MACHINE)
    lines = md.splitlines()
    assert lines[2] == "| benchmark | unit | ours | baseline | ours ÷ baseline | better | baseline is |"
    assert "| loader, 2 workers | frames/s | 20.6 M | 2.6 M | **7.92** | higher | lazy per-file loader |" in lines
    assert "| first batch | s | 1.5 | 16.5 | **0.09** | lower | in-memory per-file loader |" in lines
    assert lines[-1] == "Measured on Test CPU 9000, 2 CPUs, 2030-01-02 03:04, commit abc1234."
    assert sum(ln.startswith("| ") for ln in lines) == 1 + len(ONE_MACHINE["rows"])


def test_render_rows_from_several_runs_say_where_each_came_from():
    s = copy.deepcopy(ONE_MACHINE)
    s["rows"][1].update(cpu="Other CPU", date="2029-12-31", commit="def5678")
    s["note"] = "A note."
    lines = report.render(s).splitlines()
    assert lines[2].endswith("| measured |")
    assert lines[4].endswith("| [1] |") and lines[5].endswith("| [2] |")
    assert lines[-3] == ("Measured on: [1] Test CPU 9000, 2 CPUs, 2030-01-02 03:04, commit abc1234; "
                         "[2] Other CPU, 2029-12-31, commit def5678.")
    assert lines[-1] == "A note."


def test_update_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.BEGIN}\nhand-edited | 99 |\n{report.END}\nafter\n")
    assert report.update_readme(ONE_MACHINE, readme)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n" + report.BEGIN + "\n") and text.endswith(report.END + "\nafter\n")
    assert report.block_of(text) == report.render(ONE_MACHINE)
    assert not report.update_readme(ONE_MACHINE, readme)            # already current: not rewritten
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]    # no temp file left behind
    assert report.main(["--json", str(_dump(tmp_path, ONE_MACHINE)), "--readme", str(readme), "--check"]) == 0
    readme.write_text(text.replace("**7.92**", "**8.00**"))
    assert report.main(["--json", str(_dump(tmp_path, ONE_MACHINE)), "--readme", str(readme), "--check"]) == 1
    (tmp_path / "no-block.md").write_text("# nothing\n")
    with pytest.raises(ValueError):
        report.update_readme(ONE_MACHINE, tmp_path / "no-block.md")


def _dump(folder: Path, obj: dict) -> Path:
    path = folder / "summary.json"
    path.write_text(json.dumps(obj))
    return path


def fake_bench_report() -> dict:
    """The parts of bench.json (python -m bench.run_all) the summary reads."""
    sys = lambda **k: {"padding_efficiency": 0.9, "loader_frames_per_s": 1e6, "loader_frames_per_s_w0": 2e6,  # noqa
                       "loader_frames_per_s_cold": 5e5, "train_frames_per_s": 5000.0, "train_peak_rss_mb": 3000.0,
                       "first_batch_s": 1.0, "peak_rss_mb": 400.0, **k}
    ours, fast = {"decoder": "torch (ours)"}, {"decoder": "fast-ctc-decode"}
    return {
        "date": "2030-01-02 03:04", "machine": {"cpus": 2}, "command": "python -m bench.run_all",
        "corpus": {"utterances": 28539},
        "ours": sys(), "baseline_lazy": sys(padding_efficiency=0.6, loader_frames_per_s=1e5),
        "baseline_memory": sys(first_batch_s=10.0, peak_rss_mb=2000.0),
        "memory_scaling": [{"train_utterances": 7135, "frames": 100, "ours": 370.0},
                           {"train_utterances": 28539, "frames": 400, "ours": 420.0}],
        "remote": {"loader_frames_per_s_local": 1e7, "loader_frames_per_s_http": 7e6, "http_over_local": 0.7,
                   "loader_frames_per_s_http_cache_cold": 5e6, "http_cache_cold_over_local": 0.5,
                   "loader_frames_per_s_http_cache_warm": 1.1e7, "http_cache_warm_over_local": 1.1},
        "widths": {"rows": [{"feature_dim": 15, "shard_mb": 1000, "loader_frames_per_s": 1.5e7},
                            {"feature_dim": 28, "shard_mb": 1800, "loader_frames_per_s": 1e7}]},
        "training_step": {"config": {"before": "6ecf3af"}, "ratio_epochs_per_cpu_hour": 2.0,
                          "rows": [{"arm": "before", "cpu_s": 144.0}, {"arm": "today", "cpu_s": 72.0}]},
        "decoding": {"config": {"cpu": "Old CPU (avx2)"}, "written": "2030-01-01 00:00", "commit": "0ld0ld0",
                     "rows": [{**fast, "beam_width": 10, "threads": 1, "utt_per_s": 10.0},
                              {**ours, "beam_width": 10, "threads": 1, "utt_per_s": 75.0, "x_fast": 7.5},
                              {**ours, "beam_width": 1, "threads": 1, "utt_per_s": 500.0, "x_fast": 1.3}]},
    }


def test_summary_takes_every_ratio_out_of_a_bench_report():
    s = report.summary(fake_bench_report(), cpu="Test CPU", commit="abc1234")
    rows = {r["name"]: r for r in s["rows"]}
    assert (s["cpu"], s["cpus"], s["date"], s["commit"]) == ("Test CPU", 2, "2030-01-02 03:04", "abc1234")
    assert set(rows) == {"padding", "loader", "loader_w0", "loader_cold", "training", "training_memory",
                         "first_batch", "loader_memory", "memory_growth", "http", "http_cache_cold",
                         "http_cache_warm", "width_shard_mb", "width_loader", "train_step", "decode_peaked_w10_t1"}
    assert rows["loader"]["ratio"] == pytest.approx(10.0) and rows["padding"]["ratio"] == pytest.approx(1.5)
    assert rows["first_batch"]["ratio"] == pytest.approx(0.1) and rows["first_batch"]["better"] == "lower"
    assert rows["memory_growth"]["ratio"] == pytest.approx(420 / 370) and "4.0× the frames" in \
        rows["memory_growth"]["what"]
    assert rows["http"]["ratio"] == 0.7 and rows["width_shard_mb"]["ratio"] == pytest.approx(1.8)
    assert rows["train_step"]["ratio"] == 2.0 and rows["train_step"]["value"] == pytest.approx(50.0)
    dec = rows["decode_peaked_w10_t1"]            # reused from an earlier run: that run's CPU, date and commit
    assert (dec["ratio"], dec["cpu"], dec["date"], dec["commit"]) == (7.5, "Old CPU", "2030-01-01 00:00", "0ld0ld0")
    md = report.render(s)
    assert "**10.00**" in md and "[2] Old CPU, 2030-01-01 00:00, commit 0ld0ld0" in md


def test_summary_leaves_out_what_was_not_measured_and_merge_keeps_it():
    rep = fake_bench_report()
    for key in ("remote", "widths", "decoding"):
        rep.pop(key)
    rep["training_step"]["rows"] = rep["training_step"]["rows"][1:]          # no 'before' arm
    rep["training_step"]["ratio_epochs_per_cpu_hour"] = None
    new = report.summary(rep, cpu="New CPU", commit="new0000")
    assert {r["name"] for r in new["rows"]} == {"padding", "loader", "loader_w0", "loader_cold", "training",
                                                "training_memory", "first_batch", "loader_memory", "memory_growth"}
    old = json.loads(report.LAST.read_text())
    merged = report.merge(new, old)
    names = [r["name"] for r in merged["rows"]]
    assert names[: len(new["rows"])] == [r["name"] for r in new["rows"]] and len(names) == len(set(names))
    assert set(names) == {r["name"] for r in old["rows"]} | {r["name"] for r in new["rows"]}
    kept = {r["name"]: r for r in merged["rows"]}["http"]
    assert (kept["cpu"], kept["date"]) != ("New CPU", new["date"]) and kept["commit"]       # says where it came from
    assert "note" not in merged


def test_publish_writes_json_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BEGIN}\n{report.END}\n")
    last = tmp_path / "bench-last.json"
    merged = report.publish(report.summary(fake_bench_report(), cpu="C", commit="c0"), last, readme)
    assert json.loads(last.read_text()) == merged
    assert report.block_of(readme.read_text()) == report.render(merged)


def test_report_command_from_a_bench_json(tmp_path, capsys):
    """`python -m bench.report --from-bench bench.json`: the rows merged into --json, README rewritten."""
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\n{report.END}\n")
    bench_json, last = tmp_path / "bench.json", tmp_path / "bench-last.json"
    bench_json.write_text(json.dumps(fake_bench_report()))
    args = ["--json", str(last), "--readme", str(readme)]
    assert report.main(args + ["--from-bench", str(bench_json)]) == 0
    s = json.loads(last.read_text())
    assert len(s["rows"]) == 16 and s["date"] == "2030-01-02 03:04"
    assert report.block_of(readme.read_text()) == report.render(s)
    assert report.main(args + ["--check"]) == 0 and "matches" in capsys.readouterr().out
