"""Brokers killed under load, on a real 3-node cluster: nothing lost, doubled or wrong.

The chaos run of ``python -m bench.chaos --broker-kills``, small: three workers,
events flowing, kill -9 of the node leading most events partitions and of the
active controller (each started again a moment later), mixed with worker kills
and a lost state dir. Checked through Kafka as in ``test_exactly_once.py``.
"""

from __future__ import annotations

import pytest

from bench.chaos import ChaosConfig, local_cluster, run_chaos


@pytest.mark.kafka  # starts a cluster of its own
def test_killing_brokers_loses_doubles_and_breaks_nothing(tmp_path):
    cfg = ChaosConfig(
        workers=3,
        events=5000,
        rate=100.0,  # about 50 s of events: both broker kills land while they flow
        kills=2,
        wipes=1,
        users=300,
        partitions=4,
        broker_kills=2,
        drain_timeout=180.0,
    )
    with local_cluster(tmp_path) as cluster:
        report = run_chaos(cfg, cluster.bootstrap, tmp_path, cluster)
    assert report["events_published"] == 5000
    assert report["workers_that_crashed"] == []
    assert report["duplicate_lists"] == 0
    assert report["users_wrong_counts"] == 0 and report["users_missing_state"] == 0
    assert report["stale_lists"] == 0
    # Every event is in a user's state or dead-lettered (none here: all are valid).
    assert report["events_unaccounted"] == 0 and report["events_dead_lettered"] == 0
    kills = report["broker_kills"]
    assert [k["role"] for k in kills] == ["events leader", "controller"]
    assert all(k["back_after_s"] is not None for k in kills)  # each node came back
