"""The policy sections about data the loop keeps and derives, beside the promotion rules of policy.py:
personal data (`privacy`), what `tuneloop gc` removes from old versions (`retention`), and the
distilled students of a version (`compress`). Same rules as every section: every threshold is
written in registry/policy.yaml, unknown keys are refused.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.registry.section import Points
from tuneloop.registry.section import Section as _Section

# The entities the redactor knows (tuneloop.privacy.rules.PLACEHOLDERS; PERSON, LOCATION and NRP
# only with a named-entity model in `ner_recognizers`). Listed here too: stages do not import each
# other, and a typo must fail when the policy loads, not when a text arrives.
PRIVACY_ENTITIES = (
    "CREDIT_CARD",
    "IBAN_CODE",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IP_ADDRESS",
    "CRYPTO",
    "ORDER_NUMBER",
    "ACCOUNT_NUMBER",
)
NER_ENTITIES = ("PERSON", "LOCATION", "NRP")


def _redact_all() -> dict[str, Literal["redact", "quarantine"]]:
    return dict.fromkeys(PRIVACY_ENTITIES, "redact")


class PrivacyPolicy(_Section):
    """Personal data: what is looked for in every text that comes in, and what a row holding it becomes.

    `redact`: the text is kept with a typed placeholder (`<CREDIT_CARD>`) where the value was.
    `quarantine`: at ingest the row goes to quarantine (stored redacted) instead of a snapshot. At
    serving both redact, so the model always sees placeholders. Omitted means every entity is redacted.
    """

    entities: dict[str, Literal["redact", "quarantine"]] = Field(
        default_factory=_redact_all,
        description="Entity -> redact or quarantine. Entities left out are not looked for.",
    )
    min_score: float = Field(
        default=0.4,
        ge=0,
        le=1,
        description="Presidio score a finding needs (1.0: checksum-validated; 0.4: a valid phone number).",
    )
    phone_regions: list[str] = Field(
        default=["US", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "IN", "CA", "AU"],
        min_length=1,
        description="Regions whose phone number formats are recognised (phonenumbers region codes).",
    )
    landing_files_with_personal_data: Literal["remove", "keep"] = Field(
        default="remove",
        description="A landing-folder file that held personal data: removed once its rows are committed "
        "(redacted) to a snapshot or quarantine, or kept as it arrived.",
    )
    ner_recognizers: list[str] = Field(
        default_factory=list,
        description="'package.module:Class' Presidio recognizers backed by a named-entity model: the "
        "hook for PERSON, LOCATION and NRP. None ships here, so names and addresses are not found.",
    )

    @model_validator(mode="after")
    def _known_entities(self) -> PrivacyPolicy:
        unknown = sorted(set(self.entities) - set(PRIVACY_ENTITIES) - set(NER_ENTITIES))
        if unknown:
            raise ValueError(f"unknown entities {unknown}; known: {list(PRIVACY_ENTITIES)}")
        ner = sorted(set(self.entities) & set(NER_ENTITIES))
        if ner and not self.ner_recognizers:
            raise ValueError(
                f"{ner} need a named-entity model in ner_recognizers; none ships with tuneloop, "
                "so they would never be found"
            )
        return self


# Paths of every kind of lineage file in a version's run (relative to the run's artifact root; `k`
# stands for a conversion key). A `retention.collect` pattern matching any of them is refused: gc
# removes rebuildable bulk (merged weights, ONNX graphs), never what says how a version was made.
LINEAGE_EXAMPLES = (
    "model/checksums.json",
    "model/MLmodel",
    "model/pyfunc_model.py",
    "model/replay_manifest.json",
    "model/input_example.json",
    "model/adapter/adapter_model.safetensors",
    "model/adapter/adapter_config.json",
    "model/adapter/labels.json",
    "report/gate.json",
    "report/per_label.csv",
    "snapshot/manifest.json",
    "conversions/k/conversion_summary.json",
    "conversions/k/parity.md",
    # A student's weights are the output of a distillation, which is not rebuilt bit for bit (as
    # the adapter is not): they are kept with its record, and the version's graphs rebuilt from them.
    "students/3L/model.safetensors",
    "students/3L/checksums.json",
    "students/3L/judgement.json",
)


def artifact_path_matches(path: str, pattern: str) -> bool:
    """Whether a run-relative artifact path matches a retention pattern (pure).

    Segment by segment: `*` and `?` match within one path segment (fnmatch), and a `**` segment
    matches any number of segments, none included. So `conversions/*/model*.onnx` matches
    `conversions/<key>/model.int8.onnx` and nothing deeper, and `model/merged/**` everything under
    `model/merged/`.
    """
    return _segments_match(path.strip("/").split("/"), pattern.strip("/").split("/"))


def _segments_match(parts: list[str], pats: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_segments_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pats[0]) and _segments_match(parts[1:], pats[1:])


class RetentionPolicy(_Section):
    """What `tuneloop gc` may remove from versions outside retention, and what stays whole.

    Read by the pure `tuneloop.registry.retention.plan_gc`. A version holding an alias (champion,
    canary, previous, challenger) is never collected whatever these numbers say.
    """

    keep_whole_behind_aliases: int = Field(
        ge=0,
        description="The N most recent versions that hold no alias stay whole: the next candidates, "
        "and the rollback targets an operator may still reach for.",
    )
    min_age_days: float = Field(
        ge=0, description="Versions registered less than this many days ago stay whole (0: no age rule)."
    )
    keep_tag: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description='A version tag name; a version carrying it with the value "true" is never collected.',
    )
    collect: list[str] = Field(
        min_length=1,
        description="Artifact paths gc removes from a version outside retention, relative to its run "
        "(`*` within a segment, `**` any depth); everything else is lineage and stays.",
    )
    quarantine_max_copies: int = Field(
        ge=0,
        description="Whole-file copies of bad input kept under <home>/quarantine/files/; the oldest "
        "beyond this are removed (their .reason.txt, ledger and report records stay).",
    )

    @field_validator("collect")
    @classmethod
    def _collect_only_bulk(cls, value: list[str]) -> list[str]:
        for pattern in value:
            parts = pattern.split("/")
            if pattern.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"{pattern!r}: a path relative to the run, without empty, . or .. parts")
            if any("**" in part and part != "**" for part in parts):
                raise ValueError(f"{pattern!r}: ** must be a whole path segment")
            lineage = [path for path in LINEAGE_EXAMPLES if artifact_path_matches(path, pattern)]
            if lineage:
                raise ValueError(f"{pattern!r} would collect lineage ({', '.join(lineage)}); it must stay")
        return value

    def collects(self, path: str) -> bool:
        """Whether gc may remove this run-relative artifact path."""
        return any(artifact_path_matches(path, pattern) for pattern in self.collect)

    def roots(self) -> list[str]:
        """The folders that hold every collectable path: each pattern's segments before its first
        wildcard ("" for the whole run). Only these are listed, so lineage is never even walked."""
        found = set()
        for pattern in self.collect:
            literal = []
            for part in pattern.split("/")[:-1]:
                if any(ch in part for ch in "*?["):
                    break
                literal.append(part)
            found.add("/".join(literal))
        if "" in found:
            return [""]
        # A root inside another root is listed with it.
        return sorted(r for r in found if not any(r.startswith(f"{o}/") for o in found if o != r))


class CompressPolicy(_Section):
    """Students of a version: which shapes are built, how they are distilled, what they must keep.

    Judged by the pure `tuneloop.compress.judge.judge_student` against the student's own teacher;
    the per-label check uses the gates' `max_per_label_drop_points` and `min_label_support`, so a
    student may lose no more of one label than a round may.
    """

    enabled: bool = Field(
        description="Whether the loop compresses each new version by itself (no loop step does yet); "
        "`tuneloop compress` runs whatever this says (an operator's decision)."
    )
    depths: list[int] = Field(
        min_length=1,
        description="Encoder layers of each depth student, kept from the teacher's (compress/layers.py "
        "says which); a depth not below the teacher's is skipped.",
    )
    max_f1_drop_points: Points = Field(
        ge=0,
        le=100,
        description="Largest macro-F1 drop of a student versus its teacher, in points, on the eval "
        "rows and on the golden set.",
    )
    min_agreement: float = Field(
        ge=0, le=1, description="Lowest share of rows where a student predicts its teacher's label."
    )
    temperature: float = Field(gt=0, description="Softmax temperature of the distillation (KL) term.")
    alpha: float = Field(
        ge=0,
        le=1,
        description="Weight of the distillation term; 1 - alpha weighs cross-entropy on the labels.",
    )
    epochs: int = Field(ge=1, description="Passes of a student over the round's training and replay rows.")
    learning_rate: float = Field(
        gt=0, lt=1, description="Peak AdamW learning rate of a student (all weights)."
    )
    hidden_state_weight: float = Field(
        ge=0,
        description="Weight of the MSE between a student's layer outputs and the teacher's at the kept "
        "layers; 0 leaves the term out.",
    )
    ffn_keep: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of each layer's feed-forward neurons a student keeps, the least important on "
        "the round's data pruned before distillation (compress/width.py); 1 prunes none.",
    )

    @field_validator("depths")
    @classmethod
    def _distinct_depths(cls, value: list[int]) -> list[int]:
        if any(depth < 1 for depth in value) or len(set(value)) != len(value):
            raise ValueError(f"depths must be distinct layer counts of at least 1, got {value}")
        return value
