"""Training recipes as data: every choice a named field, recorded in a run's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import SettingError, param
from .files import check_fields

__all__ = ["KERAS_EPSILON", "TUNABLE", "Recipe", "seed_recipe", "RECIPES", "get_recipe"]

#: Keras' backend epsilon (``keras.backend.epsilon()``): its categorical cross-entropy on
#: softmax outputs clips the probabilities to [eps, 1 - eps] before the log.
KERAS_EPSILON = 1e-7

#: The fields a parameter of their own name sets on top of a named recipe (``epochs=``,
#: ``--epochs``); the others come with the recipe (or a run's recorded one).
TUNABLE = ("epochs", "batch_size", "lr")


def _named(field: str, value=None) -> str:
    """A field in a message: the parameter that sets it, else the recipe's field."""
    if field in TUNABLE:
        return param(field) if value is None else param(field, value)
    return f"the recipe's {field}" + ("" if value is None else f" {value!r}")


@dataclass(frozen=True)
class Recipe:
    """A training recipe. The defaults are the seed post's (README.md, "The seed recipe").

    lr_milestones: epochs (0-indexed) at which the learning rate is multiplied by ``lr_decay``;
    None puts the drops at 1/3 and 2/3 of ``epochs`` (rounded up), so 300 epochs give 100, 200.
    """

    name: str = "seed"
    epochs: int = 300
    batch_size: int = 64
    lr: float = 0.01
    # "step": lr times lr_decay at each milestone epoch (the seed);
    # "warmup_linear": per step, linear from 0 to lr over lr_warmup_epochs, then linear down
    # to lr * lr_final_fraction at the last step.
    lr_schedule: str = "step"
    lr_decay: float = 0.1
    lr_milestones: tuple[int, ...] | None = None
    lr_warmup_epochs: float = 0.0
    lr_final_fraction: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    # "keras": the velocity carries the learning rate, so a change of lr rescales the momentum
    # buffers (the seed's Keras 2 SGD); "torch": PyTorch's SGD as it is, no rescale.
    momentum_form: str = "keras"
    # Keras 2's categorical cross-entropy on softmax outputs clips probabilities to
    # [eps, 1 - eps] before the log; 0 gives the unclipped cross-entropy of the logits.
    loss_clip_eps: float = KERAS_EPSILON
    label_smoothing: float = 0.0
    augment: bool = True
    max_shift: float = 4.0  # pixels (Keras' shift range 0.125 x 32), U(-max_shift, max_shift)
    flip_p: float = 0.5
    # Weight averaging: an exponential moving average of the weights, updated every step,
    # is what gets evaluated and saved (0 = off).
    ema_decay: float = 0.0
    # Evaluate on the mean of the softmax of each image and its mirror image.
    tta_flip: bool = False
    # The model's own L2 (Keras kernel_regularizer) applies whatever the recipe; see AlexNetConfig.

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("step", "warmup_linear"):
            raise SettingError(
                f"{_named('lr_schedule')} must be 'step' or 'warmup_linear', "
                f"not {self.lr_schedule!r}"
            )
        if self.momentum_form not in ("keras", "torch"):
            raise SettingError(
                f"{_named('momentum_form')} must be 'keras' or 'torch', "
                f"not {self.momentum_form!r}"
            )
        for name in ("ema_decay", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                value = getattr(self, name)
                raise SettingError(f"{_named(name)} must lie in [0, 1), not {value}")
        if self.label_smoothing > 0 and self.loss_clip_eps > 0:
            raise SettingError(
                f"{_named('label_smoothing')} uses the unclipped cross-entropy: set "
                f"{_named('loss_clip_eps')} to 0"
            )
        if self.epochs < 1:
            raise SettingError(f"{_named('epochs')} must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise SettingError(
                f"{_named('batch_size')} must be at least 1, not {self.batch_size}"
            )
        if not self.lr > 0:
            raise SettingError(f"{_named('lr')} must be positive, not {self.lr}")
        if not 0 <= self.momentum < 1:
            raise SettingError(f"{_named('momentum')} must lie in [0, 1), not {self.momentum}")
        if self.lr_milestones is not None:
            object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

    @property
    def milestones(self) -> tuple[int, ...]:
        if self.lr_milestones is not None:
            return self.lr_milestones
        e = self.epochs
        return (-(-e // 3), -(-2 * e // 3))

    @property
    def per_step_lr(self) -> bool:
        return self.lr_schedule != "step"

    def lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate for step ``step`` of epoch ``epoch`` (both 0-indexed).

        The seed's schedule changes only between epochs, as Keras' LearningRateScheduler.
        """
        if self.lr_schedule == "step":
            lr = self.lr
            for m in self.milestones:
                if epoch >= m:
                    lr *= self.lr_decay
            return lr
        t = epoch * steps_per_epoch + step + 1  # steps taken once this one is done
        total = self.epochs * steps_per_epoch
        warm = self.lr_warmup_epochs * steps_per_epoch
        if t <= warm:
            return self.lr * t / warm
        frac = (t - warm) / max(total - warm, 1)
        return self.lr * (1 - frac * (1 - self.lr_final_fraction))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "the recipe") -> Recipe:
        """A recipe from its recorded form; a field of the wrong kind or an unknown field is a
        SettingError naming ``where`` and the field."""
        if not isinstance(d, dict):
            raise SettingError(f"{where} should be an object, not {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise SettingError(f"{where}: unknown recipe fields: {', '.join(sorted(unknown))}")
        kinds = {name: _kind_of(f.default) for name, f in known.items()}
        check_fields(d, kinds, where)
        d = dict(d)
        if d.get("lr_milestones") is not None:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        try:
            return cls(**d)
        except SettingError as e:
            raise SettingError(f"{where}: {e}") from None

    def with_(self, **changes) -> Recipe:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _kind_of(default) -> str:
    """The kind of value a recipe field holds, from its default."""
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "str"
    return "ints?"  # lr_milestones: a list of epochs, or null


def seed_recipe(**changes) -> Recipe:
    """The seed post's recipe, optionally with some fields changed (e.g. epochs)."""
    return Recipe().with_(**changes)


def fast_recipe(**changes) -> Recipe:
    """A recipe for the time to reach the seed's accuracy, on the same networks.

    Large batches (512) at the linearly scaled learning rate (0.01 x batch / 64), a warm-up
    (the networks have no batch norm, so the scaled rate needs one) and a linear decay to
    zero; PyTorch's momentum form, which a per-step schedule needs; label smoothing 0.1;
    an exponential moving average of the weights; flip test-time augmentation. The model's
    own L2 and the seed's shift-and-flip augmentation stay.
    """
    batch_size = changes.get("batch_size") or 512
    # Linear scaling of the seed's rate (0.01 per 64 images), unless a rate is given.
    seed = Recipe()
    base = Recipe(
        name="fast",
        epochs=40,
        batch_size=batch_size,
        lr=seed.lr * batch_size / seed.batch_size,
        lr_schedule="warmup_linear",
        lr_warmup_epochs=2.0,
        lr_final_fraction=0.0,
        momentum_form="torch",
        loss_clip_eps=0.0,
        label_smoothing=0.1,
        ema_decay=0.999,
        tta_flip=True,
    )
    return base.with_(**changes)


RECIPES = {"seed": seed_recipe, "fast": fast_recipe}


def get_recipe(name: str, **changes) -> Recipe:
    """The named recipe with ``changes`` applied (None values leave a field alone)."""
    if name not in RECIPES:
        raise SettingError(f"unknown {param('recipe')} {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name](**{k: v for k, v in changes.items() if v is not None})
