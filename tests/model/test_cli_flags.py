"""evaluate's CSV mapping flags and up-front checks of its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import DataError
from model.data.datasets import bad_rows_message, load_events, parse_mapping
from stream.cli.main import main

CSV = (
    "uid,iid,behavior,time\n"
    "1,10,pv,1700000000\n2,11,buy,1700000001\nbad,row\n3,12,zzz,1700000002\n"
    "1,11,pv,1700000003\n2,10,fav,1700000004\n3,10,pv,1700000005\n"
)


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    return path


def test_parse_mapping():
    assert parse_mapping("user=uid, item=iid", "x") == {"user": "uid", "item": "iid"}
    assert parse_mapping(None, "x") == {}
    with pytest.raises(DataError, match="not of the form name=value"):
        parse_mapping("user", "--columns")
    with pytest.raises(DataError, match="unknown name 'usr'"):
        parse_mapping("usr=uid", "--columns", ("user", "item"))


def test_bad_rows_message_gives_count_and_every_example(csv_file: Path):
    loaded = load_events(
        csv_file, "csv", column_map={"user": "uid", "item": "iid", "type": "behavior", "ts": "time"}
    )
    msg = bad_rows_message(loaded, csv_file)
    assert msg is not None and msg.startswith("skipped 2 unreadable row(s)")
    assert len(msg.splitlines()) == 3  # the header line and both examples


def test_evaluate_reads_a_csv_through_column_and_event_maps(csv_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(
        [
            "evaluate",
            "--data",
            str(csv_file),
            "--format",
            "csv",
            "--models",
            "popular",
            "--columns",
            "user=uid,item=iid,type=behavior,ts=time",
            "--event-map",
            "zzz=cart",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    # "bad,row" is the only row left out: zzz is now a known behaviour.
    assert result["events_tested"] == 6
    assert "skipped 1 unreadable row(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--columns", "usr=uid"], "unknown name 'usr'"),
        (["--event-map", "pv=look"], "unknown event type 'look'"),
        (["--json", "/nonexistent-dir/r.json"], "not a writable directory"),
        (["--plot", "/nonexistent-dir/r.png"], "not a writable directory"),
        (["--plot", "/tmp/r.txt"], "the file name must end in one of"),
        (["--plot", "/tmp"], "it is a directory"),
        (["--json", "/tmp"], "it is a directory"),
        (["--items", "1000"], "--items is for --format synthetic"),
    ],
)
def test_evaluate_mistakes_are_one_line(csv_file, capsys, extra, message):
    code = main(["evaluate", "--data", str(csv_file), "--format", "csv", *extra])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err


def test_evaluate_on_a_synthetic_catalogue_of_a_given_size(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["evaluate", "--format", "synthetic", "--events", "600", "--items", "20000"]
    code = main([*args, "--models", "popular", "--json", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["events_tested"] == 600
    assert main([*args[:-1], "1"]) != 0
    assert "--items must be at least 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--data", "/tmp"], "--data is not read with --format synthetic"),
    ],
)
def test_synthetic_evaluation_mistakes_are_one_line(capsys, extra, message):
    code = main(["evaluate", "--format", "synthetic", "--events", "100", *extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
