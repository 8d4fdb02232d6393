from slugkit import slugify


def test_punctuation_is_removed():
    assert slugify("hello, world") == "hello-world"


def test_custom_separator():
    assert slugify("a b c", separator="_") == "a_b_c"
