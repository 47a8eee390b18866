"""Tidy tables of results stored in the AnnData (``nsc.get``)."""

from ._tables import coex_df, de_df

__all__ = ["coex_df", "de_df"]
