"""Differential privacy: the SLA's section, the aggregator's wrapper, the learner's mods, the accountant."""

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.supercore.task_identity import TaskIdentity
from pydantic import ValidationError

from aggregator.privacy import update_norm
from aggregator.server_app import RoundHooks
from aggregator.strategies import build_strategy
from flops.build import BuildResult
from flops.differential_privacy import UNIT_WEIGHT_KEY, DifferentialPrivacy, privacy_spent
from flops.sla import ProjectSLA
from flops.training import SPEC_RUN_CONFIG_KEY, TrainingSpec
from flops_manager.models import Project
from flops_manager.stages.deploy import training_spec
from learner.privacy import differential_privacy_mod

GLOBAL = [np.zeros((100, 50)), np.zeros(50)]
LEARNERS = 4


@pytest.fixture(autouse=True)
def app_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in an app process, which `Message(...)` reads."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class Nodes:
    """The one thing a strategy's `configure_train` asks of a grid: the connected nodes."""

    def get_node_ids(self) -> list[int]:
        return list(range(1, LEARNERS + 1))


def spec(strategy: str = "FedAvg", **privacy: object) -> TrainingSpec:
    return TrainingSpec(
        project_id="dp",
        model_name="dp",
        min_available_clients=LEARNERS,
        min_fit_clients=LEARNERS,
        min_evaluate_clients=LEARNERS,
        strategy={"name": strategy},  # type: ignore[arg-type]
        differential_privacy=DifferentialPrivacy.model_validate(privacy) if privacy else None,
    )


def replies_to(messages: list[Message], updates: list[list[np.ndarray]], examples: list[int]) -> list[Message]:
    return [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord([g + u for g, u in zip(GLOBAL, update, strict=True)]),
                    "metrics": MetricRecord({"num-examples": n, UNIT_WEIGHT_KEY: 1}),
                }
            ),
            reply_to=message,
        )
        for message, update, n in zip(messages, updates, examples, strict=True)
    ]


def large_updates(rng: np.random.Generator, scale: float = 3.0) -> list[list[np.ndarray]]:
    return [[rng.normal(0, scale, array.shape) for array in GLOBAL] for _ in range(LEARNERS)]


def test_server_mode_clips_every_update_and_adds_the_noise_the_multiplier_asks_for() -> None:
    strategy = build_strategy(spec(mode="server", noise_multiplier=0.8, clipping_norm=2.0))
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), Nodes()))  # type: ignore[arg-type]
    updates = large_updates(np.random.default_rng(1))
    assert all(update_norm(u, [np.zeros_like(g) for g in GLOBAL]) > 100 for u in updates)
    arrays, _ = strategy.aggregate_train(1, replies_to(messages, updates, [10, 20, 30, 40]))
    norms = strategy.strategy.update_norms[1]  # type: ignore[attr-defined]
    assert len(norms) == LEARNERS and max(norms) <= 2.0 + 1e-9, norms
    assert arrays is not None
    clipped_mean = [np.mean([u[i] * 2.0 / update_norm(u, GLOBAL) for u in updates], axis=0) for i in range(2)]
    noise = np.concatenate([(a - m).ravel() for a, m in zip(arrays.to_numpy_ndarrays(), clipped_mean, strict=True)])
    # Flower's central noise: noise_multiplier * clipping_norm / sampled learners, on the uniform mean.
    assert np.std(noise) == pytest.approx(0.8 * 2.0 / LEARNERS, rel=0.05)


def test_central_modes_average_uniformly_whatever_the_example_counts() -> None:
    strategy = build_strategy(spec(mode="server", noise_multiplier=1e-9, clipping_norm=1e3))
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), Nodes()))  # type: ignore[arg-type]
    updates = [[np.full(g.shape, float(i)) for g in GLOBAL] for i in range(1, LEARNERS + 1)]
    arrays, _ = strategy.aggregate_train(1, replies_to(messages, updates, [1, 1, 1, 1000]))
    assert arrays is not None
    assert arrays.to_numpy_ndarrays()[1] == pytest.approx(np.full(50, 2.5), abs=1e-6)  # not weighted towards 4


