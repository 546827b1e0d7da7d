"""Training recipes as data: every choice a named field, recorded in a run's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

__all__ = ["Recipe", "seed_recipe", "RECIPES", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A training recipe. The defaults are the seed's (SEED_SPEC.md, "Training recipe").

    lr_milestones: epochs (0-indexed) at which the learning rate is multiplied by ``lr_decay``;
    None puts the drops at 1/3 and 2/3 of ``epochs`` (rounded up), so 300 epochs give 100, 200.
    """

    name: str = "seed"
    epochs: int = 300
    batch_size: int = 64
    lr: float = 0.01
    lr_decay: float = 0.1
    lr_milestones: tuple[int, ...] | None = None
    momentum: float = 0.9
    nesterov: bool = True
    # Keras 2's categorical cross-entropy on softmax outputs clips probabilities to
    # [eps, 1 - eps] before the log; 0 gives the unclipped cross-entropy of the logits.
    loss_clip_eps: float = 1e-7
    augment: bool = True
    max_shift: float = 4.0  # pixels, uniform in [-max_shift, max_shift] per axis
    flip_p: float = 0.5
    # The model's own L2 (Keras kernel_regularizer) applies whatever the recipe; see AlexNetConfig.

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, not {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), not {self.momentum}")
        if self.lr_milestones is not None:
            object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

    @property
    def milestones(self) -> tuple[int, ...]:
        if self.lr_milestones is not None:
            return self.lr_milestones
        e = self.epochs
        return (-(-e // 3), -(-2 * e // 3))

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (0-indexed), as the seed's LearningRateScheduler."""
        lr = self.lr
        for m in self.milestones:
            if epoch >= m:
                lr *= self.lr_decay
        return lr

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
        d = dict(d)
        if d.get("lr_milestones") is not None:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        return cls(**d)

    def with_(self, **changes) -> Recipe:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def seed_recipe(**changes) -> Recipe:
    """The seed post's recipe, optionally with some fields changed (e.g. epochs)."""
    return Recipe().with_(**changes)


RECIPES = {"seed": seed_recipe}


def get_recipe(name: str, **changes) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name](**changes)
