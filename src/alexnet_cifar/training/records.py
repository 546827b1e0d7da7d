"""What a training run records of itself, built from its :class:`~.run.Run`: config.json
(everything needed to rerun it and to know what it was), the checkpoint's contents,
result.json (its final and best accuracy, time, device, classes) and model.pt."""

from __future__ import annotations

import sys
import time

from ..engine.evaluate import EvalResult
from ..files import MODEL_FILE
from ..provenance import code_source, versions
from .checkpoint import save_model_file
from .resume import kept_settings_of
from .run import Run
from .runlog import METRIC_COLUMNS

__all__ = [
        "best_words",
    "checkpoint_state",
    "engine_fields",
    "run_config",
    "run_result",
    "save_final_model",
    "stopped_result",
]


def run_config(t: Run) -> dict:
    """config.json: everything needed to rerun the run and to know what it was."""
    o = t.opts
    return {
        "model": o.model,
        "model_config": t.model.config.to_dict(),
        "recipe": o.recipe.to_dict(),
        "seed": o.seed,
        "limit_train": o.limit_train,
        "limit_test": o.limit_test,
        **({"val_split": o.val_split, "n_val": int(len(t.y_val))} if o.val_split else {}),
        "num_classes": o.num_classes,
        "classes": list(t.classes),
        **kept_settings_of(o),
        "device": str(t.device),
        **engine_fields(t),
        "checkpoint_every": o.checkpoint_every,
        "world_size": t.dist.world_size,
        "n_train": int(t.engine.n),
        "n_test": int(len(t.y_test)),
        "versions": versions(t.device),
        "code": code_source(),  # the version, and the git commit or a digest of the files
        "command": list(sys.argv if o.command is None else o.command),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def engine_fields(t: Run) -> dict:
    """The engine as asked (``engine_requested``, the options given: what a resume reuses),
    as used (``engine`` and ``engine_used``: the rung of the ladder that runs, every auto
    resolved) and each fallback from the resolved request with its reason."""
    record = t.engine.engine_record()
    return {
        "engine": record["used"],
        "engine_requested": t.opts.engine.to_dict(),
        "engine_resolved": record["requested"],
        "engine_used": record["used"],
        "engine_fallbacks": record["fallbacks"],
    }


def run_result(t: Run, ev: EvalResult, best_ev: EvalResult | None = None) -> dict:
    """result.json: the final and best test accuracy, time, device, per-class results; with a
    split, the test set on the final weights (``ev``) and on the best epoch's (``best_ev``)."""
    final = t.history[-1]
    best = max(t.history, key=lambda r: r["val_accuracy"])
    result = {
        "model": t.opts.model,
        "run_dir": str(t.out),
        "epochs": final["epoch"],
        "final": {k: final[k] for k in METRIC_COLUMNS if k != "epoch"},
        "test_accuracy": final["val_accuracy"],
        "test_loss": final["val_loss"],
        "best_test_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "train_seconds": round(sum(r["seconds"] for r in t.history), 3),
        "params": sum(p.numel() for p in t.model.parameters()),
        "device": str(t.device),
        "world_size": t.dist.world_size,
        "recipe": t.opts.recipe.name,
        "compile_seconds": round(t.engine.setup_seconds, 3),
        **engine_fields(t),
        "model_file": str(t.out / MODEL_FILE),
        # the final model on the test set: what a report needs without the data
        "classes": ev.classes,
        "per_class_accuracy": ev.to_dict()["per_class_accuracy"],
        "confusion_matrix": ev.confusion.tolist(),
    }
    if best_ev is not None:
        result.update(
            test_accuracy=ev.accuracy,
            test_loss=ev.loss,
            best_test_accuracy=best_ev.accuracy,
            val_split=t.opts.val_split,
            best_val_accuracy=best["val_accuracy"],
            test_accuracy_final=ev.accuracy,
            test_accuracy_at_best_val=best_ev.accuracy,
            test_loss_at_best_val=best_ev.loss,
        )
    return result


def stopped_result(t: Run) -> dict:
    """What a run stopped by ``stop_after`` returns (it writes no result.json: it is
    unfinished): where it stands, ``epoch E of N``, and its last and best epochs on the
    images it evaluates each epoch (the validation images with a split, else the test set)."""
    final, epochs = t.history[-1], t.opts.recipe.epochs
    done, stop = final["epoch"], t.opts.stop_after
    best = max(t.history, key=lambda r: r["val_accuracy"])
    lowest = min(t.history, key=lambda r: r["val_loss"])
    note = f"stopped after epoch {done} of {epochs}: unfinished, resume to continue"
    if stop is not None and stop < done:
        note += f" (nothing trained: the run was already past epoch {stop})"
    return {
        "model": t.opts.model,
        "run_dir": str(t.out),
        "status": "stopped",
        "epochs": done,
        "epochs_planned": epochs,
        "note": note,
        "held_out": "validation" if t.opts.val_split else "test",
        "final": {k: final[k] for k in METRIC_COLUMNS if k != "epoch"},
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "lowest_val_loss": lowest["val_loss"],
        "lowest_val_loss_epoch": lowest["epoch"],
        "train_seconds": round(sum(r["seconds"] for r in t.history), 3),
        "device": str(t.device),
        "world_size": t.dist.world_size,
        "recipe": t.opts.recipe.name,
    }


def best_words(result: dict) -> str:
    """What "best" means for a run, from its result.json: with a validation split
    ``best validation accuracy X at epoch k; test accuracy at that epoch Y; final test accuracy
    Z``; without one, the best epoch was chosen by the test set itself, which says so. A run
    stopped before its end says so, and what it has seen so far."""
    if result.get("status") == "stopped":
        held, last = result["held_out"], result["final"]
        return (
            f"stopped after epoch {result['epochs']} of {result['epochs_planned']} (unfinished); "
            f"{held} accuracy {last['val_accuracy']:.4f}, loss {last['val_loss']:.4f} at its "
            f"last epoch; lowest {held} loss {result['lowest_val_loss']:.4f} at epoch "
            f"{result['lowest_val_loss_epoch']}"
        )
    final = f"final test accuracy {result['test_accuracy']:.4f}"
    if result.get("val_split"):
        return (
            f"best validation accuracy {result['best_val_accuracy']:.4f} at epoch "
            f"{result['best_epoch']}; test accuracy at that epoch "
            f"{result['test_accuracy_at_best_val']:.4f}; {final}"
        )
    return (
        f"best test accuracy {result['best_test_accuracy']:.4f} at epoch {result['best_epoch']} "
        f"(chosen by the test set, optimistic); {final}"
    )


def checkpoint_state(
    t: Run, epoch: int, step: int, rng: dict, epoch_so_far: dict | None
) -> dict:
    """Everything a resume needs: weights, optimiser, random states, where the run is (epoch,
    step, the epoch's totals so far), its history, identity and engine settings."""
    state = {
        "model_name": t.opts.model,
        "model_config": t.model.config.to_dict(),
        "run_identity": t.run_identity(),
        "epoch": epoch,
        "step": step,
        **t.engine.state_dict(),
        "rng": rng,
        "partial": epoch_so_far,  # the interrupted epoch's totals (EpochSums), or None
        "history": t.history,
        "engine_requested": t.opts.engine.to_dict(),
        "settings": kept_settings_of(t.opts),  # for a resume when config.json is gone
    }
    if t.best.state is not None:
        state["best_val"] = t.best.state
    return state


def save_final_model(t: Run, result: dict) -> None:
    """model.pt: the weights that were evaluated (the weight average, where the recipe keeps
    one), with what it takes to rebuild the model."""
    with t.engine.evaluated_weights():
        state = {k: v.detach().cpu() for k, v in t.model.state_dict().items()}
    meta = {
        "model_name": t.opts.model,
        "epochs": result["epochs"],
        "run_identity": t.run_identity(),
        "classes": list(t.classes),
    }
    save_model_file(t.out / MODEL_FILE, t.model.config.to_dict(), state, meta)