def test_the_round_hooks_sit_outside_the_wrapper_with_the_inner_minimums() -> None:
    training = spec(mode="client", clipping="adaptive", noise_multiplier=1.0, clipping_norm=0.5)
    strategy = build_strategy(training, RoundHooks)
    assert isinstance(strategy, RoundHooks)
    assert type(strategy).__mro__[2].__name__ == "DifferentialPrivacyClientSideAdaptiveClipping"
    assert (strategy.min_train_nodes, strategy.min_evaluate_nodes) == (LEARNERS, LEARNERS)
    assert strategy.fraction_train == strategy.fraction_evaluate == 1.0  # type: ignore[attr-defined]
    assert strategy.clipping_norm == 0.5  # type: ignore[attr-defined]


def learner_context(training: TrainingSpec) -> Context:
    run_config = {SPEC_RUN_CONFIG_KEY: training.model_dump_json()}
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)


def trained(update: list[np.ndarray]) -> Callable[[Message, Context], Message]:
    """A train handler that replies the received parameters plus `update`."""

    def handler(message: Message, context: Context) -> Message:
        received = message.content.array_records["arrays"].to_numpy_ndarrays()
        content = RecordDict(
            {
                "arrays": ArrayRecord([r + u for r, u in zip(received, update, strict=True)]),
                "metrics": MetricRecord({"num-examples": 5}),
            }
        )
        return Message(content, reply_to=message)

    return handler


def train_message(config: dict[str, float | bool]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(GLOBAL), "config": ConfigRecord(config)})  # type: ignore[arg-type]
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_client_mode_clips_on_the_learner_to_the_norm_the_aggregator_sends() -> None:
    training = spec(mode="client", noise_multiplier=1.0, clipping_norm=0.7)
    strategy = build_strategy(training)
    message = next(iter(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), Nodes())))  # type: ignore[arg-type]
    config = dict(message.content.config_records["config"])
    update = [np.random.default_rng(2).normal(0, 4, g.shape) for g in GLOBAL]
    handler = trained(update)
    reply = differential_privacy_mod(train_message(config), learner_context(training), handler)  # type: ignore[arg-type]
    sent = reply.content.array_records["arrays"].to_numpy_ndarrays()
    assert update_norm(sent, GLOBAL) == pytest.approx(0.7)
    assert np.allclose(sent[0] / update[0], sent[1] / update[1]), "clipping scales the whole update alike"


def test_local_mode_sends_a_clipped_update_with_noise_of_multiplier_times_norm() -> None:
    training = spec(mode="local", noise_multiplier=0.5, clipping_norm=1.0)
    assert build_strategy(training).__class__.__name__ == "FedAvg", "local mode: the aggregator adds nothing"
    update = [np.full(g.shape, 1.0) for g in GLOBAL]  # norm ~71: clipped to 1, spread evenly
    handler = trained(update)
    reply = differential_privacy_mod(train_message({}), learner_context(training), handler)  # type: ignore[arg-type]
    sent = reply.content.array_records["arrays"].to_numpy_ndarrays()
    clipped = 1.0 / np.sqrt(sum(g.size for g in GLOBAL))
    noise = np.concatenate([(s - clipped).ravel() for s in sent])
    assert np.std(noise) == pytest.approx(0.5 * 1.0, rel=0.05)
    assert abs(np.mean(noise)) < 0.05


def test_without_privacy_or_in_server_mode_the_learner_sends_its_update_as_it_is() -> None:
    update = [np.full(g.shape, 3.0) for g in GLOBAL]
    for training in (spec(), spec(mode="server", noise_multiplier=1.0, clipping_norm=1.0)):
        reply = differential_privacy_mod(train_message({}), learner_context(training), trained(update))  # type: ignore[arg-type]
        sent = reply.content.array_records["arrays"].to_numpy_ndarrays()
        assert np.array_equal(sent[0], update[0])


