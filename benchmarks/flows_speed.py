"""Speed (and the latent flow's estimate precision) of the flow models at realistic size.

    python benchmarks/flows_speed.py [--pixels 7514] [--batch 256] [--threads 2]
                                     [--kinds cannon,...] [--precision]

For every model kind with default settings: parameter count, ``initialize_from_data`` time,
forward+backward time of ``loss`` per batch (training), the implied time of one epoch over
20,000 spectra, scoring throughput of ``observed_log_prob`` under ``torch.no_grad``
(spectra/s) and sampling throughput. float32; timings are medians of repeated runs (this VM
is noisy: run it twice). Data: a linear-Gaussian mock with a label-quadratic mean, six
latent directions (one bimodal), intrinsic scatter, S/N 30-300 per star and 3% masked pixels.

``--blocks`` compares, for factor analysis and the latent flow (k = 16) with and without
label-dependent loadings, scoring 1,024 stars in one call evaluated as one block against the
model's own row blocks (``SpectralModel.block_rows`` without gradients), and a training step
of 256 stars both ways (``--blocks-only`` skips the table above).

``--precision`` then trains the default latent-flow model for a few hundred Adam steps on that
mock (enough for its prior to become non-Gaussian) and reports, for several n_importance and
proposal refinements, the spread of 20 repeated ``log_prob`` estimates per star next to the
reported delta-method standard error, the effective sample size and the scoring speed.
Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from stellarflow.flows import MODEL_KINDS, build_model


def _timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls after one warm-up (robust to a noisy VM)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mock_spectra(
    n_stars: int, n_pixels: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """flux, ivar (0 = masked, flux NaN there) and labels (TEFF, LOGG, FE_H) of a mock."""
    g = generator
    labels = torch.randn(n_stars, 3, generator=g)
    physical = labels * torch.tensor([300.0, 0.5, 0.3]) + torch.tensor([4800.0, 2.5, -0.2])
    i, j = torch.triu_indices(3, 3)
    design = torch.cat([torch.ones(n_stars, 1), labels, labels[:, i] * labels[:, j]], dim=1)
    depth = 0.3 * torch.rand(n_pixels, generator=g) ** 4  # mostly continuum, some lines
    theta = depth * torch.randn(design.shape[1], n_pixels, generator=g) * 0.2
    theta[0] = 1 - depth
    loading = depth[:, None] * torch.randn(n_pixels, 6, generator=g) * 0.3
    z = torch.randn(n_stars, 6, generator=g)
    z[:, 0] = torch.where(torch.rand(n_stars, generator=g) < 0.5, -1.0, 1.0) + 0.4 * z[:, 0]
    tau = 0.002 + 0.2 * depth * torch.rand(n_pixels, generator=g) * 0.05
    flux = design @ theta + z @ loading.T + tau * torch.randn(n_stars, n_pixels, generator=g)
    snr = 30 + 270 * torch.rand(n_stars, 1, generator=g)
    sigma = torch.ones(1, n_pixels) / snr
    flux = flux + sigma * torch.randn(n_stars, n_pixels, generator=g)
    ivar = (1 / sigma**2).expand(n_stars, n_pixels).clone()
    masked = torch.rand(n_stars, n_pixels, generator=g) < 0.03
    ivar[masked] = 0
    flux[masked] = float("nan")
    return flux, ivar, physical


def speed_table(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(0)
    b = args.batch
    flux, ivar, labels = mock_spectra(4 * b, args.pixels, generator)
    print(f"n_pixels={args.pixels} batch={b} threads={torch.get_num_threads()} float32")
    print(
        f"{'model':<16}{'params':>11}{'init s':>8}{'train s/batch':>15}{'train spec/s':>14}"
        f"{'epoch 20k s':>13}{'score spec/s':>14}{'sample spec/s':>15}"
    )
    for kind in args.kinds.split(","):
        model = build_model(kind, args.pixels, 3)
        n_params = sum(p.numel() for p in model.parameters())
        start = time.perf_counter()
        model.initialize_from_data(flux, ivar, labels)
        init = time.perf_counter() - start
        batch = (flux[:b], ivar[:b], labels[:b])

        def train_step(model: torch.nn.Module = model, batch: tuple = batch) -> None:
            model.zero_grad()
            model.loss(*batch).backward()

        def score(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                for i in range(0, flux.shape[0], b):
                    model.observed_log_prob(flux[i : i + b], ivar[i : i + b], labels[i : i + b])

        def sample(model: torch.nn.Module = model, batch: tuple = batch) -> None:
            model(batch[2]).sample()

        t_train = _timeit(train_step, args.repeat)
        t_score = _timeit(score, max(1, args.repeat // 2)) / flux.shape[0]
        t_sample = _timeit(sample, max(1, args.repeat // 2)) / b
        print(
            f"{kind:<16}{n_params:>11,}{init:>8.2f}{t_train:>15.3f}{b / t_train:>14,.0f}"
            f"{20000 / b * t_train:>13.0f}{1 / t_score:>14,.0f}{1 / t_sample:>15,.0f}"
        )


BLOCK_SPECS = [
    ("factor_analysis", {"n_latent": 16}),
    ("factor_analysis", {"n_latent": 16, "label_dependent_loading": True}),
    ("latent_flow", {"n_latent": 16}),
    (
        "latent_flow",
        {"n_latent": 16, "label_dependent_loading": True, "label_dependent_variance": True},
    ),
]


def block_study(args: argparse.Namespace) -> None:
    """Scoring and training throughput with the model's row blocks vs one block."""
    generator = torch.Generator().manual_seed(0)
    flux, ivar, labels = mock_spectra(1024, args.pixels, generator)
    print(f"\nrow blocks: 1,024 stars per call, n_pixels={args.pixels}, float32")
    print(f"{'model':<60}{'rows':>6}{'score one / blocks':>24}{'train one / blocks':>24}")
    for kind, options in BLOCK_SPECS:
        model = build_model(kind, args.pixels, 3, **options)
        model.initialize_from_data(flux[:512], ivar[:512], labels[:512])
        rows = model.block_rows()
        rates = {}
        # Instance attributes shadow the method: one block, then the inference block size
        # for scoring *and* training (the model itself trains in one block when its loading
        # is shared; this measures whether that choice is right).
        for name, size in (("one", 1 << 62), ("blocks", rows)):
            model.block_rows = lambda *a, size=size: size

            def score(model: torch.nn.Module = model) -> None:
                with torch.no_grad():
                    model.observed_log_prob(flux, ivar, labels)

            def train_step(model: torch.nn.Module = model) -> None:
                model.zero_grad()
                model.loss(flux[:256], ivar[:256], labels[:256]).backward()

            rates[name] = (
                1024 / _timeit(score, args.repeat),
                256 / _timeit(train_step, args.repeat),
            )
        spec = kind + ":" + ";".join(f"{k}={v}" for k, v in options.items())
        one, blocked = rates["one"], rates["blocks"]
        print(
            f"{spec:<60}{rows:>6}{one[0]:>12,.0f}{blocked[0]:>12,.0f}"
            f"{one[1]:>12,.0f}{blocked[1]:>12,.0f}"
        )


