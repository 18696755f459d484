"""The Gaussian method object of the registry: ``certify --method gaussian``.

:data:`GAUSSIAN` implements :class:`~pacbound.certify.method.Method`:

* ``options(params)`` / ``options_from_report(opts)``: :class:`GaussianOptions`;
* ``run(inputs, options)``: choose Q and certify it (:func:`certify_gaussian`); the
  certificate's ``hypothesis`` is the posterior file's bytes — the CLI writes them to
  ``--save-posterior`` when given and records ``inputs.posterior`` with
  :meth:`HypothesisFile.record`;
* ``rederive(inputs, options, posterior_bytes)``: load Q from the file, re-derive the prior
  mean (zero, the ``--init`` file, or the data prior retrained on S_prior) and the split,
  build the network under the same invariant checks, and run the same certify phase
  (:func:`certify_hypothesis`). The results then equal ``run``'s except the
  :attr:`GaussianMethod.choice_fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from pacbound.certify.common import Timer
from pacbound.certify.gaussian import (
    CHOICE_KEYS,
    CertifyInputs,
    GaussianHypothesis,
    certify_gaussian,
    certify_hypothesis,
    prepare_network,
)
from pacbound.certify.gaussian_certificate import GaussianCertificate
from pacbound.certify.gaussian_checkpoint import CheckpointInputs
from pacbound.certify.gaussian_facts import gaussian_facts
from pacbound.certify.gaussian_monte_carlo import monte_carlo_warning
from pacbound.certify.gaussian_options import (
    GaussianOptions,
    options_from_params,
    options_from_report,
)
from pacbound.certify.gaussian_prior import derive_prior, prior_warning
from pacbound.certify.method import (
    Certificate,
    Facts,
    HypothesisFile,
    MethodRun,
    OptionRule,
    RunInputs,
)
from pacbound.errors import InvalidInputError
from pacbound.posterior.families import FAMILIES
from pacbound.posterior.io import SavedPosterior, read_posterior
from pacbound.posterior.layers import default_max_memory
from pacbound.posterior.network import Sampler, auto_sampler
from pacbound.posterior.normalization import to_channel_affine


def _trained_families() -> str:
    return " or ".join(name for name, fam in FAMILIES.items() if fam.trained)


PRIOR_DATA = OptionRule(
    "--prior data",
    lambda p: p.get("prior") == "data",
    lambda p: f"--prior {p.get('prior')}",
)
TRAINED_POSTERIOR = OptionRule(
    f"--posterior {_trained_families()}",
    lambda p: p.get("posterior") in FAMILIES and FAMILIES[p["posterior"]].trained,
    lambda p: f"--posterior {p.get('posterior')}",
)
#: ``--init`` is shared with other methods (the CLI composes "--method gaussian with --prior
#: init or data, or --method subspace").
PRIOR_NOT_ZERO = OptionRule(
    "--prior init or data",
    lambda p: p.get("prior") != "zero",
    lambda p: f"--prior {p.get('prior')}",
)

PARAMETERS: dict[str, OptionRule | None] = {
    **dict.fromkeys(
        (
            "prior",
            "prior_scales",
            "posterior",
            "mc_passes",
            "mc_draws",
            "mc_delta",
            "save_posterior",
            "sampler",
            "max_memory",
        )
    ),
    **dict.fromkeys(
        ("prior_fraction", "prior_epochs", "prior_lr", "prior_lr_schedule", "prior_augment_shift"),
        PRIOR_DATA,
    ),
    **dict.fromkeys(
        (
            "posterior_epochs",
            "posterior_optimizer",
            "posterior_lr",
            "keep_best",
            "sigma_lr",
            "objective",
            "p_min",
        ),
        TRAINED_POSTERIOR,
    ),
    "init": PRIOR_NOT_ZERO,
}


class GaussianMethod:
    """PAC-Bayes-kl for a Gaussian posterior Q around the checkpoint (see module doc)."""

    name: str = "gaussian"
    description: str = "PAC-Bayes for a Gaussian posterior"
    hypothesis: HypothesisFile = HypothesisFile("posterior", "--save-posterior")
    parameters: Mapping[str, OptionRule | None] = PARAMETERS
    #: how Q was chosen (the σ search and the training curves): not redone by verify.
    #: Everything else is re-derived and compared, also the data prior's own errors
    #: (``prior.error``: the prior is retrained on S_prior) and the split.
    choice_fields: tuple[str, ...] = tuple(f"posterior.{key}" for key in CHOICE_KEYS)
    needs_checkpoint: bool = True
    float_rel_tol: float = 0.0  # bit for bit

    def options(self, params: Mapping[str, Any]) -> GaussianOptions:
        return options_from_params(params)

    def options_from_report(self, recorded: Mapping[str, Any]) -> GaussianOptions:
        return options_from_report(recorded)

    def run(self, inputs: RunInputs, options: GaussianOptions) -> MethodRun:
        options = _resolve_sampler(options, inputs)
        warnings: list[str] = []
        init_state = _init_state(inputs, warnings)
        cert = certify_gaussian(
            inputs.loaded.module,
            inputs.data.x,
            inputs.data.y,
            options=options,
            init_state=init_state,
            fixed_buffers=reference_buffers(inputs, init_state, warnings),
            heldout=None if inputs.heldout is None else (inputs.heldout.x, inputs.heldout.y),
            checkpoint_inputs=_checkpoint_inputs(inputs),
            device=inputs.device,
            progress=inputs.progress,
        )
        records: dict[str, Any] = {}
        if inputs.init is not None:
            from pacbound.io import sha256_file

            records["init"] = {"path": str(inputs.init), "sha256": sha256_file(inputs.init)}
        poor_prior = prior_warning(cert.prior, cert.verdict.chance_error)
        if poor_prior is not None:
            warnings.append(poor_prior)
        results = cert.to_dict()
        per_batch = monte_carlo_warning(results, options)
        if per_batch is not None:
            warnings.append(per_batch)
        return MethodRun(
            certificate=_certificate(cert),
            options=self.record_options(cert.options),  # --mc-draws as resolved
            inputs=records,
            warnings=tuple(warnings),
        )

    def rederive(
        self, inputs: RunInputs, options: GaussianOptions, hypothesis: bytes
    ) -> Certificate:
        saved = read_posterior(hypothesis)
        model, x, y = inputs.loaded.module, inputs.data.x, inputs.data.y
        _check_file_matches(saved, model, options)
        init_state = _init_state(inputs, [])
        timer = Timer()
        network, num_outputs = prepare_network(
            model,
            x,
            options=options,
            fixed_buffers=reference_buffers(inputs, init_state, []),
            device=inputs.device,
        )
        FAMILIES[saved.family].load(network, saved.state)
        with timer.phase("prior"):
            prior = derive_prior(
                model,
                x,
                y,
                options=options,
                init_state=init_state,
                device=inputs.device,
                progress=inputs.progress,
            )
        _check_file_prior(saved, prior.means)
        heldout = None if inputs.heldout is None else (inputs.heldout.x, inputs.heldout.y)
        cert = certify_hypothesis(
            GaussianHypothesis(network, saved.family, prior),
            CertifyInputs(model, x, y, num_outputs, heldout, _checkpoint_inputs(inputs)),
            options=options,
            device=inputs.device,
            timer=timer,
            progress=inputs.progress,
        )
        if cert.prior_scale != saved.prior_scale:
            raise InvalidInputError(
                f"the posterior file's prior scale {saved.prior_scale!r} is not the grid value "
                f"{cert.prior_scale!r} that minimises the KL (prior.scale (file))"
            )
        return _certificate(cert)

    def record_options(self, options: GaussianOptions) -> dict[str, Any]:
        block = {"method": self.name, **options.to_dict(), "delta": options.delta}
        if options.mc_draws == "auto":  # resolved against the network
            block["mc_draws"] = None
        return block if options.sampler is not None else {**block, "sampler": None}

    def facts(self, results: Mapping[str, Any]) -> Facts:
        return gaussian_facts(results)


#: The registry entry (``pacbound.certify.registry.METHODS["gaussian"]``).
GAUSSIAN = GaussianMethod()


def _certificate(cert: GaussianCertificate) -> Certificate:
    return Certificate(
        method=GAUSSIAN.name,
        bound=cert.certificate,
        budget=cert.budget,
        verdict=cert.verdict,
        results=cert.to_dict(),
        hypothesis=cert.hypothesis_bytes(),
        timings=dict(cert.timings),
    )


def _resolve_sampler(options: GaussianOptions, inputs: RunInputs) -> GaussianOptions:
    """``--sampler auto``: functional for a ``.pt2`` program, else
    :func:`~pacbound.posterior.network.auto_sampler` of the model as the posterior sees it
    (eval-mode BatchNorm as its per-channel affine), probed on a few inputs;
    ``--max-memory auto``: the default fraction of the device's memory. Both recorded as
    resolved."""
    if options.max_memory is None:
        options = replace(options, max_memory=default_max_memory(inputs.device))
    if options.sampler is not None:
        return options
    if inputs.loaded.provenance.checkpoint.format == "pt2":
        return replace(options, sampler=Sampler.FUNCTIONAL)
    model = to_channel_affine(inputs.loaded.module)
    probe = inputs.data.x[: min(8, options.batch_size)]
    sampler = auto_sampler(model, probe, batch_independence=options.check_deterministic)
    return replace(options, sampler=sampler)


def _checkpoint_inputs(inputs: RunInputs) -> CheckpointInputs | None:
    """Inputs never used for anything else for the checkpoint's own certificate:
    ``--unlabeled``, or else the held-out set's inputs."""
    if inputs.unlabeled is not None:
        return CheckpointInputs("unlabeled", inputs.unlabeled.x)
    if inputs.heldout is not None:
        return CheckpointInputs("heldout", inputs.heldout.x)
    return None


