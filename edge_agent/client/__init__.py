"""The edge agent's link to the central: HTTP, signed releases, outbox, kits.

The learning code (``edge_agent.train`` etc.) knows nothing of HTTP; only this
package does. Device-side dependencies: ``httpx`` and ``cryptography``.
"""
