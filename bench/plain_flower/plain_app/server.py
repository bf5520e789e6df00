"""Plain Flower ServerApp: FedAvg over the example's ModelManager with Flower's defaults.

Logs a timestamp when the strategy starts (round 0) and at each round's end: Flower 1.41's
`Strategy.start` calls `evaluate_fn` before round 1 and after each round's train phase,
aggregation and evaluate phase. bench/overhead.py reads the marks.
"""

import os
import time

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from model_manager import ModelManager

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_path = os.environ["BENCH_ROUND_LOG"]

    def mark(server_round: int, _arrays: ArrayRecord) -> None:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"{server_round} {time.time()}\n")

    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(ModelManager().get_model_parameters()),
        num_rounds=int(context.run_config["num-rounds"]),
        evaluate_fn=mark,
    )
