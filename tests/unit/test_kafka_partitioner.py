"""The relay's partitioner puts every key on the partition Kafka's default partitioner (Java, aiokafka) would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import example, given
from hypothesis import strategies as st

from services.runtime.relay import partition_for_key


@given(st.binary(max_size=80), st.integers(min_value=1, max_value=64))
@example(b"", 3)
@example(b"6f1c1f0e-8a57-4f2e-9a51-0a7c2f4b9d11", 3)
def test_same_partition_as_kafkas_default(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_for_key(key, every, every) == DefaultPartitioner()(key, every, every)


def test_keyless_records_take_an_available_partition() -> None:
    assert {partition_for_key(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
