from cegraph.config import Settings


def test_settings_layering(tmp_path, monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"CEGRAPH_{name.upper()}", raising=False)
    assert Settings.load(tmp_path).home == ".cegraph"
    (tmp_path / "pyproject.toml").write_text('[tool.cegraph]\nhome = "/srv/cg"\n'
                                             'locus_weight = 0.5\n')
    assert Settings.load(tmp_path).home == "/srv/cg"
    assert Settings.load(tmp_path).locus_weight == 0.5
    monkeypatch.setenv("CEGRAPH_HOME", "/env/home")
    monkeypatch.setenv("CEGRAPH_CONCURRENCY", "3")
    loaded = Settings.load(tmp_path)
    assert loaded.home == "/env/home" and loaded.concurrency == 3
