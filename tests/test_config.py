"""Settings: defaults equal config.toml, precedence, and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dicom_ai.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_embedded_defaults_equal_the_documented_config_file() -> None:
    from_file = load_settings(REPO / "config.toml", environ={})
    defaults = load_settings(None, environ={})
    file_dump = from_file.model_dump()
    default_dump = defaults.model_dump()
    # relative paths in the file are resolved against the file's folder
    file_dump["storage"]["data_dir"] = Path("var")
    default_dump["storage"]["data_dir"] = Path("var")
    assert file_dump == default_dump


def test_every_key_of_config_toml_is_a_setting() -> None:
    tree = tomllib.loads((REPO / "config.toml").read_text())
    for section, values in tree.items():
        assert section in Settings.model_fields, section
        if isinstance(values, dict) and section != "nodes":
            model = Settings.model_fields[section].annotation
            for key in values:
                assert key in model.model_fields, f"{section}.{key}"


def test_precedence_overrides_then_environment_then_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[node]\nport = 2000\nae_title = "FILE"\n[queue]\nworkers = 3\n')
    env = {"DICOM_AI_PORT": "3000", "DICOM_AI_QUEUE__WORKERS": "5"}
    settings = load_settings(cfg, {("node", "port"): 4000}, environ=env)
    assert settings.node.port == 4000
    assert settings.node.ae_title == "FILE"
    assert settings.queue.workers == 5


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\ndata_dir = "spooldir"\n')
    settings = load_settings(None, environ={"DICOM_AI_CONFIG": str(cfg)})
    assert settings.storage.data_dir == tmp_path / "spooldir"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[listener]\nprocesses = 0\n", "listener.processes"),
        ("[listener]\nprocesses = 65\n", "listener.processes"),
        ("[node]\nprot = 1\n", "node.prot: unknown setting"),
        ("[bogus]\nx = 1\n", "bogus: unknown setting"),
        ('[node]\nae_title = "THIS_TITLE_IS_TOO_LONG"\n', "node.ae_title"),
        ('[tls]\nenabled = true\ncertificate = "missing.crt"\nprivate_key = "k"\n', "certificate"),
        ('[access]\nmode = "allow-list"\n', "access.mode"),
        ('[send]\nextra_destinations = ["PACS"]\n', "send.extra_destinations"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(cfg, environ={})
    assert fragment in str(info.value)


def test_unknown_key_in_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match="node.prot: unknown setting"):
        load_settings(None, environ={"DICOM_AI_NODE__PROT": "1"})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_a_plain_postgresql_url_means_psycopg_3() -> None:
    for scheme in ("postgresql", "postgres"):
        settings = load_settings(None, environ={"DICOM_AI_DATABASE_URL": f"{scheme}://u:p@db:5432/dicom_ai"})
        assert settings.storage.resolved_database_url == "postgresql+psycopg://u:p@db:5432/dicom_ai"
    other = load_settings(None, environ={"DICOM_AI_DATABASE_URL": "postgresql+psycopg2://u@db/x"})
    assert other.storage.database_url == "postgresql+psycopg2://u@db/x"  # named explicitly: checked at start-up


def test_logging_settings_from_the_environment_and_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[logging]\nfile = "logs/node.log"\nlibrary_level = "ERROR"\n')
    settings = load_settings(cfg, environ={"DICOM_AI_LOG_FORMAT": "json", "DICOM_AI_LOG_LEVEL": "debug"})
    assert settings.logging.file == tmp_path / "logs" / "node.log"
    assert (settings.logging.format, settings.logging.level, settings.logging.library_level) == (
        "json", "debug", "error")
    assert load_settings(None, environ={"DICOM_AI_LOG_FILE": ""}).logging.file is None
    with pytest.raises(ConfigError, match="logging.format"):
        load_settings(None, environ={"DICOM_AI_LOG_FORMAT": "xml"})
