"""The interactive plotly figure of a 2-D reference map (t-SNE or UMAP): colour = species, marker shape =
domain, stars = the placed query photos.

A map fitted on a sample (more reference images than ``max_points``) draws the fitted sample only:
at most ``max_points`` points (every species when there are at most that many) (a 50,000-point plotly figure is ~10 MB of JSON sent with
every query and sluggish in the browser); its title says how many of how many are shown.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DOMAIN_SYMBOLS = {"herbarium": "circle", "field": "diamond", "unknown": "square"}
QUERY_SYMBOL = "star"


class MapFigure:
    """The interactive figure of a 2-D map: subclasses set ``coords`` ``(N, 2)`` and ``title``."""

    coords: np.ndarray
    sample: np.ndarray  # (S,) the fitted points: the ones drawn
    title = "map"

    def figure(
        self,
        species: Sequence[str],
        domain: Sequence[str],
        ids: Sequence[str] | None = None,
        query_coords: np.ndarray | None = None,
        query_names: Sequence[str] | None = None,
        title: str | None = None,
    ):
        """An interactive plotly scatter: colour = species, marker = domain, star = query photos.

        Args:
            species: species of each reference point (``N`` names, in ``coords`` order).
            domain: ``"herbarium"``, ``"field"`` or ``"unknown"`` per point (the marker shape).
            ids: hover text per point (default: the index).
            query_coords: ``(M, 2)`` placed query photos, drawn as stars.
            query_names: their labels (default ``"your photo 1"``, ...).
            title: figure title (a map fitted on a sample draws the sample only, and says so here).

        Returns:
            ``plotly.graph_objects.Figure``.
        """
        import plotly.graph_objects as go

        species, domain = list(species), list(domain)
        ids = list(ids) if ids is not None else [str(i) for i in range(len(species))]
        drawn = self.sample if len(species) == len(self.coords) else np.arange(len(species))
        if len(drawn) < len(species):
            kinds, shown = len(set(species)), len({species[i] for i in drawn.tolist()})
            which = f"all {kinds:,} species" if shown == kinds else f"{shown:,} of {kinds:,} species"
            note = (
                f"showing the {len(drawn):,} reference images the map was fitted on ({which}) of "
                f"{len(species):,}; the others are placed on the same map"
            )
            title = f"{title}<br><sup>{note}</sup>" if title else note
        fig = go.Figure()
        for trace in self._species_traces(species, domain, ids, drawn):
            fig.add_trace(trace)
        for domain_name in sorted(set(domain)):  # legend entries for the marker shapes
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=f"shape: {domain_name}",
                    marker={"symbol": DOMAIN_SYMBOLS.get(domain_name, "square"), "color": "grey", "size": 8},
                    hoverinfo="skip",
                )
            )
        if query_coords is not None and len(query_coords):
            fig.add_trace(_query_trace(np.atleast_2d(query_coords), query_names))
        fig.update_layout(
            title=title,
            template="plotly_white",
            height=560,
            margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
            legend={"itemsizing": "constant", "font": {"size": 10}},
            xaxis={"visible": False},
            yaxis={"visible": False, "scaleanchor": "x"},
        )
        return fig

    def _species_traces(
        self, species: list[str], domain: list[str], ids: list[str], drawn: np.ndarray
    ) -> list:
        """One scatter trace per species (colour) of the ``drawn`` points, a marker shape per domain."""
        import plotly.graph_objects as go
        from plotly.colors import qualitative

        palette = qualitative.Dark24 + qualitative.Light24 + qualitative.Alphabet
        rows_of: dict[str, list[int]] = {}  # one pass (not one per species: 50,000 x 1,000 comparisons)
        for i in drawn.tolist():
            rows_of.setdefault(species[i], []).append(i)
        traces = []
        for colour_index, name in enumerate(sorted(set(species))):
            rows = rows_of.get(name, [])
            if not rows:  # more species than drawn points
                continue
            traces.append(
                go.Scatter(
                    x=self.coords[rows, 0],
                    y=self.coords[rows, 1],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    marker={
                        "color": palette[colour_index % len(palette)],
                        "symbol": [DOMAIN_SYMBOLS.get(domain[i], "square") for i in rows],
                        "size": 7,
                        "opacity": 0.8,
                        "line": {"width": 0.5, "color": "white"},
                    },
                    customdata=[[domain[i], ids[i]] for i in rows],
                    hovertemplate=f"<b>{name}</b><br>%{{customdata[0]}}<br>%{{customdata[1]}}<extra></extra>",
                )
            )
        return traces


def _query_trace(query_coords: np.ndarray, query_names: Sequence[str] | None):
    """The placed query photos ``(M, 2)`` as labelled stars."""
    import plotly.graph_objects as go

    names = list(query_names) if query_names else [f"your photo {i + 1}" for i in range(len(query_coords))]
    return go.Scatter(
        x=query_coords[:, 0],
        y=query_coords[:, 1],
        mode="markers+text",
        name="your photo",
        text=names,
        textposition="top center",
        marker={"symbol": QUERY_SYMBOL, "size": 20, "color": "black", "line": {"width": 2, "color": "gold"}},
        hovertemplate="<b>%{text}</b><extra></extra>",
    )
