"""Kantorovich–Rubinstein dual estimate of W_1 with a weight-clipped MLP critic."""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch
from torch import Tensor, nn

from .base import DistributionLoss, register_loss


#: critic optimiser name -> factory(parameters, lr); the critic *ascends* the dual objective
CRITIC_OPTIMIZERS: Dict[str, Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    # plain gradient ascent, theta <- theta + lr * grad (KR-dual's Algorithm 1): no momentum, no decay
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.0),
}


class Critic(nn.Module):
    """One-hidden-layer MLP ``f(z) = w2 · σ(W1 z + b1) + b2``."""

    def __init__(self, d: int, hidden: int, generator: torch.Generator, clip: float):
        super().__init__()
        # skip nn.Linear's own initialisation: it would draw from (and advance) the global stream
        self.l1 = nn.utils.skip_init(nn.Linear, d, hidden, device="cpu")
        self.l2 = nn.utils.skip_init(nn.Linear, hidden, 1, device="cpu")
        with torch.no_grad():  # seeded init inside the clipping box
            for prm in self.parameters():
                prm.copy_(torch.empty_like(prm).uniform_(-clip, clip, generator=generator))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z: Tensor) -> Tensor:
        return self.l2(self.act(self.l1(z))).squeeze(-1)

    @torch.no_grad()
    def clip_(self, clip: float) -> None:
        for prm in self.parameters():
            prm.clamp_(-clip, clip)


@register_loss("krdual")
class KRDual(DistributionLoss):
    r"""W_1 estimated through the Kantorovich–Rubinstein dual with a clipped MLP critic.

    .. math::
        \widehat{W}_1(\alpha, \beta) = \max_{f \in \mathcal{F}_c} \sum_i a_i f(x_i) - \sum_j b_j f(y_j)

    where :math:`\mathcal{F}_c` are one-hidden-layer MLPs whose weights lie in
    :math:`[-c, c]` (``clip``): every such network is Lipschitz with a constant bounded by
    the clipping box, so the value is W_1 up to that constant — a *scaled* estimate, good for
    comparing and minimising, not an absolute W_1.

    At each call the critic is trained ``steps`` times by gradient ascent (``critic_optimizer``,
    ``lr``) on the detached samples, its weights and biases clipped to ``[-clip, clip]`` after
    every step; then the value is returned, differentiable in ``y`` (and ``x``, ``a``, ``b``) with
    the critic frozen.

    ``warm_start=False`` (the KR-dual paper's Algorithm 1, "Initialize f_θ" inside the loops)
    builds a **fresh** critic at every call, its weights drawn U(-clip, clip) from the loss's own
    random stream (a CPU generator seeded by ``seed``, carried in ``state_dict()``): consecutive
    calls start from different critics, and the same ``seed`` and sequence of calls give the same
    critics on every run and device. ``True`` keeps training one critic across calls (its first
    initialisation is the same draw).

    Parameters
    ----------
    hidden : int
        Hidden width (default 128).
    clip : float
        Clipping bound ``c`` (default 0.01).
    steps : int
        Critic updates per call (default 100, as in the paper).
    lr : float
        Critic learning rate (default 1e-3, the paper's η₂).
    warm_start : bool
        Keep the critic between calls (default False).
    seed : int
        Seed of the stream the critic initialisations are drawn from.
    critic_optimizer : {"adam", "sgd"}
        ``"adam"`` (default; torch's Adam) or ``"sgd"``: plain gradient ascent
        :math:`\theta \leftarrow \theta + \mathrm{lr}\,\nabla_\theta`, no momentum, as the paper's
        Algorithm 1 writes the update (:data:`CRITIC_OPTIMIZERS`).

    References
    ----------
    .. [1] M. Arjovsky, S. Chintala, L. Bottou. Wasserstein generative adversarial networks. ICML 2017.
    .. [2] M. Li, J. Xue, Y. Shi. Dataset distillation via Kantorovich–Rubinstein dual of
       Wasserstein distance.
    """

    def __init__(self, hidden: int = 128, clip: float = 0.01, steps: int = 100, lr: float = 1e-3,
                 warm_start: bool = False, seed: int = 0, critic_optimizer: str = "adam"):
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip!r}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not isinstance(critic_optimizer, str) or critic_optimizer not in CRITIC_OPTIMIZERS:
            raise ValueError(f"critic_optimizer must be one of {sorted(CRITIC_OPTIMIZERS)}, got {critic_optimizer!r}")
        self.hidden, self.clip, self.steps, self.lr = hidden, clip, steps, lr
        self.warm_start, self.seed, self.critic_optimizer = warm_start, seed, critic_optimizer
        # the critics' initialisations: one stream, advanced by every fresh critic
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self.critic = None
        self._opt = None

    def _config(self):
        return {"hidden": self.hidden, "clip": self.clip, "steps": self.steps, "lr": self.lr,
                "warm_start": self.warm_start, "critic_optimizer": self.critic_optimizer}

    def _make_critic(self, d: int, like: Tensor, generator: torch.Generator) -> None:
        """A critic drawn from ``generator`` and its optimiser."""
        with torch.device("cpu"):  # initialised on the CPU: the same critic on every device
            critic = Critic(d, self.hidden, generator, self.clip)
        self.critic = critic.to(dtype=like.dtype, device=like.device)
        self._opt = CRITIC_OPTIMIZERS[self.critic_optimizer](self.critic.parameters(), self.lr)

    def get_extra_state(self):
        """Adds the warm-started critic's shape and its optimiser state (the weights themselves
        are in ``state_dict`` as ``critic.*``)."""
        state = super().get_extra_state()
        if self.critic is not None:
            state["critic"] = {"in_features": self.critic.l1.in_features, "dtype": str(self.critic.l1.weight.dtype),
                               "optimizer": self._opt.state_dict()}
        return state

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        critic = dict(state or {}).get("critic")
        if critic is not None:  # rebuild the critic so load_state_dict can fill its weights next
            dtype = getattr(torch, critic["dtype"].replace("torch.", ""))
            # weights from a throwaway generator (they are overwritten): the restored stream stays put
            self._make_critic(int(critic["in_features"]), torch.empty(0, dtype=dtype, device="cpu"),
                              torch.Generator(device="cpu"))
            self._opt.load_state_dict(critic["optimizer"])

    def _loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        c = self.critic
        if (self.warm_start and c is not None and c.l1.in_features == x.shape[1] and c.l1.weight.dtype == x.dtype
                and c.l1.weight.device != x.device):
            # a warm critic restored from a (CPU) checkpoint: move it, and its Adam state with it
            # (Optimizer.load_state_dict casts the state to its parameters' device)
            c.to(x.device)
            self._opt.load_state_dict(self._opt.state_dict())
        if (not self.warm_start or c is None or c.l1.in_features != x.shape[1]
                or c.l1.weight.dtype != x.dtype or c.l1.weight.device != x.device):
            self._make_critic(x.shape[1], x, self._generator)
        xd, yd, ad, bd = x.detach(), y.detach(), a.detach(), b.detach()
        with torch.enable_grad():
            for _ in range(self.steps):
                self._opt.zero_grad(set_to_none=True)
                gap = ad @ self.critic(xd) - bd @ self.critic(yd)
                (-gap).backward()  # ascent on the dual objective
                self._opt.step()
                self.critic.clip_(self.clip)
        for prm in self.critic.parameters():
            prm.requires_grad_(False)
        try:
            return a @ self.critic(x) - b @ self.critic(y)
        finally:
            for prm in self.critic.parameters():
                prm.requires_grad_(True)

