"""The generated protobuf code in kiln/v1 must match proto/ exactly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos], cwd=ROOT, check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    stale = [str(p) for p in generated if (ROOT / p).read_text() != (tmp_path / p).read_text()]
    assert not stale, f"regenerate with: python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. " \
                      f"--grpc_python_out=. {' '.join('proto/' + p for p in protos)}  (stale: {stale})"
