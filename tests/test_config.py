"""Config: presets load, overrides apply, and every error names the offending key."""

from __future__ import annotations

import pytest

from raylm.config import ConfigError, load_config, parse_override


def test_presets_load_and_overrides_apply():
    tiny = load_config("tiny")
    assert tiny.name == "tiny" and tiny.ray.num_cpus == 2
    assert load_config("cluster").ray.address == "auto"
    cfg = load_config("tiny", ["data.filters.language_threshold=0.8", "data.input=[a.warc.gz, b]",
                               "data.dedup.minhash=false"])
    assert cfg.data.filters.language_threshold == 0.8
    assert cfg.data.input == ["a.warc.gz", "b"]
    assert cfg.data.dedup.minhash is False


def test_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndata:\n  extractor: resiliparse\n")
    cfg = load_config(str(path))
    assert (cfg.name, cfg.data.extractor) == ("mine", "resiliparse")


@pytest.mark.parametrize("override, message", [
    ("data.min_wordz=50", r"data\.min_wordz: Extra inputs are not permitted"),
    ("data.filters.language_threshold=high", r"data\.filters\.language_threshold: .*number"),
    ("data.filters.language_threshold=1.5", r"data\.filters\.language_threshold: .*less than or equal to 1"),
    ("data.extractor=lynx", r"data\.extractor: .*'trafilatura' or 'resiliparse'"),
    ("data.batch_size.x=1", r"data\.batch_size\.x: 'batch_size' is a value"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_bad_override_syntax_and_unknown_preset():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("data.min_words")
    with pytest.raises(ConfigError, match="presets: cluster, tiny"):
        load_config("huge")
