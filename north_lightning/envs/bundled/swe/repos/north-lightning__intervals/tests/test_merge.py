from intervals import merge_intervals, total_length


def test_overlapping():
    assert merge_intervals([[1, 4], [2, 6], [8, 9]]) == [[1, 6], [8, 9]]


def test_unsorted_input():
    assert merge_intervals([[5, 7], [1, 2]]) == [[1, 2], [5, 7]]


def test_total_length():
    assert total_length([[0, 2], [1, 3]]) == 3
