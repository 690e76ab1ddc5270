"""Evaluation: generation, gold judges, GRA and other metrics, reports.

Import the submodules you use (``cwpo.evaluation.generate``, ``.judges``, ``.metrics``, ``.llm_judge``,
``.report``); this package stays light so that importing it pulls in neither lightning nor transformers.
"""
