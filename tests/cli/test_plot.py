"""`pacbound plot`: a valid PNG of sensible size for each method."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.plots import figure, slack_parts
from pacbound.report.validate import load_report
from tests.report._tiny import gaussian_report, make_task, quantize_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plot")
    task = make_task(root)
    return {
        "gaussian": gaussian_report(task, root / "g"),
        "quantize": quantize_report(task, root / "q"),
    }


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("kind", ["gaussian", "quantize"])
def test_plot_png(reports: dict[str, Path], kind: str, tmp_path: Path) -> None:
    out = tmp_path / f"{kind}.png"
    result = CliRunner().invoke(cli, ["plot", str(reports[kind]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    width, height = _png_size(data)
    assert 800 <= width <= 4000 and 300 <= height <= 3000
    assert len(data) > 10_000


@pytest.mark.parametrize("kind", ["gaussian", "quantize"])
def test_slack_parts_add_up_to_the_bound(reports: dict[str, Path], kind: str) -> None:
    results = load_report(reports[kind])["results"]
    parts = slack_parts(results)
    assert all(p.value >= 0 for p in parts)
    assert sum(p.value for p in parts) == pytest.approx(results["bound"], rel=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "quantize"])
def test_plot_labels_round_the_bound_up(reports: dict[str, Path], kind: str) -> None:
    # 0.12340001 printed to nearest is 0.1234 (below the bound): was so in the legend (.4g)
    # and in the slack panel's title (.4f)
    document = load_report(reports[kind])
    document["results"]["bound"] = 0.12340001
    fig = figure(document)
    search, slack = fig.axes[:2]
    legend = [t.get_text() for t in search.get_legend().get_texts()]
    assert "certified bound 0.1235" in legend
    assert slack.get_title() == "where the bound 0.1235 comes from"
    texts = [*legend, slack.get_title(), *(t.get_text() for t in slack.get_legend().get_texts())]
    assert not any("0.1234" in t for t in texts)


def test_plot_needs_png_name(reports: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["plot", str(reports["gaussian"]), "-o", str(tmp_path / "x.jpg")]
    )
    assert result.exit_code == 3 and "give a .png file name" in result.stderr


def test_plot_without_matplotlib(
    reports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = CliRunner().invoke(
        cli, ["plot", str(reports["gaussian"]), "-o", str(tmp_path / "a.png")]
    )
    assert result.exit_code == 3
    assert "pip install 'pacbound[plot]'" in result.stderr
    assert not (tmp_path / "a.png").exists()
