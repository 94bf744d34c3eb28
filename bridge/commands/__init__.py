"""Operator commands (check, replay, tail) and what only they use.

The service never imports them; they never import bridge.devtools (make lint checks both).
"""
