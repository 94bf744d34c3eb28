"""Fixtures of the operator commands' tests (check, tail, replay): a secured Apache Kafka
(SASL users, StandardAuthorizer) shared by the session, and ACL helpers.

On the secured cluster the PLAINTEXT listener's ANONYMOUS is a super user: the tests create
topics and ACLs through it, and run the commands as SASL users with the rights a test gives.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.devtools.devbroker import KafkaCluster
from tests.integration.commands.clikit import Secured
from tests.integration.conftest import forget, remember


@pytest.fixture(scope="session")
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    users = {"bridge": "bridge-pw", "nobody": "nobody-pw"}
    with KafkaCluster(
        users=users, authorizer=True, workdir=tmp_path_factory.mktemp("secured-kafka")
    ) as cluster:
        remember(request.config, cluster)
        yield Secured(cluster, users)
        forget(request.config, cluster)
