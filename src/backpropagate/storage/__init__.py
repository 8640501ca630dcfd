"""Where runs are kept on disk: each output folder's history (``runs.db``) and the user's index of those folders.

The lowest layer with :mod:`backpropagate.atomic` and :mod:`backpropagate.config`: training writes through it,
and the user-facing run operations (:mod:`backpropagate.runs`) read it.
"""
