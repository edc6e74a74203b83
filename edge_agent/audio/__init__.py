"""Audio features: the single log-mel frontend shared by training and inference."""

from edge_agent.audio.frontend import AudioFrontend, FrontendConfigError, fit_length

__all__ = ["AudioFrontend", "FrontendConfigError", "fit_length"]
