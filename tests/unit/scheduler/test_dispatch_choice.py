from kiln_scheduler.service import Waiting, choose_dispatches, queue_position

WAITING = [Waiting("j3", "a", 3), Waiting("j1", "a", 1), Waiting("j2", "b", 2)]


def test_dispatches_oldest_first_up_to_free_capacity() -> None:
    assert choose_dispatches(WAITING, in_flight=0, capacity=2) == ["j1", "j2"]
    assert choose_dispatches(WAITING, in_flight=1, capacity=2) == ["j1"]
    assert choose_dispatches(WAITING, in_flight=2, capacity=2) == []
    assert choose_dispatches(WAITING, in_flight=5, capacity=2) == []


def test_queue_position_is_one_based_in_arrival_order() -> None:
    assert [queue_position(WAITING, j) for j in ("j1", "j2", "j3")] == [1, 2, 3]