def precision_study(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(1)
    n_train, n_test, b = 4096, 256, args.batch
    flux, ivar, labels = mock_spectra(n_train + n_test, args.pixels, generator)
    model = build_model("latent_flow", args.pixels, 3)
    model.initialize_from_data(flux[:n_train], ivar[:n_train], labels[:n_train])
    optimizer = torch.optim.Adam(model.parameter_groups(1e-2))
    start = time.perf_counter()
    steps = args.steps
    for step in range(steps):
        i = (step * b) % n_train
        optimizer.zero_grad()
        model.loss(flux[i : i + b], ivar[i : i + b], labels[i : i + b]).backward()
        optimizer.step()
    print(f"\nlatent_flow precision: trained {steps} steps in {time.perf_counter() - start:.0f} s")
    test = (flux[n_train:], ivar[n_train:], labels[n_train:])
    default = model.options.n_importance
    variants = [(0, default), (0, 2 * default), (0, 4 * default), (1, default), (2, default)]
    model.eval()
    for refinements, m in variants:
        variant = build_model(**{**model.config, "proposal_refinements": refinements})
        variant.load_state_dict(model.state_dict())
        variant.eval()
        with torch.no_grad():
            estimates = [
                variant.log_prob_estimate(*test, m, torch.Generator().manual_seed(seed))
                for seed in range(20)
            ]
            timing = _timeit(lambda v=variant, m=m: v.log_prob_estimate(*test, m), 5)
        values = torch.stack([e.log_prob for e in estimates])
        spread = values.std(0)
        reported = torch.stack([e.std_error for e in estimates]).mean(0)
        ess = torch.stack([e.ess for e in estimates]).mean(0)
        print(
            f"refinements={refinements} n_importance={m:>3}: std over 20 repeats, nats/star:"
            f" median {spread.median():.3f}, 95% {spread.quantile(0.95):.3f},"
            f" max {spread.max():.3f} | reported std_error median {reported.median():.3f}"
            f" | ESS median {ess.median():.1f} of {m} | mean {values.mean():.2f} nats/star"
            f" | {n_test / timing:,.0f} spectra/s"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=7514)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--kinds", default=",".join(MODEL_KINDS))
    parser.add_argument("--precision", action="store_true")
    parser.add_argument("--blocks", action="store_true", help="row blocks vs one block")
    parser.add_argument("--blocks-only", action="store_true", help="only the --blocks study")
    parser.add_argument("--steps", type=int, default=300, help="training steps for --precision")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.kinds and not args.blocks_only:
        speed_table(args)
    if args.blocks or args.blocks_only:
        block_study(args)
    if args.precision:
        precision_study(args)


if __name__ == "__main__":
    main()
