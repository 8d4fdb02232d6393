def test_error_count():
    with open("/app/error_count.txt") as f:
        assert int(f.read().strip()) == 41
