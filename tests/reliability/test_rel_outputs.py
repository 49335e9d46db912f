"""User data and outputs are never lost or silently wrong: malformed barcodes are rejected
with their line, an export never overwrites a user's files unasked and follows the umask,
Ctrl-C leaves the summary of what finished, and a resumed job whose source moved is said."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT, compose, tiny_overrides
from tests.reliability.common import env, fast, launch, log_of, rows
from topovlm.cli import main

# --------------------------------------------------------------------------- malformed barcodes

GOOD = "dimension,birth,death\n0,0,inf\n1,0,inf\n1,2,5\n1,3,inf\n1,3,4\n"


@pytest.mark.parametrize("row, why", [
    ("1,5,3", "death 3 is before birth 5"),             # a bar that dies before it is born
    ("1,2,-inf", "death -inf is before birth 2"),
    ("1,nan,4", "birth is NaN"),
    ("1,2,nan", "death is NaN"),
    ("1,two,4", "birth 'two' is not a number"),
    ("x,2,4", "dimension 'x' is not a number"),
    ("-1,2,4", "dimension '-1' is not a non-negative integer"),
    ("1.5,2,4", "dimension '1.5' is not a non-negative integer"),
    ("1,2", "2 field(s), the header has 3"),             # a short row would have read as "never dies"
    ("1,2,4,7", "4 field(s), the header has 3"),
    ("1,inf,4", "zigzag positions are integers"),
])
def test_a_malformed_barcode_row_fails_in_one_line_naming_file_and_line(tmp_path, capsys, row, why):
    from topovlm.topo.barcodes import BarcodeError, read_barcode_csv

    path = tmp_path / "bars.csv"
    path.write_text(GOOD + row + "\n" + "1,1,2\n")
    line = GOOD.count("\n") + 1
    with pytest.raises(BarcodeError) as err:
        read_barcode_csv(path)
    assert str(err.value).startswith(f"{path}, line {line}: ") and why in str(err.value), str(err.value)
    assert main(["topo-score", str(path), "--representations", "4"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no scores printed from a file that is not a barcode
    message = captured.err.strip()
    assert "\n" not in message and f"line {line}" in message and str(path) in message and why in message


def test_a_barcode_that_is_not_text_is_named(tmp_path, capsys):
    path = tmp_path / "bars.csv"
    path.write_bytes(GOOD.encode() + b"1,2,\xff\n")
    assert main(["topo-score", str(path)]) == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and str(path) in message and "UTF-8" in message


def test_well_formed_barcodes_still_score(tmp_path, capsys):
    path = tmp_path / "bars.csv"
    path.write_text(GOOD + "\n1,2,\n")  # a blank line, and an empty death: never dies
    assert main(["topo-score", str(path), "--representations", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["representations"] == 4
