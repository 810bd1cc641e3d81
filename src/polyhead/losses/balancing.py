"""How a multi-head loss weighs its terms (one per head, plus ``consistency``).

A balancer is one ``_target_`` strategy given to `polyhead.losses.MultiHeadLoss` (and so to
``SegmentationTask(balancing=...)``, config key ``task.balancing``). The loss calls
``combine(parts, weights, active)``: ``parts`` are the terms' values, ``weights`` the fixed
weights (``head_weights``, the consistency weight with its warm-up), ``active`` the terms that
had a target in this batch. See docs/balancing.md for which one to use when.

- `FixedWeights` (default): ``sum_t w_t L_t``, the fixed weights alone.
- `UncertaintyWeighting` (Kendall et al. 2018): one learnable log-variance ``s_t`` per term,
  ``sum_t exp(-s_t) w_t L_t + s_t``, with ``s_t`` clamped to ``[min_log_var, max_log_var]``.
- `DynamicWeightAveraging` (Liu et al. 2019): ``lambda_t = N softmax_t(r_t / T)`` with
  ``r_t`` the ratio of the term's last two epoch-mean losses; ``lambda = 1`` for two epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from polyhead.errors import ConfigError


class LossBalancer(nn.Module):
    """Base class: ``setup(terms)`` once, then ``combine`` each step."""

    terms: list[str]

    def setup(self, terms: Sequence[str], aliases: Mapping[str, str] | None = None) -> None:
        """Learn the term names (the heads' names and ``consistency``) before training;
        ``aliases`` maps other names for a term (a target key: ``hard`` -> ``A``) to it."""
        self.terms = list(terms)
        self.aliases = dict(aliases or {})

    def combine(
        self,
        parts: Mapping[str, torch.Tensor],
        weights: Mapping[str, float],
        active: Sequence[str],
    ) -> torch.Tensor:
        raise NotImplementedError

    def logged(self) -> dict[str, float]:
        """Values logged each step as ``balance/{term}`` (empty: nothing to log)."""
        return {}

    def epoch_end(self) -> None:
        """Called after every training epoch."""


class FixedWeights(LossBalancer):
    """``total = sum_t w_t L_t`` with the fixed weights: polyhead's behaviour before balancing."""

    def combine(self, parts, weights, active):
        total = next(iter(parts.values())).new_zeros(())
        for name, value in parts.items():
            total = total + weights[name] * value
        return total


class UncertaintyWeighting(LossBalancer):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    ``total = sum_t exp(-s_t) * w_t * L_t + s_t`` with one learnable ``s_t = log sigma_t^2``
    per term (the form psmt's ``DualHeadKendallLoss`` uses). ``s_t`` is clamped to
    ``[min_log_var, max_log_var]`` so a term whose loss tends to 0 (or whose weight is 0 during
    a warm-up) cannot drive it to -inf; a term without a target in the batch adds only
    ``0 * (s_t + L_t)`` (keeps DDP's every-parameter-used rule).

    Args:
        init: ``{term: log_var}`` starting values (default 0 for every term), e.g. the
            sigmas of an imported psmt checkpoint as ``log(sigma**2)``. A term may also be
            named by its target key (``hard``, ``soft``: the first head learning it), so
            psmt's ``{hard, soft, consistency}`` seed a dual head's ``{A, B, consistency}``.
        min_log_var, max_log_var: the clamp.
    """

    def __init__(
        self,
        init: Mapping[str, float] | None = None,
        min_log_var: float = -4.0,
        max_log_var: float = 4.0,
    ) -> None:
        super().__init__()
        if not min_log_var < max_log_var:
            raise ConfigError(f"min_log_var {min_log_var} must be < max_log_var {max_log_var}")
        self.init = dict(init or {})
        self.min_log_var, self.max_log_var = float(min_log_var), float(max_log_var)
        self.log_vars = nn.ParameterDict()

    def setup(self, terms: Sequence[str], aliases: Mapping[str, str] | None = None) -> None:
        super().setup(terms, aliases)
        init = {k if k in self.terms else self.aliases.get(k, k): v for k, v in self.init.items()}
        unknown = sorted(set(init) - set(self.terms))
        if unknown:
            raise ConfigError(
                f"balancing.init names {unknown}, not terms of this loss; terms: {self.terms}"
            )
        for term in self.terms:
            value = torch.tensor(float(init.get(term, 0.0)))
            self.log_vars[term] = nn.Parameter(value)

    def log_var(self, term: str) -> torch.Tensor:
        return self.log_vars[term].clamp(self.min_log_var, self.max_log_var)

    def combine(self, parts, weights, active):
        total = next(iter(parts.values())).new_zeros(())
        for name in self.terms:
            s = self.log_var(name)
            if name in parts and name in active and weights[name] > 0:
                total = total + torch.exp(-s) * weights[name] * parts[name] + s
            else:  # keep the term's graph (a zero) so every parameter gets a gradient
                total = total + 0.0 * s + 0.0 * parts.get(name, s)
        return total

    def logged(self) -> dict[str, float]:
        return {t: float(self.log_var(t).detach()) for t in self.terms}


class DynamicWeightAveraging(LossBalancer):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``lambda_t(e) = N * exp(r_t / T) / sum_i exp(r_i / T)``, ``r_t = L_t(e-1) / L_t(e-2)``
    from the terms' mean training losses of the two previous epochs (reduced over DDP
    ranks, so every rank uses the same weights); ``lambda_t = 1`` in the first two epochs.
    ``total = sum_t lambda_t w_t L_t``. The epoch means are buffers (saved in checkpoints).
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"DynamicWeightAveraging temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def setup(self, terms: Sequence[str], aliases: Mapping[str, str] | None = None) -> None:
        super().setup(terms, aliases)
        n = len(self.terms)
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, n), float("nan"), dtype=torch.float64))

    def lambdas(self) -> torch.Tensor:
        """Current weights, one per term (in ``terms`` order)."""
        if torch.isnan(self.history).all(dim=1).any():
            return torch.ones(len(self.terms), dtype=torch.float64)
        # a term without a mean in one of the epochs (no target seen) keeps ratio 1
        ratio = torch.nan_to_num(self.history[1] / self.history[0].clamp_min(1e-12), nan=1.0)
        return len(self.terms) * torch.softmax(ratio / self.temperature, dim=0)

    def combine(self, parts, weights, active):
        lam = self.lambdas()
        total = next(iter(parts.values())).new_zeros(())
        for i, name in enumerate(self.terms):
            if name not in parts:
                continue
            total = total + float(lam[i]) * weights[name] * parts[name]
            if self.training and name in active:
                self.sums[i] += float(parts[name].detach())
                self.counts[i] += 1
        return total

    def epoch_end(self) -> None:
        stats = torch.stack([self.sums, self.counts])
        if dist.is_available() and dist.is_initialized():
            stats = stats.to(_device()) if dist.get_backend() == "nccl" else stats
            dist.all_reduce(stats)
            stats = stats.cpu()
        sums, counts = stats[0].to(self.sums), stats[1].to(self.counts)
        means = torch.where(counts > 0, sums / counts.clamp_min(1), self.history[1])
        self.history[0] = self.history[1]
        self.history[1] = means
        self.sums.zero_()
        self.counts.zero_()

    def logged(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.terms, self.lambdas(), strict=True)}


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


#: balancers by short name (a config may also give a ``_target_``)
BALANCERS: dict[str, type[LossBalancer]] = {
    "fixed": FixedWeights,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAveraging,
}


def build_balancer(spec: LossBalancer | str | None) -> LossBalancer:
    """A balancer from an instance, a short name (``fixed``, ``uncertainty``, ``dwa``) or None
    (`FixedWeights`)."""
    if spec is None:
        return FixedWeights()
    if isinstance(spec, LossBalancer):
        return spec
    if isinstance(spec, str) and spec in BALANCERS:
        return BALANCERS[spec]()
    raise ConfigError(
        f"balancing is {spec!r}; give a LossBalancer (_target_) or one of {list(BALANCERS)}"
    )
