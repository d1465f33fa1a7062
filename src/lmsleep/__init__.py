"""lmsleep: language models that keep learning after deployment.

By day a model meets memories in its context; each night `lmsleep night` consolidates them into its weights
(wake -> collect -> validate -> seed -> dream -> evaluate -> promote). See README.md for the lifecycle.
"""

__version__ = "0.1.0"
