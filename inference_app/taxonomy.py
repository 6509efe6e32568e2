"""Species -> genus -> family, and probabilities summed up those ranks.

A model that is unsure between three *Quercus* species is still sure it is an oak: summing the
species probabilities per genus (and family) gives an honest coarser answer, as iNaturalist does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.contract import TAXONOMY_UNLISTED, TaxonomyError, read_taxonomy_csv

__all__ = ["UNLISTED", "Taxonomy", "TaxonomyError", "genus_from_binomial"]

logger = logging.getLogger(__name__)

UNLISTED = TAXONOMY_UNLISTED
_BINOMIAL = re.compile(r"^([A-Z][a-z-]+)[\s_]+(?:[x×][\s_]+)?[a-z][a-z-]+")


def genus_from_binomial(species: str) -> str | None:
    """``"Quercus robur L."`` -> ``"Quercus"``; ``None`` when the name is not a binomial."""
    match = _BINOMIAL.match(species.strip())
    return match.group(1) if match else None


@dataclass(frozen=True)
class Taxonomy:
    """Genus and family of each species name.

    Args:
        genus: species name -> genus name.
        family: species name -> family name (may be empty: no family roll-up then).
        source: where it came from, for messages.
    """

    genus: dict[str, str]
    family: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_csv(cls, path: str | Path) -> Taxonomy:
        """Read a CSV with a header and columns ``species,genus[,family]`` (any order, any case; the
        parser is ``data_prep.contract.read_taxonomy_csv``, shared with the trainer's genus/family metrics).

        Raises:
            TaxonomyError: see ``read_taxonomy_csv``.
        """
        genus, family = read_taxonomy_csv(path)
        return cls(genus=genus, family=family, source=str(path))

    @classmethod
    def from_species_names(cls, species: Sequence[str]) -> Taxonomy:
        """Genus = first word of each binomial species name (only when the user asks for it)."""
        genus = {name: g for name in species if (g := genus_from_binomial(name))}
        return cls(genus=genus, source="first word of the species names")

    def with_names_as_fallback(self, species: Sequence[str]) -> Taxonomy:
        """Fill species missing from the file with the first word of their binomial name."""
        genus = dict(self.genus)
        for name in species:
            if name not in genus and (g := genus_from_binomial(name)):
                genus[name] = g
        return Taxonomy(genus=genus, family=self.family, source=f"{self.source} + species names")

    def check(self, species: Sequence[str]) -> list[str]:
        """Species of the model that this taxonomy does not place in a genus (logged once)."""
        missing = [name for name in species if name not in self.genus]
        if missing:
            logger.warning(
                "%d of %d species have no genus in %s (they are summed under %r): %s",
                len(missing),
                len(species),
                self.source,
                UNLISTED,
                ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
            )
        return missing

    @property
    def has_family(self) -> bool:
        return bool(self.family)

    def rollup(
        self, labels: Sequence[str], probs: np.ndarray, rank: str = "genus"
    ) -> list[tuple[str, float]]:
        """Sum species probabilities per genus or family, most probable first.

        Args:
            labels: species name of each column of ``probs``.
            probs: ``(num_species,)`` probabilities.
            rank: ``"genus"`` or ``"family"``.
        """
        mapping = {"genus": self.genus, "family": self.family}[rank]
        totals: dict[str, float] = {}
        for name, p in zip(labels, np.asarray(probs, dtype=np.float64).tolist()):
            group = mapping.get(name, UNLISTED)
            totals[group] = totals.get(group, 0.0) + p
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
