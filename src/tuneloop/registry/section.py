"""What every policy section shares: unknown keys refused, values frozen, F1 figures in points."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

Points = float  # F1 differences are expressed in points: 0.021 macro-F1 is 2.1 points.


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
