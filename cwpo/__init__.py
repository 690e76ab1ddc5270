"""cwpo: Confidence-Weighted Preference Optimization, weak-to-strong preference alignment.

Importing ``cwpo`` stays light (no lightning, no transformers); import the subpackages you use.
"""

__version__ = "0.1.0"
