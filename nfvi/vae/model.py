"""A VAE whose posterior is a normalizing flow: encoder -> q0(z|x) -> K flow layers -> decoder.

Rezende & Mohamed 2015, section 4 and 6.2. With ``z_0 ~ q0(z|x) = N(mu(x), diag sigma^2(x))``
and ``z_K = f_K o ... o f_1(z_0)``, the per-example free energy (eq. 20) is

    F_beta(x) = ln q0(z_0) - sum_k ln|det df_k/dz_{k-1}| - beta [ln p(x|z_K) + ln p(z_K)]

with one z sample; ``-ELBO`` is ``F_1``. The importance-weighted estimate of ``-ln p(x)`` is
``-ln (1/S) sum_s p(x, z_K^s) / q_K(z_K^s|x)`` with ``q_K`` from the change of variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfvi.flows import make_flow
from nfvi.vae.likelihoods import make_likelihood
from nfvi.vae.networks import NetSpec, make_architecture

LOG_2PI = math.log(2.0 * math.pi)


def log_normal_std(z: Tensor) -> Tensor:
    """``ln N(z; 0, I)`` summed over the last dim: ``[..., D] -> [...]``."""
    return -0.5 * (z * z + LOG_2PI).sum(-1)


def log_normal_diag(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """``ln N(z; mu, diag exp(log_var))`` summed over the last dim."""
    return -0.5 * (LOG_2PI + log_var + (z - mu) ** 2 * torch.exp(-log_var)).sum(-1)


@dataclass
class Posterior:
    """The encoder's output for a batch: q0's ``mu, log_var [B, D]`` and features ``h [B, H]``."""

    mu: Tensor
    log_var: Tensor
    features: Tensor


@dataclass
class PosteriorSample:
    """``z_0, z_K [N, D]`` and ``ln q0(z_0)``, ``sum_k ln|det_k|`` ``[N]``."""

    z0: Tensor
    zk: Tensor
    log_q0: Tensor
    log_det: Tensor

    @property
    def log_qk(self) -> Tensor:
        """``ln q_K(z_K) = ln q0(z_0) - sum_k ln|det_k|``."""
        return self.log_q0 - self.log_det


@dataclass
class ElboTerms:
    """Per-example terms (``[B]``, nats) and the scalar training loss.

    ``neg_elbo = recon + kl`` at beta = 1; ``recon = -ln p(x|z_K)``;
    ``kl = ln q_K(z_K) - ln p(z_K)`` (the one-sample KL estimate); ``loss`` is the mean of the
    annealed free energy ``F_beta``.
    """

    loss: Tensor
    neg_elbo: Tensor
    recon: Tensor
    kl: Tensor


@dataclass
class IWEstimate:
    """Per example ``[B]``, from the same ``S`` samples ``z_s ~ q_K(z|x)``: ``-ln p(x)``
    (``nll``, the importance-weighted bound of Burda et al. 2016), ``-ELBO`` at beta = 1
    (``neg_elbo = -(1/S) sum_s ln w_s``, ``w_s = p(x, z_s) / q_K(z_s|x)``: the ELBO's
    S-sample Monte Carlo estimate, whose variance falls as 1/S) and its reconstruction term
    (``recon = -(1/S) sum_s ln p(x|z_s)``). Per example ``neg_elbo - nll >= 0`` (Jensen over
    the S samples), so the gap estimate is never negative and carries little sampling noise."""

    nll: Tensor
    neg_elbo: Tensor
    recon: Tensor
    samples: int


class FlowVAE(nn.Module):
    """Encoder, flow posterior and decoder, with a decoder distribution ``likelihood``
    (:mod:`nfvi.vae.likelihoods`: ``bernoulli`` logits by default).

    ``architecture`` names the encoder/decoder networks (:data:`nfvi.vae.networks.ARCHITECTURES`:
    ``mlp``, the default, with ``hidden``, ``activation`` and ``maxout_pool``; ``gated_conv``,
    which needs ``image_shape`` ``(C, H, W)``). Every architecture sees flat images: the
    encoder maps ``x [B, P]`` to features ``h [B, H]``, which feed q0's linear heads and, when
    amortized, the flow's parameter head (``context_dim = H``); the decoder maps ``z [B, D]``
    to the likelihood's parameters ``[B, P * per_pixel]``.

    Shapes: ``x [B, P]`` with ``P`` pixels in [0, 1] ({0, 1} for Bernoulli); latents ``[B, D]``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: list[int],
        activation: str,
        maxout_pool: int,
        flow: str,
        K: int,
        amortized: bool,
        flow_hparams: dict | None = None,
        min_log_var: float = -12.0,
        context_norm: bool = False,
        head_gain: float | None = 1.0,
        standardized: bool = False,
        detach_context: bool = False,
        context_hidden: int | None = None,
        likelihood: str = "bernoulli",
        architecture: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.likelihood = make_likelihood(likelihood)
        self.standardized = standardized
        self.detach_context = detach_context
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.min_log_var = min_log_var
        nets = make_architecture(str(architecture), NetSpec(
            data_dim, latent_dim, self.likelihood.per_pixel,
            None if image_shape is None else tuple(image_shape),
            tuple(hidden), str(activation), maxout_pool))
        self.architecture = nets.name
        self.decode_rows = nets.decode_rows
        # built in this order (encoder, q0 heads, flow, decoder): a seed's initial parameters
        self.encoder = nets.encoder()
        feat = nets.features
        self.q_mu = nn.Linear(feat, latent_dim)
        self.q_log_var = nn.Linear(feat, latent_dim)
        self.flow = make_flow(
            flow, latent_dim, K, amortized=amortized, context_dim=feat,
            context_norm=context_norm, head_gain=head_gain, context_hidden=context_hidden,
            **(flow_hparams or {})
        )
        self.decoder_body, self.decoder_out = nets.decoder()

    @classmethod
    def from_config(cls, cfg, data_dim: int,
                    image_shape: tuple[int, ...] | None = None) -> FlowVAE:
        """The model of ``cfg`` for data of ``data_dim`` pixels of ``image_shape`` ``(C, H, W)``
        (needed by convolutional architectures)."""
        m = cfg.model
        model = cls(
            data_dim=data_dim,
            latent_dim=m.latent_dim,
            hidden=list(m.hidden),
            activation=m.activation,
            maxout_pool=m.maxout_pool,
            flow=cfg.flow.name,
            K=cfg.K,
            amortized=cfg.flow.amortized,
            flow_hparams=dict(cfg.flow.hparams),
            min_log_var=m.min_log_var,
            context_norm=cfg.flow.context_norm,
            head_gain=cfg.flow.head_gain,
            standardized=cfg.flow.standardized,
            detach_context=cfg.flow.detach_context,
            context_hidden=cfg.flow.context_hidden,
            likelihood=str(cfg.dataset.likelihood),
            architecture=str(m.name),
            image_shape=image_shape,
        )
        model.flow.fused = bool(cfg.flow.fused)  # planar/radial: one fused pass (nfvi.flows.fused)
        return model

    def encode(self, x: Tensor) -> Posterior:
        h = self.encoder(x)
        log_var = self.q_log_var(h).clamp_min(self.min_log_var)
        return Posterior(self.q_mu(h), log_var, h)

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters ``[N, P * per_pixel]`` for latents ``[N, D]``."""
        return self.decoder_out(self.decoder_body(z))

    def sample_posterior(self, post: Posterior, repeat: int = 1) -> PosteriorSample:
        """One reparameterized sample per row of ``post``; with ``repeat = n``, ``post.mu``
        and ``post.log_var`` hold ``n`` sample-major copies of ``post.features``' B rows
        (the flow's amortized parameters are then computed once per row: FlowStack)."""
        eps = torch.randn_like(post.mu)
        sigma = torch.exp(0.5 * post.log_var)
        z0 = post.mu + sigma * eps
        log_q0 = log_normal_diag(z0, post.mu, post.log_var)
        ctx = post.features
        if self.detach_context and ctx is not None:
            ctx = ctx.detach()  # the head's gradient stops at h(x): the encoder serves q0 alone
        if self.standardized:
            # z_K = mu + sigma * f(eps): the affine map and its inverse cancel in the Jacobian
            ek, log_det = self.flow(eps, ctx, repeat=repeat)
            return PosteriorSample(z0, post.mu + sigma * ek, log_q0, log_det)
        zk, log_det = self.flow(z0, ctx, repeat=repeat)
        return PosteriorSample(z0, zk, log_q0, log_det)

    def log_likelihood(self, x: Tensor, zk: Tensor) -> Tensor:
        """``ln p(x|z_K)`` ``[N]`` under the decoder's likelihood; in slices of at most
        ``decode_rows`` latents (the architecture's bound on a decoder call's memory)."""
        rows = self.decode_rows
        if rows is None or zk.shape[0] <= rows:
            return self.likelihood.log_prob(self.decode(zk), x)
        return torch.cat([self.likelihood.log_prob(self.decode(z), xs)
                          for z, xs in zip(zk.split(rows), x.split(rows), strict=True)])

    def elbo(self, x: Tensor, beta: float = 1.0, anneal: str = "joint") -> ElboTerms:
        """One-sample free energy of a batch ``x [B, P]`` (see the module docstring).

        ``anneal`` says what ``beta`` multiplies: ``joint``, R&M's eq. 20,
        ``ln q_K - beta ln p(x, z_K)``; ``kl``, the KL warm-up of Berg et al. 2018 (and
        Sonderby et al. 2016), ``-ln p(x|z_K) + beta (ln q_K - ln p(z_K))``. Both are the
        negative ELBO at beta = 1.
        """
        s = self.sample_posterior(self.encode(x))
        log_px_z = self.log_likelihood(x, s.zk)
        log_pz = log_normal_std(s.zk)
        log_qk = s.log_qk
        if anneal == "kl":
            loss = (beta * (log_qk - log_pz) - log_px_z).mean()
        else:
            loss = (log_qk - beta * (log_px_z + log_pz)).mean()
        kl = log_qk - log_pz
        return ElboTerms(loss=loss, neg_elbo=kl - log_px_z, recon=-log_px_z, kl=kl)

    #: the per-chunk pass :meth:`iw_nll` calls: :meth:`iw_log_weights`, or a compiled form of
    #: it (``trainer.compile``: :class:`nfvi.training.Compiled`, set by the VAE task)
    iw_chunk_fn = None

    def iw_log_weights(self, x: Tensor, mu: Tensor, log_var: Tensor, features: Tensor,
                       n: int) -> Tensor:
        """``[2, n, B]``: ``ln p(x, z_s) - ln q_K(z_s|x)`` (row 0) and ``ln p(x|z_s)`` (row 1)
        for ``n`` fresh samples per example of the posterior ``(mu, log_var, features)``
        (``[B, D]``, ``[B, D]``, ``[B, H]``) of ``x [B, P]``: one chunk of :meth:`iw_nll`, a
        pure function of its inputs and the RNG (so it can be compiled; ``n`` is a constant of
        the compiled graph). The features are not repeated: the flow's amortized head runs
        once per example (``repeat=n``)."""
        B = x.shape[0]
        rep = Posterior(mu.repeat(n, 1), log_var.repeat(n, 1), features)
        s = self.sample_posterior(rep, repeat=n)
        log_lik = self.log_likelihood(x.repeat(n, 1), s.zk)
        log_w = log_lik + log_normal_std(s.zk) - s.log_qk
        return torch.stack((log_w, log_lik)).view(2, n, B)

    @torch.no_grad()
    def iw_nll(self, x: Tensor, samples: int, chunk: int = 500) -> IWEstimate:
        """``-ln p(x) ~ -ln (1/S) sum_s exp(ln w_s)``, ``ln w_s = ln p(x, z_s) - ln q_K(z_s|x)``,
        ``x [B, P]``, and from the same samples the S-sample ``-ELBO = -(1/S) sum_s ln w_s``
        (:class:`IWEstimate`).

        The encoder and the flow's amortized head run once per x; the S samples go through
        the flow and decoder in chunks of ``chunk`` samples per example (:meth:`iw_log_weights`);
        the log-weights are combined with logsumexp.
        """
        post = self.encode(x)
        per_chunk = self.iw_chunk_fn or self.iw_log_weights
        parts = [per_chunk(x, post.mu, post.log_var, post.features, min(chunk, samples - start))
                 for start in range(0, samples, chunk)]
        w = torch.cat(parts, dim=1)  # [2, S, B]
        log_px = torch.logsumexp(w[0], dim=0) - math.log(samples)
        return IWEstimate(nll=-log_px, samples=samples, neg_elbo=-w[0].mean(0),
                          recon=-w[1].mean(0))

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Images ``[n, P]`` (the likelihood's :meth:`mean`) for ``z ~ N(0, I)``."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images ``[B, P]`` of ``p(x|z_K)`` with ``z_K`` from the posterior flow."""
        return self.likelihood.mean(self.decode(self.sample_posterior(self.encode(x)).zk))
