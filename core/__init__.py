"""What every layer shares: the error tree, events, user states, step results.

Imports only go down: ``core <- state <- model <- stream <- bench``; nothing here
imports another package of this project.
"""

__all__: list[str] = []