def _init_state(inputs: RunInputs, warnings: list[str]) -> dict[str, Tensor] | None:
    """The ``--init`` weights, checked against the model (a trained copy is refused, a near
    copy warned about in ``warnings``), or ``None`` without ``--init``."""
    if inputs.init is None:
        return None
    from pacbound.io import load_init_state, refuse_trained_init
    from pacbound.io.models import near_trained_init

    state = load_init_state(
        inputs.init, inputs.loaded, unsafe_allow_pickle=inputs.unsafe_allow_pickle
    )
    refuse_trained_init(state, inputs.loaded)
    near = near_trained_init(state, inputs.loaded)
    if near is not None:
        warnings.append(near)
    return state


def reference_buffers(
    inputs: RunInputs, init_state: dict[str, Tensor] | None, warnings: list[str]
) -> dict[str, Tensor] | None:
    """The data-independent values every buffer must equal: the --init file's, and for
    buffers it does not hold (non-persistent ones) a fresh build of the architecture
    (``None`` when neither exists: then any buffer is refused). An --init whose buffers
    differ from the fresh build gets a warning appended to ``warnings``: the file is trusted
    to have been saved before training, and buffers rarely change between a build and its
    init."""
    reference: dict[str, Tensor] = {}
    provenance = inputs.loaded.provenance
    if provenance.architecture is not None:
        from pacbound.io.architectures import build_module, parse_arch

        fresh = build_module(parse_arch(provenance.architecture), provenance.arch_kwargs or {})
        reference = {name: b.detach() for name, b in fresh.named_buffers()}
    if init_state is not None and reference:
        differ = [
            name
            for name, value in reference.items()
            if name in init_state
            and (
                value.shape != init_state[name].shape
                or not torch.equal(value.cpu(), init_state[name].detach().cpu().to(value.dtype))
            )
        ]
        if differ:
            warnings.append(
                f"the --init file's buffers {', '.join(differ[:4])} differ from a fresh build "
                "of --arch; they are trusted as fixed before training: make sure they hold "
                "no data"
            )
    if init_state is not None:
        reference.update(init_state)
    return reference or None


def _check_file_matches(
    saved: SavedPosterior, model: torch.nn.Module, options: GaussianOptions
) -> None:
    # the parameters the posterior covers (eval-mode BatchNorm as NAME.scale, NAME.shift)
    names = tuple(name for name, _ in to_channel_affine(model).named_parameters())
    if names != saved.names:
        raise InvalidInputError(
            f"the posterior file's parameters {list(saved.names)[:4]} do not match the "
            f"model's {list(names)[:4]}"
        )
    if saved.family != options.posterior:
        raise InvalidInputError(
            f"the posterior file holds a {saved.family} posterior, the report's options "
            f"say {options.posterior}"
        )


def _check_file_prior(saved: SavedPosterior, means: list[Tensor]) -> None:
    """The file's prior mean must be the re-derived one (which the KL is computed with)."""
    for name, mean in zip(saved.names, means, strict=True):
        stored = saved.prior_mu[name]
        if not torch.equal(mean.detach().cpu().to(stored.dtype), stored):
            raise InvalidInputError(
                f"the posterior file's prior mean ({name}) is not the one the report's options "
                "re-derive (prior.mean (file)); a data-dependent prior is retrained bit for bit "
                "only with the same torch version, device and thread count"
            )
