from textstats import average_word_length, word_count


def test_single_word():
    assert word_count("hello") == 1


def test_empty():
    assert word_count("") == 0


def test_average_word_length():
    assert average_word_length("ab abcd") == 3.0
