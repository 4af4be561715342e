"""Typed configuration: pydantic models, YAML presets and dotted overrides.

A run is configured by one `RunConfig`: a preset from raylm/configs/ (`tiny`, the
CPU default, or `cluster`) or a YAML file, then `-o key.path=value` overrides.
Unknown keys and bad values are rejected with a message that names the key:

    cfg = load_config("tiny", ["data.filters.language_threshold=0.7"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PRESETS_DIR = Path(__file__).parent / "configs"
SAMPLE_CRAWL = Path(__file__).parent / "sample" / "crawl"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray (or joins RAY_ADDRESS)")
    num_cpus: int | None = Field(2, ge=1, description="CPUs for a local Ray; ignored when joining a cluster")


class FilterConfig(Strict):
    """Thresholds of the FineWeb filter chain (datatrove's defaults unless noted)."""

    url_blocklist: bool = True
    language: str = "en"
    language_threshold: float = Field(0.65, ge=0, le=1)
    gopher_dup_line_frac: float = Field(0.3, ge=0, le=1)
    gopher_dup_para_frac: float = Field(0.3, ge=0, le=1)
    gopher_min_doc_words: int = Field(50, ge=0)
    gopher_max_doc_words: int = Field(100_000, ge=1)
    gopher_max_symbol_word_ratio: float = Field(0.1, ge=0)
    gopher_min_stop_words: int = Field(2, ge=0)
    c4_min_num_sentences: int = Field(5, ge=-1)
    c4_min_words_per_line: int = Field(3, ge=-1)
    c4_filter_curly_bracket: bool = True
    fineweb_line_punct_thr: float = Field(0.12, ge=0, le=1)
    fineweb_short_line_thr: float = Field(0.67, ge=0, le=1)
    fineweb_char_duplicates_ratio: float = Field(0.01, ge=0, le=1)
    fineweb_new_line_ratio: float = Field(0.3, ge=0)


class DedupConfig(Strict):
    exact: bool = True
    minhash: bool = True
    ngram_size: int = Field(5, ge=1, description="word n-grams (shingles)")
    num_buckets: int = Field(14, ge=1, description="LSH bands")
    hashes_per_bucket: int = Field(8, ge=1, description="rows per band")
    verify_threshold: float = Field(0.8, ge=0, le=1, description="min estimated Jaccard of a candidate pair; 0: off")
    seed: int = 1


class PiiConfig(Strict):
    emails: bool = True
    ips: bool = True


class DataConfig(Strict):
    input: list[str] = Field(default_factory=lambda: [str(SAMPLE_CRAWL)])
    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    batch_size: int = Field(64, ge=1, description="documents per Ray Data batch")
    num_workers: int = Field(2, ge=1, description="actors in the cleaning pool")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)


class RunConfig(Strict):
    name: str = "tiny"
    runs_dir: str = "runs"
    ray: RayConfig = Field(default_factory=RayConfig)
    data: DataConfig = Field(default_factory=DataConfig)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`data.min_words=50` -> ("data.min_words", 50); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like key.path=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _read_yaml(preset_or_file: str) -> dict:
    path = Path(preset_or_file)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset_or_file}.yaml"
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"config '{preset_or_file}' not found (presets: {presets}, or a path to a .yaml file)")
    return yaml.safe_load(path.read_text()) or {}


def load_config(preset_or_file: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    tree = _read_yaml(preset_or_file)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError("invalid config: " + "; ".join(problems)) from None
