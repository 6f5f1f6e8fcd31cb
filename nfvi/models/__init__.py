"""Encoders, decoders, the flow VAE and its objectives."""

from nfvi.models.vae import ElboTerms, FlowVAE, IWEstimate, Posterior, PosteriorSample

__all__ = ["ElboTerms", "FlowVAE", "IWEstimate", "Posterior", "PosteriorSample"]