def test_epsilon_grows_with_rounds_as_the_rdp_accountant_says() -> None:
    privacy = DifferentialPrivacy(mode="server", noise_multiplier=1.1, clipping_norm=1.0, delta=1e-5)
    spent = [privacy_spent(privacy, rounds).epsilon for rounds in range(1, 11)]
    assert all(later > earlier for earlier, later in itertools.pairwise(spent))
    for rounds in (1, 5, 10):
        accountant = RdpAccountant()  # Google's accountant directly: r compositions of the Gaussian mechanism
        accountant.compose(dp_event.GaussianDpEvent(1.1), rounds)
        assert spent[rounds - 1] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)
    assert privacy_spent(privacy, 0).epsilon == 0.0
    noisier = DifferentialPrivacy(mode="server", noise_multiplier=3.0, clipping_norm=1.0, delta=1e-5)
    assert privacy_spent(noisier, 10).epsilon < spent[-1], "more noise, less privacy spent"


def sla(**fields: object) -> ProjectSLA:
    return ProjectSLA.model_validate(
        {"ml_repo_url": "https://r.example/r.git", "ml_model_flavor": "sklearn", "training_configuration": {}, **fields}
    )


def test_the_sla_takes_differential_privacy_and_the_spec_carries_it() -> None:
    parsed = sla(privacy={"differential_privacy": {"mode": "client", "noise_multiplier": 1.0, "clipping_norm": 2}})
    privacy = parsed.privacy.differential_privacy
    assert privacy is not None and privacy.mode == "client" and privacy.delta == 1e-5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strategy": {"name": "Krum"}}, "strategy Krum cannot combine with differential privacy"),
        ({"strategy": {"name": "FedMedian"}}, "its aggregate is not a mean"),
        ({"training_configuration": {"mode": "hierarchical"}}, "not available in hierarchical mode"),
        ({"dp": {"mode": "local", "clipping": "adaptive"}}, "mode 'local' clips at a fixed norm"),
        ({"dp": {"noise_multiplier": 0}}, "greater than 0"),
        ({"dp": {"delta": 1.5}}, "less than 1"),
        ({"dp": {"mode": "everywhere"}}, "'server', 'client' or 'local'"),
    ],
)
def test_the_sla_refuses_what_cannot_combine_with_differential_privacy(fields: dict[str, object], message: str) -> None:
    privacy: dict[str, object] = {"mode": "server", "noise_multiplier": 1.0, "clipping_norm": 1.0}
    privacy.update(fields.pop("dp", {}))  # type: ignore[call-overload]
    with pytest.raises(ValidationError, match=message):
        sla(privacy={"differential_privacy": privacy}, **fields)


def test_a_statistics_job_refuses_differential_privacy() -> None:
    with pytest.raises(ValidationError, match="for trainings"):
        ProjectSLA.model_validate(
            {
                "job": "statistics",
                "privacy": {"differential_privacy": {"mode": "server", "noise_multiplier": 1, "clipping_norm": 1}},
            }
        )


def test_the_managers_spec_carries_the_slas_differential_privacy() -> None:
    dp = {"mode": "local", "noise_multiplier": 0.2, "clipping_norm": 3.0, "delta": 1e-6}
    project = Project(project_id="p-1", customer_id="acme", sla=sla(privacy={"differential_privacy": dp}))
    training = training_spec(project, BuildResult(commit="c" * 40, repo_dir="/builds/r"))
    assert training.differential_privacy == DifferentialPrivacy.model_validate(dp)


def test_the_project_view_shows_each_rounds_epsilon() -> None:
    from flops.cli.projects import _figures

    report = {"accuracy": 0.9, "loss": 0.3, "privacy": {"epsilon": 4.7285, "delta": 1e-5, "clipping_norm": 1.0}}
    assert _figures(report) == "acc 0.9000  loss 0.3000  epsilon 4.729"
    assert _figures({"accuracy": 0.9, "loss": 0.3}) == "acc 0.9000  loss 0.3000"
