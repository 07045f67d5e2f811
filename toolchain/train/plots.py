"""Training curves and per-layer density as one PNG (matplotlib, no screen)."""

from __future__ import annotations

from pathlib import Path

from toolchain.atomic import atomic_path


def plot_training(record: dict, path: Path) -> None:
    from toolchain.scratch import pyplot

    plt = pyplot(Path(path).parent)

    rows = record.get("epochs", [])
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(epochs, [r["loss"] for r in rows], label="training loss")
    ax.set_xlabel("epoch"), ax.set_title("loss"), ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["eps"] for r in rows], color="gray", ls="--", label="train eps")
    ax2.set_ylabel("eps")
    ax = axes[1]
    ax.plot(epochs, [r["val_clean_acc"] for r in rows], label="clean")
    ax.plot(epochs, [r["val_ibp_verified_acc"] for r in rows], label="IBP-verified")
    ax.set_ylim(0, 1), ax.set_xlabel("epoch"), ax.set_title("validation accuracy")
    ax.legend(loc="lower right")
    ax = axes[2]
    dens = record.get("layer_density", {})
    if dens:
        ax.bar([f"L{k}" for k in dens], list(dens.values()))
        ax.set_ylim(0, 1)
    unit = "channels" if record.get("mode") == "structured" else "weights"
    ax.set_title(f"{unit} kept per layer (density {record.get('density', 1.0):.3f})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
